//! Golden tests for the config: every supported field validates into a pinned model, and every
//! kind of unsupported input is refused with a pinned message naming its field. A deliberate
//! change regenerates the files with `UPDATE_GOLDEN=1 cargo test -p origdst-core --test golden`;
//! the diff then shows exactly what a user would see change.

use std::path::PathBuf;

use origdst_core::config::Config;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compares `actual` with the golden file, or rewrites it under `UPDATE_GOLDEN=1`.
fn check(name: &str, actual: &str) {
    let path = golden(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the golden file at line {}:\n  golden: {:?}\n  actual: {:?}\n\
             (UPDATE_GOLDEN=1 rewrites it if the change is intended)",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first),
        );
    }
}

#[test]
fn every_supported_field_validates_into_the_pinned_model() {
    let yaml = std::fs::read_to_string(golden("every-field.yaml")).expect("read every-field.yaml");
    let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
    check("every-field.expected", &format!("{config:#?}\n"));
}

/// A stock Envoy ADS bootstrap validates into a pinned model; the same document as proto-JSON
/// (camelCase) validates into the same one.
#[test]
fn an_envoy_ads_bootstrap_yaml_or_proto_json_validates_into_the_pinned_model() {
    let yaml = std::fs::read_to_string(golden("bootstrap.yaml")).expect("read bootstrap.yaml");
    let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
    check("bootstrap.expected", &format!("{config:#?}\n"));
    let json = std::fs::read_to_string(golden("bootstrap.json")).expect("read bootstrap.json");
    assert!(
        json.contains("\"staticResources\""),
        "the JSON is camelCase"
    );
    let from_json = Config::from_yaml(&json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        from_json, config,
        "the proto-JSON bootstrap reads as the YAML one"
    );
}

const BASE: &str = r#"static_resources:
  listeners:
  - name: out
    address: { socket_address: { address: 0.0.0.0, port_value: 15001 } }
    listener_filters:
    - name: envoy.filters.listener.original_dst
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: out
          cluster: pass
  clusters:
  - name: pass
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
"#;

/// (case, from, to): BASE with `from` replaced by `to` once.
const UNSUPPORTED: &[(&str, &str, &str)] = &[
    (
        "admin pipe address",
        "static_resources:\n",
        "admin: { address: { pipe: { path: /tmp/admin } } }\nstatic_resources:\n",
    ),
    (
        "admin address twice",
        "static_resources:\n",
        "origdst: { admin: 127.0.0.1:15000 }\nadmin: { address: { socket_address: { address: 127.0.0.1, port_value: 15000 } } }\nstatic_resources:\n",
    ),
    (
        "admin unknown field",
        "static_resources:\n",
        "admin: { profile_path: /tmp/p, ignore_global_conn_limit: true }\nstatic_resources:\n",
    ),
    (
        "dynamic_resources REST",
        "static_resources:\n",
        "node: { id: a, cluster: b }\ndynamic_resources: { ads_config: { api_type: REST, grpc_services: [ { envoy_grpc: { cluster_name: pass } } ] } }\nstatic_resources:\n",
    ),
    (
        "dynamic_resources google_grpc",
        "static_resources:\n",
        "node: { id: a, cluster: b }\ndynamic_resources: { ads_config: { api_type: GRPC, grpc_services: [ { google_grpc: { target_uri: x } } ] } }\nstatic_resources:\n",
    ),
    (
        "dynamic_resources transport v2",
        "static_resources:\n",
        "node: { id: a, cluster: b }\ndynamic_resources: { ads_config: { api_type: GRPC, transport_api_version: V2, grpc_services: [ { envoy_grpc: { cluster_name: pass } } ] } }\nstatic_resources:\n",
    ),
    (
        "dynamic_resources unknown xDS cluster",
        "static_resources:\n",
        "node: { id: a, cluster: b }\ndynamic_resources: { ads_config: { api_type: GRPC, grpc_services: [ { envoy_grpc: { cluster_name: xds } } ] } }\nstatic_resources:\n",
    ),
    (
        "dynamic_resources xDS cluster not STATIC",
        "static_resources:\n",
        "node: { id: a, cluster: b }\ndynamic_resources: { ads_config: { api_type: GRPC, grpc_services: [ { envoy_grpc: { cluster_name: pass } } ] } }\nstatic_resources:\n",
    ),
    (
        "dynamic_resources lds from a file",
        "static_resources:\n",
        "node: { id: a, cluster: b }\ndynamic_resources: { lds_config: { path_config_source: { path: /x } } }\nstatic_resources:\n",
    ),
    (
        "node without id",
        "static_resources:\n",
        "node: { cluster: b }\ndynamic_resources: { ads_config: { api_type: GRPC, grpc_services: [ { envoy_grpc: { cluster_name: xds } } ] } }\nstatic_resources:\n",
    ),
    (
        "cluster protocol options other than HTTP",
        "    lb_policy: CLUSTER_PROVIDED\n",
        "    lb_policy: CLUSTER_PROVIDED\n    typed_extension_protocol_options: { envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions: {} }\n",
    ),
    (
        "internal_listener on a socket listener",
        "  - name: out\n",
        "  - name: out\n    internal_listener: {}\n",
    ),
    (
        "proto-JSON camelCase unknown field",
        "  - name: out\n",
        "  - name: out\n    perConnectionBufferLimitBytes: 1024\n",
    ),
    (
        "bootstrap dynamic_resources",
        "static_resources:\n",
        "dynamic_resources: {}\nstatic_resources:\n",
    ),
    (
        "bootstrap extension",
        "static_resources:\n",
        "bootstrap_extensions: [ { name: envoy.bootstrap.wasm } ]\nstatic_resources:\n",
    ),
    (
        "runtime flag",
        "static_resources:\n",
        "layered_runtime: { layers: [ { name: l, static_layer: { envoy.reloadable_features.http2_use_oghttp2: true } } ] }\nstatic_resources:\n",
    ),
    (
        "runtime disk layer",
        "static_resources:\n",
        "layered_runtime: { layers: [ { name: l, disk_layer: {} } ] }\nstatic_resources:\n",
    ),
    (
        "listener per_connection_buffer_limit_bytes",
        "  - name: out\n",
        "  - name: out\n    per_connection_buffer_limit_bytes: 1024\n",
    ),
    (
        "listener connection_balance_config",
        "  - name: out\n",
        "  - name: out\n    connection_balance_config: {}\n",
    ),
    (
        "listener traffic_direction value",
        "  - name: out\n",
        "  - name: out\n    traffic_direction: SIDEWAYS\n",
    ),
    (
        "socket_address resolver_name",
        "port_value: 15001 }",
        "port_value: 15001, resolver_name: dns }",
    ),
    (
        "socket_address protocol UDP",
        "port_value: 15001 }",
        "port_value: 15001, protocol: UDP }",
    ),
    (
        "socket_address hostname",
        "address: 0.0.0.0",
        "address: localhost",
    ),
    (
        "listener pipe address",
        "address: { socket_address: { address: 0.0.0.0, port_value: 15001 } }",
        "address: { pipe: { path: /tmp/x } }",
    ),
    (
        "listener filter tls_inspector",
        "    - name: envoy.filters.listener.original_dst\n",
        "    - name: envoy.filters.listener.tls_inspector\n",
    ),
    (
        "filter chain transport_socket",
        "    - filters:\n",
        "    - transport_socket: { name: tls }\n      filters:\n",
    ),
    (
        "filter chain match server_names",
        "    - filters:\n",
        "    - filter_chain_match: { server_names: [ a.example ] }\n      filters:\n",
    ),
    (
        "network filter http_connection_manager",
        "      - name: envoy.filters.network.tcp_proxy\n",
        "      - name: envoy.filters.network.http_connection_manager\n",
    ),
    (
        "network filter before tcp_proxy",
        "      - name: envoy.filters.network.tcp_proxy\n",
        "      - name: envoy.filters.network.rbac\n      - name: envoy.filters.network.tcp_proxy\n",
    ),
    (
        "tcp_proxy weighted_clusters",
        "          cluster: pass\n",
        "          cluster: pass\n          weighted_clusters: {}\n",
    ),
    (
        "tcp_proxy access_log",
        "          cluster: pass\n",
        "          cluster: pass\n          access_log: []\n",
    ),
    (
        "tcp_proxy max_connect_attempts 0",
        "          cluster: pass\n",
        "          cluster: pass\n          max_connect_attempts: 0\n",
    ),
    (
        "cluster type EDS",
        "    type: ORIGINAL_DST\n",
        "    type: EDS\n",
    ),
    (
        "cluster type STRICT_DNS",
        "    type: ORIGINAL_DST\n",
        "    type: STRICT_DNS\n",
    ),
    (
        "cluster STRICT_DNS by host name for connections",
        "  - name: pass\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n",
        "  - name: pass\n    type: STRICT_DNS\n    load_assignment: { cluster_name: pass, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: backend.example, port_value: 80 } } } } ] } ] }\n",
    ),
    (
        "cluster LOGICAL_DNS with two endpoints",
        "  - name: pass\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n",
        "  - name: pass\n    type: LOGICAL_DNS\n    load_assignment: { cluster_name: pass, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 80 } } } }, { endpoint: { address: { socket_address: { address: 10.0.0.2, port_value: 80 } } } } ] } ] }\n",
    ),
    (
        "cluster STRICT_DNS address outside its family",
        "  - name: pass\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n",
        "  - name: pass\n    type: STRICT_DNS\n    dns_lookup_family: V4_ONLY\n    load_assignment: { cluster_name: pass, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: \"fd00::1\", port_value: 80 } } } } ] } ] }\n",
    ),
    (
        "cluster health_checks",
        "    lb_policy: CLUSTER_PROVIDED\n",
        "    lb_policy: CLUSTER_PROVIDED\n    health_checks: []\n",
    ),
    (
        "cluster lb_policy LEAST_REQUEST",
        "    lb_policy: CLUSTER_PROVIDED\n",
        "    lb_policy: LEAST_REQUEST\n",
    ),
    (
        "original_dst load_assignment",
        "    lb_policy: CLUSTER_PROVIDED\n",
        "    lb_policy: CLUSTER_PROVIDED\n    load_assignment: { cluster_name: pass }\n",
    ),
    (
        "original_dst_lb_config unknown field",
        "    lb_policy: CLUSTER_PROVIDED\n",
        "    lb_policy: CLUSTER_PROVIDED\n    original_dst_lb_config: { use_http_headers: true }\n",
    ),
    (
        "metadata_key two path segments",
        "    lb_policy: CLUSTER_PROVIDED\n",
        "    lb_policy: CLUSTER_PROVIDED\n    original_dst_lb_config: { metadata_key: { key: a, path: [ { key: b }, { key: c } ] } }\n",
    ),
    (
        "upstream_port_override 0",
        "    lb_policy: CLUSTER_PROVIDED\n",
        "    lb_policy: CLUSTER_PROVIDED\n    original_dst_lb_config: { upstream_port_override: 0 }\n",
    ),
    (
        "transport_socket tls",
        "    lb_policy: CLUSTER_PROVIDED\n",
        "    lb_policy: CLUSTER_PROVIDED\n    transport_socket: { name: envoy.transport_sockets.tls }\n",
    ),
    (
        "internal listener without the bootstrap extension",
        "address: { socket_address: { address: 0.0.0.0, port_value: 15001 } }",
        "address: { envoy_internal_address: { server_listener_name: out } }",
    ),
    (
        "static endpoint is our own listener",
        "  - name: pass\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n",
        "  - name: pass\n    type: STATIC\n    load_assignment: { cluster_name: pass, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 15001 } } } } ] } ] }\n",
    ),
    (
        "set_filter_state unknown object",
        "      - name: envoy.filters.network.tcp_proxy\n",
        "      - name: envoy.filters.network.set_filter_state\n        typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config, on_new_connection: [ { object_key: my.key, format_string: { text_format_source: { inline_string: x } } } ] }\n      - name: envoy.filters.network.tcp_proxy\n",
    ),
    (
        "redirect records without traffic_direction",
        "static_resources:\n",
        "origdst: { redirect_records: true }\nstatic_resources:\n",
    ),
    (
        "duplicate filter chain match",
        "    - filters:\n",
        "    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: a, cluster: pass }\n    - filters:\n",
    ),
    (
        "admin address clashes with a listener",
        "static_resources:\n",
        "origdst: { admin: 127.0.0.1:15001 }\nstatic_resources:\n",
    ),
    (
        "destination_policy unknown field",
        "static_resources:\n",
        "origdst: { destination_policy: { allow_all: true } }\nstatic_resources:\n",
    ),
    (
        "destination_policy malformed CIDR",
        "static_resources:\n",
        "origdst: { destination_policy: { deny_cidrs: [ 10.0.0.0/40 ] } }\nstatic_resources:\n",
    ),
    (
        "endpoint pipe outside the xDS cluster",
        "  - name: pass\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n",
        "  - name: pass\n    type: STATIC\n    load_assignment: { cluster_name: pass, endpoints: [ { lb_endpoints: [ { endpoint: { address: { pipe: { path: /run/x.sock } } } } ] } ] }\n",
    ),
    (
        "dns_lookup_family on a cluster that looks nothing up",
        "    lb_policy: CLUSTER_PROVIDED\n",
        "    lb_policy: CLUSTER_PROVIDED\n    dns_lookup_family: V4_ONLY\n",
    ),
    (
        "too many shards",
        "static_resources:\n",
        "origdst: { shards: 300 }\nstatic_resources:\n",
    ),
];

/// The xDS cluster's refusals: BASE with `dynamic_resources` naming cluster `xds`, defined as
/// given (case, the cluster's fields after its name and type).
const UNSUPPORTED_XDS_CLUSTER: &[(&str, &str)] = &[
    (
        "xDS cluster host name malformed",
        "    type: STRICT_DNS\n    load_assignment: { cluster_name: xds, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: \"cp..example\", port_value: 18000 } } } } ] } ] }\n",
    ),
    (
        "xDS cluster host name without a port",
        "    type: LOGICAL_DNS\n    load_assignment: { cluster_name: xds, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: cp.example } } } } ] } ] }\n",
    ),
    (
        "xDS cluster abstract Unix socket",
        "    type: STATIC\n    load_assignment: { cluster_name: xds, endpoints: [ { lb_endpoints: [ { endpoint: { address: { pipe: { path: \"@xds\" } } } } ] } ] }\n",
    ),
    (
        "xDS cluster dns_lookup_family unknown",
        "    type: STRICT_DNS\n    dns_lookup_family: V5_ONLY\n    load_assignment: { cluster_name: xds, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: cp.example, port_value: 18000 } } } } ] } ] }\n",
    ),
    (
        "xDS cluster by name over TLS",
        "    type: STRICT_DNS\n    transport_socket: { name: envoy.transport_sockets.tls }\n    load_assignment: { cluster_name: xds, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: cp.example, port_value: 18000 } } } } ] } ] }\n",
    ),
    (
        "xDS cluster by name without endpoints",
        "    type: STRICT_DNS\n",
    ),
];

/// BASE with a control plane reached through cluster `xds`, defined by `fields`.
fn with_xds_cluster(fields: &str) -> String {
    BASE.replacen(
        "static_resources:\n",
        "node: { id: a, cluster: b }\ndynamic_resources: { ads_config: { api_type: GRPC, grpc_services: [ { envoy_grpc: { cluster_name: xds } } ] } }\nstatic_resources:\n",
        1,
    ) + "  - name: xds\n" + fields
}

#[test]
fn every_unsupported_input_is_refused_with_a_pinned_message() {
    let edited = UNSUPPORTED.iter().map(|(case, from, to)| {
        assert!(
            BASE.contains(from),
            "case {case:?}: the base has no {from:?}"
        );
        (*case, BASE.replacen(from, to, 1))
    });
    let dns_cluster = "    type: STRICT_DNS\n    load_assignment: { cluster_name: xds, endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: cp.example, port_value: 18000 } } } } ] } ] }\n";
    let named_by_a_listener =
        with_xds_cluster(dns_cluster).replacen("cluster: pass", "cluster: xds", 1);
    let xds_clusters = UNSUPPORTED_XDS_CLUSTER
        .iter()
        .map(|(case, fields)| (*case, with_xds_cluster(fields)))
        .chain([(
            "xDS cluster by host name named by a listener",
            named_by_a_listener,
        )]);
    let mut actual = String::new();
    for (case, yaml) in edited.chain(xds_clusters) {
        let Err(error) = Config::from_yaml(&yaml) else {
            panic!("case {case:?} was accepted:\n{yaml}");
        };
        assert!(
            !error.path.is_empty(),
            "case {case:?}: the error names no field: {error}"
        );
        actual.push_str(&format!("{case}\n    {error}\n"));
    }
    check("unsupported.expected", &actual);
}

/// The xDS bootstraps people copy: go-control-plane's sample (STRICT_DNS at an IP, the
/// deprecated `http2_protocol_options` on the cluster, `admin.access_log_path`), Envoy's quick
/// start (STRICT_DNS at a host name, no `transport_api_version`), and Istio's (a STATIC cluster
/// reaching the agent through a Unix socket): each validates, its control plane where it says.
#[test]
fn published_xds_bootstraps_validate_with_their_control_plane_where_they_say() {
    use origdst_core::config::{ClusterKind, ControlPlaneTarget, DnsFamily};
    let go_control_plane = r#"
node:
  cluster: test-cluster
  id: test-id
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
    - envoy_grpc:
        cluster_name: xds_cluster
  cds_config:
    resource_api_version: V3
    ads: {}
  lds_config:
    resource_api_version: V3
    ads: {}
static_resources:
  clusters:
  - connect_timeout: 1s
    type: STRICT_DNS
    http2_protocol_options: {}
    name: xds_cluster
    load_assignment:
      cluster_name: xds_cluster
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: 127.0.0.1
                port_value: 18000
admin:
  access_log_path: /dev/null
  address:
    socket_address:
      address: 0.0.0.0
      port_value: 19000
"#;
    let quick_start = r#"
node: { cluster: test-cluster, id: test-id }
dynamic_resources:
  ads_config:
    api_type: GRPC
    grpc_services:
    - envoy_grpc:
        cluster_name: xds_cluster
  cds_config: { ads: {} }
  lds_config: { ads: {} }
static_resources:
  clusters:
  - type: STRICT_DNS
    dns_lookup_family: V4_ONLY
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
    name: xds_cluster
    load_assignment:
      cluster_name: xds_cluster
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: my-control-plane
                port_value: 18000
"#;
    let istio = r#"
node: { id: "sidecar~10.0.0.1~web-0.default~default.svc.cluster.local", cluster: web.default }
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [ { envoy_grpc: { cluster_name: xds-grpc } } ]
  cds_config: { ads: {}, initial_fetch_timeout: 0s, resource_api_version: V3 }
  lds_config: { ads: {}, initial_fetch_timeout: 0s, resource_api_version: V3 }
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [ { lb_endpoints: [ { endpoint: { address: { pipe: { path: ./etc/istio/proxy/XDS } } } } ] } ]
"#;
    let expect = [
        (
            go_control_plane,
            vec![ControlPlaneTarget::Socket(
                "127.0.0.1:18000".parse().unwrap(),
            )],
            DnsFamily::Auto,
        ),
        (
            quick_start,
            vec![ControlPlaneTarget::Host {
                name: "my-control-plane".into(),
                port: 18000,
            }],
            DnsFamily::V4Only,
        ),
        (
            istio,
            vec![ControlPlaneTarget::Pipe("./etc/istio/proxy/XDS".into())],
            DnsFamily::Auto,
        ),
    ];
    for (yaml, targets, family) in expect {
        let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let dynamic = config.dynamic.as_ref().expect("dynamic_resources");
        assert_eq!(
            config.clusters[dynamic.ads_cluster].kind,
            ClusterKind::ControlPlane { targets, family },
            "{yaml}"
        );
    }
}
