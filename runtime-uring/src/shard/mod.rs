//! A shard: one thread, one io_uring, one `SO_REUSEPORT` listener per configured address, its own
//! connections, buffers, pipes and counters. Nothing here is shared with other shards except the
//! published counter row and the control flags (atomics).

mod conn;
mod copy;
mod internal;
mod io;
mod opsplice;
mod poller;
mod splice;

use std::collections::VecDeque;
use std::io as stdio;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode};
use nix::sys::eventfd::{EfdFlags, EventFd};
use origdst_core::addr::canonical;
use origdst_core::addr::{ClientAddr, LocalAddr};
use origdst_core::config::{Config, DataPath};
use origdst_core::connection::{Action, Connection};
use origdst_core::orig_dst::{AcceptEvidence, RecordAnswer, SelfAddrs, SockOptAnswer};
use origdst_core::outcome::{IoErrorKind, Outcome};
use origdst_core::relay::{Dir, HalfState, Side};
use origdst_core::route::{self, Balancer};
use origdst_core::stats::{Counter, Counters};
use origdst_core::time::Instant;
use slab::Slab;
use socket2::Socket;

use self::conn::{ConnIo, DirIo, Watch};
use self::io::{BufferPool, DirKey, Io};
pub(crate) use self::poller::Backend;
use self::poller::Poller;
use crate::access_log::AccessLogSender;
use crate::buf_ring::BufRing;
use crate::pipe_pool::PipePool;
use crate::published::{Gauge, ShardRow};
use crate::sys::{self, ConnectStart};
use origdst_engine::log_budget::LogBudget;
use origdst_engine::own_upstreams::OwnUpstreams;
use origdst_engine::progress::{DirEnd, Progress};
use origdst_engine::slots::{SlotKey, Slots};
use origdst_engine::timers::{TimerKey, Timers};
use origdst_engine::token::{Kind, SLOT_LIMIT, Token};

/// Cross-thread control of one shard: the main thread sets a flag and writes the eventfd.
pub(crate) struct ShardControl {
    wake: EventFd,
    drain: AtomicBool,
    abort: AtomicBool,
    /// A reloaded config for new connections; taken on the next wake. Locked only on reload.
    reload: std::sync::Mutex<Option<Arc<Config>>>,
}

impl ShardControl {
    pub(crate) fn new() -> stdio::Result<Self> {
        let wake =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Self {
            wake,
            drain: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            reload: std::sync::Mutex::new(None),
        })
    }

    /// New connections use `config` from the shard's next turn; open ones keep what they have.
    pub(crate) fn reload(&self, config: Arc<Config>) {
        *self.reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(config);
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

/// Everything a shard needs to start.
pub(crate) struct ShardSetup {
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
}

struct ListenerIo {
    socket: Option<Socket>,
    /// Index into `config.listeners`.
    config_index: usize,
    armed: bool,
}

/// Field order matters: `io` (and with it the ring) is dropped before anything it references.
pub(crate) struct Shard {
    io: Io,
    setup: ShardSetup,
    listeners: Vec<ListenerIo>,
    conns: Slots<ConnIo>,
    timers: Timers,
    stats: Counters,
    draining: bool,
    /// Out of descriptors: accepts are cancelled until `spare_fd` can be reopened.
    accepts_paused: bool,
    /// When the pending `AcceptResume` timer fires (one chain at a time).
    resume_at: Option<Instant>,
    /// A descriptor held in reserve: when the upstream socket of an already accepted connection
    /// hits EMFILE, closing this one lets that connection proceed instead of being reset.
    spare_fd: Option<OwnedFd>,
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
    /// The data path connections use (the epoll backend has only the readiness pump).
    dir_path: DataPath,
    /// Where request heads are peeked into (header mode): allocated once, never zeroed again.
    peek_scratch: Box<[u8]>,
}

impl Shard {
    /// Creates the ring, the listeners and the pools. Errors here stop start-up with a message.
    pub(crate) fn new(setup: ShardSetup) -> Result<Self, String> {
        let knobs = &setup.config.knobs;
        let (poller, buf_ring) = match setup.backend {
            Backend::IoUring => {
                let ring = new_ring().map_err(|err| format!("io_uring set-up failed: {err}"))?;
                check_opcodes(&ring)?;
                let mut workers = [knobs.iowq_workers_max, knobs.iowq_workers_max];
                ring.submitter()
                    .register_iowq_max_workers(&mut workers)
                    .map_err(|err| format!("capping io-wq workers failed: {err}"))?;
                let buf_ring = match setup.data_path {
                    DataPath::UringCopy => Some(
                        BufRing::new(
                            &ring.submitter(),
                            knobs.buffer_count,
                            knobs.buffer_size_bytes,
                            BUFFER_GROUP,
                        )
                        .map_err(|err| {
                            format!("registering the provided-buffer ring failed: {err}")
                        })?,
                    ),
                    DataPath::UringSplice | DataPath::UringOpSplice => None,
                };
                (Poller::uring(ring, knobs.busy_poll), buf_ring)
            }
            Backend::Epoll => (
                Poller::epoll(knobs.busy_poll)
                    .map_err(|err| format!("epoll set-up failed: {err}"))?,
                None,
            ),
        };
        // The epoll backend moves bytes with the readiness pump; "copy" there is that pump with
        // no pipes (through pooled buffers).
        let (dir_path, pipe_budget) = match (setup.backend, setup.data_path) {
            (Backend::Epoll, DataPath::UringCopy) => (DataPath::UringSplice, 0),
            (Backend::Epoll, DataPath::UringSplice | DataPath::UringOpSplice) => {
                (DataPath::UringSplice, setup.pipe_budget_bytes)
            }
            (Backend::IoUring, path) => (path, setup.pipe_budget_bytes),
        };
        let mut listeners = Vec::new();
        for (config_index, listener) in setup.config.listeners.iter().enumerate() {
            if !listener.is_bound() {
                continue;
            }
            for &addr in listener.socket_addresses() {
                let socket = sys::listener(
                    addr,
                    listener.transparent,
                    listener.freebind,
                    LISTEN_BACKLOG,
                )
                .map_err(|err| {
                    format!(
                        "listener {:?}: cannot listen on {addr}: {err}",
                        listener.name
                    )
                })?;
                listeners.push(ListenerIo {
                    socket: Some(socket),
                    config_index,
                    armed: false,
                });
            }
        }
        let io = Io {
            poller,
            buf_ring,
            pipes: PipePool::new(pipe_budget, knobs.pipe_size_bytes),
            fallback: BufferPool::new(FALLBACK_BUFFERS_MAX, knobs.buffer_size_bytes),
            ready: VecDeque::new(),
            waiters: VecDeque::new(),
            closing: Vec::new(),
            pairs: Slab::new(),
            fallback_copies: 0,
        };
        let listener_names = listener_names(&setup.config);
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
            spare_fd: Some(
                sys::reserve_fd().map_err(|err| format!("reserving a spare descriptor: {err}"))?,
            ),
            fd_waiters: VecDeque::new(),
            completions: Vec::with_capacity(CQ_ENTRIES as usize),
            cancel_targets: Vec::new(),
            listener_names,
            log_budget: LogBudget::default(),
            balancer: Balancer::default(),
            peer_errors: VecDeque::new(),
            inner_starts: VecDeque::new(),
            dir_path,
            peek_scratch: vec![0; PEEK_SCRATCH_BYTES].into_boxed_slice(),
        })
    }

    /// Runs until drained. Returns an error only for a ring failure it cannot recover from.
    pub(crate) fn run(mut self) -> Result<(), String> {
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
            self.publish();
            self.wait()?;
            let now = self.now();
            self.handle_completions(now);
        }
        self.publish();
        // Submit the final cancels before the descriptors they name are closed.
        self.io.poller.submit();
        self.io.closing.clear();
        tracing::debug!(shard = self.setup.id, "shard stopped");
        Ok(())
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(
            u64::try_from(self.setup.origin.elapsed().as_nanos()).unwrap_or(u64::MAX),
        )
    }

    /// Submits, then waits for at least one completion unless work is ready, bounded by the next
    /// timer.
    fn wait(&mut self) -> Result<(), String> {
        let want = usize::from(
            self.io.ready.is_empty() && self.peer_errors.is_empty() && self.inner_starts.is_empty(),
        );
        if want > 0 && !self.io.closing.is_empty() {
            // About to block: close now what is waiting to be closed, or a reset would wait in a
            // closing descriptor for the next event.
            self.io.poller.submit();
            self.close_submitted();
        }
        let timeout = self.timers.next().map(|at| at - self.now());
        let result = self.io.poller.wait(want, timeout);
        self.close_submitted();
        result.map_err(|err| format!("waiting for events failed: {err}"))
    }

    /// Closes the descriptors waiting for close once every cancel naming them is submitted.
    fn close_submitted(&mut self) {
        if !self.io.poller.has_backlog() {
            self.io.closing.clear();
        }
    }

    fn handle_completions(&mut self, now: Instant) {
        let mut batch = std::mem::take(&mut self.completions);
        batch.clear();
        self.io.poller.completions(&mut batch);
        for &(data, res, flags) in &batch {
            self.handle_completion(now, Token::decode(data), res, flags);
        }
        self.completions = batch;
    }

    fn handle_completion(&mut self, now: Instant, token: Token, res: i32, flags: u32) {
        match token.kind {
            Kind::Accept => self.on_accept(now, token.slot as usize, res, flags),
            Kind::Wake => self.on_wake(now, flags),
            Kind::Cancel => {}
            _ => self.on_conn_completion(now, token, res, flags),
        }
    }

    // === accept ===

    fn arm_accept(&mut self, index: usize) {
        let listener = &mut self.listeners[index];
        let Some(socket) = &listener.socket else {
            return;
        };
        if listener.armed || self.draining || self.accepts_paused {
            return;
        }
        let token = Token::new(Kind::Accept, index, 0, Dir::ClientToUpstream);
        listener.armed = true;
        let fd = socket.as_raw_fd();
        self.io.poller.accept_multi(fd, token.encode());
    }

    fn on_accept(&mut self, now: Instant, index: usize, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        if !more {
            self.listeners[index].armed = false;
        }
        if res < 0 {
            if res == -libc::ECANCELED || self.draining {
                return;
            }
            if res == -libc::ECONNABORTED {
                // The client reset while in the accept queue: not a failure of ours.
                self.stats.incr(Counter::AcceptClientGone);
                if !more {
                    self.arm_accept(index);
                }
                return;
            }
            self.stats.incr(Counter::AcceptFail);
            if sys::is_descriptor_exhaustion(-res) {
                if self.io.pipes.shed_idle() > 0 && !more {
                    self.arm_accept(index);
                    return;
                }
                // The connection stays in the kernel's backlog; nothing is lost by waiting.
                self.pause_accepts(now, -res);
                return;
            }
            if self.log_budget.take(now) {
                tracing::warn!(shard = self.setup.id, errno = -res, error = %stdio::Error::from_raw_os_error(-res),
                    "accept failed; backing off {ACCEPT_BACKOFF:?}");
            }
            if !more {
                self.timers.push(
                    now + ACCEPT_BACKOFF,
                    TimerKey::AcceptBackoff { listener: index },
                );
            }
            return;
        }
        if !more {
            self.arm_accept(index);
        }
        self.accept_one(now, index, sys::own_fd(res));
    }

    fn accept_one(&mut self, now: Instant, index: usize, fd: OwnedFd) {
        let config_index = self.listeners[index].config_index;
        let listener = &self.setup.config.listeners[config_index];
        sys::set_nodelay(&fd);
        let evidence = match sys::accept_evidence(&fd, listener.transparent) {
            Ok(mut evidence) => {
                let dst = match evidence.sockopt {
                    SockOptAnswer::V4(dst) | SockOptAnswer::V6(dst) => Some(canonical(dst)),
                    _ if evidence.transparent => Some(evidence.local.get()),
                    _ => None,
                };
                evidence.own_upstream = self.setup.config.knobs.detect_own_upstream
                    && dst.is_some_and(|dst| {
                        self.setup
                            .own_upstreams
                            .contains(evidence.client.get(), dst)
                    });
                evidence
            }
            Err(err) => {
                // The client left between accept and getpeername (a reset in the accept queue
                // shows up here on Linux): nothing to relay or reset.
                self.stats.incr(Counter::AcceptClientGone);
                tracing::debug!(error = %err, "accepted socket unusable");
                return;
            }
        };
        let limit = self.setup.config.knobs.connections_per_shard_max as usize;
        if self.conns.len() >= limit.min(SLOT_LIMIT) {
            let mut core = Connection::overflow(now, evidence.client, &mut self.stats);
            while core.poll_action().is_some() {}
            sys::arm_reset(&fd);
            if self.log_budget.take(now) {
                tracing::warn!(shard = self.setup.id, client = %evidence.client, limit, "connection limit reached; reset");
            }
            return;
        }
        let route = route::route(
            &self.setup.config,
            &self.setup.me,
            config_index,
            &evidence,
            &mut self.balancer,
            &mut self.stats,
        );
        let listener_name = self.setup.access_log.is_some().then(|| {
            // A refused connection is logged under the listener that accepted it.
            let index = route.as_ref().map_or(config_index, |r| r.listener);
            Arc::clone(&self.listener_names[index])
        });
        let core = Connection::start(now, &evidence, route, &mut self.stats);
        let slot = self.insert_conn(core, Some(fd));
        self.conns[slot].listener_name = listener_name;
        self.drive(now, slot);
    }

    /// Gives a new connection a slot and a fresh generation ([`Slots`]).
    fn insert_conn(&mut self, core: Connection, client: Option<OwnedFd>) -> usize {
        let path = self.dir_path;
        self.conns
            .insert_with(|key| ConnIo::new(core, key.generation, client, path))
            .slot
    }

    // === connection events ===

    fn on_conn_completion(&mut self, now: Instant, token: Token, res: i32, flags: u32) {
        let slot = token.slot as usize;
        let live = self
            .conns
            .get(SlotKey {
                slot,
                generation: token.generation,
            })
            .is_some();
        if !live {
            self.recycle_stale(token, flags);
            return;
        }
        let key = DirKey {
            slot,
            generation: token.generation,
            dir: token.dir,
        };
        let conn = &mut self.conns[slot];
        let progress = match token.kind {
            Kind::ConnectPoll => {
                // A retry cancelled the previous attempt's poll; the new socket has its own.
                if res != -libc::ECANCELED {
                    conn.connect_poll_armed = false;
                    self.finish_connect(now, slot, res);
                }
                return;
            }
            Kind::HeadPoll => {
                conn.head_poll_armed = false;
                self.finish_peek(now, slot, res);
                return;
            }
            Kind::Watch => {
                self.on_watch(now, slot, token.dir.source(), res);
                return;
            }
            Kind::Recv
            | Kind::Send
            | Kind::PollIn
            | Kind::PollOut
            | Kind::SpliceIn
            | Kind::SpliceOut => {
                let fds = conn.fds(token.dir);
                match (&mut conn.dirs[token.dir.index()], token.kind) {
                    (DirIo::Copy(copy), Kind::Recv) => {
                        copy.on_recv(&mut self.io, fds, key, res, flags)
                    }
                    (DirIo::Copy(copy), Kind::Send) => copy.on_send(&mut self.io, fds, key, res),
                    (DirIo::Copy(copy), Kind::PollOut) => {
                        copy.on_pollout(&mut self.io, fds.1, key);
                        Progress::default()
                    }
                    (DirIo::Splice(splice), Kind::PollIn | Kind::PollOut) => {
                        splice.on_poll(&mut self.io, fds, key)
                    }
                    (DirIo::OpSplice(op), Kind::PollIn | Kind::PollOut) => {
                        op.on_poll(&mut self.io, fds, key)
                    }
                    (DirIo::OpSplice(op), kind @ (Kind::SpliceIn | Kind::SpliceOut)) => {
                        op.on_splice(&mut self.io, fds, key, kind, res)
                    }
                    (DirIo::Internal(internal), Kind::PollIn | Kind::PollOut) => {
                        internal.on_poll(&mut self.io, fds, key)
                    }
                    (dir, kind) => unreachable!("{kind:?} completion on {dir:?}"),
                }
            }
            Kind::Accept | Kind::Wake | Kind::Cancel => unreachable!("not a connection completion"),
        };
        self.apply(now, key, progress);
    }

    /// A completion for a connection that is gone: give back the buffer it carries, if any.
    fn recycle_stale(&mut self, token: Token, flags: u32) {
        let Some(ring) = self.io.buf_ring.as_mut() else {
            return;
        };
        match token.kind {
            Kind::Recv => {
                if let Some(id) = cqueue::buffer_select(flags) {
                    ring.taken();
                    ring.give_back(id);
                }
            }
            // A send's buffer was kept back at release because the kernel still owned it.
            Kind::Send => ring.give_back(token.buf),
            _ => {}
        }
    }

    /// Waits until more than `have` bytes of the client's stream are queued (or it ends).
    fn start_peek(&mut self, slot: usize, have: u32, max: u32) {
        let conn = &mut self.conns[slot];
        conn.peek_max = max;
        conn.peek_have = have;
        // Config validation keeps header mode off internal listeners, whose clients have no fd.
        let client = conn
            .client
            .as_ref()
            .expect("header mode needs a client socket");
        if have == 0 {
            // SO_PEEK_OFF (TCP since 6.9): each peek returns only bytes not peeked before, so a
            // wake-up costs what arrived, not the whole head again. Without it, the whole prefix
            // is peeked and only its new part handed to core.
            conn.peek_incremental = sys::set_peek_offset(client, 0).is_ok();
        } else {
            // Without this the poll would fire at once on the bytes already seen.
            let _ = sys::set_rcvlowat(client, have.saturating_add(1));
        }
        let token = Token::new(Kind::HeadPoll, slot, conn.generation, Dir::ClientToUpstream);
        let events = (libc::POLLIN | libc::POLLRDHUP) as u32;
        let fd = client.as_raw_fd();
        conn.head_poll_armed = true;
        self.io.poll_once(fd, events, token.encode());
    }

    /// Peeks what arrived of the head (without consuming it) and lets core decide.
    fn finish_peek(&mut self, now: Instant, slot: usize, res: i32) {
        let conn = &mut self.conns[slot];
        if res == -libc::ECANCELED || conn.core.is_closed() {
            return;
        }
        if res < 0 {
            conn.core
                .handle_error(now, Side::Client, sys::errno_kind(-res), &mut self.stats);
            self.drive(now, slot);
            return;
        }
        let revents = res as u32;
        let ended = revents & (libc::POLLRDHUP | libc::POLLHUP) as u32 != 0;
        let have = conn.peek_have as usize;
        let max = (conn.peek_max as usize).min(self.peek_scratch.len());
        let client = conn
            .client
            .as_ref()
            .expect("header mode needs a client socket");
        // Incremental: the socket's peek offset is at `have`, peek only what is new.
        let (into, skip) = if conn.peek_incremental {
            (&mut self.peek_scratch[..max.saturating_sub(have)], 0)
        } else {
            (&mut self.peek_scratch[..max], have)
        };
        match sys::peek(client, into) {
            Ok(n) => {
                let piece = &into[skip.min(n)..n];
                conn.core.handle_peeked(
                    now,
                    piece,
                    ended,
                    &self.setup.me,
                    &self.setup.config.knobs.destination_policy,
                    &mut self.stats,
                );
                if !conn.core.is_reading_head() {
                    // Decided: relaying reads from the start of the stream again.
                    let _ = sys::set_rcvlowat(client, 1);
                    if conn.peek_incremental {
                        let _ = sys::set_peek_offset(client, -1);
                    }
                }
            }
            Err(err) if err.kind() == stdio::ErrorKind::WouldBlock => {
                let have = conn.peek_have;
                let max = conn.peek_max;
                self.start_peek(slot, have, max);
                return;
            }
            Err(err) => {
                conn.core
                    .handle_error(now, Side::Client, sys::error_kind(&err), &mut self.stats);
            }
        }
        self.drive(now, slot);
    }

    fn finish_connect(&mut self, now: Instant, slot: usize, res: i32) {
        let conn = &mut self.conns[slot];
        let upstream = conn
            .upstream
            .as_ref()
            .expect("connect poll for a socket we created");
        let failure = if res < 0 {
            Some(sys::errno_kind(-res))
        } else {
            sys::connect_result(upstream)
        };
        match failure {
            None => conn.core.handle_connected(now),
            Some(kind) => conn.core.handle_connect_failed(now, kind, &mut self.stats),
        }
        self.drive(now, slot);
    }

    /// Feeds a pump's progress to core and executes what core asks for.
    fn apply(&mut self, now: Instant, key: DirKey, progress: Progress) {
        self.feed(now, key.slot, key.dir, progress);
        self.drive(now, key.slot);
    }

    /// Turns a pump's progress into core events (no actions executed yet).
    fn feed(&mut self, now: Instant, slot: usize, dir: Dir, progress: Progress) {
        let core = &mut self.conns[slot].core;
        if progress.bytes > 0 {
            core.handle_transferred(now, dir, progress.bytes, &mut self.stats);
        }
        match progress.end {
            None => {}
            Some(DirEnd::Eof) => core.handle_eof(now, dir, &mut self.stats),
            Some(DirEnd::Failed(side, kind)) => core.handle_error(now, side, kind, &mut self.stats),
        }
    }

    /// Executes core's actions until it has none, then re-arms the connection's timer.
    fn drive(&mut self, now: Instant, slot: usize) {
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
                    record: _,
                } => {
                    self.start_connect(now, slot, upstream.get(), mark, source);
                }
                Action::ConnectInternal { listener, handoff } => {
                    self.connect_internal(now, slot, listener, *handoff);
                }
                Action::PeekHead { have, max } => self.start_peek(slot, have, max),
                Action::Transfer { dir } => {
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
                        if let Err(kind) = sys::shutdown_write(fd) {
                            conn.core.handle_error(now, side, kind, &mut self.stats);
                        }
                    }
                },
                Action::Reset { side } => match conn.internal(side) {
                    Some(pair) => self.reset_peer(pair, side),
                    None => {
                        if let Some(fd) = conn.fd(side) {
                            sys::arm_reset(fd);
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

    // === error watches ===

    /// Every kernel socket of a live connection is watched for errors and hang-ups, whatever its
    /// pumps are waiting for: a client that resets while origdst waits on the upstream (a connect
    /// to a black hole, an upstream that stopped reading) ends the connection at once instead of
    /// at the connect or idle timeout. The client from accept; the upstream once connected (until
    /// then the connect poll sees its errors).
    fn arm_watches(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if conn.core.is_closed() {
            return;
        }
        for side in [Side::Client, Side::Upstream] {
            let index = watch_index(side);
            if conn.watch[index] != Watch::Off {
                continue;
            }
            if side == Side::Upstream && !conn.core.history().connected {
                continue;
            }
            let Some(fd) = conn.fd(side).map(AsRawFd::as_raw_fd) else {
                continue;
            };
            let token = Token::new(Kind::Watch, slot, conn.generation, watch_dir(side));
            conn.watch[index] = Watch::Armed;
            self.io.poller.watch(fd, token.encode());
        }
    }

    /// A watched socket has an error (reset) or hung up.
    fn on_watch(&mut self, now: Instant, slot: usize, side: Side, res: i32) {
        let conn = &mut self.conns[slot];
        // Hung up without an error (the peer's FIN: io_uring polls always report RDHUP), or the
        // watch was cancelled: nothing more to watch on this socket — the reading pump will meet
        // the end of stream, the writing pump any later error.
        conn.watch[watch_index(side)] = Watch::Done;
        if res < 0 || res as u32 & libc::POLLERR as u32 == 0 || conn.core.is_closed() {
            return;
        }
        let Some(fd) = conn.fd(side) else {
            return;
        };
        // SO_ERROR: a pump may have consumed the error meanwhile and reported it itself.
        let Some(kind) = sys::connect_result(fd) else {
            return;
        };
        self.stats.incr(Counter::WatchedErrors);
        conn.core.handle_error(now, side, kind, &mut self.stats);
        self.drive(now, slot);
    }

    fn start_connect(
        &mut self,
        now: Instant,
        slot: usize,
        upstream: std::net::SocketAddr,
        mark: Option<u32>,
        source: Option<std::net::SocketAddr>,
    ) {
        self.retire_upstream(slot);
        let mut started = sys::connect(upstream, mark, source);
        if started.as_ref().is_err_and(|err| {
            err.raw_os_error()
                .is_some_and(sys::is_descriptor_exhaustion)
        }) && self.io.pipes.shed_idle() > 0
        {
            started = sys::connect(upstream, mark, source);
        }
        if let Err(err) = &started
            && let Some(errno) = err
                .raw_os_error()
                .filter(|&e| sys::is_descriptor_exhaustion(e))
        {
            // This client is accepted already: spend the reserve on it rather than reset it, let
            // the next ones wait in the backlog, and park any other accepted one until descriptors
            // come back (its connect timeout still bounds the wait).
            self.pause_accepts(now, errno);
            match self.spare_fd.take() {
                Some(spare) => {
                    drop(spare);
                    started = sys::connect(upstream, mark, source);
                }
                None => {
                    let generation = self.conns[slot].generation;
                    self.fd_waiters.push_back(FdWaiter {
                        slot,
                        generation,
                        upstream,
                        mark,
                        source,
                    });
                    return;
                }
            }
        }
        let conn = &mut self.conns[slot];
        if let Ok(ConnectStart::Done(fd) | ConnectStart::InProgress(fd)) = &started
            && let Ok(local) = sys::local_addr(fd)
        {
            let key = self.setup.own_upstreams.insert(local, upstream);
            conn.own_upstream = Some((local.port(), key));
        }
        match started {
            Ok(ConnectStart::Done(fd)) => {
                conn.upstream = Some(fd);
                conn.core.handle_connected(now);
            }
            Ok(ConnectStart::InProgress(fd)) => {
                let token = Token::new(
                    Kind::ConnectPoll,
                    slot,
                    conn.generation,
                    Dir::ClientToUpstream,
                );
                let raw = fd.as_raw_fd();
                conn.upstream = Some(fd);
                conn.connect_poll_armed = true;
                self.io.poll_once(raw, libc::POLLOUT as u32, token.encode());
            }
            Ok(ConnectStart::Failed(kind)) => {
                conn.core.handle_connect_failed(now, kind, &mut self.stats)
            }
            // Socket creation itself failed (EMFILE, EPERM on SO_MARK without CAP_NET_ADMIN).
            Err(err) => {
                conn.core
                    .handle_connect_failed(now, sys::error_kind(&err), &mut self.stats)
            }
        }
    }

    /// A retry replaces the upstream socket: cancel what is in flight on the old one, drop its
    /// loop-registry entry, and close it once the cancel is submitted.
    fn retire_upstream(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        let Some(old) = conn.upstream.take() else {
            return;
        };
        if let Some((port, key)) = conn.own_upstream.take() {
            self.setup.own_upstreams.remove(port, key);
        }
        let token = Token::new(Kind::Cancel, slot, conn.generation, Dir::ClientToUpstream);
        let connect = Token::new(
            Kind::ConnectPoll,
            slot,
            conn.generation,
            Dir::ClientToUpstream,
        )
        .encode();
        let targets: &[u64] = if conn.connect_poll_armed {
            &[connect]
        } else {
            &[]
        };
        conn.connect_poll_armed = false;
        self.io
            .poller
            .cancel_ops(&[old.as_raw_fd()], targets, token.encode());
        self.io.closing.push(old);
    }

    /// The connection is closed in core: cancel its in-flight operations, give back its buffers
    /// and pipes, and close its sockets once the cancels are submitted.
    fn release(&mut self, now: Instant, slot: usize) {
        let mut conn = self.conns.remove(slot);
        if let Some((port, key)) = conn.own_upstream {
            self.setup.own_upstreams.remove(port, key);
        }
        for (pair, side) in [
            (conn.internal_upstream, Side::Upstream),
            (conn.internal_client, Side::Client),
        ] {
            if let Some(pair) = pair {
                self.leave_pair(pair, side);
            }
        }
        let mut fds = [-1; 2];
        let mut nfds = 0;
        for fd in [conn.client.as_ref(), conn.upstream.as_ref()]
            .into_iter()
            .flatten()
        {
            fds[nfds] = fd.as_raw_fd();
            nfds += 1;
        }
        // Reused: closing a connection allocates nothing.
        let mut targets = std::mem::take(&mut self.cancel_targets);
        targets.clear();
        for (armed, kind) in [
            (conn.connect_poll_armed, Kind::ConnectPoll),
            (conn.head_poll_armed, Kind::HeadPoll),
        ] {
            if armed {
                targets
                    .push(Token::new(kind, slot, conn.generation, Dir::ClientToUpstream).encode());
            }
        }
        for side in [Side::Client, Side::Upstream] {
            if conn.watch[watch_index(side)] == Watch::Armed {
                let token = Token::new(Kind::Watch, slot, conn.generation, watch_dir(side));
                targets.push(token.encode());
            }
        }
        for dir in Dir::ALL {
            let key = DirKey {
                slot,
                generation: conn.generation,
                dir,
            };
            conn.dirs[dir.index()].inflight(key, &mut targets);
        }
        let token = Token::new(Kind::Cancel, slot, conn.generation, Dir::ClientToUpstream);
        self.io
            .poller
            .cancel_ops(&fds[..nfds], &targets, token.encode());
        self.cancel_targets = targets;
        for dir in &mut conn.dirs {
            dir.release(&mut self.io);
        }
        let outcome = conn.core.outcome().expect("released only once closed");
        self.log_close(now, &conn.core, outcome);
        // Sampling thins the completed connections; every failure and refusal is logged (the
        // queue bound still holds if they flood).
        if let Some(log) = self.setup.access_log.as_mut()
            && (outcome != Outcome::Completed || log.sampled())
        {
            log.send(access_record(now, &conn, outcome, self.setup.id));
        }
        if let Some(client) = conn.client {
            self.io.closing.push(client);
        }
        if let Some(upstream) = conn.upstream {
            self.io.closing.push(upstream);
        }
        if self.accepts_paused {
            // The descriptors close after this round's submit; try again on the next loop.
            self.schedule_resume(now);
        }
    }

    // === internal listeners ===

    /// `ConnectInternal`: a pair between this (outer) connection and a new inner connection on
    /// `listener`, routed by that listener's config. The in-process connect always succeeds; a
    /// refusal of the inner connection reaches the outer one as a reset.
    fn connect_internal(
        &mut self,
        now: Instant,
        slot: usize,
        listener: usize,
        handoff: origdst_core::orig_dst::InternalMetadata,
    ) {
        let Some(settings) = self.setup.config.internal_listener else {
            unreachable!("config validation requires the internal_listener extension");
        };
        let limit = self.setup.config.knobs.connections_per_shard_max as usize;
        if self.conns.len() >= limit.min(SLOT_LIMIT) {
            // The inner connection needs a slot like any other: at the limit, the outer one is
            // refused as a failed connect.
            self.conns[slot].core.handle_connect_failed(
                now,
                IoErrorKind::Other {
                    errno: libc::EAGAIN,
                },
                &mut self.stats,
            );
            return;
        }
        let outer = &mut self.conns[slot];
        let pair = self.io.pairs.insert(internal::Pair::new(
            settings.buffer_size_bytes as usize,
            (slot, outer.generation),
        ));
        outer.use_pair(pair, true);
        outer.core.handle_connected(now);
        let client = handoff
            .filter_state_remote
            .as_deref()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| outer.core.client().get());
        let evidence = AcceptEvidence {
            client: ClientAddr::new(client),
            local: LocalAddr::new(std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
            transparent: false,
            sockopt: SockOptAnswer::NotQueried,
            mark: None,
            internal: Some(handoff),
            own_upstream: false,
            redirect_record: RecordAnswer::None,
        };
        let route = route::route(
            &self.setup.config,
            &self.setup.me,
            listener,
            &evidence,
            &mut self.balancer,
            &mut self.stats,
        );
        let core = Connection::start(now, &evidence, route, &mut self.stats);
        let inner = self.insert_conn(core, None);
        let generation = self.conns[inner].generation;
        self.conns[inner].use_pair(pair, false);
        self.io.pairs[pair].inner = Some((inner, generation));
        // Driven from the main loop, not from here: the inner connection may connect to another
        // internal listener in turn, and a chain must never become recursion on the shard's stack
        // (a cycle once overflowed it). Core bounds the hops; this bounds the stack.
        self.inner_starts.push_back((inner, generation));
    }

    /// Drives the inner connections that internal connects created (and what they set off).
    fn flush_inner_starts(&mut self, now: Instant) {
        while let Some((slot, generation)) = self.inner_starts.pop_front() {
            if self.conns.get(SlotKey { slot, generation }).is_some() {
                self.drive(now, slot);
            }
        }
    }

    /// `Reset` of an internal end: the connection on the other end sees an error on its side.
    fn reset_peer(&mut self, pair: usize, side: Side) {
        let Some(entry) = self.io.pairs.get_mut(pair) else {
            return;
        };
        let (peer, peer_side) = match side {
            Side::Upstream => (entry.inner.take(), Side::Client),
            Side::Client => (entry.outer.take(), Side::Upstream),
        };
        if let Some((peer_slot, generation)) = peer {
            // Delivered from the main loop, never inside another connection's `drive`: the peer's
            // reaction may come back to this connection while it is still being driven.
            self.peer_errors
                .push_back((peer_slot, generation, peer_side));
        }
    }

    /// Work that connections queued for the main loop instead of recursing: inner connections
    /// to start, resets crossing pairs. Each may queue more; the hop bound ends every chain.
    fn flush_deferred(&mut self, now: Instant) {
        while !(self.inner_starts.is_empty() && self.peer_errors.is_empty()) {
            self.flush_inner_starts(now);
            self.flush_peer_errors(now);
        }
    }

    /// Delivers the resets that crossed internal pairs (and whatever they set off in turn).
    fn flush_peer_errors(&mut self, now: Instant) {
        while let Some((slot, generation, side)) = self.peer_errors.pop_front() {
            let Some(conn) = self.conns.get_mut(SlotKey { slot, generation }) else {
                continue;
            };
            conn.core
                .handle_error(now, side, IoErrorKind::Reset, &mut self.stats);
            self.drive(now, slot);
        }
    }

    /// A connection with an internal end is released. If it had not finished writing into the
    /// pair, the other connection is reset (a truncated stream must not look complete); the pair
    /// is freed when both have left.
    fn leave_pair(&mut self, pair: usize, side: Side) {
        let Some(entry) = self.io.pairs.get_mut(pair) else {
            return;
        };
        let finished = match side {
            Side::Upstream => entry.forward.eof,
            Side::Client => entry.backward.eof,
        };
        if !finished {
            self.reset_peer(pair, side);
        }
        let Some(entry) = self.io.pairs.get_mut(pair) else {
            return;
        };
        match side {
            Side::Upstream => entry.outer = None,
            Side::Client => entry.inner = None,
        }
        if entry.outer.is_none() && entry.inner.is_none() {
            self.io.pairs.remove(pair);
        }
    }

    /// Out of descriptors (EMFILE/ENFILE): stop taking connections until some come back. The
    /// kernel keeps the waiting ones in the listen backlog, so pausing loses nothing, whereas
    /// accepting what cannot be relayed would reset it.
    fn pause_accepts(&mut self, now: Instant, errno: i32) {
        if self.accepts_paused {
            return;
        }
        self.accepts_paused = true;
        self.stats.incr(Counter::AcceptPausedNoFd);
        tracing::warn!(shard = self.setup.id, open = self.conns.len(), error = %stdio::Error::from_raw_os_error(errno),
            "out of file descriptors; accepting paused until connections close (raise `ulimit -n`)");
        for (index, listener) in self.listeners.iter().enumerate() {
            if let (true, Some(socket)) = (listener.armed, &listener.socket) {
                let token = Token::new(Kind::Cancel, index, 0, Dir::ClientToUpstream);
                let target = Token::new(Kind::Accept, index, 0, Dir::ClientToUpstream).encode();
                self.io
                    .poller
                    .cancel_accept(socket.as_raw_fd(), target, token.encode());
            }
        }
        self.schedule_resume(now + ACCEPT_BACKOFF);
    }

    fn schedule_resume(&mut self, at: Instant) {
        debug_assert!(self.accepts_paused, "resuming needs a pause");
        if self.resume_at.is_none_or(|pending| at < pending) {
            self.resume_at = Some(at);
            self.timers.push(at, TimerKey::AcceptResume);
        }
    }

    /// Gives freed descriptors to the parked connections first, then takes the reserve back, then
    /// resumes accepting; whatever still finds no descriptor is retried later.
    fn try_resume_accepts(&mut self, now: Instant) {
        if !self.accepts_paused {
            return;
        }
        while let Some(waiter) = self.fd_waiters.pop_front() {
            let Some(conn) = self.conns.get(SlotKey {
                slot: waiter.slot,
                generation: waiter.generation,
            }) else {
                continue;
            };
            if conn.core.is_closed() || conn.upstream.is_some() {
                // Closed meanwhile (connect timeout, client reset, drain abort).
                continue;
            }
            let parked = self.fd_waiters.len();
            self.start_connect(
                now,
                waiter.slot,
                waiter.upstream,
                waiter.mark,
                waiter.source,
            );
            if self.fd_waiters.len() > parked {
                // Parked again (pushed to the back): restore its place and wait for more.
                if let Some(again) = self.fd_waiters.pop_back() {
                    self.fd_waiters.push_front(again);
                }
                self.schedule_resume(now + ACCEPT_BACKOFF);
                return;
            }
            self.drive(now, waiter.slot);
        }
        if self.draining {
            return;
        }
        if self.spare_fd.is_none() {
            match sys::reserve_fd() {
                Ok(fd) => self.spare_fd = Some(fd),
                Err(_) => {
                    self.schedule_resume(now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
        self.accepts_paused = false;
        tracing::info!(
            shard = self.setup.id,
            open = self.conns.len(),
            "file descriptors available again; accepting"
        );
        for index in 0..self.listeners.len() {
            self.arm_accept(index);
        }
    }

    fn log_close(&mut self, now: Instant, core: &Connection, outcome: Outcome) {
        let c2u = core.bytes(Dir::ClientToUpstream);
        let u2c = core.bytes(Dir::UpstreamToClient);
        let orig_dst = core
            .orig_dst()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let provenance = core.provenance().map_or("-", |p| p.name());
        let upstream = core
            .upstream()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let age_ms = core.age(now).as_millis();
        let history = core.history();
        if outcome == Outcome::Completed {
            tracing::debug!(client = %core.client(), %orig_dst, provenance, %upstream, c2u, u2c, age_ms, %history,
                "connection completed");
        } else if self.log_budget.take(now) {
            let error = match outcome.error() {
                Some(IoErrorKind::Other { errno }) => {
                    stdio::Error::from_raw_os_error(errno).to_string()
                }
                Some(kind) => kind.name().to_string(),
                None => "-".to_string(),
            };
            tracing::info!(client = %core.client(), %orig_dst, provenance, %upstream, reason = outcome.name(), error, c2u, u2c,
                age_ms, %history, "connection closed");
        }
    }

    fn rearm_timer(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        let Some(at) = conn.core.next_timeout() else {
            return;
        };
        if conn.timer_at.is_none_or(|armed| at < armed) {
            conn.timer_at = Some(at);
            self.timers.push(
                at,
                TimerKey::Conn {
                    slot,
                    generation: conn.generation,
                },
            );
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some((at, key)) = self.timers.pop_due(now) {
            match key {
                TimerKey::Conn { slot, generation } => {
                    let Some(conn) = self.conns.get_mut(SlotKey { slot, generation }) else {
                        continue;
                    };
                    if conn.timer_at == Some(at) {
                        conn.timer_at = None;
                    }
                    conn.core.handle_timeout(now, &mut self.stats);
                    self.drive(now, slot);
                }
                TimerKey::AcceptBackoff { listener } => self.arm_accept(listener),
                TimerKey::AcceptResume => {
                    if self.resume_at == Some(at) {
                        self.resume_at = None;
                        self.try_resume_accepts(now);
                    }
                }
                TimerKey::Drain => self.abort_all(now),
            }
        }
    }

    /// Pumps directions that yielded or were woken. Bounded to one pass over what was queued.
    fn run_ready(&mut self, now: Instant) {
        for _ in 0..self.io.ready.len() {
            let Some(key) = self.io.ready.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(SlotKey {
                slot: key.slot,
                generation: key.generation,
            }) else {
                continue;
            };
            if conn.core.is_closed() || conn.core.half_state(key.dir) != HalfState::Open {
                continue;
            }
            let fds = conn.fds(key.dir);
            let progress = conn.dirs[key.dir.index()].resume(&mut self.io, fds, key);
            self.apply(now, key, progress);
        }
    }

    // === drain ===

    fn arm_wake(&mut self) {
        let token = Token::new(Kind::Wake, 0, 0, Dir::ClientToUpstream);
        let fd = self.setup.control.wake.as_fd().as_raw_fd();
        self.io.poller.poll_multi(fd, token.encode());
    }

    fn on_wake(&mut self, now: Instant, flags: u32) {
        let _ = self.setup.control.wake.read();
        if !cqueue::more(flags) {
            self.arm_wake();
        }
        if self.setup.control.drain.load(Ordering::Acquire) && !self.draining {
            self.start_drain(now);
        }
        if self.setup.control.abort.load(Ordering::Acquire) {
            self.abort_all(now);
        }
        let reloaded = self
            .setup
            .control
            .reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(config) = reloaded {
            // The engine only sends configs whose bound listeners are the ones this shard
            // holds (same addresses, same order), so listener indexes stay valid.
            debug_assert_eq!(
                config.listen_addrs().count(),
                self.setup.config.listen_addrs().count()
            );
            self.listener_names = listener_names(&config);
            self.setup.config = config;
            self.balancer = Balancer::default();
            tracing::debug!(shard = self.setup.id, "config reloaded");
        }
    }

    fn start_drain(&mut self, now: Instant) {
        self.draining = true;
        for (index, listener) in self.listeners.iter_mut().enumerate() {
            let Some(socket) = listener.socket.take() else {
                continue;
            };
            // Stop listening now: the socket itself lives on until the kernel has finished
            // cancelling its accept request (milliseconds), and until then it would still
            // complete handshakes that nobody accepts.
            let _ = socket.shutdown(std::net::Shutdown::Read);
            let token = Token::new(Kind::Cancel, index, 0, Dir::ClientToUpstream);
            let target = Token::new(Kind::Accept, index, 0, Dir::ClientToUpstream).encode();
            self.io
                .poller
                .cancel_accept(socket.as_raw_fd(), target, token.encode());
            self.io.closing.push(OwnedFd::from(socket));
        }
        let deadline = now + self.setup.config.knobs.drain_timeout;
        self.timers.push(deadline, TimerKey::Drain);
        tracing::debug!(shard = self.setup.id, open = self.conns.len(), "draining");
    }

    fn abort_all(&mut self, now: Instant) {
        let slots: Vec<usize> = self.conns.slots().collect();
        for slot in slots {
            self.conns[slot].core.abort_for_drain(now, &mut self.stats);
            self.drive(now, slot);
        }
    }

    fn publish(&mut self) {
        let mut gauges = [0u64; Gauge::ALL.len()];
        gauges[Gauge::ConnectionsActive as usize] = self.conns.len() as u64;
        gauges[Gauge::PipesLeased as usize] = u64::from(self.io.pipes.leased());
        gauges[Gauge::PipesShrunk as usize] = self.io.pipes.shrunk;
        gauges[Gauge::PipesDiscarded as usize] = self.io.pipes.discarded;
        gauges[Gauge::BuffersInFlight as usize] = self
            .io
            .buf_ring
            .as_ref()
            .map_or(0, |r| u64::from(r.in_flight()));
        gauges[Gauge::SpliceFallbackCopies as usize] = self.io.fallback_copies;
        self.setup.row.publish(&self.stats, &gauges);
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

/// The access-log line of a finished connection: values only, the writer thread formats them.
fn access_record(
    now: Instant,
    conn: &ConnIo,
    outcome: Outcome,
    shard: usize,
) -> crate::access_log::Record {
    let core = &conn.core;
    let age = core.age(now);
    crate::access_log::Record {
        start_time: std::time::SystemTime::now()
            .checked_sub(age)
            .unwrap_or(std::time::UNIX_EPOCH),
        duration_ms: age.as_millis() as u64,
        downstream_remote_address: core.client().get(),
        original_destination: core.orig_dst().map(|a| a.get()),
        original_destination_provenance: core.provenance().map(|p| p.name()),
        upstream_host: core.upstream().map(|a| a.get()),
        listener: conn.listener_name.clone().unwrap_or_else(|| Arc::from("-")),
        bytes_received: core.bytes(Dir::ClientToUpstream),
        bytes_sent: core.bytes(Dir::UpstreamToClient),
        termination_reason: outcome.name(),
        error: outcome.error().map(|kind| match kind {
            IoErrorKind::Other { errno } => crate::access_log::ErrorText::Errno(errno),
            kind => crate::access_log::ErrorText::Named(kind.name()),
        }),
        shard,
    }
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
const LISTEN_BACKLOG: i32 = 4096;
const BUFFER_GROUP: u16 = 0;
/// Fallback copy buffers per shard (splice path, pool empty): 256 × 64 KiB at most.
const FALLBACK_BUFFERS_MAX: u32 = 256;
/// An accepted connection waiting for a descriptor for its upstream socket.
struct FdWaiter {
    slot: usize,
    generation: u16,
    upstream: std::net::SocketAddr,
    mark: Option<u32>,
    source: Option<std::net::SocketAddr>,
}

/// `http_head_max_bytes`' upper bound.
const PEEK_SCRATCH_BYTES: usize = 64 * 1024;
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
