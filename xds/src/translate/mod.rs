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
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::{Any, Duration};
use prost::Message;
use serde_yaml_ng::{Mapping, Value};

mod endpoints;
mod extensions;
mod fields;
#[cfg(test)]
mod tests;

use endpoints::load_assignment;
use fields::{
    CLUSTER_FIELDS, FILTER_CHAIN_FIELDS, FILTER_CHAIN_MATCH_FIELDS, LISTENER_FIELDS,
    SOCKET_ADDRESS_FIELDS, TCP_PROXY_FIELDS,
};

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
    let family = cluster::DnsLookupFamily::try_from(c.dns_lookup_family).map_err(|_| {
        format!(
            "dns_lookup_family: {} is not an address family",
            c.dns_lookup_family
        )
    })?;
    if family != cluster::DnsLookupFamily::Auto {
        put(
            &mut out,
            "dns_lookup_family",
            Value::from(family.as_str_name()),
        );
    }
    rest.dns_lookup_family = 0;
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
