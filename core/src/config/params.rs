//! The per-connection knobs a route hands a connection: timeouts, mark, source preservation.

use std::net::SocketAddr;
use std::time::Duration;

use crate::addr::{ClientAddr, UpstreamAddr};

/// Per-connection knobs, from the listener's tcp_proxy and the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnParams {
    /// How long the upstream connect may take before the client is reset.
    pub connect_timeout: Duration,
    /// How long both directions may stay silent before both sides are reset (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// `SO_MARK` for the upstream socket (`None`: leave unmarked).
    pub upstream_mark: Option<u32>,
    /// Source preservation (Envoy's `original_src` listener filter): bind the upstream socket to
    /// the client's address. `None`: the kernel picks the source.
    pub original_src: Option<OriginalSrc>,
    /// The cluster's `upstream_bind_config`: a fixed source address per family (Istio's
    /// `InboundPassthroughCluster` binds `127.0.0.6` / `::6`). `original_src` wins over it.
    pub bind_source: BindSource,
}

/// An address the upstream socket binds before it connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// The address (port 0: connect picks it).
    pub addr: SocketAddr,
    /// Not one of this host's addresses (the client's, under `original_src`): binding it needs
    /// `IP_TRANSPARENT`. A cluster's bind address is the host's own and needs nothing.
    pub transparent: bool,
}

/// A cluster's source address per family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindSource {
    /// For IPv4 upstreams.
    pub v4: Option<std::net::Ipv4Addr>,
    /// For IPv6 upstreams.
    pub v6: Option<std::net::Ipv6Addr>,
}

impl BindSource {
    /// The source for a connection to `upstream`, if the cluster has one of its family.
    pub fn for_upstream(self, upstream: UpstreamAddr) -> Option<SocketAddr> {
        match upstream.get() {
            SocketAddr::V4(_) => self.v4.map(|ip| SocketAddr::new(ip.into(), 0)),
            SocketAddr::V6(_) => self.v6.map(|ip| SocketAddr::new(ip.into(), 0)),
        }
    }
}

/// How the upstream socket takes the client's address (`IP_TRANSPARENT` bind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalSrc {
    /// Keep the client's port too (Envoy's `bind_port`). Off by default: the client's 4-tuple
    /// towards the same destination may still be in conntrack, and a clash fails the connect.
    pub bind_port: bool,
}

impl OriginalSrc {
    /// The address to bind for `client` connecting to `upstream`. `None` when the families differ
    /// (a v4 client whose destination came from metadata as v6): a socket cannot bind one family
    /// and connect to the other, so the kernel picks the source.
    pub fn source_for(self, client: ClientAddr, upstream: UpstreamAddr) -> Option<SocketAddr> {
        let client = client.get();
        if client.is_ipv4() != upstream.get().is_ipv4() {
            return None;
        }
        let port = if self.bind_port { client.port() } else { 0 };
        Some(SocketAddr::new(client.ip(), port))
    }
}
