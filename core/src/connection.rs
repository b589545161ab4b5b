//! The per-connection state machine, sans-IO.
//!
//! The runtime reports what happened (`handle_*`, always with `now` and the shard's counters) and
//! then drains what to do (`poll_action`) and when to wake (`next_timeout`). After *every*
//! `handle_*` call and after `accept`, the runtime must drain `poll_action` until `None` and then
//! re-read `next_timeout`.
//!
//! ```text
//!   accept ──refused──────────────────────────────────▶ Closed(Refused)   [Reset client, Close]
//!     │ resolved
//!     ▼             connect failed / timeout
//!  Connecting ─────────────────────────────────────────▶ Closed(...)      [Reset client, Close]
//!     │ connected
//!     ▼            both directions WriteShut
//!  Relaying ───────────────────────────────────────────▶ Closed(Completed) [Close]
//!     │ error on a side / idle timeout / drain deadline
//!     └────────────────────────────────────────────────▶ Closed(...)      [Reset peer(s), Close]
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use crate::addr::{ClientAddr, OrigDstAddr, UpstreamAddr};
use crate::config::{ConnParams, DestinationPolicy, Source};
use crate::http_head::{self, Head};
use crate::orig_dst::{
    self, AcceptEvidence, InternalMetadata, Provenance, RecordAnswer, RedirectRecord, RefuseReason,
    SelfAddrs,
};
use crate::outcome::{IoErrorKind, Outcome};
use crate::relay::{Dir, HalfDuplex, HalfState, Side};
use crate::route::{self, ChainId, HeadPlan, Route, Target, UpstreamPlan};
use crate::stats::{Counter, Counters};
use crate::time::Instant;

/// What the runtime must do next. Executed in the order polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open the upstream socket (marked, optionally bound to `source`, with the redirect record
    /// applied) and connect it to `upstream`; report `handle_connected` or `handle_connect_failed`.
    /// Comes again after a failed or timed-out attempt while `max_connect_attempts` allows: the
    /// runtime then closes the previous upstream socket first.
    Connect {
        /// Where to connect.
        upstream: UpstreamAddr,
        /// `SO_MARK` to set before connecting.
        mark: Option<u32>,
        /// Local address to bind first (source preservation, or the cluster's bind address);
        /// `None`: let the kernel choose.
        source: Option<Source>,
        /// Platform redirect record to apply to the upstream socket before connecting.
        record: Option<RedirectRecord>,
    },
    /// Open an in-process connection to internal listener `listener` carrying `handoff`; report
    /// `handle_connected` (or `handle_connect_failed`).
    ConnectInternal {
        /// Index into the config's listeners.
        listener: usize,
        /// Metadata and filter state for that listener's original_dst filter.
        handoff: Box<InternalMetadata>,
    },
    /// `use_http_header`: once more than `have` bytes of the client's stream are available (or it
    /// ended), report up to `max` of them with `handle_peeked` **without consuming them** (the
    /// request is forwarded unchanged).
    PeekHead {
        /// Bytes already seen (the runtime waits for more than this).
        have: u32,
        /// The most bytes to report.
        max: u32,
    },
    /// Start relaying `dir`: read its source, write its sink, report `handle_transferred` as bytes
    /// are written and `handle_eof` once the source hit EOF *and* every byte read was written.
    Transfer {
        /// The direction to start.
        dir: Dir,
    },
    /// `shutdown(SHUT_WR)` on `side`.
    ShutdownWrite {
        /// The side whose write half to shut.
        side: Side,
    },
    /// Close `side` with a reset (`SO_LINGER` 0): its peer must see an error, never a clean EOF.
    /// Nothing else is done with that socket afterwards.
    Reset {
        /// The side to reset.
        side: Side,
    },
    /// Release everything the connection holds. Always the last action.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    ReadingHead { deadline: Instant },
    Connecting { deadline: Instant, attempt: u32 },
    Relaying,
    Closed(Outcome),
}

/// The milestones of a connection, independent of how bytes were chunked: what two runtimes must
/// agree on when they drive the same scenario (the sim/uring conformance test compares these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct History {
    /// Where the destination came from (`None`: refused before resolving).
    pub provenance: Option<Provenance>,
    /// Whether the upstream connect succeeded.
    pub connected: bool,
    /// Directions that reached EOF, in the order they did.
    pub eofs: [Option<Dir>; 2],
    /// The side whose I/O error ended the connection, if one did.
    pub failed_side: Option<Side>,
    /// How it ended (`None` while open).
    pub outcome: Option<Outcome>,
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.provenance {
            Some(provenance) => write!(f, "accept({})", provenance.name())?,
            None => write!(f, "accept(-)")?,
        }
        if self.connected {
            write!(f, " connected")?;
        }
        for dir in self.eofs.iter().flatten() {
            write!(f, " eof({})", dir.name())?;
        }
        if let Some(side) = self.failed_side {
            write!(f, " error({})", side.name())?;
        }
        if let Some(outcome) = self.outcome {
            write!(f, " close({})", outcome.name())?;
        }
        Ok(())
    }
}

/// One accepted connection: its destination, its phase, its two directions, its timers.
#[derive(Debug)]
pub struct Connection {
    client: ClientAddr,
    orig_dst: Option<OrigDstAddr>,
    upstream: Option<UpstreamAddr>,
    provenance: Option<Provenance>,
    history: History,
    phase: Phase,
    halves: [HalfDuplex; 2],
    accepted_at: Instant,
    last_activity: Instant,
    idle_timeout: Option<Duration>,
    actions: VecDeque<Action>,
    /// What connecting needs, kept for retries and the head path.
    plan: Option<ConnectPlan>,
}

/// What a connection needs to (re)issue its connect.
#[derive(Debug, Clone)]
struct ConnectPlan {
    params: ConnParams,
    max_attempts: u32,
    record: Option<RedirectRecord>,
    target: Option<Target>,
    /// Boxed: only header-mode connections have one, and only while reading the head.
    head: Option<Box<HeadState>>,
}

/// A header-mode connection's plan and the head received so far.
#[derive(Debug, Clone)]
struct HeadState {
    plan: HeadPlan,
    buffer: http_head::HeadBuffer,
}

// === impl Connection ===

impl Connection {
    /// Decides an accepted connection the simple way: the restored original destination, one
    /// attempt, these knobs (no listener hand-off, no filter chains). The simulator drives this.
    pub fn accept(
        now: Instant,
        evidence: &AcceptEvidence,
        me: &SelfAddrs,
        params: &ConnParams,
        stats: &mut Counters,
    ) -> Self {
        let route = orig_dst::resolve(evidence, me).map(|resolution| Route {
            listener: 0,
            chain: ChainId::Default,
            params: params.clone(),
            max_connect_attempts: 1,
            resolution: Some(resolution),
            upstream: UpstreamPlan::Connect(Target::Socket(UpstreamAddr::new(
                resolution.orig_dst.get(),
            ))),
        });
        Self::start(now, evidence, route, stats)
    }

    /// Starts a connection from its route ([`route::route`]) or refusal: queues `Connect`,
    /// `ConnectInternal`, `PeekHead`, or `Reset{Client}, Close`.
    pub fn start(
        now: Instant,
        evidence: &AcceptEvidence,
        route: Result<Route, RefuseReason>,
        stats: &mut Counters,
    ) -> Self {
        stats.incr(Counter::DownstreamCxTotal);
        // A record that could not be read cannot be applied: relaying anyway would let the
        // platform redirect our own upstream connection back to us.
        let route = match (&evidence.redirect_record, route) {
            (RecordAnswer::Failed { errno }, Ok(_)) => {
                Err(RefuseReason::RecordQueryFailed { errno: *errno })
            }
            (_, route) => route,
        };
        let route = match route {
            Ok(route) => route,
            Err(reason) => {
                let mut conn = Self::new(now, evidence.client, None);
                // Where a refused connection was going, when the evidence says: the access log
                // shows it (not counted as a resolution, and not part of the history).
                if let Ok(Some(resolution)) = orig_dst::restored(evidence) {
                    conn.orig_dst = Some(resolution.orig_dst);
                    conn.provenance = Some(resolution.provenance);
                }
                conn.fail(Outcome::Refused(reason), &[Side::Client], stats);
                return conn;
            }
        };
        let mut conn = Self::new(now, evidence.client, route.params.idle_timeout);
        if let Some(resolution) = route.resolution {
            stats.record_provenance(resolution.provenance);
            conn.orig_dst = Some(resolution.orig_dst);
            conn.provenance = Some(resolution.provenance);
            conn.history.provenance = Some(resolution.provenance);
        }
        let mut plan = ConnectPlan {
            params: route.params,
            max_attempts: route.max_connect_attempts.max(1),
            record: match &evidence.redirect_record {
                RecordAnswer::Record(record) => Some(record.clone()),
                RecordAnswer::None | RecordAnswer::Failed { .. } => None,
            },
            target: None,
            head: None,
        };
        match route.upstream {
            UpstreamPlan::Connect(target) => {
                plan.target = Some(target);
                conn.plan = Some(plan);
                conn.begin_connect(now, stats);
            }
            UpstreamPlan::ReadHead(head) => {
                conn.phase = Phase::ReadingHead {
                    deadline: now + head.timeout,
                };
                conn.push(Action::PeekHead {
                    have: 0,
                    max: head.max_bytes,
                });
                plan.head = Some(Box::new(HeadState {
                    plan: head,
                    buffer: http_head::HeadBuffer::default(),
                }));
                conn.plan = Some(plan);
            }
        }
        conn
    }

    /// `use_http_header`: the client's bytes that arrived since the last call (peeked, not
    /// consumed: the request is forwarded unchanged), and whether the client ended its stream.
    /// Core keeps the head (bounded by `http_head_max_bytes`); the work per call is proportional
    /// to `piece` ([`http_head::HeadBuffer`]). Decides the upstream once the head is complete; a
    /// destination from the header passes `policy`.
    pub fn handle_peeked(
        &mut self,
        now: Instant,
        piece: &[u8],
        ended: bool,
        me: &SelfAddrs,
        policy: &DestinationPolicy,
        stats: &mut Counters,
    ) {
        assert!(
            matches!(self.phase, Phase::ReadingHead { .. }),
            "peeked while {:?}",
            self.phase
        );
        let head = self
            .plan
            .as_mut()
            .and_then(|p| p.head.as_mut())
            .expect("ReadingHead has a head plan");
        let max = head.plan.max_bytes as usize;
        let answer = head.buffer.push(piece, max, &head.plan.header, ended);
        let have = head.buffer.len();
        let plan = &head.plan;
        let decided = match answer {
            Head::Complete(Some(value)) => route::parse_host(&value).and_then(|dst| {
                route::finish_original_dst(me, dst, plan.port_override, Some(policy))
            }),
            Head::Complete(None) => match plan.fallback {
                // The restored destination: the kernel's, not the client's text.
                Some(dst) => route::finish_original_dst(me, dst.get(), plan.port_override, None),
                None => Err(RefuseReason::NoOriginalDst),
            },
            Head::Duplicate => Err(RefuseReason::DuplicateOriginalDstHost),
            Head::Partial if have >= max => Err(RefuseReason::HttpHeadTooLarge),
            Head::Partial if ended => Err(RefuseReason::HttpHeadInvalid),
            Head::Partial => {
                let max = plan.max_bytes;
                self.push(Action::PeekHead {
                    have: u32::try_from(have).unwrap_or(u32::MAX),
                    max,
                });
                return;
            }
            Head::Invalid => Err(RefuseReason::HttpHeadInvalid),
        };
        // The head has done its work: free it before the connection relays for hours.
        if let Some(plan) = &mut self.plan {
            plan.head = None;
        }
        match decided {
            Ok(target) => {
                if let Some(plan) = &mut self.plan {
                    plan.target = Some(target);
                }
                self.begin_connect(now, stats);
            }
            Err(reason) => self.fail(Outcome::Refused(reason), &[Side::Client], stats),
        }
    }

    /// First attempt: counted once per connection, however many attempts follow.
    fn begin_connect(&mut self, now: Instant, stats: &mut Counters) {
        stats.incr(Counter::UpstreamCxTotal);
        self.connect_attempt(now, 1, stats);
    }

    fn connect_attempt(&mut self, now: Instant, attempt: u32, stats: &mut Counters) {
        let plan = self.plan.as_ref().expect("connecting needs a plan");
        let target = plan.target.clone().expect("connecting needs a target");
        self.phase = Phase::Connecting {
            deadline: now + plan.params.connect_timeout,
            attempt,
        };
        let action = match target {
            Target::Socket(upstream) => {
                let preserved = plan
                    .params
                    .original_src
                    .and_then(|src| src.source_for(self.client, upstream));
                if attempt == 1 {
                    match (plan.params.original_src, preserved) {
                        (Some(_), Some(_)) => stats.incr(Counter::OriginalSrcBound),
                        (Some(_), None) => stats.incr(Counter::OriginalSrcFamilyMismatch),
                        (None, _) => {}
                    }
                }
                // The client's address (original_src), else the cluster's own bind address.
                let source = match (plan.params.original_src, preserved) {
                    (_, Some(addr)) => Some(Source {
                        addr,
                        transparent: true,
                    }),
                    (Some(_), None) => None,
                    (None, None) => {
                        plan.params
                            .bind_source
                            .for_upstream(upstream)
                            .map(|addr| Source {
                                addr,
                                transparent: false,
                            })
                    }
                };
                self.upstream = Some(upstream);
                Action::Connect {
                    upstream,
                    mark: plan.params.upstream_mark,
                    source,
                    record: plan.record.clone(),
                }
            }
            Target::Internal { listener, handoff } => Action::ConnectInternal { listener, handoff },
        };
        self.push(action);
    }

    /// A failed attempt: retry while attempts remain, else end with `outcome`.
    fn connect_failed(&mut self, now: Instant, outcome: Outcome, stats: &mut Counters) {
        let Phase::Connecting { attempt, .. } = self.phase else {
            unreachable!("connect failure outside Connecting");
        };
        let max = self.plan.as_ref().map_or(1, |p| p.max_attempts);
        if attempt < max {
            stats.incr(Counter::UpstreamCxConnectRetry);
            self.connect_attempt(now, attempt + 1, stats);
            return;
        }
        if max > 1 {
            stats.incr(Counter::UpstreamCxConnectAttemptsExceeded);
        }
        self.fail(outcome, &[Side::Client], stats);
    }

    /// A connection the runtime accepted but cannot keep (shard at its limit): counted and reset.
    pub fn overflow(now: Instant, client: ClientAddr, stats: &mut Counters) -> Self {
        stats.incr(Counter::DownstreamCxTotal);
        let mut conn = Self::new(now, client, None);
        conn.fail(Outcome::Overflow, &[Side::Client], stats);
        conn
    }

    /// The upstream connect succeeded: both directions start.
    pub fn handle_connected(&mut self, now: Instant) {
        assert!(
            matches!(self.phase, Phase::Connecting { .. }),
            "connected while {:?}",
            self.phase
        );
        self.phase = Phase::Relaying;
        self.history.connected = true;
        self.last_activity = now;
        for dir in Dir::ALL {
            self.push(Action::Transfer { dir });
        }
    }

    /// The upstream connect failed: another attempt, or the client is reset.
    pub fn handle_connect_failed(&mut self, now: Instant, kind: IoErrorKind, stats: &mut Counters) {
        assert!(
            matches!(self.phase, Phase::Connecting { .. }),
            "connect failed while {:?}",
            self.phase
        );
        self.connect_failed(now, Outcome::ConnectFailed(kind), stats);
    }

    /// `n` bytes of `dir` were written to its sink.
    pub fn handle_transferred(&mut self, now: Instant, dir: Dir, n: u64, stats: &mut Counters) {
        assert_eq!(self.phase, Phase::Relaying, "bytes moved outside Relaying");
        let half = &mut self.halves[dir.index()];
        assert!(
            half.is_open(),
            "bytes moved on a finished direction {dir:?}"
        );
        half.bytes += n;
        stats.record_bytes(dir, n);
        // Never backwards: a direction the kernel relays reports its bytes after the fact, with
        // the time they last moved, which may be before another event core has seen.
        self.last_activity = self.last_activity.max(now);
    }

    /// `dir`'s source reached EOF and every byte read from it was written: shut the sink's write
    /// half; once both directions are finished, close.
    pub fn handle_eof(&mut self, now: Instant, dir: Dir, stats: &mut Counters) {
        assert_eq!(self.phase, Phase::Relaying, "EOF outside Relaying");
        self.halves[dir.index()].read_eof();
        let slot = usize::from(self.history.eofs[0].is_some());
        self.history.eofs[slot] = Some(dir);
        self.last_activity = now;
        self.push(Action::ShutdownWrite { side: dir.sink() });
        let other = &self.halves[1 - dir.index()];
        if other.is_open() {
            stats.incr(match dir.source() {
                Side::Client => Counter::HalfCloseFromClient,
                Side::Upstream => Counter::HalfCloseFromUpstream,
            });
            return;
        }
        self.finish(Outcome::Completed, stats);
        self.push(Action::Close);
    }

    /// I/O on `side` failed. Whatever the phase, the *other* side is reset so it can never mistake
    /// a truncated stream for a complete one. An error that is not the socket's own (no reset,
    /// pipe or route error: a poll the kernel refused, memory) leaves that socket healthy, so it
    /// is reset too — a FIN would tell its peer the stream ended cleanly (found by the simulator:
    /// a header-mode client whose head poll was refused saw a clean EOF). Errors after the
    /// connection closed are ignored (a late completion racing the close).
    pub fn handle_error(
        &mut self,
        now: Instant,
        side: Side,
        kind: IoErrorKind,
        stats: &mut Counters,
    ) {
        let outcome = match (self.phase, side) {
            (Phase::Closed(_), _) => return,
            (Phase::Connecting { .. }, Side::Upstream) => {
                return self.connect_failed(now, Outcome::ConnectFailed(kind), stats);
            }
            (Phase::ReadingHead { .. }, Side::Upstream) => {
                unreachable!("no upstream while reading the head")
            }
            (_, Side::Upstream) => Outcome::UpstreamFailed(kind),
            (_, Side::Client) => Outcome::ClientFailed(kind),
        };
        self.history.failed_side = Some(side);
        let reset: &[Side] = if matches!(kind, IoErrorKind::Other { .. }) {
            &[side.peer(), side]
        } else {
            &[side.peer()]
        };
        self.fail(outcome, reset, stats);
    }

    /// Fires whichever timer is due at `now` (connect or idle); a no-op if none is.
    pub fn handle_timeout(&mut self, now: Instant, stats: &mut Counters) {
        match self.phase {
            Phase::ReadingHead { deadline } if now >= deadline => {
                self.fail(
                    Outcome::Refused(RefuseReason::HttpHeadTimeout),
                    &[Side::Client],
                    stats,
                );
            }
            Phase::Connecting { deadline, .. } if now >= deadline => {
                self.connect_failed(now, Outcome::ConnectTimeout, stats);
            }
            Phase::Relaying if self.idle_deadline().is_some_and(|deadline| now >= deadline) => {
                self.fail(Outcome::IdleTimeout, &[Side::Client, Side::Upstream], stats);
            }
            _ => {}
        }
    }

    /// The drain deadline passed with this connection still open: reset what is open and close.
    pub fn abort_for_drain(&mut self, _now: Instant, stats: &mut Counters) {
        match self.phase {
            Phase::Closed(_) => {}
            Phase::ReadingHead { .. } | Phase::Connecting { .. } => {
                self.fail(Outcome::DrainAborted, &[Side::Client], stats);
            }
            Phase::Relaying => {
                self.fail(
                    Outcome::DrainAborted,
                    &[Side::Client, Side::Upstream],
                    stats,
                );
            }
        }
    }

    /// The next action to execute, in order. `ShutdownWrite` moves its direction to `WriteShut`.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        let action = self.actions.pop_front()?;
        if let Action::ShutdownWrite { side } = action {
            self.halves[Dir::from_source(side.peer()).index()].write_shut();
        }
        Some(action)
    }

    /// When `handle_timeout` must be called next (`None`: no timer armed).
    #[must_use]
    pub fn next_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::ReadingHead { deadline } | Phase::Connecting { deadline, .. } => Some(deadline),
            Phase::Relaying => self.idle_deadline(),
            Phase::Closed(_) => None,
        }
    }

    /// How the connection ended, once it has.
    pub fn outcome(&self) -> Option<Outcome> {
        match self.phase {
            Phase::Closed(outcome) => Some(outcome),
            _ => None,
        }
    }

    /// Whether the connection is still reading its request head (header mode).
    pub fn is_reading_head(&self) -> bool {
        matches!(self.phase, Phase::ReadingHead { .. })
    }

    /// Whether the connection has ended (its remaining actions end with `Close`).
    pub fn is_closed(&self) -> bool {
        self.outcome().is_some()
    }

    /// The client's address.
    pub fn client(&self) -> ClientAddr {
        self.client
    }

    /// The original destination: resolved, or for a refused connection the one its evidence
    /// restores (`None` when there is none).
    pub fn orig_dst(&self) -> Option<OrigDstAddr> {
        self.orig_dst
    }

    /// The upstream address chosen (`None` until chosen, and for internal upstreams).
    pub fn upstream(&self) -> Option<UpstreamAddr> {
        self.upstream
    }

    /// Where the original destination came from (`None` when there is none).
    pub fn provenance(&self) -> Option<Provenance> {
        self.provenance
    }

    /// Bytes written so far in `dir`.
    pub fn bytes(&self, dir: Dir) -> u64 {
        self.halves[dir.index()].bytes
    }

    /// The connection's milestones so far.
    pub fn history(&self) -> History {
        self.history
    }

    /// The half-close state of `dir`.
    pub fn half_state(&self, dir: Dir) -> HalfState {
        self.halves[dir.index()].state
    }

    /// How long the connection has existed at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        now - self.accepted_at
    }

    fn new(now: Instant, client: ClientAddr, idle_timeout: Option<Duration>) -> Self {
        Self {
            client,
            orig_dst: None,
            upstream: None,
            provenance: None,
            history: History::default(),
            // Replaced at once by `start`; a refused connection goes straight to Closed.
            phase: Phase::Connecting {
                deadline: now,
                attempt: 0,
            },
            halves: [HalfDuplex::new(), HalfDuplex::new()],
            accepted_at: now,
            last_activity: now,
            idle_timeout,
            actions: VecDeque::with_capacity(ACTIONS_MAX),
            plan: None,
        }
    }

    fn idle_deadline(&self) -> Option<Instant> {
        self.idle_timeout.map(|idle| self.last_activity + idle)
    }

    fn fail(&mut self, outcome: Outcome, reset: &[Side], stats: &mut Counters) {
        self.finish(outcome, stats);
        for &side in reset {
            self.push(Action::Reset { side });
        }
        self.push(Action::Close);
    }

    fn finish(&mut self, outcome: Outcome, stats: &mut Counters) {
        assert!(!self.is_closed(), "connection finished twice");
        self.phase = Phase::Closed(outcome);
        self.history.outcome = Some(outcome);
        stats.record_outcome(outcome);
    }

    fn push(&mut self, action: Action) {
        // A shutdown queued behind a Close would never run: Close is always last.
        debug_assert!(
            self.actions.back() != Some(&Action::Close),
            "action queued after Close"
        );
        self.actions.push_back(action);
        assert!(
            self.actions.len() <= ACTIONS_MAX,
            "action queue over its bound"
        );
    }
}

/// The most actions one event can queue: ShutdownWrite + Reset ×2 + Close, with slack.
const ACTIONS_MAX: usize = 6;

#[cfg(test)]
mod tests;
