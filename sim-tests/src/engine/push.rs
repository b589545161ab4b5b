//! The resources a control plane pushes in the engine family's push scenarios, as protos (what
//! arrives over ADS): the `spread` cluster with its endpoints moved to [`PUSHED_ENDPOINTS`], and
//! the `fresh` listener, a capture listener on [`FRESH_PORT`]. The harness composes and
//! translates them as the xDS client does.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, SocketAddress, TrafficDirection, address, socket_address,
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

/// `spread`, STATIC, round robin over the pushed endpoints.
pub(super) fn spread_cluster() -> Cluster {
    Cluster {
        name: "spread".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: "spread".into(),
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
        }),
        ..Cluster::default()
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
