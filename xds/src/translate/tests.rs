use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value};
use prost::Message;

/// `super::judge` without command-line overrides.
fn judge(
    bootstrap: &str,
    clusters: &[Cluster],
    listeners: &[Listener],
) -> Result<(origdst_core::config::Config, String), String> {
    super::judge(bootstrap, clusters, listeners, &Default::default())
}

/// A bootstrap pointing at a control plane, with no listener of its own.
const BOOTSTRAP: &str = "node: { id: n, cluster: c }
dynamic_resources:
  ads_config: { api_type: GRPC, grpc_services: [ { envoy_grpc: { cluster_name: xds } } ] }
  cds_config: { ads: {} }
  lds_config: { ads: {} }
static_resources:
  clusters:
  - name: xds
    type: STATIC
    load_assignment: { cluster_name: xds, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 15010 } } } } ] } ] }
";

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

fn passthrough() -> Cluster {
    Cluster {
        name: "PassthroughCluster".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(Duration {
            seconds: 2,
            nanos: 500_000_000,
        }),
        ..Cluster::default()
    }
}

fn service(name: &str, ip: &str) -> Cluster {
    Cluster {
        name: name.into(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(ip, 8080)),
                        ..Endpoint::default()
                    })),
                    ..LbEndpoint::default()
                }],
                ..LocalityLbEndpoints::default()
            }],
            ..ClusterLoadAssignment::default()
        }),
        ..Cluster::default()
    }
}

fn tcp_proxy(cluster: &str) -> Filter {
    let config = TcpProxy {
        stat_prefix: cluster.into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        idle_timeout: Some(Duration {
            seconds: 3600,
            nanos: 0,
        }),
        max_connect_attempts: Some(UInt32Value { value: 2 }),
        ..TcpProxy::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(Any {
            type_url: super::TCP_PROXY.into(),
            value: config.encode_to_vec(),
        })),
    }
}

/// Istio's virtual outbound: capture on 15001, hand off by original destination, passthrough
/// for the rest.
fn virtual_outbound() -> Listener {
    Listener {
        name: "virtualOutbound".into(),
        address: Some(socket("0.0.0.0", 15001)),
        use_original_dst: Some(BoolValue { value: true }),
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.original_dst".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(Any {
                type_url: super::ORIGINAL_DST.into(),
                value: Vec::new(),
            })),
            ..ListenerFilter::default()
        }],
        filter_chains: vec![FilterChain {
            filters: vec![tcp_proxy("PassthroughCluster")],
            ..FilterChain::default()
        }],
        ..Listener::default()
    }
}

fn service_listener(name: &str, port: u32) -> Listener {
    Listener {
        name: name.into(),
        address: Some(socket("0.0.0.0", port)),
        bind_to_port: Some(BoolValue { value: false }),
        filter_chains: vec![FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(UInt32Value { value: port }),
                ..FilterChainMatch::default()
            }),
            filters: vec![tcp_proxy(name)],
            ..FilterChain::default()
        }],
        ..Listener::default()
    }
}

#[test]
fn an_istio_shaped_push_validates_into_the_config_a_file_would_give() {
    let clusters = [passthrough(), service("reviews", "10.1.0.7")];
    let listeners = [virtual_outbound(), service_listener("reviews", 9080)];
    let (config, doc) = judge(BOOTSTRAP, &clusters, &listeners).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["virtualOutbound", "reviews"]);
    assert!(config.listeners[0].use_original_dst);
    assert!(!config.listeners[1].bind_to_port);
    assert_eq!(
        config.handoff.target("10.9.9.9:9080".parse().unwrap()),
        Some(1)
    );
    let pass = &config.clusters[1];
    assert_eq!(pass.name, "PassthroughCluster");
    assert_eq!(pass.connect_timeout, std::time::Duration::from_millis(2500));
    assert!(doc.contains("max_connect_attempts: 2"), "{doc}");
    // The same document read again gives the same config: what is applied is what a file says.
    assert_eq!(
        origdst_core::config::Config::from_yaml(&doc).unwrap(),
        config
    );
}

#[test]
fn refusals_name_the_resource_and_the_field() {
    // A field origdst does not implement, set: named by its proto field.
    let mut buffered = virtual_outbound();
    buffered.per_connection_buffer_limit_bytes = Some(UInt32Value { value: 1024 });
    let err = judge(BOOTSTRAP, &[passthrough()], &[buffered]).unwrap_err();
    assert_eq!(
        err,
        "listener \"virtualOutbound\": per_connection_buffer_limit_bytes: not supported (proto field 5)"
    );
    // A nested one.
    let mut chain = virtual_outbound();
    chain.filter_chains[0].name = "main".into();
    chain.filter_chains[0].transport_socket_connect_timeout = Some(Duration {
        seconds: 1,
        nanos: 0,
    });
    let err = judge(BOOTSTRAP, &[passthrough()], &[chain]).unwrap_err();
    assert_eq!(
        err,
        "listener \"virtualOutbound\": filter_chains[0].transport_socket_connect_timeout: not supported (proto field 9)"
    );
    // What the validator refuses, named as the file loader names it, under the resource's name.
    // A DNS cluster of IP addresses is taken as STATIC (go-control-plane's examples push
    // LOGICAL_DNS with V4_ONLY); a host name is refused, naming it: no DNS on the data path.
    let mut dns = service("ratings", "10.1.0.8");
    dns.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::LogicalDns as i32,
    ));
    dns.dns_lookup_family = cluster::DnsLookupFamily::V4Only as i32;
    let (config, _) = judge(BOOTSTRAP, &[passthrough(), dns], &[virtual_outbound()])
        .unwrap_or_else(|e| panic!("{e}"));
    let ratings = config
        .clusters
        .iter()
        .find(|c| c.name == "ratings")
        .unwrap();
    assert!(
        matches!(&ratings.kind, origdst_core::config::ClusterKind::Static { endpoints } if endpoints.len() == 1),
        "{ratings:?}"
    );
    let mut named = service("ratings", "ratings.default.svc.cluster.local");
    named.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::StrictDns as i32,
    ));
    let err = judge(BOOTSTRAP, &[passthrough(), named], &[virtual_outbound()]).unwrap_err();
    assert!(err.starts_with("cluster \"ratings\": "), "{err}");
    assert!(
        err.contains("\"ratings.default.svc.cluster.local\" is a host name"),
        "{err}"
    );
    let mut v6_only = service("ratings", "10.1.0.8");
    v6_only.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::StrictDns as i32,
    ));
    v6_only.dns_lookup_family = cluster::DnsLookupFamily::V6Only as i32;
    let err = judge(BOOTSTRAP, &[passthrough(), v6_only], &[virtual_outbound()]).unwrap_err();
    assert!(err.contains("outside dns_lookup_family V6_ONLY"), "{err}");
    // A listener whose cluster was not pushed.
    let err = judge(BOOTSTRAP, &[], &[service_listener("reviews", 9080)]).unwrap_err();
    assert!(err.starts_with("listener \"reviews\": "), "{err}");
    assert!(err.contains("reviews"), "{err}");
    // Another filter than tcp_proxy.
    let mut http = virtual_outbound();
    http.filter_chains[0].filters[0] = Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager".into(),
            value: Vec::new(),
        })),
    };
    let err = judge(BOOTSTRAP, &[passthrough()], &[http]).unwrap_err();
    assert!(err.contains("HttpConnectionManager"), "{err}");
}

#[test]
fn clusters_without_listeners_are_a_valid_state() {
    // Clusters arrive before listeners: that state must validate (else CDS would be NACKed).
    let (config, _) = judge(BOOTSTRAP, &[passthrough()], &[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.listeners.is_empty());
    assert_eq!(config.clusters.len(), 2);
}

#[test]
fn a_proto_json_bootstrap_takes_pushed_resources_too() {
    let json = r#"{"node": {"id": "n", "cluster": "c"},
      "dynamicResources": {"adsConfig": {"apiType": "GRPC", "grpcServices": [{"envoyGrpc": {"clusterName": "xds"}}]},
                           "cdsConfig": {"ads": {}}, "ldsConfig": {"ads": {}}},
      "staticResources": {"clusters": [{"name": "xds", "type": "STATIC", "loadAssignment": {"clusterName": "xds",
        "endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 15010}}}}]}]}}]}}"#;
    let (config, _) =
        judge(json, &[passthrough()], &[virtual_outbound()]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.listeners[0].name, "virtualOutbound");
    assert_eq!(config.clusters.len(), 2);
    // A refusal of a pushed cluster is still named by the resource, past the static ones.
    let mut dns = passthrough();
    dns.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::StrictDns as i32,
    ));
    let err = judge(json, &[dns], &[]).unwrap_err();
    assert!(
        err.starts_with("cluster \"PassthroughCluster\": lb_policy:"),
        "{err}"
    );
}

#[test]
fn eds_endpoints_serve_by_health_and_priority_with_their_metadata() {
    use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Metadata};
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let endpoint = |ip: &str, health: HealthStatus| LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket(ip, 9080)),
            hostname: "descriptive".into(),
            ..Endpoint::default()
        })),
        health_status: health as i32,
        load_balancing_weight: Some(UInt32Value { value: 3 }),
        ..LbEndpoint::default()
    };
    let mut tagged = endpoint("10.1.0.2", HealthStatus::Healthy);
    tagged.metadata = Some(Metadata {
        filter_metadata: [(
            "istio".to_string(),
            Struct {
                fields: [(
                    "workload".to_string(),
                    Value {
                        kind: Some(Kind::StringValue("ratings-v1".into())),
                    },
                )]
                .into(),
            },
        )]
        .into(),
        ..Metadata::default()
    });
    let assignment = ClusterLoadAssignment {
        cluster_name: "outbound|9080||ratings".into(),
        endpoints: vec![
            // A failover priority: unused while priority 0 has endpoints not reported down.
            LocalityLbEndpoints {
                priority: 1,
                lb_endpoints: vec![endpoint("10.9.0.1", HealthStatus::Healthy)],
                ..LocalityLbEndpoints::default()
            },
            LocalityLbEndpoints {
                lb_endpoints: vec![
                    endpoint("10.1.0.1", HealthStatus::Unhealthy),
                    tagged,
                    endpoint("10.1.0.3", HealthStatus::Draining),
                    endpoint("10.1.0.4", HealthStatus::Degraded),
                    endpoint("10.1.0.5", HealthStatus::Unknown),
                    endpoint("10.1.0.6", HealthStatus::Timeout),
                ],
                ..LocalityLbEndpoints::default()
            },
        ],
        ..ClusterLoadAssignment::default()
    };
    let mut eds = service("ratings", "10.1.0.8");
    eds.load_assignment = None;
    let eds = crate::compose::resolved(&eds, &assignment);
    let (config, _) =
        judge(BOOTSTRAP, std::slice::from_ref(&eds), &[]).unwrap_or_else(|e| panic!("{e}"));
    let origdst_core::config::ClusterKind::Static { endpoints } = &config.clusters[1].kind else {
        panic!("{:?}", config.clusters[1]);
    };
    let served: Vec<String> = endpoints
        .iter()
        .map(|e| match e.target {
            origdst_core::config::EndpointTarget::Socket(a) => a.ip().to_string(),
            ref other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(served, ["10.1.0.2", "10.1.0.4", "10.1.0.5"]);
    assert_eq!(
        endpoints[0].metadata["istio"]["workload"], "ratings-v1",
        "the endpoint's metadata goes with it"
    );
    // Every endpoint of priority 0 down: priority 1 serves.
    let mut down = assignment;
    down.endpoints[1]
        .lb_endpoints
        .retain(|e| e.health_status == HealthStatus::Unhealthy as i32);
    let eds = crate::compose::resolved(&eds, &down);
    let (config, _) =
        judge(BOOTSTRAP, std::slice::from_ref(&eds), &[]).unwrap_or_else(|e| panic!("{e}"));
    let origdst_core::config::ClusterKind::Static { endpoints } = &config.clusters[1].kind else {
        panic!();
    };
    assert_eq!(endpoints.len(), 1);
    // What origdst cannot honour is refused by its field.
    let mut named = down;
    named.endpoints[0].lb_endpoints[0].host_identifier.replace(
        lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket("10.9.0.1", 1)),
            additional_addresses: vec![Default::default()],
            ..Endpoint::default()
        }),
    );
    let err = judge(BOOTSTRAP, &[crate::compose::resolved(&eds, &named)], &[]).unwrap_err();
    assert_eq!(
        err,
        "cluster \"ratings\": load_assignment.endpoints[0].lb_endpoints[0].endpoint.additional_addresses: not supported"
    );
    // Endpoints that would go stale, and typed metadata: refused by their fields.
    let mut stale = ClusterLoadAssignment {
        cluster_name: "ratings".into(),
        ..ClusterLoadAssignment::default()
    };
    stale.policy = Some(
        envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy {
            endpoint_stale_after: Some(Duration {
                seconds: 30,
                nanos: 0,
            }),
            ..Default::default()
        },
    );
    let err = judge(BOOTSTRAP, &[crate::compose::resolved(&eds, &stale)], &[]).unwrap_err();
    assert!(
        err.starts_with("cluster \"ratings\": load_assignment.policy.endpoint_stale_after:"),
        "{err}"
    );
}

/// A `Struct` of string fields.
fn strings(fields: &[(&str, &str)]) -> envoy_types::pb::google::protobuf::Struct {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    Struct {
        fields: fields
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_string(),
                    Value {
                        kind: Some(Kind::StringValue((*v).to_string())),
                    },
                )
            })
            .collect(),
    }
}

#[test]
fn original_src_set_filter_state_and_internal_upstream_push_as_a_file_writes_them() {
    use envoy_types::pb::envoy::config::core::v3::{
        DataSource, EnvoyInternalAddress, Metadata, SubstitutionFormatString, TransportSocket,
        data_source, envoy_internal_address, substitution_format_string, transport_socket,
    };
    use envoy_types::pb::envoy::extensions::filters::common::set_filter_state::v3::{
        FilterStateValue, filter_state_value,
    };
    use envoy_types::pb::envoy::extensions::filters::listener::original_src::v3::OriginalSrc;
    use envoy_types::pb::envoy::extensions::filters::network::set_filter_state::v3::Config as SetFilterState;
    use envoy_types::pb::envoy::extensions::transport_sockets::internal_upstream::v3::{
        InternalUpstreamTransport, internal_upstream_transport::MetadataValueSource,
    };
    use envoy_types::pb::envoy::r#type::metadata::v3::{
        MetadataKey, MetadataKind, metadata_key, metadata_kind,
    };
    let any = |type_url: &str, value: Vec<u8>| Any {
        type_url: type_url.into(),
        value,
    };
    let value =
        |key: &str, text: &str, shared: filter_state_value::SharedWithUpstream| FilterStateValue {
            key: Some(filter_state_value::Key::ObjectKey(key.into())),
            value: Some(filter_state_value::Value::FormatString(
                SubstitutionFormatString {
                    format: Some(substitution_format_string::Format::TextFormatSource(
                        DataSource {
                            specifier: Some(data_source::Specifier::InlineString(text.into())),
                            ..DataSource::default()
                        },
                    )),
                    ..SubstitutionFormatString::default()
                },
            )),
            shared_with_upstream: shared as i32,
            ..FilterStateValue::default()
        };
    let set_state = SetFilterState {
        on_new_connection: vec![
            value(
                "envoy.filters.listener.original_dst.local_ip",
                "%DOWNSTREAM_LOCAL_ADDRESS%",
                filter_state_value::SharedWithUpstream::Once,
            ),
            value(
                "envoy.network.transport_socket.original_dst_address",
                "192.0.2.1:8080",
                filter_state_value::SharedWithUpstream::None,
            ),
        ],
        ..SetFilterState::default()
    };
    let mut outbound = virtual_outbound();
    outbound.listener_filters.push(ListenerFilter {
        name: "envoy.filters.listener.original_src".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            "type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc",
            OriginalSrc {
                bind_port: false,
                mark: 123,
            }
            .encode_to_vec(),
        ))),
        ..ListenerFilter::default()
    });
    outbound.filter_chains[0].filters.insert(
        0,
        Filter {
            name: "envoy.filters.network.set_filter_state".into(),
            config_type: Some(filter::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config",
                set_state.encode_to_vec(),
            ))),
        },
    );
    outbound.filter_chains[0].filters[1] = tcp_proxy("to_internal");
    let encap = Listener {
        name: "encap".into(),
        address: Some(Address {
            address: Some(address::Address::EnvoyInternalAddress(
                EnvoyInternalAddress {
                    address_name_specifier: Some(
                        envoy_internal_address::AddressNameSpecifier::ServerListenerName(
                            "encap".into(),
                        ),
                    ),
                    ..EnvoyInternalAddress::default()
                },
            )),
        }),
        listener_specifier: Some(
            envoy_types::pb::envoy::config::listener::v3::listener::ListenerSpecifier::InternalListener(
                Default::default(),
            ),
        ),
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.original_dst".into(),
            ..ListenerFilter::default()
        }],
        filter_chains: vec![FilterChain {
            filters: vec![tcp_proxy("by_metadata")],
            ..FilterChain::default()
        }],
        ..Listener::default()
    };
    let mut by_metadata = passthrough();
    by_metadata.name = "by_metadata".into();
    by_metadata.connect_timeout = None;
    by_metadata.lb_config = Some(cluster::LbConfig::OriginalDstLbConfig(
        cluster::OriginalDstLbConfig {
            metadata_key: Some(MetadataKey {
                key: "envoy.lb".into(),
                path: vec![metadata_key::PathSegment {
                    segment: Some(metadata_key::path_segment::Segment::Key(
                        "destination".into(),
                    )),
                }],
            }),
            ..cluster::OriginalDstLbConfig::default()
        },
    ));
    let mut to_internal = service("to_internal", "192.0.2.20");
    let internal_endpoint = LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: encap.address.clone(),
            ..Endpoint::default()
        })),
        metadata: Some(Metadata {
            filter_metadata: [
                (
                    "envoy.filters.listener.original_dst".to_string(),
                    strings(&[("local", "192.0.2.9:443")]),
                ),
                (
                    "envoy.lb".to_string(),
                    strings(&[("destination", "192.0.2.10:443")]),
                ),
            ]
            .into(),
            ..Metadata::default()
        }),
        ..LbEndpoint::default()
    };
    to_internal.load_assignment.as_mut().unwrap().endpoints[0]
        .lb_endpoints
        .insert(0, internal_endpoint);
    let host = |name: &str| MetadataValueSource {
        kind: Some(MetadataKind {
            kind: Some(metadata_kind::Kind::Host(Default::default())),
        }),
        name: name.into(),
    };
    to_internal.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.internal_upstream".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
            InternalUpstreamTransport {
                passthrough_metadata: vec![host("envoy.filters.listener.original_dst"), host("envoy.lb")],
                transport_socket: Some(TransportSocket {
                    name: "envoy.transport_sockets.raw_buffer".into(),
                    config_type: Some(transport_socket::ConfigType::TypedConfig(any(
                        "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
                        Vec::new(),
                    ))),
                }),
            }
            .encode_to_vec(),
        ))),
    });
    // Internal listeners need the bootstrap's extension, as in Envoy.
    let bootstrap = format!(
        "{BOOTSTRAP}bootstrap_extensions:\n- name: envoy.bootstrap.internal_listener\n  typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener }}\n"
    );
    let (pushed, _) = judge(
        &bootstrap,
        &[passthrough(), by_metadata, to_internal],
        &[outbound, encap],
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // The same resources as a file writes them.
    let clusters = r#"
- { name: PassthroughCluster, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED, connect_timeout: 2.5s }
- name: by_metadata
  type: ORIGINAL_DST
  lb_policy: CLUSTER_PROVIDED
  original_dst_lb_config: { metadata_key: { key: envoy.lb, path: [ { key: destination } ] } }
- name: to_internal
  type: STATIC
  load_assignment:
    cluster_name: to_internal
    endpoints:
    - lb_endpoints:
      - endpoint: { address: { envoy_internal_address: { server_listener_name: encap } } }
        metadata:
          filter_metadata:
            envoy.filters.listener.original_dst: { local: "192.0.2.9:443" }
            envoy.lb: { destination: "192.0.2.10:443" }
      - endpoint: { address: { socket_address: { address: 192.0.2.20, port_value: 8080 } } }
  transport_socket:
    name: envoy.transport_sockets.internal_upstream
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport
      passthrough_metadata:
      - { kind: { host: {} }, name: envoy.filters.listener.original_dst }
      - { kind: { host: {} }, name: envoy.lb }
      transport_socket:
        name: envoy.transport_sockets.raw_buffer
        typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer }
"#;
    let clusters: Vec<serde_yaml_ng::Value> = serde_yaml_ng::from_str(clusters).unwrap();
    let mut listeners: Vec<serde_yaml_ng::Value> = Vec::new();
    let mut outbound_file = super::listener(&virtual_outbound()).unwrap();
    let listeners_yaml = r#"
- name: envoy.filters.listener.original_src
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc, mark: 123 }
"#;
    let extra: Vec<serde_yaml_ng::Value> = serde_yaml_ng::from_str(listeners_yaml).unwrap();
    outbound_file["listener_filters"]
        .as_sequence_mut()
        .unwrap()
        .extend(extra);
    let chain_filters = r#"
- name: envoy.filters.network.set_filter_state
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config
    on_new_connection:
    - object_key: envoy.filters.listener.original_dst.local_ip
      format_string: { text_format_source: { inline_string: "%DOWNSTREAM_LOCAL_ADDRESS%" } }
      shared_with_upstream: ONCE
    - object_key: envoy.network.transport_socket.original_dst_address
      format_string: { text_format_source: { inline_string: "192.0.2.1:8080" } }
- name: envoy.filters.network.tcp_proxy
  typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: to_internal, cluster: to_internal, idle_timeout: 3600s, max_connect_attempts: 2 }
"#;
    outbound_file["filter_chains"][0]["filters"] = serde_yaml_ng::from_str(chain_filters).unwrap();
    listeners.push(outbound_file);
    listeners.push(
        serde_yaml_ng::from_str(
            r#"
name: encap
address: { envoy_internal_address: { server_listener_name: encap } }
internal_listener: {}
listener_filters: [ { name: envoy.filters.listener.original_dst } ]
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: by_metadata, cluster: by_metadata, idle_timeout: 3600s, max_connect_attempts: 2 }
"#,
        )
        .unwrap(),
    );
    let file = super::document(&bootstrap, &clusters, &listeners).unwrap();
    let from_file =
        origdst_core::config::Config::from_yaml(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pushed, from_file);
    assert!(pushed.listeners[0].original_src.is_some());
    assert_eq!(pushed.listeners[0].filter_chains[0].filter_state.len(), 2);
    assert_eq!(pushed.clusters[3].passthrough_metadata.len(), 2);

    // What of these extensions origdst does not do is refused by its field.
    let mut keyed = set_state;
    keyed.on_new_connection[1].factory_key = "f".into();
    let mut chain = virtual_outbound();
    chain.filter_chains[0].filters.insert(
        0,
        Filter {
            name: "envoy.filters.network.set_filter_state".into(),
            config_type: Some(filter::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config",
                keyed.encode_to_vec(),
            ))),
        },
    );
    let err = judge(BOOTSTRAP, &[passthrough()], &[chain]).unwrap_err();
    assert_eq!(
        err,
        "listener \"virtualOutbound\": filter_chains[0].filters[0].typed_config.on_new_connection[1].factory_key: not supported"
    );
}

#[test]
fn ten_thousand_service_listeners_push_in_one_document() {
    // A mesh's services as Istio pushes them: one `bind_to_port: false` listener each, behind the
    // virtual outbound. Past the file's 4 MiB bound as a document, within the pushed one.
    const SERVICES: u32 = 10_000;
    let mut listeners = vec![virtual_outbound()];
    for i in 0..SERVICES {
        let mut l = service_listener(&format!("outbound_svc{i}_9080"), 9080);
        l.filter_chains[0].filters = vec![tcp_proxy("reviews")];
        l.address = Some(socket(
            &format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256),
            9080,
        ));
        listeners.push(l);
    }
    let clusters = [passthrough(), service("reviews", "10.1.0.7")];
    let (config, doc) = judge(BOOTSTRAP, &clusters, &listeners).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.listeners.len(), SERVICES as usize + 1);
    eprintln!(
        "{SERVICES} service listeners: a {} byte document",
        doc.len()
    );
    assert!(
        doc.len() > origdst_core::config::limits::CONFIG_BYTES_MAX,
        "{} bytes: the push needs the larger bound to mean anything here",
        doc.len()
    );
    // Routed by the hand-off index: the last service's address finds its listener.
    let last = SERVICES - 1;
    let addr = format!(
        "10.{}.{}.{}:9080",
        100 + last / 65536,
        (last / 256) % 256,
        last % 256
    );
    assert_eq!(
        config.handoff.target(addr.parse().unwrap()),
        Some(SERVICES as usize)
    );
}
