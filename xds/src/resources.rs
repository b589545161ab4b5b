//! A response's resources as the protos of its type: a state-of-the-world response's whole list,
//! a delta response's changes merged into what is held. A resource may come wrapped in
//! `envoy.service.discovery.v3.Resource` (go-control-plane does so when resources carry a TTL):
//! the wrapper is opened, and one without a body (a TTL refresh) changes nothing.

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryResponse, Resource};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// The type URL of the wrapper.
const RESOURCE: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// The most resources one response may carry (a mesh's listeners or endpoints are thousands;
/// this bounds the work a control plane can ask of one push).
pub const RESOURCES_MAX: usize = 100_000;

/// Refuses what of a `Resource` wrapper origdst does not honour: resources do not expire here
/// (`ttl`, `cache_control`), and aliases are for virtual hosts.
fn wrapper(r: &Resource, i: usize) -> Result<(), String> {
    let field = if r.ttl.is_some() {
        "ttl: not supported (resources do not expire here)"
    } else if r.cache_control.is_some() {
        "cache_control: not supported"
    } else if !r.aliases.is_empty() {
        "aliases: not supported"
    } else {
        return Ok(());
    };
    Err(format!("resources[{i}] ({:?}).{field}", name_of(r)))
}

/// A delta resource's name (`name`, or the newer `resource_name.name`).
pub fn name_of(r: &Resource) -> &str {
    match &r.resource_name {
        Some(named) if r.name.is_empty() => &named.name,
        _ => &r.name,
    }
}

/// A state-of-the-world response's resources, each of the type the response announces.
pub fn state_of_the_world<M: Message + Default>(
    response: &DiscoveryResponse,
) -> Result<Vec<M>, String> {
    if response.resources.len() > RESOURCES_MAX {
        return Err(format!(
            "{} resources in one response, more than the limit of {RESOURCES_MAX}",
            response.resources.len()
        ));
    }
    let mut out = Vec::with_capacity(response.resources.len());
    for (i, any) in response.resources.iter().enumerate() {
        let wrapped;
        let any = if any.type_url == RESOURCE {
            wrapped = Resource::decode(any.value.as_slice())
                .map_err(|err| format!("resources[{i}]: not a Resource: {err}"))?;
            wrapper(&wrapped, i)?;
            match &wrapped.resource {
                Some(inner) => inner,
                // A TTL refresh: the resource stays as it is (it is in this list by name only).
                None => {
                    return Err(format!(
                        "resources[{i}] ({:?}): a TTL refresh in a state-of-the-world response is not supported",
                        wrapped.name
                    ));
                }
            }
        } else {
            any
        };
        out.push(body(any, &response.type_url, i)?);
    }
    Ok(out)
}

/// A delta response's resources decoded into `held`: one of the same name replaced, a new one
/// added, then those named in `removed` dropped. A resource's name must be its message's (else
/// a removal by name would miss it).
pub fn upsert<M: Message + Default>(
    held: &mut Vec<M>,
    type_url: &str,
    resources: &[Resource],
    removed: &[String],
    name: impl Fn(&M) -> &String,
) -> Result<(), String> {
    if resources.len() + removed.len() > RESOURCES_MAX {
        return Err(format!(
            "{} resources changed or removed in one response, more than the limit of {RESOURCES_MAX}",
            resources.len() + removed.len()
        ));
    }
    let mut index: std::collections::HashMap<String, usize> = held
        .iter()
        .enumerate()
        .map(|(i, m)| (name(m).clone(), i))
        .collect();
    for (i, resource) in resources.iter().enumerate() {
        wrapper(resource, i)?;
        // A resource without a body refreshes its TTL only.
        let Some(any) = &resource.resource else {
            continue;
        };
        let message: M = body(any, type_url, i)?;
        let wanted = name_of(resource);
        if name(&message) != wanted {
            return Err(format!(
                "resources[{i}]: named {wanted:?}, its resource is {:?}",
                name(&message)
            ));
        }
        match index.get(wanted) {
            Some(&at) => held[at] = message,
            None => {
                index.insert(wanted.to_string(), held.len());
                held.push(message);
            }
        }
    }
    if !removed.is_empty() {
        let removed: std::collections::HashSet<&str> = removed.iter().map(String::as_str).collect();
        held.retain(|m| !removed.contains(name(m).as_str()));
    }
    Ok(())
}

/// A delta response's removed names: `removed_resources` and the newer
/// `removed_resource_names`.
pub fn removed_names(
    response: &envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
) -> Vec<String> {
    let mut out = response.removed_resources.clone();
    out.extend(
        response
            .removed_resource_names
            .iter()
            .map(|n| n.name.clone()),
    );
    out
}

fn body<M: Message + Default>(any: &Any, type_url: &str, i: usize) -> Result<M, String> {
    if any.type_url != type_url {
        return Err(format!(
            "resources[{i}]: a {} in a {type_url} response",
            any.type_url
        ));
    }
    M::decode(any.value.as_slice()).map_err(|err| format!("resources[{i}]: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

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

    fn wrapped(name: &str, body: Option<Any>) -> Resource {
        Resource {
            name: name.into(),
            version: "1".into(),
            resource: body,
            ..Resource::default()
        }
    }

    fn names(clusters: &[Cluster]) -> Vec<&str> {
        clusters.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn plain_and_wrapped_resources_decode_and_strangers_are_refused() {
        let wrapper = Any {
            type_url: RESOURCE.into(),
            value: wrapped("b", Some(cluster("b"))).encode_to_vec(),
        };
        let response = DiscoveryResponse {
            type_url: CDS.into(),
            resources: vec![cluster("a"), wrapper],
            ..DiscoveryResponse::default()
        };
        let got: Vec<Cluster> = state_of_the_world(&response).unwrap();
        assert_eq!(names(&got), ["a", "b"]);
        // A listener in a cluster response: refused, naming it.
        let stranger = DiscoveryResponse {
            type_url: CDS.into(),
            resources: vec![Any {
                type_url: "type.googleapis.com/envoy.config.listener.v3.Listener".into(),
                value: Vec::new(),
            }],
            ..DiscoveryResponse::default()
        };
        let err = state_of_the_world::<Cluster>(&stranger).unwrap_err();
        assert!(
            err.starts_with(
                "resources[0]: a type.googleapis.com/envoy.config.listener.v3.Listener in a"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_delta_replaces_by_name_adds_the_new_and_skips_ttl_refreshes() {
        let mut held: Vec<Cluster> = vec![
            Cluster {
                name: "a".into(),
                ..Cluster::default()
            },
            Cluster {
                name: "b".into(),
                ..Cluster::default()
            },
        ];
        let mut changed_a = Cluster {
            name: "a".into(),
            ..Cluster::default()
        };
        changed_a.alt_stat_name = "changed".into();
        let changes = [
            wrapped(
                "a",
                Some(Any {
                    type_url: CDS.into(),
                    value: changed_a.encode_to_vec(),
                }),
            ),
            wrapped("b", None),
            wrapped("c", Some(cluster("c"))),
        ];
        upsert(&mut held, CDS, &changes, &["b".into()], |c: &Cluster| {
            &c.name
        })
        .unwrap();
        assert_eq!(names(&held), ["a", "c"]);
        assert_eq!(held[0].alt_stat_name, "changed");
        // A resource whose name is not its message's is refused.
        let err = upsert(
            &mut held,
            CDS,
            &[wrapped("x", Some(cluster("y")))],
            &[],
            |c: &Cluster| &c.name,
        )
        .unwrap_err();
        assert_eq!(err, "resources[0]: named \"x\", its resource is \"y\"");
        // A TTL: refused (nothing expires here).
        let mut expiring = wrapped("c", Some(cluster("c")));
        expiring.ttl = Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 5,
            nanos: 0,
        });
        let err = upsert(&mut held, CDS, &[expiring], &[], |c: &Cluster| &c.name).unwrap_err();
        assert!(
            err.ends_with(".ttl: not supported (resources do not expire here)"),
            "{err}"
        );
    }

    #[test]
    fn names_come_from_name_or_resource_name_and_removals_from_both_fields() {
        use envoy_types::pb::envoy::service::discovery::v3::{
            DeltaDiscoveryResponse, ResourceName,
        };
        let mut newer = wrapped("", Some(cluster("n")));
        newer.resource_name = Some(ResourceName {
            name: "n".into(),
            ..ResourceName::default()
        });
        assert_eq!(name_of(&newer), "n");
        let mut both = wrapped("a", Some(cluster("a")));
        both.resource_name = Some(ResourceName {
            name: "other".into(),
            ..ResourceName::default()
        });
        assert_eq!(name_of(&both), "a", "the name field wins when set");
        let mut held: Vec<Cluster> = Vec::new();
        upsert(&mut held, CDS, &[newer], &[], |c: &Cluster| &c.name).unwrap();
        assert_eq!(names(&held), ["n"]);
        let response = DeltaDiscoveryResponse {
            removed_resources: vec!["x".into()],
            removed_resource_names: vec![ResourceName {
                name: "y".into(),
                ..ResourceName::default()
            }],
            ..DeltaDiscoveryResponse::default()
        };
        assert_eq!(removed_names(&response), ["x", "y"]);
    }

    #[test]
    fn a_response_is_bounded_in_resources() {
        let at_limit = DiscoveryResponse {
            type_url: CDS.into(),
            resources: vec![cluster(""); RESOURCES_MAX],
            ..DiscoveryResponse::default()
        };
        assert_eq!(
            state_of_the_world::<Cluster>(&at_limit).unwrap().len(),
            RESOURCES_MAX
        );
        let over = DiscoveryResponse {
            type_url: CDS.into(),
            resources: vec![cluster(""); RESOURCES_MAX + 1],
            ..DiscoveryResponse::default()
        };
        assert!(
            state_of_the_world::<Cluster>(&over)
                .unwrap_err()
                .contains("more than the limit of 100000")
        );
        // A delta: what changes and what is removed count together.
        let mut held: Vec<Cluster> = Vec::new();
        let removed = vec![String::new(); RESOURCES_MAX - 1];
        upsert(
            &mut held,
            CDS,
            &[wrapped("a", Some(cluster("a")))],
            &removed,
            |c: &Cluster| &c.name,
        )
        .unwrap();
        let removed = vec![String::new(); RESOURCES_MAX];
        let err = upsert(
            &mut held,
            CDS,
            &[wrapped("a", Some(cluster("a")))],
            &removed,
            |c: &Cluster| &c.name,
        )
        .unwrap_err();
        assert!(err.contains("more than the limit"), "{err}");
    }
}
