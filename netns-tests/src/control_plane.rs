//! A control plane for the tests: a real ADS server (tonic, `envoy-types`' protos) in a thread that
//! entered a test namespace. It serves the state of the world it is told (clusters, listeners,
//! each with a version), sends a new state to every open stream at once, and records every
//! request it receives (subscriptions, ACKs, NACKs with their error detail). Stopping it ends its
//! streams, as a control plane that goes away does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::netns::Netns;

/// The state of the world for one type: its version and resources.
pub type TypeState = (String, Vec<Any>);

/// What the server serves, by type URL.
pub type World = BTreeMap<String, TypeState>;

/// A request as recorded: (type URL, version, nonce, error detail, node id, the node's metadata
/// keys, sorted and comma-separated).
pub type Seen = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

struct Server {
    world: watch::Receiver<World>,
    seen: Arc<Mutex<Vec<Seen>>>,
    nonce: Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Server {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let mut world = self.world.clone();
        let seen = Arc::clone(&self.seen);
        let nonce = Arc::clone(&self.nonce);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            // The types this stream subscribed to, and the version each was last sent.
            let mut subscribed: BTreeMap<String, String> = BTreeMap::new();
            loop {
                let changed = tokio::select! {
                    request = incoming.message() => {
                        let Ok(Some(request)) = request else { return };
                        seen.lock().unwrap().push((
                            request.type_url.clone(),
                            request.version_info.clone(),
                            request.response_nonce.clone(),
                            request.error_detail.as_ref().map(|s| s.message.clone()),
                            request.node.as_ref().map(|n| n.id.clone()),
                            request.node.as_ref().and_then(|n| n.metadata.as_ref()).map(|m| {
                                let mut keys: Vec<&str> =
                                    m.fields.keys().map(String::as_str).collect();
                                keys.sort_unstable();
                                keys.join(",")
                            }),
                        ));
                        // A subscription (no nonce) is answered with the current state.
                        if !request.response_nonce.is_empty() {
                            continue;
                        }
                        subscribed.insert(request.type_url.clone(), String::new());
                        false
                    }
                    change = world.changed() => {
                        if change.is_err() { return }
                        true
                    }
                };
                let _ = changed;
                let current = world.borrow_and_update().clone();
                for (type_url, sent) in &mut subscribed {
                    let Some((version, resources)) = current.get(type_url) else {
                        continue;
                    };
                    if version == sent {
                        continue;
                    }
                    sent.clone_from(version);
                    let n = nonce.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let response = DiscoveryResponse {
                        version_info: version.clone(),
                        resources: resources.clone(),
                        type_url: type_url.clone(),
                        nonce: format!("n{n}"),
                        ..DiscoveryResponse::default()
                    };
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            }
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

/// A running control plane.
pub struct ControlPlane {
    /// Dropped to stop: every stream ends with it.
    world: Option<watch::Sender<World>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlPlane {
    /// Serves ADS on `addr` inside `ns` (the state of the world empty until [`Self::push`]).
    pub fn start(ns: &Netns, addr: SocketAddr) -> Self {
        Self::start_with(ns, addr, World::new())
    }

    fn start_with(ns: &Netns, addr: SocketAddr, world: World) -> Self {
        let (world_tx, world_rx) = watch::channel(world);
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server = Server {
            world: world_rx,
            seen: Arc::clone(&seen),
            nonce: Arc::default(),
        };
        let thread = ns.spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let socket = tokio::net::TcpListener::bind(addr).await.expect("bind");
                let _ = ready_tx.send(());
                let _ = tonic::transport::Server::builder()
                    .add_service(AggregatedDiscoveryServiceServer::new(server))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(socket),
                        async move {
                            let _ = stop_rx.await;
                        },
                    )
                    .await;
            });
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the control plane listens");
        Self {
            world: Some(world_tx),
            seen,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Serves `version` of `type_url`'s resources from now on (sent to every open stream).
    pub fn push(&self, type_url: &str, version: &str, resources: Vec<Any>) {
        if let Some(sender) = &self.world {
            sender.send_modify(|world| {
                world.insert(type_url.to_string(), (version.to_string(), resources));
            });
        }
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The state of the world it serves (to start another with it).
    pub fn world(&self) -> World {
        self.world
            .as_ref()
            .map(|w| w.borrow().clone())
            .unwrap_or_default()
    }

    /// Stops serving (its streams end) and returns what it served.
    pub fn stop(mut self) -> World {
        let world = self.world();
        self.shut_down();
        world
    }

    fn shut_down(&mut self) {
        // The streams end with the state's sender; then the server stops.
        self.world = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// A control plane serving `world` from the start (a restart).
    pub fn restart(ns: &Netns, addr: SocketAddr, world: World) -> Self {
        Self::start_with(ns, addr, world)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shut_down();
    }
}
