//! One ADS stream over gRPC (tonic, with `envoy-types`' protos): the session's requests go out,
//! each response comes in, is judged by the caller (its resources valid and applied, or refused
//! naming the resource and field) and answered as the session says. The stream runs until the
//! server closes it or it fails; the caller reconnects after the backoff.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;

pub use crate::dial::ControlPlane;

use crate::delta::{DeltaRequest, DeltaSession};
use crate::session::{AdsSession, Disposition, Request, ResourceType, Response, Verdict};

/// gRPC's `INVALID_ARGUMENT`: a NACK's status code.
const INVALID_ARGUMENT: i32 = 3;

/// The largest response origdst takes from the control plane (tonic's default is 4 MiB; a
/// mesh's listeners or endpoints in one state-of-the-world response can pass that, and Envoy
/// sets no limit). What is taken is bounded again as a document
/// (`origdst_core::config::limits::PUSHED_CONFIG_BYTES_MAX`).
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Requests queued towards the server at most (the session sends at most three per response).
const OUTBOX: usize = 16;

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server closed it.
    Closed,
    /// It could not be opened, or broke (the reason, for the log).
    Failed(String),
}

/// What the stream asks of its caller: a verdict on each response, and the EDS services the
/// clusters in force ask for (asked after each verdict; a change is subscribed to at once).
pub trait Judge: Send {
    /// The resources' fate: valid and put in force, or refused naming resource and field.
    fn judge(&mut self, kind: ResourceType, response: &DiscoveryResponse) -> Verdict;

    /// The EDS service names the clusters in force ask for.
    fn endpoint_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// A delta response's fate: its changes and removals applied to what is held, valid and put
    /// in force, or refused (nothing of it held).
    fn judge_delta(&mut self, kind: ResourceType, response: &DeltaDiscoveryResponse) -> Verdict {
        let _ = (kind, response);
        Verdict::Rejected("this client takes state-of-the-world responses only".into())
    }
}

impl<F: FnMut(ResourceType, &DiscoveryResponse) -> Verdict + Send> Judge for F {
    fn judge(&mut self, kind: ResourceType, response: &DiscoveryResponse) -> Verdict {
        self(kind, response)
    }
}

/// The request as the proto (the node on the first of a stream, as the session says).
pub fn to_proto(request: &Request, node: &Node) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: request.version_info.clone(),
        node: request.with_node.then(|| node.clone()),
        type_url: request.resource_type.type_url().to_string(),
        resource_names: request.resource_names.clone(),
        response_nonce: request.response_nonce.clone(),
        error_detail: request.error_detail.as_ref().map(|why| Status {
            code: INVALID_ARGUMENT,
            message: why.clone(),
            details: Vec::new(),
        }),
        ..DiscoveryRequest::default()
    }
}

/// A delta request as the proto.
pub fn to_delta_proto(request: &DeltaRequest, node: &Node) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: request.with_node.then(|| node.clone()),
        type_url: request.resource_type.type_url().to_string(),
        resource_names_subscribe: request.subscribe.clone(),
        resource_names_unsubscribe: request.unsubscribe.clone(),
        initial_resource_versions: request
            .initial_versions
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        response_nonce: request.response_nonce.clone(),
        error_detail: request.error_detail.as_ref().map(|why| Status {
            code: INVALID_ARGUMENT,
            message: why.clone(),
            details: Vec::new(),
        }),
        ..DeltaDiscoveryRequest::default()
    }
}

/// Runs one state-of-the-world stream to `endpoint`: subscribes, judges every response with
/// `judge`, answers it. Returns when the stream ends; the session keeps what was accepted.
pub async fn run(
    endpoint: &ControlPlane,
    node: &Node,
    session: &mut AdsSession,
    judge: &mut dyn Judge,
) -> StreamEnd {
    drive(endpoint, node, session, judge).await
}

/// Runs one delta stream to `endpoint`, as [`run`] does.
pub async fn run_delta(
    endpoint: &ControlPlane,
    node: &Node,
    session: &mut DeltaSession,
    judge: &mut dyn Judge,
) -> StreamEnd {
    drive(endpoint, node, session, judge).await
}

/// What differs between the two protocols on the wire: the call that opens the stream, the
/// requests that open it, and the answer to a response (judged by `judge`). Everything else —
/// connecting, the request queue, reading responses, how a stream ends — is [`drive`]'s.
trait Wire {
    type Request: Send + 'static;
    type Response;

    /// The stream's opening requests (the EDS names the clusters in force want, asked first).
    fn opening(&mut self, judge: &mut dyn Judge, node: &Node) -> Vec<Self::Request>;

    /// The requests answering `response` (none for one to ignore).
    fn respond(
        &mut self,
        response: &Self::Response,
        judge: &mut dyn Judge,
        node: &Node,
    ) -> Vec<Self::Request>;

    /// The stream ended.
    fn closed(&mut self);

    /// Opens the stream on `client`, its requests read from `requests`.
    async fn open(
        client: &mut AdsClient,
        requests: tokio_stream::wrappers::ReceiverStream<Self::Request>,
    ) -> Result<tonic::Streaming<Self::Response>, tonic::Status>;
}

type AdsClient = AggregatedDiscoveryServiceClient<tonic::transport::Channel>;

impl Wire for AdsSession {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn opening(&mut self, judge: &mut dyn Judge, node: &Node) -> Vec<DiscoveryRequest> {
        // The EDS names are known before the first stream only after a restart of this client;
        // a reconnect asks for the ones the clusters in force name.
        let _ = self.want_endpoints(judge.endpoint_names());
        self.connected().iter().map(|r| to_proto(r, node)).collect()
    }

    fn respond(
        &mut self,
        response: &DiscoveryResponse,
        judge: &mut dyn Judge,
        node: &Node,
    ) -> Vec<DiscoveryRequest> {
        let envelope = Response {
            type_url: response.type_url.clone(),
            version_info: response.version_info.clone(),
            nonce: response.nonce.clone(),
        };
        let Disposition::Judge(kind) = self.received(&envelope) else {
            return Vec::new();
        };
        let verdict = judge.judge(kind, response);
        let mut answers = self.answer(&envelope, verdict);
        answers.extend(self.want_endpoints(judge.endpoint_names()));
        answers.iter().map(|r| to_proto(r, node)).collect()
    }

    fn closed(&mut self) {
        self.disconnected();
    }

    async fn open(
        client: &mut AdsClient,
        requests: tokio_stream::wrappers::ReceiverStream<DiscoveryRequest>,
    ) -> Result<tonic::Streaming<DiscoveryResponse>, tonic::Status> {
        Ok(client
            .stream_aggregated_resources(requests)
            .await?
            .into_inner())
    }
}

impl Wire for DeltaSession {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn opening(&mut self, judge: &mut dyn Judge, node: &Node) -> Vec<DeltaDiscoveryRequest> {
        let _ = self.want_endpoints(judge.endpoint_names());
        self.connected()
            .iter()
            .map(|r| to_delta_proto(r, node))
            .collect()
    }

    fn respond(
        &mut self,
        response: &DeltaDiscoveryResponse,
        judge: &mut dyn Judge,
        node: &Node,
    ) -> Vec<DeltaDiscoveryRequest> {
        let Some(kind) = self.received(&response.type_url) else {
            return Vec::new();
        };
        let verdict = judge.judge_delta(kind, response);
        // Held now: what came with a body (a body-less one refreshes a TTL only).
        let changed: Vec<(String, String)> = response
            .resources
            .iter()
            .filter(|r| r.resource.is_some())
            .map(|r| (crate::resources::name_of(r).to_string(), r.version.clone()))
            .collect();
        let removed = crate::resources::removed_names(response);
        let mut answers = self.answer(kind, &response.nonce, verdict, &changed, &removed);
        answers.extend(self.want_endpoints(judge.endpoint_names()));
        answers.iter().map(|r| to_delta_proto(r, node)).collect()
    }

    fn closed(&mut self) {
        self.disconnected();
    }

    async fn open(
        client: &mut AdsClient,
        requests: tokio_stream::wrappers::ReceiverStream<DeltaDiscoveryRequest>,
    ) -> Result<tonic::Streaming<DeltaDiscoveryResponse>, tonic::Status> {
        Ok(client
            .delta_aggregated_resources(requests)
            .await?
            .into_inner())
    }
}

/// One stream of either protocol, until the server closes it or it fails; the session is told
/// it ended either way.
async fn drive<W: Wire>(
    endpoint: &ControlPlane,
    node: &Node,
    session: &mut W,
    judge: &mut dyn Judge,
) -> StreamEnd {
    let end = drive_open(endpoint, node, session, judge).await;
    session.closed();
    end
}

async fn drive_open<W: Wire>(
    endpoint: &ControlPlane,
    node: &Node,
    session: &mut W,
    judge: &mut dyn Judge,
) -> StreamEnd {
    let mut client = match connect(endpoint).await {
        Ok(client) => client,
        Err(end) => return end,
    };
    let (outbox, requests) = tokio::sync::mpsc::channel(OUTBOX);
    for request in session.opening(judge, node) {
        // The receiver is ours until the call below: room for the first requests is certain.
        let _ = outbox.try_send(request);
    }
    let mut responses = match W::open(
        &mut client,
        tokio_stream::wrappers::ReceiverStream::new(requests),
    )
    .await
    {
        Ok(responses) => responses,
        Err(status) => return StreamEnd::Failed(format!("opening the stream: {status}")),
    };
    loop {
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return StreamEnd::Closed,
            Err(status) => return StreamEnd::Failed(format!("the stream broke: {status}")),
        };
        for request in session.respond(&response, judge, node) {
            if outbox.send(request).await.is_err() {
                return StreamEnd::Failed("the request stream closed".into());
            }
        }
    }
}

/// The ADS client on a new HTTP/2 connection to `upstream`, taking responses up to
/// [`MESSAGE_BYTES_MAX`].
///
/// The connection is made by [`ControlPlane::dial`] (each address given up after the xDS
/// cluster's `connect_timeout`: a control plane that black-holes SYNs must not hold the client
/// for the kernel's minutes of retries), and HTTP/2 pings find a control plane that vanished
/// without a reset (a partition): the stream fails and the client reconnects, instead of waiting
/// on a dead connection.
async fn connect(upstream: &ControlPlane) -> Result<AdsClient, StreamEnd> {
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{}", upstream.authority()))
            .map_err(|err| StreamEnd::Failed(format!("the control plane's address: {err}")))?
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
    let plane = upstream.clone();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let plane = plane.clone();
        async move { plane.dial().await }
    });
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|err| StreamEnd::Failed(format!("connecting: {}", chain(&err))))?;
    Ok(AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MESSAGE_BYTES_MAX))
}

/// An error with its causes (tonic's transport error says only "transport error" itself).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How often an idle stream's connection is pinged.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is given up.
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
