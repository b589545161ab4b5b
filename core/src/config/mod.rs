//! The config model: Envoy's v3 static bootstrap (the subset origdst supports) plus origdst's own
//! knobs under `origdst:`, parsed from YAML and validated into typed values. Every error names the
//! field and the reason ([`ConfigError`]).
//!
//! The model keeps Envoy's shape — listeners own filter chains, a chain's `tcp_proxy` names a
//! cluster, a cluster is `ORIGINAL_DST` or `STATIC` — with names resolved to indexes, so routing a
//! connection ([`crate::route`]) never looks a string up.

pub mod bootstrap;
mod cluster;
mod envoy;
mod error;
pub mod handoff;
mod internal_graph;
mod knobs;
pub mod limits;
mod listener;
mod params;
mod policy;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use error::ConfigError;
pub use internal_graph::INTERNAL_HOPS_MAX;
pub use knobs::{AccessLog, DataPath, KnobOverrides, Knobs};
pub use params::{BindSource, ConnParams, OriginalSrc, Source};
pub use policy::{DenyRule, DestinationPolicy, PortRange};

/// The embedded default config (`origdst run` with no `--config`).
pub const DEFAULT_YAML: &str = include_str!("default.yaml");

/// A validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// origdst's own knobs.
    pub knobs: Knobs,
    /// The listeners, in config order.
    pub listeners: Vec<Listener>,
    /// The clusters, in config order (tcp_proxy refers to them by index).
    pub clusters: Vec<Cluster>,
    /// The `envoy.bootstrap.internal_listener` extension; `None`: internal listeners are refused.
    pub internal_listener: Option<InternalListenerSettings>,
    /// `node`: who this proxy is to a control plane.
    pub node: Option<bootstrap::Node>,
    /// `dynamic_resources`: listeners and clusters from a control plane (ADS).
    pub dynamic: Option<bootstrap::DynamicResources>,
    /// What the bootstrap carried that origdst accepts and ignores, one sentence each (the
    /// runtime logs them at start-up).
    pub notes: Vec<String>,
    /// The `use_original_dst` hand-off targets by address (built from `listeners`).
    pub handoff: handoff::HandoffIndex,
}

/// `envoy.bootstrap.internal_listener` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InternalListenerSettings {
    /// Bytes an in-process connection may buffer per direction (`buffer_size_kb`).
    pub buffer_size_bytes: u32,
}

/// A validated listener: where it binds and what it does with a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The listener's `name`.
    pub name: String,
    /// Where connections come from.
    pub address: ListenerAddress,
    /// TPROXY mode (`IP_TRANSPARENT`): the accepted socket's local address is the destination.
    pub transparent: bool,
    /// `IP_FREEBIND` on the listening socket (bind an address the host does not have yet).
    pub freebind: bool,
    /// Hand a connection whose restored destination matches another listener's address to that
    /// listener (Istio's virtual listener).
    pub use_original_dst: bool,
    /// `false`: not bound; only reached through a `use_original_dst` hand-off.
    pub bind_to_port: bool,
    /// `traffic_direction` (required with redirect records).
    pub traffic_direction: TrafficDirection,
    /// The `original_dst` listener filter is present (or implied by `use_original_dst`).
    pub original_dst: bool,
    /// The `original_src` listener filter: bind upstream sockets to the client's address.
    pub original_src: Option<OriginalSrc>,
    /// `original_src`'s non-zero `mark`, replacing `origdst.upstream_mark` for this listener.
    pub original_src_mark: Option<u32>,
    /// The filter chains, in config order.
    pub filter_chains: Vec<FilterChain>,
    /// Used when no chain matches.
    pub default_filter_chain: Option<FilterChain>,
}

impl Listener {
    /// The socket addresses (`address` then `additional_addresses`); empty for internal listeners.
    pub fn socket_addresses(&self) -> &[SocketAddr] {
        match &self.address {
            ListenerAddress::Socket(addrs) => addrs,
            ListenerAddress::Internal { .. } => &[],
        }
    }

    /// Whether origdst binds a socket for this listener.
    pub fn is_bound(&self) -> bool {
        self.bind_to_port && matches!(self.address, ListenerAddress::Socket(_))
    }

    /// Every chain, the default last.
    pub fn chains(&self) -> impl Iterator<Item = &FilterChain> {
        self.filter_chains
            .iter()
            .chain(self.default_filter_chain.as_ref())
    }
}

/// Where a listener's connections come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerAddress {
    /// Kernel sockets: `address` followed by `additional_addresses`.
    Socket(Vec<SocketAddr>),
    /// In-process connections from cluster endpoints naming `server_listener_name`.
    Internal {
        /// The `envoy_internal_address.server_listener_name` endpoints refer to.
        server_listener_name: String,
    },
}

/// Envoy's `traffic_direction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficDirection {
    /// Not set.
    Unspecified,
    /// Connections into the workload.
    Inbound,
    /// Connections out of the workload.
    Outbound,
}

/// One filter chain: when it applies and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterChain {
    /// `name`, or `filter_chains[i]` / `default_filter_chain` when unnamed (for logs).
    pub name: String,
    /// `filter_chain_match`.
    pub matcher: ChainMatch,
    /// `envoy.filters.network.set_filter_state` entries, in order.
    pub filter_state: Vec<FilterStateEntry>,
    /// The terminal `envoy.filters.network.tcp_proxy`.
    pub tcp_proxy: TcpProxy,
}

/// `filter_chain_match`: the fields origdst supports. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainMatch {
    /// `destination_port`.
    pub destination_port: Option<u16>,
    /// `prefix_ranges` on the destination IP.
    pub prefix_ranges: Vec<Cidr>,
    /// `source_prefix_ranges` on the client IP.
    pub source_prefix_ranges: Vec<Cidr>,
}

/// An IP prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address (host bits cleared).
    pub ip: IpAddr,
    /// Prefix length in bits.
    pub len: u8,
}

impl Cidr {
    /// Whether `ip` is inside the prefix (v4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = crate::addr::canonical_ip(ip);
        match (self.ip, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One `set_filter_state` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterStateEntry {
    /// Which well-known object.
    pub key: FilterStateKey,
    /// How its value is computed.
    pub value: FormatValue,
    /// Whether it crosses to an internal listener's connection.
    pub shared_with_upstream: SharedWithUpstream,
}

/// The filter-state objects origdst understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FilterStateKey {
    /// `envoy.filters.listener.original_dst.local_ip`: an internal listener's destination.
    OriginalDstLocalIp,
    /// `envoy.filters.listener.original_dst.remote_ip` (alias `…source_ip`): its source.
    OriginalDstRemoteIp,
    /// `envoy.network.transport_socket.original_dst_address`: an ORIGINAL_DST cluster's first
    /// choice of destination.
    TransportSocketOriginalDstAddress,
}

impl FilterStateKey {
    /// Envoy's object key.
    pub const fn name(self) -> &'static str {
        match self {
            Self::OriginalDstLocalIp => "envoy.filters.listener.original_dst.local_ip",
            Self::OriginalDstRemoteIp => "envoy.filters.listener.original_dst.remote_ip",
            Self::TransportSocketOriginalDstAddress => {
                "envoy.network.transport_socket.original_dst_address"
            }
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "envoy.filters.listener.original_dst.local_ip" => Some(Self::OriginalDstLocalIp),
            // Envoy's docs spell it source_ip; its code and Istio use remote_ip.
            "envoy.filters.listener.original_dst.remote_ip"
            | "envoy.filters.listener.original_dst.source_ip" => Some(Self::OriginalDstRemoteIp),
            "envoy.network.transport_socket.original_dst_address" => {
                Some(Self::TransportSocketOriginalDstAddress)
            }
            _ => None,
        }
    }
}

/// A `format_string` origdst can evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatValue {
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`: the restored destination (else the local address).
    DownstreamLocalAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`: the client.
    DownstreamRemoteAddress,
    /// A literal `ip:port`.
    Literal(SocketAddr),
}

/// `shared_with_upstream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedWithUpstream {
    /// Stays on this connection.
    None,
    /// Crosses one internal-listener hop.
    Once,
    /// Crosses every hop.
    Transitive,
}

/// A tcp_proxy filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpProxy {
    /// `stat_prefix`.
    pub stat_prefix: String,
    /// Index into [`Config::clusters`].
    pub cluster: usize,
    /// `idle_timeout` (Envoy's default 1 h; `0s` disables: `None`).
    pub idle_timeout: Option<Duration>,
    /// `max_connect_attempts` (default 1): upstream connects tried before the client is reset.
    pub max_connect_attempts: u32,
}

/// A validated cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `name`.
    pub name: String,
    /// `connect_timeout` (Envoy's default 5 s).
    pub connect_timeout: Duration,
    /// What the cluster connects to.
    pub kind: ClusterKind,
    /// `upstream_bind_config`: the source address of its upstream connections, per family.
    pub bind_source: BindSource,
    /// `internal_upstream` `passthrough_metadata` namespaces copied from the endpoint (host)
    /// metadata to an internal listener's dynamic metadata.
    pub passthrough_metadata: Vec<String>,
}

/// `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterKind {
    /// `ORIGINAL_DST` with `lb_policy: CLUSTER_PROVIDED`.
    OriginalDst(OriginalDstLb),
    /// `STATIC` endpoints, round robin; none at all is a black hole (Istio's BlackHoleCluster).
    Static {
        /// `load_assignment` endpoints, flattened in order.
        endpoints: Vec<Endpoint>,
    },
    /// The xDS cluster, where it is reached by host name (`STRICT_DNS`, `LOGICAL_DNS`) or
    /// through a Unix socket (`pipe`): only the control-plane client connects to it (it looks
    /// names up itself, off the shards), so no listener may name it.
    ControlPlane {
        /// Its endpoints, in order.
        targets: Vec<ControlPlaneTarget>,
        /// `dns_lookup_family`: which addresses of a name are tried.
        family: DnsFamily,
    },
}

/// One endpoint of a control plane's cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlPlaneTarget {
    /// An IP address and port.
    Socket(SocketAddr),
    /// A host name and port, looked up at each connection attempt.
    Host {
        /// The name (checked as a DNS name: letters, digits, `-`, `_`, dots).
        name: String,
        /// The port.
        port: u16,
    },
    /// A Unix socket's path.
    Pipe(std::path::PathBuf),
}

/// `dns_lookup_family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsFamily {
    /// `AUTO` (Envoy's default): IPv6 addresses first, then IPv4.
    #[default]
    Auto,
    /// `V4_PREFERRED`: IPv4 addresses first, then IPv6.
    V4Preferred,
    /// `V4_ONLY`.
    V4Only,
    /// `V6_ONLY`.
    V6Only,
    /// `ALL`: every address, in the resolver's order.
    All,
}

impl DnsFamily {
    /// Whether an address of `ip`'s family is one this family takes.
    pub fn admits(self, ip: IpAddr) -> bool {
        match self {
            Self::V4Only => ip.is_ipv4(),
            Self::V6Only => ip.is_ipv6(),
            Self::Auto | Self::V4Preferred | Self::All => true,
        }
    }

    /// The addresses of a name to try, in the order to try them.
    pub fn order(self, mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
        addrs.retain(|a| self.admits(a.ip()));
        match self {
            Self::All | Self::V4Only | Self::V6Only => {}
            // A stable sort keeps the resolver's order within each family.
            Self::Auto => addrs.sort_by_key(SocketAddr::is_ipv4),
            Self::V4Preferred => addrs.sort_by_key(SocketAddr::is_ipv6),
        }
        addrs
    }
}

/// `original_dst_lb_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalDstLb {
    /// `use_http_header`: read the HTTP/1 request head and route to its header's `ip:port`.
    pub use_http_header: bool,
    /// `http_header_name` (lower-case; default `x-envoy-original-dst-host`).
    pub http_header_name: String,
    /// `upstream_port_override`.
    pub upstream_port_override: Option<u16>,
    /// `metadata_key`: dynamic metadata holding an `ip:port`.
    pub metadata_key: Option<MetadataKey>,
}

/// `metadata_key`: a filter namespace and a path of keys inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataKey {
    /// The filter namespace (`key`).
    pub filter: String,
    /// The keys (`path[].key`); origdst supports one level.
    pub field: String,
}

/// Filter metadata: namespace → field → string value.
pub type FilterMetadata = BTreeMap<String, BTreeMap<String, String>>;

/// A STATIC endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where it is.
    pub target: EndpointTarget,
    /// `metadata.filter_metadata` (string values).
    pub metadata: FilterMetadata,
}

/// A STATIC endpoint's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointTarget {
    /// A kernel socket address.
    Socket(SocketAddr),
    /// An internal listener, by index into [`Config::listeners`].
    Internal {
        /// The listener.
        listener: usize,
    },
}

impl Config {
    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::from_yaml_with(text, &KnobOverrides::default())
    }

    /// Parses YAML text, applies command-line overrides to its `origdst:` section, and validates
    /// the result: an override passes the same checks as the field it replaces.
    pub fn from_yaml_with(text: &str, overrides: &KnobOverrides) -> Result<Self, ConfigError> {
        limits::preflight(text, limits::CONFIG_BYTES_MAX)?;
        Self::from_checked_text(text, overrides)
    }

    /// A document the xDS client made from pushed resources (the bootstrap with them added),
    /// judged as a file is, under the larger bound such documents have
    /// ([`limits::PUSHED_CONFIG_BYTES_MAX`]: a mesh's thousands of listeners).
    pub fn from_pushed_yaml(text: &str, overrides: &KnobOverrides) -> Result<Self, ConfigError> {
        limits::preflight(text, limits::PUSHED_CONFIG_BYTES_MAX)?;
        Self::from_checked_text(text, overrides)
    }

    fn from_checked_text(text: &str, overrides: &KnobOverrides) -> Result<Self, ConfigError> {
        let error = |path: String, reason: String| {
            ConfigError::new(&path, without_path_prefix(&path, &reason))
        };
        // Proto-JSON spells fields in camelCase: such a document is read again with the names
        // origdst knows (a document without any reads as it is, its messages unchanged).
        let mut value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|err| ConfigError::new("", err.to_string()))?;
        let mut raw: envoy::Bootstrap = if bootstrap::snake_case_keys(&mut value) {
            serde_path_to_error::deserialize(value)
                .map_err(|err| error(err.path().to_string(), err.into_inner().to_string()))?
        } else {
            let deserializer = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(deserializer)
                .map_err(|err| error(err.path().to_string(), err.into_inner().to_string()))?
        };
        let mut notes = Vec::new();
        bootstrap::move_admin(&mut raw, &mut notes)?;
        overrides.apply(raw.origdst.get_or_insert_with(Default::default));
        let mut config = validate(raw)?;
        config.notes.splice(0..0, notes);
        Ok(config)
    }

    /// The embedded default.
    pub fn default_config() -> Self {
        // The default is a compile-time constant covered by a unit test; failing here is a build
        // defect, not an operating error.
        Self::from_yaml(DEFAULT_YAML).expect("embedded default config is valid")
    }

    /// Every address a bound listener binds.
    pub fn listen_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.listeners
            .iter()
            .filter(|l| l.is_bound())
            .flat_map(|l| l.socket_addresses().iter().copied())
    }

    /// The per-connection knobs for a chain of `listener`: connect timeout (cluster), idle timeout
    /// and attempts (tcp_proxy), mark and source binding (listener, knobs).
    pub fn params(&self, listener: &Listener, chain: &FilterChain) -> ConnParams {
        let cluster = &self.clusters[chain.tcp_proxy.cluster];
        ConnParams {
            connect_timeout: cluster.connect_timeout,
            idle_timeout: chain.tcp_proxy.idle_timeout,
            upstream_mark: listener.original_src_mark.or(self.knobs.upstream_mark),
            original_src: listener.original_src,
            bind_source: cluster.bind_source,
        }
    }

    /// Whether any listener preserves the client's source address.
    pub fn uses_original_src(&self) -> bool {
        self.listeners.iter().any(|l| l.original_src.is_some())
    }
}

/// serde_yaml_ng starts its messages with the parent's path ("a.b[0]: unknown field ..."); the
/// error already names the full path, so say it once.
fn without_path_prefix(path: &str, reason: &str) -> String {
    match reason.split_once(": ") {
        Some((prefix, rest)) if !prefix.is_empty() && path.starts_with(prefix) => rest.to_string(),
        _ => reason.to_string(),
    }
}

fn validate(raw: envoy::Bootstrap) -> Result<Config, ConfigError> {
    let knobs = Knobs::from_raw(raw.origdst.unwrap_or_default())?;
    let internal_listener = validate_bootstrap_extensions(&raw.bootstrap_extensions)?;
    if let Some(runtime) = &raw.layered_runtime {
        validate_runtime(runtime)?;
    }
    let resources = &raw.static_resources;
    // Listeners from a control plane (`lds_config`): the bootstrap needs none of its own.
    let dynamic_listeners = raw
        .dynamic_resources
        .as_ref()
        .is_some_and(|d| d.lds_config.is_some());
    if resources.listeners.is_empty() && !dynamic_listeners {
        return Err(ConfigError::new(
            "static_resources.listeners",
            "at least one listener is required",
        ));
    }
    // Listeners first without their chains (clusters refer to internal listeners by name), then
    // clusters, then the chains (which refer to clusters).
    let mut listeners =
        listener::validate_addresses(&resources.listeners, &knobs, internal_listener)?;
    let xds_cluster = raw
        .dynamic_resources
        .as_ref()
        .and_then(|d| d.ads_config.as_ref())
        .and_then(|ads| ads.grpc_services.first())
        .and_then(|service| service.envoy_grpc.as_ref())
        .map(|grpc| grpc.cluster_name.as_str());
    let clusters = cluster::validate(&resources.clusters, &listeners, xds_cluster)?;
    listener::validate_chains(&resources.listeners, &mut listeners, &clusters)?;
    let node = bootstrap::node(raw.node.as_ref());
    let dynamic = bootstrap::dynamic(raw.dynamic_resources.as_ref(), node.as_ref(), &clusters)?;
    let handoff = handoff::HandoffIndex::build(&listeners);
    let config = Config {
        knobs,
        listeners,
        clusters,
        internal_listener,
        handoff,
        node,
        dynamic,
        notes: Vec::new(),
    };
    internal_graph::validate(&config)?;
    check_admin_clash(&config)?;
    Ok(config)
}

/// The admin endpoint cannot share an address with a listener: one of the two binds would fail
/// at start-up, and the message would blame whichever came second.
fn check_admin_clash(config: &Config) -> Result<(), ConfigError> {
    let Some(admin) = config.knobs.admin else {
        return Ok(());
    };
    for (index, listener) in config.listeners.iter().enumerate() {
        if !listener.is_bound() {
            continue;
        }
        for addr in listener.socket_addresses() {
            let overlaps = addr.port() == admin.port()
                && (addr.ip() == admin.ip()
                    || addr.ip().is_unspecified()
                    || admin.ip().is_unspecified());
            if overlaps {
                return Err(ConfigError::new(
                    "origdst.admin",
                    format!(
                        "{admin} clashes with listener {:?} on {addr} (static_resources.listeners[{index}]): \
                         move the admin endpoint to another port, or set it to null",
                        listener.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn validate_bootstrap_extensions(
    extensions: &[envoy::TypedFilter],
) -> Result<Option<InternalListenerSettings>, ConfigError> {
    let mut internal = None;
    for (index, extension) in extensions.iter().enumerate() {
        let path = format!("bootstrap_extensions[{index}]");
        if extension.name != "envoy.bootstrap.internal_listener" {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!(
                    "bootstrap extension {:?} is not supported (supported: envoy.bootstrap.internal_listener)",
                    extension.name
                ),
            ));
        }
        if internal.is_some() {
            return Err(ConfigError::new(
                format!("{path}.name"),
                "envoy.bootstrap.internal_listener is listed twice",
            ));
        }
        let buffer_kb = match &extension.typed_config {
            None => None,
            Some(value) => {
                let raw: envoy::InternalListenerExtension = typed(
                    &format!("{path}.typed_config"),
                    value,
                    envoy::TYPE_INTERNAL_LISTENER,
                )?;
                raw.buffer_size_kb
            }
        };
        let buffer_kb = buffer_kb.unwrap_or(INTERNAL_BUFFER_KB_DEFAULT);
        if !(1..=INTERNAL_BUFFER_KB_MAX).contains(&buffer_kb) {
            return Err(ConfigError::new(
                format!("{path}.typed_config.buffer_size_kb"),
                format!("{buffer_kb} is outside 1..={INTERNAL_BUFFER_KB_MAX}"),
            ));
        }
        internal = Some(InternalListenerSettings {
            buffer_size_bytes: buffer_kb * 1024,
        });
    }
    Ok(internal)
}

/// Runtime flags origdst knows; each must be a boolean and none changes behaviour (they are what
/// Envoy needs to enable the features origdst always has).
const RUNTIME_FLAGS: &[&str] = &["envoy.reloadable_features.internal_address"];

fn validate_runtime(runtime: &envoy::LayeredRuntime) -> Result<(), ConfigError> {
    for (index, layer) in runtime.layers.iter().enumerate() {
        for (key, value) in &layer.static_layer {
            let path = format!("layered_runtime.layers[{index}].static_layer.{key}");
            if !RUNTIME_FLAGS.contains(&key.as_str()) {
                return Err(ConfigError::new(
                    path,
                    format!(
                        "runtime flag not supported (supported: {})",
                        RUNTIME_FLAGS.join(", ")
                    ),
                ));
            }
            if value.as_bool().is_none() {
                return Err(ConfigError::new(path, "must be true or false"));
            }
        }
    }
    Ok(())
}

/// Decodes a socket address (`protocol` TCP, an IP literal, a port; `port_zero_ok` for none).
fn socket_address(path: &str, raw: &envoy::SocketAddress) -> Result<SocketAddr, ConfigError> {
    if let Some(protocol) = raw.protocol.as_deref().filter(|&p| p != "TCP") {
        return Err(ConfigError::new(
            format!("{path}.protocol"),
            format!("only TCP is supported, got {protocol:?}"),
        ));
    }
    let ip: IpAddr = raw.address.parse().map_err(|_| {
        ConfigError::new(
            format!("{path}.address"),
            format!("{:?} is not an IP address", raw.address),
        )
    })?;
    let port = port_number(&format!("{path}.port_value"), raw.port_value)?;
    Ok(SocketAddr::new(ip, port))
}

/// A port in 1..=65535 (0 is never meaningful in a config), or an error naming `path`.
fn port_number(path: &str, value: u32) -> Result<u16, ConfigError> {
    u16::try_from(value)
        .ok()
        .filter(|&port| port != 0)
        .ok_or_else(|| ConfigError::new(path, format!("{value} is not a port in 1..=65535")))
}

/// `buffer_size_kb`'s Envoy default (1 MiB).
const INTERNAL_BUFFER_KB_DEFAULT: u32 = 1024;
/// 64 MiB per direction per connection is already more than any relay needs.
const INTERNAL_BUFFER_KB_MAX: u32 = 64 * 1024;

/// Decodes a `typed_config` whose `@type` must be `expected`, naming inner fields in errors.
fn typed<T: serde::de::DeserializeOwned>(
    path: &str,
    value: &serde_yaml_ng::Value,
    expected: &str,
) -> Result<T, ConfigError> {
    let type_url = value.get("@type").and_then(|v| v.as_str());
    if type_url != Some(expected) {
        return Err(ConfigError::new(
            format!("{path}.@type"),
            format!("expected {expected:?}, got {type_url:?}"),
        ));
    }
    serde_path_to_error::deserialize(value.clone()).map_err(|err| {
        let inner = err.path().to_string();
        ConfigError::new(format!("{path}.{inner}"), err.into_inner().to_string())
    })
}

/// Parses a protobuf-JSON duration as Envoy configs write it: `"10s"`, `"0.250s"`.
pub(crate) fn parse_duration(path: &str, text: &str) -> Result<Duration, ConfigError> {
    let invalid = || {
        ConfigError::new(
            path,
            format!("{text:?} is not a duration like \"10s\" or \"0.25s\""),
        )
    };
    let number = text.strip_suffix('s').ok_or_else(invalid)?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let seconds: u64 = whole.parse().map_err(|_| invalid())?;
    if seconds > DURATION_SECONDS_MAX {
        return Err(ConfigError::new(
            path,
            format!("{text:?} is longer than {DURATION_SECONDS_MAX}s"),
        ));
    }
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().map_err(|_| invalid())?
    };
    Ok(Duration::new(seconds, nanos))
}

/// No timer in origdst needs more than a year; longer is a typo.
const DURATION_SECONDS_MAX: u64 = 365 * 24 * 3600;

#[cfg(test)]
mod tests;
