//! The resources a control plane pushes in the engine family's push scenarios, as protos (what
//! arrives over ADS): the `spread` cluster, now of type EDS, with its endpoints
//! ([`PUSHED_ENDPOINTS`]) in an assignment of its own, and the `fresh` listener, a capture
//! listener on [`FRESH_PORT`]. The harness composes and translates them as the xDS client does.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, TrafficDirection,
    address, config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, ListenerFilter, filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use prost::Message;

use super::scenario::{FRESH_PORT, PUSHED_ENDPOINTS};

fn socket(addr: std::net::SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..SocketAddress::default()
        })),
    }
}

/// The EDS service `spread` takes its endpoints from.
pub(super) const SPREAD_SERVICE: &str = "outbound|9000||spread";

/// `spread`, of type EDS (endpoints over ADS, from [`SPREAD_SERVICE`]), round robin.
pub(super) fn spread_cluster() -> Cluster {
    Cluster {
        name: "spread".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ConfigSource {
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                resource_api_version: ApiVersion::V3 as i32,
                ..ConfigSource::default()
            }),
            service_name: SPREAD_SERVICE.into(),
        }),
        connect_timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Cluster::default()
    }
}

/// [`SPREAD_SERVICE`]'s endpoints: the pushed ones.
pub(super) fn spread_assignment() -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: SPREAD_SERVICE.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: PUSHED_ENDPOINTS
                .iter()
                .map(|&e| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(e)),
                        ..Endpoint::default()
                    })),
                    ..LbEndpoint::default()
                })
                .collect(),
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    }
}

/// `fresh`: captures (original destination), relays through `pass` as the capture listener does.
pub(super) fn fresh_listener() -> Listener {
    let proxy = TcpProxy {
        stat_prefix: "fresh".into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("pass".into())),
        idle_timeout: Some(Duration {
            seconds: 5,
            nanos: 0,
        }),
        max_connect_attempts: Some(UInt32Value { value: 2 }),
        ..TcpProxy::default()
    };
    Listener {
        name: "fresh".into(),
        address: Some(socket(std::net::SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            FRESH_PORT,
        ))),
        traffic_direction: TrafficDirection::Outbound as i32,
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.original_dst".into(),
            ..ListenerFilter::default()
        }],
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(filter::ConfigType::TypedConfig(Any {
                    type_url:
                        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
                            .into(),
                    value: proxy.encode_to_vec(),
                })),
            }],
            ..FilterChain::default()
        }],
        ..Listener::default()
    }
}
