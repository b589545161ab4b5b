//! `/config_dump` in Envoy's `ConfigDump` JSON shape, so tooling that reads Envoy's dump (istioctl,
//! Envoy's own scripts) reads origdst's: a `BootstrapConfigDump`, a `ListenersConfigDump` and a
//! `ClustersConfigDump`, each resource with its `@type` and `last_updated`, field names as the
//! proto spells them (snake_case, as Envoy's admin writes them). origdst's own `origdst:` section
//! is no Envoy field: it stays out of the bootstrap here (`/config_dump?format=yaml` has the file
//! as loaded, that section included).

use serde_json::{Value as Json, json};

use crate::observed::RunningConfig;

const BOOTSTRAP_DUMP: &str = "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump";
const LISTENERS_DUMP: &str = "type.googleapis.com/envoy.admin.v3.ListenersConfigDump";
const CLUSTERS_DUMP: &str = "type.googleapis.com/envoy.admin.v3.ClustersConfigDump";
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// The running config as Envoy's `ConfigDump`; with a control plane (`xds`), what it pushed goes
/// to the dynamic sections with its version and when it was accepted.
pub fn envoy_json(running: &RunningConfig, xds: Option<&crate::xds_client::XdsGauges>) -> String {
    let mut doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&running.yaml).unwrap_or(serde_yaml_ng::Value::Null);
    // A proto-JSON bootstrap is dumped with the proto's own field names, as Envoy does.
    origdst_core::config::bootstrap::snake_case_keys(&mut doc);
    let mut bootstrap = serde_json::to_value(&doc).unwrap_or(Json::Null);
    if let Some(map) = bootstrap.as_object_mut() {
        map.remove("origdst");
    }
    let updated = humantime::format_rfc3339_millis(running.loaded_at).to_string();
    let version = running.generation.to_string();
    let typed = |kind: &str, value: &Json| -> Json {
        let mut value = value.clone();
        if let Some(map) = value.as_object_mut() {
            map.insert("@type".into(), Json::String(kind.into()));
        }
        value
    };
    let resources = |kind: &str| -> Vec<Json> {
        bootstrap
            .pointer(&format!("/static_resources/{kind}"))
            .and_then(Json::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (pushed, versions) = xds.map_or_else(Default::default, |x| {
        (
            x.pushed.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            x.versions.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        )
    });
    let is_pushed = |slot: usize, resource: &Json| {
        resource["name"]
            .as_str()
            .is_some_and(|name| pushed.names[slot].iter().any(|n| n == name))
    };
    let pushed_at = |slot: usize| {
        pushed.at[slot].map_or_else(
            || updated.clone(),
            |at| humantime::format_rfc3339_millis(at).to_string(),
        )
    };
    let mut listeners = Vec::new();
    let mut dynamic_listeners = Vec::new();
    for l in resources("listeners") {
        if is_pushed(1, &l) {
            dynamic_listeners.push(json!({
                "name": l["name"],
                "active_state": {
                    "version_info": versions[1],
                    "listener": typed(LISTENER, &l),
                    "last_updated": pushed_at(1),
                },
            }));
        } else {
            listeners.push(json!({ "listener": typed(LISTENER, &l), "last_updated": updated }));
        }
    }
    // Listeners taken but waiting for a cluster: Envoy's `warming_state` (beside the version in
    // force, if one serves).
    for warming in &pushed.warming[1] {
        let Ok(l) = serde_json::to_value(warming) else {
            continue;
        };
        let state = json!({
            "version_info": versions[1],
            "listener": typed(LISTENER, &l),
            "last_updated": pushed_at(1),
        });
        match dynamic_listeners
            .iter_mut()
            .find(|d| d["name"] == l["name"])
        {
            Some(active) => active["warming_state"] = state,
            None => dynamic_listeners.push(json!({ "name": l["name"], "warming_state": state })),
        }
    }
    let dynamic_warming_clusters: Vec<Json> = pushed.warming[0]
        .iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .map(|c| {
            json!({
                "version_info": versions[0],
                "cluster": typed(CLUSTER, &c),
                "last_updated": pushed_at(0),
            })
        })
        .collect();
    let mut clusters = Vec::new();
    let mut dynamic_clusters = Vec::new();
    for c in resources("clusters") {
        if is_pushed(0, &c) {
            dynamic_clusters.push(json!({
                "version_info": versions[0],
                "cluster": typed(CLUSTER, &c),
                "last_updated": pushed_at(0),
            }));
        } else {
            clusters.push(json!({ "cluster": typed(CLUSTER, &c), "last_updated": updated }));
        }
    }
    // The bootstrap as written: without what was pushed.
    if let Some(statics) = bootstrap
        .get_mut("static_resources")
        .and_then(Json::as_object_mut)
    {
        for (key, slot) in [("listeners", 1), ("clusters", 0)] {
            if let Some(list) = statics.get_mut(key).and_then(Json::as_array_mut) {
                list.retain(|r| !is_pushed(slot, r));
            }
        }
    }
    let (listeners_version, clusters_version) = if xds.is_some() {
        (versions[1].clone(), versions[0].clone())
    } else {
        (version.clone(), version)
    };
    let dump = json!({
        "configs": [
            {
                "@type": BOOTSTRAP_DUMP,
                "bootstrap": bootstrap,
                "last_updated": updated,
            },
            {
                "@type": LISTENERS_DUMP,
                "version_info": listeners_version,
                "static_listeners": listeners,
                "dynamic_listeners": dynamic_listeners,
            },
            {
                "@type": CLUSTERS_DUMP,
                "version_info": clusters_version,
                "static_clusters": clusters,
                "dynamic_active_clusters": dynamic_clusters,
                "dynamic_warming_clusters": dynamic_warming_clusters,
            },
        ]
    });
    let mut text = serde_json::to_string_pretty(&dump).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_dumps_in_envoys_shape() {
        let running = RunningConfig {
            config: std::sync::Arc::new(origdst_core::config::Config::default_config()),
            yaml: origdst_core::config::DEFAULT_YAML.to_string(),
            path: None,
            generation: 3,
            loaded_at: std::time::UNIX_EPOCH,
        };
        let dump: Json = serde_json::from_str(&envoy_json(&running, None)).expect("JSON");
        let configs = dump["configs"].as_array().expect("configs");
        assert_eq!(configs[0]["@type"], BOOTSTRAP_DUMP);
        assert!(configs[0]["bootstrap"].get("origdst").is_none());
        assert_eq!(configs[1]["@type"], LISTENERS_DUMP);
        assert_eq!(configs[1]["version_info"], "3");
        let listener = &configs[1]["static_listeners"][0];
        assert_eq!(listener["listener"]["@type"], LISTENER);
        assert_eq!(listener["listener"]["name"], "virtualOutbound");
        assert_eq!(
            listener["listener"]["address"]["socket_address"]["port_value"],
            15001
        );
        assert_eq!(listener["last_updated"], "1970-01-01T00:00:00.000Z");
        assert_eq!(
            configs[1]["static_listeners"][1]["listener"]["name"],
            "virtualInbound"
        );
        assert_eq!(configs[2]["@type"], CLUSTERS_DUMP);
        assert_eq!(
            configs[2]["static_clusters"][0]["cluster"]["@type"],
            CLUSTER
        );
        assert_eq!(
            configs[2]["static_clusters"][1]["cluster"]["name"],
            "InboundPassthroughCluster"
        );
    }
}
