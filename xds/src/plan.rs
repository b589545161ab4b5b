//! What both ADS protocols (state of the world, [`crate::session`]; delta, [`crate::delta`])
//! decide alike: which types a stream subscribes to and in what order (Envoy's: clusters, their
//! endpoints, then listeners once clusters were first answered), which request carries the node,
//! and the EDS names the clusters in force ask for.

use crate::session::ResourceType;

/// The subscription plan of one proxy, across streams.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    wants_clusters: bool,
    wants_listeners: bool,
    node_on_first_message_only: bool,
    /// The node went out on the current stream.
    node_sent: bool,
    /// A stream is up.
    pub(crate) streaming: bool,
    /// Clusters were answered at least once (listeners may be asked for).
    clusters_settled: bool,
    /// The EDS services the accepted clusters ask for (sorted, no repeats).
    pub(crate) endpoint_names: Vec<String>,
}

impl Plan {
    pub(crate) fn new(clusters: bool, listeners: bool, node_on_first_message_only: bool) -> Self {
        Self {
            wants_clusters: clusters,
            wants_listeners: listeners,
            node_on_first_message_only,
            node_sent: false,
            streaming: false,
            clusters_settled: false,
            endpoint_names: Vec::new(),
        }
    }

    /// A stream opened: the types to subscribe to on it, in order (listeners at once only if
    /// there are no clusters to wait for, or clusters were settled on an earlier stream).
    pub(crate) fn opened(&mut self) -> Vec<ResourceType> {
        self.node_sent = false;
        self.streaming = true;
        let mut out = Vec::new();
        if self.wants_clusters {
            out.push(ResourceType::Cluster);
        }
        if !self.endpoint_names.is_empty() {
            out.push(ResourceType::Endpoint);
        }
        if self.wants_listeners && (!self.wants_clusters || self.clusters_settled) {
            out.push(ResourceType::Listener);
        }
        out
    }

    /// The stream ended.
    pub(crate) fn closed(&mut self) {
        self.node_sent = false;
        self.streaming = false;
    }

    /// A response of `kind` was answered (accepted or not): whether listeners are to be asked
    /// for now — after the first clusters, whatever became of them, as Envoy goes on to LDS
    /// when its first CDS update fails (a mesh's one unsupported cluster must not keep every
    /// listener away).
    pub(crate) fn answered(&mut self, kind: ResourceType) -> bool {
        if kind != ResourceType::Cluster || self.clusters_settled {
            return false;
        }
        self.clusters_settled = true;
        self.wants_listeners
    }

    /// The EDS names the clusters in force ask for (any order, repeats allowed): the sorted set
    /// if it changed, else `None`.
    pub(crate) fn endpoints(&mut self, mut names: Vec<String>) -> Option<Vec<String>> {
        names.sort_unstable();
        names.dedup();
        if names == self.endpoint_names {
            return None;
        }
        self.endpoint_names.clone_from(&names);
        Some(names)
    }

    /// The names a subscription of `kind` asks for (endpoints by name; the others: all).
    pub(crate) fn names(&self, kind: ResourceType) -> Vec<String> {
        if kind == ResourceType::Endpoint {
            self.endpoint_names.clone()
        } else {
            Vec::new()
        }
    }

    /// Whether the next request carries the node.
    pub(crate) fn take_node(&mut self) -> bool {
        let first = !self.node_sent;
        self.node_sent = true;
        first || !self.node_on_first_message_only
    }
}
