//! One ADS stream over gRPC (tonic, with `envoy-types`' protos): the session's requests go out,
//! each response comes in, is judged by the caller (its resources valid and applied, or refused
//! naming the resource and field) and answered as the session says. The stream runs until the
//! server closes it or it fails; the caller reconnects after the backoff.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;

use crate::session::{AdsSession, Disposition, Request, ResourceType, Response, Verdict};

/// gRPC's `INVALID_ARGUMENT`: a NACK's status code.
const INVALID_ARGUMENT: i32 = 3;

/// Requests queued towards the server at most (the session sends at most two per response).
const OUTBOX: usize = 16;

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server closed it.
    Closed,
    /// It could not be opened, or broke (the reason, for the log).
    Failed(String),
}

/// The request as the proto (the node on the first of a stream, as the session says).
pub fn to_proto(request: &Request, node: &Node) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: request.version_info.clone(),
        node: request.with_node.then(|| node.clone()),
        type_url: request.resource_type.type_url().to_string(),
        response_nonce: request.response_nonce.clone(),
        error_detail: request.error_detail.as_ref().map(|why| Status {
            code: INVALID_ARGUMENT,
            message: why.clone(),
            details: Vec::new(),
        }),
        ..DiscoveryRequest::default()
    }
}

/// Runs one stream to `endpoint` (`http://ip:port`): subscribes, judges every response with
/// `judge`, answers it. Returns when the stream ends; the session keeps what was accepted.
pub async fn run(
    endpoint: String,
    node: &Node,
    session: &mut AdsSession,
    judge: &mut (dyn FnMut(ResourceType, &DiscoveryResponse) -> Verdict + Send),
) -> StreamEnd {
    let end = stream(endpoint, node, session, judge).await;
    session.disconnected();
    end
}

async fn stream(
    endpoint: String,
    node: &Node,
    session: &mut AdsSession,
    judge: &mut (dyn FnMut(ResourceType, &DiscoveryResponse) -> Verdict + Send),
) -> StreamEnd {
    let mut client = match AggregatedDiscoveryServiceClient::connect(endpoint).await {
        Ok(client) => client,
        Err(err) => return StreamEnd::Failed(format!("connecting: {err}")),
    };
    let (outbox, requests) = tokio::sync::mpsc::channel(OUTBOX);
    for request in session.connected() {
        // The receiver is ours until the call below: room for the first requests is certain.
        let _ = outbox.try_send(to_proto(&request, node));
    }
    let call = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await;
    let mut responses = match call {
        Ok(response) => response.into_inner(),
        Err(status) => return StreamEnd::Failed(format!("opening the stream: {status}")),
    };
    loop {
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return StreamEnd::Closed,
            Err(status) => return StreamEnd::Failed(format!("the stream broke: {status}")),
        };
        let envelope = Response {
            type_url: response.type_url.clone(),
            version_info: response.version_info.clone(),
            nonce: response.nonce.clone(),
        };
        let Disposition::Judge(kind) = session.received(&envelope) else {
            continue;
        };
        let verdict = judge(kind, &response);
        for request in session.answer(&envelope, verdict) {
            if outbox.send(to_proto(&request, node)).await.is_err() {
                return StreamEnd::Failed("the request stream closed".into());
            }
        }
    }
}
