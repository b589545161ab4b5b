//! The raw YAML shape: the subset of Envoy's v3 static bootstrap origdst understands, plus the
//! `origdst:` section. Every struct denies unknown fields, so a field outside the subset is an
//! error that names its path instead of being silently ignored.

use serde::Deserialize;
use serde_yaml_ng::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Bootstrap {
    #[serde(default)]
    pub(crate) origdst: Option<Knobs>,
    pub(crate) static_resources: StaticResources,
}

/// origdst's own knobs. `None` means "use the default" (see `config::Knobs`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Knobs {
    pub(crate) shards: Option<u32>,
    pub(crate) data_path: Option<String>,
    pub(crate) pipe_budget_bytes: Option<u64>,
    pub(crate) pipe_size_bytes: Option<u32>,
    pub(crate) buffer_size_bytes: Option<u32>,
    pub(crate) buffer_count: Option<u32>,
    /// `null` turns marking off, so "absent" and "null" differ: double Option.
    #[serde(default, deserialize_with = "explicit_null")]
    pub(crate) upstream_mark: Option<Option<u32>>,
    pub(crate) drain_timeout: Option<String>,
    pub(crate) connections_per_shard_max: Option<u32>,
    pub(crate) iowq_workers_max: Option<u32>,
}

fn explicit_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StaticResources {
    pub(crate) listeners: Vec<Listener>,
    #[serde(default)]
    pub(crate) clusters: Vec<Cluster>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Listener {
    pub(crate) name: String,
    pub(crate) address: Address,
    #[serde(default)]
    pub(crate) additional_addresses: Vec<AdditionalAddress>,
    #[serde(default)]
    pub(crate) transparent: Option<bool>,
    #[serde(default)]
    pub(crate) listener_filters: Vec<TypedFilter>,
    pub(crate) filter_chains: Vec<FilterChain>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Address {
    pub(crate) socket_address: SocketAddress,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdditionalAddress {
    pub(crate) address: Address,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SocketAddress {
    pub(crate) address: String,
    pub(crate) port_value: u32,
    #[serde(default)]
    pub(crate) protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilterChain {
    pub(crate) filters: Vec<TypedFilter>,
}

/// A filter: its name and a `typed_config` decoded later by its `@type`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TypedFilter {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) typed_config: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OriginalDst {
    #[serde(rename = "@type")]
    pub(crate) _type: String,
}

/// Envoy's `original_src` listener filter: bind the upstream socket to the client's address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OriginalSrc {
    #[serde(rename = "@type")]
    pub(crate) _type: String,
    #[serde(default)]
    pub(crate) bind_port: Option<bool>,
    #[serde(default)]
    pub(crate) mark: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TcpProxy {
    #[serde(rename = "@type")]
    pub(crate) _type: String,
    pub(crate) stat_prefix: String,
    pub(crate) cluster: String,
    #[serde(default)]
    pub(crate) idle_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cluster {
    pub(crate) name: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) lb_policy: Option<String>,
    #[serde(default)]
    pub(crate) connect_timeout: Option<String>,
}

pub(crate) const TYPE_ORIGINAL_DST: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
pub(crate) const TYPE_ORIGINAL_SRC: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc";
pub(crate) const TYPE_TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
