//! Listener validation: addresses and listener filters first (clusters refer to internal
//! listeners), filter chains once the clusters are known.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::OriginalSrc;
use super::{
    ChainMatch, Cidr, Cluster, ClusterKind, ConfigError, FilterChain, FilterStateEntry,
    FilterStateKey, FormatValue, InternalListenerSettings, Knobs, Listener, ListenerAddress,
    SharedWithUpstream, TcpProxy, TrafficDirection, envoy, parse_duration, port_number,
    socket_address, typed,
};

pub(super) fn validate_addresses(
    raw: &[envoy::Listener],
    knobs: &Knobs,
    internal: Option<InternalListenerSettings>,
) -> Result<Vec<Listener>, ConfigError> {
    let mut listeners: Vec<Listener> = Vec::with_capacity(raw.len());
    // What is taken, indexed: a pushed mesh has thousands of listeners, and a search of the
    // listeners so far for each made validation quadratic.
    let mut names: HashSet<String> = HashSet::with_capacity(raw.len());
    let mut addresses: HashSet<(bool, SocketAddr)> = HashSet::with_capacity(raw.len());
    let mut internal_names: HashSet<String> = HashSet::new();
    for (index, raw) in raw.iter().enumerate() {
        let path = format!("static_resources.listeners[{index}]");
        let listener = validate_one(&path, raw, knobs, internal)?;
        // Envoy marks an internal listener with `internal_listener: {}`; origdst knows one by
        // its address and takes the marker where it fits.
        match (&raw.internal_listener, &listener.address) {
            (None, _) => {}
            (Some(serde_yaml_ng::Value::Mapping(m)), ListenerAddress::Internal { .. })
                if m.is_empty() => {}
            (Some(_), ListenerAddress::Internal { .. }) => {
                return Err(ConfigError::new(
                    format!("{path}.internal_listener"),
                    "must be empty (`internal_listener: {}`)",
                ));
            }
            (Some(_), ListenerAddress::Socket(_)) => {
                return Err(ConfigError::new(
                    format!("{path}.internal_listener"),
                    "only for a listener whose address is an envoy_internal_address",
                ));
            }
        }
        if !names.insert(listener.name.clone()) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate listener name {:?}", listener.name),
            ));
        }
        match &listener.address {
            ListenerAddress::Socket(addrs) => {
                for addr in addrs {
                    // Bound listeners may not share an address; neither may hand-off targets
                    // (which one would get the connection?).
                    if !addresses.insert((listener.bind_to_port, *addr)) {
                        return Err(ConfigError::new(
                            format!("{path}.address"),
                            format!("{addr} is used by another listener"),
                        ));
                    }
                }
            }
            ListenerAddress::Internal {
                server_listener_name,
            } => {
                if !internal_names.insert(server_listener_name.clone()) {
                    return Err(ConfigError::new(
                        format!("{path}.address.envoy_internal_address.server_listener_name"),
                        format!("{server_listener_name:?} is used by another internal listener"),
                    ));
                }
            }
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

fn validate_one(
    path: &str,
    raw: &envoy::Listener,
    knobs: &Knobs,
    internal: Option<InternalListenerSettings>,
) -> Result<Listener, ConfigError> {
    if raw.name.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.name"),
            "must not be empty",
        ));
    }
    let address = listener_address(path, raw, internal)?;
    let is_internal = matches!(address, ListenerAddress::Internal { .. });
    let flag = |name: &str, value: Option<bool>| -> Result<bool, ConfigError> {
        let value = value.unwrap_or(false);
        if value && is_internal {
            return Err(ConfigError::new(
                format!("{path}.{name}"),
                "not allowed on an internal listener (it has no socket)",
            ));
        }
        Ok(value)
    };
    let transparent = flag("transparent", raw.transparent)?;
    let freebind = flag("freebind", raw.freebind)?;
    let use_original_dst = flag("use_original_dst", raw.use_original_dst)?;
    let bind_to_port = raw.bind_to_port.unwrap_or(true);
    if !bind_to_port && is_internal {
        return Err(ConfigError::new(
            format!("{path}.bind_to_port"),
            "not allowed on an internal listener (it has no socket)",
        ));
    }
    if !bind_to_port && use_original_dst {
        return Err(ConfigError::new(
            format!("{path}.use_original_dst"),
            "a bind_to_port: false listener only receives hand-offs; it cannot hand off again",
        ));
    }
    let traffic_direction = match raw.traffic_direction.as_deref() {
        None | Some("UNSPECIFIED") => TrafficDirection::Unspecified,
        Some("INBOUND") => TrafficDirection::Inbound,
        Some("OUTBOUND") => TrafficDirection::Outbound,
        Some(other) => {
            return Err(ConfigError::new(
                format!("{path}.traffic_direction"),
                format!("{other:?} is not one of UNSPECIFIED, INBOUND, OUTBOUND"),
            ));
        }
    };
    let filters = listener_filters(path, &raw.listener_filters)?;
    // Envoy appends the original_dst filter to a use_original_dst listener by itself.
    let original_dst = filters.original_dst || use_original_dst;
    if knobs.redirect_records && original_dst && traffic_direction == TrafficDirection::Unspecified
    {
        return Err(ConfigError::new(
            format!("{path}.traffic_direction"),
            "origdst.redirect_records is on: a listener with the original_dst filter must say \
             INBOUND or OUTBOUND (the record's direction decides how it is applied)",
        ));
    }
    if raw.filter_chains.is_empty() && raw.default_filter_chain.is_none() {
        return Err(ConfigError::new(
            format!("{path}.filter_chains"),
            "a listener needs at least one filter chain (or a default_filter_chain)",
        ));
    }
    Ok(Listener {
        name: raw.name.clone(),
        address,
        transparent,
        freebind,
        use_original_dst,
        bind_to_port,
        traffic_direction,
        original_dst,
        original_src: filters.original_src,
        original_src_mark: filters.original_src_mark,
        filter_chains: Vec::new(),
        default_filter_chain: None,
    })
}

fn listener_address(
    path: &str,
    raw: &envoy::Listener,
    internal: Option<InternalListenerSettings>,
) -> Result<ListenerAddress, ConfigError> {
    if raw.address.pipe.is_some() {
        return Err(ConfigError::new(
            format!("{path}.address.pipe"),
            "a listener on a Unix socket is not supported (origdst relays TCP)",
        ));
    }
    match (
        &raw.address.socket_address,
        &raw.address.envoy_internal_address,
    ) {
        (Some(socket), None) => {
            let mut addresses = vec![socket_address(
                &format!("{path}.address.socket_address"),
                socket,
            )?];
            for (index, extra) in raw.additional_addresses.iter().enumerate() {
                let extra_path = format!("{path}.additional_addresses[{index}].address");
                let Some(socket) = &extra.address.socket_address else {
                    return Err(ConfigError::new(
                        extra_path,
                        "additional addresses must be socket_address",
                    ));
                };
                let extra_path = format!("{extra_path}.socket_address");
                let addr = socket_address(&extra_path, socket)?;
                if addresses.contains(&addr) {
                    return Err(ConfigError::new(
                        extra_path,
                        format!("{addr} is listed twice"),
                    ));
                }
                addresses.push(addr);
            }
            Ok(ListenerAddress::Socket(addresses))
        }
        (None, Some(internal_address)) => {
            let field = format!("{path}.address.envoy_internal_address");
            if internal.is_none() {
                return Err(ConfigError::new(
                    field,
                    "internal listeners need the envoy.bootstrap.internal_listener bootstrap extension",
                ));
            }
            if internal_address.server_listener_name.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.server_listener_name"),
                    "must not be empty",
                ));
            }
            if !raw.additional_addresses.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.additional_addresses"),
                    "not allowed on an internal listener",
                ));
            }
            Ok(ListenerAddress::Internal {
                server_listener_name: internal_address.server_listener_name.clone(),
            })
        }
        _ => Err(ConfigError::new(
            format!("{path}.address"),
            "exactly one of socket_address and envoy_internal_address is required",
        )),
    }
}

struct ListenerFilters {
    original_dst: bool,
    original_src: Option<OriginalSrc>,
    original_src_mark: Option<u32>,
}

fn listener_filters(
    path: &str,
    filters: &[envoy::TypedFilter],
) -> Result<ListenerFilters, ConfigError> {
    let mut out = ListenerFilters {
        original_dst: false,
        original_src: None,
        original_src_mark: None,
    };
    for (index, filter) in filters.iter().enumerate() {
        let filter_path = format!("{path}.listener_filters[{index}]");
        let config_path = format!("{filter_path}.typed_config");
        let twice = |seen: bool| {
            if seen {
                Err(ConfigError::new(
                    format!("{filter_path}.name"),
                    format!("{} is listed twice", filter.name),
                ))
            } else {
                Ok(())
            }
        };
        match filter.name.as_str() {
            "envoy.filters.listener.original_dst" => {
                twice(out.original_dst)?;
                if let Some(config) = &filter.typed_config {
                    let _: envoy::OriginalDst =
                        typed(&config_path, config, envoy::TYPE_ORIGINAL_DST)?;
                }
                out.original_dst = true;
            }
            "envoy.filters.listener.original_src" => {
                twice(out.original_src.is_some())?;
                let Some(config) = &filter.typed_config else {
                    return Err(ConfigError::new(
                        config_path,
                        format!(
                            "original_src needs a typed_config with @type {:?}",
                            envoy::TYPE_ORIGINAL_SRC
                        ),
                    ));
                };
                let src: envoy::OriginalSrc =
                    typed(&config_path, config, envoy::TYPE_ORIGINAL_SRC)?;
                out.original_src = Some(OriginalSrc {
                    bind_port: src.bind_port.unwrap_or(false),
                });
                out.original_src_mark = src.mark.filter(|&mark| mark != 0);
            }
            other => {
                return Err(ConfigError::new(
                    format!("{filter_path}.name"),
                    format!(
                        "listener filter {other:?} is not supported (supported: envoy.filters.listener.original_dst, envoy.filters.listener.original_src)"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

pub(super) fn validate_chains(
    raw: &[envoy::Listener],
    listeners: &mut [Listener],
    clusters: &[Cluster],
) -> Result<(), ConfigError> {
    let index_by_name = ClusterIndex {
        clusters,
        by_name: clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect(),
    };
    for (index, (raw, listener)) in raw.iter().zip(listeners.iter_mut()).enumerate() {
        let path = format!("static_resources.listeners[{index}]");
        let mut chains: Vec<FilterChain> = Vec::with_capacity(raw.filter_chains.len());
        for (chain_index, chain) in raw.filter_chains.iter().enumerate() {
            let chain_path = format!("{path}.filter_chains[{chain_index}]");
            let chain = filter_chain(
                &chain_path,
                chain,
                &index_by_name,
                format!("filter_chains[{chain_index}]"),
            )?;
            if chains.iter().any(|c| c.matcher == chain.matcher) {
                return Err(ConfigError::new(
                    format!("{chain_path}.filter_chain_match"),
                    "another filter chain has the same filter_chain_match (which one would win?)",
                ));
            }
            chains.push(chain);
        }
        let default = match &raw.default_filter_chain {
            None => None,
            Some(chain) => {
                let chain_path = format!("{path}.default_filter_chain");
                if chain.filter_chain_match.is_some() {
                    return Err(ConfigError::new(
                        format!("{chain_path}.filter_chain_match"),
                        "the default filter chain matches whatever no other chain does; it takes no match",
                    ));
                }
                Some(filter_chain(
                    &chain_path,
                    chain,
                    &index_by_name,
                    "default_filter_chain".into(),
                )?)
            }
        };
        listener.filter_chains = chains;
        listener.default_filter_chain = default;
        check_destination_source(&path, listener, clusters)?;
        check_internal_header_mode(&path, listener, clusters)?;
    }
    Ok(())
}

/// A bound socket listener without the original_dst filter whose chain leads to an ORIGINAL_DST
/// cluster with no other source of destination could only ever refuse: say so at start-up.
fn check_destination_source(
    path: &str,
    listener: &Listener,
    clusters: &[Cluster],
) -> Result<(), ConfigError> {
    if listener.original_dst || !listener.is_bound() {
        return Ok(());
    }
    for chain in listener.chains() {
        let ClusterKind::OriginalDst(lb) = &clusters[chain.tcp_proxy.cluster].kind else {
            continue;
        };
        let from_state = chain
            .filter_state
            .iter()
            .any(|e| e.key == FilterStateKey::TransportSocketOriginalDstAddress);
        if !lb.use_http_header && lb.metadata_key.is_none() && !from_state {
            return Err(ConfigError::new(
                format!("{path}.listener_filters"),
                format!(
                    "filter chain {:?} uses ORIGINAL_DST cluster {:?}, which needs the \
                     envoy.filters.listener.original_dst listener filter (without it the \
                     destination is the proxy itself), use_http_header, or metadata_key",
                    chain.name, clusters[chain.tcp_proxy.cluster].name
                ),
            ));
        }
    }
    Ok(())
}

/// An internal listener's connection has no socket to peek an HTTP head from.
fn check_internal_header_mode(
    path: &str,
    listener: &Listener,
    clusters: &[Cluster],
) -> Result<(), ConfigError> {
    if !matches!(listener.address, ListenerAddress::Internal { .. }) {
        return Ok(());
    }
    for chain in listener.chains() {
        let cluster = &clusters[chain.tcp_proxy.cluster];
        if let ClusterKind::OriginalDst(lb) = &cluster.kind
            && lb.use_http_header
        {
            return Err(ConfigError::new(
                format!("{path}.filter_chains"),
                format!(
                    "filter chain {:?} of an internal listener uses cluster {:?} with use_http_header; \
                     header mode needs a client socket (use it on the outer listener)",
                    chain.name, cluster.name
                ),
            ));
        }
    }
    Ok(())
}

/// The clusters and their positions by name: a mesh's thousands of chains each find their
/// cluster without a search of them all.
struct ClusterIndex<'a> {
    clusters: &'a [Cluster],
    by_name: HashMap<&'a str, usize>,
}

fn filter_chain(
    path: &str,
    raw: &envoy::FilterChain,
    clusters: &ClusterIndex<'_>,
    default_name: String,
) -> Result<FilterChain, ConfigError> {
    let matcher = match &raw.filter_chain_match {
        None => ChainMatch::default(),
        Some(m) => chain_match(&format!("{path}.filter_chain_match"), m)?,
    };
    let filters_path = format!("{path}.filters");
    let Some((last, leading)) = raw.filters.split_last() else {
        return Err(ConfigError::new(
            filters_path,
            "a filter chain needs an envoy.filters.network.tcp_proxy filter",
        ));
    };
    let mut filter_state = Vec::new();
    for (index, filter) in leading.iter().enumerate() {
        let filter_path = format!("{filters_path}[{index}]");
        if filter.name != "envoy.filters.network.set_filter_state" {
            return Err(ConfigError::new(
                format!("{filter_path}.name"),
                format!(
                    "network filter {:?} is not supported before tcp_proxy (supported: envoy.filters.network.set_filter_state)",
                    filter.name
                ),
            ));
        }
        filter_state.extend(set_filter_state(&filter_path, filter)?);
    }
    let last_path = format!("{filters_path}[{}]", leading.len());
    let tcp_proxy = tcp_proxy(&last_path, last, clusters)?;
    Ok(FilterChain {
        name: raw.name.clone().unwrap_or(default_name),
        matcher,
        filter_state,
        tcp_proxy,
    })
}

fn chain_match(path: &str, raw: &envoy::FilterChainMatch) -> Result<ChainMatch, ConfigError> {
    let destination_port = raw
        .destination_port
        .map(|port| port_number(&format!("{path}.destination_port"), port))
        .transpose()?;
    let cidrs = |field: &str, ranges: &[envoy::CidrRange]| -> Result<Vec<Cidr>, ConfigError> {
        ranges
            .iter()
            .enumerate()
            .map(|(index, range)| cidr(&format!("{path}.{field}[{index}]"), range))
            .collect()
    };
    Ok(ChainMatch {
        destination_port,
        prefix_ranges: cidrs("prefix_ranges", &raw.prefix_ranges)?,
        source_prefix_ranges: cidrs("source_prefix_ranges", &raw.source_prefix_ranges)?,
    })
}

fn cidr(path: &str, raw: &envoy::CidrRange) -> Result<Cidr, ConfigError> {
    let ip: IpAddr = raw.address_prefix.parse().map_err(|_| {
        ConfigError::new(
            format!("{path}.address_prefix"),
            format!("{:?} is not an IP address", raw.address_prefix),
        )
    })?;
    let ip = crate::addr::canonical_ip(ip);
    let bits: u32 = if ip.is_ipv4() { 32 } else { 128 };
    // Envoy's CidrRange.prefix_len defaults to 0 (everything).
    let len = raw.prefix_len.unwrap_or(0);
    if len > bits {
        return Err(ConfigError::new(
            format!("{path}.prefix_len"),
            format!("{len} is longer than an {}-bit address", bits),
        ));
    }
    let network = match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    };
    Ok(Cidr {
        ip: network,
        len: len as u8,
    })
}

fn set_filter_state(
    path: &str,
    filter: &envoy::TypedFilter,
) -> Result<Vec<FilterStateEntry>, ConfigError> {
    let config_path = format!("{path}.typed_config");
    let Some(config) = &filter.typed_config else {
        return Err(ConfigError::new(
            config_path,
            "set_filter_state needs a typed_config",
        ));
    };
    let raw: envoy::SetFilterState = typed(&config_path, config, envoy::TYPE_SET_FILTER_STATE)?;
    raw.on_new_connection
        .iter()
        .enumerate()
        .map(|(index, value)| {
            let value_path = format!("{config_path}.on_new_connection[{index}]");
            let key = FilterStateKey::parse(&value.object_key).ok_or_else(|| {
                ConfigError::new(
                    format!("{value_path}.object_key"),
                    format!(
                        "{:?} is not a filter-state object origdst uses (supported: {}, {}, {}, and the alias envoy.filters.listener.original_dst.source_ip)",
                        value.object_key,
                        FilterStateKey::OriginalDstLocalIp.name(),
                        FilterStateKey::OriginalDstRemoteIp.name(),
                        FilterStateKey::TransportSocketOriginalDstAddress.name(),
                    ),
                )
            })?;
            let text = &value.format_string.text_format_source.inline_string;
            let format_path = format!("{value_path}.format_string.text_format_source.inline_string");
            let value_kind = match text.as_str() {
                "%DOWNSTREAM_LOCAL_ADDRESS%" => FormatValue::DownstreamLocalAddress,
                "%DOWNSTREAM_REMOTE_ADDRESS%" => FormatValue::DownstreamRemoteAddress,
                literal => FormatValue::Literal(literal.parse::<SocketAddr>().map_err(|_| {
                    ConfigError::new(
                        &format_path,
                        format!(
                            "{literal:?} is neither an ip:port nor one of %DOWNSTREAM_LOCAL_ADDRESS%, %DOWNSTREAM_REMOTE_ADDRESS%"
                        ),
                    )
                })?),
            };
            let shared_with_upstream = match value.shared_with_upstream.as_deref() {
                None | Some("NONE") => SharedWithUpstream::None,
                Some("ONCE") => SharedWithUpstream::Once,
                Some("TRANSITIVE") => SharedWithUpstream::Transitive,
                Some(other) => {
                    return Err(ConfigError::new(
                        format!("{value_path}.shared_with_upstream"),
                        format!("{other:?} is not one of NONE, ONCE, TRANSITIVE"),
                    ));
                }
            };
            let _ = value.read_only;
            Ok(FilterStateEntry {
                key,
                value: value_kind,
                shared_with_upstream,
            })
        })
        .collect()
}

fn tcp_proxy(
    path: &str,
    filter: &envoy::TypedFilter,
    clusters: &ClusterIndex<'_>,
) -> Result<TcpProxy, ConfigError> {
    // Envoy accepts the short name too (the seed's internal-listener example uses it).
    if filter.name != "envoy.filters.network.tcp_proxy" && filter.name != "tcp_proxy" {
        return Err(ConfigError::new(
            format!("{path}.name"),
            format!(
                "network filter {:?} is not supported as the last filter (supported: envoy.filters.network.tcp_proxy)",
                filter.name
            ),
        ));
    }
    let config_path = format!("{path}.typed_config");
    let Some(config) = &filter.typed_config else {
        return Err(ConfigError::new(
            config_path,
            "tcp_proxy needs a typed_config with stat_prefix and cluster",
        ));
    };
    let proxy: envoy::TcpProxy = typed(&config_path, config, envoy::TYPE_TCP_PROXY)?;
    // Envoy's tcp_proxy default idle timeout is 1 h; an explicit 0s disables it.
    let idle_timeout = match &proxy.idle_timeout {
        None => Some(IDLE_TIMEOUT_DEFAULT),
        Some(text) => Some(parse_duration(
            &format!("{config_path}.idle_timeout"),
            text,
        )?)
        .filter(|d| !d.is_zero()),
    };
    if proxy.stat_prefix.is_empty() {
        return Err(ConfigError::new(
            format!("{config_path}.stat_prefix"),
            "must not be empty",
        ));
    }
    let Some(&cluster) = clusters.by_name.get(proxy.cluster.as_str()) else {
        return Err(ConfigError::new(
            format!("{config_path}.cluster"),
            format!(
                "no cluster named {:?} in static_resources.clusters",
                proxy.cluster
            ),
        ));
    };
    if matches!(
        clusters.clusters[cluster].kind,
        ClusterKind::ControlPlane { .. }
    ) {
        return Err(ConfigError::new(
            format!("{config_path}.cluster"),
            format!(
                "{:?} is the xDS cluster, reached by host name or Unix socket: only the \
                 control-plane client connects to it",
                proxy.cluster
            ),
        ));
    }
    let max_connect_attempts = proxy.max_connect_attempts.unwrap_or(1);
    if !(1..=CONNECT_ATTEMPTS_MAX).contains(&max_connect_attempts) {
        return Err(ConfigError::new(
            format!("{config_path}.max_connect_attempts"),
            format!("{max_connect_attempts} is outside 1..={CONNECT_ATTEMPTS_MAX}"),
        ));
    }
    Ok(TcpProxy {
        stat_prefix: proxy.stat_prefix,
        cluster,
        idle_timeout,
        max_connect_attempts,
    })
}

/// Envoy's default tcp_proxy idle timeout.
const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3600);
/// More attempts than this only delay the reset the client will get anyway.
const CONNECT_ATTEMPTS_MAX: u32 = 10;
