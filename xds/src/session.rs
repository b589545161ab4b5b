//! One ADS stream's protocol (state of the world, xDS v3), without I/O.
//!
//! ```text
//!   connected ─▶ [CDS request] ─▶ CDS response ─▶ ACK/NACK (+ first time: [LDS request])
//!                                 LDS response ─▶ ACK/NACK
//!   accepted clusters name EDS services ─▶ [EDS request for exactly those names]
//!   disconnected ─▶ (reconnect after backoff) ─▶ connected: CDS, EDS and LDS again, with the
//!                                                versions in force, the node sent again
//! ```
//!
//! The rules it keeps (Envoy's, from the xDS protocol document):
//! - clusters are asked for before listeners, and listeners only once the first cluster response
//!   was answered, ACKed or NACKed (a listener refers to clusters: it should not warm against
//!   nothing; and one refused cluster must not keep every listener away);
//! - every response is answered: an ACK carries the response's version and nonce; a NACK carries
//!   the version last accepted (empty if none), the nonce, and an error detail; the resources in
//!   force stay as they were;
//! - a response for a type not subscribed to, or whose nonce is not the latest, is stale and
//!   answered with nothing (the server sends the current state again);
//! - the node goes on the first request of a stream (on every one unless
//!   `set_node_on_first_message_only`);
//! - after a reconnect, each subscription is sent again with the version in force, so a server
//!   that still has that version need not resend it;
//! - endpoints (EDS) are not a wildcard type: their subscription names the services the accepted
//!   clusters ask for, and is sent again (with the version in force and the latest nonce) each
//!   time that set changes.

use std::collections::BTreeMap;

use crate::plan::Plan;

/// The resource types origdst subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`, by service name.
    Endpoint,
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
}

impl ResourceType {
    /// Its type URL on the wire.
    pub const fn type_url(self) -> &'static str {
        match self {
            Self::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Self::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Self::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
        }
    }

    /// The type a URL names, if it is one origdst subscribes to.
    pub fn from_type_url(url: &str) -> Option<Self> {
        [Self::Cluster, Self::Endpoint, Self::Listener]
            .into_iter()
            .find(|t| t.type_url() == url)
    }

    /// Its short name in logs and metrics (`cds`, `eds`, `lds`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Cluster => "cds",
            Self::Endpoint => "eds",
            Self::Listener => "lds",
        }
    }
}

/// A `DiscoveryRequest`, as values (the transport turns it into the proto).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What it asks for.
    pub resource_type: ResourceType,
    /// The version in force (empty: none yet).
    pub version_info: String,
    /// The resources asked for: empty for the wildcard types (clusters, listeners), the service
    /// names for endpoints.
    pub resource_names: Vec<String>,
    /// The nonce of the response it answers (empty for a subscription).
    pub response_nonce: String,
    /// Why the response was refused (a NACK); `None` for an ACK or a subscription.
    pub error_detail: Option<String>,
    /// Whether the node goes with it.
    pub with_node: bool,
}

/// A `DiscoveryResponse`'s envelope (its resources are judged by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The type URL it carries.
    pub type_url: String,
    /// Its version.
    pub version_info: String,
    /// Its nonce.
    pub nonce: String,
}

/// What the caller made of a response's resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and applied.
    Accepted,
    /// Refused; the message names the resource and the field.
    Rejected(String),
}

/// What the session makes of a response before the caller judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Judge its resources, then call [`AdsSession::answer`].
    Judge(ResourceType),
    /// Stale (an older nonce) or a type not subscribed to: ignore it, answer nothing.
    Ignore,
}

/// One subscription's state.
#[derive(Debug, Clone, Default)]
struct Subscription {
    /// Subscribed on the current stream.
    sent: bool,
    /// The version accepted last (kept across reconnects).
    accepted: String,
    /// The nonce of the latest response on the current stream.
    latest_nonce: String,
    /// The names subscribed to (endpoints only; empty is the wildcard).
    names: Vec<String>,
}

/// The ADS protocol for one proxy, across streams.
#[derive(Debug, Clone)]
pub struct AdsSession {
    plan: Plan,
    subscriptions: BTreeMap<ResourceType, Subscription>,
}

impl AdsSession {
    /// A session subscribing to clusters (`cds_config: { ads: {} }`) and/or listeners
    /// (`lds_config`).
    pub fn new(clusters: bool, listeners: bool, node_on_first_message_only: bool) -> Self {
        Self {
            plan: Plan::new(clusters, listeners, node_on_first_message_only),
            subscriptions: BTreeMap::new(),
        }
    }

    /// A stream opened: the subscriptions to send on it (clusters first; listeners at once only
    /// if there are no clusters to wait for, or clusters were settled on an earlier stream).
    pub fn connected(&mut self) -> Vec<Request> {
        for subscription in self.subscriptions.values_mut() {
            subscription.sent = false;
            subscription.latest_nonce.clear();
        }
        let kinds = self.plan.opened();
        kinds.into_iter().map(|kind| self.subscribe(kind)).collect()
    }

    /// The stream ended: nothing is sent until the next [`Self::connected`]; what was accepted
    /// stays in force.
    pub fn disconnected(&mut self) {
        for subscription in self.subscriptions.values_mut() {
            subscription.sent = false;
            subscription.latest_nonce.clear();
        }
        self.plan.closed();
    }

    /// A response arrived: judge it, or ignore it.
    pub fn received(&mut self, response: &Response) -> Disposition {
        let Some(kind) = ResourceType::from_type_url(&response.type_url) else {
            return Disposition::Ignore;
        };
        let Some(subscription) = self.subscriptions.get_mut(&kind).filter(|s| s.sent) else {
            return Disposition::Ignore;
        };
        // State of the world: each response replaces the last, whose answer no longer matters.
        subscription.latest_nonce.clone_from(&response.nonce);
        Disposition::Judge(kind)
    }

    /// The answer to a judged response: its ACK or NACK, and (the first time clusters are
    /// accepted) the listener subscription that waited for them.
    pub fn answer(&mut self, response: &Response, verdict: Verdict) -> Vec<Request> {
        let Some(kind) = ResourceType::from_type_url(&response.type_url) else {
            return Vec::new();
        };
        let with_node = self.plan.take_node();
        let Some(subscription) = self.subscriptions.get_mut(&kind) else {
            return Vec::new();
        };
        if subscription.latest_nonce != response.nonce {
            // A newer response of the type came meanwhile; it gets the answer.
            return Vec::new();
        }
        let mut out = Vec::new();
        match verdict {
            Verdict::Accepted => {
                subscription.accepted.clone_from(&response.version_info);
                out.push(Request {
                    resource_type: kind,
                    version_info: response.version_info.clone(),
                    resource_names: subscription.names.clone(),
                    response_nonce: response.nonce.clone(),
                    error_detail: None,
                    with_node,
                });
            }
            Verdict::Rejected(why) => out.push(Request {
                resource_type: kind,
                version_info: subscription.accepted.clone(),
                resource_names: subscription.names.clone(),
                response_nonce: response.nonce.clone(),
                error_detail: Some(why),
                with_node,
            }),
        }
        if self.plan.answered(kind) {
            out.push(self.subscribe(ResourceType::Listener));
        }
        out
    }

    /// The version in force for a type (empty: none accepted yet).
    pub fn version(&self, kind: ResourceType) -> &str {
        self.subscriptions
            .get(&kind)
            .map_or("", |s| s.accepted.as_str())
    }

    /// The EDS services the clusters now in force ask for: the endpoint subscription to send if
    /// that set changed while a stream is up (with the version in force and the latest nonce,
    /// as the protocol wants a changed subscription sent). An emptied set is sent as an empty
    /// list — for a type that is not a wildcard one, an unsubscription from everything — if
    /// endpoints were asked for on this stream; a new stream asks for none.
    pub fn want_endpoints(&mut self, names: Vec<String>) -> Option<Request> {
        let names = self.plan.endpoints(names)?;
        let subscribed = self
            .subscriptions
            .get(&ResourceType::Endpoint)
            .filter(|s| s.sent)
            .map(|s| s.latest_nonce.clone());
        if !self.plan.streaming || (names.is_empty() && subscribed.is_none()) {
            return None;
        }
        let mut request = self.subscribe(ResourceType::Endpoint);
        request.response_nonce = subscribed.unwrap_or_default();
        Some(request)
    }

    fn subscribe(&mut self, kind: ResourceType) -> Request {
        let with_node = self.plan.take_node();
        let names = self.plan.names(kind);
        let subscription = self.subscriptions.entry(kind).or_default();
        subscription.sent = true;
        subscription.names.clone_from(&names);
        Request {
            resource_type: kind,
            version_info: subscription.accepted.clone(),
            resource_names: names,
            response_nonce: String::new(),
            error_detail: None,
            with_node,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(kind: ResourceType, version: &str, nonce: &str) -> Response {
        Response {
            type_url: kind.type_url().to_string(),
            version_info: version.to_string(),
            nonce: nonce.to_string(),
        }
    }

    /// Feeds a response and its verdict; the requests sent in answer.
    fn feed(session: &mut AdsSession, response: &Response, verdict: Verdict) -> Vec<Request> {
        match session.received(response) {
            Disposition::Judge(_) => session.answer(response, verdict),
            Disposition::Ignore => Vec::new(),
        }
    }

    use ResourceType::{Cluster, Listener};

    #[test]
    fn clusters_come_first_and_listeners_follow_the_first_answered_clusters() {
        let mut session = AdsSession::new(true, true, true);
        let first = session.connected();
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(first[0].resource_type, Cluster);
        assert!(first[0].with_node, "the node opens the stream");
        assert_eq!(first[0].version_info, "");
        // A refused first answer: NACK with no version — and listeners are asked for all the
        // same (as Envoy goes on to LDS when its first CDS update fails).
        let cds1 = response(Cluster, "v1", "n1");
        let nack = feed(
            &mut session,
            &cds1,
            Verdict::Rejected("cluster \"a\": bad".into()),
        );
        assert_eq!(
            nack[0],
            Request {
                resource_type: Cluster,
                version_info: String::new(),
                resource_names: Vec::new(),
                response_nonce: "n1".into(),
                error_detail: Some("cluster \"a\": bad".into()),
                with_node: false,
            }
        );
        assert_eq!(nack.len(), 2, "{nack:?}");
        assert_eq!(nack[1].resource_type, Listener);
        assert_eq!(nack[1].response_nonce, "");
        // A good one: ACK alone (listeners were asked for).
        let cds2 = response(Cluster, "v2", "n2");
        let answer = feed(&mut session, &cds2, Verdict::Accepted);
        assert_eq!(answer.len(), 1, "{answer:?}");
        assert_eq!(
            (
                answer[0].resource_type,
                answer[0].version_info.as_str(),
                answer[0].response_nonce.as_str()
            ),
            (Cluster, "v2", "n2")
        );
        assert_eq!(answer[0].error_detail, None);
        // Listeners: NACK keeps the version in force (none), then ACK.
        let lds1 = response(Listener, "l1", "n3");
        let nack = feed(&mut session, &lds1, Verdict::Rejected("listener".into()));
        assert_eq!(nack[0].version_info, "");
        let lds2 = response(Listener, "l2", "n4");
        let ack = feed(&mut session, &lds2, Verdict::Accepted);
        assert_eq!(
            (
                ack[0].resource_type,
                ack[0].version_info.as_str(),
                ack[0].response_nonce.as_str()
            ),
            (Listener, "l2", "n4")
        );
        // A later bad cluster update is NACKed with the version still in force.
        let cds3 = response(Cluster, "v3", "n5");
        let nack = feed(&mut session, &cds3, Verdict::Rejected("x".into()));
        assert_eq!(nack.len(), 1, "no second listener subscription");
        assert_eq!(nack[0].version_info, "v2");
        assert_eq!(session.version(Cluster), "v2");
        assert_eq!(session.version(Listener), "l2");
    }

    #[test]
    fn stale_and_unsubscribed_responses_get_no_answer() {
        let mut session = AdsSession::new(true, true, false);
        session.connected();
        // Listeners were not asked for yet.
        let early = response(Listener, "l1", "n1");
        assert_eq!(session.received(&early), Disposition::Ignore);
        // Not a type origdst knows, and one it knows but did not subscribe to.
        let rds = Response {
            type_url: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration".into(),
            version_info: "r1".into(),
            nonce: "n2".into(),
        };
        assert_eq!(session.received(&rds), Disposition::Ignore);
        let eds = Response {
            type_url: ResourceType::Endpoint.type_url().into(),
            version_info: "e1".into(),
            nonce: "n2".into(),
        };
        assert_eq!(session.received(&eds), Disposition::Ignore);
        // Two cluster responses before the first is judged: only the newest is answered.
        let older = response(Cluster, "v1", "n3");
        let newer = response(Cluster, "v2", "n4");
        assert_eq!(session.received(&older), Disposition::Judge(Cluster));
        assert_eq!(session.received(&newer), Disposition::Judge(Cluster));
        assert!(session.answer(&older, Verdict::Accepted).is_empty());
        let answer = session.answer(&newer, Verdict::Accepted);
        assert_eq!(answer[0].version_info, "v2");
        assert_eq!(answer[0].response_nonce, "n4");
        // Every request carries the node unless told otherwise.
        assert!(answer.iter().all(|r| r.with_node));
    }

    #[test]
    fn a_reconnect_resubscribes_with_the_versions_in_force_and_the_node() {
        let mut session = AdsSession::new(true, true, true);
        session.connected();
        feed(
            &mut session,
            &response(Cluster, "v7", "a"),
            Verdict::Accepted,
        );
        feed(
            &mut session,
            &response(Listener, "l3", "b"),
            Verdict::Accepted,
        );
        session.disconnected();
        // A response from the dead stream is stale.
        assert_eq!(
            session.received(&response(Cluster, "v8", "c")),
            Disposition::Ignore
        );
        let again = session.connected();
        assert_eq!(again.len(), 2, "clusters were settled: listeners at once");
        assert_eq!(
            (
                again[0].resource_type,
                again[0].version_info.as_str(),
                again[0].with_node
            ),
            (Cluster, "v7", true)
        );
        assert_eq!(
            (
                again[1].resource_type,
                again[1].version_info.as_str(),
                again[1].with_node
            ),
            (Listener, "l3", false)
        );
        assert!(again.iter().all(|r| r.response_nonce.is_empty()));
    }

    #[test]
    fn listeners_alone_are_asked_for_at_once() {
        let mut session = AdsSession::new(false, true, false);
        let first = session.connected();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].resource_type, Listener);
        assert_eq!(
            ResourceType::from_type_url(Cluster.type_url()),
            Some(Cluster)
        );
        assert_eq!(Listener.name(), "lds");
    }

    #[test]
    fn endpoints_are_asked_for_by_name_as_the_accepted_clusters_change() {
        use ResourceType::Endpoint;
        let mut session = AdsSession::new(true, true, true);
        // No stream yet: the names are kept for the next one, nothing is sent.
        assert_eq!(session.want_endpoints(vec!["a".into()]), None);
        assert_eq!(session.want_endpoints(Vec::new()), None);
        session.connected();
        feed(
            &mut session,
            &response(Cluster, "c1", "n1"),
            Verdict::Accepted,
        );
        // The accepted clusters name two EDS services (in any order, twice): one request, sorted.
        let eds = session
            .want_endpoints(vec!["b".into(), "a".into(), "b".into()])
            .expect("an EDS subscription");
        assert_eq!(
            (
                eds.resource_type,
                eds.resource_names.clone(),
                eds.response_nonce.as_str()
            ),
            (Endpoint, vec!["a".to_string(), "b".to_string()], "")
        );
        assert_eq!(session.want_endpoints(vec!["a".into(), "b".into()]), None);
        // An EDS answer carries the names; a NACK keeps the version in force.
        let ack = feed(
            &mut session,
            &response(Endpoint, "e1", "n2"),
            Verdict::Accepted,
        );
        assert_eq!(
            ack[0].resource_names,
            vec!["a".to_string(), "b".to_string()]
        );
        assert_eq!(ack[0].version_info, "e1");
        let nack = feed(
            &mut session,
            &response(Endpoint, "e2", "n3"),
            Verdict::Rejected("no".into()),
        );
        assert_eq!(
            (nack[0].version_info.as_str(), nack[0].resource_names.len()),
            ("e1", 2)
        );
        // A changed set is sent with the version in force and the latest nonce.
        let changed = session.want_endpoints(vec!["c".into()]).expect("resent");
        assert_eq!(
            (
                changed.resource_names.clone(),
                changed.version_info.as_str(),
                changed.response_nonce.as_str()
            ),
            (vec!["c".to_string()], "e1", "n3")
        );
        // Emptied: an empty list, the unsubscription from everything of a non-wildcard type;
        // then asked for again.
        let emptied = session.want_endpoints(Vec::new()).expect("unsubscribed");
        assert_eq!(
            (emptied.resource_type, emptied.resource_names.len()),
            (Endpoint, 0)
        );
        session
            .want_endpoints(vec!["c".into()])
            .expect("subscribed again");
        // Between streams nothing is sent; the names wait for the next stream.
        session.disconnected();
        assert_eq!(session.want_endpoints(vec!["c".into(), "d".into()]), None);
        assert_eq!(session.want_endpoints(vec!["c".into()]), None);
        // A reconnect: clusters, endpoints by name, listeners, in Envoy's order.
        let again = session.connected();
        let kinds: Vec<_> = again.iter().map(|r| r.resource_type).collect();
        assert_eq!(kinds, vec![Cluster, Endpoint, Listener]);
        assert_eq!(again[1].resource_names, vec!["c".to_string()]);
        assert_eq!(again[1].version_info, "e1");
        assert_eq!(Endpoint.name(), "eds");
        assert_eq!(
            ResourceType::from_type_url(Endpoint.type_url()),
            Some(Endpoint)
        );
    }
}
