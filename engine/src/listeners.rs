//! Listening sockets that come and go while the shard runs: a *group* (one pod's sockets in
//! in-pod mode) is added with its sockets and removed as a whole. Removing a group stops its
//! sockets accepting at once; its open connections drain until `drain_timeout`, then are reset.
//!
//! The supervisor hands the changes to the shard through [`crate::report::Control`]; the shard
//! applies them on its next turn (`shard::listeners`).

use std::sync::Arc;

/// A group of listening sockets added at run time, named by the runtime (a pod, in in-pod mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u32);

/// The network namespace a group's upstream sockets are made in. The number means something only
/// to the runtime (which keeps the namespace's descriptor); the engine passes it back to
/// [`crate::kernel::Kernel::connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetnsId(pub u32);

/// A listening socket handed to the shard: its descriptor (the shard owns it from now on) and the
/// listener of the config it serves, by name — found in whatever config the shard runs when the
/// socket arrives (a reload in between may have moved it; a position would then name another).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedSocket {
    /// The listening descriptor, its own `SO_REUSEPORT` member for this shard.
    pub fd: i32,
    /// The listener's name.
    pub listener: Arc<str>,
}

/// What a group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// A pod's listening sockets (in-pod mode): counted as the pod's.
    Pod,
    /// One listener of the config (its sockets on this shard): added and removed by a reload.
    Listener,
}

/// A group to start serving.
#[derive(Debug, Clone)]
pub struct GroupAdd {
    /// Its number (unique for the life of the process).
    pub group: GroupId,
    /// A pod's or a listener's.
    pub kind: GroupKind,
    /// Its name in logs, the access log and metrics (the pod's).
    pub name: Arc<str>,
    /// Its listening sockets for this shard.
    pub sockets: Vec<HandedSocket>,
    /// Where its connections' upstream sockets are made (`None`: the shard's own namespace).
    pub netns: Option<NetnsId>,
}

/// A change to the shard's listening sockets.
#[derive(Debug, Clone)]
pub enum ListenerChange {
    /// Start accepting on a new group's sockets.
    Add(GroupAdd),
    /// Stop accepting on a group's sockets now; its connections drain, then are reset.
    Remove(GroupId),
}

/// Listening sockets one shard holds at most (a limit on everything: the runtime bounds pods
/// far below this; the shard refuses a group past it rather than grow without end).
pub const LISTENERS_PER_SHARD_MAX: usize = 1 << 16;

/// A new config for new connections, with the listeners it removes and adds (their sockets
/// bound already): applied in that order — the removed stop, the config is swapped (listeners
/// that stay are found in it by name), the added start.
#[derive(Debug, Clone)]
pub struct Reload {
    /// The config.
    pub config: Arc<origdst_core::config::Config>,
    /// Listener groups to stop (their connections drain).
    pub removed: Vec<GroupId>,
    /// Listener groups to start (their listeners are `config`'s).
    pub added: Vec<GroupAdd>,
}

/// One group's connections, as the shard publishes them (per-pod and per-listener counters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupReport {
    /// The group.
    pub group: GroupId,
    /// A pod's or a listener's.
    pub kind: GroupKind,
    /// Its name.
    pub name: Arc<str>,
    /// Connections it accepted since it was added.
    pub accepted: u64,
    /// Connections of it open now.
    pub active: u64,
    /// Bytes relayed client → upstream by its closed connections.
    pub bytes_up: u64,
    /// Bytes relayed upstream → client by its closed connections.
    pub bytes_down: u64,
    /// Its connections reset at the end of its drain.
    pub drain_reset: u64,
    /// Removed: draining (or drained).
    pub removed: bool,
}

/// What makes a bound listener the same one across a reload (its addresses and socket options:
/// a listener whose binding changed is removed and added again).
pub type Binding = (Vec<std::net::SocketAddr>, bool, bool);

/// Each bound listener of `config` (by name) with its binding.
pub fn bound(config: &origdst_core::config::Config) -> std::collections::BTreeMap<&str, Binding> {
    config
        .listeners
        .iter()
        .filter(|l| l.is_bound())
        .map(|l| {
            (
                l.name.as_str(),
                (l.socket_addresses().to_vec(), l.transparent, l.freebind),
            )
        })
        .collect()
}

/// The bound listeners `new` removes and adds against `old`, by name: what a reload (a SIGHUP,
/// a control-plane push) stops and starts.
pub fn diff(
    old: &origdst_core::config::Config,
    new: &origdst_core::config::Config,
) -> (Vec<String>, Vec<String>) {
    let (before, after) = (bound(old), bound(new));
    let removed = before
        .iter()
        .filter(|(name, binding)| after.get(*name) != Some(binding))
        .map(|(name, _)| (*name).to_string())
        .collect();
    let added = after
        .iter()
        .filter(|(name, binding)| before.get(*name) != Some(binding))
        .map(|(name, _)| (*name).to_string())
        .collect();
    (removed, added)
}
