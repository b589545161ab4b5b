//! The config model: Envoy's v3 static bootstrap (the subset origdst supports) plus origdst's own
//! knobs under `origdst:`, parsed from YAML and validated into typed values. Every error names the
//! field and the reason ([`ConfigError`]).

mod envoy;
mod error;
mod knobs;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use error::ConfigError;
pub use knobs::{DataPath, Knobs};

use crate::connection::{ConnParams, OriginalSrc};

/// The embedded default config (`origdst run` with no `--config`).
pub const DEFAULT_YAML: &str = include_str!("default.yaml");

/// A validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// origdst's own knobs.
    pub knobs: Knobs,
    /// The listeners, in config order.
    pub listeners: Vec<Listener>,
}

/// A validated listener: where it binds and what it does with a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The listener's `name`.
    pub name: String,
    /// `address` followed by `additional_addresses`.
    pub addresses: Vec<SocketAddr>,
    /// TPROXY mode (`IP_TRANSPARENT`): the accepted socket's local address is the destination.
    pub transparent: bool,
    /// The tcp_proxy's `stat_prefix`.
    pub stat_prefix: String,
    /// The tcp_proxy's cluster (an ORIGINAL_DST cluster).
    pub cluster: String,
    /// Per-connection knobs: connect timeout (cluster), idle timeout (tcp_proxy), mark (knobs).
    pub params: ConnParams,
}

impl Config {
    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let raw: envoy::Bootstrap =
            serde_path_to_error::deserialize(deserializer).map_err(|err| {
                let path = err.path().to_string();
                ConfigError::new(path, err.into_inner().to_string())
            })?;
        validate(raw)
    }

    /// The embedded default.
    pub fn default_config() -> Self {
        // The default is a compile-time constant covered by a unit test; failing here is a build
        // defect, not an operating error.
        Self::from_yaml(DEFAULT_YAML).expect("embedded default config is valid")
    }

    /// Every address any listener binds.
    pub fn listen_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.listeners
            .iter()
            .flat_map(|l| l.addresses.iter().copied())
    }
}

fn validate(raw: envoy::Bootstrap) -> Result<Config, ConfigError> {
    let knobs = Knobs::from_raw(raw.origdst.unwrap_or_default())?;
    let resources = raw.static_resources;
    if resources.listeners.is_empty() {
        return Err(ConfigError::new(
            "static_resources.listeners",
            "at least one listener is required",
        ));
    }
    let clusters = validate_clusters(&resources.clusters)?;
    let mut listeners = Vec::with_capacity(resources.listeners.len());
    for (index, raw) in resources.listeners.iter().enumerate() {
        let path = format!("static_resources.listeners[{index}]");
        let listener = validate_listener(&path, raw, &clusters, &knobs)?;
        if listeners.iter().any(|l: &Listener| l.name == listener.name) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate listener name {:?}", listener.name),
            ));
        }
        for addr in &listener.addresses {
            if listeners
                .iter()
                .any(|l: &Listener| l.addresses.contains(addr))
            {
                return Err(ConfigError::new(
                    format!("{path}.address"),
                    format!("{addr} is bound by another listener"),
                ));
            }
        }
        listeners.push(listener);
    }
    Ok(Config { knobs, listeners })
}

/// A validated cluster: only what listeners need from it.
struct ClusterInfo {
    name: String,
    connect_timeout: Duration,
}

fn validate_clusters(raw: &[envoy::Cluster]) -> Result<Vec<ClusterInfo>, ConfigError> {
    let mut clusters: Vec<ClusterInfo> = Vec::with_capacity(raw.len());
    for (index, cluster) in raw.iter().enumerate() {
        let path = format!("static_resources.clusters[{index}]");
        if cluster.kind != "ORIGINAL_DST" {
            return Err(ConfigError::new(
                format!("{path}.type"),
                format!(
                    "cluster type {:?} is not supported (supported: ORIGINAL_DST)",
                    cluster.kind
                ),
            ));
        }
        match cluster.lb_policy.as_deref() {
            Some("CLUSTER_PROVIDED") => {}
            other => {
                return Err(ConfigError::new(
                    format!("{path}.lb_policy"),
                    format!(
                        "an ORIGINAL_DST cluster needs lb_policy CLUSTER_PROVIDED, got {other:?}"
                    ),
                ));
            }
        }
        let connect_timeout = match &cluster.connect_timeout {
            Some(text) => parse_duration(&format!("{path}.connect_timeout"), text)?,
            None => CONNECT_TIMEOUT_DEFAULT,
        };
        if connect_timeout.is_zero() {
            return Err(ConfigError::new(
                format!("{path}.connect_timeout"),
                "must be greater than 0s",
            ));
        }
        if clusters.iter().any(|c| c.name == cluster.name) {
            return Err(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate cluster name {:?}", cluster.name),
            ));
        }
        clusters.push(ClusterInfo {
            name: cluster.name.clone(),
            connect_timeout,
        });
    }
    Ok(clusters)
}

fn validate_listener(
    path: &str,
    raw: &envoy::Listener,
    clusters: &[ClusterInfo],
    knobs: &Knobs,
) -> Result<Listener, ConfigError> {
    if raw.name.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.name"),
            "must not be empty",
        ));
    }
    let mut addresses = vec![socket_address(
        &format!("{path}.address.socket_address"),
        &raw.address.socket_address,
    )?];
    for (index, extra) in raw.additional_addresses.iter().enumerate() {
        let extra_path = format!("{path}.additional_addresses[{index}].address.socket_address");
        let addr = socket_address(&extra_path, &extra.address.socket_address)?;
        if addresses.contains(&addr) {
            return Err(ConfigError::new(
                extra_path,
                format!("{addr} is listed twice"),
            ));
        }
        addresses.push(addr);
    }
    let original_src = validate_listener_filters(path, &raw.listener_filters)?;
    let (stat_prefix, cluster_name, idle_timeout) = tcp_proxy(path, &raw.filter_chains)?;
    let Some(cluster) = clusters.iter().find(|c| c.name == cluster_name) else {
        return Err(ConfigError::new(
            format!("{path}.filter_chains[0].filters[0].typed_config.cluster"),
            format!("no cluster named {cluster_name:?} in static_resources.clusters"),
        ));
    };
    Ok(Listener {
        name: raw.name.clone(),
        addresses,
        transparent: raw.transparent.unwrap_or(false),
        stat_prefix,
        cluster: cluster_name,
        params: ConnParams {
            connect_timeout: cluster.connect_timeout,
            idle_timeout,
            // Envoy's original_src `mark` (non-zero) replaces the upstream mark for this
            // listener: a socket carries one SO_MARK, and the policy route that brings the
            // replies back to the transparent socket keys on it.
            upstream_mark: original_src
                .and_then(|(_, mark)| mark)
                .or(knobs.upstream_mark),
            original_src: original_src.map(|(src, _)| src),
        },
    })
}

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
    let port = u16::try_from(raw.port_value)
        .ok()
        .filter(|&port| port != 0)
        .ok_or_else(|| {
            ConfigError::new(
                format!("{path}.port_value"),
                format!("{} is not a port in 1..=65535", raw.port_value),
            )
        })?;
    Ok(SocketAddr::new(ip, port))
}

/// Checks the listener filters; returns the `original_src` settings (with its mark, if non-zero)
/// when that filter is present.
fn validate_listener_filters(
    path: &str,
    filters: &[envoy::TypedFilter],
) -> Result<Option<(OriginalSrc, Option<u32>)>, ConfigError> {
    let mut has_original_dst = false;
    let mut original_src = None;
    for (index, filter) in filters.iter().enumerate() {
        let filter_path = format!("{path}.listener_filters[{index}]");
        match filter.name.as_str() {
            "envoy.filters.listener.original_dst" => {
                if let Some(config) = &filter.typed_config {
                    let _: envoy::OriginalDst = typed(
                        &format!("{filter_path}.typed_config"),
                        config,
                        envoy::TYPE_ORIGINAL_DST,
                    )?;
                }
                has_original_dst = true;
            }
            "envoy.filters.listener.original_src" => {
                let config_path = format!("{filter_path}.typed_config");
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
                if original_src.is_some() {
                    return Err(ConfigError::new(
                        format!("{filter_path}.name"),
                        "envoy.filters.listener.original_src is listed twice",
                    ));
                }
                original_src = Some((
                    OriginalSrc {
                        bind_port: src.bind_port.unwrap_or(false),
                    },
                    src.mark.filter(|&mark| mark != 0),
                ));
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
    if !has_original_dst {
        return Err(ConfigError::new(
            format!("{path}.listener_filters"),
            "an ORIGINAL_DST cluster needs the envoy.filters.listener.original_dst listener filter \
             (without it the destination is the proxy itself)",
        ));
    }
    Ok(original_src)
}

fn tcp_proxy(
    path: &str,
    chains: &[envoy::FilterChain],
) -> Result<(String, String, Option<Duration>), ConfigError> {
    let [chain] = chains else {
        return Err(ConfigError::new(
            format!("{path}.filter_chains"),
            format!(
                "exactly one filter chain is supported, got {}",
                chains.len()
            ),
        ));
    };
    let filters_path = format!("{path}.filter_chains[0].filters");
    let [filter] = chain.filters.as_slice() else {
        return Err(ConfigError::new(
            filters_path,
            format!(
                "exactly one filter (envoy.filters.network.tcp_proxy) is supported, got {}",
                chain.filters.len()
            ),
        ));
    };
    if filter.name != "envoy.filters.network.tcp_proxy" {
        return Err(ConfigError::new(
            format!("{filters_path}[0].name"),
            format!(
                "network filter {:?} is not supported (supported: envoy.filters.network.tcp_proxy)",
                filter.name
            ),
        ));
    }
    let config_path = format!("{filters_path}[0].typed_config");
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
    Ok((proxy.stat_prefix, proxy.cluster, idle_timeout))
}

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

/// Envoy's default cluster connect timeout.
const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Envoy's default tcp_proxy idle timeout.
const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3600);
/// No timer in origdst needs more than a year; longer is a typo.
const DURATION_SECONDS_MAX: u64 = 365 * 24 * 3600;

#[cfg(test)]
mod tests;
