//! The raw YAML shape: the subset of Envoy's v3 static bootstrap origdst understands, plus the
//! `origdst:` section. Every struct denies unknown fields, so a field outside the subset is an
//! error that names its path instead of being silently ignored.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml_ng::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Bootstrap {
    #[serde(default)]
    pub(crate) origdst: Option<Knobs>,
    pub(crate) static_resources: StaticResources,
    #[serde(default)]
    pub(crate) bootstrap_extensions: Vec<TypedFilter>,
    #[serde(default)]
    pub(crate) layered_runtime: Option<LayeredRuntime>,
    #[serde(default)]
    pub(crate) node: Option<Node>,
    #[serde(default)]
    pub(crate) admin: Option<Admin>,
    #[serde(default)]
    pub(crate) dynamic_resources: Option<DynamicResources>,
}

/// `node`: who this proxy is to a control plane.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Node {
    #[serde(default)]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) cluster: Option<String>,
    /// Free-form (a `Struct`): sent to the control plane as it is.
    #[serde(default)]
    pub(crate) metadata: Option<Value>,
    #[serde(default)]
    pub(crate) locality: Option<Locality>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Locality {
    #[serde(default)]
    pub(crate) region: Option<String>,
    #[serde(default)]
    pub(crate) zone: Option<String>,
    #[serde(default)]
    pub(crate) sub_zone: Option<String>,
}

/// Envoy's `admin`: its address becomes origdst's admin address; the rest is Envoy's own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Admin {
    #[serde(default)]
    pub(crate) address: Option<Address>,
    #[serde(default)]
    pub(crate) access_log: Option<Value>,
    #[serde(default)]
    pub(crate) access_log_path: Option<String>,
    #[serde(default)]
    pub(crate) profile_path: Option<String>,
}

/// `dynamic_resources`: listeners and clusters from a control plane.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DynamicResources {
    #[serde(default)]
    pub(crate) ads_config: Option<ApiConfigSource>,
    #[serde(default)]
    pub(crate) lds_config: Option<ConfigSource>,
    #[serde(default)]
    pub(crate) cds_config: Option<ConfigSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiConfigSource {
    pub(crate) api_type: String,
    #[serde(default)]
    pub(crate) transport_api_version: Option<String>,
    #[serde(default)]
    pub(crate) grpc_services: Vec<GrpcService>,
    #[serde(default)]
    pub(crate) set_node_on_first_message_only: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrpcService {
    #[serde(default)]
    pub(crate) envoy_grpc: Option<EnvoyGrpc>,
    #[serde(default)]
    pub(crate) google_grpc: Option<Value>,
    #[serde(default)]
    pub(crate) timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnvoyGrpc {
    pub(crate) cluster_name: String,
}

/// `lds_config` / `cds_config`: origdst takes them from the ADS stream only (`ads: {}`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigSource {
    #[serde(default)]
    pub(crate) ads: Option<Value>,
    #[serde(default)]
    pub(crate) resource_api_version: Option<String>,
    #[serde(default)]
    pub(crate) initial_fetch_timeout: Option<String>,
    #[serde(default)]
    pub(crate) path_config_source: Option<Value>,
    #[serde(default)]
    pub(crate) api_config_source: Option<Value>,
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
    pub(crate) redirect_records: Option<bool>,
    pub(crate) http_head_max_bytes: Option<u32>,
    pub(crate) http_head_timeout: Option<String>,
    pub(crate) busy_poll: Option<String>,
    pub(crate) pin_shards: Option<bool>,
    /// `null` turns the admin endpoint off: double Option, as for the mark.
    #[serde(default, deserialize_with = "explicit_null")]
    pub(crate) admin: Option<Option<String>>,
    pub(crate) access_log: Option<AccessLog>,
    pub(crate) detect_own_upstream: Option<bool>,
    pub(crate) destination_policy: Option<super::policy::RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessLog {
    pub(crate) path: String,
    pub(crate) sample: Option<f64>,
}

fn explicit_null<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StaticResources {
    #[serde(default)]
    pub(crate) listeners: Vec<Listener>,
    #[serde(default)]
    pub(crate) clusters: Vec<Cluster>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LayeredRuntime {
    pub(crate) layers: Vec<RuntimeLayer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuntimeLayer {
    #[serde(rename = "name")]
    pub(crate) _name: String,
    pub(crate) static_layer: BTreeMap<String, Value>,
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
    pub(crate) freebind: Option<bool>,
    #[serde(default)]
    pub(crate) use_original_dst: Option<bool>,
    #[serde(default)]
    pub(crate) bind_to_port: Option<bool>,
    #[serde(default)]
    pub(crate) traffic_direction: Option<String>,
    #[serde(default)]
    pub(crate) listener_filters: Vec<TypedFilter>,
    #[serde(default)]
    pub(crate) filter_chains: Vec<FilterChain>,
    #[serde(default)]
    pub(crate) default_filter_chain: Option<FilterChain>,
    /// Envoy requires `internal_listener: {}` on an internal listener; origdst knows one by its
    /// address and accepts the (empty) marker.
    #[serde(default)]
    pub(crate) internal_listener: Option<Value>,
}

/// Exactly one of these (checked during validation); a `pipe` only for the xDS cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Address {
    #[serde(default)]
    pub(crate) socket_address: Option<SocketAddress>,
    #[serde(default)]
    pub(crate) envoy_internal_address: Option<InternalAddress>,
    #[serde(default)]
    pub(crate) pipe: Option<Pipe>,
}

/// A Unix socket's path (Istio's bootstrap reaches its agent's xDS proxy through one).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Pipe {
    pub(crate) path: String,
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
    #[serde(default)]
    pub(crate) port_value: u32,
    #[serde(default)]
    pub(crate) protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InternalAddress {
    pub(crate) server_listener_name: String,
    /// Distinguishes endpoints of one internal listener in Envoy; origdst needs nothing from it.
    #[serde(default, rename = "endpoint_id")]
    pub(crate) _endpoint_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilterChain {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) filter_chain_match: Option<FilterChainMatch>,
    pub(crate) filters: Vec<TypedFilter>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilterChainMatch {
    #[serde(default)]
    pub(crate) destination_port: Option<u32>,
    #[serde(default)]
    pub(crate) prefix_ranges: Vec<CidrRange>,
    #[serde(default)]
    pub(crate) source_prefix_ranges: Vec<CidrRange>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CidrRange {
    pub(crate) address_prefix: String,
    #[serde(default)]
    pub(crate) prefix_len: Option<u32>,
}

/// A filter or extension: its name and a `typed_config` decoded later by its `@type`.
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
    #[serde(default)]
    pub(crate) max_connect_attempts: Option<u32>,
}

/// `envoy.filters.network.set_filter_state`: values computed when a connection arrives.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetFilterState {
    #[serde(rename = "@type")]
    pub(crate) _type: String,
    pub(crate) on_new_connection: Vec<FilterStateValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FilterStateValue {
    pub(crate) object_key: String,
    pub(crate) format_string: SubstitutionFormat,
    #[serde(default)]
    pub(crate) shared_with_upstream: Option<String>,
    #[serde(default)]
    pub(crate) read_only: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubstitutionFormat {
    pub(crate) text_format_source: DataSource,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DataSource {
    pub(crate) inline_string: String,
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
    #[serde(default)]
    pub(crate) original_dst_lb_config: Option<OriginalDstLbConfig>,
    #[serde(default)]
    pub(crate) load_assignment: Option<LoadAssignment>,
    #[serde(default)]
    pub(crate) transport_socket: Option<TypedFilter>,
    #[serde(default)]
    pub(crate) upstream_bind_config: Option<BindConfig>,
    /// Protocol options by extension name (an xDS cluster asks for HTTP/2 here).
    #[serde(default)]
    pub(crate) typed_extension_protocol_options: BTreeMap<String, Value>,
    /// The deprecated spelling of the same (`http2_protocol_options: {}` on the cluster), which
    /// many published xDS bootstraps still carry.
    #[serde(default)]
    pub(crate) http2_protocol_options: Option<Value>,
    /// A DNS cluster's address family (the xDS cluster's only).
    #[serde(default)]
    pub(crate) dns_lookup_family: Option<String>,
}

/// `upstream_bind_config` (Envoy's `BindConfig`): the source address of upstream connections.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BindConfig {
    #[serde(default)]
    pub(crate) source_address: Option<SocketAddress>,
    #[serde(default)]
    pub(crate) additional_source_addresses: Vec<ExtraSourceAddress>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtraSourceAddress {
    pub(crate) address: SocketAddress,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OriginalDstLbConfig {
    #[serde(default)]
    pub(crate) use_http_header: Option<bool>,
    #[serde(default)]
    pub(crate) http_header_name: Option<String>,
    #[serde(default)]
    pub(crate) upstream_port_override: Option<u32>,
    #[serde(default)]
    pub(crate) metadata_key: Option<MetadataKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetadataKey {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) path: Vec<PathSegment>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PathSegment {
    pub(crate) key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoadAssignment {
    pub(crate) cluster_name: String,
    #[serde(default)]
    pub(crate) endpoints: Vec<LocalityLbEndpoints>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LocalityLbEndpoints {
    #[serde(default)]
    pub(crate) lb_endpoints: Vec<LbEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LbEndpoint {
    pub(crate) endpoint: Endpoint,
    #[serde(default)]
    pub(crate) metadata: Option<Metadata>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Endpoint {
    pub(crate) address: Address,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Metadata {
    #[serde(default)]
    pub(crate) filter_metadata: BTreeMap<String, BTreeMap<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBuffer {
    #[serde(rename = "@type")]
    pub(crate) _type: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InternalUpstream {
    #[serde(rename = "@type")]
    pub(crate) _type: String,
    #[serde(default)]
    pub(crate) passthrough_metadata: Vec<PassthroughMetadata>,
    pub(crate) transport_socket: TypedFilter,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PassthroughMetadata {
    pub(crate) kind: MetadataKind,
    pub(crate) name: String,
}

/// `{host: {}}` or `{cluster: {}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetadataKind {
    #[serde(default)]
    pub(crate) host: Option<Value>,
    #[serde(default)]
    pub(crate) cluster: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InternalListenerExtension {
    #[serde(rename = "@type")]
    pub(crate) _type: String,
    #[serde(default)]
    pub(crate) buffer_size_kb: Option<u32>,
}

pub(crate) const TYPE_ORIGINAL_DST: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
pub(crate) const TYPE_ORIGINAL_SRC: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc";
pub(crate) const TYPE_TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
pub(crate) const TYPE_SET_FILTER_STATE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config";
pub(crate) const TYPE_RAW_BUFFER: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
pub(crate) const TYPE_INTERNAL_UPSTREAM: &str = "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport";
pub(crate) const TYPE_INTERNAL_LISTENER: &str =
    "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener";
