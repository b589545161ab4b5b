//! A reload that adds and removes listeners: which bound listeners a new config removes and
//! adds (by name: one whose addresses or socket options changed is both), their new sockets
//! bound before anything is asked of the shards (a bind that fails refuses the whole reload,
//! nothing changed), and one [`Reload`] per shard. The listeners a reload keeps keep their sockets
//! and connections; removed ones stop at once and their connections drain until
//! `drain_timeout` (the engine's listener groups).

use std::collections::BTreeMap;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::Arc;

use origdst_core::config::Config;
use origdst_engine::listeners::{GroupAdd, GroupId, GroupKind, HandedSocket, Reload, bound, diff};

use crate::sys;

/// Each bound listener's group, by name, and the next number to give.
#[derive(Debug)]
pub(crate) struct ListenerGroups {
    by_name: BTreeMap<String, GroupId>,
    next: u32,
}

/// Listener groups are numbered from here (pods' from 1: the two never meet).
const FIRST_LISTENER_GROUP: u32 = 1 << 31;

impl ListenerGroups {
    /// A group for every bound listener of `config`.
    pub(crate) fn new(config: &Config) -> Self {
        let mut groups = Self {
            by_name: BTreeMap::new(),
            next: FIRST_LISTENER_GROUP,
        };
        for name in bound(config).into_keys() {
            groups.assign(name);
        }
        groups
    }

    fn assign(&mut self, name: &str) -> GroupId {
        let group = GroupId(self.next);
        self.next = self.next.wrapping_add(1).max(FIRST_LISTENER_GROUP);
        self.by_name.insert(name.to_string(), group);
        group
    }

    /// The groups by name, for the shards' start.
    pub(crate) fn snapshot(&self) -> Arc<BTreeMap<String, GroupId>> {
        Arc::new(self.by_name.clone())
    }
}

/// The per-shard reloads for `new` (its added listeners' sockets bound), and the groups updated
/// — or why not, with nothing changed.
pub(crate) fn prepare(
    groups: &mut ListenerGroups,
    old: &Config,
    new: &Arc<Config>,
    shards: usize,
    backlog: i32,
) -> Result<Vec<Reload>, String> {
    let (removed, added) = diff(old, new);
    // Bind first: a failure leaves everything as it was (the sockets made so far close).
    let mut sockets: Vec<Vec<Vec<(OwnedFd, usize)>>> = Vec::new();
    for name in &added {
        let config_index = new
            .listeners
            .iter()
            .position(|l| &l.name == name)
            .expect("an added listener is in the new config");
        let listener = &new.listeners[config_index];
        let mut per_shard: Vec<Vec<(OwnedFd, usize)>> = (0..shards).map(|_| Vec::new()).collect();
        for &addr in listener.socket_addresses() {
            for shard in &mut per_shard {
                let socket = sys::listener(addr, listener.transparent, listener.freebind, backlog)
                    .map_err(|err| format!("listener {name:?}: cannot listen on {addr}: {err}"))?;
                shard.push((socket.into(), config_index));
            }
        }
        sockets.push(per_shard);
    }
    let removed_groups: Vec<GroupId> = removed
        .iter()
        .filter_map(|name| groups.by_name.remove(name))
        .collect();
    let added_groups: Vec<GroupId> = added.iter().map(|name| groups.assign(name)).collect();
    let mut reloads: Vec<Reload> = (0..shards)
        .map(|_| Reload {
            config: Arc::clone(new),
            removed: removed_groups.clone(),
            added: Vec::new(),
        })
        .collect();
    for ((name, group), per_shard) in added.iter().zip(&added_groups).zip(sockets) {
        for (reload, shard_sockets) in reloads.iter_mut().zip(per_shard) {
            reload.added.push(GroupAdd {
                group: *group,
                kind: GroupKind::Listener,
                name: Arc::from(name.as_str()),
                sockets: shard_sockets
                    .into_iter()
                    .map(|(fd, config_index)| HandedSocket {
                        fd: fd.into_raw_fd(),
                        listener: Arc::from(new.listeners[config_index].name.as_str()),
                    })
                    .collect(),
                netns: None,
            });
        }
    }
    if !removed.is_empty() || !added.is_empty() {
        tracing::info!(?removed, ?added, "reload: listeners removed and added");
    }
    Ok(reloads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_told_apart_by_name_and_binding() {
        let old = Config::default_config();
        assert_eq!(diff(&old, &old), (vec![], vec![]));
        let moved = Config::from_yaml(
            &origdst_core::config::DEFAULT_YAML.replace("port_value: 15001", "port_value: 15002"),
        )
        .unwrap();
        assert_eq!(
            diff(&old, &moved),
            (
                vec!["virtualOutbound".to_string()],
                vec!["virtualOutbound".to_string()]
            )
        );
        let mut fewer = old.clone();
        fewer.listeners.retain(|l| l.name != "virtualInbound");
        assert_eq!(
            diff(&old, &fewer),
            (vec!["virtualInbound".to_string()], vec![])
        );
        assert_eq!(
            diff(&fewer, &old),
            (vec![], vec!["virtualInbound".to_string()])
        );
        let mut groups = ListenerGroups::new(&old);
        let snapshot = groups.snapshot();
        assert_eq!(snapshot.len(), 2);
        assert!(snapshot.values().all(|g| g.0 >= FIRST_LISTENER_GROUP));
        let reloads = prepare(&mut groups, &old, &Arc::new(fewer), 2, 16).unwrap();
        assert_eq!(reloads.len(), 2);
        assert_eq!(reloads[0].removed, vec![snapshot["virtualInbound"]]);
        assert!(reloads[0].added.is_empty());
        assert!(!groups.snapshot().contains_key("virtualInbound"));
    }
}
