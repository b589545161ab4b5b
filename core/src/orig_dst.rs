//! Original-destination resolution: what the runtime read from the accepted socket (once), turned
//! into one destination with its provenance, or a refusal.
//!
//! The runtime does the getsockopt/getsockname calls; the *policy* — which source wins, what counts
//! as "not redirected", what is a loop — lives here so it is unit-tested and runs unchanged in the
//! simulator.

use std::net::{IpAddr, SocketAddr};

use crate::addr::{ClientAddr, ListenerAddr, LocalAddr, OrigDstAddr};

/// Which source the original destination came from. Recorded per connection for stats and the
/// access log, so an operator can tell a TPROXY hit from a REDIRECT hit from a metadata hand-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Provenance {
    /// `SO_ORIGINAL_DST` on an IPv4 socket (iptables/nftables REDIRECT or DNAT).
    SockOptV4,
    /// `IP6T_SO_ORIGINAL_DST` on an IPv6 socket.
    SockOptV6,
    /// The accepted socket's local address on a transparent (TPROXY) listener.
    TransparentLocal,
    /// Dynamic metadata `envoy.filters.listener.original_dst` field `local` (internal listeners).
    InternalMetadata,
    /// Filter state `envoy.filters.listener.original_dst.local_ip` (internal listeners).
    InternalFilterState,
}

impl Provenance {
    /// Stable snake_case name used in logs and counters.
    pub const fn name(self) -> &'static str {
        match self {
            Self::SockOptV4 => "sockopt_v4",
            Self::SockOptV6 => "sockopt_v6",
            Self::TransparentLocal => "transparent_local",
            Self::InternalMetadata => "internal_metadata",
            Self::InternalFilterState => "internal_filter_state",
        }
    }
}

/// The answer to `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`, as the runtime got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SockOptAnswer {
    /// The option returned this address on an IPv4 socket.
    V4(SocketAddr),
    /// The option returned this address on an IPv6 socket.
    V6(SocketAddr),
    /// `ENOENT`: conntrack has no NAT entry for this connection (it was never redirected, or the
    /// entry is gone).
    NotFound,
    /// Any other errno.
    Failed {
        /// The raw errno, for the log line.
        errno: i32,
    },
    /// The runtime did not ask (transparent or internal listeners).
    NotQueried,
}

/// What an internal listener's user-space connection carries instead of socket options.
/// Strings as the upstream endpoint put them; parsed (and refused when malformed) here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InternalMetadata {
    /// Dynamic metadata `envoy.filters.listener.original_dst`, field `local` ("ip:port").
    pub dynamic_local: Option<String>,
    /// Filter state `envoy.filters.listener.original_dst.local_ip` ("ip:port").
    pub filter_state_local: Option<String>,
    /// Filter state `envoy.filters.listener.original_dst.remote_ip` (or the documented alias
    /// `...source_ip`) ("ip:port").
    pub filter_state_remote: Option<String>,
    /// Filter state `envoy.network.transport_socket.original_dst_address` ("ip:port"): an
    /// ORIGINAL_DST cluster's first choice.
    pub filter_state_original_dst_address: Option<String>,
    /// The endpoint's passthrough metadata (namespace → field → value), for `metadata_key`.
    pub dynamic: crate::config::FilterMetadata,
    /// Internal listeners this connection has passed through so far (1 for the first inner
    /// connection); bounded by [`crate::config::INTERNAL_HOPS_MAX`].
    pub hops: u8,
}

/// An opaque Windows-style (HNS/WFP) redirect record attached to an accepted connection. It must be
/// applied to the upstream socket so the platform does not redirect the proxy's own connection again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedirectRecord(pub Vec<u8>);

/// What the platform said about a redirect record for an accepted connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RecordAnswer {
    /// No record (Linux, or a connection the platform did not redirect).
    #[default]
    None,
    /// The record to apply to the upstream socket.
    Record(RedirectRecord),
    /// The query failed: the connection is closed and counted (Envoy stops the filter chain).
    Failed {
        /// The raw error code, for the log line.
        errno: i32,
    },
}

/// Everything the runtime read from an accepted connection, once, before core decides anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptEvidence {
    /// The peer as the kernel reports it.
    pub client: ClientAddr,
    /// `getsockname` of the accepted socket.
    pub local: LocalAddr,
    /// Whether the listener is transparent (TPROXY): then `local` *is* the original destination.
    pub transparent: bool,
    /// The socket-option answer (`NotQueried` on transparent and internal listeners).
    pub sockopt: SockOptAnswer,
    /// `SO_MARK` of the accepted socket, when the runtime could read it.
    pub mark: Option<u32>,
    /// Present only on connections that arrived through an internal listener.
    pub internal: Option<InternalMetadata>,
    /// The peer is one of this process's own upstream sockets (same source address and original
    /// destination): our own connection was redirected back to us. Works without marks or sysctls.
    pub own_upstream: bool,
    /// Where the platform attaches redirect records: the record, or the failed query.
    pub redirect_record: RecordAnswer,
}

/// A resolved original destination and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    /// The destination the client dialled.
    pub orig_dst: OrigDstAddr,
    /// Which source won.
    pub provenance: Provenance,
}

/// Why a connection is refused instead of relayed. Each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum RefuseReason {
    /// Nobody redirected this connection: the kernel has no NAT entry, or the "original"
    /// destination is just the socket's own local address (someone dialled the proxy port).
    #[error("no original destination (the connection was not redirected)")]
    NoOriginalDst,
    /// The original-destination query failed with an unexpected errno.
    #[error("original-destination query failed (errno {errno})")]
    QueryFailed {
        /// The raw errno.
        errno: i32,
    },
    /// The destination is one of the proxy's own listeners: relaying would loop.
    #[error("original destination is one of origdst's own listeners (loop)")]
    DestinationIsListener,
    /// The connection carries the mark the proxy puts on its own upstream sockets: it is the
    /// proxy's own traffic redirected back to it.
    #[error("connection carries origdst's own mark {mark:#x} (loop)")]
    OwnMark {
        /// The mark seen.
        mark: u32,
    },
    /// The connection comes from one of the proxy's own upstream sockets: a redirect loop.
    #[error("connection comes from origdst's own upstream socket (loop)")]
    OwnUpstream,
    /// Internal-listener metadata was present but not an "ip:port".
    #[error("internal-listener metadata is not an ip:port")]
    InvalidMetadata,
    /// No filter chain of the listener matches and it has no default chain.
    #[error("no filter chain matches")]
    NoFilterChainMatch,
    /// The chain's cluster has no endpoint (a black hole, like Istio's BlackHoleCluster).
    #[error("the cluster has no endpoint")]
    NoHealthyUpstream,
    /// An ORIGINAL_DST override (filter state, metadata, header) is not an `ip:port`.
    #[error("the original-destination override is not an ip:port")]
    InvalidOriginalDstHost,
    /// `use_http_header`: the request head grew past `http_head_max_bytes`.
    #[error("HTTP request head larger than the limit")]
    HttpHeadTooLarge,
    /// `use_http_header`: the request head did not arrive within `http_head_timeout`.
    #[error("HTTP request head not complete within the timeout")]
    HttpHeadTimeout,
    /// `use_http_header`: the client's bytes are not an HTTP/1 request head (or it closed first).
    #[error("not an HTTP/1 request head")]
    HttpHeadInvalid,
    /// `use_http_header`: the destination header appears more than once (which one a server
    /// behind would honour is anybody's guess, so neither is).
    #[error("the original-destination header appears more than once")]
    DuplicateOriginalDstHost,
    /// A destination that arrived as text (header, metadata, filter state) is refused by
    /// `origdst.destination_policy`.
    #[error("destination refused by origdst.destination_policy ({})", rule.name())]
    DestinationDenied {
        /// Which rule refused it.
        rule: crate::config::DenyRule,
    },
    /// The connection would pass more internal listeners than
    /// [`crate::config::INTERNAL_HOPS_MAX`] (a cycle the config check cannot see).
    #[error("too many internal-listener hops")]
    InternalHopLimit,
    /// The platform's redirect-record query failed: the upstream could not be protected from
    /// being redirected again, so the connection is not relayed.
    #[error("redirect-record query failed (error {errno})")]
    RecordQueryFailed {
        /// The raw error code.
        errno: i32,
    },
}

impl RefuseReason {
    /// Stable snake_case name used in logs and counters.
    pub const fn name(self) -> &'static str {
        match self {
            Self::NoOriginalDst => "no_original_dst",
            Self::QueryFailed { .. } => "orig_dst_query_failed",
            Self::DestinationIsListener => "destination_is_listener",
            Self::OwnMark { .. } => "own_mark",
            Self::OwnUpstream => "own_upstream",
            Self::InvalidMetadata => "invalid_metadata",
            Self::NoFilterChainMatch => "no_filter_chain_match",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::InvalidOriginalDstHost => "original_dst_host_invalid",
            Self::HttpHeadTooLarge => "http_head_too_large",
            Self::HttpHeadTimeout => "http_head_timeout",
            Self::HttpHeadInvalid => "http_head_invalid",
            Self::DuplicateOriginalDstHost => "original_dst_host_duplicate",
            Self::DestinationDenied { .. } => "destination_denied",
            Self::InternalHopLimit => "internal_hop_limit",
            Self::RecordQueryFailed { .. } => "redirect_record_query_failed",
        }
    }
}

/// What the proxy knows about itself, to refuse loops. Built once by the runtime at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelfAddrs {
    /// Every address a listener of this process is bound to.
    pub listeners: Vec<ListenerAddr>,
    /// The host's own IP addresses (for wildcard listeners); loopback is always included.
    pub local_ips: Vec<IpAddr>,
    /// The mark origdst puts on its upstream sockets (`None`: marking is off).
    pub own_mark: Option<u32>,
    /// The admin endpoint, if on: never a destination for text that a client controls.
    pub admin: Option<SocketAddr>,
}

impl SelfAddrs {
    /// Whether a connection to `dst` would reach one of our own listeners.
    pub fn is_listener(&self, dst: SocketAddr) -> bool {
        self.listeners
            .iter()
            .any(|listener| self.reaches(listener.get(), dst))
    }

    /// Whether a connection to `dst` would reach one of our own listeners or the admin endpoint.
    pub fn is_own(&self, dst: SocketAddr) -> bool {
        self.is_listener(dst) || self.admin.is_some_and(|admin| self.reaches(admin, dst))
    }

    /// Whether dialling `dst` reaches a socket bound to `bound` on this host.
    fn reaches(&self, bound: SocketAddr, dst: SocketAddr) -> bool {
        let dst = crate::addr::canonical(dst);
        if bound.port() != dst.port() {
            return false;
        }
        let bound = crate::addr::canonical_ip(bound.ip());
        if bound.is_unspecified() {
            dst.ip().is_loopback()
                || dst.ip().is_unspecified()
                || self.local_ips.contains(&dst.ip())
        } else {
            bound == dst.ip()
        }
    }
}

/// Resolves the original destination from `evidence` and applies the refusal rules, in this
/// order: own mark, own upstream, destination source (internal metadata > transparent local >
/// socket option), "not restored", destination is a listener.
pub fn resolve(evidence: &AcceptEvidence, me: &SelfAddrs) -> Result<Resolution, RefuseReason> {
    refuse_loops(evidence, me)?;
    let resolution = restored(evidence)?.ok_or(RefuseReason::NoOriginalDst)?;
    if me.is_listener(resolution.orig_dst.get()) {
        return Err(RefuseReason::DestinationIsListener);
    }
    Ok(resolution)
}

/// Refuses our own traffic come back: our mark, or one of our own upstream sockets.
pub fn refuse_loops(evidence: &AcceptEvidence, me: &SelfAddrs) -> Result<(), RefuseReason> {
    if let (Some(mark), Some(own)) = (evidence.mark, me.own_mark)
        && mark == own
    {
        return Err(RefuseReason::OwnMark { mark });
    }
    if evidence.own_upstream {
        return Err(RefuseReason::OwnUpstream);
    }
    Ok(())
}

/// The destination the original_dst listener filter restores: `None` when the connection was not
/// redirected (no NAT entry, no metadata, or the "original" destination is the socket's own
/// address), an error when the query failed or the metadata is malformed.
pub fn restored(evidence: &AcceptEvidence) -> Result<Option<Resolution>, RefuseReason> {
    let resolution = match destination(evidence) {
        Ok(resolution) => resolution,
        Err(RefuseReason::NoOriginalDst) => return Ok(None),
        Err(other) => return Err(other),
    };
    // A socket-option answer equal to our own local address means conntrack saw no NAT: the client
    // dialled us directly. Envoy recursed on this until it ran out of connections (envoy#2346).
    let sockopt = matches!(
        resolution.provenance,
        Provenance::SockOptV4 | Provenance::SockOptV6
    );
    if sockopt && resolution.orig_dst.get() == evidence.local.get() {
        return Ok(None);
    }
    Ok(Some(resolution))
}

fn destination(evidence: &AcceptEvidence) -> Result<Resolution, RefuseReason> {
    if let Some(internal) = &evidence.internal {
        return internal_destination(internal);
    }
    if evidence.transparent {
        return Ok(Resolution {
            orig_dst: OrigDstAddr::new(evidence.local.get()),
            provenance: Provenance::TransparentLocal,
        });
    }
    let (addr, provenance) = match evidence.sockopt {
        SockOptAnswer::V4(addr) => (addr, Provenance::SockOptV4),
        SockOptAnswer::V6(addr) => (addr, Provenance::SockOptV6),
        SockOptAnswer::NotFound | SockOptAnswer::NotQueried => {
            return Err(RefuseReason::NoOriginalDst);
        }
        SockOptAnswer::Failed { errno } => return Err(RefuseReason::QueryFailed { errno }),
    };
    Ok(Resolution {
        orig_dst: OrigDstAddr::new(addr),
        provenance,
    })
}

/// Dynamic metadata wins over filter state, as in Envoy's original_dst listener filter.
fn internal_destination(internal: &InternalMetadata) -> Result<Resolution, RefuseReason> {
    let (text, provenance) = match (&internal.dynamic_local, &internal.filter_state_local) {
        (Some(text), _) => (text, Provenance::InternalMetadata),
        (None, Some(text)) => (text, Provenance::InternalFilterState),
        (None, None) => return Err(RefuseReason::NoOriginalDst),
    };
    let addr: SocketAddr = text.parse().map_err(|_| RefuseReason::InvalidMetadata)?;
    Ok(Resolution {
        orig_dst: OrigDstAddr::new(addr),
        provenance,
    })
}

#[cfg(test)]
mod tests;
