//! Per-shard counters. Each shard owns one `Counters` and is its only writer; merging shards is a
//! plain element-wise sum, so aggregation needs no lock (the runtime publishes snapshots).

use crate::orig_dst::{Provenance, RefuseReason};
use crate::outcome::Outcome;
use crate::relay::Dir;

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// One counter. Names follow Envoy's where an equivalent exists.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];
            /// How many counters there are.
            pub const COUNT: usize = Self::ALL.len();

            /// The exported name.
            pub const fn name(self) -> &'static str {
                match self { $(Self::$variant => $name,)* }
            }

            /// Its doc comment (the metric's help text), lines joined.
            pub const fn help(self) -> &'static str {
                match self { $(Self::$variant => concat!($($doc),*),)* }
            }
        }
    };
}

counters! {
    /// Connections accepted from downstream.
    DownstreamCxTotal => "downstream_cx_total",
    /// Downstream connections that ended (any outcome, refusals included).
    DownstreamCxDestroy => "downstream_cx_destroy",
    /// Bytes read from clients and relayed upstream.
    DownstreamCxRxBytesTotal => "downstream_cx_rx_bytes_total",
    /// Bytes read from upstreams and relayed to clients.
    DownstreamCxTxBytesTotal => "downstream_cx_tx_bytes_total",
    /// Upstream connection attempts.
    UpstreamCxTotal => "upstream_cx_total",
    /// Upstream connects that failed (refused, unreachable, ...).
    UpstreamCxConnectFail => "upstream_cx_connect_fail",
    /// Upstream connects that did not finish within the connect timeout.
    UpstreamCxConnectTimeout => "upstream_cx_connect_timeout",
    /// Connections ended because the upstream reset or failed mid-stream.
    UpstreamCxReset => "upstream_cx_reset",
    /// Connections ended because the client reset or failed mid-stream.
    DownstreamCxReset => "downstream_cx_reset",
    /// Connections closed by the idle timeout.
    IdleTimeout => "idle_timeout",
    /// Connections reset because the drain deadline passed.
    DrainAborted => "drain_aborted",
    /// Connections where both directions finished cleanly.
    Completed => "completed",
    /// Half-closes started by the client (client EOF relayed upstream).
    HalfCloseFromClient => "half_close_from_client",
    /// Half-closes started by the upstream.
    HalfCloseFromUpstream => "half_close_from_upstream",
    /// Original destinations from SO_ORIGINAL_DST.
    OrigDstSockOptV4 => "orig_dst_sockopt_v4",
    /// Original destinations from IP6T_SO_ORIGINAL_DST.
    OrigDstSockOptV6 => "orig_dst_sockopt_v6",
    /// Original destinations from a transparent listener's local address.
    OrigDstTransparent => "orig_dst_transparent_local",
    /// Original destinations from internal-listener dynamic metadata.
    OrigDstInternalMetadata => "orig_dst_internal_metadata",
    /// Original destinations from internal-listener filter state.
    OrigDstInternalFilterState => "orig_dst_internal_filter_state",
    /// Refused: not redirected (no original destination).
    RefusedNoOriginalDst => "refused_no_original_dst",
    /// Refused: the original-destination query failed.
    RefusedQueryFailed => "refused_orig_dst_query_failed",
    /// Refused: the destination is one of our own listeners.
    RefusedDestinationIsListener => "refused_destination_is_listener",
    /// Refused: the connection carries our own mark.
    RefusedOwnMark => "refused_own_mark",
    /// Refused: the connection comes from our own upstream socket (loop).
    RefusedOwnUpstream => "refused_own_upstream",
    /// Refused: malformed internal-listener metadata.
    RefusedInvalidMetadata => "refused_invalid_metadata",
    /// Refused: no filter chain matched (Envoy's `no_filter_chain_match`).
    NoFilterChainMatch => "no_filter_chain_match",
    /// Refused: the cluster has no endpoint (black hole).
    UpstreamCxNoneHealthy => "upstream_cx_none_healthy",
    /// Refused: an ORIGINAL_DST override is not an `ip:port` (Envoy's `original_dst_host_invalid`).
    OriginalDstHostInvalid => "original_dst_host_invalid",
    /// Refused: the HTTP request head outgrew `http_head_max_bytes`.
    HttpHeadTooLarge => "http_head_too_large",
    /// Refused: the HTTP request head did not arrive in time.
    HttpHeadTimeout => "http_head_timeout",
    /// Refused: not an HTTP/1 request head.
    HttpHeadInvalid => "http_head_invalid",
    /// Refused: the redirect-record query failed.
    RefusedRecordQueryFailed => "refused_redirect_record_query_failed",
    /// Refused: the original-destination header appeared more than once.
    OriginalDstHostDuplicate => "original_dst_host_duplicate",
    /// Refused: a destination that arrived as text (header, metadata, filter state) is one that
    /// `origdst.destination_policy` forbids (origdst's own admin or listeners, loopback,
    /// link-local, or a configured CIDR or port).
    RefusedDestinationDenied => "refused_destination_denied",
    /// Refused: more internal-listener hops than the limit (8).
    RefusedInternalHopLimit => "refused_internal_hop_limit",
    /// Connections handed from a `use_original_dst` listener to the listener of their destination.
    ListenerHandoff => "listener_handoff",
    /// Internal-listener connections whose passthrough metadata was absent at the endpoint
    /// (Envoy's internal_upstream `no_metadata`).
    NoMetadata => "no_metadata",
    /// Upstream connects retried after a failure (`max_connect_attempts`).
    UpstreamCxConnectRetry => "upstream_cx_connect_attempts_retried",
    /// Connections whose every connect attempt failed (Envoy's `upstream_cx_connect_attempts_exceeded`).
    UpstreamCxConnectAttemptsExceeded => "upstream_cx_connect_attempts_exceeded",
    /// Refused: the shard's connection limit was reached.
    RefusedOverflow => "downstream_cx_overflow",
    /// Accepts that failed in the kernel (EMFILE, ENFILE, ENOMEM, ...).
    AcceptFail => "downstream_cx_accept_fail",
    /// Times a shard ran out of file descriptors and paused accepting (connections wait in the
    /// kernel's listen backlog meanwhile).
    AcceptPausedNoFd => "downstream_cx_accept_paused_no_fd",
    /// Upstream connects that found no descriptor and waited for one (accepted connections are
    /// parked, not reset; their connect timeout still bounds the wait, and one that expires
    /// there ends as `upstream_cx_connect_timeout`).
    UpstreamCxParkedNoFd => "upstream_cx_parked_no_fd",
    /// Errors (resets) found by the per-socket error watch while the connection waited on the
    /// other side; each ended its connection within the turn (they are counted again under their
    /// outcome, e.g. `downstream_cx_reset`).
    WatchedErrors => "watched_socket_errors",
    /// Connections the kernel relayed (`kernel-sockmap`: the pair went into the BPF socket map).
    KernelRelayCx => "kernel_relay_cx_total",
    /// Connections the kernel relay did not take (map full, socket refused): relayed by the
    /// readiness path instead.
    KernelRelayRefused => "kernel_relay_refused",
    /// Directions the kernel relay handed back before they started (bytes arrived before the
    /// pair was complete): copied by the shard, in order, from then on.
    KernelRelaySpilled => "kernel_relay_spilled",
    /// Accepted connections whose client was already gone (reset while in the accept queue, or
    /// before origdst could read its addresses): nothing to relay or reset.
    AcceptClientGone => "downstream_cx_accept_client_gone",
    /// Upstream sockets bound to the client's address (`original_src`).
    OriginalSrcBound => "original_src_bound",
    /// `original_src` skipped: the client and the destination are of different IP families.
    OriginalSrcFamilyMismatch => "original_src_family_mismatch",
    /// Connections a listener's socket accepted as a reload took the listener out of the config
    /// (in the moment between its stop and its cancelled accept): reset, there is no config to
    /// route them by.
    AcceptListenerGone => "downstream_cx_listener_removed",
}

/// A shard's counters, indexed by [`Counter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters([u64; Counter::COUNT]);

impl Default for Counters {
    fn default() -> Self {
        Self([0; Counter::COUNT])
    }
}

impl Counters {
    /// Adds `n` to `counter`.
    pub fn add(&mut self, counter: Counter, n: u64) {
        let slot = &mut self.0[counter as usize];
        *slot = slot.wrapping_add(n);
    }

    /// Adds one to `counter`.
    pub fn incr(&mut self, counter: Counter) {
        self.add(counter, 1);
    }

    /// The value of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    /// Downstream connections accepted and not yet destroyed.
    pub fn active(&self) -> u64 {
        self.get(Counter::DownstreamCxTotal)
            .saturating_sub(self.get(Counter::DownstreamCxDestroy))
    }

    /// Element-wise sum: how shards are aggregated.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
    }

    /// All counters as (name, value), in index order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.iter().map(|&c| (c.name(), self.get(c)))
    }

    /// Raw values in index order, for lock-free publication.
    pub fn as_array(&self) -> &[u64; Counter::COUNT] {
        &self.0
    }

    /// Rebuilds counters from raw values in index order.
    pub fn from_array(values: [u64; Counter::COUNT]) -> Self {
        Self(values)
    }

    pub(crate) fn record_provenance(&mut self, provenance: Provenance) {
        self.incr(match provenance {
            Provenance::SockOptV4 => Counter::OrigDstSockOptV4,
            Provenance::SockOptV6 => Counter::OrigDstSockOptV6,
            Provenance::TransparentLocal => Counter::OrigDstTransparent,
            Provenance::InternalMetadata => Counter::OrigDstInternalMetadata,
            Provenance::InternalFilterState => Counter::OrigDstInternalFilterState,
        });
    }

    pub(crate) fn record_bytes(&mut self, dir: Dir, n: u64) {
        self.add(
            match dir {
                Dir::ClientToUpstream => Counter::DownstreamCxRxBytesTotal,
                Dir::UpstreamToClient => Counter::DownstreamCxTxBytesTotal,
            },
            n,
        );
    }

    pub(crate) fn record_outcome(&mut self, outcome: Outcome) {
        self.incr(Counter::DownstreamCxDestroy);
        self.incr(match outcome {
            Outcome::Completed => Counter::Completed,
            Outcome::Refused(reason) => refusal_counter(reason),
            Outcome::ConnectFailed(_) => Counter::UpstreamCxConnectFail,
            Outcome::ConnectTimeout => Counter::UpstreamCxConnectTimeout,
            Outcome::UpstreamFailed(_) => Counter::UpstreamCxReset,
            Outcome::ClientFailed(_) => Counter::DownstreamCxReset,
            Outcome::IdleTimeout => Counter::IdleTimeout,
            Outcome::DrainAborted => Counter::DrainAborted,
            Outcome::Overflow => Counter::RefusedOverflow,
        });
    }
}

impl Counter {
    /// For a counter of refused connections, the refusal reason (as `RefuseReason::name` and the
    /// access log spell it; overflow, refused before routing, is "overflow").
    pub const fn refusal_reason(self) -> Option<&'static str> {
        Some(match self {
            Self::RefusedNoOriginalDst => "no_original_dst",
            Self::RefusedQueryFailed => "orig_dst_query_failed",
            Self::RefusedDestinationIsListener => "destination_is_listener",
            Self::RefusedOwnMark => "own_mark",
            Self::RefusedOwnUpstream => "own_upstream",
            Self::RefusedInvalidMetadata => "invalid_metadata",
            Self::NoFilterChainMatch => "no_filter_chain_match",
            Self::UpstreamCxNoneHealthy => "no_healthy_upstream",
            Self::OriginalDstHostInvalid => "original_dst_host_invalid",
            Self::HttpHeadTooLarge => "http_head_too_large",
            Self::HttpHeadTimeout => "http_head_timeout",
            Self::HttpHeadInvalid => "http_head_invalid",
            Self::RefusedRecordQueryFailed => "redirect_record_query_failed",
            Self::OriginalDstHostDuplicate => "original_dst_host_duplicate",
            Self::RefusedDestinationDenied => "destination_denied",
            Self::RefusedInternalHopLimit => "internal_hop_limit",
            Self::RefusedOverflow => "overflow",
            _ => return None,
        })
    }

    /// For a counter of original destinations, where they came from (`Provenance::name`).
    pub const fn provenance(self) -> Option<&'static str> {
        Some(match self {
            Self::OrigDstSockOptV4 => Provenance::SockOptV4.name(),
            Self::OrigDstSockOptV6 => Provenance::SockOptV6.name(),
            Self::OrigDstTransparent => Provenance::TransparentLocal.name(),
            Self::OrigDstInternalMetadata => Provenance::InternalMetadata.name(),
            Self::OrigDstInternalFilterState => Provenance::InternalFilterState.name(),
            _ => return None,
        })
    }
}

fn refusal_counter(reason: RefuseReason) -> Counter {
    match reason {
        RefuseReason::NoOriginalDst => Counter::RefusedNoOriginalDst,
        RefuseReason::QueryFailed { .. } => Counter::RefusedQueryFailed,
        RefuseReason::DestinationIsListener => Counter::RefusedDestinationIsListener,
        RefuseReason::OwnMark { .. } => Counter::RefusedOwnMark,
        RefuseReason::OwnUpstream => Counter::RefusedOwnUpstream,
        RefuseReason::InvalidMetadata => Counter::RefusedInvalidMetadata,
        RefuseReason::NoFilterChainMatch => Counter::NoFilterChainMatch,
        RefuseReason::NoHealthyUpstream => Counter::UpstreamCxNoneHealthy,
        RefuseReason::InvalidOriginalDstHost => Counter::OriginalDstHostInvalid,
        RefuseReason::HttpHeadTooLarge => Counter::HttpHeadTooLarge,
        RefuseReason::HttpHeadTimeout => Counter::HttpHeadTimeout,
        RefuseReason::HttpHeadInvalid => Counter::HttpHeadInvalid,
        RefuseReason::RecordQueryFailed { .. } => Counter::RefusedRecordQueryFailed,
        RefuseReason::DuplicateOriginalDstHost => Counter::OriginalDstHostDuplicate,
        RefuseReason::DestinationDenied { .. } => Counter::RefusedDestinationDenied,
        RefuseReason::InternalHopLimit => Counter::RefusedInternalHopLimit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_labels_are_the_reasons_names() {
        let reasons = [
            RefuseReason::NoOriginalDst,
            RefuseReason::QueryFailed { errno: 1 },
            RefuseReason::DestinationIsListener,
            RefuseReason::OwnMark { mark: 1 },
            RefuseReason::OwnUpstream,
            RefuseReason::InvalidMetadata,
            RefuseReason::NoFilterChainMatch,
            RefuseReason::NoHealthyUpstream,
            RefuseReason::InvalidOriginalDstHost,
            RefuseReason::HttpHeadTooLarge,
            RefuseReason::HttpHeadTimeout,
            RefuseReason::HttpHeadInvalid,
            RefuseReason::RecordQueryFailed { errno: 1 },
            RefuseReason::DuplicateOriginalDstHost,
            RefuseReason::DestinationDenied {
                rule: crate::config::DenyRule::Loopback,
            },
            RefuseReason::InternalHopLimit,
        ];
        for reason in reasons {
            assert_eq!(
                refusal_counter(reason).refusal_reason(),
                Some(reason.name())
            );
        }
        let labelled = Counter::ALL
            .iter()
            .filter(|c| c.refusal_reason().is_some())
            .count();
        assert_eq!(
            labelled,
            reasons.len() + 1,
            "every refusal counter has a reason"
        );
        assert!(Counter::ALL.iter().all(|c| !c.help().is_empty()));
    }

    #[test]
    fn names_are_unique_and_indexes_dense() {
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Counter::COUNT);
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
        }
    }

    #[test]
    fn merge_sums_and_active_is_total_minus_destroyed() {
        let mut a = Counters::default();
        a.add(Counter::DownstreamCxTotal, 5);
        a.add(Counter::DownstreamCxDestroy, 2);
        let mut b = Counters::default();
        b.add(Counter::DownstreamCxTotal, 1);
        b.add(Counter::DownstreamCxRxBytesTotal, 10);
        a.merge(&b);
        assert_eq!(a.get(Counter::DownstreamCxTotal), 6);
        assert_eq!(a.get(Counter::DownstreamCxRxBytesTotal), 10);
        assert_eq!(a.active(), 4);
        assert_eq!(Counters::from_array(*a.as_array()), a);
        let listed: Vec<_> = a.iter().collect();
        assert_eq!(listed.len(), Counter::COUNT);
        assert_eq!(listed[0], ("downstream_cx_total", 6));
        assert_eq!(
            listed[Counter::DownstreamCxRxBytesTotal as usize],
            ("downstream_cx_rx_bytes_total", 10)
        );
    }
}
