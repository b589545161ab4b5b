//! One shard: its listeners, connections, timers, pools and counters, driven by the completions
//! of a [`Kernel`]. Nothing here calls the kernel except through that trait, so the same code runs
//! on io_uring, on epoll and in the simulator.
//!
//! A turn: deferred work (inner connections to start, resets crossing internal pairs), directions
//! ready to pump, due timers; then publish the counters and wait for completions, each routed by
//! its token to a listener, the wake-up descriptor, or a connection (if its generation is still
//! the slot's: [`Slots`]).

mod accept;
mod connect;
mod control;
mod dispatch;
mod groups;
mod pairs;
mod release;
mod timing;

pub mod conn;
pub mod internal;
pub mod io;
pub mod relayed;
pub mod splice;

use std::collections::VecDeque;
use std::io as stdio;
use std::sync::Arc;
use std::time::Duration;

use origdst_core::config::{Config, DataPath};
use origdst_core::connection::{Action, Connection};
use origdst_core::orig_dst::SelfAddrs;
use origdst_core::outcome::IoErrorKind;
use origdst_core::relay::{Dir, Side};
use origdst_core::route::Balancer;
use origdst_core::stats::{Counter, Counters};
use origdst_core::time::Instant;

use self::conn::{ConnIo, Watch};
use self::io::Io;
use crate::kernel::Kernel;
use crate::listeners::{GroupId, GroupKind};
use crate::log_budget::LogBudget;
use crate::own_upstreams::OwnUpstreams;
use crate::report::{AccessLog, Control, Reporter};
use crate::slots::{DirKey, SlotKey, Slots};
use crate::timers::Timers;

/// Why a shard stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// Holding a descriptor in reserve failed at start-up.
    #[error("reserving a spare descriptor: {0}")]
    Reserve(stdio::Error),
    /// Waiting for completions failed in a way the shard cannot recover from.
    #[error("waiting for events failed: {0}")]
    Wait(stdio::Error),
}

/// Everything a shard needs besides its kernel and listening sockets.
pub struct ShardSetup {
    /// The shard's number (logs, access log).
    pub id: usize,
    /// The config new connections use (replaced on reload).
    pub config: Arc<Config>,
    /// The data path directions use (the kernel may offer a native one for it).
    pub data_path: DataPath,
    /// The process's own addresses, for loop checks.
    pub me: Arc<SelfAddrs>,
    /// Drain, abort and reload requests from the supervisor.
    pub control: Arc<dyn Control>,
    /// Where counters and gauges are published.
    pub reporter: Box<dyn Reporter>,
    /// Pipe capacity this shard may hold.
    pub pipe_budget_bytes: u64,
    /// Copy buffers this shard may hold at once (a splice direction without a pipe, or the
    /// readiness copy path): [`io::FALLBACK_BUFFERS_MAX`] in production; a test sets a few to
    /// make directions wait for one.
    pub fallback_buffers: u32,
    /// Every shard's upstream sockets, for loop detection.
    pub own_upstreams: Arc<OwnUpstreams>,
    /// Where finished connections are logged, if anywhere.
    pub access_log: Option<Box<dyn AccessLog>>,
}

/// A listening socket of the shard and the listener it belongs to.
pub struct Listening<S> {
    /// The socket (its own `SO_REUSEPORT` member).
    pub socket: S,
    /// Index into `config.listeners`.
    pub config_index: usize,
    /// The listener's group, so a reload can remove it (and its connections drain); `None`: it
    /// stays for the life of the shard.
    pub group: Option<GroupId>,
}

/// A listener entry whose listener a reload took out of the config: an accept that still
/// completes on it is reset (it has no config to be routed by).
const GONE: usize = usize::MAX;

struct ListenerIo<S> {
    /// `None` once it stopped (drain, its group removed).
    socket: Option<S>,
    /// Index into `config.listeners`.
    config_index: usize,
    /// A multishot accept is in flight (its last completion, without MORE, not yet seen).
    armed: bool,
    /// Bumped each time the entry is reused for another socket: an accept completion carries
    /// the generation it was armed with, so a late one cannot be taken for the new socket's.
    generation: u16,
    /// The group it was added with at run time (`None`: one of the config's, bound at start).
    group: Option<GroupId>,
}

impl<S> ListenerIo<S> {
    /// Free for another socket: stopped, and the kernel holds no accept of it any more.
    fn vacant(&self) -> bool {
        self.socket.is_none() && !self.armed
    }
}

/// An accepted connection waiting for a descriptor for its upstream socket.
struct FdWaiter {
    slot: usize,
    generation: u16,
    upstream: std::net::SocketAddr,
    mark: Option<u32>,
    source: Option<origdst_core::config::Source>,
    record: Option<origdst_core::orig_dst::RedirectRecord>,
}

/// A shard. Field order matters: `io` (and with it the kernel's ring) is dropped before anything
/// it references.
pub struct Shard<K: Kernel> {
    io: Io<K>,
    setup: ShardSetup,
    listeners: Vec<ListenerIo<K::Socket>>,
    conns: Slots<ConnIo<K>>,
    timers: Timers,
    stats: Counters,
    draining: bool,
    /// Out of descriptors: accepts are cancelled until `spare_fd` can be reopened.
    accepts_paused: bool,
    /// When the pending `AcceptResume` timer fires (one chain at a time).
    resume_at: Option<Instant>,
    /// A descriptor held in reserve: when the upstream socket of an already accepted connection
    /// hits EMFILE, closing this one lets that connection proceed instead of being reset.
    spare_fd: Option<K::Spare>,
    /// Accepted connections whose upstream socket found no descriptor, in arrival order.
    fd_waiters: VecDeque<FdWaiter>,
    completions: Vec<(u64, i32, u32)>,
    /// Scratch for the operations a closing connection cancels.
    cancel_targets: Vec<u64>,
    /// Each listener's name by config index, shared by the access-log records (rebuilt on reload).
    listener_names: Vec<Arc<str>>,
    log_budget: LogBudget,
    /// Round-robin cursors for STATIC clusters (per shard, like Envoy's workers).
    balancer: Balancer,
    /// Resets crossing internal-listener pairs, to deliver from the main loop.
    peer_errors: VecDeque<(usize, u16, Side)>,
    /// Inner connections of internal-listener pairs, to start from the main loop.
    inner_starts: VecDeque<(usize, u16)>,
    /// The data path connections use.
    dir_path: DataPath,
    /// Where request heads are peeked into (header mode): allocated once, never zeroed again.
    peek_scratch: Box<[u8]>,
    /// Groups of listeners added at run time (pods), serving or draining.
    groups: std::collections::BTreeMap<GroupId, groups::GroupIo>,
    /// A group's counters changed since they were last published.
    groups_dirty: bool,
    /// When they were last published.
    groups_published_at: Option<Instant>,
    /// A `GroupsPublish` timer is pending.
    groups_publish_pending: bool,
}

impl<K: Kernel> Shard<K> {
    /// A shard over `kernel` listening on `listening`.
    pub fn new(
        setup: ShardSetup,
        mut kernel: K,
        listening: Vec<Listening<K::Socket>>,
    ) -> Result<Self, ShardError> {
        let knobs = &setup.config.knobs;
        let spare = kernel.reserve_fd().map_err(ShardError::Reserve)?;
        let io = Io::new(
            kernel,
            setup.pipe_budget_bytes,
            knobs.pipe_size_bytes,
            knobs.buffer_size_bytes,
            setup.fallback_buffers,
        );
        let mut groups = std::collections::BTreeMap::new();
        for l in &listening {
            if let Some(group) = l.group {
                let name = Arc::from(setup.config.listeners[l.config_index].name.as_str());
                groups
                    .entry(group)
                    .or_insert_with(|| groups::GroupIo::new(name, GroupKind::Listener, None));
            }
        }
        let listeners = listening
            .into_iter()
            .map(|l| ListenerIo {
                socket: Some(l.socket),
                config_index: l.config_index,
                armed: false,
                generation: 0,
                group: l.group,
            })
            .collect();
        let listener_names = listener_names(&setup.config);
        let dir_path = setup.data_path;
        Ok(Self {
            io,
            setup,
            listeners,
            conns: Slots::default(),
            timers: Timers::default(),
            stats: Counters::default(),
            draining: false,
            accepts_paused: false,
            resume_at: None,
            spare_fd: Some(spare),
            fd_waiters: VecDeque::new(),
            completions: Vec::with_capacity(1024),
            cancel_targets: Vec::new(),
            listener_names,
            log_budget: LogBudget::default(),
            balancer: Balancer::default(),
            peer_errors: VecDeque::new(),
            inner_starts: VecDeque::new(),
            dir_path,
            peek_scratch: vec![0; PEEK_SCRATCH_BYTES].into_boxed_slice(),
            groups,
            groups_dirty: false,
            groups_published_at: None,
            groups_publish_pending: false,
        })
    }

    /// Runs until drained. Returns an error only for a kernel failure it cannot recover from.
    pub fn run(mut self) -> Result<(), ShardError> {
        for index in 0..self.listeners.len() {
            self.arm_accept(index);
        }
        self.arm_wake();
        loop {
            let now = self.now();
            self.flush_deferred(now);
            self.run_ready(now);
            self.flush_deferred(now);
            self.fire_timers(now);
            self.flush_deferred(now);
            if self.draining && self.conns.is_empty() {
                break;
            }
            self.schedule_later();
            self.publish();
            self.wait()?;
            let now = self.now();
            self.handle_completions(now);
        }
        self.publish();
        if self.groups_dirty {
            // The final counts, past the rate limit.
            self.publish_groups(None);
        }
        // Submit the final cancels before the descriptors they name are closed.
        self.io.kernel.submit();
        self.io.closing.clear();
        tracing::debug!(shard = self.setup.id, "shard stopped");
        Ok(())
    }

    pub(super) fn now(&self) -> Instant {
        self.io.kernel.now()
    }

    pub(super) fn wait(&mut self) -> Result<(), ShardError> {
        let want = usize::from(
            self.io.ready.is_empty() && self.peer_errors.is_empty() && self.inner_starts.is_empty(),
        );
        if want > 0 && !self.io.closing.is_empty() {
            // About to block: close now what is waiting to be closed, or a reset would wait in a
            // closing descriptor for the next event.
            self.io.kernel.submit();
            self.close_submitted();
        }
        let timeout = self.timers.next().map(|at| at - self.now());
        let result = self.io.kernel.wait(want, timeout);
        self.close_submitted();
        result.map_err(ShardError::Wait)
    }

    pub(super) fn close_submitted(&mut self) {
        if !self.io.kernel.has_backlog() {
            self.io.closing.clear();
        }
    }

    pub(super) fn insert_conn(&mut self, core: Connection, client: Option<K::Socket>) -> usize {
        let path = self.dir_path;
        let kernel = &self.io.kernel;
        self.conns
            .insert_with(|key| ConnIo::new(kernel, core, key.generation, client, path))
            .slot
    }

    pub(super) fn drive(&mut self, now: Instant, slot: usize) {
        loop {
            let conn = &mut self.conns[slot];
            let Some(action) = conn.core.poll_action() else {
                break;
            };
            match action {
                Action::Connect {
                    upstream,
                    mark,
                    source,
                    record,
                } => {
                    self.start_connect(now, slot, upstream.get(), mark, source, record);
                }
                Action::ConnectInternal { listener, handoff } => {
                    self.connect_internal(now, slot, listener, *handoff);
                }
                Action::PeekHead { have, max } => self.start_peek(slot, have, max),
                Action::Transfer { dir } => {
                    match conn.try_relay(&mut self.io, self.dir_path) {
                        Some(true) => self.stats.incr(Counter::KernelRelayCx),
                        Some(false) => self.stats.incr(Counter::KernelRelayRefused),
                        None => {}
                    }
                    let key = DirKey {
                        slot,
                        generation: conn.generation,
                        dir,
                    };
                    let fds = conn.fds(dir);
                    let progress = conn.dirs[dir.index()].start(&mut self.io, fds, key);
                    self.feed(now, slot, dir, progress);
                }
                Action::ShutdownWrite { side } => match conn.internal(side) {
                    Some(pair) => {
                        // The internal end's write half: EOF for the other connection once it
                        // has consumed what is queued.
                        let which = match side {
                            Side::Upstream => internal::Which::Forward,
                            Side::Client => internal::Which::Backward,
                        };
                        if let Some(pair) = self.io.pairs.get_mut(pair) {
                            let queue = pair.queue(which);
                            queue.eof = true;
                            if let Some(waiting) = queue.take_consumer() {
                                self.io.ready.push_back(waiting);
                            }
                        }
                    }
                    None => {
                        let fd = conn.fd(side).expect("shutdown of a socket that exists");
                        if let Err(kind) = self.io.kernel.shutdown_write(fd) {
                            conn.core.handle_error(now, side, kind, &mut self.stats);
                        }
                    }
                },
                Action::Reset { side } => match conn.internal(side) {
                    Some(pair) => self.reset_peer(pair, side),
                    None => {
                        if let Some(fd) = conn.fd(side) {
                            self.io.kernel.arm_reset(fd);
                        }
                    }
                },
                Action::Close => {
                    self.release(now, slot);
                    return;
                }
            }
        }
        self.arm_watches(slot);
        self.rearm_timer(slot);
    }
}

/// Where a side's watch lives in [`ConnIo::watch`].
const fn watch_index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Upstream => 1,
    }
}

/// The token direction naming a watched side (its source).
const fn watch_dir(side: Side) -> Dir {
    match side {
        Side::Client => Dir::ClientToUpstream,
        Side::Upstream => Dir::UpstreamToClient,
    }
}

fn listener_names(config: &Config) -> Vec<Arc<str>> {
    config
        .listeners
        .iter()
        .map(|l| Arc::from(l.name.as_str()))
        .collect()
}

/// EMFILE (the process's table) or ENFILE (the system's): descriptors, not the peer, failed.
pub fn is_descriptor_exhaustion(errno: i32) -> bool {
    errno == libc::EMFILE || errno == libc::ENFILE
}

/// Maps an I/O error to core's kinds.
pub fn error_kind(err: &stdio::Error) -> IoErrorKind {
    errno_kind(err.raw_os_error().unwrap_or(0))
}

/// Maps a positive errno to core's kinds.
pub fn errno_kind(errno: i32) -> IoErrorKind {
    match errno {
        libc::ECONNREFUSED => IoErrorKind::Refused,
        libc::ECONNRESET | libc::ECONNABORTED => IoErrorKind::Reset,
        libc::ETIMEDOUT => IoErrorKind::TimedOut,
        libc::EHOSTUNREACH | libc::ENETUNREACH => IoErrorKind::Unreachable,
        libc::EPIPE => IoErrorKind::BrokenPipe,
        errno => IoErrorKind::Other { errno },
    }
}

/// `http_head_max_bytes`' upper bound.
const PEEK_SCRATCH_BYTES: usize = 64 * 1024;
/// How long accepting waits after an error, or between tries to resume after EMFILE.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
