//! Which listener, filter chain and upstream a connection gets: Envoy's `use_original_dst`
//! hand-off, filter-chain matching and cluster selection (ORIGINAL_DST precedence, STATIC round
//! robin, black holes), as a pure function of the config and what the runtime read at accept.
//!
//! ```text
//!  evidence ─▶ loops? ─▶ original_dst filter restores ─▶ use_original_dst hand-off ─▶ chain match
//!        ─▶ set_filter_state ─▶ cluster: ORIGINAL_DST (filter state > metadata_key > header >
//!           restored, then port override) | STATIC (round robin; none = black hole)
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use crate::addr::{ClientAddr, OrigDstAddr, UpstreamAddr};
use crate::config::{
    Cidr, ClusterKind, Config, ConnParams, DestinationPolicy, EndpointTarget, FilterChain,
    FilterStateKey, FormatValue, Listener, OriginalDstLb, SharedWithUpstream,
};
use crate::orig_dst::{
    self, AcceptEvidence, InternalMetadata, RefuseReason, Resolution, SelfAddrs,
};
use crate::stats::{Counter, Counters};

/// Where a routed connection goes and with which knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The listener that handles it (after a hand-off, the target).
    pub listener: usize,
    /// Which of its chains (see [`Route::chain`]).
    pub chain: ChainId,
    /// Timeouts, mark, source binding.
    pub params: ConnParams,
    /// `max_connect_attempts`.
    pub max_connect_attempts: u32,
    /// The destination the original_dst filter restored, if any.
    pub resolution: Option<Resolution>,
    /// How the upstream is chosen.
    pub upstream: UpstreamPlan,
}

/// How the upstream is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamPlan {
    /// Known now.
    Connect(Target),
    /// `use_http_header`: read the request head first.
    ReadHead(HeadPlan),
}

/// What to do with the request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadPlan {
    /// The header holding `ip:port` (lower-case).
    pub header: String,
    /// Where to go when the head has no such header: the restored destination.
    pub fallback: Option<OrigDstAddr>,
    /// `upstream_port_override`.
    pub port_override: Option<u16>,
    /// `origdst.http_head_max_bytes`.
    pub max_bytes: u32,
    /// `origdst.http_head_timeout`.
    pub timeout: Duration,
}

/// An upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A kernel socket address.
    Socket(UpstreamAddr),
    /// An internal listener in this process, and what crosses with the connection.
    Internal {
        /// Index into [`Config::listeners`].
        listener: usize,
        /// Metadata and filter state for the internal listener's original_dst filter (boxed:
        /// rare, and it would triple the size of every connection).
        handoff: Box<InternalMetadata>,
    },
}

/// Per-shard routing state: a round-robin cursor per cluster. Shards balance independently, as
/// Envoy's workers do.
#[derive(Debug, Clone, Default)]
pub struct Balancer {
    cursors: Vec<usize>,
}

impl Balancer {
    fn next(&mut self, cluster: usize, endpoints: usize) -> usize {
        debug_assert!(endpoints > 0);
        if self.cursors.len() <= cluster {
            self.cursors.resize(cluster + 1, 0);
        }
        let cursor = &mut self.cursors[cluster];
        let pick = *cursor % endpoints;
        *cursor = cursor.wrapping_add(1);
        pick
    }

    /// The cursors for `new` after a reload from `old`: a cluster keeps its place in the round
    /// by name (its position may have moved); a new cluster starts at its first endpoint.
    ///
    /// Through an index by name: every shard does this at every reload and control-plane push,
    /// and a search per cluster made it quadratic in a mesh's clusters (312 ms at 10 000 in the
    /// `reload_carry_balancer` benchmark, release build).
    pub fn carried_over(&self, old: &Config, new: &Config) -> Self {
        let by_name: std::collections::HashMap<&str, usize> = old
            .clusters
            .iter()
            .zip(&self.cursors)
            .map(|(cluster, &cursor)| (cluster.name.as_str(), cursor))
            .collect();
        let cursors = new
            .clusters
            .iter()
            .map(|cluster| by_name.get(cluster.name.as_str()).copied().unwrap_or(0))
            .collect();
        Self { cursors }
    }
}

/// Routes a connection accepted on `listener`. Counts hand-offs and missing metadata; the
/// refusal itself is counted by [`crate::connection::Connection::start`].
pub fn route(
    config: &Config,
    me: &SelfAddrs,
    listener: usize,
    evidence: &AcceptEvidence,
    balancer: &mut Balancer,
    stats: &mut Counters,
) -> Result<Route, RefuseReason> {
    orig_dst::refuse_loops(evidence, me)?;
    let receiving = &config.listeners[listener];
    let resolution = if receiving.original_dst {
        orig_dst::restored(evidence)?
    } else {
        None
    };
    // What Envoy calls the downstream local address: restored, or the socket's own.
    let local = resolution.map_or(evidence.local.get(), |r| r.orig_dst.get());
    let handling = match resolution {
        Some(r) if receiving.use_original_dst => match handoff_target(config, r.orig_dst.get()) {
            Some(target) => {
                stats.incr(Counter::ListenerHandoff);
                target
            }
            None => listener,
        },
        _ => listener,
    };
    let handler = &config.listeners[handling];
    let chain_id =
        select_chain(handler, local, evidence.client).ok_or(RefuseReason::NoFilterChainMatch)?;
    let chain = match chain_id {
        ChainId::Listed(index) => &handler.filter_chains[index],
        ChainId::Default => handler
            .default_filter_chain
            .as_ref()
            .expect("select_chain returns Default only when there is one"),
    };
    let state = FilterState::evaluate(chain, local, evidence.client);
    let cluster_index = chain.tcp_proxy.cluster;
    let cluster = &config.clusters[cluster_index];
    let upstream = match &cluster.kind {
        ClusterKind::Static { endpoints } => {
            if endpoints.is_empty() {
                return Err(RefuseReason::NoHealthyUpstream);
            }
            let endpoint = &endpoints[balancer.next(cluster_index, endpoints.len())];
            match endpoint.target {
                EndpointTarget::Socket(addr) => {
                    UpstreamPlan::Connect(Target::Socket(UpstreamAddr::new(addr)))
                }
                EndpointTarget::Internal { listener } => {
                    // Counted per connection, whatever the config check said: a proxy never
                    // follows a chain of its own listeners without end.
                    let hops = evidence
                        .internal
                        .as_ref()
                        .map_or(0, |i| i.hops)
                        .saturating_add(1);
                    if hops > crate::config::INTERNAL_HOPS_MAX {
                        return Err(RefuseReason::InternalHopLimit);
                    }
                    let mut handoff = state.shared();
                    handoff.hops = hops;
                    for namespace in &cluster.passthrough_metadata {
                        match endpoint.metadata.get(namespace) {
                            Some(fields) => {
                                handoff.dynamic.insert(namespace.clone(), fields.clone());
                            }
                            None => stats.incr(Counter::NoMetadata),
                        }
                    }
                    handoff.dynamic_local = handoff
                        .dynamic
                        .get(ORIGINAL_DST_NAMESPACE)
                        .and_then(|fields| fields.get("local"))
                        .cloned();
                    UpstreamPlan::Connect(Target::Internal {
                        listener,
                        handoff: Box::new(handoff),
                    })
                }
            }
        }
        ClusterKind::OriginalDst(lb) => {
            original_dst_upstream(config, me, lb, &state, evidence, resolution)?
        }
        // Validation refuses a chain naming the control plane's cluster; were one to get here,
        // it has no endpoint a connection could use.
        ClusterKind::ControlPlane { .. } => return Err(RefuseReason::NoHealthyUpstream),
    };
    Ok(Route {
        listener: handling,
        chain: chain_id,
        params: config.params(handler, chain),
        max_connect_attempts: chain.tcp_proxy.max_connect_attempts,
        resolution,
        upstream,
    })
}

/// ORIGINAL_DST: filter state > `metadata_key` > HTTP header > restored destination, then
/// `upstream_port_override`; never one of our own listeners.
fn original_dst_upstream(
    config: &Config,
    me: &SelfAddrs,
    lb: &OriginalDstLb,
    state: &FilterState,
    evidence: &AcceptEvidence,
    resolution: Option<Resolution>,
) -> Result<UpstreamPlan, RefuseReason> {
    let parse = |text: &str| parse_host(text);
    let from_state = match state.original_dst_address {
        Some(addr) => Some(addr),
        None => evidence
            .internal
            .as_ref()
            .and_then(|i| i.filter_state_original_dst_address.as_deref())
            .map(parse)
            .transpose()?,
    };
    let from_metadata = match (&lb.metadata_key, &evidence.internal) {
        (Some(key), Some(internal)) => internal
            .dynamic
            .get(&key.filter)
            .and_then(|fields| fields.get(&key.field))
            .map(|text| parse(text))
            .transpose()?,
        _ => None,
    };
    // Where the choice came from decides whether the destination policy applies: text that
    // crossed from elsewhere (metadata, shared filter state, a literal) does; what the kernel
    // restored here (`%DOWNSTREAM_LOCAL_ADDRESS%` of a redirected socket) does not.
    let from_kernel = |addr: SocketAddr| {
        evidence.internal.is_none()
            && resolution.is_some_and(|r| r.orig_dst.get() == addr)
            && state.original_dst_address_is_local
    };
    let chosen = from_state.or(from_metadata);
    if chosen.is_none() && lb.use_http_header {
        return Ok(UpstreamPlan::ReadHead(HeadPlan {
            header: lb.http_header_name.clone(),
            fallback: resolution.map(|r| r.orig_dst),
            port_override: lb.upstream_port_override,
            max_bytes: config.knobs.http_head_max_bytes,
            timeout: config.knobs.http_head_timeout,
        }));
    }
    let (dst, text) = match chosen {
        Some(addr) => (addr, !from_kernel(addr)),
        None => {
            let restored = resolution.ok_or(RefuseReason::NoOriginalDst)?;
            // An internal listener's "restored" destination is metadata text too.
            (restored.orig_dst.get(), evidence.internal.is_some())
        }
    };
    let policy = text.then_some(&config.knobs.destination_policy);
    finish_original_dst(me, dst, lb.upstream_port_override, policy).map(UpstreamPlan::Connect)
}

/// An ORIGINAL_DST override as text: `ip:port` (`[v6]:port`), nothing else — no host names, no
/// surrounding junk, bounded before it is parsed.
pub fn parse_host(text: &str) -> Result<SocketAddr, RefuseReason> {
    // The longest `[v6%scope]:port` is well under 64 bytes.
    if text.len() > HOST_TEXT_MAX {
        return Err(RefuseReason::InvalidOriginalDstHost);
    }
    text.parse::<SocketAddr>()
        .map_err(|_| RefuseReason::InvalidOriginalDstHost)
}

const HOST_TEXT_MAX: usize = 64;

/// The last ORIGINAL_DST steps, shared with the header path: canonical form, port override, loop
/// check, and — for a destination that arrived as text (`policy` given) — the destination policy,
/// which also keeps text away from origdst's admin endpoint.
pub fn finish_original_dst(
    me: &SelfAddrs,
    dst: SocketAddr,
    port_override: Option<u16>,
    policy: Option<&DestinationPolicy>,
) -> Result<Target, RefuseReason> {
    let mut dst = crate::addr::canonical(dst);
    if let Some(port) = port_override {
        dst.set_port(port);
    }
    if dst.port() == 0 || dst.ip().is_unspecified() {
        return Err(RefuseReason::InvalidOriginalDstHost);
    }
    if me.is_listener(dst) {
        return Err(RefuseReason::DestinationIsListener);
    }
    if let Some(policy) = policy {
        policy
            .check(dst, me.is_own(dst))
            .map_err(|rule| RefuseReason::DestinationDenied { rule })?;
    }
    Ok(Target::Socket(UpstreamAddr::new(dst)))
}

/// The `bind_to_port: false` listener whose address is `dst`: an exact match first, then a
/// wildcard of the same family and port (Envoy's order), looked up in the config's index.
fn handoff_target(config: &Config, dst: SocketAddr) -> Option<usize> {
    config.handoff.target(dst)
}

/// Which chain of a listener: an entry of `filter_chains`, or the `default_filter_chain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainId {
    /// `filter_chains[i]`.
    Listed(usize),
    /// `default_filter_chain`.
    Default,
}

impl Route {
    /// The chain that handles the connection.
    pub fn chain<'c>(&self, config: &'c Config) -> &'c FilterChain {
        let listener = &config.listeners[self.listener];
        match self.chain {
            ChainId::Listed(index) => &listener.filter_chains[index],
            ChainId::Default => listener
                .default_filter_chain
                .as_ref()
                .expect("a Default route has a default chain"),
        }
    }
}

/// Envoy's filter-chain match, narrowed field by field: destination port, destination IP
/// (longest prefix), source IP (longest prefix). A field's "unset" chains are the fallback only
/// when no chain names a matching value. No match: the default chain, if any. Each step is a pass
/// over the chains (no allocation on the accept path).
pub fn select_chain(listener: &Listener, local: SocketAddr, client: ClientAddr) -> Option<ChainId> {
    let chains = &listener.filter_chains;
    // Destination port: the chains naming it, else the ones naming none.
    let exact_port = chains
        .iter()
        .any(|c| c.matcher.destination_port == Some(local.port()));
    let by_port = |c: &FilterChain| match c.matcher.destination_port {
        Some(port) => port == local.port(),
        None => !exact_port,
    };
    let by_dst = narrow_by_prefix(chains, by_port, local.ip(), |c| &c.matcher.prefix_ranges);
    let by_src = narrow_by_prefix(chains, by_dst, client.ip(), |c| {
        &c.matcher.source_prefix_ranges
    });
    debug_assert!(
        chains.iter().filter(|c| by_src(c)).count() <= 1,
        "validation refuses identical matches"
    );
    chains
        .iter()
        .position(by_src)
        .map(ChainId::Listed)
        .or(listener
            .default_filter_chain
            .as_ref()
            .map(|_| ChainId::Default))
}

/// Narrows the chains `kept` accepts to those whose `ranges` hold `ip` with the longest prefix,
/// or, when none holds it, to those with no ranges at all.
fn narrow_by_prefix<'a>(
    chains: &'a [FilterChain],
    kept: impl Fn(&FilterChain) -> bool + 'a,
    ip: std::net::IpAddr,
    ranges: impl Fn(&FilterChain) -> &[Cidr] + Copy + 'a,
) -> impl Fn(&FilterChain) -> bool + 'a {
    let longest = move |c: &FilterChain| {
        ranges(c)
            .iter()
            .filter(|r| r.contains(ip))
            .map(|r| r.len)
            .max()
    };
    let best = chains.iter().filter(|c| kept(c)).filter_map(&longest).max();
    move |c: &FilterChain| {
        kept(c)
            && match best {
                Some(len) => longest(c) == Some(len),
                None => ranges(c).is_empty(),
            }
    }
}

/// The chain's `set_filter_state` values, evaluated for this connection.
struct FilterState {
    local_ip: Option<(SocketAddr, SharedWithUpstream)>,
    remote_ip: Option<(SocketAddr, SharedWithUpstream)>,
    original_dst_address: Option<SocketAddr>,
    /// `original_dst_address` is `%DOWNSTREAM_LOCAL_ADDRESS%` (what the kernel restored).
    original_dst_address_is_local: bool,
}

impl FilterState {
    fn evaluate(chain: &FilterChain, local: SocketAddr, client: ClientAddr) -> Self {
        let mut state = Self {
            local_ip: None,
            remote_ip: None,
            original_dst_address: None,
            original_dst_address_is_local: false,
        };
        for entry in &chain.filter_state {
            let value = match &entry.value {
                FormatValue::DownstreamLocalAddress => local,
                FormatValue::DownstreamRemoteAddress => client.get(),
                FormatValue::Literal(addr) => *addr,
            };
            // Later entries for the same key win, as a later filter overwrites Envoy's state.
            match entry.key {
                FilterStateKey::OriginalDstLocalIp => {
                    state.local_ip = Some((value, entry.shared_with_upstream));
                }
                FilterStateKey::OriginalDstRemoteIp => {
                    state.remote_ip = Some((value, entry.shared_with_upstream));
                }
                FilterStateKey::TransportSocketOriginalDstAddress => {
                    state.original_dst_address = Some(value);
                    state.original_dst_address_is_local =
                        matches!(entry.value, FormatValue::DownstreamLocalAddress);
                }
            }
        }
        state
    }

    /// What crosses to an internal listener: shared values set here; TRANSITIVE ones would cross
    /// further, ONCE ones only this hop (origdst does not track the difference past one hop).
    fn shared(&self) -> InternalMetadata {
        let shared = |v: &Option<(SocketAddr, SharedWithUpstream)>| {
            v.filter(|(_, s)| *s != SharedWithUpstream::None)
                .map(|(addr, _)| addr.to_string())
        };
        InternalMetadata {
            filter_state_local: shared(&self.local_ip),
            filter_state_remote: shared(&self.remote_ip),
            ..InternalMetadata::default()
        }
    }
}

/// The dynamic-metadata namespace of Envoy's original_dst listener filter.
pub const ORIGINAL_DST_NAMESPACE: &str = "envoy.filters.listener.original_dst";

#[cfg(test)]
mod tests;
