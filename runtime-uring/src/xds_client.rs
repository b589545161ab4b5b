//! The control-plane client's thread: with `dynamic_resources` in the bootstrap, one thread with
//! its own small runtime (never a shard) holds the ADS stream to the bootstrap's xDS cluster,
//! judges every push by translating it into the bootstrap's document and validating that as a
//! file is validated, puts what is valid in force through the same path a SIGHUP reload takes
//! (listeners added and removed live, open connections kept), and ACKs or NACKs. When the
//! control plane is gone, the last accepted config keeps serving; the thread reconnects after a
//! jittered backoff and resubscribes with the versions in force.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Value as ProtoValue;
use envoy_types::pb::google::protobuf::value::Kind;
use origdst_core::config::{ClusterKind, ControlPlaneTarget, DnsFamily, EndpointTarget};
use origdst_xds::backoff::Backoff;
use origdst_xds::compose::{self, Composed, Pushed};
use origdst_xds::delta::DeltaSession;
use origdst_xds::resources;
use origdst_xds::screen;
use origdst_xds::session::{AdsSession, ResourceType, Verdict};
use origdst_xds::stream::{self, Judge, StreamEnd};

use crate::observed::Observed;
use crate::shard::ShardControl;
use crate::supervisor::{ReloadContext, apply_config};

/// What `/metrics` shows of the control plane.
#[derive(Debug, Default)]
pub struct XdsGauges {
    /// 1 while an ADS stream is up.
    pub connected: AtomicU64,
    /// Pushes accepted, by type: clusters, listeners, endpoints ([`TYPES`]).
    pub accepted: [AtomicU64; 3],
    /// Pushes refused (NACKed), by type: wholly, or with some resources set aside.
    pub rejected: [AtomicU64; 3],
    /// Resources set aside (not taken) from pushes whose rest went into force, by type.
    pub set_aside: [AtomicU64; 3],
    /// Streams opened since start.
    pub streams: AtomicU64,
    /// The versions in force, by type.
    pub versions: std::sync::Mutex<[String; 3]>,
    /// The pushed resources in force and warming (`/config_dump`'s dynamic sections).
    pub pushed: std::sync::Mutex<InForce>,
    /// The first listener response (or cluster response, without LDS) was answered with no
    /// cluster waiting for its endpoints, or `initial_fetch_timeout` passed: `/ready` answers
    /// 200 from then on.
    pub initialized: std::sync::atomic::AtomicBool,
}

/// Envoy's default `initial_fetch_timeout`: how long start-up waits for the first push.
const INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// The types in the order of [`XdsGauges`]' arrays, by their short names.
pub const TYPES: [&str; 3] = ["cds", "lds", "eds"];

/// The pushed resources in force and warming, and when each type was last accepted.
#[derive(Debug, Default, Clone)]
pub struct InForce {
    /// Clusters (index 0) and listeners (1) in force, by name.
    pub names: [Vec<String>; 2],
    /// Clusters (0) and listeners (1) warming, each as the bootstrap's document would hold it.
    pub warming: [Vec<serde_yaml_ng::Value>; 2],
    /// When each type was last accepted.
    pub at: [Option<std::time::SystemTime>; 3],
}

fn index(kind: ResourceType) -> usize {
    match kind {
        ResourceType::Cluster => 0,
        ResourceType::Listener => 1,
        ResourceType::Endpoint => 2,
    }
}

/// A stream that stayed up this long resets the backoff.
const STREAM_HEALTHY: Duration = Duration::from_secs(30);

/// Starts the thread (the bootstrap's `dynamic_resources` were validated already).
pub(crate) fn start(
    observed: Arc<Observed>,
    controls: Vec<Arc<ShardControl>>,
    context: Arc<ReloadContext>,
    gauges: Arc<XdsGauges>,
) -> Result<(), String> {
    let running = observed.running();
    let config = &running.config;
    let dynamic = config.dynamic.clone().ok_or("no dynamic_resources")?;
    let xds_cluster = &config.clusters[dynamic.ads_cluster];
    // Validation took a STATIC xDS cluster with socket endpoints only, or a control plane's.
    let (targets, family) = match &xds_cluster.kind {
        ClusterKind::Static { endpoints } => (
            endpoints
                .iter()
                .filter_map(|e| match e.target {
                    EndpointTarget::Socket(addr) => Some(ControlPlaneTarget::Socket(addr)),
                    EndpointTarget::Internal { .. } => None,
                })
                .collect::<Vec<_>>(),
            DnsFamily::default(),
        ),
        ClusterKind::ControlPlane { targets, family } => (targets.clone(), *family),
        ClusterKind::OriginalDst(_) => (Vec::new(), DnsFamily::default()),
    };
    if targets.is_empty() {
        return Err(format!(
            "the xDS cluster {:?} has no endpoint to reach the control plane at",
            xds_cluster.name
        ));
    }
    let endpoint = stream::ControlPlane::new(targets, family, xds_cluster.connect_timeout);
    let node_info = config.node.clone().unwrap_or_default();
    let (region, zone, sub_zone) = node_info.locality.clone();
    let node = Node {
        id: node_info.id,
        cluster: node_info.cluster,
        metadata: node_info
            .metadata
            .as_ref()
            .and_then(|m| match to_proto(m, 0).kind {
                Some(Kind::StructValue(fields)) => Some(fields),
                _ => None,
            }),
        locality: (!(region.is_empty() && zone.is_empty() && sub_zone.is_empty())).then_some(
            envoy_types::pb::envoy::config::core::v3::Locality {
                region,
                zone,
                sub_zone,
            },
        ),
        user_agent_name: "origdst".into(),
        ..Node::default()
    };
    let bootstrap = running.yaml.clone();
    // Before any push, every cluster in force is the bootstrap's own.
    let statics: BTreeSet<String> = config.clusters.iter().map(|c| c.name.clone()).collect();
    let session = if dynamic.delta {
        Protocol::Delta(DeltaSession::new(
            dynamic.cds,
            dynamic.lds,
            dynamic.set_node_on_first_message_only,
        ))
    } else {
        Protocol::StateOfTheWorld(AdsSession::new(
            dynamic.cds,
            dynamic.lds,
            dynamic.set_node_on_first_message_only,
        ))
    };
    std::thread::Builder::new()
        .name("origdst-xds".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!("xDS: no runtime for the control-plane client: {err}");
                    return;
                }
            };
            // Ready without the first push once the initial fetch timeout passes (0: wait for
            // it however long it takes), as Envoy finishes initializing.
            let fetch_timeout = dynamic.initial_fetch_timeout.unwrap_or(INITIAL_FETCH_TIMEOUT);
            if !fetch_timeout.is_zero() {
                let gauges = Arc::clone(&gauges);
                runtime.spawn(async move {
                    tokio::time::sleep(fetch_timeout).await;
                    if !gauges.initialized.swap(true, Ordering::Relaxed) {
                        tracing::warn!(?fetch_timeout, "xDS: no listeners from the control plane within initial_fetch_timeout; ready with what the bootstrap has");
                    }
                });
            }
            let mut client = Client {
                observed,
                controls,
                context,
                gauges,
                bootstrap,
                statics,
                pushed: Pushed::default(),
                active: Vec::new(),
                active_clusters: Vec::new(),
                first_answered: false,
                lds: dynamic.lds,
            };
            runtime.block_on(client.run(endpoint, node, session));
        })
        .map_err(|err| format!("xDS thread: {err}"))?;
    Ok(())
}

struct Client {
    observed: Arc<Observed>,
    controls: Vec<Arc<ShardControl>>,
    context: Arc<ReloadContext>,
    gauges: Arc<XdsGauges>,
    /// The bootstrap as loaded: what pushed resources are added to.
    bootstrap: String,
    /// The bootstrap's own clusters (listeners may name them before any push).
    statics: BTreeSet<String>,
    /// The resources accepted, in force or warming.
    pushed: Pushed,
    /// The pushed listeners in force (bound).
    active: Vec<Listener>,
    /// The pushed clusters in force (EDS ones resolved): earlier versions serve while an EDS
    /// update waits for its endpoints.
    active_clusters: Vec<Cluster>,
    /// The first listener response (or, without LDS, cluster response) was answered, ACKed or
    /// NACKed: Envoy's listener (cluster) initialization is done either way.
    first_answered: bool,
    /// Listeners come from the control plane (else clusters alone initialize).
    lds: bool,
}

impl Client {
    async fn run(&mut self, control: stream::ControlPlane, node: Node, mut session: Protocol) {
        let endpoint = control.to_string();
        let seed = u64::from(std::process::id())
            ^ u64::from(
                std::time::UNIX_EPOCH
                    .elapsed()
                    .map_or(0, |d| d.subsec_nanos()),
            );
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30), seed);
        while !self.observed.draining.load(Ordering::Relaxed) {
            self.gauges.streams.fetch_add(1, Ordering::Relaxed);
            self.gauges.connected.store(1, Ordering::Relaxed);
            let opened = Instant::now();
            let end = match &mut session {
                Protocol::StateOfTheWorld(session) => {
                    stream::run(&control, &node, session, self).await
                }
                Protocol::Delta(session) => stream::run_delta(&control, &node, session, self).await,
            };
            self.gauges.connected.store(0, Ordering::Relaxed);
            if opened.elapsed() >= STREAM_HEALTHY {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            match end {
                StreamEnd::Closed => {
                    tracing::warn!(%endpoint, ?delay, "xDS: the control plane closed the stream; the config in force keeps serving");
                }
                StreamEnd::Failed(why) => {
                    tracing::warn!(%endpoint, ?delay, "xDS: {why}; the config in force keeps serving");
                }
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// A push: decoded, merged with what is held, translated, validated, applied; counted and
    /// logged under its `version`.
    fn verdict(
        &mut self,
        kind: ResourceType,
        version: &str,
        resources: usize,
        apply: impl FnOnce(&mut Self) -> Verdict,
    ) -> Verdict {
        let verdict = apply(self);
        let initializing = if self.lds {
            ResourceType::Listener
        } else {
            ResourceType::Cluster
        };
        self.first_answered |= kind == initializing;
        // Ready as Envoy is initialized: the first listeners answered (a refused push must not
        // hold readiness forever), and no cluster waiting for its endpoints.
        let clusters_warming = !self
            .gauges
            .pushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .warming[0]
            .is_empty();
        if self.first_answered && !clusters_warming {
            self.gauges.initialized.store(true, Ordering::Relaxed);
        }
        let slot = index(kind);
        match &verdict {
            Verdict::Accepted => {
                self.gauges.accepted[slot].fetch_add(1, Ordering::Relaxed);
                self.gauges
                    .versions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())[slot] = version.to_string();
                tracing::info!(kind = kind.name(), %version, resources, "xDS: accepted");
            }
            Verdict::Rejected(why) => {
                self.gauges.rejected[slot].fetch_add(1, Ordering::Relaxed);
                tracing::warn!(kind = kind.name(), %version, "xDS: refused (NACK): {why}");
            }
        }
        verdict
    }

    /// A state-of-the-world push: each type's resources replace what was held (endpoints are
    /// not a wildcard type: an assignment absent from a response stays).
    fn try_apply(&mut self, kind: ResourceType, response: &DiscoveryResponse) -> Verdict {
        let mut next = self.pushed.clone();
        let decoded = match kind {
            ResourceType::Cluster => {
                resources::state_of_the_world::<Cluster>(response).map(|c| next.clusters = c)
            }
            ResourceType::Listener => {
                resources::state_of_the_world::<Listener>(response).map(|l| next.listeners = l)
            }
            // Not a wildcard type: an assignment absent from a response stays as it was, one
            // not asked for is dropped.
            ResourceType::Endpoint => {
                resources::state_of_the_world::<ClusterLoadAssignment>(response).map(|all| {
                    let wanted = compose::endpoint_names(&next.clusters);
                    for assignment in all {
                        if wanted.contains(&assignment.cluster_name) {
                            next.assignments
                                .insert(assignment.cluster_name.clone(), assignment);
                        }
                    }
                })
            }
        };
        if let Err(why) = decoded {
            return Verdict::Rejected(why);
        }
        self.put_in_force_screened(kind, next)
    }

    /// A delta push: its resources replace the held ones of the same name or join them, its
    /// removed names go.
    fn try_apply_delta(
        &mut self,
        kind: ResourceType,
        response: &DeltaDiscoveryResponse,
    ) -> Verdict {
        let mut next = self.pushed.clone();
        let removed = resources::removed_names(response);
        let (type_url, changed) = (&response.type_url, &response.resources);
        let merged = match kind {
            ResourceType::Cluster => {
                resources::upsert(&mut next.clusters, type_url, changed, &removed, |c| &c.name)
            }
            ResourceType::Listener => {
                resources::upsert(&mut next.listeners, type_url, changed, &removed, |l| {
                    &l.name
                })
            }
            ResourceType::Endpoint => {
                let mut held: Vec<ClusterLoadAssignment> = std::mem::take(&mut next.assignments)
                    .into_values()
                    .collect();
                let merged =
                    resources::upsert(&mut held, type_url, changed, &removed, |a| &a.cluster_name);
                // (What no cluster asks for is dropped when the whole is put in force.)
                next.assignments = held
                    .into_iter()
                    .map(|a| (a.cluster_name.clone(), a))
                    .collect();
                merged
            }
        };
        for error in &response.resource_errors {
            tracing::warn!(kind = kind.name(), resource = ?error.resource_name, detail = ?error.error_detail,
                "xDS: the control plane reports a resource it cannot provide");
        }
        if let Err(why) = merged {
            return Verdict::Rejected(why);
        }
        self.put_in_force_screened(kind, next)
    }

    /// `next` put in force with what of it cannot be taken set aside, as Envoy takes the valid
    /// listeners and clusters of a push and rejects the others (`origdst_xds::screen`): the
    /// response is NACKed naming each one set aside, the rest in force.
    fn put_in_force_screened(&mut self, kind: ResourceType, mut next: Pushed) -> Verdict {
        let mut reasons = screen::untranslatable(&mut next, &self.pushed, kind);
        let mut named_by_validator = 0;
        loop {
            if !reasons.is_empty() && next == self.pushed {
                // Nothing of the push is left to take.
                return self.set_aside(kind, reasons, false);
            }
            match self.put_in_force(kind, next.clone()) {
                Verdict::Accepted if reasons.is_empty() => return Verdict::Accepted,
                Verdict::Accepted => return self.set_aside(kind, reasons, true),
                Verdict::Rejected(why) => {
                    let name = (named_by_validator < screen::VALIDATOR_SET_ASIDE_MAX)
                        .then(|| screen::named(&why, &next, &self.pushed, kind))
                        .flatten();
                    let Some(name) = name else {
                        // Refused as a whole (or past the bound): nothing of it is taken.
                        reasons.push(why);
                        return Verdict::Rejected(screen::detail(&reasons, false));
                    };
                    screen::set_aside(&mut next, &self.pushed, kind, &name);
                    reasons.push(why);
                    named_by_validator += 1;
                }
            }
        }
    }

    /// The NACK of a push some of whose resources were set aside, counted.
    fn set_aside(&self, kind: ResourceType, reasons: Vec<String>, rest_in_force: bool) -> Verdict {
        self.gauges.set_aside[index(kind)].fetch_add(reasons.len() as u64, Ordering::Relaxed);
        Verdict::Rejected(screen::detail(&reasons, rest_in_force))
    }

    /// `next` (what would be held) composed, judged and, if valid, put in force.
    fn put_in_force(&mut self, kind: ResourceType, mut next: Pushed) -> Verdict {
        let wanted = compose::endpoint_names(&next.clusters);
        next.assignments.retain(|name, _| wanted.contains(name));
        let composed =
            match compose::compose(&next, &self.statics, &self.active_clusters, &self.active) {
                Ok(composed) => composed,
                Err(why) => return Verdict::Rejected(why),
            };
        let overrides = &self.context.overrides;
        if !(composed.warming_clusters.is_empty() && composed.warming_listeners.is_empty()) {
            // Warming resources are judged now, against stand-ins for what they wait for: a
            // refusal names them when they arrive, not when what they wait for does.
            let clusters = compose::check_clusters(&composed, &self.statics);
            let listeners = compose::as_pushed(&composed);
            if let Err(why) =
                origdst_xds::translate::judge(&self.bootstrap, &clusters, &listeners, overrides)
            {
                return Verdict::Rejected(why);
            }
        }
        let in_force = compose::in_force_clusters(&composed);
        let judged = origdst_xds::translate::judge(
            &self.bootstrap,
            &in_force,
            &composed.listeners,
            overrides,
        );
        let (config, doc) = match judged {
            Ok(judged) => judged,
            Err(why) => return Verdict::Rejected(why),
        };
        match apply_config(
            &self.observed,
            &self.controls,
            &self.context,
            config,
            doc,
            None,
        ) {
            Ok(Some(_generation)) => {
                self.publish(kind, &composed);
                if !composed.warming_listeners.is_empty() || !composed.warming_clusters.is_empty() {
                    tracing::info!(
                        clusters = ?composed.warming_clusters.iter().map(|c| &c.name).collect::<Vec<_>>(),
                        listeners = ?composed.warming_listeners.iter().map(|l| &l.name).collect::<Vec<_>>(),
                        "xDS: warming (waiting for clusters or their endpoints)"
                    );
                }
                if !composed.missing.is_empty() {
                    tracing::warn!(
                        clusters = ?composed.missing.iter().map(|c| &c.name).collect::<Vec<_>>(),
                        "xDS: listeners in force name clusters that are gone; their connections fail until the clusters return or the listeners change"
                    );
                }
                self.pushed = next;
                self.active_clusters = composed.clusters;
                self.active = composed.listeners;
                Verdict::Accepted
            }
            Ok(None) => Verdict::Rejected("origdst is draining".into()),
            Err(why) => Verdict::Rejected(why),
        }
    }

    /// What `/config_dump` and `/metrics` show of what is in force and what warms.
    fn publish(&self, kind: ResourceType, composed: &Composed) {
        let warming_clusters = composed
            .warming_clusters
            .iter()
            .filter_map(|c| origdst_xds::translate::cluster(c).ok())
            .collect();
        let warming_listeners = composed
            .warming_listeners
            .iter()
            .filter_map(|l| origdst_xds::translate::listener(l).ok())
            .collect();
        let mut shown = self.gauges.pushed.lock().unwrap_or_else(|p| p.into_inner());
        shown.names = [
            compose::in_force_clusters(composed)
                .iter()
                .map(|c| c.name.clone())
                .collect(),
            composed.listeners.iter().map(|l| l.name.clone()).collect(),
        ];
        shown.warming = [warming_clusters, warming_listeners];
        shown.at[index(kind)] = Some(std::time::SystemTime::now());
    }
}

impl Judge for Client {
    fn judge(&mut self, kind: ResourceType, response: &DiscoveryResponse) -> Verdict {
        self.verdict(
            kind,
            &response.version_info,
            response.resources.len(),
            |client| client.try_apply(kind, response),
        )
    }

    fn judge_delta(&mut self, kind: ResourceType, response: &DeltaDiscoveryResponse) -> Verdict {
        // A delta response need not name a version of the whole; its nonce names the push.
        let version = if response.system_version_info.is_empty() {
            response.nonce.as_str()
        } else {
            response.system_version_info.as_str()
        };
        self.verdict(kind, version, response.resources.len(), |client| {
            client.try_apply_delta(kind, response)
        })
    }

    fn endpoint_names(&self) -> Vec<String> {
        compose::endpoint_names(&self.pushed.clusters)
    }
}

/// The bootstrap's `node.metadata` (YAML) as the proto `Struct` the control plane reads (depth
/// bounded as the bootstrap's own is).
fn to_proto(value: &serde_yaml_ng::Value, depth: usize) -> ProtoValue {
    use serde_yaml_ng::Value as Y;
    let kind = match value {
        _ if depth > 64 => Kind::NullValue(0),
        Y::Null => Kind::NullValue(0),
        Y::Bool(b) => Kind::BoolValue(*b),
        Y::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Y::String(s) => Kind::StringValue(s.clone()),
        Y::Sequence(items) => Kind::ListValue(envoy_types::pb::google::protobuf::ListValue {
            values: items.iter().map(|v| to_proto(v, depth + 1)).collect(),
        }),
        Y::Mapping(map) => Kind::StructValue(envoy_types::pb::google::protobuf::Struct {
            fields: map
                .iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), to_proto(v, depth + 1))))
                .collect(),
        }),
        Y::Tagged(tagged) => return to_proto(&tagged.value, depth + 1),
    };
    ProtoValue { kind: Some(kind) }
}

/// The protocol a stream speaks, and its session.
enum Protocol {
    /// `api_type: GRPC`.
    StateOfTheWorld(AdsSession),
    /// `api_type: DELTA_GRPC`.
    Delta(DeltaSession),
}
