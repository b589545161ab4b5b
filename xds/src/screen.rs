//! Setting aside what of a push origdst cannot take, as Envoy does: a cluster or listener that
//! does not translate (a field, filter or type origdst does not implement) or that the validator
//! refuses by name is set aside — the version of it in force, if any, stays; a new one is left
//! out — and the rest of the push goes into force. The response is still NACKed, naming each
//! one set aside, so the control plane sees what was refused.
//!
//! Envoy's LDS and CDS take the valid resources of a response and reject the others; a proxy
//! that refused the whole push for one resource it cannot serve (one HTTP listener among a
//! mesh's TCP ones) would serve none of the push's changes. Endpoints (EDS) stay whole: an
//! assignment names no resource the validator reports on its own.

use crate::compose::Pushed;
use crate::session::ResourceType;
use crate::translate;

/// How many resources the validator may name one by one before the push is refused whole: each
/// costs one more validation of the whole config.
pub const VALIDATOR_SET_ASIDE_MAX: usize = 8;

/// How many reasons a NACK's error detail lists; the rest are counted.
const REASONS_SHOWN_MAX: usize = 16;

/// The names of the resources of `kind` in `pushed`, in order.
pub fn names(pushed: &Pushed, kind: ResourceType) -> Vec<String> {
    match kind {
        ResourceType::Cluster => pushed.clusters.iter().map(|c| c.name.clone()).collect(),
        ResourceType::Listener => pushed.listeners.iter().map(|l| l.name.clone()).collect(),
        ResourceType::Endpoint => pushed.assignments.keys().cloned().collect(),
    }
}

/// Sets resource `name` of `kind` aside in `next`: the version `held` has takes its place, or it
/// is left out.
pub fn set_aside(next: &mut Pushed, held: &Pushed, kind: ResourceType, name: &str) {
    fn replace<T: Clone>(items: &mut Vec<T>, held: &[T], name_of: impl Fn(&T) -> &str, name: &str) {
        let kept = held.iter().find(|h| name_of(h) == name).cloned();
        match (items.iter().position(|i| name_of(i) == name), kept) {
            (Some(at), Some(kept)) => items[at] = kept,
            (Some(at), None) => {
                items.remove(at);
            }
            (None, _) => {}
        }
    }
    match kind {
        ResourceType::Cluster => replace(
            &mut next.clusters,
            &held.clusters,
            |c| c.name.as_str(),
            name,
        ),
        ResourceType::Listener => replace(
            &mut next.listeners,
            &held.listeners,
            |l| l.name.as_str(),
            name,
        ),
        ResourceType::Endpoint => match held.assignments.get(name) {
            Some(kept) => {
                next.assignments.insert(name.to_string(), kept.clone());
            }
            None => {
                next.assignments.remove(name);
            }
        },
    }
}

/// Sets aside every cluster or listener of `kind` in `next` that does not translate; the
/// reasons, each naming its resource as the validator's do (`listener "x": …`).
pub fn untranslatable(next: &mut Pushed, held: &Pushed, kind: ResourceType) -> Vec<String> {
    let refused: Vec<(String, String)> = match kind {
        ResourceType::Cluster => next
            .clusters
            .iter()
            .filter_map(|c| {
                let why = translate::cluster(c).err()?;
                Some((c.name.clone(), format!("cluster {:?}: {why}", c.name)))
            })
            .collect(),
        ResourceType::Listener => next
            .listeners
            .iter()
            .filter_map(|l| {
                let why = translate::listener(l).err()?;
                Some((l.name.clone(), format!("listener {:?}: {why}", l.name)))
            })
            .collect(),
        ResourceType::Endpoint => Vec::new(),
    };
    let mut reasons = Vec::with_capacity(refused.len());
    for (name, why) in refused {
        set_aside(next, held, kind, &name);
        reasons.push(why);
    }
    reasons
}

/// The resource of `kind` in `next` that a refusal names (`cluster "x": …`), where setting it
/// aside changes something (it differs from what `held` has of that name).
pub fn named(why: &str, next: &Pushed, held: &Pushed, kind: ResourceType) -> Option<String> {
    let word = match kind {
        ResourceType::Cluster => "cluster",
        ResourceType::Listener => "listener",
        ResourceType::Endpoint => return None,
    };
    names(next, kind).into_iter().find(|name| {
        why.starts_with(&format!("{word} {name:?}: "))
            && item(next, kind, name) != item(held, kind, name)
    })
}

/// Resource `name` of `kind` in `pushed`.
fn item<'a>(pushed: &'a Pushed, kind: ResourceType, name: &str) -> Option<Item<'a>> {
    match kind {
        ResourceType::Cluster => pushed
            .clusters
            .iter()
            .find(|c| c.name == name)
            .map(Item::Cluster),
        ResourceType::Listener => pushed
            .listeners
            .iter()
            .find(|l| l.name == name)
            .map(Item::Listener),
        ResourceType::Endpoint => None,
    }
}

/// A resource, to compare the pushed version with the held one.
#[derive(PartialEq)]
enum Item<'a> {
    Cluster(&'a envoy_types::pb::envoy::config::cluster::v3::Cluster),
    Listener(&'a envoy_types::pb::envoy::config::listener::v3::Listener),
}

/// A NACK's error detail: what was set aside and why, at most [`REASONS_SHOWN_MAX`] reasons,
/// then how many more, and whether the rest went into force.
pub fn detail(reasons: &[String], rest_in_force: bool) -> String {
    let mut text = reasons
        .iter()
        .take(REASONS_SHOWN_MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if reasons.len() > REASONS_SHOWN_MAX {
        text.push_str(&format!("; and {} more", reasons.len() - REASONS_SHOWN_MAX));
    }
    if rest_in_force {
        text.push_str(" (set aside; the rest of the push is in force)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn listener(name: &str, buffer_limit: Option<u32>) -> Listener {
        Listener {
            name: name.into(),
            per_connection_buffer_limit_bytes: buffer_limit.map(|value| UInt32Value { value }),
            ..Listener::default()
        }
    }

    fn held() -> Pushed {
        Pushed {
            listeners: vec![listener("a", None), listener("b", None)],
            ..Pushed::default()
        }
    }

    #[test]
    fn an_untranslatable_update_keeps_the_held_version_and_a_new_one_is_left_out() {
        let held = held();
        let mut next = Pushed {
            // "a" updated with a field origdst does not implement, "b" gone, "c" new and bad,
            // "d" new and good.
            listeners: vec![
                listener("a", Some(1024)),
                listener("c", Some(1)),
                listener("d", None),
            ],
            ..Pushed::default()
        };
        let reasons = untranslatable(&mut next, &held, ResourceType::Listener);
        assert_eq!(
            names(&next, ResourceType::Listener),
            ["a", "d"],
            "a as held, c left out, d taken, b's removal taken"
        );
        assert_eq!(next.listeners[0], held.listeners[0]);
        assert_eq!(reasons.len(), 2);
        assert!(
            reasons[0].starts_with("listener \"a\": per_connection_buffer_limit_bytes"),
            "{}",
            reasons[0]
        );
        assert!(reasons[1].starts_with("listener \"c\": "), "{}", reasons[1]);
        // Clusters are not touched by a listener push.
        assert!(untranslatable(&mut next, &held, ResourceType::Cluster).is_empty());
    }

    #[test]
    fn a_refusal_names_a_resource_only_where_setting_it_aside_changes_something() {
        let held = held();
        let next = Pushed {
            listeners: vec![listener("a", None), listener("b \"quoted\"", None)],
            ..Pushed::default()
        };
        // "a" is as held: setting it aside would change nothing.
        assert_eq!(
            named(
                "listener \"a\": address: taken",
                &next,
                &held,
                ResourceType::Listener
            ),
            None
        );
        // A name with quotes is matched as the validator writes it (escaped).
        assert_eq!(
            named(
                "listener \"b \\\"quoted\\\"\": address: taken",
                &next,
                &held,
                ResourceType::Listener
            ),
            Some("b \"quoted\"".to_string())
        );
        assert_eq!(
            named(
                "cluster \"a\": type: x",
                &next,
                &held,
                ResourceType::Listener
            ),
            None,
            "another type's name"
        );
        let clusters = Pushed {
            clusters: vec![Cluster {
                name: "svc".into(),
                ..Cluster::default()
            }],
            ..Pushed::default()
        };
        assert_eq!(
            named(
                "cluster \"svc\": lb_policy: no",
                &clusters,
                &Pushed::default(),
                ResourceType::Cluster
            ),
            Some("svc".to_string())
        );
        assert_eq!(
            named(
                "cluster \"svc\": x",
                &clusters,
                &Pushed::default(),
                ResourceType::Endpoint
            ),
            None,
            "endpoints stay whole"
        );
    }

    #[test]
    fn the_detail_lists_a_bounded_number_of_reasons() {
        let reasons: Vec<String> = (0..20).map(|i| format!("listener \"l{i}\": bad")).collect();
        let text = detail(&reasons, true);
        assert!(
            text.starts_with("listener \"l0\": bad; listener \"l1\": bad"),
            "{text}"
        );
        assert!(text.contains("listener \"l15\": bad; and 4 more"), "{text}");
        assert!(!text.contains("\"l16\""), "{text}");
        assert!(
            text.ends_with("(set aside; the rest of the push is in force)"),
            "{text}"
        );
        assert_eq!(detail(&reasons[..1], false), "listener \"l0\": bad");
    }
}
