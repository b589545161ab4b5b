//! What a shard tells the rest of the process, and what it is told: counters and gauges to
//! publish, finished connections to log, drain/abort/reload requests. The runtime implements these
//! with atomics, an eventfd and the access-log writer; the simulator with plain cells.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use origdst_core::outcome::Outcome;
use origdst_core::stats::Counters;

/// Gauges the engine owns (core knows nothing of pipes and buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Gauge {
    /// Open connections on the shard.
    ConnectionsActive,
    /// Pipes leased from the shard's pool.
    PipesLeased,
    /// Pipes that came out smaller than requested.
    PipesShrunk,
    /// Pipes discarded with bytes in them.
    PipesDiscarded,
    /// Provided buffers holding bytes in flight.
    BuffersInFlight,
    /// Directions that fell back to copying because no pipe was available.
    SpliceFallbackCopies,
    /// Internal-listener pairs open (an outer and an inner connection, or what is left of them).
    InternalPairs,
    /// Bytes the readiness data path spliced (socket → pipe → socket).
    SplicedBytes,
    /// Bytes the readiness data path copied (small messages, or no pipe free).
    CopiedBytes,
    /// Waits a busy poll answered without sleeping.
    BusyPollHits,
    /// Waits that slept until the kernel woke the shard.
    WaitSleeps,
}

impl Gauge {
    /// Every gauge, in index order.
    pub const ALL: [Self; 11] = [
        Self::ConnectionsActive,
        Self::PipesLeased,
        Self::PipesShrunk,
        Self::PipesDiscarded,
        Self::BuffersInFlight,
        Self::SpliceFallbackCopies,
        Self::InternalPairs,
        Self::SplicedBytes,
        Self::CopiedBytes,
        Self::BusyPollHits,
        Self::WaitSleeps,
    ];

    /// Cumulative (exported as a counter) rather than a level.
    pub const fn is_counter(self) -> bool {
        matches!(
            self,
            Self::PipesShrunk
                | Self::PipesDiscarded
                | Self::SpliceFallbackCopies
                | Self::SplicedBytes
                | Self::CopiedBytes
                | Self::BusyPollHits
                | Self::WaitSleeps
        )
    }

    /// The metric's help text.
    pub const fn help(self) -> &'static str {
        match self {
            Self::ConnectionsActive => "Open connections on the shard.",
            Self::PipesLeased => "Splice pipes leased from the pools (bytes in flight).",
            Self::PipesShrunk => {
                "Pipes the kernel made smaller than asked (per-user pipe limit, fs.pipe-max-size)."
            }
            Self::PipesDiscarded => "Pipes closed with bytes in them when their connection ended.",
            Self::BuffersInFlight => "Provided buffers holding bytes in flight (uring-copy).",
            Self::SpliceFallbackCopies => {
                "Times a splice direction copied because the pipe pool was empty."
            }
            Self::InternalPairs => "Internal-listener connection pairs open on the shard.",
            Self::SplicedBytes => {
                "Bytes relayed by splice(2) through a pipe (uring-splice, epoll)."
            }
            Self::CopiedBytes => {
                "Bytes relayed by read and send (uring-splice, epoll): small messages (splice-auto), or no pipe free."
            }
            Self::BusyPollHits => {
                "Waits for completions that the adaptive busy poll answered without sleeping."
            }
            Self::WaitSleeps => "Waits for completions that slept until the kernel woke the shard.",
        }
    }

    /// The exported name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ConnectionsActive => "connections_active",
            Self::PipesLeased => "pipes_leased",
            Self::PipesShrunk => "pipes_shrunk",
            Self::PipesDiscarded => "pipes_discarded",
            Self::BuffersInFlight => "buffers_in_flight",
            Self::SpliceFallbackCopies => "splice_fallback_copies",
            Self::InternalPairs => "internal_pairs_active",
            Self::SplicedBytes => "spliced_bytes",
            Self::CopiedBytes => "copied_bytes",
            Self::BusyPollHits => "busy_poll_hits",
            Self::WaitSleeps => "wait_sleeps",
        }
    }
}

/// Where a shard publishes its counters and gauges (each turn, before it waits).
pub trait Reporter {
    /// The shard's counters and gauges now.
    fn publish(&mut self, stats: &Counters, gauges: &[u64; Gauge::ALL.len()]);
    /// Each group's connections (per-pod counters), when they changed: every group the shard
    /// serves or drains, and removed groups one last time.
    fn publish_groups(&mut self, _groups: &[crate::listeners::GroupReport]) {}
}

/// Requests from the supervisor, noticed when the wake-up descriptor fires.
pub trait Control: Send + Sync {
    /// The descriptor the shard polls to notice requests.
    fn wake_fd(&self) -> i32;
    /// The wake-up was seen (drain the descriptor).
    fn acknowledge(&self);
    /// Stop accepting and let open connections finish until the drain deadline.
    fn drain_requested(&self) -> bool;
    /// Reset whatever is open, now.
    fn abort_requested(&self) -> bool;
    /// New configs for new connections (with the listeners they remove and add), in the order
    /// they came.
    fn take_reloads(&self) -> Vec<crate::listeners::Reload>;
    /// Listening sockets to add or remove (in-pod mode's pods), in the order they were asked.
    fn take_listener_changes(&self) -> Vec<crate::listeners::ListenerChange> {
        Vec::new()
    }
}

/// A finished connection, as values: the runtime formats (and time-stamps) it off the shard.
#[derive(Debug, Clone)]
pub struct Finished {
    /// From accept to close.
    pub age: Duration,
    /// The client.
    pub client: SocketAddr,
    /// The original destination, if one was found.
    pub orig_dst: Option<SocketAddr>,
    /// Where it came from.
    pub provenance: Option<&'static str>,
    /// Where origdst connected.
    pub upstream: Option<SocketAddr>,
    /// The listener that handled it.
    pub listener: Arc<str>,
    /// The group (pod) whose listener accepted it, if it came through one added at run time.
    pub group: Option<Arc<str>>,
    /// Bytes from the client relayed upstream.
    pub bytes_received: u64,
    /// Bytes from the upstream relayed to the client.
    pub bytes_sent: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The shard that relayed it.
    pub shard: usize,
}

/// Where finished connections go (the access log).
pub trait AccessLog {
    /// Whether a completed connection is logged (sampling); failures always are.
    fn sampled(&mut self) -> bool;
    /// Logs one (bounded queue: a full one drops and counts).
    fn send(&mut self, finished: Finished);
}
