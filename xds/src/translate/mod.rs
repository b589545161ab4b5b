//! Resources from a control plane into origdst's config: each Listener and Cluster proto becomes
//! the same document a bootstrap file holds (snake_case fields, `@type`d filter configs), and the
//! bootstrap with them is judged by the one validator the file loader uses
//! (`Config::from_yaml`). So a pushed resource is refused exactly as the same resource in a file
//! is, naming its field — only the resource's name is put in front.
//!
//! What is translated is what origdst implements; a field set beyond it is refused here, naming
//! the proto field (origdst never ignores configuration silently).

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::{Any, Duration};
use prost::Message;
use serde_yaml_ng::{Mapping, Value};

mod extensions;
#[cfg(test)]
mod tests;

const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ORIGINAL_DST: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst";

/// A listener as the bootstrap's `static_resources.listeners[]` entry.
pub fn listener(l: &Listener) -> Result<Value, String> {
    let mut rest = l.clone();
    let mut out = Mapping::new();
    put(&mut out, "name", Value::from(l.name.clone()));
    rest.name.clear();
    if let Some(a) = &l.address {
        put(&mut out, "address", address(a, "address")?);
    }
    rest.address = None;
    if !l.additional_addresses.is_empty() {
        let mut items = Vec::new();
        for (i, extra) in l.additional_addresses.iter().enumerate() {
            let path = format!("additional_addresses[{i}]");
            let a = extra
                .address
                .as_ref()
                .ok_or(format!("{path}.address: required"))?;
            let mut item = Mapping::new();
            put(
                &mut item,
                "address",
                address(a, &format!("{path}.address"))?,
            );
            items.push(Value::Mapping(item));
        }
        put(&mut out, "additional_addresses", Value::Sequence(items));
    }
    rest.additional_addresses.clear();
    for (key, value) in [
        ("use_original_dst", rest.use_original_dst.take()),
        ("transparent", rest.transparent.take()),
        ("freebind", rest.freebind.take()),
        ("bind_to_port", rest.bind_to_port.take()),
    ] {
        if let Some(value) = value {
            put(&mut out, key, Value::Bool(value.value));
        }
    }
    match l.traffic_direction {
        0 => {}
        1 => put(&mut out, "traffic_direction", Value::from("INBOUND")),
        2 => put(&mut out, "traffic_direction", Value::from("OUTBOUND")),
        other => return Err(format!("traffic_direction: {other} is not a direction")),
    }
    rest.traffic_direction = 0;
    if !l.listener_filters.is_empty() {
        let mut items = Vec::new();
        for (i, f) in l.listener_filters.iter().enumerate() {
            items.push(listener_filter(f, &format!("listener_filters[{i}]"))?);
        }
        put(&mut out, "listener_filters", Value::Sequence(items));
    }
    rest.listener_filters.clear();
    if !l.filter_chains.is_empty() {
        let mut items = Vec::new();
        for (i, c) in l.filter_chains.iter().enumerate() {
            items.push(filter_chain(c, &format!("filter_chains[{i}]"))?);
        }
        put(&mut out, "filter_chains", Value::Sequence(items));
    }
    rest.filter_chains.clear();
    if let Some(c) = &l.default_filter_chain {
        put(
            &mut out,
            "default_filter_chain",
            filter_chain(c, "default_filter_chain")?,
        );
    }
    rest.default_filter_chain = None;
    if let Some(
        envoy_types::pb::envoy::config::listener::v3::listener::ListenerSpecifier::InternalListener(
            _,
        ),
    ) = &l.listener_specifier
    {
        put(
            &mut out,
            "internal_listener",
            Value::Mapping(Mapping::new()),
        );
        rest.listener_specifier = None;
    }
    leftover(&rest, "", LISTENER_FIELDS)?;
    Ok(Value::Mapping(out))
}

/// A cluster as the bootstrap's `static_resources.clusters[]` entry.
pub fn cluster(c: &Cluster) -> Result<Value, String> {
    let mut rest = c.clone();
    let mut out = Mapping::new();
    put(&mut out, "name", Value::from(c.name.clone()));
    rest.name.clear();
    let kind = match &c.cluster_discovery_type {
        None => "STATIC".to_string(),
        Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(*t)
            .map(|t| t.as_str_name().to_string())
            .map_err(|_| format!("type: {t} is not a discovery type"))?,
        Some(cluster::ClusterDiscoveryType::ClusterType(_)) => {
            return Err("cluster_type: custom cluster types are not supported".into());
        }
    };
    put(&mut out, "type", Value::from(kind));
    rest.cluster_discovery_type = None;
    // An EDS cluster reaches the validator resolved (STATIC with its endpoints, `compose`); its
    // source was judged there. Unresolved, it is shown as pushed (a warming cluster in the dump).
    crate::compose::eds_service(c)?;
    rest.eds_cluster_config = None;
    let policy = cluster::LbPolicy::try_from(c.lb_policy)
        .map_err(|_| format!("lb_policy: {} is not a policy", c.lb_policy))?;
    if policy != cluster::LbPolicy::RoundRobin {
        put(&mut out, "lb_policy", Value::from(policy.as_str_name()));
    }
    rest.lb_policy = 0;
    if let Some(d) = &c.connect_timeout {
        put(&mut out, "connect_timeout", Value::from(duration(d)));
    }
    rest.connect_timeout = None;
    if let Some(a) = &c.load_assignment {
        put(&mut out, "load_assignment", load_assignment(a)?);
    }
    rest.load_assignment = None;
    if let Some(cluster::LbConfig::OriginalDstLbConfig(o)) = &c.lb_config {
        let mut m = Mapping::new();
        if o.use_http_header {
            put(&mut m, "use_http_header", Value::Bool(true));
        }
        if !o.http_header_name.is_empty() {
            put(
                &mut m,
                "http_header_name",
                Value::from(o.http_header_name.clone()),
            );
        }
        if let Some(port) = o.upstream_port_override {
            put(&mut m, "upstream_port_override", Value::from(port.value));
        }
        if let Some(key) = &o.metadata_key {
            use envoy_types::pb::envoy::r#type::metadata::v3::metadata_key::path_segment::Segment;
            let mut path = Vec::new();
            for (i, segment) in key.path.iter().enumerate() {
                match &segment.segment {
                    Some(Segment::Key(k)) => {
                        let mut item = Mapping::new();
                        put(&mut item, "key", Value::from(k.clone()));
                        path.push(Value::Mapping(item));
                    }
                    _ => {
                        return Err(format!(
                            "original_dst_lb_config.metadata_key.path[{i}]: only key segments are supported"
                        ));
                    }
                }
            }
            let mut k = Mapping::new();
            put(&mut k, "key", Value::from(key.key.clone()));
            put(&mut k, "path", Value::Sequence(path));
            put(&mut m, "metadata_key", Value::Mapping(k));
        }
        put(&mut out, "original_dst_lb_config", Value::Mapping(m));
        rest.lb_config = None;
    }
    if let Some(b) = &c.upstream_bind_config {
        let mut m = Mapping::new();
        if let Some(s) = &b.source_address {
            put(
                &mut m,
                "source_address",
                socket(s, "upstream_bind_config.source_address")?,
            );
        }
        // Envoy's `extra_source_addresses` (and the deprecated `additional_source_addresses`):
        // the file's `additional_source_addresses: [ { address } ]`.
        let mut extra = Vec::new();
        for (i, a) in b.extra_source_addresses.iter().enumerate() {
            let path = format!("upstream_bind_config.extra_source_addresses[{i}]");
            let s = a
                .address
                .as_ref()
                .ok_or_else(|| format!("{path}.address: required"))?;
            let mut item = Mapping::new();
            put(&mut item, "address", socket(s, &format!("{path}.address"))?);
            extra.push(Value::Mapping(item));
        }
        // Deprecated in Envoy, still what older control planes send.
        #[allow(deprecated)]
        let deprecated = &b.additional_source_addresses;
        for (i, s) in deprecated.iter().enumerate() {
            let path = format!("upstream_bind_config.additional_source_addresses[{i}]");
            let mut item = Mapping::new();
            put(&mut item, "address", socket(s, &path)?);
            extra.push(Value::Mapping(item));
        }
        if b.freebind.is_some()
            || !b.socket_options.is_empty()
            || b.local_address_selector.is_some()
        {
            return Err(
                "upstream_bind_config: only source_address and extra_source_addresses are supported"
                    .into(),
            );
        }
        if !extra.is_empty() {
            put(
                &mut m,
                "additional_source_addresses",
                Value::Sequence(extra),
            );
        }
        put(&mut out, "upstream_bind_config", Value::Mapping(m));
        rest.upstream_bind_config = None;
    }
    if let Some(ts) = &c.transport_socket {
        put(
            &mut out,
            "transport_socket",
            extensions::transport_socket(ts, "transport_socket")?,
        );
    }
    rest.transport_socket = None;
    leftover(&rest, "", CLUSTER_FIELDS)?;
    Ok(Value::Mapping(out))
}

/// Endpoints as the file writes them. Envoy balances over the lowest priority that has healthy
/// endpoints; with no health checking in origdst, every endpoint not reported unhealthy is
/// healthy, so only the lowest priority present is used, and endpoints the control plane reports
/// `UNHEALTHY`, `DRAINING` or `TIMEOUT` are left out (`DEGRADED` ones serve, as Envoy uses them
/// when nothing better is left). Weights do not apply to round robin; hostnames and health-check
/// settings are descriptive. Localities keep their places (empty when of another priority), so
/// a refusal's index is the pushed one.
fn load_assignment(a: &ClusterLoadAssignment) -> Result<Value, String> {
    use envoy_types::pb::envoy::config::core::v3::HealthStatus;
    if !a.named_endpoints.is_empty() {
        return Err("load_assignment.named_endpoints: not supported".into());
    }
    if let Some(policy) = &a.policy {
        if !policy.drop_overloads.is_empty() {
            return Err("load_assignment.policy.drop_overloads: not supported".into());
        }
        // (`overprovisioning_factor` and `weighted_priority_health` tune how traffic spills
        // between priorities as hosts turn unhealthy; with no health checking here nothing
        // spills, and they change nothing.)
        if policy.endpoint_stale_after.is_some() {
            return Err(
                "load_assignment.policy.endpoint_stale_after: not supported (endpoints do not go stale here)"
                    .into(),
            );
        }
    }
    let down = [
        HealthStatus::Unhealthy as i32,
        HealthStatus::Draining as i32,
        HealthStatus::Timeout as i32,
    ];
    let lowest = a
        .endpoints
        .iter()
        .filter(|l| {
            l.lb_endpoints
                .iter()
                .any(|e| !down.contains(&e.health_status))
        })
        .map(|l| l.priority)
        .min();
    let mut out = Mapping::new();
    put(
        &mut out,
        "cluster_name",
        Value::from(a.cluster_name.clone()),
    );
    let mut localities = Vec::new();
    for (i, locality) in a.endpoints.iter().enumerate() {
        if locality.lb_config.is_some() {
            return Err(format!(
                "load_assignment.endpoints[{i}].leds_cluster_locality_config: not supported"
            ));
        }
        let mut endpoints = Vec::new();
        for (j, lb) in locality.lb_endpoints.iter().enumerate() {
            let path = format!("load_assignment.endpoints[{i}].lb_endpoints[{j}]");
            if Some(locality.priority) != lowest {
                continue;
            }
            if down.contains(&lb.health_status) {
                continue;
            }
            let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &lb.host_identifier else {
                return Err(format!("{path}.endpoint: required"));
            };
            if !endpoint.additional_addresses.is_empty() {
                return Err(format!(
                    "{path}.endpoint.additional_addresses: not supported"
                ));
            }
            let a = endpoint
                .address
                .as_ref()
                .ok_or(format!("{path}.endpoint.address: required"))?;
            let mut e = Mapping::new();
            put(
                &mut e,
                "address",
                address(a, &format!("{path}.endpoint.address"))?,
            );
            let mut item = Mapping::new();
            put(&mut item, "endpoint", Value::Mapping(e));
            if let Some(m) = &lb.metadata {
                if !m.typed_filter_metadata.is_empty() {
                    return Err(format!(
                        "{path}.metadata.typed_filter_metadata: not supported"
                    ));
                }
                put(&mut item, "metadata", metadata(m));
            }
            endpoints.push(Value::Mapping(item));
        }
        let mut item = Mapping::new();
        put(&mut item, "lb_endpoints", Value::Sequence(endpoints));
        localities.push(Value::Mapping(item));
    }
    put(&mut out, "endpoints", Value::Sequence(localities));
    Ok(Value::Mapping(out))
}

/// An endpoint's metadata as the file writes it (`filter_metadata` only; the validator judges
/// its values).
fn metadata(m: &envoy_types::pb::envoy::config::core::v3::Metadata) -> Value {
    let mut namespaces = Mapping::new();
    for (namespace, fields) in &m.filter_metadata {
        let mut map = Mapping::new();
        for (key, value) in &fields.fields {
            put(&mut map, key, proto_value(value, 0));
        }
        put(&mut namespaces, namespace, Value::Mapping(map));
    }
    let mut out = Mapping::new();
    put(&mut out, "filter_metadata", Value::Mapping(namespaces));
    Value::Mapping(out)
}

/// A protobuf `Value` as YAML (depth bounded: what a control plane sends is text too).
fn proto_value(v: &envoy_types::pb::google::protobuf::Value, depth: usize) -> Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    match &v.kind {
        _ if depth > 32 => Value::Null,
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => Value::from(*n),
        Some(Kind::StringValue(s)) => Value::from(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => {
            let mut map = Mapping::new();
            for (key, value) in &s.fields {
                put(&mut map, key, proto_value(value, depth + 1));
            }
            Value::Mapping(map)
        }
        Some(Kind::ListValue(l)) => {
            Value::Sequence(l.values.iter().map(|v| proto_value(v, depth + 1)).collect())
        }
    }
}

fn address(a: &Address, path: &str) -> Result<Value, String> {
    let mut out = Mapping::new();
    match &a.address {
        Some(address::Address::SocketAddress(s)) => {
            put(
                &mut out,
                "socket_address",
                socket(s, &format!("{path}.socket_address"))?,
            );
        }
        Some(address::Address::EnvoyInternalAddress(i)) => {
            let mut m = Mapping::new();
            if let Some(
                envoy_types::pb::envoy::config::core::v3::envoy_internal_address::AddressNameSpecifier::ServerListenerName(name),
            ) = &i.address_name_specifier
            {
                put(&mut m, "server_listener_name", Value::from(name.clone()));
            }
            if !i.endpoint_id.is_empty() {
                put(&mut m, "endpoint_id", Value::from(i.endpoint_id.clone()));
            }
            put(&mut out, "envoy_internal_address", Value::Mapping(m));
        }
        Some(address::Address::Pipe(_)) => return Err(format!("{path}.pipe: not supported")),
        None => return Err(format!("{path}: required")),
    }
    Ok(Value::Mapping(out))
}

fn socket(s: &SocketAddress, path: &str) -> Result<Value, String> {
    let mut rest = s.clone();
    let mut out = Mapping::new();
    put(&mut out, "address", Value::from(s.address.clone()));
    rest.address.clear();
    match &s.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(port)) => {
            put(&mut out, "port_value", Value::from(*port));
        }
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(format!("{path}.named_port: not supported"));
        }
        None => {}
    }
    rest.port_specifier = None;
    if s.protocol != 0 {
        put(&mut out, "protocol", Value::from("UDP"));
    }
    rest.protocol = 0;
    leftover(&rest, path, SOCKET_ADDRESS_FIELDS)?;
    Ok(Value::Mapping(out))
}

fn listener_filter(f: &ListenerFilter, path: &str) -> Result<Value, String> {
    let mut out = Mapping::new();
    put(&mut out, "name", Value::from(f.name.clone()));
    match &f.config_type {
        None => {}
        Some(listener_filter::ConfigType::TypedConfig(any)) if any.type_url == ORIGINAL_DST => {
            let mut m = Mapping::new();
            put(&mut m, "@type", Value::from(ORIGINAL_DST));
            put(&mut out, "typed_config", Value::Mapping(m));
        }
        Some(listener_filter::ConfigType::TypedConfig(any))
            if any.type_url == extensions::ORIGINAL_SRC =>
        {
            put(
                &mut out,
                "typed_config",
                extensions::original_src(any, &format!("{path}.typed_config"))?,
            );
        }
        Some(listener_filter::ConfigType::TypedConfig(any)) => {
            return Err(format!(
                "{path}.typed_config: {:?} is not supported over xDS",
                any.type_url
            ));
        }
        Some(_) => return Err(format!("{path}.config_discovery: not supported")),
    }
    if f.filter_disabled.is_some() {
        return Err(format!("{path}.filter_disabled: not supported"));
    }
    Ok(Value::Mapping(out))
}

fn filter_chain(c: &FilterChain, path: &str) -> Result<Value, String> {
    let mut rest = c.clone();
    let mut out = Mapping::new();
    if !c.name.is_empty() {
        put(&mut out, "name", Value::from(c.name.clone()));
    }
    rest.name.clear();
    if let Some(m) = &c.filter_chain_match {
        put(
            &mut out,
            "filter_chain_match",
            chain_match(m, &format!("{path}.filter_chain_match"))?,
        );
    }
    rest.filter_chain_match = None;
    let mut filters = Vec::new();
    for (i, f) in c.filters.iter().enumerate() {
        filters.push(network_filter(f, &format!("{path}.filters[{i}]"))?);
    }
    put(&mut out, "filters", Value::Sequence(filters));
    rest.filters.clear();
    leftover(&rest, path, FILTER_CHAIN_FIELDS)?;
    Ok(Value::Mapping(out))
}

fn chain_match(m: &FilterChainMatch, path: &str) -> Result<Value, String> {
    let mut rest = m.clone();
    let mut out = Mapping::new();
    if let Some(port) = m.destination_port {
        put(&mut out, "destination_port", Value::from(port.value));
    }
    rest.destination_port = None;
    for (key, ranges) in [
        ("prefix_ranges", &m.prefix_ranges),
        ("source_prefix_ranges", &m.source_prefix_ranges),
    ] {
        if ranges.is_empty() {
            continue;
        }
        let items = ranges
            .iter()
            .map(|r| {
                let mut item = Mapping::new();
                put(
                    &mut item,
                    "address_prefix",
                    Value::from(r.address_prefix.clone()),
                );
                if let Some(len) = r.prefix_len {
                    put(&mut item, "prefix_len", Value::from(len.value));
                }
                Value::Mapping(item)
            })
            .collect();
        put(&mut out, key, Value::Sequence(items));
    }
    rest.prefix_ranges.clear();
    rest.source_prefix_ranges.clear();
    leftover(&rest, path, FILTER_CHAIN_MATCH_FIELDS)?;
    Ok(Value::Mapping(out))
}

fn network_filter(f: &Filter, path: &str) -> Result<Value, String> {
    let mut out = Mapping::new();
    put(&mut out, "name", Value::from(f.name.clone()));
    let any: &Any = match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        Some(_) => return Err(format!("{path}.config_discovery: not supported")),
        None => return Err(format!("{path}.typed_config: required")),
    };
    if any.type_url == extensions::SET_FILTER_STATE {
        put(
            &mut out,
            "typed_config",
            extensions::set_filter_state(any, &format!("{path}.typed_config"))?,
        );
        return Ok(Value::Mapping(out));
    }
    if any.type_url != TCP_PROXY {
        return Err(format!(
            "{path}.typed_config: {:?} is not supported over xDS (supported: {TCP_PROXY}, {})",
            any.type_url,
            extensions::SET_FILTER_STATE
        ));
    }
    let proxy = TcpProxy::decode(any.value.as_slice())
        .map_err(|err| format!("{path}.typed_config: not a TcpProxy: {err}"))?;
    let mut rest = proxy.clone();
    let mut m = Mapping::new();
    put(&mut m, "@type", Value::from(TCP_PROXY));
    put(
        &mut m,
        "stat_prefix",
        Value::from(proxy.stat_prefix.clone()),
    );
    rest.stat_prefix.clear();
    match &proxy.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(name)) => {
            put(&mut m, "cluster", Value::from(name.clone()));
        }
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(_)) => {
            return Err(format!(
                "{path}.typed_config.weighted_clusters: not supported"
            ));
        }
        None => return Err(format!("{path}.typed_config.cluster: required")),
    }
    rest.cluster_specifier = None;
    if let Some(d) = &proxy.idle_timeout {
        put(&mut m, "idle_timeout", Value::from(duration(d)));
    }
    rest.idle_timeout = None;
    if let Some(n) = proxy.max_connect_attempts {
        put(&mut m, "max_connect_attempts", Value::from(n.value));
    }
    rest.max_connect_attempts = None;
    leftover(&rest, &format!("{path}.typed_config"), TCP_PROXY_FIELDS)?;
    put(&mut out, "typed_config", Value::Mapping(m));
    Ok(Value::Mapping(out))
}

/// A proto Duration as the file writes one (`10s`, `0.25s`).
fn duration(d: &Duration) -> String {
    if d.nanos == 0 {
        format!("{}s", d.seconds)
    } else {
        format!("{}.{:09}s", d.seconds, d.nanos)
    }
}

fn put(map: &mut Mapping, key: &str, value: Value) {
    map.insert(Value::from(key), value);
}

/// A message's fields beyond what was translated must all be unset: else the first one set is
/// refused, named by its field number's name in `names`.
fn leftover<M: Message + Default + PartialEq>(
    rest: &M,
    path: &str,
    names: &[(u32, &str)],
) -> Result<(), String> {
    if *rest == M::default() {
        return Ok(());
    }
    let bytes = rest.encode_to_vec();
    let mut buf = bytes.as_slice();
    let number = prost::encoding::decode_key(&mut buf).map_or(0, |(n, _)| n);
    let name = names
        .iter()
        .find(|(n, _)| *n == number)
        .map_or("?", |(_, name)| name);
    let at = if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    };
    Err(format!("{at}: not supported (proto field {number})"))
}

/// Field numbers and names of the messages whose unsupported fields are named (from the
/// protos' definitions).
const LISTENER_FIELDS: &[(u32, &str)] = &[
    (1, "name"),
    (2, "address"),
    (3, "filter_chains"),
    (4, "use_original_dst"),
    (5, "per_connection_buffer_limit_bytes"),
    (6, "metadata"),
    (7, "deprecated_v1"),
    (8, "drain_type"),
    (9, "listener_filters"),
    (10, "transparent"),
    (11, "freebind"),
    (12, "tcp_fast_open_queue_length"),
    (13, "socket_options"),
    (15, "listener_filters_timeout"),
    (16, "traffic_direction"),
    (17, "continue_on_listener_filters_timeout"),
    (18, "udp_listener_config"),
    (19, "api_listener"),
    (20, "connection_balance_config"),
    (21, "reuse_port"),
    (22, "access_log"),
    (24, "tcp_backlog_size"),
    (25, "default_filter_chain"),
    (26, "bind_to_port"),
    (27, "internal_listener"),
    (28, "stat_prefix"),
    (29, "enable_reuse_port"),
    (30, "enable_mptcp"),
    (31, "ignore_global_conn_limit"),
    (32, "filter_chain_matcher"),
    (33, "additional_addresses"),
    (34, "max_connections_to_accept_per_socket_event"),
    (35, "bypass_overload_manager"),
    (36, "fcds_config"),
    (37, "tcp_keepalive"),
    (38, "per_connection_buffer_high_watermark_timeout"),
    (39, "stats_matcher"),
];
const CLUSTER_FIELDS: &[(u32, &str)] = &[
    (1, "name"),
    (2, "type"),
    (3, "eds_cluster_config"),
    (4, "connect_timeout"),
    (5, "per_connection_buffer_limit_bytes"),
    (6, "lb_policy"),
    (8, "health_checks"),
    (9, "max_requests_per_connection"),
    (10, "circuit_breakers"),
    (13, "http_protocol_options"),
    (14, "http2_protocol_options"),
    (16, "dns_refresh_rate"),
    (17, "dns_lookup_family"),
    (18, "dns_resolvers"),
    (19, "outlier_detection"),
    (20, "cleanup_interval"),
    (21, "upstream_bind_config"),
    (22, "lb_subset_config"),
    (23, "ring_hash_lb_config"),
    (24, "transport_socket"),
    (25, "metadata"),
    (26, "protocol_selection"),
    (27, "common_lb_config"),
    (28, "alt_stat_name"),
    (29, "common_http_protocol_options"),
    (30, "upstream_connection_options"),
    (31, "close_connections_on_host_health_failure"),
    (32, "ignore_health_on_host_removal"),
    (33, "load_assignment"),
    (34, "original_dst_lb_config"),
    (36, "typed_extension_protocol_options"),
    (37, "least_request_lb_config"),
    (38, "cluster_type"),
    (39, "respect_dns_ttl"),
    (40, "filters"),
    (41, "load_balancing_policy"),
    (42, "lrs_server"),
    (43, "transport_socket_matches"),
    (44, "dns_failure_refresh_rate"),
    (45, "use_tcp_for_dns_lookups"),
    (46, "upstream_http_protocol_options"),
    (47, "track_timeout_budgets"),
    (48, "upstream_config"),
    (49, "track_cluster_stats"),
    (50, "preconnect_policy"),
    (51, "connection_pool_per_downstream_connection"),
    (52, "maglev_lb_config"),
    (53, "dns_resolution_config"),
    (54, "wait_for_warm_on_init"),
    (55, "typed_dns_resolver_config"),
    (56, "round_robin_lb_config"),
    (57, "lrs_report_endpoint_metrics"),
    (58, "dns_jitter"),
    (59, "transport_socket_matcher"),
    (60, "per_connection_buffer_high_watermark_timeout"),
    (61, "stats_matcher"),
    (62, "queuing_policies"),
];
const SOCKET_ADDRESS_FIELDS: &[(u32, &str)] = &[
    (1, "protocol"),
    (2, "address"),
    (3, "port_value"),
    (4, "named_port"),
    (5, "resolver_name"),
    (6, "ipv4_compat"),
    (7, "network_namespace_filepath"),
];
const FILTER_CHAIN_FIELDS: &[(u32, &str)] = &[
    (1, "filter_chain_match"),
    (3, "filters"),
    (4, "use_proxy_proto"),
    (5, "metadata"),
    (6, "transport_socket"),
    (7, "name"),
    (9, "transport_socket_connect_timeout"),
];
const FILTER_CHAIN_MATCH_FIELDS: &[(u32, &str)] = &[
    (3, "prefix_ranges"),
    (4, "address_suffix"),
    (5, "suffix_len"),
    (6, "source_prefix_ranges"),
    (7, "source_ports"),
    (8, "destination_port"),
    (9, "transport_protocol"),
    (10, "application_protocols"),
    (11, "server_names"),
    (12, "source_type"),
    (13, "direct_source_prefix_ranges"),
];
const TCP_PROXY_FIELDS: &[(u32, &str)] = &[
    (1, "stat_prefix"),
    (2, "cluster"),
    (3, "downstream_idle_timeout"),
    (4, "upstream_idle_timeout"),
    (5, "access_log"),
    (7, "max_connect_attempts"),
    (8, "idle_timeout"),
    (9, "metadata_match"),
    (10, "weighted_clusters"),
    (11, "hash_policy"),
    (12, "tunneling_config"),
    (13, "max_downstream_connection_duration"),
    (14, "on_demand"),
    (15, "access_log_flush_interval"),
    (16, "flush_access_log_on_connected"),
    (17, "access_log_options"),
    (18, "backoff_options"),
    (20, "max_downstream_connection_duration_jitter_percentage"),
];

/// The bootstrap document with the pushed clusters and listeners added to its static ones: what
/// the one validator judges. A pushed resource's name may not be a static one's (Envoy refuses
/// that too).
pub fn document(
    bootstrap: &str,
    clusters: &[Value],
    listeners: &[Value],
) -> Result<String, String> {
    let mut doc: Value =
        serde_yaml_ng::from_str(bootstrap).map_err(|err| format!("the bootstrap: {err}"))?;
    // A proto-JSON bootstrap (`staticResources`) takes the pushed resources as a YAML one does.
    origdst_core::config::bootstrap::snake_case_keys(&mut doc);
    let resources = doc
        .get_mut("static_resources")
        .and_then(Value::as_mapping_mut)
        .ok_or("the bootstrap has no static_resources")?;
    for (key, pushed) in [("clusters", clusters), ("listeners", listeners)] {
        let entry = resources
            .entry(Value::from(key))
            .or_insert_with(|| Value::Sequence(Vec::new()));
        let list = entry
            .as_sequence_mut()
            .ok_or(format!("static_resources.{key} is not a list"))?;
        list.extend(pushed.iter().cloned());
    }
    serde_yaml_ng::to_string(&doc).map_err(|err| err.to_string())
}

/// Judges a state of the world: every cluster and listener translated, added to the bootstrap,
/// and the whole validated as a file would be. The config and its document, or why not — the
/// reason naming the resource (`cluster "x": …`, `listener "y": …`) and its field.
pub fn judge(
    bootstrap: &str,
    clusters: &[Cluster],
    listeners: &[Listener],
    overrides: &origdst_core::config::KnobOverrides,
) -> Result<(origdst_core::config::Config, String), String> {
    let mut pushed_clusters = Vec::new();
    for c in clusters {
        pushed_clusters.push(cluster(c).map_err(|why| format!("cluster {:?}: {why}", c.name))?);
    }
    let mut pushed_listeners = Vec::new();
    for l in listeners {
        pushed_listeners.push(listener(l).map_err(|why| format!("listener {:?}: {why}", l.name))?);
    }
    let statics = |key: &str| -> usize {
        serde_yaml_ng::from_str::<Value>(bootstrap)
            .ok()
            .map(|mut d| {
                origdst_core::config::bootstrap::snake_case_keys(&mut d);
                d
            })
            .and_then(|d| {
                d.get("static_resources")
                    .and_then(|r| r.get(key))
                    .and_then(Value::as_sequence)
                    .map(Vec::len)
            })
            .unwrap_or(0)
    };
    let (static_clusters, static_listeners) = (statics("clusters"), statics("listeners"));
    let doc = document(bootstrap, &pushed_clusters, &pushed_listeners)?;
    match origdst_core::config::Config::from_pushed_yaml(&doc, overrides) {
        Ok(config) => Ok((config, doc)),
        Err(err) => {
            // `static_resources.clusters[i]…` of a pushed one reads as the resource's name.
            let named = |prefix: &str, statics: usize, names: &[String]| -> Option<String> {
                let rest = err.path.strip_prefix(prefix)?;
                let (index, field) = rest.split_once(']')?;
                let index: usize = index.parse().ok()?;
                let name = names.get(index.checked_sub(statics)?)?;
                let kind = if prefix.contains("clusters") {
                    "cluster"
                } else {
                    "listener"
                };
                Some(format!(
                    "{kind} {name:?}: {}: {}",
                    field.trim_start_matches('.'),
                    err.reason
                ))
            };
            let cluster_names: Vec<String> = clusters.iter().map(|c| c.name.clone()).collect();
            let listener_names: Vec<String> = listeners.iter().map(|l| l.name.clone()).collect();
            Err(named(
                "static_resources.clusters[",
                static_clusters,
                &cluster_names,
            )
            .or_else(|| {
                named(
                    "static_resources.listeners[",
                    static_listeners,
                    &listener_names,
                )
            })
            .unwrap_or_else(|| err.to_string()))
        }
    }
}
