//! The ADS client against an in-process ADS server over real gRPC (tonic, HTTP/2 on loopback),
//! as ztunnel tests its xDS client: the subscription order, ACK and NACK with versions and
//! nonces (a NACKed update, then good ones back to back), and a control-plane restart that is
//! resubscribed with the versions in force, then a response larger than gRPC's usual 4 MiB; and
//! the control plane reached as published bootstraps name it: by host name past a dead replica,
//! through a Unix socket, and out of reach with every address named.

use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use origdst_core::config::{ControlPlaneTarget, DnsFamily};
use origdst_xds::session::{AdsSession, ResourceType, Verdict};
use origdst_xds::stream::{self, StreamEnd};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

fn cluster(name: &str) -> Any {
    Any {
        type_url: CDS.into(),
        value: Cluster {
            name: name.into(),
            ..Cluster::default()
        }
        .encode_to_vec(),
    }
}

fn listener(name: &str) -> Any {
    Any {
        type_url: LDS.into(),
        value: Listener {
            name: name.into(),
            ..Listener::default()
        }
        .encode_to_vec(),
    }
}

fn response(type_url: &str, version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources,
        ..DiscoveryResponse::default()
    }
}

/// Every request the server received, by stream.
type Seen = Arc<Mutex<Vec<(usize, DiscoveryRequest)>>>;

/// A control plane following a script per stream.
struct Scripted {
    streams: std::sync::atomic::AtomicUsize,
    seen: Seen,
}

async fn next(incoming: &mut Streaming<DiscoveryRequest>, stream: usize, seen: &Seen) {
    let request = incoming
        .message()
        .await
        .expect("a request")
        .expect("the client keeps the stream open");
    seen.lock().unwrap().push((stream, request));
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Scripted {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let stream = self
            .streams
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut incoming = request.into_inner();
        let seen = Arc::clone(&self.seen);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let send = |r| {
                let tx = tx.clone();
                async move { tx.send(Ok(r)).await.expect("the client reads") }
            };
            match stream {
                0 => {
                    next(&mut incoming, 0, &seen).await; // CDS subscription
                    send(response(CDS, "v1", "a", vec![cluster("bad")])).await;
                    next(&mut incoming, 0, &seen).await; // NACK
                    next(&mut incoming, 0, &seen).await; // LDS subscription
                    // Two updates back to back: each is answered, in order.
                    send(response(CDS, "v2", "b", vec![cluster("good")])).await;
                    send(response(CDS, "v3", "c", vec![cluster("better")])).await;
                    next(&mut incoming, 0, &seen).await; // ACK v2
                    next(&mut incoming, 0, &seen).await; // ACK v3
                    send(response(LDS, "l1", "d", vec![listener("out")])).await;
                    next(&mut incoming, 0, &seen).await; // ACK l1
                }
                _ => {
                    // After the restart: both subscriptions, with the versions in force.
                    next(&mut incoming, 1, &seen).await;
                    next(&mut incoming, 1, &seen).await;
                    // A mesh's worth of listeners in one response, past gRPC's usual 4 MiB.
                    let many: Vec<Any> = (0..40_000)
                        .map(|i| listener(&format!("{i:0>160}")))
                        .collect();
                    let big = response(LDS, "l2", "e", many);
                    assert!(big.encoded_len() > 4 * 1024 * 1024, "{}", big.encoded_len());
                    send(big).await;
                    next(&mut incoming, 1, &seen).await; // ACK l2
                }
            }
            // The control plane goes away: the stream ends.
            drop(tx);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("state of the world only"))
    }
}

/// Judges as origdst's validator will: a cluster named "bad" is refused, naming it.
fn judge(kind: ResourceType, response: &DiscoveryResponse) -> Verdict {
    for any in &response.resources {
        if kind == ResourceType::Cluster {
            let cluster = Cluster::decode(any.value.as_slice()).expect("a Cluster");
            if cluster.name == "bad" {
                return Verdict::Rejected(
                    "cluster \"bad\": static_resources.clusters[0].type: required".into(),
                );
            }
        }
    }
    Verdict::Accepted
}

#[tokio::test]
async fn ack_nack_versions_nonces_and_a_control_plane_restart_over_real_grpc() {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = socket.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let server = Scripted {
        streams: Default::default(),
        seen: Arc::clone(&seen),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(socket)),
    );
    let node = Node {
        id: "sidecar~10.0.0.1~web-0.default~default.svc.cluster.local".into(),
        cluster: "web".into(),
        ..Node::default()
    };
    let mut session = AdsSession::new(true, true, true);
    let mut judged = Vec::new();
    let mut judge = |kind: ResourceType, response: &DiscoveryResponse| {
        judged.push(response.version_info.clone());
        judge(kind, response)
    };
    let endpoint = stream::ControlPlane::at(addr, std::time::Duration::from_secs(1));
    let end = stream::run(&endpoint, &node, &mut session, &mut judge).await;
    assert_eq!(end, StreamEnd::Closed);
    assert_eq!(session.version(ResourceType::Cluster), "v3");
    assert_eq!(session.version(ResourceType::Listener), "l1");
    // The control plane restarted: a new stream resubscribes with what is in force.
    let end = stream::run(&endpoint, &node, &mut session, &mut judge).await;
    assert_eq!(end, StreamEnd::Closed);
    assert_eq!(
        judged,
        ["v1", "v2", "v3", "l1", "l2"],
        "every response judged once, in order"
    );
    assert_eq!(session.version(ResourceType::Listener), "l2");

    let seen = seen.lock().unwrap();
    let summary: Vec<(usize, &str, &str, &str, bool, bool)> = seen
        .iter()
        .map(|(stream, r)| {
            (
                *stream,
                if r.type_url == CDS { "cds" } else { "lds" },
                r.version_info.as_str(),
                r.response_nonce.as_str(),
                r.error_detail.is_some(),
                r.node.is_some(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, "cds", "", "", false, true),     // subscribe, the node with it
            (0, "cds", "", "a", true, false),    // NACK of v1: no version in force
            (0, "lds", "", "", false, false),    // listeners once clusters were first answered
            (0, "cds", "v2", "b", false, false), // ACK
            (0, "cds", "v3", "c", false, false), // ACK
            (0, "lds", "l1", "d", false, false), // ACK
            (1, "cds", "v3", "", false, true),   // after the restart: the node again, v3 in force
            (1, "lds", "l1", "", false, false),
            (1, "lds", "l2", "e", false, false), // the 6 MiB response taken
        ]
    );
    let nack = &seen[1].1;
    let status = nack.error_detail.as_ref().expect("a NACK");
    assert_eq!(status.code, 3, "INVALID_ARGUMENT");
    assert!(
        status.message.contains("cluster \"bad\""),
        "{}",
        status.message
    );
    assert_eq!(
        seen[0].1.node.as_ref().map(|n| n.id.as_str()),
        Some(node.id.as_str())
    );
}

/// A control plane that answers each stream's cluster subscription with version `v1`, takes
/// the ACK, and ends the stream.
struct OneAnswer;

#[tonic::async_trait]
impl AggregatedDiscoveryService for OneAnswer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let seen = Seen::default();
            next(&mut incoming, 0, &seen).await; // CDS subscription
            tx.send(Ok(response(CDS, "v1", "a", vec![cluster("good")])))
                .await
                .expect("the client reads");
            next(&mut incoming, 0, &seen).await; // ACK
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("state of the world only"))
    }
}

/// One stream to `plane`, clusters only: how it ended and the cluster version it left in force.
async fn one_stream(plane: &stream::ControlPlane) -> (StreamEnd, String) {
    let node = Node {
        id: "gateway-0".into(),
        cluster: "gateways".into(),
        ..Node::default()
    };
    let mut session = AdsSession::new(true, false, true);
    let end = stream::run(plane, &node, &mut session, &mut judge).await;
    (end, session.version(ResourceType::Cluster).to_string())
}

/// A port nothing listens on (bound, then closed).
fn dead_port() -> std::net::SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

#[tokio::test]
async fn the_control_plane_reached_by_host_name_past_a_dead_endpoint() {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(OneAnswer))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(socket)),
    );
    // As go-control-plane's bootstrap names it (STRICT_DNS), behind a replica that is down.
    // `localhost` is ::1 first (AUTO), where nothing listens either: the name's next address
    // serves.
    let plane = stream::ControlPlane::new(
        vec![
            ControlPlaneTarget::Socket(dead_port()),
            ControlPlaneTarget::Host {
                name: "localhost".into(),
                port,
            },
        ],
        DnsFamily::Auto,
        std::time::Duration::from_secs(2),
    );
    assert_eq!(one_stream(&plane).await, (StreamEnd::Closed, "v1".into()));
    // The next attempt starts at the next endpoint (round robin): the name, straight away.
    assert_eq!(one_stream(&plane).await, (StreamEnd::Closed, "v1".into()));
}

#[tokio::test]
async fn the_control_plane_reached_through_a_unix_socket() {
    let path = std::env::temp_dir().join(format!("origdst-xds-test-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(OneAnswer))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(socket)),
    );
    // As Istio's bootstrap reaches its agent (`pipe`).
    let plane = stream::ControlPlane::new(
        vec![ControlPlaneTarget::Pipe(path.clone())],
        DnsFamily::Auto,
        std::time::Duration::from_secs(2),
    );
    assert_eq!(one_stream(&plane).await, (StreamEnd::Closed, "v1".into()));
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn a_control_plane_out_of_reach_names_every_address_tried() {
    let dead = dead_port();
    let plane = stream::ControlPlane::new(
        vec![
            ControlPlaneTarget::Socket(dead),
            ControlPlaneTarget::Pipe("/nonexistent/origdst/XDS".into()),
            ControlPlaneTarget::Host {
                name: "no-such-host.invalid".into(),
                port: 15010,
            },
        ],
        DnsFamily::Auto,
        std::time::Duration::from_secs(2),
    );
    let (end, version) = one_stream(&plane).await;
    assert_eq!(version, "", "nothing was accepted");
    let StreamEnd::Failed(why) = end else {
        panic!("a stream to nowhere must fail: {end:?}");
    };
    for named in [
        dead.to_string().as_str(),
        "/nonexistent/origdst/XDS",
        "no-such-host.invalid",
    ] {
        assert!(why.contains(named), "{named} missing from: {why}");
    }
}
