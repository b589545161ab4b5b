//! Driven by a control plane, against the real kernel: the real binary with an Envoy ADS
//! bootstrap, a real ADS server (gRPC over HTTP/2) in a process of its own beside it. A pushed
//! listener starts accepting; an invalid push is NACKed naming the field while the old config
//! keeps serving; an update waiting for its cluster warms while the version in force serves; an
//! EDS cluster warms until its endpoints come, and moved endpoints take new connections only; a
//! listener pushed away stops at once while its open connection drains byte-exact; the control
//! plane is killed and origdst keeps relaying; it comes back and origdst resubscribes with the
//! versions in force.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address,
    config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::Any;
use origdst_netns_tests::admin;
use origdst_netns_tests::config::ConfigFile;
use origdst_netns_tests::control_plane::ControlPlane;
use origdst_netns_tests::origdst_bin;
use origdst_netns_tests::proxy::Proxy;
use origdst_netns_tests::server::{Server, ask_greeting};
use origdst_netns_tests::topology::{Gateway, SERVER_V4, addr};
use prost::Message;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const TIMEOUT: Duration = Duration::from_secs(10);

fn control_plane_addr() -> SocketAddr {
    "127.0.0.1:15010".parse().unwrap()
}

fn bootstrap() -> String {
    bootstrap_with("GRPC")
}

/// The bootstrap speaking `api_type` (`GRPC` or `DELTA_GRPC`).
fn bootstrap_with(api_type: &str) -> String {
    format!(
        "node: {{ id: gateway-0, cluster: gateways, metadata: {{ ISTIO_VERSION: \"1.24.0\", LABELS: {{ app: gateway }} }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [ {{ envoy_grpc: {{ cluster_name: xds-grpc }} }} ]
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }} ] }} ]
",
        port = control_plane_addr().port()
    )
}

fn passthrough() -> Any {
    let cluster = Cluster {
        name: "PassthroughCluster".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        ..Cluster::default()
    };
    Any {
        type_url: CDS.into(),
        value: cluster.encode_to_vec(),
    }
}

/// The capture listener on 15001 (the gateway's REDIRECT target), relaying to `cluster`.
fn capture(cluster: &str) -> Any {
    let listener = Listener {
        name: "capture".into(),
        address: Some(socket("0.0.0.0", 15001)),
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.original_dst".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(Any {
                type_url:
                    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
                        .into(),
                value: Vec::new(),
            })),
            ..ListenerFilter::default()
        }],
        filter_chains: vec![chain_to("capture", cluster)],
        ..Listener::default()
    };
    Any {
        type_url: LDS.into(),
        value: listener.encode_to_vec(),
    }
}

/// A filter chain whose `tcp_proxy` (stat prefix `stat`) relays to `cluster`.
fn chain_to(stat: &str, cluster: &str) -> FilterChain {
    let proxy = TcpProxy {
        stat_prefix: stat.into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..TcpProxy::default()
    };
    FilterChain {
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
    }
}

/// `ask_greeting` from the client.
fn ask(gw: &Gateway, dst: SocketAddr) -> Result<Vec<u8>, std::io::ErrorKind> {
    ask_greeting(&gw.client, dst)
}

/// Polls `ask` until `want` holds (bounded): how long it took.
fn until(
    gw: &Gateway,
    dst: SocketAddr,
    since: Instant,
    want: impl Fn(&Result<Vec<u8>, std::io::ErrorKind>) -> bool,
) -> Duration {
    loop {
        if want(&ask(gw, dst)) {
            return since.elapsed();
        }
        assert!(since.elapsed() < TIMEOUT, "the push never took effect");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The tests' control plane process, built beside them.
fn start_control_plane(ns: &origdst_netns_tests::netns::Netns) -> ControlPlane {
    ControlPlane::start(env!("CARGO_BIN_EXE_xds-server"), ns, control_plane_addr())
}

/// Waits (bounded) for a request the control plane received that `want` picks.
fn wait_for_request(
    control: &ControlPlane,
    what: &str,
    want: impl Fn(&DiscoveryRequest) -> bool,
) -> DiscoveryRequest {
    wait_for(what, || control.seen(), want)
}

/// Waits (bounded) for an item of `seen()` that `want` picks.
fn wait_for<T: std::fmt::Debug>(
    what: &str,
    seen: impl Fn() -> Vec<T>,
    want: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(found) = seen().into_iter().find(|r| want(r)) {
            return found;
        }
        assert!(Instant::now() < deadline, "no {what}: {:#?}", seen());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An EDS cluster (endpoints over ADS) for `service`.
fn eds_cluster(name: &str, service: &str) -> Any {
    let cluster = Cluster {
        name: name.into(),
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
            service_name: service.into(),
        }),
        ..Cluster::default()
    };
    Any {
        type_url: CDS.into(),
        value: cluster.encode_to_vec(),
    }
}

/// `service`'s endpoints: one at `endpoint`.
fn assignment(service: &str, endpoint: SocketAddr) -> Any {
    let assignment = ClusterLoadAssignment {
        cluster_name: service.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket(&endpoint.ip().to_string(), endpoint.port().into())),
                    ..Endpoint::default()
                })),
                ..LbEndpoint::default()
            }],
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    };
    Any {
        type_url: EDS.into(),
        value: assignment.encode_to_vec(),
    }
}

/// A connection from the client to `dst`, its greeting read.
fn open_to(gw: &Gateway, dst: SocketAddr, greeting_len: usize) -> (TcpStream, Vec<u8>) {
    gw.client.run(move || {
        let mut stream = TcpStream::connect(dst).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut greeting = vec![0u8; greeting_len];
        stream.read_exact(&mut greeting).expect("greeting");
        (stream, greeting)
    })
}

/// Writes `len` bytes and reads them back, byte-exact.
fn echo(stream: &mut TcpStream, len: usize, byte: u8) {
    let payload = vec![byte; len];
    stream.write_all(&payload).expect("write");
    let mut back = vec![0u8; len];
    stream.read_exact(&mut back).expect("echo");
    assert_eq!(back, payload);
}

#[test]
fn listeners_come_and_go_as_a_control_plane_pushes_them() {
    let gw = Gateway::new("xds");
    let server = addr(SERVER_V4[0], 8080);
    let (first, second) = (addr(SERVER_V4[1], 9001), addr(SERVER_V4[1], 9002));
    // Greets with the address it was dialled on, then echoes until EOF.
    let _server = Server::greet_and_echo(&gw.server, &[server, first, second]);
    let mut control = start_control_plane(&gw.router);
    let config = ConfigFile::new("xds", &bootstrap());
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--config", config.arg(), "--shards", "2"],
    );
    let greeting = |a: SocketAddr| Ok(a.to_string().into_bytes());
    // Nothing pushed yet: nothing listens on the capture port, and origdst is not ready (as
    // Envoy initializing: a node's readiness gate waits for the control plane's config).
    assert_eq!(ask(&gw, server), Err(std::io::ErrorKind::ConnectionRefused));
    let (status, text) = admin::get(&gw.router, "/ready");
    assert_eq!(
        (status, text.as_str()),
        (
            503,
            "initializing: waiting for the control plane's first listeners and endpoints\n"
        )
    );

    // Clusters, then the capture listener: it accepts, and relays to the dialled destination.
    control.push(CDS, "c1", vec![passthrough()]);
    let pushed = Instant::now();
    control.push(LDS, "l1", vec![capture("PassthroughCluster")]);
    let accepting = until(&gw, server, pushed, |r| r.is_ok());
    assert_eq!(ask(&gw, server), greeting(server));
    assert_eq!(admin::get(&gw.router, "/ready").0, 200);
    let (mut open, _) = open_to(&gw, server, server.to_string().len());

    // An invalid push (a field origdst does not implement) is NACKed naming it; l1 serves on.
    let mut buffered = Listener::decode(capture("PassthroughCluster").value.as_slice()).unwrap();
    buffered.per_connection_buffer_limit_bytes =
        Some(envoy_types::pb::google::protobuf::UInt32Value { value: 1024 });
    control.push(
        LDS,
        "l2",
        vec![Any {
            type_url: LDS.into(),
            value: buffered.encode_to_vec(),
        }],
    );
    let nack = wait_for_request(&control, "NACK", |r| {
        r.type_url == LDS && r.error_detail.is_some()
    });
    let why = nack.error_detail.expect("an error detail").message;
    assert_eq!(
        why,
        "listener \"capture\": per_connection_buffer_limit_bytes: not supported (proto field 5)"
    );
    assert_eq!(
        nack.version_info, "l1",
        "a NACK carries the version in force"
    );
    assert_eq!(ask(&gw, server), greeting(server));

    // An update naming a cluster not pushed yet warms: ACKed, and l1 keeps serving meanwhile.
    control.push(LDS, "l3", vec![capture("svc")]);
    wait_for_request(&control, "ACK of l3", |r| {
        r.type_url == LDS && r.version_info == "l3"
    });
    assert_eq!(ask(&gw, server), greeting(server));
    let metrics = admin::scrape(&gw.router);
    assert_eq!(metrics.value("origdst_xds_warming{type=\"lds\"}"), 1.0);
    let (_, text) = admin::get(&gw.router, "/config_dump");
    let dump: serde_json::Value = serde_json::from_str(&text).expect("a JSON dump");
    let capture_dump = &dump["configs"][1]["dynamic_listeners"][0];
    assert_eq!(capture_dump["name"], "capture");
    assert_eq!(
        capture_dump["warming_state"]["listener"]["filter_chains"][0]["filters"][0]["typed_config"]
            ["cluster"],
        "svc",
        "{capture_dump}"
    );
    assert!(capture_dump["active_state"].is_object(), "{capture_dump}");

    // The cluster arrives, of type EDS: it asks for its endpoints by name and warms itself.
    control.push(
        CDS,
        "c2",
        vec![passthrough(), eds_cluster("svc", "outbound|8080||svc")],
    );
    let subscribed = wait_for_request(&control, "EDS subscription", |r| r.type_url == EDS);
    assert_eq!(subscribed.resource_names, vec!["outbound|8080||svc"]);
    let metrics = admin::scrape(&gw.router);
    assert_eq!(metrics.value("origdst_xds_warming{type=\"cds\"}"), 1.0);
    assert_eq!(ask(&gw, server), greeting(server), "l1 still serves");

    // Its endpoints arrive: the cluster and the listener waiting for it go in force.
    let pushed = Instant::now();
    control.push(EDS, "e1", vec![assignment("outbound|8080||svc", first)]);
    let warmed = until(&gw, server, pushed, |r| *r == greeting(first));
    let metrics = admin::scrape(&gw.router);
    assert_eq!(metrics.value("origdst_xds_warming{type=\"lds\"}"), 0.0);
    assert_eq!(metrics.value("origdst_xds_warming{type=\"cds\"}"), 0.0);
    // The connection l1 accepted drains on, byte-exact (its listener version was replaced).
    echo(&mut open, 64 * 1024, 0x5a);

    // The endpoints move: new connections go to the new one, an open one stays where it is.
    let (mut on_first, at) = open_to(&gw, server, first.to_string().len());
    assert_eq!(at, first.to_string().into_bytes());
    let pushed = Instant::now();
    control.push(EDS, "e2", vec![assignment("outbound|8080||svc", second)]);
    let moved = until(&gw, server, pushed, |r| *r == greeting(second));
    echo(&mut on_first, 64 * 1024, 0x3c);
    drop(on_first);

    // The listener pushed away: it stops at once; the open connection drains byte-exact.
    let pushed = Instant::now();
    control.push(LDS, "l4", Vec::new());
    let refusing = until(&gw, server, pushed, |r| {
        *r == Err(std::io::ErrorKind::ConnectionRefused)
    });
    echo(&mut open, 128 * 1024, 0x6b);
    drop(open);

    // Back again; then the control plane dies: origdst keeps relaying with what it has.
    let pushed = Instant::now();
    control.push(LDS, "l5", vec![capture("PassthroughCluster")]);
    let again = until(&gw, server, pushed, |r| r.is_ok());
    // The dump in Envoy's shape: the pushed resources in the dynamic sections with their
    // versions, the bootstrap's own in the static ones.
    let deadline = Instant::now() + TIMEOUT;
    let dump = loop {
        let (_, text) = admin::get(&gw.router, "/config_dump");
        let dump: serde_json::Value = serde_json::from_str(&text).expect("a JSON dump");
        if dump["configs"][1]["version_info"] == "l5" {
            break dump;
        }
        assert!(Instant::now() < deadline, "{dump}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let listeners = &dump["configs"][1];
    assert_eq!(listeners["dynamic_listeners"][0]["name"], "capture");
    assert_eq!(
        listeners["dynamic_listeners"][0]["active_state"]["version_info"],
        "l5"
    );
    assert_eq!(listeners["static_listeners"], serde_json::json!([]));
    let clusters = &dump["configs"][2];
    assert_eq!(clusters["version_info"], "c2");
    let names: Vec<&str> = clusters["dynamic_active_clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["cluster"]["name"].as_str())
        .collect();
    assert_eq!(names, ["PassthroughCluster", "svc"]);
    assert_eq!(
        clusters["static_clusters"][0]["cluster"]["name"],
        "xds-grpc"
    );
    // A push mixing what origdst takes with what it cannot (a cluster with a field it does not
    // implement): that one is set aside and named in the NACK, the rest goes into force — as
    // Envoy's CDS takes the valid clusters of a response and rejects the others.
    let mut extra = Cluster::decode(passthrough().value.as_slice()).unwrap();
    extra.name = "extra".into();
    let mut limited = extra.clone();
    limited.name = "limited".into();
    limited.per_connection_buffer_limit_bytes =
        Some(envoy_types::pb::google::protobuf::UInt32Value { value: 1024 });
    let any = |c: &Cluster| Any {
        type_url: CDS.into(),
        value: c.encode_to_vec(),
    };
    control.push(
        CDS,
        "c3",
        vec![
            passthrough(),
            eds_cluster("svc", "outbound|8080||svc"),
            any(&extra),
            any(&limited),
        ],
    );
    let nack = wait_for_request(&control, "NACK of c3", |r| {
        r.type_url == CDS && r.error_detail.is_some()
    });
    assert_eq!(
        nack.error_detail.expect("a detail").message,
        "cluster \"limited\": per_connection_buffer_limit_bytes: not supported (proto field 5) \
         (set aside; the rest of the push is in force)"
    );
    assert_eq!(
        nack.version_info, "c2",
        "the NACK carries the version in force"
    );
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (_, text) = admin::get(&gw.router, "/config_dump");
        let dump: serde_json::Value = serde_json::from_str(&text).expect("a JSON dump");
        let names: Vec<String> = dump["configs"][2]["dynamic_active_clusters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_string))
            .collect();
        if names.iter().any(|n| n == "extra") {
            assert!(!names.iter().any(|n| n == "limited"), "{names:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rest of c3 never went into force: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ask(&gw, server), greeting(server), "l5 serves on");
    let metrics = admin::scrape(&gw.router);
    assert_eq!(metrics.value("origdst_xds_connected"), 1.0);
    assert_eq!(
        metrics.value("origdst_xds_updates_total{type=\"lds\",result=\"rejected\"}"),
        1.0
    );
    assert_eq!(
        metrics.value("origdst_xds_updates_total{type=\"cds\",result=\"rejected\"}"),
        1.0
    );
    assert_eq!(
        metrics.value("origdst_xds_resources_set_aside_total{type=\"cds\"}"),
        1.0
    );
    assert_eq!(
        metrics.value("origdst_xds_updates_total{type=\"eds\",result=\"accepted\"}"),
        2.0
    );
    control.kill();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ask(&gw, server), greeting(server));
    assert_eq!(
        admin::scrape(&gw.router).value("origdst_xds_connected"),
        0.0
    );

    // It comes back: origdst resubscribes with its node and the versions in force, in Envoy's
    // order (clusters, their endpoints by name, listeners).
    control.restart(&gw.router);
    let deadline = Instant::now() + Duration::from_secs(40);
    let resubscribed = loop {
        let seen = control.seen();
        if seen.len() >= 3 {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "origdst never came back: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let first_three: Vec<(&str, &str)> = resubscribed[..3]
        .iter()
        .map(|r| (r.type_url.as_str(), r.version_info.as_str()))
        .collect();
    assert_eq!(first_three, [(CDS, "c2"), (EDS, "e2"), (LDS, "l5")]);
    assert_eq!(resubscribed[1].resource_names, vec!["outbound|8080||svc"]);
    let node = resubscribed[0]
        .node
        .as_ref()
        .expect("the node opens the stream");
    assert_eq!(node.id, "gateway-0");
    let mut keys: Vec<&str> = node
        .metadata
        .as_ref()
        .map(|m| m.fields.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["ISTIO_VERSION", "LABELS"],
        "the node's metadata goes to the control plane"
    );
    assert_eq!(ask(&gw, server), greeting(server));
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("drain_aborted"), 0, "{}", exit.log);
    println!(
        "the first push (clusters, then the listener) accepted {accepting:?} after it, a listener pushed alone {again:?}, a warming one served {warmed:?} after its endpoints (EDS), moved endpoints served {moved:?} after, a listener pushed away refused {refusing:?} after"
    );
}

/// Delta xDS (`api_type: DELTA_GRPC`) against the same control plane speaking delta: resources
/// arrive one by one with their own versions (an EDS cluster, its endpoints, the listener that
/// waits for it), a refused change is NACKed and nothing of it held, a cluster removed under a
/// listener in force leaves it bound, a removal by name stops the listener, and after a restart
/// the proxy tells what it holds so only what differs comes.
#[test]
fn a_delta_control_plane_drives_listeners_clusters_and_endpoints() {
    let gw = Gateway::new("xdsd");
    let server = addr(SERVER_V4[0], 8080);
    let endpoint = addr(SERVER_V4[1], 9001);
    let _server = Server::greet_and_echo(&gw.server, &[server, endpoint]);
    let mut control = start_control_plane(&gw.router);
    let config = ConfigFile::new("xdsd", &bootstrap_with("DELTA_GRPC"));
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--config", config.arg(), "--shards", "2"],
    );
    let greeting = |a: SocketAddr| Ok(a.to_string().into_bytes());
    // The first requests: clusters as a wildcard, with the node.
    let first = wait_for_request_delta(&control, "a CDS subscription", |r| r.type_url == CDS);
    assert!(first.resource_names_subscribe.is_empty(), "{first:?}");
    assert_eq!(
        first.node.as_ref().map(|n| n.id.as_str()),
        Some("gateway-0")
    );

    control.push(
        CDS,
        "c1",
        vec![passthrough(), eds_cluster("svc", "outbound|8080||svc")],
    );
    let eds = wait_for_request_delta(&control, "an EDS subscription", |r| r.type_url == EDS);
    assert_eq!(eds.resource_names_subscribe, vec!["outbound|8080||svc"]);
    // The listener before the endpoints: taken (ACKed), warming with its cluster; not ready.
    control.push(LDS, "l1", vec![capture("svc")]);
    wait_for_request_delta(&control, "the ACK of l1", |r| {
        r.type_url == LDS && !r.response_nonce.is_empty() && r.error_detail.is_none()
    });
    assert_eq!(ask(&gw, server), Err(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(
        admin::get(&gw.router, "/ready").0,
        503,
        "a cluster still warms"
    );
    let pushed = Instant::now();
    control.push(EDS, "e1", vec![assignment("outbound|8080||svc", endpoint)]);
    let accepting = until(&gw, server, pushed, |r| *r == greeting(endpoint));
    assert_eq!(admin::get(&gw.router, "/ready").0, 200);

    // A refused change: NACKed naming the field, the listener in force serving on.
    let mut buffered = Listener::decode(capture("svc").value.as_slice()).unwrap();
    buffered.per_connection_buffer_limit_bytes =
        Some(envoy_types::pb::google::protobuf::UInt32Value { value: 1 });
    control.push(
        LDS,
        "l2",
        vec![Any {
            type_url: LDS.into(),
            value: buffered.encode_to_vec(),
        }],
    );
    let nack = wait_for_request_delta(&control, "a NACK", |r| r.error_detail.is_some());
    assert_eq!(
        nack.error_detail.map(|s| s.message).as_deref(),
        Some(
            "listener \"capture\": per_connection_buffer_limit_bytes: not supported (proto field 5)"
        )
    );
    assert_eq!(ask(&gw, server), greeting(endpoint));

    // The cluster goes away while the listener naming it is in force (control planes remove a
    // cluster before the listener): the listener stays bound, its connections fail (not
    // refused); the cluster comes back, its endpoints are asked for again, and it serves.
    control.push(CDS, "c2", vec![passthrough()]);
    until(&gw, server, Instant::now(), |r| match r {
        Ok(got) => got.is_empty(),
        Err(kind) => *kind != std::io::ErrorKind::ConnectionRefused,
    });
    control.push(
        CDS,
        "c3",
        vec![passthrough(), eds_cluster("svc", "outbound|8080||svc")],
    );
    until(&gw, server, Instant::now(), |r| *r == greeting(endpoint));

    // Removed by name: the listener stops.
    let pushed = Instant::now();
    control.push(LDS, "l3", Vec::new());
    let refusing = until(&gw, server, pushed, |r| {
        *r == Err(std::io::ErrorKind::ConnectionRefused)
    });
    control.push(LDS, "l4", vec![capture("PassthroughCluster")]);
    until(&gw, server, Instant::now(), |r| *r == greeting(server));
    let metrics = admin::scrape(&gw.router);
    assert_eq!(
        metrics.value("origdst_xds_updates_total{type=\"lds\",result=\"rejected\"}"),
        1.0
    );
    // The endpoints came twice: first, and again once the cluster came back.
    assert_eq!(
        metrics.value("origdst_xds_updates_total{type=\"eds\",result=\"accepted\"}"),
        2.0
    );

    // Killed and started again: origdst tells what it holds, so nothing is sent again; a change
    // made meanwhile arrives alone.
    control.kill();
    control.push(
        CDS,
        "c4",
        vec![passthrough(), eds_cluster("svc", "outbound|8080||svc")],
    );
    control.push(LDS, "l5", vec![capture("svc")]);
    control.restart(&gw.router);
    let deadline = Instant::now() + Duration::from_secs(40);
    let resubscribed = loop {
        let seen = control.seen_delta();
        if seen.iter().any(|r| r.type_url == LDS) {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "origdst never came back: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let kinds: Vec<&str> = resubscribed
        .iter()
        .take(3)
        .map(|r| r.type_url.as_str())
        .collect();
    assert_eq!(kinds, [CDS, EDS, LDS]);
    assert_eq!(
        resubscribed[0].initial_resource_versions.len(),
        2,
        "the clusters held: {:?}",
        resubscribed[0].initial_resource_versions
    );
    assert!(
        resubscribed[1]
            .initial_resource_versions
            .contains_key("outbound|8080||svc")
    );
    assert!(
        resubscribed[2]
            .initial_resource_versions
            .contains_key("capture")
    );
    // The listener changed while the control plane was away: only it comes, and applies.
    until(&gw, server, Instant::now(), |r| *r == greeting(endpoint));
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("drain_aborted"), 0, "{}", exit.log);
    println!(
        "delta xDS: a warming listener accepted {accepting:?} after its endpoints were pushed, one removed refused {refusing:?} after"
    );
}

/// A control plane whose address drops SYNs: each connection attempt gives up after the xDS
/// cluster's `connect_timeout` (1 s here) and the client tries again after its backoff, rather
/// than waiting out the kernel's minutes of SYN retries.
#[test]
fn a_black_holed_control_plane_is_retried_after_the_connect_timeout() {
    let gw = Gateway::new("xdsb");
    let port = control_plane_addr().port().to_string();
    gw.router.exec(
        "iptables",
        &["-A", "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"],
    );
    let config = ConfigFile::new("xdsb", &bootstrap());
    let started = Instant::now();
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--config", config.arg(), "--shards", "1"],
    );
    let deadline = started + Duration::from_secs(8);
    loop {
        let streams = admin::scrape(&gw.router).value("origdst_xds_streams_total");
        if streams >= 3.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{streams} connection attempts in 8 s: the client waits on a black-holed control plane"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let exit = proxy.stop_clean();
    assert!(exit.log.contains("connecting"), "{}", exit.log);
}

/// The xDS cluster as go-control-plane's and Envoy's published bootstraps give it —
/// `STRICT_DNS`, the control plane by host name — behind a replica that is down: the real binary
/// falls through the dead endpoint, looks `localhost` up (its ::1 refuses too, then 127.0.0.1
/// answers), takes the control plane's clusters and listeners, and relays through them.
#[test]
fn a_control_plane_named_by_host_name_past_a_dead_replica_drives_the_proxy() {
    let gw = Gateway::new("xdsn");
    let server = addr(SERVER_V4[0], 8080);
    let _server = Server::greet_and_echo(&gw.server, &[server]);
    let control = start_control_plane(&gw.router);
    let port = control_plane_addr().port();
    let one = format!(
        "lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }} ]"
    );
    let two = format!(
        "lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {dead} }} }} }} }}, \
         {{ endpoint: {{ address: {{ socket_address: {{ address: localhost, port_value: {port} }} }} }} }} ]",
        dead = port + 1
    );
    let bootstrap = bootstrap()
        .replace("    type: STATIC\n", "    type: STRICT_DNS\n")
        .replace(&one, &two);
    assert!(
        bootstrap.contains("STRICT_DNS") && bootstrap.contains("localhost"),
        "{bootstrap}"
    );
    let config = ConfigFile::new("xdsn", &bootstrap);
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--config", config.arg(), "--shards", "1"],
    );
    control.push(CDS, "c1", vec![passthrough()]);
    let pushed = Instant::now();
    control.push(LDS, "l1", vec![capture("PassthroughCluster")]);
    let accepting = until(&gw, server, pushed, |r| r.is_ok());
    println!(
        "a control plane by host name: the pushed listener accepting {accepting:?} after the push"
    );
    assert_eq!(ask(&gw, server), Ok(server.to_string().into_bytes()));
    wait_for_request(&control, "ACK of l1", |r| {
        r.type_url == LDS && r.version_info == "l1" && r.error_detail.is_none()
    });
    assert_eq!(
        admin::scrape(&gw.router).value("origdst_xds_connected"),
        1.0
    );
    proxy.stop_clean();
}

/// With no control plane answering, origdst is ready once `initial_fetch_timeout` passes (as
/// Envoy finishes initializing), serving what its bootstrap has.
#[test]
fn without_a_control_plane_readiness_waits_for_the_initial_fetch_timeout() {
    let gw = Gateway::new("xdsr");
    let bootstrap = bootstrap().replace(
        "lds_config: { ads: {}, resource_api_version: V3 }",
        "lds_config: { ads: {}, resource_api_version: V3, initial_fetch_timeout: 0.5s }",
    );
    assert!(bootstrap.contains("initial_fetch_timeout"), "{bootstrap}");
    let config = ConfigFile::new("xdsr", &bootstrap);
    let started = Instant::now();
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--config", config.arg(), "--shards", "1"],
    );
    assert_eq!(admin::get(&gw.router, "/ready").0, 503);
    let deadline = started + TIMEOUT;
    while admin::get(&gw.router, "/ready").0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "ready after {waited:?}"
    );
    let exit = proxy.stop_clean();
    assert!(
        exit.log.contains("within initial_fetch_timeout"),
        "{}",
        exit.log
    );
}

/// Waits (bounded) for a delta request the control plane received that `want` picks.
fn wait_for_request_delta(
    control: &ControlPlane,
    what: &str,
    want: impl Fn(&DeltaDiscoveryRequest) -> bool,
) -> DeltaDiscoveryRequest {
    wait_for(what, || control.seen_delta(), want)
}

/// A push of 1 000 service listeners (Istio's `bind_to_port: false` services behind a
/// `use_original_dst` virtual listener) applies at once — printed, not asserted — routes by
/// them, and leaves an open connection alone.
#[test]
fn a_push_of_a_thousand_service_listeners_applies_without_touching_open_connections() {
    let gw = Gateway::new("xdsk");
    let backend = addr(SERVER_V4[0], 8080);
    let _server = Server::greet_and_echo(&gw.server, &[backend]);
    let control = start_control_plane(&gw.router);
    let config = ConfigFile::new("xdsk", &bootstrap());
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--config", config.arg(), "--shards", "2"],
    );
    // The virtual outbound listener (hand-off by original destination) and its passthrough.
    let services = Cluster {
        name: "services".into(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: "services".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(SERVER_V4[0], 8080)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Cluster::default()
    };
    control.push(
        CDS,
        "c1",
        vec![
            passthrough(),
            Any {
                type_url: CDS.into(),
                value: services.encode_to_vec(),
            },
        ],
    );
    let mut outbound = Listener::decode(capture("PassthroughCluster").value.as_slice()).unwrap();
    outbound.use_original_dst = Some(envoy_types::pb::google::protobuf::BoolValue { value: true });
    let outbound = Any {
        type_url: LDS.into(),
        value: outbound.encode_to_vec(),
    };
    control.push(LDS, "l1", vec![outbound.clone()]);
    until(&gw, backend, Instant::now(), |r| r.is_ok());
    let mut open = gw.client.run(move || {
        let stream = TcpStream::connect(backend).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream
    });
    let mut greeting = vec![0u8; backend.to_string().len()];
    open.read_exact(&mut greeting).expect("greeting");

    const SERVICES: u32 = 1000;
    let mut listeners = vec![outbound];
    for i in 0..SERVICES {
        let listener = Listener {
            name: format!("svc{i}"),
            address: Some(socket("0.0.0.0", 20000 + i)),
            bind_to_port: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            filter_chains: vec![chain_to(&format!("svc{i}"), "services")],
            ..Listener::default()
        };
        listeners.push(Any {
            type_url: LDS.into(),
            value: listener.encode_to_vec(),
        });
    }
    let service = addr(SERVER_V4[0], 20500);
    let pushed = Instant::now();
    control.push(LDS, "l2", listeners);
    // Through the 501st service's listener to its cluster (the backend answers from 8080).
    let routed = until(&gw, service, pushed, |r| {
        r.as_ref()
            .is_ok_and(|got| *got == backend.to_string().into_bytes())
    });
    open.write_all(b"after the push").unwrap();
    let mut back = [0u8; 14];
    open.read_exact(&mut back).expect("echo after the push");
    assert_eq!(&back, b"after the push");
    drop(open);
    let exit = proxy.stop_clean();
    assert!(exit.stat("listener_handoff") >= 1, "{}", exit.log);
    println!(
        "a push of {SERVICES} service listeners routed {routed:?} after the push (debug build)"
    );
}

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}
