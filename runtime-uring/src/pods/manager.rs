//! The pod manager: a control thread that serves the pod interface ([`super::protocol`]). Adding
//! a pod enters its network namespace, opens one `SO_REUSEPORT` listening socket per shard for
//! every bound listener of the config, installs the pod's capture rules there, comes back, and
//! hands each shard its sockets. Removing a pod stops its sockets at once (the shards drain its
//! connections) and takes its rules out.
//!
//! Never on a shard: entering namespaces and running iptables take milliseconds.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, accept4, bind, listen, socket,
};
use origdst_core::config::Config;
use origdst_engine::listeners::{
    GroupAdd, GroupId, GroupKind, HandedSocket, ListenerChange, NetnsId,
};
use origdst_rules::Spec;

use super::netns::NetnsRegistry;
use super::protocol::{self, Request};
use crate::observed::Observed;
use crate::shard::ShardControl;
use crate::sys;

/// In-pod mode's settings.
#[derive(Debug, Clone)]
pub struct InPodSettings {
    /// Where the pod interface listens (a Unix `SOCK_SEQPACKET` socket, mode 0600).
    pub socket: PathBuf,
    /// Pods served at most at once.
    pub pods_max: usize,
    /// How pods' capture rules are installed.
    pub rules_backend: origdst_rules::Backend,
}

/// Pods served at most by default (a node runs ~110 pods in Kubernetes' default).
pub const PODS_MAX_DEFAULT: usize = 512;
/// The hard ceiling on `--pods-max`: each pod holds (listening addresses × shards) descriptors.
pub const PODS_MAX_LIMIT: usize = 8192;

/// What the pod manager shows in `/metrics`.
#[derive(Debug, Default)]
pub struct PodGauges {
    /// Pods served now.
    pub pods: AtomicU64,
    /// Listening sockets the pods hold now (over every shard).
    pub listeners: AtomicU64,
    /// Pods added since start.
    pub added: AtomicU64,
    /// Pods removed since start.
    pub removed: AtomicU64,
    /// Requests refused (bad request, limit, a namespace that could not be set up).
    pub refused: AtomicU64,
}

struct Pod {
    group: GroupId,
    netns_id: NetnsId,
    netns: Arc<OwnedFd>,
    /// The rules installed in it (taken out again on removal).
    rules: Spec,
    /// Listening sockets it holds over all shards.
    listeners: u64,
}

/// Starts the pod manager's thread (bound and listening before this returns, so a client may
/// connect as soon as origdst says it started).
pub(crate) fn start(
    settings: InPodSettings,
    observed: Arc<Observed>,
    controls: Vec<Arc<ShardControl>>,
    registry: Arc<NetnsRegistry>,
    gauges: Arc<PodGauges>,
) -> Result<(), String> {
    let listening = bind_socket(&settings.socket)
        .map_err(|err| format!("pod interface {}: {err}", settings.socket.display()))?;
    let mut manager = Manager {
        settings,
        observed,
        controls,
        registry,
        gauges,
        pods: BTreeMap::new(),
        next_id: 1,
        cleanups: Vec::new(),
    };
    std::thread::Builder::new()
        .name("origdst-pods".into())
        .spawn(move || manager.serve(&listening))
        .map_err(|err| format!("pod manager thread: {err}"))?;
    Ok(())
}

fn bind_socket(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    // A socket left by an earlier run is replaced; anything else at the path is not ours.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::other("exists and is not a socket"));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let socket = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(socket.as_raw_fd(), &UnixAddr::new(path)?)?;
    // Adding a pod installs rules in its namespace: only root (the node agent) may ask.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listen(&socket, Backlog::new(16).map_err(io::Error::from)?)?;
    Ok(socket)
}

struct Manager {
    settings: InPodSettings,
    observed: Arc<Observed>,
    controls: Vec<Arc<ShardControl>>,
    registry: Arc<NetnsRegistry>,
    gauges: Arc<PodGauges>,
    pods: BTreeMap<String, Pod>,
    next_id: u32,
    /// Removed pods whose rules are still to be taken out.
    cleanups: Vec<Cleanup>,
}

/// How long a client may stay silent before it is closed (one client at a time is served: a
/// stuck one must not hold the interface; a node agent reconnects).
const CLIENT_IDLE: Duration = Duration::from_secs(10);
/// How often removed pods' rules are looked at (and a silent client's clock advances).
const CLEANUP_EVERY: Duration = Duration::from_millis(100);
/// Past a removed pod's drain deadline, when its rules go whatever the shards published.
const CLEANUP_MARGIN: Duration = Duration::from_secs(1);

/// A removed pod's rules, detached, to take out once its connections are done.
struct Cleanup {
    name: String,
    group: GroupId,
    netns: Arc<OwnedFd>,
    rules: Spec,
    deadline: std::time::Instant,
}

/// Whether `fd` became readable within `timeout`.
fn wait_readable(fd: &OwnedFd, timeout: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
}

impl Manager {
    fn serve(&mut self, listening: &OwnedFd) {
        loop {
            if !wait_readable(listening, CLEANUP_EVERY) {
                self.clean_up(false);
                continue;
            }
            let client = match accept4(listening.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a fresh descriptor nothing else owns.
                Ok(fd) => unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) },
                Err(err) => {
                    tracing::warn!(error = %err, "pod interface: accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            self.converse(&client);
        }
    }

    /// Serves one client until it hangs up or stays silent for [`CLIENT_IDLE`] (one client at a
    /// time: a stuck one must not hold the interface).
    fn converse(&mut self, client: &OwnedFd) {
        let mut silent = Duration::ZERO;
        loop {
            if !wait_readable(client, CLEANUP_EVERY) {
                self.clean_up(false);
                silent += CLEANUP_EVERY;
                if silent >= CLIENT_IDLE {
                    tracing::debug!("pod interface: client silent for {CLIENT_IDLE:?}; closed");
                    return;
                }
                continue;
            }
            silent = Duration::ZERO;
            let received = match protocol::receive(client) {
                Ok(Some(received)) => received,
                Ok(None) => return,
                Err(err) => {
                    tracing::debug!(error = %err, "pod interface: client dropped");
                    return;
                }
            };
            let answer = match self.handle(received) {
                Ok(text) => format!("OK{text}"),
                Err(why) => {
                    self.gauges.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("pod interface: refused: {why}");
                    format!("ERR {why}")
                }
            };
            let mut bytes = answer.into_bytes();
            bytes.truncate(protocol::ANSWER_BYTES_MAX);
            if nix::unistd::write(client, &bytes).is_err() {
                return;
            }
        }
    }

    /// Takes out the rules of removed pods whose connections are all closed (or whose drain
    /// deadline passed; `all`: every one now).
    fn clean_up(&mut self, all: bool) {
        if self.cleanups.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let reports: Vec<_> = self
            .observed
            .rows
            .iter()
            .flat_map(|row| row.groups())
            .collect();
        let drained = |group: GroupId| {
            reports
                .iter()
                .filter(|r| r.group == group)
                .all(|r| r.removed && r.active == 0)
        };
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.cleanups)
            .into_iter()
            .partition(|c| all || now >= c.deadline || drained(c.group));
        self.cleanups = waiting;
        for cleanup in due {
            let removed = self
                .registry
                .run_in(&cleanup.netns, || {
                    crate::interception::execute(&origdst_rules::drop_detached(&cleanup.rules))
                        .or_else(|_| {
                            crate::interception::execute(&origdst_rules::remove(&cleanup.rules))
                        })
                })
                .map_err(|err| err.to_string())
                .and_then(|r| r);
            match removed {
                Ok(()) => tracing::debug!(pod = %cleanup.name, "the removed pod's rules are gone"),
                Err(err) => {
                    tracing::warn!(pod = %cleanup.name, "taking the pod's capture rules out failed: {err}");
                }
            }
        }
    }

    fn handle(&mut self, received: protocol::Received) -> Result<String, String> {
        if received.truncated {
            return Err(format!(
                "the request is longer than {} bytes or carries more than one descriptor",
                protocol::REQUEST_BYTES_MAX
            ));
        }
        let request = protocol::parse(&received.bytes)?;
        let mut fds = received.fds;
        match request {
            Request::Add(name) => {
                if fds.len() != 1 {
                    return Err(format!(
                        "ADD {name}: needs exactly one descriptor (the pod's network namespace), got {}",
                        fds.len()
                    ));
                }
                let netns = fds.remove(0);
                self.add(&name, netns).map(|()| String::new())
            }
            Request::Del(name) => {
                if !fds.is_empty() {
                    return Err(format!("DEL {name}: takes no descriptor"));
                }
                self.remove(&name).map(|()| String::new())
            }
            Request::List => {
                let mut out = format!(" {}", self.pods.len());
                for name in self.pods.keys() {
                    out.push('\n');
                    out.push_str(name);
                }
                Ok(out)
            }
        }
    }

    fn add(&mut self, name: &str, netns: OwnedFd) -> Result<(), String> {
        if self.observed.draining.load(Ordering::Relaxed) {
            return Err(format!("ADD {name}: origdst is draining"));
        }
        if self.pods.contains_key(name) {
            return Err(format!("ADD {name}: the pod is already served"));
        }
        if same_namespace(&netns, self.registry.home())? {
            return Err(format!(
                "ADD {name}: the descriptor is origdst's own network namespace, not a pod's"
            ));
        }
        if self.pods.len() >= self.settings.pods_max {
            return Err(format!(
                "ADD {name}: {} pods are served, the limit (--pods-max)",
                self.pods.len()
            ));
        }
        let config = Arc::clone(
            &self
                .observed
                .config
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .config,
        );
        let spec = pod_spec(&config, self.settings.rules_backend)?;
        let shards = self.controls.len();
        let netns = Arc::new(netns);
        // In the pod: its sockets first (so connections its rules capture find a backlog), then
        // its rules.
        let made = self
            .registry
            .run_in(&netns, || -> Result<Vec<Vec<(OwnedFd, usize)>>, String> {
                let sockets = listen_in_pod(&config, shards)?;
                // A pod origdst never served gets its rules in one transaction per family; one
                // that holds rules already (an earlier origdst's: they stay when it stops) gets
                // the converging apply.
                let commands = if holds_our_rules(&spec) {
                    origdst_rules::apply(&spec)
                } else {
                    origdst_rules::apply_fresh(&spec)
                };
                crate::interception::execute(&commands)
                    .map_err(|err| format!("installing its capture rules: {err}"))?;
                Ok(sockets)
            })
            .map_err(|err| {
                format!("ADD {name}: entering its network namespace: {err} (is the descriptor a network namespace?)")
            })?
            .map_err(|err| format!("ADD {name}: {err}"))?;
        let group = GroupId(self.next_id);
        let netns_id = NetnsId(self.next_id);
        self.next_id += 1;
        self.registry.insert(netns_id, Arc::clone(&netns));
        let listeners: u64 = made.iter().map(|s| s.len() as u64).sum();
        let pod_name: Arc<str> = Arc::from(name);
        for (control, sockets) in self.controls.iter().zip(made) {
            let sockets = sockets
                .into_iter()
                .map(|(fd, config_index)| HandedSocket {
                    fd: fd.into_raw_fd(),
                    listener: Arc::from(config.listeners[config_index].name.as_str()),
                })
                .collect();
            control.change_listeners(ListenerChange::Add(GroupAdd {
                group,
                kind: GroupKind::Pod,
                name: Arc::clone(&pod_name),
                sockets,
                netns: Some(netns_id),
            }));
        }
        self.pods.insert(
            name.to_string(),
            Pod {
                group,
                netns_id,
                netns,
                rules: spec,
                listeners,
            },
        );
        self.gauges.pods.fetch_add(1, Ordering::Relaxed);
        self.gauges
            .listeners
            .fetch_add(listeners, Ordering::Relaxed);
        self.gauges.added.fetch_add(1, Ordering::Relaxed);
        tracing::info!(pod = name, listeners, "pod added");
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), String> {
        let pod = self
            .pods
            .remove(name)
            .ok_or_else(|| format!("DEL {name}: no such pod"))?;
        // Its rules stop capturing first: from now on its new connections go where they were
        // dialled. Only then do its listeners stop (the other order would refuse whatever the
        // rules still redirect in between). The rules themselves stay until its connections are
        // done: the kernel translates a redirected connection only while a NAT rule exists.
        let detached = self
            .registry
            .run_in(&pod.netns, || {
                crate::interception::execute(&origdst_rules::detach(&pod.rules))
            })
            .map_err(|err| err.to_string())
            .and_then(|r| r);
        if let Err(err) = detached {
            tracing::warn!(
                pod = name,
                "detaching the pod's capture rules failed: {err}"
            );
        }
        let drain = self.observed.running().config.knobs.drain_timeout;
        self.cleanups.push(Cleanup {
            name: name.to_string(),
            group: pod.group,
            netns: Arc::clone(&pod.netns),
            rules: pod.rules.clone(),
            deadline: std::time::Instant::now() + drain + CLEANUP_MARGIN,
        });
        for control in &self.controls {
            control.change_listeners(ListenerChange::Remove(pod.group));
        }
        self.registry.remove(pod.netns_id);
        self.gauges.pods.fetch_sub(1, Ordering::Relaxed);
        self.gauges
            .listeners
            .fetch_sub(pod.listeners, Ordering::Relaxed);
        self.gauges.removed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(pod = name, "pod removed; its connections drain");
        Ok(())
    }
}

/// The capture rules a pod gets: its own connections (outbound) and, when the config has an
/// inbound listener, what arrives for it, redirected to origdst's listeners in the pod; origdst's
/// own upstream connections (made in the pod, carrying its mark) are left alone.
pub(crate) fn pod_spec(config: &Config, backend: origdst_rules::Backend) -> Result<Spec, String> {
    let Some(mark) = config.knobs.upstream_mark else {
        return Err(
            "in-pod mode needs origdst.upstream_mark: a pod's rules tell origdst's own \
             connections from the pod's by it"
                .into(),
        );
    };
    let defaults = Spec::default();
    let inbound = match crate::interception::listener_on(config, defaults.inbound_port) {
        Some(listener) if listener.transparent => {
            return Err(format!(
                "listener {:?} is transparent: in-pod mode captures with REDIRECT only",
                listener.name
            ));
        }
        Some(_) => origdst_rules::Inbound::Redirect,
        None => origdst_rules::Inbound::None,
    };
    let spec = Spec {
        backend,
        inbound,
        proxy_uids: Vec::new(),
        proxy_mark: Some(mark),
        inbound_source: crate::interception::inbound_source(config, defaults.inbound_port),
        ..defaults
    };
    spec.validate().map_err(|err| format!("pod rules: {err}"))?;
    crate::interception::check_ports(&spec, config, "the config")?;
    Ok(spec)
}

/// Whether the calling thread's namespace holds any of origdst's rules (or cannot tell).
fn holds_our_rules(spec: &Spec) -> bool {
    let save = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    match spec.backend {
        // `nft -f` replaces the table whole either way.
        origdst_rules::Backend::Nftables => false,
        origdst_rules::Backend::Iptables => {
            let mut tools = Vec::new();
            if spec.ipv4 {
                tools.push("iptables-save");
            }
            if spec.ipv6 {
                tools.push("ip6tables-save");
            }
            tools
                .into_iter()
                .any(|tool| save(tool, &["-t", "nat"]).is_none_or(|text| text.contains("ORIGDST")))
        }
    }
}

/// One listening socket per shard for every address of every bound listener, made in the
/// calling thread's namespace (the pod's): `[shard][socket]`.
fn listen_in_pod(config: &Config, shards: usize) -> Result<Vec<Vec<(OwnedFd, usize)>>, String> {
    let mut per_shard: Vec<Vec<(OwnedFd, usize)>> = (0..shards).map(|_| Vec::new()).collect();
    for (config_index, listener) in config.listeners.iter().enumerate() {
        if !listener.is_bound() {
            continue;
        }
        for &addr in listener.socket_addresses() {
            for sockets in &mut per_shard {
                let socket = sys::listener(addr, false, listener.freebind, POD_LISTEN_BACKLOG)
                    .map_err(|err| {
                        format!(
                            "listener {:?}: cannot listen on {addr} in the pod: {err}",
                            listener.name
                        )
                    })?;
                sockets.push((socket.into(), config_index));
            }
        }
    }
    Ok(per_shard)
}

/// A pod's connections are one workload's: a smaller backlog than the host listeners'.
const POD_LISTEN_BACKLOG: i32 = 1024;

/// Whether two namespace descriptors name the same namespace (same inode on nsfs).
fn same_namespace(a: &impl AsFd, b: &impl AsFd) -> Result<bool, String> {
    let stat = |fd: &dyn AsFd| {
        nix::sys::stat::fstat(fd.as_fd()).map_err(|err| format!("fstat of a namespace: {err}"))
    };
    let (a, b) = (stat(a)?, stat(b)?);
    Ok(a.st_dev == b.st_dev && a.st_ino == b.st_ino)
}
