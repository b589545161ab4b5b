//! A control plane for the tests: a real ADS server (tonic, `envoy-types`' protos) in a process of
//! its own (`xds-server`), started inside a test namespace. It serves the state of the world the
//! test writes into its state directory — one `DiscoveryResponse` per type, `cds.pb`, `lds.pb`,
//! `eds.pb` — and sends a changed state to every open stream at once. Endpoints are served by the
//! names each stream asked for, and sent again when a stream changes those names. Every request
//! it receives (subscriptions, ACKs, NACKs with their error detail) is appended to `seen.bin`,
//! length-delimited, for the test to read. Killing the process (SIGKILL) is a control plane that
//! goes away; starting it again on the same directory is one that comes back with its state.
//! It speaks delta xDS too: each resource versioned by a digest of its bytes, only what differs
//! from what the client holds sent (what it told on reconnect, what it ACKed since), removals
//! by name; delta requests go to `seen-delta.bin`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::netns::Netns;

/// The type URL of endpoints: served by name, not as a wildcard.
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The state files, by type URL.
const STATE_FILES: [(&str, &str); 3] = [
    (
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "cds.pb",
    ),
    (
        "type.googleapis.com/envoy.config.listener.v3.Listener",
        "lds.pb",
    ),
    (EDS, "eds.pb"),
];

/// The state of the world for one type: its version and resources.
type TypeState = (String, Vec<Any>);

/// What the server serves, by type URL.
type World = BTreeMap<String, TypeState>;

/// The server: the world it serves, and where each request goes (state-of-the-world requests
/// to `seen`, delta ones to `seen_delta`).
struct Server {
    world: watch::Receiver<World>,
    seen: Arc<Mutex<std::fs::File>>,
    seen_delta: Arc<Mutex<std::fs::File>>,
    nonce: Arc<std::sync::atomic::AtomicU64>,
}

/// A resource's name, by its type.
fn resource_name(type_url: &str, any: &Any) -> Option<String> {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    match type_url {
        EDS => ClusterLoadAssignment::decode(any.value.as_slice())
            .ok()
            .map(|a| a.cluster_name),
        "type.googleapis.com/envoy.config.cluster.v3.Cluster" => {
            Cluster::decode(any.value.as_slice()).ok().map(|c| c.name)
        }
        _ => Listener::decode(any.value.as_slice()).ok().map(|l| l.name),
    }
}

/// A resource's version in a delta response: a digest of its bytes (FNV-1a), so an unchanged
/// resource keeps its version across pushes and restarts.
fn resource_version(any: &Any) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in &any.value {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// One delta stream's view of a type: what it subscribed to, what the client holds, and the
/// response awaiting its answer.
#[derive(Default)]
struct DeltaSubscribed {
    /// Names asked for; empty with `wildcard`.
    names: Vec<String>,
    wildcard: bool,
    /// What the client holds: name → version.
    held: BTreeMap<String, String>,
    /// The world version last sent (a NACKed push is not sent again until the world changes).
    sent_world: Option<String>,
    /// The nonce sent last and what the client will hold once it ACKs it.
    pending: Option<(String, BTreeMap<String, String>)>,
}

/// What one stream subscribed to: the names asked for (empty: all) and the version last sent.
#[derive(Default)]
struct Subscribed {
    names: Vec<String>,
    sent: Option<String>,
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
            let mut subscribed: BTreeMap<String, Subscribed> = BTreeMap::new();
            loop {
                tokio::select! {
                    request = incoming.message() => {
                        let Ok(Some(request)) = request else { return };
                        let record = request.encode_length_delimited_to_vec();
                        let _ = seen.lock().unwrap().write_all(&record);
                        let entry = subscribed.entry(request.type_url.clone()).or_default();
                        let mut names = request.resource_names.clone();
                        names.sort_unstable();
                        if request.response_nonce.is_empty() || names != entry.names {
                            // A subscription, or a changed one: answered with the current state.
                            entry.names = names;
                            entry.sent = None;
                        }
                    }
                    change = world.changed() => {
                        if change.is_err() { return }
                    }
                }
                let current = world.borrow_and_update().clone();
                for (type_url, subscription) in &mut subscribed {
                    let Some((version, resources)) = current.get(type_url) else {
                        continue;
                    };
                    if subscription.sent.as_ref() == Some(version) {
                        continue;
                    }
                    subscription.sent = Some(version.clone());
                    let resources = if type_url == EDS {
                        resources
                            .iter()
                            .filter(|any| {
                                ClusterLoadAssignment::decode(any.value.as_slice())
                                    .is_ok_and(|a| subscription.names.contains(&a.cluster_name))
                            })
                            .cloned()
                            .collect()
                    } else {
                        resources.clone()
                    };
                    let n = nonce.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let response = DiscoveryResponse {
                        version_info: version.clone(),
                        resources,
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
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let mut world = self.world.clone();
        let seen = Arc::clone(&self.seen_delta);
        let nonce = Arc::clone(&self.nonce);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut subscribed: BTreeMap<String, DeltaSubscribed> = BTreeMap::new();
            loop {
                tokio::select! {
                    request = incoming.message() => {
                        let Ok(Some(request)) = request else { return };
                        let record = request.encode_length_delimited_to_vec();
                        let _ = seen.lock().unwrap().write_all(&record);
                        let first = !subscribed.contains_key(&request.type_url);
                        let entry = subscribed.entry(request.type_url.clone()).or_default();
                        if first {
                            entry.wildcard = request.resource_names_subscribe.is_empty()
                                || request.resource_names_subscribe.iter().any(|n| n == "*");
                            entry.held = request
                                .initial_resource_versions
                                .iter()
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect();
                        }
                        let mut changed = first;
                        for name in &request.resource_names_subscribe {
                            if name != "*" && !entry.names.contains(name) {
                                entry.names.push(name.clone());
                                changed = true;
                            }
                        }
                        for name in &request.resource_names_unsubscribe {
                            entry.names.retain(|n| n != name);
                            entry.held.remove(name);
                        }
                        // An answer to the pending response: an ACK makes it held, a NACK
                        // drops it (an answer to an older one changes nothing).
                        if !request.response_nonce.is_empty()
                            && let Some((sent, holds)) = entry.pending.take()
                        {
                            if sent != request.response_nonce {
                                entry.pending = Some((sent, holds));
                            } else if request.error_detail.is_none() {
                                entry.held = holds;
                            }
                        }
                        if changed {
                            entry.sent_world = None;
                        }
                    }
                    change = world.changed() => {
                        if change.is_err() { return }
                    }
                }
                let current = world.borrow_and_update().clone();
                for (type_url, subscription) in &mut subscribed {
                    let Some((version, resources)) = current.get(type_url) else {
                        continue;
                    };
                    if subscription.sent_world.as_ref() == Some(version)
                        || subscription.pending.is_some()
                    {
                        continue;
                    }
                    let wanted: BTreeMap<String, &Any> = resources
                        .iter()
                        .filter_map(|any| Some((resource_name(type_url, any)?, any)))
                        .filter(|(name, _)| {
                            subscription.wildcard || subscription.names.contains(name)
                        })
                        .collect();
                    let changed: Vec<envoy_types::pb::envoy::service::discovery::v3::Resource> =
                        wanted
                            .iter()
                            .filter(|(name, any)| {
                                subscription.held.get(*name) != Some(&resource_version(any))
                            })
                            .map(|(name, any)| {
                                envoy_types::pb::envoy::service::discovery::v3::Resource {
                                    name: name.clone(),
                                    version: resource_version(any),
                                    resource: Some((*any).clone()),
                                    ..Default::default()
                                }
                            })
                            .collect();
                    let removed: Vec<String> = subscription
                        .held
                        .keys()
                        .filter(|name| !wanted.contains_key(*name))
                        .cloned()
                        .collect();
                    subscription.sent_world = Some(version.clone());
                    if changed.is_empty() && removed.is_empty() {
                        continue;
                    }
                    let holds: BTreeMap<String, String> = wanted
                        .iter()
                        .map(|(name, any)| (name.clone(), resource_version(any)))
                        .collect();
                    let n = nonce.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let response = DeltaDiscoveryResponse {
                        system_version_info: version.clone(),
                        resources: changed,
                        type_url: type_url.clone(),
                        removed_resources: removed,
                        nonce: format!("d{n}"),
                        ..DeltaDiscoveryResponse::default()
                    };
                    subscription.pending = Some((response.nonce.clone(), holds));
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The state directory's world as it is now (a missing or torn file is no state for its type).
fn read_world(dir: &Path) -> World {
    let mut world = World::new();
    for (type_url, file) in STATE_FILES {
        let Ok(bytes) = std::fs::read(dir.join(file)) else {
            continue;
        };
        if let Ok(response) = DiscoveryResponse::decode(bytes.as_slice()) {
            world.insert(
                type_url.to_string(),
                (response.version_info, response.resources),
            );
        }
    }
    world
}

/// The state files' identities: a new file (written whole, then renamed in) changes its inode.
fn stamp(dir: &Path) -> Vec<Option<(u64, i64, i64)>> {
    STATE_FILES
        .iter()
        .map(|(_, file)| {
            std::fs::metadata(dir.join(file))
                .ok()
                .map(|m| (m.ino(), m.mtime(), m.mtime_nsec()))
        })
        .collect()
}

/// The `xds-server` process: serves ADS on `addr` from `dir` until `lifetime` has passed (a test
/// that forgets it leaves nothing running), printing `listening` once bound.
pub fn serve(addr: SocketAddr, dir: &Path, lifetime: Duration) -> std::io::Result<()> {
    let seen = std::fs::File::create(dir.join("seen.bin"))?;
    let seen_delta = std::fs::File::create(dir.join("seen-delta.bin"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (world_tx, world_rx) = watch::channel(read_world(dir));
        let dir = dir.to_path_buf();
        tokio::spawn(async move {
            let mut last = stamp(&dir);
            loop {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let now = stamp(&dir);
                if now != last {
                    last = now;
                    world_tx.send_replace(read_world(&dir));
                }
            }
        });
        let socket = tokio::net::TcpListener::bind(addr).await?;
        println!("listening");
        let server = Server {
            world: world_rx,
            seen: Arc::new(Mutex::new(seen)),
            seen_delta: Arc::new(Mutex::new(seen_delta)),
            nonce: Arc::default(),
        };
        // TCP_NODELAY, as grpc-go's and Envoy's servers set it: with Nagle, a response written
        // as two segments waited out the client's 40 ms delayed ACK (every first push took
        // ~40 ms here, while the control planes origdst meets answer at once).
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(socket),
            |accepted| {
                accepted.and_then(|stream| {
                    stream.set_nodelay(true)?;
                    Ok(stream)
                })
            },
        );
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(server))
            .serve_with_incoming_shutdown(incoming, tokio::time::sleep(lifetime))
            .await
            .map_err(std::io::Error::other)
    })
}

/// A control plane process, as the tests drive it.
pub struct ControlPlane {
    binary: String,
    ns_name: String,
    addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

/// How long a control plane process lives at most.
const LIFETIME: Duration = Duration::from_secs(600);

impl ControlPlane {
    /// Starts `binary` (the `xds-server` built beside the tests) serving ADS on `addr` inside
    /// `ns`, with an empty state of the world.
    pub fn start(binary: &str, ns: &Netns, addr: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("{}-xds", ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the control plane's state directory");
        let mut control = Self {
            binary: binary.to_string(),
            ns_name: ns.name().to_string(),
            addr,
            dir,
            child: None,
        };
        control.spawn(ns);
        control
    }

    fn spawn(&mut self, ns: &Netns) {
        assert_eq!(ns.name(), self.ns_name);
        let mut child = ns
            .command(&self.binary)
            .args([
                &self.addr.to_string(),
                self.dir.to_str().expect("a UTF-8 temp path"),
                &LIFETIME.as_secs().to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the control plane");
        let stdout = child.stdout.take().expect("its stdout");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("the control plane's first line");
        assert_eq!(line.trim(), "listening", "the control plane did not start");
        self.child = Some(child);
    }

    /// Serves `version` of `type_url`'s resources from now on (sent to every open stream): the
    /// state file is written whole and renamed into place, so the server never reads half.
    pub fn push(&self, type_url: &str, version: &str, resources: Vec<Any>) {
        let file = STATE_FILES
            .iter()
            .find(|(url, _)| *url == type_url)
            .map(|(_, file)| *file)
            .unwrap_or_else(|| panic!("no state file for {type_url}"));
        let response = DiscoveryResponse {
            version_info: version.to_string(),
            resources,
            type_url: type_url.to_string(),
            ..DiscoveryResponse::default()
        };
        let staged = self.dir.join(format!("{file}.new"));
        std::fs::write(&staged, response.encode_to_vec()).expect("stage the state");
        std::fs::rename(&staged, self.dir.join(file)).expect("put the state in place");
    }

    /// Every request received since this process started, in order.
    pub fn seen(&self) -> Vec<DiscoveryRequest> {
        let bytes = std::fs::read(self.dir.join("seen.bin")).unwrap_or_default();
        let mut buf = bytes.as_slice();
        let mut out = Vec::new();
        while !buf.is_empty() {
            match DiscoveryRequest::decode_length_delimited(&mut buf) {
                Ok(request) => out.push(request),
                Err(_) => break,
            }
        }
        out
    }

    /// Every delta request received since this process started, in order.
    pub fn seen_delta(&self) -> Vec<DeltaDiscoveryRequest> {
        let bytes = std::fs::read(self.dir.join("seen-delta.bin")).unwrap_or_default();
        let mut buf = bytes.as_slice();
        let mut out = Vec::new();
        while !buf.is_empty() {
            match DeltaDiscoveryRequest::decode_length_delimited(&mut buf) {
                Ok(request) => out.push(request),
                Err(_) => break,
            }
        }
        out
    }

    /// Kills the process (SIGKILL: its streams break, as a control plane that dies).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same state (a control plane that comes back).
    pub fn restart(&mut self, ns: &Netns) {
        self.kill();
        self.spawn(ns);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
