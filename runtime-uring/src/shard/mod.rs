//! The runtime side of a shard: the io_uring or epoll kernel, the listening sockets, and the
//! process-level plumbing (control eventfd, published counters, access log) the engine's
//! [`origdst_engine::shard::Shard`] is built from. The shard's decisions are the engine's.

pub(crate) mod copy;
pub(crate) mod opsplice;
pub(crate) mod poller;
pub(crate) mod spin;

use std::io as stdio;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use io_uring::{IoUring, opcode};
use nix::sys::eventfd::{EfdFlags, EventFd};
use origdst_core::config::{Config, DataPath};
use origdst_core::orig_dst::SelfAddrs;
use origdst_core::stats::Counters;
use origdst_engine::listeners::{GroupId, GroupReport, ListenerChange, Reload};
use origdst_engine::own_upstreams::OwnUpstreams;
use origdst_engine::report::{AccessLog, Control, Finished, Gauge, Reporter};
use origdst_engine::shard::{Listening, Shard, ShardSetup};

pub(crate) use self::poller::Backend;
use self::poller::Poller;
use crate::access_log::AccessLogSender;
use crate::buf_ring::BufRing;
use crate::kernel::RealKernel;
use crate::published::ShardRow;
use crate::sys;

/// What the pumps of the native data paths borrow.
pub(crate) type Io = origdst_engine::shard::io::Io<RealKernel>;

/// Cross-thread control of one shard: the main thread sets a flag and writes the eventfd.
pub(crate) struct ShardControl {
    wake: EventFd,
    drain: AtomicBool,
    abort: AtomicBool,
    /// Reloaded configs for new connections (with the listeners each removes and adds), in
    /// order; taken on the next wake. Locked only on reload.
    reload: std::sync::Mutex<Vec<Reload>>,
    /// Listening sockets to add or remove (pods), in order; taken on the next wake.
    listener_changes: std::sync::Mutex<Vec<ListenerChange>>,
}

impl ShardControl {
    pub(crate) fn new() -> stdio::Result<Self> {
        let wake =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Self {
            wake,
            drain: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            reload: std::sync::Mutex::new(Vec::new()),
            listener_changes: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Adds or removes listening sockets from the shard's next turn.
    pub(crate) fn change_listeners(&self, change: ListenerChange) {
        self.listener_changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(change);
        let _ = self.wake.write(1);
    }

    /// New connections use the reload's config from the shard's next turn, its removed listeners
    /// stop and its added ones start; open connections keep what they have.
    pub(crate) fn reload(&self, reload: Reload) {
        self.reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(reload);
        let _ = self.wake.write(1);
    }

    /// Stop accepting and let open connections finish until the drain deadline.
    pub(crate) fn drain(&self) {
        self.drain.store(true, Ordering::Release);
        let _ = self.wake.write(1);
    }

    /// Reset whatever is still open, now.
    pub(crate) fn abort(&self) {
        self.abort.store(true, Ordering::Release);
        self.drain();
    }
}

impl Control for ShardControl {
    fn wake_fd(&self) -> i32 {
        self.wake.as_fd().as_raw_fd()
    }

    fn acknowledge(&self) {
        let _ = self.wake.read();
    }

    fn drain_requested(&self) -> bool {
        self.drain.load(Ordering::Acquire)
    }

    fn abort_requested(&self) -> bool {
        self.abort.load(Ordering::Acquire)
    }

    fn take_reloads(&self) -> Vec<Reload> {
        std::mem::take(&mut *self.reload.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn take_listener_changes(&self) -> Vec<ListenerChange> {
        std::mem::take(
            &mut *self
                .listener_changes
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }
}

/// Publishes into the shard's row of the process's counters.
struct RowReporter(Arc<ShardRow>);

impl Reporter for RowReporter {
    fn publish(&mut self, stats: &Counters, gauges: &[u64; Gauge::ALL.len()]) {
        self.0.publish(stats, gauges);
    }

    fn publish_groups(&mut self, groups: &[GroupReport]) {
        self.0.publish_groups(groups);
    }
}

/// Sends finished connections to the access-log writer (which formats them off the shard).
struct LogSender(AccessLogSender);

impl AccessLog for LogSender {
    fn sampled(&mut self) -> bool {
        self.0.sampled()
    }

    fn send(&mut self, finished: Finished) {
        self.0
            .send(crate::access_log::Record::from_finished(finished));
    }
}

/// Everything a shard needs to start.
pub(crate) struct ShardSetup0 {
    pub(crate) id: usize,
    pub(crate) config: Arc<Config>,
    pub(crate) data_path: DataPath,
    /// io_uring, or epoll where io_uring is refused.
    pub(crate) backend: Backend,
    pub(crate) me: Arc<SelfAddrs>,
    pub(crate) control: Arc<ShardControl>,
    pub(crate) row: Arc<ShardRow>,
    pub(crate) pipe_budget_bytes: u64,
    pub(crate) origin: std::time::Instant,
    /// Every shard's upstream sockets, for loop detection.
    pub(crate) own_upstreams: Arc<OwnUpstreams>,
    /// Where finished connections are logged, if anywhere.
    pub(crate) access_log: Option<AccessLogSender>,
    /// The in-kernel relay, where the data path is kernel-sockmap and it loaded.
    pub(crate) relay: Option<Arc<crate::sockmap::Loaded>>,
    /// Bind the config's listeners here (not in in-pod mode: pods bring their own).
    pub(crate) bind_listeners: bool,
    /// Pods' network namespaces (in-pod mode), where their upstream sockets are made.
    pub(crate) netns: Option<Arc<crate::pods::netns::NetnsRegistry>>,
    /// Each bound listener's group, by name (a reload removes and adds listeners by group).
    pub(crate) listener_groups: Arc<std::collections::BTreeMap<String, GroupId>>,
}

/// Why a shard could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("io_uring set-up failed: {0}")]
    Ring(stdio::Error),
    #[error("{0}")]
    Opcodes(String),
    #[error("capping io-wq workers failed: {0}")]
    IoWq(stdio::Error),
    #[error("registering the provided-buffer ring failed: {0}")]
    BufRing(stdio::Error),
    #[error("opening the in-kernel relay's maps failed: {0}")]
    Relay(stdio::Error),
    #[error("epoll set-up failed: {0}")]
    Epoll(stdio::Error),
    #[error("listener {listener:?}: cannot listen on {addr}: {err}")]
    Listen {
        listener: String,
        addr: std::net::SocketAddr,
        err: stdio::Error,
    },
    #[error(transparent)]
    Shard(#[from] origdst_engine::shard::ShardError),
}

/// Creates the kernel (ring or epoll, buffer ring), the listening sockets and the engine's shard.
pub(crate) fn build(setup: ShardSetup0) -> Result<Shard<RealKernel>, StartError> {
    let knobs = &setup.config.knobs;
    let (poller, buf_ring) = match setup.backend {
        Backend::IoUring => {
            let ring = new_ring().map_err(StartError::Ring)?;
            check_opcodes(&ring).map_err(StartError::Opcodes)?;
            let mut workers = [knobs.iowq_workers_max, knobs.iowq_workers_max];
            ring.submitter()
                .register_iowq_max_workers(&mut workers)
                .map_err(StartError::IoWq)?;
            let buf_ring = match setup.data_path {
                DataPath::UringCopy => Some(
                    BufRing::new(
                        &ring.submitter(),
                        knobs.buffer_count,
                        knobs.buffer_size_bytes,
                        BUFFER_GROUP,
                    )
                    .map_err(StartError::BufRing)?,
                ),
                DataPath::UringSplice | DataPath::UringOpSplice | DataPath::KernelSockmap => None,
            };
            (Poller::uring(ring, knobs.busy_poll), buf_ring)
        }
        Backend::Epoll => (
            Poller::epoll(knobs.busy_poll).map_err(StartError::Epoll)?,
            None,
        ),
    };
    // The epoll backend moves bytes with the readiness pump; "copy" there is that pump with no
    // pipes (through pooled buffers).
    let (dir_path, pipe_budget) = match (setup.backend, setup.data_path) {
        (Backend::Epoll, DataPath::UringCopy) => (DataPath::UringSplice, 0),
        (Backend::Epoll, DataPath::UringSplice | DataPath::UringOpSplice) => {
            (DataPath::UringSplice, setup.pipe_budget_bytes)
        }
        (Backend::Epoll, DataPath::KernelSockmap) => {
            (DataPath::KernelSockmap, setup.pipe_budget_bytes)
        }
        (Backend::IoUring, path) => (path, setup.pipe_budget_bytes),
    };
    let mut listening = Vec::new();
    for (config_index, listener) in setup.config.listeners.iter().enumerate() {
        if !listener.is_bound() || !setup.bind_listeners {
            continue;
        }
        for &addr in listener.socket_addresses() {
            let socket = sys::listener(
                addr,
                listener.transparent,
                listener.freebind,
                LISTEN_BACKLOG,
            )
            .map_err(|err| StartError::Listen {
                listener: listener.name.clone(),
                addr,
                err,
            })?;
            listening.push(Listening {
                socket: socket.into(),
                config_index,
                group: setup.listener_groups.get(&listener.name).copied(),
            });
        }
    }
    let relay = match &setup.relay {
        Some(loaded) => Some(loaded.for_shard().map_err(StartError::Relay)?),
        None => None,
    };
    let kernel = RealKernel::new(poller, buf_ring, setup.origin, setup.id, relay, setup.netns);
    let engine_setup = ShardSetup {
        id: setup.id,
        config: setup.config,
        data_path: dir_path,
        me: setup.me,
        control: setup.control,
        reporter: Box::new(RowReporter(setup.row)),
        pipe_budget_bytes: pipe_budget,
        fallback_buffers: origdst_engine::shard::io::FALLBACK_BUFFERS_MAX,
        own_upstreams: setup.own_upstreams,
        access_log: setup
            .access_log
            .map(|log| Box::new(LogSender(log)) as Box<dyn AccessLog>),
    };
    Ok(Shard::new(engine_setup, kernel, listening)?)
}

/// Whether this process may use io_uring with the opcodes origdst needs: a throwaway ring.
pub(crate) fn probe_io_uring() -> Result<(), String> {
    let ring = new_ring().map_err(|err| err.to_string())?;
    check_opcodes(&ring)
}

fn new_ring() -> stdio::Result<IoUring> {
    // SINGLE_ISSUER + DEFER_TASKRUN (6.1): completions run only when this thread waits, so no
    // interrupts mid-loop. COOP_TASKRUN on older kernels; plain as a last resort.
    let attempts: [fn(&mut io_uring::Builder) -> &mut io_uring::Builder; 3] = [
        |b| b.setup_single_issuer().setup_defer_taskrun(),
        |b| b.setup_coop_taskrun(),
        |b| b,
    ];
    let mut last = None;
    for attempt in attempts {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(CQ_ENTRIES).setup_submit_all();
        attempt(&mut builder);
        match builder.build(SQ_ENTRIES) {
            Ok(ring) => return Ok(ring),
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => last = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last.unwrap_or_else(|| stdio::Error::other("no io_uring set-up accepted")))
}

fn check_opcodes(ring: &IoUring) -> Result<(), String> {
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|err| format!("io_uring probe failed: {err}"))?;
    let needed = [
        (opcode::AcceptMulti::CODE, "ACCEPT"),
        (opcode::RecvMulti::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Splice::CODE, "SPLICE"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(format!("this kernel's io_uring lacks IORING_OP_{name}"));
        }
    }
    Ok(())
}

const SQ_ENTRIES: u32 = 4096;
/// Completions can outnumber submissions (multishot): a deep CQ keeps overflow rare.
const CQ_ENTRIES: u32 = 4 * SQ_ENTRIES;
pub(crate) const LISTEN_BACKLOG: i32 = 4096;
const BUFFER_GROUP: u16 = 0;
