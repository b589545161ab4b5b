//! Cluster validation: ORIGINAL_DST with its `original_dst_lb_config`, STATIC with endpoints by
//! socket or internal address, the transport socket, and the xDS cluster reached by host name
//! or Unix socket (the control-plane client's alone).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{
    BindSource, Cluster, ClusterKind, ConfigError, ControlPlaneTarget, DnsFamily, Endpoint,
    EndpointTarget, FilterMetadata, Listener, ListenerAddress, MetadataKey, OriginalDstLb, envoy,
    parse_duration, port_number, socket_address, typed,
};

/// origdst's own listeners, as endpoints are checked against them: every one (internal
/// endpoints name theirs), and the addresses of the bound ones (an endpoint there would loop),
/// gathered once rather than searched per endpoint (a mesh's thousands of listeners and
/// endpoints made that quadratic).
struct OwnListeners<'a> {
    listeners: &'a [Listener],
    bound: Vec<SocketAddr>,
}

/// The clusters, in order; `xds_cluster` is the name `dynamic_resources` gives the control
/// plane's (checked there), the one cluster that may be reached by name or Unix socket.
pub(super) fn validate(
    raw: &[envoy::Cluster],
    listeners: &[Listener],
    xds_cluster: Option<&str>,
) -> Result<Vec<Cluster>, ConfigError> {
    let own = OwnListeners {
        listeners,
        bound: listeners
            .iter()
            .filter(|l| l.is_bound())
            .flat_map(|l| l.socket_addresses().iter().copied())
            .collect(),
    };
    let mut clusters: Vec<Cluster> = Vec::with_capacity(raw.len());
    // Names taken so far, indexed (a search of them per cluster was quadratic in a mesh's).
    let mut names: std::collections::HashSet<&str> =
        std::collections::HashSet::with_capacity(raw.len());
    for (index, cluster) in raw.iter().enumerate() {
        let path = format!("static_resources.clusters[{index}]");
        if !names.insert(cluster.name.as_str()) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate cluster name {:?}", cluster.name),
            ));
        }
        let control_plane = xds_cluster == Some(cluster.name.as_str());
        clusters.push(validate_one(&path, cluster, &own, control_plane)?);
    }
    Ok(clusters)
}

fn validate_one(
    path: &str,
    raw: &envoy::Cluster,
    own: &OwnListeners<'_>,
    control_plane: bool,
) -> Result<Cluster, ConfigError> {
    let connect_timeout = match &raw.connect_timeout {
        Some(text) => parse_duration(&format!("{path}.connect_timeout"), text)?,
        None => CONNECT_TIMEOUT_DEFAULT,
    };
    if connect_timeout.is_zero() {
        return Err(ConfigError::new(
            format!("{path}.connect_timeout"),
            "must be greater than 0s",
        ));
    }
    let kind = match raw.kind.as_str() {
        "ORIGINAL_DST" => original_dst(path, raw)?,
        "STATIC" if control_plane && has_pipe(raw) => control_plane_cluster(path, raw)?,
        "STATIC" => static_cluster(path, raw, own)?,
        "STRICT_DNS" | "LOGICAL_DNS" if control_plane => control_plane_cluster(path, raw)?,
        dns @ ("STRICT_DNS" | "LOGICAL_DNS") => dns_cluster(path, raw, own, dns)?,
        other => {
            return Err(ConfigError::new(
                format!("{path}.type"),
                format!(
                    "cluster type {other:?} is not supported (supported: ORIGINAL_DST, STATIC)"
                ),
            ));
        }
    };
    let passthrough_metadata = match &raw.transport_socket {
        None => Vec::new(),
        Some(socket) => transport_socket(&format!("{path}.transport_socket"), socket)?,
    };
    let bind_source = match &raw.upstream_bind_config {
        None => BindSource::default(),
        Some(bind) => bind_config(&format!("{path}.upstream_bind_config"), bind)?,
    };
    if raw.dns_lookup_family.is_some() && !matches!(raw.kind.as_str(), "STRICT_DNS" | "LOGICAL_DNS")
    {
        return Err(ConfigError::new(
            format!("{path}.dns_lookup_family"),
            "only a STRICT_DNS or LOGICAL_DNS cluster looks names up",
        ));
    }
    super::bootstrap::protocol_options(path, &raw.typed_extension_protocol_options)?;
    if let Some(http2) = &raw.http2_protocol_options
        && !http2.is_mapping()
    {
        return Err(ConfigError::new(
            format!("{path}.http2_protocol_options"),
            "must be a mapping (`http2_protocol_options: {}`)",
        ));
    }
    Ok(Cluster {
        name: raw.name.clone(),
        connect_timeout,
        kind,
        passthrough_metadata,
        bind_source,
    })
}

/// `upstream_bind_config`: `source_address` and `additional_source_addresses`, at most one per
/// family, each an IP with port 0 (a fixed port would allow one upstream connection at a time).
fn bind_config(path: &str, raw: &envoy::BindConfig) -> Result<BindSource, ConfigError> {
    let Some(first) = &raw.source_address else {
        return Err(ConfigError::new(
            format!("{path}.source_address"),
            "required (the address upstream connections leave from)",
        ));
    };
    let mut out = BindSource::default();
    let addresses = std::iter::once((format!("{path}.source_address"), first)).chain(
        raw.additional_source_addresses
            .iter()
            .enumerate()
            .map(|(i, a)| {
                (
                    format!("{path}.additional_source_addresses[{i}].address"),
                    &a.address,
                )
            }),
    );
    for (at, address) in addresses {
        if let Some(protocol) = address.protocol.as_deref().filter(|&p| p != "TCP") {
            return Err(ConfigError::new(
                format!("{at}.protocol"),
                format!("only TCP is supported, got {protocol:?}"),
            ));
        }
        let ip: IpAddr = address.address.parse().map_err(|_| {
            ConfigError::new(
                format!("{at}.address"),
                format!("{:?} is not an IP address", address.address),
            )
        })?;
        if address.port_value != 0 {
            return Err(ConfigError::new(
                format!("{at}.port_value"),
                "must be 0: a fixed source port allows one upstream connection at a time",
            ));
        }
        let taken = match ip {
            IpAddr::V4(ip) => out.v4.replace(ip).is_some(),
            IpAddr::V6(ip) => out.v6.replace(ip).is_some(),
        };
        if taken {
            return Err(ConfigError::new(
                at,
                "a second source address of the same family (one per family)",
            ));
        }
    }
    Ok(out)
}

fn original_dst(path: &str, raw: &envoy::Cluster) -> Result<ClusterKind, ConfigError> {
    match raw.lb_policy.as_deref() {
        Some("CLUSTER_PROVIDED") => {}
        Some(other) => {
            return Err(ConfigError::new(
                format!("{path}.lb_policy"),
                format!("an ORIGINAL_DST cluster needs lb_policy CLUSTER_PROVIDED, got {other}"),
            ));
        }
        None => {
            return Err(ConfigError::new(
                format!("{path}.lb_policy"),
                "an ORIGINAL_DST cluster needs lb_policy CLUSTER_PROVIDED (it is not the default)",
            ));
        }
    }
    if raw.load_assignment.is_some() {
        return Err(ConfigError::new(
            format!("{path}.load_assignment"),
            "an ORIGINAL_DST cluster takes its hosts from each connection, not from load_assignment",
        ));
    }
    let lb_path = format!("{path}.original_dst_lb_config");
    let default = envoy::OriginalDstLbConfig::default();
    let lb = raw.original_dst_lb_config.as_ref().unwrap_or(&default);
    let http_header_name = match &lb.http_header_name {
        None => HTTP_HEADER_DEFAULT.to_string(),
        Some(name) => {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !valid {
                return Err(ConfigError::new(
                    format!("{lb_path}.http_header_name"),
                    format!("{name:?} is not an HTTP header name"),
                ));
            }
            name.to_ascii_lowercase()
        }
    };
    let upstream_port_override = lb
        .upstream_port_override
        .map(|port| port_number(&format!("{lb_path}.upstream_port_override"), port))
        .transpose()?;
    let metadata_key = match &lb.metadata_key {
        None => None,
        Some(key) => {
            let key_path = format!("{lb_path}.metadata_key");
            if key.key.is_empty() {
                return Err(ConfigError::new(
                    format!("{key_path}.key"),
                    "must name a filter namespace",
                ));
            }
            let [segment] = key.path.as_slice() else {
                return Err(ConfigError::new(
                    format!("{key_path}.path"),
                    format!(
                        "exactly one path segment (the field holding \"ip:port\") is supported, got {}",
                        key.path.len()
                    ),
                ));
            };
            Some(MetadataKey {
                filter: key.key.clone(),
                field: segment.key.clone(),
            })
        }
    };
    Ok(ClusterKind::OriginalDst(OriginalDstLb {
        use_http_header: lb.use_http_header.unwrap_or(false),
        http_header_name,
        upstream_port_override,
        metadata_key,
    }))
}

fn static_cluster(
    path: &str,
    raw: &envoy::Cluster,
    own: &OwnListeners<'_>,
) -> Result<ClusterKind, ConfigError> {
    round_robin_only(path, raw, "a STATIC cluster")?;
    if raw.original_dst_lb_config.is_some() {
        return Err(ConfigError::new(
            format!("{path}.original_dst_lb_config"),
            "only an ORIGINAL_DST cluster takes original_dst_lb_config",
        ));
    }
    let Some(assignment) = &raw.load_assignment else {
        // Istio's BlackHoleCluster: STATIC with no endpoints.
        return Ok(ClusterKind::Static {
            endpoints: Vec::new(),
        });
    };
    let endpoints = assigned(path, raw, assignment)?
        .into_iter()
        .map(|(endpoint_path, lb_endpoint)| endpoint(&endpoint_path, lb_endpoint, own))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ClusterKind::Static { endpoints })
}

fn endpoint(
    path: &str,
    raw: &envoy::LbEndpoint,
    own: &OwnListeners<'_>,
) -> Result<Endpoint, ConfigError> {
    let address_path = format!("{path}.endpoint.address");
    let address = &raw.endpoint.address;
    if address.pipe.is_some() {
        return Err(ConfigError::new(
            format!("{address_path}.pipe"),
            "a Unix socket endpoint is supported only in the xDS cluster (origdst relays TCP)",
        ));
    }
    let target = match (&address.socket_address, &address.envoy_internal_address) {
        (Some(socket), None) => {
            let socket_path = format!("{address_path}.socket_address");
            let addr = socket_address(&socket_path, socket)?;
            // Connecting to a bound listener of our own would loop through origdst forever.
            let loops = own.bound.iter().any(|bound| {
                bound.port() == addr.port()
                    && (bound.ip() == addr.ip()
                        || (bound.ip().is_unspecified()
                            && (addr.ip().is_loopback() || addr.ip().is_unspecified())))
            });
            if loops {
                return Err(ConfigError::new(
                    socket_path,
                    format!(
                        "{addr} is one of origdst's own listeners (a loop); use an internal address to chain listeners"
                    ),
                ));
            }
            EndpointTarget::Socket(addr)
        }
        (None, Some(internal)) => {
            let name = &internal.server_listener_name;
            let Some(listener) = own.listeners.iter().position(|l| {
                matches!(&l.address, ListenerAddress::Internal { server_listener_name } if server_listener_name == name)
            }) else {
                return Err(ConfigError::new(
                    format!("{address_path}.envoy_internal_address.server_listener_name"),
                    format!("no internal listener has server_listener_name {name:?}"),
                ));
            };
            EndpointTarget::Internal { listener }
        }
        _ => {
            return Err(ConfigError::new(
                address_path,
                "exactly one of socket_address and envoy_internal_address is required",
            ));
        }
    };
    let mut metadata: FilterMetadata = BTreeMap::new();
    if let Some(raw_metadata) = &raw.metadata {
        for (namespace, fields) in &raw_metadata.filter_metadata {
            let mut strings = BTreeMap::new();
            for (field, value) in fields {
                let Some(text) = value.as_str() else {
                    return Err(ConfigError::new(
                        format!("{path}.metadata.filter_metadata.{namespace}.{field}"),
                        "only string values are supported",
                    ));
                };
                strings.insert(field.clone(), text.to_string());
            }
            metadata.insert(namespace.clone(), strings);
        }
    }
    Ok(Endpoint { target, metadata })
}

/// `raw_buffer`, or `internal_upstream` wrapping `raw_buffer`; returns the passthrough namespaces.
fn transport_socket(path: &str, raw: &envoy::TypedFilter) -> Result<Vec<String>, ConfigError> {
    let config_path = format!("{path}.typed_config");
    match raw.name.as_str() {
        "envoy.transport_sockets.raw_buffer" | "raw_buffer" => {
            if let Some(config) = &raw.typed_config {
                let _: envoy::RawBuffer = typed(&config_path, config, envoy::TYPE_RAW_BUFFER)?;
            }
            Ok(Vec::new())
        }
        "envoy.transport_sockets.internal_upstream" => {
            let Some(config) = &raw.typed_config else {
                return Err(ConfigError::new(
                    config_path,
                    "internal_upstream needs a typed_config",
                ));
            };
            let upstream: envoy::InternalUpstream =
                typed(&config_path, config, envoy::TYPE_INTERNAL_UPSTREAM)?;
            transport_socket(
                &format!("{config_path}.transport_socket"),
                &upstream.transport_socket,
            )?;
            let mut namespaces = Vec::new();
            for (index, meta) in upstream.passthrough_metadata.iter().enumerate() {
                let meta_path = format!("{config_path}.passthrough_metadata[{index}]");
                if meta.kind.host.is_none() || meta.kind.cluster.is_some() {
                    return Err(ConfigError::new(
                        format!("{meta_path}.kind"),
                        "only host metadata ({host: {}}) is supported",
                    ));
                }
                namespaces.push(meta.name.clone());
            }
            Ok(namespaces)
        }
        other => Err(ConfigError::new(
            format!("{path}.name"),
            format!(
                "transport socket {other:?} is not supported (supported: envoy.transport_sockets.raw_buffer, envoy.transport_sockets.internal_upstream)"
            ),
        )),
    }
}

/// Envoy's default cluster connect timeout.
const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// A `STRICT_DNS` or `LOGICAL_DNS` cluster that carries connections: taken as STATIC where its
/// endpoints are IP addresses (what looking them up gives: control planes built on
/// go-control-plane's examples push these), refused naming the first host name — the data path
/// looks nothing up (a shard must never wait on a resolver), so a name needs EDS.
fn dns_cluster(
    path: &str,
    raw: &envoy::Cluster,
    own: &OwnListeners<'_>,
    dns: &str,
) -> Result<ClusterKind, ConfigError> {
    round_robin_only(path, raw, &format!("a {dns} cluster"))?;
    let Some(assignment) = &raw.load_assignment else {
        return Err(ConfigError::new(
            format!("{path}.load_assignment"),
            format!("required: a {dns} cluster names its hosts"),
        ));
    };
    let family = dns_family(path, raw)?;
    let endpoints = assigned(path, raw, assignment)?;
    if dns == "LOGICAL_DNS" && endpoints.len() != 1 {
        return Err(ConfigError::new(
            format!("{path}.load_assignment.endpoints"),
            format!(
                "a LOGICAL_DNS cluster has exactly one endpoint (as Envoy requires), {} given",
                endpoints.len()
            ),
        ));
    }
    for (endpoint_path, lb_endpoint) in &endpoints {
        let Some(socket) = &lb_endpoint.endpoint.address.socket_address else {
            continue;
        };
        let at = format!("{endpoint_path}.endpoint.address.socket_address.address");
        let Ok(ip) = socket.address.parse::<IpAddr>() else {
            return Err(ConfigError::new(
                at,
                format!(
                    "{:?} is a host name, and origdst's data path looks no name up (a shard never \
                     waits on a resolver): give IP addresses (a {dns} cluster of IP addresses is \
                     taken as STATIC) or push the endpoints over EDS; only the xDS cluster (the one \
                     dynamic_resources.ads_config names) may be reached by host name",
                    socket.address
                ),
            ));
        };
        if !family.admits(ip) {
            return Err(ConfigError::new(
                at,
                format!(
                    "{ip} is outside dns_lookup_family {}",
                    raw.dns_lookup_family.as_deref().unwrap_or("AUTO")
                ),
            ));
        }
    }
    static_cluster(path, raw, own)
}

/// `dns_lookup_family` (Envoy's default: AUTO).
fn dns_family(path: &str, raw: &envoy::Cluster) -> Result<DnsFamily, ConfigError> {
    Ok(match raw.dns_lookup_family.as_deref() {
        None | Some("AUTO") => DnsFamily::Auto,
        Some("V4_PREFERRED") => DnsFamily::V4Preferred,
        Some("V4_ONLY") => DnsFamily::V4Only,
        Some("V6_ONLY") => DnsFamily::V6Only,
        Some("ALL") => DnsFamily::All,
        Some(other) => {
            return Err(ConfigError::new(
                format!("{path}.dns_lookup_family"),
                format!("{other:?} is not one of AUTO, V4_PREFERRED, V4_ONLY, V6_ONLY, ALL"),
            ));
        }
    })
}

/// `lb_policy`: round robin (given or by default) is the only policy `what` supports.
fn round_robin_only(path: &str, raw: &envoy::Cluster, what: &str) -> Result<(), ConfigError> {
    match raw.lb_policy.as_deref() {
        None | Some("ROUND_ROBIN") => Ok(()),
        Some(other) => Err(ConfigError::new(
            format!("{path}.lb_policy"),
            format!("{other:?} is not supported for {what} (supported: ROUND_ROBIN)"),
        )),
    }
}

/// Whether any endpoint of the cluster is a Unix socket.
fn has_pipe(raw: &envoy::Cluster) -> bool {
    raw.load_assignment.as_ref().is_some_and(|assignment| {
        assignment
            .endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .any(|e| e.endpoint.address.pipe.is_some())
    })
}

/// The xDS cluster reached by host name (`STRICT_DNS`, `LOGICAL_DNS`) or Unix socket: its
/// endpoints, in order, for the control-plane client to try in turn. Envoy's published xDS
/// bootstraps (go-control-plane's, the quick start's) name the control plane by host name, and
/// Istio's reaches its agent through a Unix socket.
fn control_plane_cluster(path: &str, raw: &envoy::Cluster) -> Result<ClusterKind, ConfigError> {
    // Each connection attempt tries the next endpoint.
    round_robin_only(path, raw, "the xDS cluster")?;
    for (field, present) in [
        (
            "original_dst_lb_config",
            raw.original_dst_lb_config.is_some(),
        ),
        ("upstream_bind_config", raw.upstream_bind_config.is_some()),
        ("transport_socket", raw.transport_socket.is_some()),
    ] {
        if present {
            return Err(ConfigError::new(
                format!("{path}.{field}"),
                "not supported on the xDS cluster (origdst reaches its control plane over plaintext gRPC)",
            ));
        }
    }
    let family = dns_family(path, raw)?;
    let Some(assignment) = &raw.load_assignment else {
        return Err(ConfigError::new(
            format!("{path}.load_assignment"),
            "required: the control plane's address",
        ));
    };
    let mut targets = Vec::new();
    for (endpoint_path, lb_endpoint) in assigned(path, raw, assignment)? {
        if lb_endpoint.metadata.is_some() {
            return Err(ConfigError::new(
                format!("{endpoint_path}.metadata"),
                "not used for the xDS cluster's endpoints",
            ));
        }
        let address_path = format!("{endpoint_path}.endpoint.address");
        targets.push(control_plane_target(
            &address_path,
            &lb_endpoint.endpoint.address,
        )?);
    }
    if targets.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.load_assignment.endpoints"),
            "at least one endpoint is required (the control plane's address)",
        ));
    }
    Ok(ClusterKind::ControlPlane { targets, family })
}

/// A `load_assignment`'s endpoints with their paths, flattened in order, once it is checked to
/// name its cluster and to hold at most [`ENDPOINTS_MAX`] (before any is looked at).
fn assigned<'a>(
    path: &str,
    raw: &envoy::Cluster,
    assignment: &'a envoy::LoadAssignment,
) -> Result<Vec<(String, &'a envoy::LbEndpoint)>, ConfigError> {
    let assignment_path = format!("{path}.load_assignment");
    if assignment.cluster_name != raw.name {
        return Err(ConfigError::new(
            format!("{assignment_path}.cluster_name"),
            format!(
                "{:?} differs from the cluster's name {:?}",
                assignment.cluster_name, raw.name
            ),
        ));
    }
    let count: usize = assignment
        .endpoints
        .iter()
        .map(|l| l.lb_endpoints.len())
        .sum();
    if count > ENDPOINTS_MAX {
        return Err(ConfigError::new(
            format!("{assignment_path}.endpoints"),
            format!("{count} endpoints; at most {ENDPOINTS_MAX} are supported"),
        ));
    }
    let mut out = Vec::with_capacity(count);
    for (locality_index, locality) in assignment.endpoints.iter().enumerate() {
        for (index, lb_endpoint) in locality.lb_endpoints.iter().enumerate() {
            out.push((
                format!("{assignment_path}.endpoints[{locality_index}].lb_endpoints[{index}]"),
                lb_endpoint,
            ));
        }
    }
    Ok(out)
}

/// The longest path a Unix socket address holds (`sun_path`, less its terminating NUL).
const PIPE_PATH_MAX: usize = 107;

fn control_plane_target(
    path: &str,
    address: &envoy::Address,
) -> Result<ControlPlaneTarget, ConfigError> {
    match (
        &address.socket_address,
        &address.pipe,
        &address.envoy_internal_address,
    ) {
        (Some(socket), None, None) => {
            let socket_path = format!("{path}.socket_address");
            if socket.address.parse::<IpAddr>().is_ok() {
                return socket_address(&socket_path, socket).map(ControlPlaneTarget::Socket);
            }
            if let Some(protocol) = socket.protocol.as_deref().filter(|&p| p != "TCP") {
                return Err(ConfigError::new(
                    format!("{socket_path}.protocol"),
                    format!("only TCP is supported, got {protocol:?}"),
                ));
            }
            host_name(&format!("{socket_path}.address"), &socket.address)?;
            let port = u16::try_from(socket.port_value)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{socket_path}.port_value"),
                        format!("{} is not a port (1..=65535)", socket.port_value),
                    )
                })?;
            Ok(ControlPlaneTarget::Host {
                name: socket.address.clone(),
                port,
            })
        }
        (None, Some(pipe), None) => {
            let pipe_path = format!("{path}.pipe.path");
            if pipe.path.is_empty() || pipe.path.contains('\0') {
                return Err(ConfigError::new(
                    pipe_path,
                    "must be a non-empty path without NUL",
                ));
            }
            if pipe.path.starts_with('@') {
                return Err(ConfigError::new(
                    pipe_path,
                    "abstract Unix sockets (@name) are not supported: give a path",
                ));
            }
            if pipe.path.len() > PIPE_PATH_MAX {
                return Err(ConfigError::new(
                    pipe_path,
                    format!(
                        "{} bytes; a Unix socket's path holds at most {PIPE_PATH_MAX}",
                        pipe.path.len()
                    ),
                ));
            }
            Ok(ControlPlaneTarget::Pipe(pipe.path.clone().into()))
        }
        _ => Err(ConfigError::new(
            path,
            "exactly one of socket_address and pipe is required for the xDS cluster",
        )),
    }
}

/// A DNS name: 1–253 bytes of dot-separated labels, each 1–63 letters, digits, `-` or `_`, not
/// beginning or ending with `-`.
fn host_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if name_ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            path,
            format!("{name:?} is neither an IP address nor a host name"),
        ))
    }
}
/// Envoy's default header for `use_http_header`.
const HTTP_HEADER_DEFAULT: &str = "x-envoy-original-dst-host";
/// A bound on the per-shard round-robin table; more is a typo.
const ENDPOINTS_MAX: usize = 4096;
