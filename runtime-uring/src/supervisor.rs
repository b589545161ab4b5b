//! Start-up, the shard threads, signals, drain and the final tally. The main thread never touches
//! the data path: it spawns shards, waits for signals or shard exits, and reads published counters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, select};
use origdst_core::addr::ListenerAddr;
use origdst_core::config::{Config, DataPath, KnobOverrides, ListenerAddress, limits};
use origdst_core::orig_dst::SelfAddrs;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::access_log::AccessLogWriter;
use crate::admin::Admin;
use crate::observed::{AccessLogCounts, Observed, RunningConfig};
use crate::published::{ShardRow, render};
use crate::shard::{Backend, ShardControl, ShardSetup0 as ShardSetup};
use crate::sys;
use origdst_engine::own_upstreams::OwnUpstreams;

/// Why the engine stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A shard could not start (bind failed, io_uring refused, ...).
    #[error("shard {shard} failed to start: {reason}")]
    Startup {
        /// Which shard.
        shard: usize,
        /// Why.
        reason: String,
    },
    /// A shard stopped with an error or panicked while running.
    #[error("shard {shard} failed: {reason}")]
    ShardFailed {
        /// Which shard.
        shard: usize,
        /// Why.
        reason: String,
    },
    /// Process-level set-up failed.
    #[error("{0}")]
    Setup(String),
}

/// Settings resolved from config and command line.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// The validated config.
    pub config: Config,
    /// Shard count (resolved: never 0).
    pub shards: usize,
    /// The data path.
    pub data_path: DataPath,
    /// Which event source to use.
    pub backend: BackendChoice,
    /// Where the config came from (for SIGHUP and `/config_dump`).
    pub source: ConfigSource,
    /// In-pod mode: pods come and go through the pod interface, and the config's listeners are
    /// opened in each pod, not in the host.
    pub in_pod: Option<crate::pods::InPodSettings>,
}

/// A config's origin.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The file; `None`: the embedded default (SIGHUP has nothing to re-read).
    pub path: Option<std::path::PathBuf>,
    /// The YAML as read.
    pub yaml: String,
    /// Command-line overrides, applied again to every reloaded file.
    pub overrides: KnobOverrides,
}

/// Reads a config file, refusing one over [`limits::CONFIG_BYTES_MAX`] before reading it all.
pub fn read_config_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|err| format!("{}: cannot read: {err}", path.display()))?;
    let mut text = String::new();
    file.take(limits::CONFIG_BYTES_MAX as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|err| format!("{}: cannot read: {err}", path.display()))?;
    if text.len() > limits::CONFIG_BYTES_MAX {
        return Err(format!(
            "{}: the config is larger than the limit of {} bytes",
            path.display(),
            limits::CONFIG_BYTES_MAX
        ));
    }
    Ok(text)
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// io_uring, or epoll when io_uring is refused.
    Auto,
    /// io_uring or fail.
    IoUring,
    /// epoll.
    Epoll,
}

/// Resolves `Auto` by trying io_uring once: a kernel or sandbox that refuses it (EPERM from a
/// seccomp profile or `kernel.io_uring_disabled`, ENOSYS, an opcode missing) gets epoll, and the
/// start-up line says why.
fn choose_backend(choice: BackendChoice) -> (Backend, Option<String>) {
    match choice {
        BackendChoice::IoUring => (Backend::IoUring, None),
        BackendChoice::Epoll => (
            Backend::Epoll,
            Some("requested with --backend epoll".into()),
        ),
        BackendChoice::Auto => match crate::shard::probe_io_uring() {
            Ok(()) => (Backend::IoUring, None),
            Err(why) => (Backend::Epoll, Some(format!("io_uring unavailable: {why}"))),
        },
    }
}

enum ShardEvent {
    Started(usize, Result<(), String>),
    Exited(usize, Result<(), String>),
}

/// Sends `Exited` even when the shard thread unwinds from a panic.
struct ExitGuard {
    shard: usize,
    events: crossbeam_channel::Sender<ShardEvent>,
    result: Option<Result<(), String>>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let result = self
            .result
            .take()
            .unwrap_or_else(|| Err("shard thread panicked".into()));
        let _ = self.events.send(ShardEvent::Exited(self.shard, result));
    }
}

/// Fails start-up, naming the config field, when a configured feature needs a capability this
/// process lacks; otherwise the first connection would find out, and every one after it.
fn check_privileges(config: &Config) -> Result<(), EngineError> {
    let mut needed = Vec::new();
    if config.knobs.upstream_mark.is_some() {
        needed.push("CAP_NET_ADMIN (origdst.upstream_mark)".to_string());
    }
    for listener in config
        .listeners
        .iter()
        .filter(|l| l.transparent && l.is_bound())
    {
        needed.push(format!(
            "CAP_NET_ADMIN or CAP_NET_RAW (listener {:?}: transparent)",
            listener.name
        ));
        sys::check_transparent_allowed().map_err(|err| {
            EngineError::Setup(format!(
                "listener {:?}: transparent: true cannot be set ({err}): IP_TRANSPARENT needs \
                 CAP_NET_ADMIN or CAP_NET_RAW",
                listener.name
            ))
        })?;
    }
    for listener in config.listeners.iter().filter(|l| l.original_src.is_some()) {
        needed.push(format!(
            "CAP_NET_ADMIN (listener {:?}: original_src)",
            listener.name
        ));
    }
    tracing::info!(
        uid = nix::unistd::geteuid().as_raw(),
        capabilities = %sys::effective_net_capabilities(),
        "privileges; this config needs {}",
        if needed.is_empty() {
            "no capability".to_string()
        } else {
            needed.join(", ")
        }
    );
    if let Some(mark) = config.knobs.upstream_mark {
        sys::check_mark_allowed(mark).map_err(|err| {
            EngineError::Setup(format!(
                "origdst.upstream_mark={mark} cannot be set on upstream sockets ({err}): SO_MARK needs \
                 CAP_NET_ADMIN; run with that capability, or set `upstream_mark: null` in the origdst: section"
            ))
        })?;
    }
    for listener in config.listeners.iter().filter(|l| l.original_src.is_some()) {
        let filter = format!(
            "listener {:?}: envoy.filters.listener.original_src",
            listener.name
        );
        if let Some(mark) = listener.original_src_mark {
            sys::check_mark_allowed(mark).map_err(|err| {
                EngineError::Setup(format!(
                    "{filter}: mark {mark} cannot be set ({err}): SO_MARK needs CAP_NET_ADMIN"
                ))
            })?;
        }
        sys::check_transparent_allowed().map_err(|err| {
            EngineError::Setup(format!(
                "{filter}: the upstream socket cannot take the client's address ({err}): \
                 IP_TRANSPARENT needs CAP_NET_ADMIN or CAP_NET_RAW"
            ))
        })?;
    }
    Ok(())
}

/// Runs origdst until SIGTERM/SIGINT and a finished drain. Blocks the calling thread.
pub fn run(settings: EngineSettings) -> Result<(), EngineError> {
    ignore_sigpipe()?;
    raise_nofile_limit();
    check_privileges(&settings.config)?;
    let (backend, backend_reason) = choose_backend(settings.backend);
    let (data_path, relay) = load_relay(settings.data_path);
    let config = Arc::new(settings.config.clone());
    let in_pod = match &settings.in_pod {
        Some(pods) => {
            // Refused now, not at the first pod: a config whose pod rules cannot work.
            crate::pods::manager::pod_spec(&config, pods.rules_backend)
                .map_err(|err| EngineError::Setup(format!("in-pod mode: {err}")))?;
            let registry = crate::pods::netns::NetnsRegistry::new().map_err(|err| {
                EngineError::Setup(format!("in-pod mode: opening our network namespace: {err}"))
            })?;
            Some((
                Arc::new(registry),
                Arc::new(crate::pods::PodGauges::default()),
            ))
        }
        None => None,
    };
    let access_counts = config
        .knobs
        .access_log
        .as_ref()
        .map(|_| Arc::new(AccessLogCounts::default()));
    let access_log = match (&config.knobs.access_log, &access_counts) {
        (Some(log), Some(counts)) => Some(
            AccessLogWriter::start(&log.path, log.sample(), Arc::clone(counts))
                .map_err(EngineError::Setup)?,
        ),
        _ => None,
    };
    let (access_writer, access_sender) = access_log.unzip();
    let rows: Vec<Arc<ShardRow>> = (0..settings.shards)
        .map(|_| Arc::new(ShardRow::default()))
        .collect();
    let observed = Arc::new(Observed {
        rows: rows.clone(),
        backend: backend.name(),
        data_path: data_path_name(backend, data_path),
        started: Default::default(),
        draining: Default::default(),
        reloads_ok: Default::default(),
        reloads_rejected: Default::default(),
        config: std::sync::Mutex::new(Arc::new(RunningConfig {
            config: Arc::clone(&config),
            yaml: settings.source.yaml.clone(),
            path: settings.source.path.clone(),
            generation: 1,
            loaded_at: std::time::SystemTime::now(),
        })),
        access_log: access_counts,
        started_at: std::time::Instant::now(),
        pods: in_pod.as_ref().map(|(_, gauges)| Arc::clone(gauges)),
        xds: config
            .dynamic
            .is_some()
            .then(|| Arc::new(crate::xds_client::XdsGauges::default())),
    });
    let admin = match config.knobs.admin {
        Some(addr) => Some(Admin::start(addr, Arc::clone(&observed)).map_err(|err| {
            EngineError::Setup(format!(
                "{err} (set origdst.admin to another ip:port, or null to turn it off)"
            ))
        })?),
        None => None,
    };
    let me = Arc::new(self_addrs(&config));
    let listener_groups = crate::listener_reload::ListenerGroups::new(&config);
    let origin = std::time::Instant::now();
    let own_upstreams = Arc::new(OwnUpstreams::new());
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (events_tx, events) = crossbeam_channel::unbounded();
    let signals = signal_channel()?;
    let mut controls = Vec::new();
    let mut handles = Vec::new();
    for id in 0..settings.shards {
        let control =
            Arc::new(ShardControl::new().map_err(|e| EngineError::Setup(format!("eventfd: {e}")))?);
        let row = Arc::clone(&rows[id]);
        let setup = ShardSetup {
            id,
            config: Arc::clone(&config),
            data_path,
            backend,
            me: Arc::clone(&me),
            control: Arc::clone(&control),
            row: Arc::clone(&row),
            pipe_budget_bytes: config.knobs.pipe_budget_bytes / settings.shards as u64,
            origin,
            own_upstreams: Arc::clone(&own_upstreams),
            access_log: access_sender.as_ref().map(|s| s.for_shard(id)),
            relay: relay.clone(),
            bind_listeners: in_pod.is_none(),
            listener_groups: listener_groups.snapshot(),
            netns: in_pod.as_ref().map(|(registry, _)| Arc::clone(registry)),
        };
        let core = (config.knobs.pin_shards && !cores.is_empty()).then(|| cores[id % cores.len()]);
        let events = events_tx.clone();
        let handle = thread::Builder::new()
            .name(format!("origdst-shard-{id}"))
            .spawn(move || shard_main(setup, core, events))
            .map_err(|e| EngineError::Setup(format!("spawning shard {id}: {e}")))?;
        controls.push(control);
        handles.push(handle);
    }
    drop(events_tx);
    // The shards hold the only senders now: the writer stops once they are gone.
    drop(access_sender);
    let result = supervise(
        &settings,
        (backend, backend_reason),
        &controls,
        &observed,
        (&events, &signals),
        in_pod.map(|(registry, _)| registry),
        listener_groups,
    );
    for handle in handles {
        let _ = handle.join();
    }
    if let Some(pods) = &settings.in_pod {
        // The pod interface is gone with us: a node agent must not connect to a dead socket.
        // (Pods' rules stay as they are: their traffic fails closed until origdst is back and
        // the agent adds them again, as ztunnel's do.)
        let _ = std::fs::remove_file(&pods.socket);
    }
    if let Some(writer) = access_writer {
        writer.finish();
    }
    drop(admin);
    tracing::info!("final stats: {}", render(&rows));
    result
}

/// kernel-sockmap: loads the in-kernel relay. Where it cannot be loaded (no CAP_BPF, a kernel
/// without sockmap, a build without clang) the shards relay with uring-splice, the path the
/// relay falls back to for single connections anyway, and the log says why; the metrics'
/// `data_path` label names the path that runs.
fn load_relay(data_path: DataPath) -> (DataPath, Option<Arc<crate::sockmap::Loaded>>) {
    if data_path != DataPath::KernelSockmap {
        return (data_path, None);
    }
    match crate::sockmap::Loaded::load() {
        Ok(relay) => {
            tracing::info!("in-kernel relay loaded (BPF sk_skb stream verdict on a SOCKHASH)");
            (data_path, Some(relay))
        }
        Err(err) => {
            tracing::warn!(
                "origdst.data_path=kernel-sockmap: the in-kernel relay is unavailable ({err}); it \
                 needs CAP_BPF and CAP_NET_ADMIN (or root) and a kernel with sockmap — relaying \
                 with uring-splice instead"
            );
            (DataPath::UringSplice, None)
        }
    }
}

/// The data path's name in logs and metrics (the epoll backend has only its readiness pumps).
fn data_path_name(backend: Backend, data_path: DataPath) -> &'static str {
    match (backend, data_path) {
        (Backend::IoUring, path) => path.name(),
        (Backend::Epoll, DataPath::UringSplice | DataPath::UringOpSplice) => "epoll-splice",
        (Backend::Epoll, DataPath::UringCopy) => "epoll-copy",
        (Backend::Epoll, DataPath::KernelSockmap) => "epoll-kernel-sockmap",
    }
}

/// SIGHUP: re-read the config file; if it is valid and changes nothing that needs a restart, new
/// connections use it from each shard's next turn and open ones keep theirs. Otherwise the
/// running config stays, and the log says why.
fn reload(observed: &Observed, controls: &[Arc<ShardControl>], context: &ReloadContext) {
    let running = observed.running();
    let outcome = (|| {
        if running.config.dynamic.is_some() {
            return Err(
                "the listeners and clusters come from the control plane (dynamic_resources): restart to change the bootstrap"
                    .to_string(),
            );
        }
        let path = running
            .path
            .clone()
            .ok_or("running the embedded default config: there is no file to re-read")?;
        let yaml = read_config_file(&path)?;
        let config = Config::from_yaml_with(&yaml, &context.overrides)
            .map_err(|err| format!("{}: {err}", path.display()))?;
        apply_config(observed, controls, context, config, yaml, Some(path))
    })();
    match outcome {
        Ok(Some(generation)) => {
            observed.reloads_ok.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                generation,
                "config reloaded: new connections use it, open connections keep theirs"
            );
        }
        Ok(None) => tracing::warn!("config reload finished after draining began: not applied"),
        Err(why) => {
            observed.reloads_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                generation = running.generation,
                "config reload rejected, the running config is kept: {why}"
            );
        }
    }
}

/// Puts a new validated config in force (a reloaded file, or a control plane's push): checks
/// what it may not change, binds the listeners it adds, hands every shard its reload. The new
/// generation; `None` when a drain began meanwhile (nothing applied); or why not (nothing
/// changed).
pub(crate) fn apply_config(
    observed: &Observed,
    controls: &[Arc<ShardControl>],
    context: &ReloadContext,
    config: Config,
    yaml: String,
    path: Option<std::path::PathBuf>,
) -> Result<Option<u64>, String> {
    // One at a time: a reload and a push must not interleave their listener changes.
    let mut groups = context.groups.lock().unwrap_or_else(|p| p.into_inner());
    let running = observed.running();
    needs_no_restart(&running.config, &config)?;
    check_privileges(&config).map_err(|err| err.to_string())?;
    let (removed, added) = origdst_engine::listeners::diff(&running.config, &config);
    if context.in_pod && !(removed.is_empty() && added.is_empty()) {
        return Err(format!(
            "in-pod mode: the listeners cannot change on reload (each pod holds sockets for them; removed {removed:?}, added {added:?}): that needs a restart"
        ));
    }
    // A drain that began while the config was being read and checked wins: its shards no
    // longer take new connections, and the new config has nothing to give them.
    if observed.draining.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let config = Arc::new(config);
    let reloads = crate::listener_reload::prepare(
        &mut groups,
        &running.config,
        &config,
        controls.len(),
        crate::shard::LISTEN_BACKLOG,
    )?;
    for (control, reload) in controls.iter().zip(reloads) {
        control.reload(reload);
    }
    let generation = running.generation + 1;
    *observed.config.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(RunningConfig {
        config,
        yaml,
        path: path.or_else(|| running.path.clone()),
        generation,
        loaded_at: std::time::SystemTime::now(),
    });
    Ok(Some(generation))
}

/// What the reload thread (and a control plane's pushes) need besides the shards' controls.
pub(crate) struct ReloadContext {
    /// Command-line overrides, applied again to every reloaded file (and pushed config).
    pub(crate) overrides: KnobOverrides,
    /// In-pod mode: pods hold sockets for the config's listeners, which therefore cannot change.
    in_pod: bool,
    /// Each bound listener's group.
    groups: std::sync::Mutex<crate::listener_reload::ListenerGroups>,
}

/// What a reload cannot change: the knobs fixed at start-up (threads, pools, rings). (Listeners
/// can change: see `listener_reload`.)
fn needs_no_restart(old: &Config, new: &Config) -> Result<(), String> {
    let (a, b) = (&old.knobs, &new.knobs);
    let fixed = [
        ("origdst.shards", a.shards == b.shards),
        ("origdst.data_path", a.data_path == b.data_path),
        (
            "origdst.pipe_budget_bytes",
            a.pipe_budget_bytes == b.pipe_budget_bytes,
        ),
        (
            "origdst.pipe_size_bytes",
            a.pipe_size_bytes == b.pipe_size_bytes,
        ),
        (
            "origdst.buffer_size_bytes",
            a.buffer_size_bytes == b.buffer_size_bytes,
        ),
        ("origdst.buffer_count", a.buffer_count == b.buffer_count),
        (
            "origdst.iowq_workers_max",
            a.iowq_workers_max == b.iowq_workers_max,
        ),
        ("origdst.busy_poll", a.busy_poll == b.busy_poll),
        ("origdst.pin_shards", a.pin_shards == b.pin_shards),
        ("origdst.admin", a.admin == b.admin),
        ("origdst.access_log", a.access_log == b.access_log),
        ("origdst.drain_timeout", a.drain_timeout == b.drain_timeout),
        ("origdst.upstream_mark", a.upstream_mark == b.upstream_mark),
    ];
    match fixed.iter().find(|(_, same)| !same) {
        Some((field, _)) => Err(format!("{field} changed: that needs a restart")),
        None => Ok(()),
    }
}

fn shard_main(
    setup: ShardSetup,
    core: Option<core_affinity::CoreId>,
    events: crossbeam_channel::Sender<ShardEvent>,
) {
    let id = setup.id;
    if let Some(core) = core {
        // Pinning is an optimisation; an unpinned shard still works (e.g. restricted cpusets).
        let _ = core_affinity::set_for_current(core);
    }
    let mut guard = ExitGuard {
        shard: id,
        events: events.clone(),
        result: None,
    };
    let shard = match crate::shard::build(setup) {
        Ok(shard) => shard,
        Err(reason) => {
            let _ = events.send(ShardEvent::Started(id, Err(reason.to_string())));
            guard.result = Some(Ok(()));
            return;
        }
    };
    let _ = events.send(ShardEvent::Started(id, Ok(())));
    guard.result = Some(shard.run().map_err(|err| err.to_string()));
}

/// The thread that re-reads the config on SIGHUP, off the signal path. Requests coalesce: one
/// pending at most (a burst of SIGHUPs reads the file once more, not once per signal).
fn reload_thread(
    observed: Arc<Observed>,
    controls: Vec<Arc<ShardControl>>,
    context: Arc<ReloadContext>,
) -> Result<crossbeam_channel::Sender<()>, EngineError> {
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    thread::Builder::new()
        .name("origdst-reload".into())
        .spawn(move || {
            for () in rx {
                reload(&observed, &controls, &context);
            }
        })
        .map_err(|e| EngineError::Setup(format!("reload thread: {e}")))?;
    Ok(tx)
}

fn supervise(
    settings: &EngineSettings,
    backend: (Backend, Option<String>),
    controls: &[Arc<ShardControl>],
    observed: &Arc<Observed>,
    (events, signals): (&Receiver<ShardEvent>, &Receiver<i32>),
    netns: Option<Arc<crate::pods::netns::NetnsRegistry>>,
    groups: crate::listener_reload::ListenerGroups,
) -> Result<(), EngineError> {
    let context = Arc::new(ReloadContext {
        overrides: settings.source.overrides.clone(),
        in_pod: settings.in_pod.is_some(),
        groups: std::sync::Mutex::new(groups),
    });
    let config = &settings.config;
    let rows = &observed.rows;
    let mut started = 0;
    let mut running = settings.shards;
    let mut failure: Option<EngineError> = None;
    while started < settings.shards && failure.is_none() {
        match events.recv() {
            Ok(ShardEvent::Started(_, Ok(()))) => started += 1,
            Ok(ShardEvent::Started(shard, Err(reason))) => {
                running -= 1;
                failure = Some(EngineError::Startup { shard, reason });
            }
            Ok(ShardEvent::Exited(shard, result)) => {
                running -= 1;
                failure = Some(EngineError::ShardFailed {
                    shard,
                    reason: result.err().unwrap_or_default(),
                });
            }
            Err(_) => return Err(EngineError::Setup("every shard thread vanished".into())),
        }
    }
    if let Some(err) = failure {
        controls.iter().for_each(|c| c.abort());
        wait_exits(events, running);
        return Err(err);
    }
    if let (Some(pods), Some(registry), Some(gauges)) =
        (&settings.in_pod, netns, observed.pods.as_ref())
    {
        let started = crate::pods::manager::start(
            pods.clone(),
            Arc::clone(observed),
            controls.to_vec(),
            registry,
            Arc::clone(gauges),
        );
        if let Err(err) = started {
            controls.iter().for_each(|c| c.abort());
            wait_exits(events, running);
            return Err(EngineError::Setup(format!("in-pod mode: {err}")));
        }
    }
    print_startup(settings, config, backend, observed.data_path);
    observed.started.store(true, Ordering::Relaxed);
    if config.dynamic.is_some()
        && let Some(gauges) = observed.xds.as_ref()
        && let Err(err) = crate::xds_client::start(
            Arc::clone(observed),
            controls.to_vec(),
            Arc::clone(&context),
            Arc::clone(gauges),
        )
    {
        controls.iter().for_each(|c| c.abort());
        wait_exits(events, running);
        return Err(EngineError::Setup(format!("xDS: {err}")));
    }
    let reloads = reload_thread(Arc::clone(observed), controls.to_vec(), context)?;
    let mut signalled = false;
    while running > 0 {
        select! {
            recv(signals) -> signal => match signal {
                Ok(SIGUSR1) => tracing::info!("stats: {}", render(rows)),
                // Parsed and checked on the reload thread: a slow file never delays a drain.
                Ok(SIGHUP) if !signalled => {
                    if reloads.try_send(()).is_err() {
                        tracing::info!("SIGHUP while a reload is pending: it will read the file once more");
                    }
                }
                Ok(SIGHUP) => tracing::warn!("SIGHUP while draining: ignored"),
                Ok(signal) if !signalled => {
                    signalled = true;
                    observed.draining.store(true, Ordering::Relaxed);
                    tracing::info!(signal, deadline = ?config.knobs.drain_timeout,
                        "draining: no new connections; open ones may finish until the deadline");
                    controls.iter().for_each(|c| c.drain());
                }
                Ok(_) => {
                    tracing::warn!("second signal: resetting every open connection now");
                    controls.iter().for_each(|c| c.abort());
                }
                Err(_) => {}
            },
            recv(events) -> event => match event {
                Ok(ShardEvent::Exited(shard, result)) => {
                    running -= 1;
                    if let Err(reason) = result {
                        tracing::error!(shard, %reason, "shard failed; stopping the others");
                        controls.iter().for_each(|c| c.abort());
                        failure.get_or_insert(EngineError::ShardFailed { shard, reason });
                    }
                }
                Ok(ShardEvent::Started(..)) => {}
                Err(_) => break,
            },
        }
    }
    if failure.is_none() {
        tracing::info!("drained; exiting");
    }
    failure.map_or(Ok(()), Err)
}

fn wait_exits(events: &Receiver<ShardEvent>, mut running: usize) {
    while running > 0 {
        match events.recv_timeout(Duration::from_secs(30)) {
            Ok(ShardEvent::Exited(..)) => running -= 1,
            Ok(ShardEvent::Started(_, Ok(()))) => {}
            Ok(ShardEvent::Started(_, Err(_))) => running -= 1,
            Err(_) => return,
        }
    }
}

fn print_startup(
    settings: &EngineSettings,
    config: &Config,
    (backend, backend_reason): (Backend, Option<String>),
    data_path: &str,
) {
    let listeners: Vec<String> = config
        .listeners
        .iter()
        .map(|l| {
            let addrs: Vec<String> = match &l.address {
                ListenerAddress::Socket(addrs) => addrs.iter().map(SocketAddr::to_string).collect(),
                ListenerAddress::Internal {
                    server_listener_name,
                } => vec![format!("internal:{server_listener_name}")],
            };
            format!(
                "{}[{}{}{}{}]",
                l.name,
                addrs.join(","),
                if l.transparent { ",transparent" } else { "" },
                if l.use_original_dst {
                    ",use_original_dst"
                } else {
                    ""
                },
                if l.bind_to_port { "" } else { ",hand-off only" },
            )
        })
        .collect();
    let mark = config
        .knobs
        .upstream_mark
        .map_or("off".to_string(), |m| m.to_string());
    if let Some(reason) = backend_reason {
        tracing::warn!("using the epoll backend ({reason})");
    }
    tracing::info!(
        "origdst {} started: backend={} data_path={} shards={}{} listeners={} upstream_mark={}{}",
        env!("CARGO_PKG_VERSION"),
        backend.name(),
        data_path,
        settings.shards,
        if config.knobs.pin_shards {
            " (pinned)"
        } else {
            ""
        },
        listeners.join(" "),
        mark,
        if config.knobs.busy_poll.is_zero() {
            String::new()
        } else {
            format!(" busy_poll={:?}", config.knobs.busy_poll)
        },
    );
    for note in &config.notes {
        tracing::info!("config: {note}");
    }
    if let Some(dynamic) = &config.dynamic {
        tracing::info!(
            xds_cluster = %config.clusters[dynamic.ads_cluster].name,
            cds = dynamic.cds,
            lds = dynamic.lds,
            "dynamic_resources: listeners and clusters from the control plane (ADS, {})",
            if dynamic.delta { "delta" } else { "state of the world" }
        );
    }
    if let Some(pods) = &settings.in_pod {
        tracing::info!(
            socket = %pods.socket.display(),
            pods_max = pods.pods_max,
            "in-pod mode: listeners open in each pod added through the pod interface"
        );
    }
    match config.knobs.admin {
        Some(addr) => tracing::info!(
            "admin endpoint on http://{addr}: /metrics /stats /ready /healthz /config_dump"
        ),
        None => tracing::info!("admin endpoint off (origdst.admin: null)"),
    }
    if let Some(log) = &config.knobs.access_log {
        tracing::info!(
            path = %log.path.display(),
            sample = log.sample(),
            "access log: one JSON line per connection"
        );
    }
}

fn self_addrs(config: &Config) -> SelfAddrs {
    SelfAddrs {
        listeners: config.listen_addrs().map(ListenerAddr::new).collect(),
        local_ips: sys::local_ips(),
        own_mark: config.knobs.upstream_mark,
        admin: config.knobs.admin,
    }
}

fn signal_channel() -> Result<Receiver<i32>, EngineError> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGHUP])
        .map_err(|e| EngineError::Setup(format!("signal handlers: {e}")))?;
    let (tx, rx) = crossbeam_channel::bounded(16);
    thread::Builder::new()
        .name("origdst-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if tx.send(signal).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| EngineError::Setup(format!("signal thread: {e}")))?;
    Ok(rx)
}

/// A peer that resets while we write would otherwise kill the process with SIGPIPE (splice(2) and
/// write(2) have no MSG_NOSIGNAL).
fn ignore_sigpipe() -> Result<(), EngineError> {
    // SAFETY: installing SIG_IGN has no handler code to be unsafe about.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        )
    }
    .map(drop)
    .map_err(|e| EngineError::Setup(format!("ignoring SIGPIPE: {e}")))
}

/// Two descriptors per connection: raise the soft limit to the hard one, as Envoy and HAProxy do.
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok()
    {
        tracing::debug!(from = soft, to = hard, "raised RLIMIT_NOFILE");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_knob_change_needing_a_restart_is_refused_in_one_readable_sentence() {
        let old = Config::default_config();
        // Listeners may change on reload (`listener_reload`); the shard count may not.
        let moved = Config::from_yaml(
            &origdst_core::config::DEFAULT_YAML.replace("port_value: 15001", "port_value: 15002"),
        )
        .unwrap();
        assert_eq!(needs_no_restart(&old, &moved), Ok(()));
        let mut shards = old.clone();
        shards.knobs.shards = std::num::NonZeroU32::new(3);
        let why = needs_no_restart(&old, &shards).unwrap_err();
        assert_eq!(why, "origdst.shards changed: that needs a restart");
        assert!(!why.contains("  "), "a hole of spaces: {why:?}");
        assert_eq!(needs_no_restart(&old, &old.clone()), Ok(()));
    }

    #[test]
    fn oversized_config_files_are_refused_before_they_are_read_whole() {
        let path = std::env::temp_dir().join(format!("origdst-huge-{}.yaml", std::process::id()));
        std::fs::write(&path, vec![b'#'; limits::CONFIG_BYTES_MAX + 10]).unwrap();
        let err = read_config_file(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(
            err.ends_with("is larger than the limit of 4194304 bytes"),
            "{err}"
        );
    }
}
