//! What a stock Envoy bootstrap carries besides its static resources, and how origdst takes it:
//! `node` (who this proxy is to a control plane), `admin` (its address becomes origdst's admin
//! address; the rest is Envoy's own and ignored, said in a note), `dynamic_resources` (ADS,
//! state of the world or delta: `ads_config` over gRPC to a cluster of the bootstrap — STATIC,
//! by host name or through a Unix socket —, `lds_config`
//! and `cds_config` as `ads: {}`), and proto-JSON's camelCase spelling of every field. Every field
//! outside this is still refused, naming its path.

use serde_yaml_ng::Value;

use super::{Cluster, ClusterKind, ConfigError, envoy};

/// `node`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// `node.id` (required with `dynamic_resources`: the control plane's key for this proxy).
    pub id: String,
    /// `node.cluster` (required with `dynamic_resources`).
    pub cluster: String,
    /// `node.metadata`, as given (a `Struct`: sent to the control plane unchanged).
    pub metadata: Option<Value>,
    /// `node.locality`: region, zone, sub-zone.
    pub locality: (String, String, String),
}

/// `dynamic_resources`: what a control plane provides over one ADS stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicResources {
    /// The cluster the stream goes to (index into `clusters`): STATIC, or `ClusterKind::ControlPlane`.
    pub ads_cluster: usize,
    /// Listeners come from the stream (`lds_config: { ads: {} }`).
    pub lds: bool,
    /// Clusters come from the stream (`cds_config: { ads: {} }`).
    pub cds: bool,
    /// Send the node only on the stream's first request.
    pub set_node_on_first_message_only: bool,
    /// Incremental (delta) xDS (`api_type: DELTA_GRPC`): resources come and go one by one,
    /// each with its own version; else state of the world (`GRPC`).
    pub delta: bool,
    /// The gRPC service's `timeout` (per request), if given.
    pub grpc_timeout: Option<std::time::Duration>,
    /// `initial_fetch_timeout` of `cds_config` / `lds_config`: how long to wait for the first
    /// answer before serving without it (Envoy's default: 15 s).
    pub initial_fetch_timeout: Option<std::time::Duration>,
}

/// The `node` section, validated.
pub(super) fn node(raw: Option<&envoy::Node>) -> Option<Node> {
    let raw = raw?;
    let locality = raw.locality.as_ref().map_or_else(Default::default, |l| {
        (
            l.region.clone().unwrap_or_default(),
            l.zone.clone().unwrap_or_default(),
            l.sub_zone.clone().unwrap_or_default(),
        )
    });
    Some(Node {
        id: raw.id.clone().unwrap_or_default(),
        cluster: raw.cluster.clone().unwrap_or_default(),
        metadata: raw.metadata.clone(),
        locality,
    })
}

/// Envoy's `admin` block: its address moves into `origdst.admin` (unless that is set too: then
/// which one is meant is unclear, and it is refused); the rest is noted as ignored.
pub(super) fn move_admin(
    raw: &mut envoy::Bootstrap,
    notes: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let Some(admin) = raw.admin.take() else {
        return Ok(());
    };
    for (field, present) in [
        ("access_log", admin.access_log.is_some()),
        ("access_log_path", admin.access_log_path.is_some()),
        ("profile_path", admin.profile_path.is_some()),
    ] {
        if present {
            notes.push(format!(
                "admin.{field}: Envoy's own admin setting; origdst's admin endpoint has no such thing (ignored)"
            ));
        }
    }
    let Some(address) = admin.address else {
        return Ok(());
    };
    let path = "admin.address";
    let Some(socket) = address.socket_address else {
        return Err(ConfigError::new(
            path,
            "origdst's admin endpoint needs a socket_address (ip and port)",
        ));
    };
    let ip: std::net::IpAddr = socket.address.parse().map_err(|_| {
        ConfigError::new(
            format!("{path}.socket_address.address"),
            format!("{:?} is not an IP address", socket.address),
        )
    })?;
    let port = u16::try_from(socket.port_value).map_err(|_| {
        ConfigError::new(
            format!("{path}.socket_address.port_value"),
            format!("{} is not a port", socket.port_value),
        )
    })?;
    let knobs = raw.origdst.get_or_insert_with(Default::default);
    if knobs.admin.is_some() {
        return Err(ConfigError::new(
            path,
            "both admin.address and origdst.admin are set: give the admin endpoint's address once",
        ));
    }
    knobs.admin = Some(Some(std::net::SocketAddr::new(ip, port).to_string()));
    Ok(())
}

/// `dynamic_resources`, against the validated static clusters.
pub(super) fn dynamic(
    raw: Option<&envoy::DynamicResources>,
    node: Option<&Node>,
    clusters: &[Cluster],
) -> Result<Option<DynamicResources>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let path = "dynamic_resources";
    let node = node.cloned().unwrap_or_default();
    for (field, value) in [("id", &node.id), ("cluster", &node.cluster)] {
        if value.is_empty() {
            return Err(ConfigError::new(
                format!("node.{field}"),
                "required with dynamic_resources (the control plane knows this proxy by it)",
            ));
        }
    }
    for (name, source) in [
        ("lds_config", &raw.lds_config),
        ("cds_config", &raw.cds_config),
    ] {
        let Some(source) = source else {
            continue;
        };
        for (field, present) in [
            ("path_config_source", source.path_config_source.is_some()),
            ("api_config_source", source.api_config_source.is_some()),
        ] {
            if present {
                return Err(ConfigError::new(
                    format!("{path}.{name}.{field}"),
                    "not supported: resources come from the ADS stream (`ads: {}`)",
                ));
            }
        }
    }
    let Some(ads) = &raw.ads_config else {
        return Err(ConfigError::new(
            format!("{path}.ads_config"),
            "required: origdst takes dynamic resources over one ADS stream",
        ));
    };
    let ads_path = format!("{path}.ads_config");
    let delta = match ads.api_type.as_str() {
        "GRPC" => false,
        "DELTA_GRPC" | "AGGREGATED_DELTA_GRPC" => true,
        other => {
            return Err(ConfigError::new(
                format!("{ads_path}.api_type"),
                format!("{other:?} is not supported (supported: GRPC, DELTA_GRPC)"),
            ));
        }
    };
    version(
        ads.transport_api_version.as_deref(),
        &format!("{ads_path}.transport_api_version"),
    )?;
    let [service] = ads.grpc_services.as_slice() else {
        return Err(ConfigError::new(
            format!("{ads_path}.grpc_services"),
            format!(
                "exactly one gRPC service is required, {} given",
                ads.grpc_services.len()
            ),
        ));
    };
    let service_path = format!("{ads_path}.grpc_services[0]");
    if service.google_grpc.is_some() {
        return Err(ConfigError::new(
            format!("{service_path}.google_grpc"),
            "not supported: use envoy_grpc with a static cluster",
        ));
    }
    let Some(envoy_grpc) = &service.envoy_grpc else {
        return Err(ConfigError::new(
            format!("{service_path}.envoy_grpc"),
            "required (the static cluster the control plane is reached through)",
        ));
    };
    let name_path = format!("{service_path}.envoy_grpc.cluster_name");
    let Some(ads_cluster) = clusters
        .iter()
        .position(|c| c.name == envoy_grpc.cluster_name)
    else {
        return Err(ConfigError::new(
            name_path,
            format!(
                "no static cluster named {:?} (the xDS cluster must be among static_resources.clusters)",
                envoy_grpc.cluster_name
            ),
        ));
    };
    match &clusters[ads_cluster].kind {
        ClusterKind::Static { endpoints }
            if !endpoints.is_empty()
                && endpoints
                    .iter()
                    .all(|e| matches!(e.target, super::EndpointTarget::Socket(_))) => {}
        ClusterKind::ControlPlane { .. } => {}
        _ => {
            return Err(ConfigError::new(
                name_path,
                format!(
                    "cluster {:?} must be STATIC with socket endpoints, STRICT_DNS or LOGICAL_DNS, \
                     or reach a Unix socket (pipe), with at least one endpoint (the control plane's address)",
                    envoy_grpc.cluster_name
                ),
            ));
        }
    }
    let grpc_timeout = service
        .timeout
        .as_deref()
        .map(|t| super::parse_duration(&format!("{service_path}.timeout"), t))
        .transpose()?;
    let mut initial_fetch_timeout = None;
    let mut lds = false;
    let mut cds = false;
    for (name, source, flag) in [
        ("lds_config", &raw.lds_config, &mut lds),
        ("cds_config", &raw.cds_config, &mut cds),
    ] {
        let Some(source) = source else {
            continue;
        };
        let source_path = format!("{path}.{name}");
        match &source.ads {
            Some(Value::Mapping(m)) if m.is_empty() => {}
            Some(_) => {
                return Err(ConfigError::new(
                    format!("{source_path}.ads"),
                    "must be empty (`ads: {}`)",
                ));
            }
            None => {
                return Err(ConfigError::new(
                    format!("{source_path}.ads"),
                    "required (`ads: {}`): resources come from the ADS stream",
                ));
            }
        }
        version(
            source.resource_api_version.as_deref(),
            &format!("{source_path}.resource_api_version"),
        )?;
        if let Some(text) = &source.initial_fetch_timeout {
            let timeout =
                super::parse_duration(&format!("{source_path}.initial_fetch_timeout"), text)?;
            // The longer wait of the two, and `0s` (wait however long) the longest.
            initial_fetch_timeout = Some(initial_fetch_timeout.map_or(
                timeout,
                |t: std::time::Duration| {
                    if t.is_zero() || timeout.is_zero() {
                        std::time::Duration::ZERO
                    } else {
                        t.max(timeout)
                    }
                },
            ));
        }
        *flag = true;
    }
    Ok(Some(DynamicResources {
        ads_cluster,
        lds,
        cds,
        set_node_on_first_message_only: ads.set_node_on_first_message_only.unwrap_or(false),
        delta,
        grpc_timeout,
        initial_fetch_timeout,
    }))
}

/// An xDS API version: V3, or absent (V3 is the only one there is now).
fn version(value: Option<&str>, path: &str) -> Result<(), ConfigError> {
    match value {
        None | Some("V3") => Ok(()),
        Some(other) => Err(ConfigError::new(
            path,
            format!("{other:?} is not supported (supported: V3)"),
        )),
    }
}

/// A cluster's `typed_extension_protocol_options`: HTTP/2 for the control plane's connection
/// (what Envoy's bootstrap asks for an xDS cluster) is accepted; anything else is refused.
pub(super) fn protocol_options(
    path: &str,
    options: &std::collections::BTreeMap<String, Value>,
) -> Result<(), ConfigError> {
    const HTTP: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    const HTTP_TYPE: &str =
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    for (name, value) in options {
        let here = format!("{path}.typed_extension_protocol_options.{name}");
        if name != HTTP {
            return Err(ConfigError::new(
                here,
                format!("protocol options {name:?} are not supported (supported: {HTTP})"),
            ));
        }
        let Value::Mapping(map) = value else {
            return Err(ConfigError::new(here, "must be a typed config (a mapping)"));
        };
        for (key, inner) in map {
            match key.as_str() {
                Some("@type") if inner.as_str() == Some(HTTP_TYPE) => {}
                Some("@type") => {
                    return Err(ConfigError::new(
                        format!("{here}.@type"),
                        format!("must be {HTTP_TYPE}"),
                    ));
                }
                Some("explicit_http_config") => {
                    let http2 = inner
                        .as_mapping()
                        .filter(|m| m.len() == 1)
                        .and_then(|m| m.get("http2_protocol_options"));
                    if http2.is_none_or(|v| !v.is_mapping()) {
                        return Err(ConfigError::new(
                            format!("{here}.explicit_http_config"),
                            "only `http2_protocol_options: {...}` is supported (gRPC to the control plane is HTTP/2)",
                        ));
                    }
                }
                other => {
                    return Err(ConfigError::new(
                        format!("{here}.{}", other.unwrap_or("?")),
                        "not supported (supported: explicit_http_config.http2_protocol_options)",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Rewrites proto-JSON's camelCase field names (`staticResources`, `portValue`) as the
/// snake_case ones origdst reads, leaving data alone: the keys of metadata, runtime layers and
/// extension maps, and whatever `node.metadata` holds. Whether anything changed.
pub fn snake_case_keys(value: &mut Value) -> bool {
    normalize(value, None, 0)
}

/// Maps whose keys are data, not field names (their values are data too, except the
/// extension maps', which are typed configs).
const DATA_KEYED: [&str; 4] = [
    "filter_metadata",
    "typed_filter_metadata",
    "static_layer",
    "typed_extension_protocol_options",
];

fn normalize(value: &mut Value, parent: Option<&str>, depth: usize) -> bool {
    // The document's depth was bounded before it was parsed (`limits::preflight`); this bounds
    // the walk on its own as well.
    if depth > 64 {
        return false;
    }
    let Value::Mapping(map) = value else {
        if let Value::Sequence(items) = value {
            let mut changed = false;
            for item in items {
                changed |= normalize(item, parent, depth + 1);
            }
            return changed;
        }
        return false;
    };
    let keys_are_data = parent.is_some_and(|p| DATA_KEYED.contains(&p));
    let mut changed = false;
    let entries = std::mem::take(map);
    for (key, mut inner) in entries {
        let key = match key {
            Value::String(text) if !keys_are_data => {
                let snake = snake(&text);
                if snake != text {
                    changed = true;
                }
                Value::String(snake)
            }
            other => other,
        };
        let name = key.as_str().map(str::to_string);
        let data = match (parent, name.as_deref()) {
            // node.metadata is a Struct of the operator's own.
            (Some("node"), Some("metadata")) => true,
            (Some("filter_metadata" | "typed_filter_metadata" | "static_layer"), _) => true,
            _ => false,
        };
        if !data {
            changed |= normalize(&mut inner, name.as_deref(), depth + 1);
        }
        map.insert(key, inner);
    }
    changed
}

/// `portValue` → `port_value`; anything that is not a plain camelCase identifier (`@type`,
/// `envoy.filters.x`, `already_snake`) is left as it is.
fn snake(text: &str) -> String {
    let plain = text.starts_with(|c: char| c.is_ascii_lowercase())
        && text.chars().all(|c| c.is_ascii_alphanumeric())
        && text.chars().any(|c| c.is_ascii_uppercase());
    if !plain {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case_field_names_become_snake_case_and_data_stays() {
        assert_eq!(snake("portValue"), "port_value");
        assert_eq!(snake("staticResources"), "static_resources");
        assert_eq!(snake("port_value"), "port_value");
        assert_eq!(snake("@type"), "@type");
        assert_eq!(
            snake("envoy.filters.network.tcp_proxy"),
            "envoy.filters.network.tcp_proxy"
        );
        let mut doc: Value = serde_yaml_ng::from_str(
            "node: { id: a, metadata: { ISTIO_VERSION: x, camelKey: y } }\n\
             staticResources: { clusters: [ { loadAssignment: { endpoints: [ { lbEndpoints: [ { metadata: { filterMetadata: { myFilter: { someKey: 1 } } } } ] } ] } } ] }\n",
        )
        .unwrap();
        assert!(snake_case_keys(&mut doc));
        let text = serde_yaml_ng::to_string(&doc).unwrap();
        for kept in ["ISTIO_VERSION", "camelKey", "myFilter", "someKey"] {
            assert!(text.contains(kept), "{kept} must stay: {text}");
        }
        for renamed in [
            "static_resources",
            "load_assignment",
            "lb_endpoints",
            "filter_metadata",
        ] {
            assert!(text.contains(renamed), "{renamed} missing: {text}");
        }
        let mut plain: Value =
            serde_yaml_ng::from_str("static_resources: { listeners: [] }").unwrap();
        assert!(!snake_case_keys(&mut plain));
    }
}
