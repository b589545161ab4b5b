//! What the control plane pushed, made into what can be put in force: EDS clusters take their
//! endpoints from the assignments pushed for them, and what is not ready yet warms.
//!
//! ```text
//!   cluster (type EDS) ── its service's assignment arrived? ── yes ─▶ a STATIC cluster with those
//!                                                             └ no ──▶ warming; the version in
//!                                                               force (if any) serves meanwhile
//!   listener ── every cluster its tcp_proxy names is in force? ── yes ─▶ in force (bound)
//!                                                               └ no ──▶ new: warming (not bound)
//!                                                                 in force: stays bound, each
//!                                                                 missing cluster an endpoint-
//!                                                                 less stand-in; an update of it
//!                                                                 warms while it serves
//! ```
//!
//! This is Envoy's warming: a resource is taken (and ACKed) when it arrives, and used once what
//! it depends on has arrived too; what is in force keeps serving meanwhile. A listener in force
//! is never unbound for a cluster that went away (a control plane removes a cluster before the
//! listener that names it): connections to that cluster fail, as Envoy's `tcp_proxy` with no
//! cluster, and the listener's other chains go on serving.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{ApiVersion, config_source};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use prost::Message;

const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// The resources accepted from the control plane, by type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pushed {
    /// The clusters (CDS), as pushed.
    pub clusters: Vec<Cluster>,
    /// The endpoints (EDS), by service name; only those an accepted cluster asks for are kept.
    pub assignments: BTreeMap<String, ClusterLoadAssignment>,
    /// The listeners (LDS), as pushed.
    pub listeners: Vec<Listener>,
}

/// What is in force, and what waits.
#[derive(Debug, Clone, Default)]
pub struct Composed {
    /// Clusters in force; an EDS one carries its endpoints as a `load_assignment` and is STATIC.
    pub clusters: Vec<Cluster>,
    /// EDS clusters whose endpoints have not arrived.
    pub warming_clusters: Vec<Cluster>,
    /// Listeners in force (bound).
    pub listeners: Vec<Listener>,
    /// Listeners, or new versions of listeners, waiting for a cluster.
    pub warming_listeners: Vec<Listener>,
    /// Endpoint-less stand-ins, in force, for clusters a listener in force names that are gone.
    pub missing: Vec<Cluster>,
}

/// The EDS service a cluster takes its endpoints from (`eds_cluster_config.service_name`, else
/// its name), or `None` for a cluster that is not of type EDS. Only `eds_config: { ads: {} }` is
/// honoured: endpoints come over the one ADS stream.
pub fn eds_service(c: &Cluster) -> Result<Option<String>, String> {
    let eds = cluster::DiscoveryType::Eds as i32;
    if c.cluster_discovery_type != Some(cluster::ClusterDiscoveryType::Type(eds)) {
        if c.eds_cluster_config.is_some() {
            return Err("eds_cluster_config: only a cluster of type EDS takes one".into());
        }
        return Ok(None);
    }
    if c.load_assignment.is_some() {
        return Err(
            "load_assignment: an EDS cluster's endpoints come from EDS, not the cluster".into(),
        );
    }
    let config = c
        .eds_cluster_config
        .as_ref()
        .ok_or("eds_cluster_config: required for a cluster of type EDS")?;
    let source = config
        .eds_config
        .as_ref()
        .ok_or("eds_cluster_config.eds_config: required (ads: {})")?;
    match &source.config_source_specifier {
        Some(config_source::ConfigSourceSpecifier::Ads(_)) => {}
        _ => {
            return Err(
                "eds_cluster_config.eds_config: only ads: {} is supported (endpoints over the ADS stream)"
                    .into(),
            );
        }
    }
    if ![ApiVersion::Auto as i32, ApiVersion::V3 as i32].contains(&source.resource_api_version) {
        return Err("eds_cluster_config.eds_config.resource_api_version: only V3".into());
    }
    if !source.authorities.is_empty() {
        return Err("eds_cluster_config.eds_config.authorities: not supported".into());
    }
    // Istio sends `0s` (wait for the endpoints however long): what origdst does; a timeout
    // after which the cluster would serve with no endpoints is not implemented.
    if source
        .initial_fetch_timeout
        .is_some_and(|t| t.seconds != 0 || t.nanos != 0)
    {
        return Err(
            "eds_cluster_config.eds_config.initial_fetch_timeout: only 0s (wait for the endpoints) is supported"
                .into(),
        );
    }
    Ok(Some(if config.service_name.is_empty() {
        c.name.clone()
    } else {
        config.service_name.clone()
    }))
}

/// The EDS services these clusters ask for (invalid clusters ask for nothing: they are refused
/// before their endpoints matter).
pub fn endpoint_names(clusters: &[Cluster]) -> Vec<String> {
    let names: BTreeSet<String> = clusters
        .iter()
        .filter_map(|c| eds_service(c).ok().flatten())
        .collect();
    names.into_iter().collect()
}

/// The clusters a listener's `tcp_proxy` filters name (a filter that does not decode names none:
/// the translation refuses it, naming its field).
pub fn listener_clusters(l: &Listener) -> BTreeSet<String> {
    let chains = l
        .filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref());
    chains.flat_map(chain_clusters).collect()
}

fn chain_clusters(chain: &FilterChain) -> Vec<String> {
    chain
        .filters
        .iter()
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) if any.type_url == TCP_PROXY => {
                TcpProxy::decode(any.value.as_slice()).ok().and_then(|p| {
                    match p.cluster_specifier {
                        Some(tcp_proxy::ClusterSpecifier::Cluster(name)) => Some(name),
                        _ => None,
                    }
                })
            }
            _ => None,
        })
        .collect()
}

/// An EDS cluster with its endpoints: the STATIC cluster the validator judges.
pub fn resolved(c: &Cluster, assignment: &ClusterLoadAssignment) -> Cluster {
    let mut out = c.clone();
    out.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::Static as i32,
    ));
    out.eds_cluster_config = None;
    let mut assignment = assignment.clone();
    // The service's name is not the cluster's: the cluster's own goes with the endpoints.
    assignment.cluster_name.clone_from(&c.name);
    out.load_assignment = Some(assignment);
    out
}

/// What of `pushed` is in force and what warms, given the bootstrap's static clusters and what
/// is in force now (`active_clusters`, `active`: earlier versions serve while an update warms).
pub fn compose(
    pushed: &Pushed,
    statics: &BTreeSet<String>,
    active_clusters: &[Cluster],
    active: &[Listener],
) -> Result<Composed, String> {
    // By name, once: a mesh pushes thousands of each.
    let active_clusters: BTreeMap<&str, &Cluster> = active_clusters
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    let active: BTreeMap<&str, &Listener> = active.iter().map(|l| (l.name.as_str(), l)).collect();
    let mut out = Composed::default();
    for c in &pushed.clusters {
        match eds_service(c).map_err(|why| format!("cluster {:?}: {why}", c.name))? {
            None => out.clusters.push(c.clone()),
            Some(service) => match pushed.assignments.get(&service) {
                Some(assignment) => out.clusters.push(resolved(c, assignment)),
                None => {
                    out.warming_clusters.push(c.clone());
                    if let Some(old) = active_clusters.get(c.name.as_str()) {
                        out.clusters.push((*old).clone());
                    }
                }
            },
        }
    }
    let ready: BTreeSet<&str> = statics
        .iter()
        .map(String::as_str)
        .chain(out.clusters.iter().map(|c| c.name.as_str()))
        .collect();
    let missing_of = |l: &Listener| -> Vec<String> {
        listener_clusters(l)
            .into_iter()
            .filter(|name| !ready.contains(name.as_str()))
            .collect()
    };
    let mut missing = BTreeSet::new();
    for l in &pushed.listeners {
        if missing_of(l).is_empty() {
            out.listeners.push(l.clone());
            continue;
        }
        match active.get(l.name.as_str()) {
            // Never in force: it waits for its clusters.
            None => out.warming_listeners.push(l.clone()),
            // In force, and a cluster it names went away: it stays bound.
            Some(old) if *old == l => {
                missing.extend(missing_of(l));
                out.listeners.push(l.clone());
            }
            // An update waiting for its clusters: the version in force serves meanwhile.
            Some(old) => {
                missing.extend(missing_of(old));
                out.warming_listeners.push(l.clone());
                out.listeners.push((*old).clone());
            }
        }
    }
    out.missing = missing.into_iter().map(stand_in).collect();
    Ok(out)
}

/// An endpoint-less STATIC cluster named `name`: its connections fail at once (no healthy
/// upstream), counted and logged.
fn stand_in(name: String) -> Cluster {
    Cluster {
        name,
        ..Cluster::default()
    }
}

/// The clusters a check of everything pushed judges: those in force, each warming EDS cluster
/// in place of its version in force (with no endpoints), and an endpoint-less stand-in for each
/// cluster a warming listener names that was not pushed at all. With them, a warming resource is
/// judged by the validator when it arrives (and refused then, naming its field), not when it
/// warms.
pub fn check_clusters(composed: &Composed, statics: &BTreeSet<String>) -> Vec<Cluster> {
    let warming: Vec<Cluster> = composed
        .warming_clusters
        .iter()
        .map(|c| resolved(c, &ClusterLoadAssignment::default()))
        .collect();
    let warming_names: BTreeSet<&str> = warming.iter().map(|w| w.name.as_str()).collect();
    let mut out: Vec<Cluster> = composed
        .clusters
        .iter()
        .filter(|c| !warming_names.contains(c.name.as_str()))
        .cloned()
        .collect();
    // (A stand-in serving for a cluster whose pushed version warms: the pushed one is judged.)
    out.extend(
        composed
            .missing
            .iter()
            .filter(|m| !warming_names.contains(m.name.as_str()))
            .cloned(),
    );
    out.extend(warming);
    let mut known: BTreeSet<String> = statics.clone();
    known.extend(out.iter().map(|c| c.name.clone()));
    for l in &composed.warming_listeners {
        for name in listener_clusters(l) {
            if known.insert(name.clone()) {
                out.push(stand_in(name));
            }
        }
    }
    out
}

/// The clusters in force: those pushed and resolved, and the stand-ins for missing ones.
pub fn in_force_clusters(composed: &Composed) -> Vec<Cluster> {
    let mut out = composed.clusters.clone();
    out.extend(composed.missing.iter().cloned());
    out
}

/// The listeners with every warming version in place of the one in force (what the check of
/// everything pushed judges).
pub fn as_pushed(composed: &Composed) -> Vec<Listener> {
    let warming: BTreeSet<&str> = composed
        .warming_listeners
        .iter()
        .map(|w| w.name.as_str())
        .collect();
    let mut out: Vec<Listener> = composed
        .listeners
        .iter()
        .filter(|l| !warming.contains(l.name.as_str()))
        .cloned()
        .collect();
    out.extend(composed.warming_listeners.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ConfigSource};
    use envoy_types::pb::envoy::config::listener::v3::Filter;
    use envoy_types::pb::google::protobuf::Any;

    fn eds(name: &str, service: &str) -> Cluster {
        Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: Some(ConfigSource {
                    config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                        AggregatedConfigSource {},
                    )),
                    resource_api_version: ApiVersion::V3 as i32,
                    ..ConfigSource::default()
                }),
                service_name: service.into(),
            }),
            ..Cluster::default()
        }
    }

    fn listener(name: &str, cluster: &str, port: u32) -> Listener {
        let proxy = TcpProxy {
            stat_prefix: name.into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
            ..TcpProxy::default()
        };
        Listener {
            name: name.into(),
            per_connection_buffer_limit_bytes: Some(
                envoy_types::pb::google::protobuf::UInt32Value { value: port },
            ),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(Any {
                        type_url: TCP_PROXY.into(),
                        value: proxy.encode_to_vec(),
                    })),
                }],
                ..FilterChain::default()
            }],
            ..Listener::default()
        }
    }

    fn names<T>(items: &[T], name: impl Fn(&T) -> &str) -> Vec<String> {
        items.iter().map(|i| name(i).to_string()).collect()
    }

    #[test]
    fn an_eds_cluster_warms_until_its_endpoints_come_and_its_listeners_with_it() {
        let statics: BTreeSet<String> = ["xds-grpc".to_string()].into();
        let mut pushed = Pushed {
            clusters: vec![eds("svc", "outbound|80||svc"), Cluster::default()],
            assignments: BTreeMap::new(),
            listeners: vec![
                listener("a", "svc", 1),
                listener("b", "xds-grpc", 2),
                Listener {
                    name: "c".into(),
                    ..Listener::default()
                },
            ],
        };
        pushed.clusters[1].name = String::new();
        assert_eq!(
            endpoint_names(&pushed.clusters),
            vec!["outbound|80||svc".to_string()]
        );
        let composed = compose(&pushed, &statics, &[], &[]).unwrap();
        assert_eq!(names(&composed.warming_clusters, |c| &c.name), ["svc"]);
        assert_eq!(names(&composed.warming_listeners, |l| &l.name), ["a"]);
        assert_eq!(names(&composed.listeners, |l| &l.name), ["b", "c"]);
        // The check sees the warming cluster, endpoint-less, and the listener waiting.
        let checked = check_clusters(&composed, &statics);
        assert_eq!(names(&checked, |c| &c.name), ["", "svc"]);
        assert_eq!(as_pushed(&composed).len(), 3);

        // The endpoints arrive: the cluster is STATIC with them, under its own name.
        let assignment = ClusterLoadAssignment {
            cluster_name: "outbound|80||svc".into(),
            ..ClusterLoadAssignment::default()
        };
        pushed
            .assignments
            .insert("outbound|80||svc".into(), assignment);
        let composed = compose(&pushed, &statics, &[], &[]).unwrap();
        assert!(composed.warming_clusters.is_empty());
        assert!(composed.warming_listeners.is_empty());
        let svc = &composed.clusters[0];
        assert_eq!(
            svc.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32
            ))
        );
        assert_eq!(svc.eds_cluster_config, None);
        assert_eq!(
            svc.load_assignment
                .as_ref()
                .map(|a| a.cluster_name.as_str()),
            Some("svc")
        );
        assert_eq!(names(&composed.listeners, |l| &l.name), ["a", "b", "c"]);
    }

    #[test]
    fn an_update_waiting_for_its_cluster_leaves_the_version_in_force_serving() {
        let statics: BTreeSet<String> = ["passthrough".to_string()].into();
        let old = listener("capture", "passthrough", 1);
        let pushed = Pushed {
            listeners: vec![listener("capture", "not-yet", 2)],
            ..Pushed::default()
        };
        let composed = compose(&pushed, &statics, &[], std::slice::from_ref(&old)).unwrap();
        assert_eq!(composed.listeners, vec![old]);
        assert_eq!(composed.warming_listeners, pushed.listeners);
        assert!(composed.missing.is_empty());
        // The check judges the new version, with a stand-in for the cluster it waits for.
        let checked = check_clusters(&composed, &statics);
        assert_eq!(names(&checked, |c| &c.name), ["not-yet"]);
        assert_eq!(as_pushed(&composed), pushed.listeners);
    }

    #[test]
    fn a_listener_in_force_stays_bound_when_its_cluster_goes_away() {
        // Control planes remove a cluster before the listener that names it: the listener
        // serves on, connections to the gone cluster fail (an endpoint-less stand-in).
        let serving = listener("capture", "svc", 1);
        let pushed = Pushed {
            listeners: vec![serving.clone()],
            ..Pushed::default()
        };
        let composed = compose(
            &pushed,
            &BTreeSet::new(),
            &[],
            std::slice::from_ref(&serving),
        )
        .unwrap();
        assert_eq!(composed.listeners, vec![serving.clone()]);
        assert!(composed.warming_listeners.is_empty());
        assert_eq!(names(&composed.missing, |c| &c.name), ["svc"]);
        assert_eq!(names(&in_force_clusters(&composed), |c| &c.name), ["svc"]);
        // An update of it that needs another missing cluster: the version in force serves
        // (standing in for what it lost), the update warms.
        let update = Pushed {
            listeners: vec![listener("capture", "other", 2)],
            ..Pushed::default()
        };
        let composed = compose(
            &update,
            &BTreeSet::new(),
            &[],
            std::slice::from_ref(&serving),
        )
        .unwrap();
        assert_eq!(composed.listeners, vec![serving]);
        assert_eq!(composed.warming_listeners, update.listeners);
        assert_eq!(names(&composed.missing, |c| &c.name), ["svc"]);
    }

    #[test]
    fn a_cluster_pushed_back_warms_while_its_stand_in_serves() {
        // The listener in force lost `svc`, then `svc` comes back as EDS without endpoints yet:
        // the stand-in serves, the pushed version warms, and the check judges it alone.
        let serving = listener("capture", "svc", 1);
        let pushed = Pushed {
            clusters: vec![eds("svc", "")],
            listeners: vec![serving.clone()],
            ..Pushed::default()
        };
        let composed = compose(
            &pushed,
            &BTreeSet::new(),
            &[],
            std::slice::from_ref(&serving),
        )
        .unwrap();
        assert_eq!(names(&composed.missing, |c| &c.name), ["svc"]);
        assert_eq!(names(&composed.warming_clusters, |c| &c.name), ["svc"]);
        let checked = check_clusters(&composed, &BTreeSet::new());
        assert_eq!(
            names(&checked, |c| &c.name),
            ["svc"],
            "judged once, as pushed"
        );
        assert!(checked[0].load_assignment.is_some());
    }

    #[test]
    fn an_eds_cluster_whose_new_version_waits_keeps_the_one_in_force() {
        let statics = BTreeSet::new();
        // The version in force has an endpoint (the new one, judged, has none yet).
        let assignment = ClusterLoadAssignment {
            cluster_name: "old-service".into(),
            endpoints: vec![
                envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints::default(),
            ],
            ..ClusterLoadAssignment::default()
        };
        let in_force = resolved(&eds("svc", "old-service"), &assignment);
        // The cluster now names another service, whose endpoints have not come.
        let pushed = Pushed {
            clusters: vec![eds("svc", "new-service")],
            listeners: vec![listener("capture", "svc", 1)],
            ..Pushed::default()
        };
        let composed = compose(
            &pushed,
            &statics,
            std::slice::from_ref(&in_force),
            &pushed.listeners,
        )
        .unwrap();
        assert_eq!(composed.clusters, vec![in_force]);
        assert_eq!(names(&composed.warming_clusters, |c| &c.name), ["svc"]);
        assert_eq!(
            composed.listeners, pushed.listeners,
            "the listener serves on"
        );
        // The check judges the new version alone under its name.
        let checked = check_clusters(&composed, &statics);
        assert_eq!(checked.len(), 1);
        assert_eq!(
            checked[0]
                .load_assignment
                .as_ref()
                .map(|a| a.endpoints.len()),
            Some(0)
        );
    }

    #[test]
    fn only_tcp_proxy_filters_name_clusters() {
        // A filter of another type whose bytes would decode as a TcpProxy names nothing.
        let mut l = listener("capture", "real", 1);
        let ghost = TcpProxy {
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("ghost".into())),
            ..TcpProxy::default()
        };
        l.filter_chains[0].filters.insert(
            0,
            Filter {
                name: "envoy.filters.network.set_filter_state".into(),
                config_type: Some(filter::ConfigType::TypedConfig(Any {
                    type_url:
                        "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config"
                            .into(),
                    value: ghost.encode_to_vec(),
                })),
            },
        );
        assert_eq!(
            listener_clusters(&l).into_iter().collect::<Vec<_>>(),
            ["real"]
        );
    }

    #[test]
    fn eds_configuration_outside_ads_is_refused_by_its_field() {
        let mut c = eds("svc", "");
        assert_eq!(eds_service(&c), Ok(Some("svc".into())));
        // Istio's `initial_fetch_timeout: 0s` (wait) is what origdst does; a timeout is not.
        let source = c
            .eds_cluster_config
            .as_mut()
            .and_then(|e| e.eds_config.as_mut())
            .unwrap();
        source.initial_fetch_timeout = Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 0,
            nanos: 0,
        });
        assert_eq!(eds_service(&c), Ok(Some("svc".into())));
        let source = c
            .eds_cluster_config
            .as_mut()
            .and_then(|e| e.eds_config.as_mut())
            .unwrap();
        source.initial_fetch_timeout = Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 5,
            nanos: 0,
        });
        assert!(
            eds_service(&c)
                .unwrap_err()
                .starts_with("eds_cluster_config.eds_config.initial_fetch_timeout:")
        );
        c.eds_cluster_config.as_mut().unwrap().eds_config = Some(ConfigSource::default());
        assert!(
            eds_service(&c)
                .unwrap_err()
                .starts_with("eds_cluster_config.eds_config: only ads")
        );
        c.eds_cluster_config = None;
        assert!(
            eds_service(&c)
                .unwrap_err()
                .starts_with("eds_cluster_config: required")
        );
        let mut c = eds("svc", "");
        c.load_assignment = Some(ClusterLoadAssignment::default());
        assert!(eds_service(&c).unwrap_err().starts_with("load_assignment:"));
        let mut c = Cluster::default();
        assert_eq!(eds_service(&c), Ok(None));
        c.eds_cluster_config = Some(EdsClusterConfig::default());
        assert!(eds_service(&c).is_err());
        let pushed = Pushed {
            clusters: vec![c],
            ..Pushed::default()
        };
        assert!(
            compose(&pushed, &BTreeSet::new(), &[], &[])
                .unwrap_err()
                .starts_with("cluster \"\": eds_cluster_config")
        );
    }
}
