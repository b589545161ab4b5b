//! Listening sockets added and removed while the shard runs, by group (a pod's, in in-pod mode):
//! adding adopts the group's sockets into free listener entries and arms them; removing stops
//! them at once and gives the group's open connections `drain_timeout` to finish before they are
//! reset. Each group's connections are counted and published (per-pod counters).

use std::sync::Arc;
use std::time::Duration;

use origdst_core::connection::Connection;
use origdst_core::relay::Dir;
use origdst_core::time::Instant;

use super::{GONE, ListenerIo, Shard};
use crate::kernel::Kernel;
use crate::listeners::{
    GroupAdd, GroupId, GroupKind, GroupReport, LISTENERS_PER_SHARD_MAX, ListenerChange, NetnsId,
    Reload,
};
use crate::timers::TimerKey;

/// One group the shard serves or drains.
pub(super) struct GroupIo {
    pub(super) name: Arc<str>,
    kind: GroupKind,
    netns: Option<NetnsId>,
    removed: bool,
    accepted: u64,
    active: u64,
    bytes_up: u64,
    bytes_down: u64,
    drain_reset: u64,
}

impl GroupIo {
    /// A pod's (the access log names it).
    pub(super) fn is_pod(&self) -> bool {
        self.kind == GroupKind::Pod
    }

    pub(super) fn new(name: Arc<str>, kind: GroupKind, netns: Option<NetnsId>) -> Self {
        Self {
            name,
            kind,
            netns,
            removed: false,
            accepted: 0,
            active: 0,
            bytes_up: 0,
            bytes_down: 0,
            drain_reset: 0,
        }
    }
}

/// How often a shard publishes its groups' counters at most (they change with every connection;
/// a scrape does not need them fresher).
const GROUPS_PUBLISH_EVERY: Duration = Duration::from_millis(100);

impl<K: Kernel> Shard<K> {
    pub(super) fn change_listeners(&mut self, now: Instant, change: ListenerChange) {
        match change {
            ListenerChange::Add(add) => self.add_group(add),
            ListenerChange::Remove(group) => self.remove_group(now, group),
        }
    }

    /// A reload: the removed listeners stop, the config is swapped (the listeners that stay are
    /// found in it by name: their positions may have moved), the added start.
    pub(super) fn apply_reload(&mut self, now: Instant, reload: Reload) {
        for group in reload.removed {
            self.remove_group(now, group);
        }
        let old = Arc::clone(&self.setup.config);
        for index in 0..self.listeners.len() {
            let entry = &mut self.listeners[index];
            if entry.config_index == GONE {
                continue;
            }
            let name = &old.listeners[entry.config_index].name;
            entry.config_index = reload
                .config
                .listeners
                .iter()
                .position(|l| &l.name == name)
                .unwrap_or(GONE);
            if entry.config_index == GONE && entry.socket.is_some() {
                // Gone from the config without being removed: it cannot go on accepting.
                tracing::warn!(shard = self.setup.id, listener = %name,
                    "a reload dropped a listener it did not remove; stopping it");
                self.stop_listener(index);
            }
        }
        self.listener_names = super::listener_names(&reload.config);
        self.balancer = self.balancer.carried_over(&old, &reload.config);
        self.setup.config = reload.config;
        for add in reload.added {
            self.add_group(add);
        }
        tracing::debug!(shard = self.setup.id, "config reloaded");
    }

    /// The position of the listener named `name` in the running config.
    fn config_index(&self, name: &str) -> Option<usize> {
        self.setup
            .config
            .listeners
            .iter()
            .position(|l| l.name == name)
    }

    fn add_group(&mut self, add: GroupAdd) {
        let held = self.listeners.iter().filter(|l| !l.vacant()).count();
        let refusal = if self.draining {
            Some("the shard is draining".to_string())
        } else if self.groups.contains_key(&add.group) {
            Some("the group is already served".to_string())
        } else if held + add.sockets.len() > LISTENERS_PER_SHARD_MAX {
            Some(format!(
                "{held} listening sockets held, {} more would pass the limit of {LISTENERS_PER_SHARD_MAX}",
                add.sockets.len()
            ))
        } else {
            add.sockets
                .iter()
                .find(|s| self.config_index(&s.listener).is_none())
                .map(|s| format!("no listener {:?} in the config", s.listener))
        };
        if let Some(why) = refusal {
            tracing::warn!(shard = self.setup.id, group = %add.name, "listeners not added: {why}");
            for handed in add.sockets {
                let socket = self.io.kernel.adopt(handed.fd);
                self.io.closing.push(socket);
            }
            return;
        }
        for handed in &add.sockets {
            let config_index = self
                .config_index(&handed.listener)
                .expect("checked above: every socket's listener is in the config");
            let socket = self.io.kernel.adopt(handed.fd);
            let index = match self.listeners.iter().position(ListenerIo::vacant) {
                Some(index) => {
                    let entry = &mut self.listeners[index];
                    entry.generation = entry.generation.wrapping_add(1);
                    entry.socket = Some(socket);
                    entry.config_index = config_index;
                    entry.group = Some(add.group);
                    index
                }
                None => {
                    self.listeners.push(ListenerIo {
                        socket: Some(socket),
                        config_index,
                        armed: false,
                        generation: 0,
                        group: Some(add.group),
                    });
                    self.listeners.len() - 1
                }
            };
            self.arm_accept(index);
        }
        tracing::debug!(shard = self.setup.id, group = %add.name, sockets = add.sockets.len(), "listeners added");
        self.groups
            .insert(add.group, GroupIo::new(add.name, add.kind, add.netns));
        self.publish_groups(None);
    }

    fn remove_group(&mut self, now: Instant, group: GroupId) {
        let Some(entry) = self.groups.get_mut(&group) else {
            tracing::debug!(
                shard = self.setup.id,
                group = group.0,
                "removing an unknown group"
            );
            return;
        };
        if entry.removed {
            return;
        }
        entry.removed = true;
        let name = Arc::clone(&entry.name);
        let open = entry.active;
        for index in 0..self.listeners.len() {
            if self.listeners[index].group == Some(group) {
                self.stop_listener(index);
            }
        }
        // Kept until its deadline even if it has nothing open: a connection the kernel accepted
        // before the cancel took effect still arrives and is served (and drained) as the group's.
        let deadline = now + self.setup.config.knobs.drain_timeout;
        self.timers.push(deadline, TimerKey::GroupDrain(group));
        tracing::debug!(shard = self.setup.id, group = %name, open, "listeners removed; draining");
        self.publish_groups(None);
    }

    /// Stops a listener now: no more handshakes, its accept cancelled, its socket closed once the
    /// cancel is submitted.
    pub(super) fn stop_listener(&mut self, index: usize) {
        let listener = &mut self.listeners[index];
        let Some(socket) = listener.socket.take() else {
            return;
        };
        // Stop listening now: the socket itself lives on until the kernel has finished
        // cancelling its accept request (milliseconds), and until then it would still complete
        // handshakes that nobody accepts.
        self.io.kernel.stop_listening(&socket);
        if listener.armed {
            self.cancel_accept(index, K::raw(&socket));
        }
        self.io.closing.push(socket);
    }

    /// Counts a connection accepted by one of `group`'s listeners: the namespace its upstream is
    /// made in.
    pub(super) fn group_accepted(&mut self, group: GroupId) -> Option<NetnsId> {
        let entry = self.groups.get_mut(&group)?;
        entry.accepted += 1;
        entry.active += 1;
        self.groups_dirty = true;
        entry.netns
    }

    pub(super) fn group_released(&mut self, group: GroupId, core: &Connection) {
        let Some(entry) = self.groups.get_mut(&group) else {
            return;
        };
        debug_assert!(entry.active > 0, "a group's connection released twice");
        entry.active = entry.active.saturating_sub(1);
        entry.bytes_up += core.bytes(Dir::ClientToUpstream);
        entry.bytes_down += core.bytes(Dir::UpstreamToClient);
        self.groups_dirty = true;
    }

    /// A removed group's drain deadline: what is still open is reset, and the group forgotten.
    pub(super) fn group_drain_ends(&mut self, now: Instant, group: GroupId) {
        let slots: Vec<usize> = self
            .conns
            .slots()
            .filter(|&slot| self.conns[slot].group == Some(group))
            .collect();
        let reset = slots.len() as u64;
        for slot in slots {
            self.conns[slot].core.abort_for_drain(now, &mut self.stats);
            self.drive(now, slot);
        }
        if let Some(entry) = self.groups.get_mut(&group) {
            entry.drain_reset += reset;
            if reset > 0 {
                tracing::info!(shard = self.setup.id, group = %entry.name, reset,
                    "drain timeout: the removed group's open connections were reset");
            }
        }
        // An aborted connection closes in its drive: none of the group's is left.
        debug_assert!(
            self.conns
                .slots()
                .all(|slot| self.conns[slot].group != Some(group)),
            "a removed group's connection outlived its drain"
        );
        // Published one last time as removed (its final counts), then gone.
        self.publish_groups(None);
        self.groups.remove(&group);
        self.publish_groups(None);
    }

    /// Publishes the groups' counters (at most every [`GROUPS_PUBLISH_EVERY`] when `now` is
    /// given; at once when it is not: a group came or went).
    pub(super) fn publish_groups(&mut self, now: Option<Instant>) {
        if let Some(now) = now {
            if !self.groups_dirty {
                return;
            }
            if let Some(at) = self.groups_published_at
                && now < at + GROUPS_PUBLISH_EVERY
            {
                // Not lost if the shard goes quiet: a timer publishes them.
                if !self.groups_publish_pending {
                    self.groups_publish_pending = true;
                    self.timers
                        .push(at + GROUPS_PUBLISH_EVERY, TimerKey::GroupsPublish);
                }
                return;
            }
            self.groups_published_at = Some(now);
        }
        self.groups_dirty = false;
        let reports: Vec<GroupReport> = self
            .groups
            .iter()
            .map(|(&group, g)| GroupReport {
                group,
                kind: g.kind,
                name: Arc::clone(&g.name),
                accepted: g.accepted,
                active: g.active,
                bytes_up: g.bytes_up,
                bytes_down: g.bytes_down,
                drain_reset: g.drain_reset,
                removed: g.removed,
            })
            .collect();
        self.setup.reporter.publish_groups(&reports);
    }
}
