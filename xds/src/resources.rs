//! A response's resources as the protos of its type: a state-of-the-world response's whole list,
//! a delta response's changes merged into what is held. A resource may come wrapped in
//! `envoy.service.discovery.v3.Resource` (go-control-plane does so when resources carry a TTL):
//! the wrapper is opened, and one without a body (a TTL refresh) changes nothing.

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryResponse, Resource};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// The type URL of the wrapper.
const RESOURCE: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// A state-of-the-world response's resources, each of the type the response announces.
pub fn state_of_the_world<M: Message + Default>(
    response: &DiscoveryResponse,
) -> Result<Vec<M>, String> {
    let mut out = Vec::with_capacity(response.resources.len());
    for (i, any) in response.resources.iter().enumerate() {
        let wrapped;
        let any = if any.type_url == RESOURCE {
            wrapped = Resource::decode(any.value.as_slice())
                .map_err(|err| format!("resources[{i}]: not a Resource: {err}"))?;
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
/// added. A resource's name must be its message's (else a removal by name would miss it).
pub fn upsert<M: Message + Default>(
    held: &mut Vec<M>,
    type_url: &str,
    resources: &[Resource],
    name: impl Fn(&M) -> &String,
) -> Result<(), String> {
    for (i, resource) in resources.iter().enumerate() {
        // A resource without a body refreshes its TTL only.
        let Some(any) = &resource.resource else {
            continue;
        };
        let message: M = body(any, type_url, i)?;
        if *name(&message) != resource.name {
            return Err(format!(
                "resources[{i}]: named {:?}, its resource is {:?}",
                resource.name,
                name(&message)
            ));
        }
        match held.iter_mut().find(|h| *name(h) == resource.name) {
            Some(slot) => *slot = message,
            None => held.push(message),
        }
    }
    Ok(())
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
        upsert(&mut held, CDS, &changes, |c: &Cluster| &c.name).unwrap();
        assert_eq!(names(&held), ["a", "b", "c"]);
        assert_eq!(held[0].alt_stat_name, "changed");
        // A resource whose name is not its message's is refused.
        let err = upsert(
            &mut held,
            CDS,
            &[wrapped("x", Some(cluster("y")))],
            |c: &Cluster| &c.name,
        )
        .unwrap_err();
        assert_eq!(err, "resources[0]: named \"x\", its resource is \"y\"");
    }
}
