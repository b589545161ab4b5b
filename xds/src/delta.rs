//! One incremental (delta) ADS stream's protocol, without I/O: `api_type: DELTA_GRPC`.
//!
//! ```text
//!   connected ─▶ [CDS: wildcard, initial_resource_versions] ─▶ response (changed, removed)
//!                ─▶ ACK/NACK (+ first time: [LDS: wildcard])
//!   accepted clusters name EDS services ─▶ [EDS: subscribe / unsubscribe those names]
//!   disconnected ─▶ (reconnect after backoff) ─▶ connected: CDS, EDS and LDS again, each with
//!                                                the versions of the resources held
//! ```
//!
//! What differs from the state of the world ([`crate::session`]): a response carries only the
//! resources that changed (each with its own version) and the names of those removed; every
//! response is answered — an ACK is its nonce, a NACK its nonce and an error detail, and the
//! resources held stay as they were; a reconnect tells the server what is held
//! (`initial_resource_versions`) so it sends only what differs; the EDS subscription changes by
//! naming what is added and what is dropped. Clusters and listeners are wildcard subscriptions
//! (the first request names nothing), endpoints are asked for by name. The node goes on a
//! stream's first request (on every one unless `set_node_on_first_message_only`).

use std::collections::BTreeMap;

use crate::plan::Plan;
use crate::session::{ResourceType, Verdict};

/// A `DeltaDiscoveryRequest`, as values (the transport turns it into the proto).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaRequest {
    /// What it is about.
    pub resource_type: ResourceType,
    /// Names to subscribe to (empty on a wildcard type's first request: everything).
    pub subscribe: Vec<String>,
    /// Names to unsubscribe from.
    pub unsubscribe: Vec<String>,
    /// On a stream's first request of the type: the resources held and their versions.
    pub initial_versions: BTreeMap<String, String>,
    /// The nonce of the response it answers (empty: not an answer).
    pub response_nonce: String,
    /// Why the response was refused (a NACK).
    pub error_detail: Option<String>,
    /// Whether the node goes with it.
    pub with_node: bool,
}

/// One type's state.
#[derive(Debug, Clone, Default)]
struct Subscription {
    /// Subscribed on the current stream.
    sent: bool,
    /// The resources held (accepted) and their versions, across streams.
    versions: BTreeMap<String, String>,
    /// The names subscribed to on the current stream (endpoints only).
    names: Vec<String>,
}

/// The delta ADS protocol for one proxy, across streams.
#[derive(Debug, Clone)]
pub struct DeltaSession {
    plan: Plan,
    subscriptions: BTreeMap<ResourceType, Subscription>,
}

impl DeltaSession {
    /// A session subscribing to clusters and/or listeners (and the endpoints clusters name).
    pub fn new(clusters: bool, listeners: bool, node_on_first_message_only: bool) -> Self {
        Self {
            plan: Plan::new(clusters, listeners, node_on_first_message_only),
            subscriptions: BTreeMap::new(),
        }
    }

    /// A stream opened: the subscriptions to send on it, in Envoy's order.
    pub fn connected(&mut self) -> Vec<DeltaRequest> {
        for subscription in self.subscriptions.values_mut() {
            subscription.sent = false;
            subscription.names.clear();
        }
        let kinds = self.plan.opened();
        kinds.into_iter().map(|kind| self.subscribe(kind)).collect()
    }

    /// The stream ended: what was accepted stays held.
    pub fn disconnected(&mut self) {
        self.plan.closed();
        for subscription in self.subscriptions.values_mut() {
            subscription.sent = false;
            subscription.names.clear();
        }
    }

    /// The type a response is for, if it was subscribed to on this stream (else it is ignored).
    pub fn received(&self, type_url: &str) -> Option<ResourceType> {
        let kind = ResourceType::from_type_url(type_url)?;
        self.subscriptions
            .get(&kind)
            .filter(|s| s.sent)
            .map(|_| kind)
    }

    /// The answer to a judged response: its ACK (the versions of what it `changed` and what it
    /// `removed` are now held) or NACK (nothing of it is held), and, the first time clusters are
    /// accepted, the listener subscription that waited for them.
    pub fn answer(
        &mut self,
        kind: ResourceType,
        nonce: &str,
        verdict: Verdict,
        changed: &[(String, String)],
        removed: &[String],
    ) -> Vec<DeltaRequest> {
        let with_node = self.plan.take_node();
        let subscription = self.subscriptions.entry(kind).or_default();
        let error_detail = match verdict {
            Verdict::Accepted => {
                for (name, version) in changed {
                    // Endpoints not asked for are not held (the client drops them).
                    if kind == ResourceType::Endpoint && !subscription.names.contains(name) {
                        continue;
                    }
                    subscription.versions.insert(name.clone(), version.clone());
                }
                for name in removed {
                    subscription.versions.remove(name);
                }
                None
            }
            Verdict::Rejected(why) => Some(why),
        };
        let mut out = vec![DeltaRequest {
            resource_type: kind,
            subscribe: Vec::new(),
            unsubscribe: Vec::new(),
            initial_versions: BTreeMap::new(),
            response_nonce: nonce.to_string(),
            error_detail,
            with_node,
        }];
        if self.plan.answered(kind) {
            out.push(self.subscribe(ResourceType::Listener));
        }
        out
    }

    /// The EDS services the clusters in force ask for: the request that changes the endpoint
    /// subscription to them, if it changed while a stream is up.
    pub fn want_endpoints(&mut self, names: Vec<String>) -> Option<DeltaRequest> {
        let names = self.plan.endpoints(names)?;
        if !self.plan.streaming {
            return None;
        }
        let subscribed = self
            .subscriptions
            .get(&ResourceType::Endpoint)
            .filter(|s| s.sent)
            .map(|s| s.names.clone());
        let Some(before) = subscribed else {
            return (!names.is_empty()).then(|| self.subscribe(ResourceType::Endpoint));
        };
        let with_node = self.plan.take_node();
        let subscription = self
            .subscriptions
            .entry(ResourceType::Endpoint)
            .or_default();
        let subscribe: Vec<String> = names
            .iter()
            .filter(|n| !before.contains(n))
            .cloned()
            .collect();
        let unsubscribe: Vec<String> = before
            .iter()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        for name in &unsubscribe {
            subscription.versions.remove(name);
        }
        subscription.names = names;
        Some(DeltaRequest {
            resource_type: ResourceType::Endpoint,
            subscribe,
            unsubscribe,
            initial_versions: BTreeMap::new(),
            response_nonce: String::new(),
            error_detail: None,
            with_node,
        })
    }

    /// The resources held of a type, with their versions.
    pub fn versions(&self, kind: ResourceType) -> Option<&BTreeMap<String, String>> {
        self.subscriptions.get(&kind).map(|s| &s.versions)
    }

    fn subscribe(&mut self, kind: ResourceType) -> DeltaRequest {
        let with_node = self.plan.take_node();
        let names = self.plan.names(kind);
        let subscription = self.subscriptions.entry(kind).or_default();
        subscription.sent = true;
        subscription.names.clone_from(&names);
        if kind == ResourceType::Endpoint {
            // Endpoints no longer asked for are no longer held.
            subscription.versions.retain(|name, _| names.contains(name));
        }
        DeltaRequest {
            resource_type: kind,
            subscribe: names,
            unsubscribe: Vec::new(),
            initial_versions: subscription.versions.clone(),
            response_nonce: String::new(),
            error_detail: None,
            with_node,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResourceType::{Cluster, Endpoint, Listener};

    fn held(session: &DeltaSession, kind: ResourceType) -> Vec<(String, String)> {
        session
            .versions(kind)
            .map(|v| v.iter().map(|(a, b)| (a.clone(), b.clone())).collect())
            .unwrap_or_default()
    }

    fn pair(name: &str, version: &str) -> (String, String) {
        (name.to_string(), version.to_string())
    }

    #[test]
    fn changes_and_removals_are_held_only_when_accepted_and_told_on_reconnect() {
        let mut session = DeltaSession::new(true, true, true);
        let first = session.connected();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].resource_type, Cluster);
        assert!(first[0].subscribe.is_empty(), "a wildcard subscription");
        assert!(first[0].with_node);
        // Two clusters arrive: ACK, then listeners are asked for.
        let answer = session.answer(
            Cluster,
            "n1",
            Verdict::Accepted,
            &[pair("a", "1"), pair("b", "1")],
            &[],
        );
        assert_eq!(answer.len(), 2);
        assert_eq!(
            (
                answer[0].response_nonce.as_str(),
                answer[0].error_detail.clone()
            ),
            ("n1", None)
        );
        assert!(
            !answer[0].with_node,
            "the node went on the first request only"
        );
        assert_eq!(answer[1].resource_type, Listener);
        // A refused change: NACKed, nothing of it held.
        let nack = session.answer(
            Cluster,
            "n2",
            Verdict::Rejected("cluster \"a\": bad".into()),
            &[pair("a", "2")],
            &["b".into()],
        );
        assert_eq!(nack.len(), 1);
        assert_eq!(nack[0].error_detail.as_deref(), Some("cluster \"a\": bad"));
        assert_eq!(
            held(&session, Cluster),
            vec![pair("a", "1"), pair("b", "1")]
        );
        // An accepted one: a change and a removal.
        session.answer(
            Cluster,
            "n3",
            Verdict::Accepted,
            &[pair("a", "3")],
            &["b".into()],
        );
        assert_eq!(held(&session, Cluster), vec![pair("a", "3")]);
        session.answer(Listener, "n4", Verdict::Accepted, &[pair("l", "7")], &[]);
        // Endpoints by name: subscribe, then change the set by what is added and dropped.
        let eds = session
            .want_endpoints(vec!["x".into(), "y".into()])
            .expect("subscribed");
        assert_eq!(
            (eds.resource_type, eds.subscribe),
            (Endpoint, vec!["x".to_string(), "y".to_string()])
        );
        session.answer(
            Endpoint,
            "n5",
            Verdict::Accepted,
            &[pair("x", "e1"), pair("y", "e1")],
            &[],
        );
        let change = session
            .want_endpoints(vec!["y".into(), "z".into()])
            .expect("changed");
        assert_eq!(change.subscribe, vec!["z".to_string()]);
        assert_eq!(change.unsubscribe, vec!["x".to_string()]);
        assert_eq!(held(&session, Endpoint), vec![pair("y", "e1")]);
        assert_eq!(session.want_endpoints(vec!["z".into(), "y".into()]), None);
        // A reconnect: what is held is told, in Envoy's order, the node first.
        session.disconnected();
        assert_eq!(session.received(Cluster.type_url()), None, "not subscribed");
        let again = session.connected();
        let kinds: Vec<_> = again.iter().map(|r| r.resource_type).collect();
        assert_eq!(kinds, vec![Cluster, Endpoint, Listener]);
        assert_eq!(again[0].initial_versions, BTreeMap::from([pair("a", "3")]));
        assert_eq!(again[1].subscribe, vec!["y".to_string(), "z".to_string()]);
        assert_eq!(again[1].initial_versions, BTreeMap::from([pair("y", "e1")]));
        assert_eq!(again[2].initial_versions, BTreeMap::from([pair("l", "7")]));
        assert!(again[0].with_node && !again[1].with_node);
        assert_eq!(session.received(Listener.type_url()), Some(Listener));
        assert_eq!(
            session.received("type.googleapis.com/envoy.config.route.v3.RouteConfiguration"),
            None
        );
    }
}
