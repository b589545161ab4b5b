//! The ADS client against an in-process ADS server over real gRPC (tonic, HTTP/2 on loopback),
//! as ztunnel tests its xDS client: the subscription order, ACK and NACK with versions and
//! nonces (a NACKed update, then good ones back to back), and a control-plane restart that is
//! resubscribed with the versions in force, then a response larger than gRPC's usual 4 MiB.

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
    let endpoint = stream::ControlPlane {
        uri: format!("http://{addr}"),
        connect_timeout: std::time::Duration::from_secs(1),
    };
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
