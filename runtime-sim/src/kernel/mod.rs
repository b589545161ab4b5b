//! A simulated kernel for the engine's shard: the production [`origdst_engine::shard::Shard`]
//! runs over it unchanged. Sockets with receive windows, pipes with capacities, a descriptor
//! limit, one-shot and multishot readiness with io_uring's completion shapes, cancels that
//! complete the cancelled operation with `-ECANCELED`, REDIRECT's original destination — and
//! faults chosen by one `u64` seed: completions reordered within a batch, short splices, reads
//! and sends, spurious `EAGAIN`, pipes smaller than asked, connects that complete late or never,
//! descriptors that run out.
//!
//! Time is virtual: the shard's `wait` advances it in ticks, letting the [`Workload`] (the
//! clients and servers outside the proxy) act each tick, until a completion is ready or the
//! timeout passes. When the workload is done, the kernel asks the shard to drain through its
//! [`SimControl`]; `Shard::run` then returns and the test inspects what is left.

mod accept_watch;
pub mod net;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use origdst_core::addr::{ClientAddr, LocalAddr};
use origdst_core::config::{Config, DataPath};
use origdst_core::orig_dst::{AcceptEvidence, RecordAnswer, RedirectRecord, SockOptAnswer};
use origdst_core::outcome::IoErrorKind;
use origdst_core::time::Instant;
use origdst_engine::kernel::{ConnectStart, Errno, Kernel, MORE, NoNative, PipeEnds, interleave};
use origdst_engine::report::Control;
use origdst_engine::shard::errno_kind;
use origdst_engine::token::{Kind, Token};

use self::accept_watch::AcceptWatch;
use self::net::{Net, Object};

/// The clients and servers outside the proxy.
pub trait Workload {
    /// Acts at virtual time `now` (ns).
    fn step(&mut self, net: &mut Net, now: u64);
    /// Everything it set out to do is done (the kernel then drains the shard).
    fn done(&self, net: &Net, now: u64) -> bool;
    /// When it next acts on its own (not in answer to the network), if ever.
    fn next_event(&self, now: u64) -> Option<u64>;
}

/// Which faults a run injects (each a per-mille chance per opportunity).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Completions of one batch delivered in a shuffled order.
    pub reorder: bool,
    /// A splice, read or send moves fewer bytes than it could.
    pub short_io: u16,
    /// A splice or read answers EAGAIN although bytes are there.
    pub spurious_eagain: u16,
    /// A new pipe comes out smaller than asked (the per-user pipe limit).
    pub small_pipe: u16,
    /// A connect completes only after up to this many ms.
    pub connect_delay_ms: u64,
    /// An accept fails: `ENOMEM` (the connection stays queued), or `ECONNABORTED` for one whose
    /// client reset in the queue; either ends the multishot accept, as io_uring's errors do.
    pub accept_errors: u16,
    /// The supervisor wakes the shard with nothing to ask (per mille per tick), and the wake-up's
    /// multishot poll sometimes ends (io_uring ends multishots when its queue overflows).
    pub stray_wakes: u16,
    /// The kernel refuses a connect or head poll's registration (`ENOSPC`: epoll's
    /// `max_user_watches`), failing every readiness interest on that descriptor, as the epoll
    /// backend reports it.
    pub poll_refused: u16,
}

/// A deterministic generator (splitmix64): the kernel's only source of choice.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with `per_mille`/1000.
    pub fn chance(&mut self, per_mille: u16) -> bool {
        per_mille > 0 && self.next_u64() % 1000 < u64::from(per_mille)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// The shard's control, as the simulated supervisor drives it.
#[derive(Debug)]
pub struct SimControl {
    wake_fd: i32,
    pending: AtomicBool,
    drain: AtomicBool,
    abort: AtomicBool,
}

impl SimControl {
    /// Asks the shard to drain.
    pub fn request_drain(&self) {
        self.drain.store(true, Ordering::Release);
        self.pending.store(true, Ordering::Release);
    }

    /// Wakes the shard without asking anything (a reload that was coalesced away, say).
    pub fn poke(&self) {
        self.pending.store(true, Ordering::Release);
    }
}

impl Control for SimControl {
    fn wake_fd(&self) -> i32 {
        self.wake_fd
    }
    fn acknowledge(&self) {
        self.pending.store(false, Ordering::Release);
    }
    fn drain_requested(&self) -> bool {
        self.drain.load(Ordering::Acquire)
    }
    fn abort_requested(&self) -> bool {
        self.abort.load(Ordering::Acquire)
    }
    fn take_reload(&self) -> Option<Arc<Config>> {
        None
    }
}

/// A descriptor the shard owns; dropping it closes it in the simulated table.
#[derive(Debug)]
pub struct SimFd {
    fd: i32,
    net: Rc<RefCell<Net>>,
}

impl Drop for SimFd {
    fn drop(&mut self) {
        self.net.borrow_mut().close(self.fd);
    }
}

/// A pipe's two descriptors.
#[derive(Debug)]
pub struct SimPipe {
    id: usize,
    read: SimFd,
    /// Held so the write end stays open as long as the pipe; closed with it.
    _write: SimFd,
}

impl PipeEnds for SimPipe {
    fn kernel_queued(&self) -> Option<u32> {
        Some(self.read.net.borrow().pipes[self.id].data.len() as u32)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegKind {
    Once,
    Multi,
    Accept,
}

#[derive(Debug, Clone, Copy)]
struct Reg {
    fd: i32,
    events: u32,
    user_data: u64,
    kind: RegKind,
}

/// The simulated kernel.
pub struct SimKernel {
    net: Rc<RefCell<Net>>,
    workload: Box<dyn Workload>,
    control: Arc<SimControl>,
    rng: Rng,
    faults: Faults,
    regs: Vec<Reg>,
    ready: VecDeque<(u64, i32, u32)>,
    /// Completions held back for a few batches (cancellations that land late, as io_uring's
    /// may): a connection's stale completion can then meet its slot's next tenant.
    late: Vec<(u32, (u64, i32, u32))>,
    /// Completions of a released connection's operations held until the next accept, and then
    /// delivered in the same batch: io_uring posts a new connection's accept between the shard's
    /// reap and its submit of the cancels, so the slot's next tenant exists when the old
    /// tenant's last completions land. (The count is evaluations waited; past
    /// [`STRADDLE_TURNS`] they go anyway.)
    straddling: Vec<(u32, (u64, i32, u32))>,
    now: u64,
    drain_sent: bool,
    /// Virtual time after which `wait` fails (a run that never ends is a bug).
    limit: u64,
    /// Turns of the shard's loop at the current virtual instant: time stands still while
    /// completions keep coming, so a shard that re-arms into an instant completion for ever would
    /// spin without reaching `limit`. Past [`LIVELOCK_TURNS`] that is a failure, not a hang.
    turns_at_now: (u64, u32),
    /// Clients must not wait in a backlog while descriptors are spare and nothing accepts.
    accept_watch: AcceptWatch,
}

/// Evaluations a straddling completion waits for an accept before it is delivered anyway.
const STRADDLE_TURNS: u32 = 400;

/// Turns of the shard's loop allowed at one virtual instant (the 1 000 seeds of the engine test
/// take at most ~1 200).
const LIVELOCK_TURNS: u32 = 100_000;

/// How far virtual time moves per step while things happen.
const TICK_NS: u64 = 250_000;
/// How far it jumps when nothing happens and nothing is due.
const IDLE_JUMP_NS: u64 = 10_000_000;

impl SimKernel {
    /// A kernel over `net`, with `workload` outside, faults drawn from `seed`.
    pub fn new(
        net: Rc<RefCell<Net>>,
        workload: Box<dyn Workload>,
        seed: u64,
        faults: Faults,
        limit: Duration,
    ) -> Self {
        let wake_fd = net
            .borrow_mut()
            .open(Object::Wake)
            .expect("a descriptor for the wake-up");
        let control = Arc::new(SimControl {
            wake_fd,
            pending: AtomicBool::new(false),
            drain: AtomicBool::new(false),
            abort: AtomicBool::new(false),
        });
        Self {
            net,
            workload,
            control,
            rng: Rng::new(seed),
            faults,
            regs: Vec::new(),
            ready: VecDeque::new(),
            late: Vec::new(),
            straddling: Vec::new(),
            now: 0,
            drain_sent: false,
            limit: u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX),
            turns_at_now: (0, 0),
            accept_watch: AcceptWatch::default(),
        }
    }

    /// The shard's control (the wake descriptor is the kernel's).
    pub fn control(&self) -> Arc<SimControl> {
        Arc::clone(&self.control)
    }

    /// A listening socket for the shard, registered in the table.
    pub fn listen(&mut self, addr: SocketAddr) -> SimFd {
        let mut net = self.net.borrow_mut();
        let index = net.listeners.len();
        net.listeners.push(net::Listener {
            addr,
            backlog: VecDeque::new(),
            stopped: false,
        });
        let fd = net
            .open(Object::Listener(index))
            .expect("a descriptor for a listener");
        SimFd {
            fd,
            net: Rc::clone(&self.net),
        }
    }

    fn fd(&self, fd: i32) -> SimFd {
        SimFd {
            fd,
            net: Rc::clone(&self.net),
        }
    }

    /// Turns registrations that are ready into completions.
    fn evaluate(&mut self) {
        let wake_pending = self.control.pending.load(Ordering::Acquire);
        let mut batch = Vec::new();
        let mut kept = Vec::with_capacity(self.regs.len());
        let regs = std::mem::take(&mut self.regs);
        let always = (libc::POLLERR | libc::POLLHUP) as u32 | libc::POLLRDHUP as u32;
        for reg in regs {
            let mut net = self.net.borrow_mut();
            assert!(
                net.object(reg.fd).is_some(),
                "an operation is still registered on closed descriptor {} ({:?})",
                reg.fd,
                Token::decode(reg.user_data)
            );
            match reg.kind {
                RegKind::Once => {
                    let ready = net.readiness(reg.fd, wake_pending) & (reg.events | always);
                    if ready != 0 {
                        batch.push((reg.user_data, ready as i32, 0));
                    } else {
                        kept.push(reg);
                    }
                }
                RegKind::Multi => {
                    if net.readiness(reg.fd, wake_pending) == 0 {
                        kept.push(reg);
                    } else if self.rng.chance(self.faults.stray_wakes.saturating_mul(50)) {
                        // Ended (no MORE): the shard must arm it again or hear nothing more.
                        net.fire("multishot_poll_ended");
                        batch.push((reg.user_data, libc::POLLIN as i32, 0));
                    } else {
                        batch.push((reg.user_data, libc::POLLIN as i32, MORE));
                        kept.push(reg);
                    }
                }
                RegKind::Accept => {
                    let Some(Object::Listener(l)) = net.object(reg.fd) else {
                        unreachable!("accept on a non-listener");
                    };
                    let mut ended = false;
                    while let Some(&ep) = net.listeners[l].backlog.front() {
                        if self.rng.chance(self.faults.accept_errors) {
                            // As io_uring: an error ends the multishot accept.
                            if net.endpoints[ep].error.is_some() {
                                // The client reset while queued: the kernel drops it.
                                if net.endpoints[ep].remote.ip() == net.proxy_ip {
                                    net.fire("own_connection_gone_at_accept");
                                }
                                net.listeners[l].backlog.pop_front();
                                net.close_endpoint(ep);
                                net.fire("accept_aborted");
                                batch.push((reg.user_data, -libc::ECONNABORTED, 0));
                            } else {
                                // No memory for the new socket's file: it stays queued.
                                self.accept_watch.excuse(l, self.now);
                                net.fire("accept_nomem");
                                batch.push((reg.user_data, -libc::ENOMEM, 0));
                            }
                            ended = true;
                            break;
                        }
                        match net.open(Object::Socket(ep)) {
                            Ok(fd) => {
                                net.listeners[l].backlog.pop_front();
                                // io_uring may end a multishot with a successful completion
                                // (no MORE: its CQ overflowed, say); the shard must re-arm.
                                if self.faults.reorder && self.rng.chance(100) {
                                    net.fire("multishot_ended");
                                    batch.push((reg.user_data, fd, 0));
                                    ended = true;
                                    break;
                                }
                                batch.push((reg.user_data, fd, MORE));
                            }
                            Err(errno) => {
                                // As io_uring: the multishot accept ends with the error.
                                net.fire("accept_emfile");
                                batch.push((reg.user_data, -errno, 0));
                                ended = true;
                                break;
                            }
                        }
                    }
                    if !ended {
                        kept.push(reg);
                    }
                }
            }
        }
        kept.append(&mut self.regs);
        self.regs = kept;
        let accepted = batch
            .iter()
            .any(|&(data, res, _)| res >= 0 && Token::decode(data).kind == Kind::Accept);
        let mut i = 0;
        while i < self.straddling.len() {
            if accepted || self.straddling[i].0 == 0 {
                batch.push(self.straddling.swap_remove(i).1);
            } else {
                self.straddling[i].0 -= 1;
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.late.len() {
            if self.late[i].0 == 0 {
                batch.push(self.late.swap_remove(i).1);
            } else {
                self.late[i].0 -= 1;
                i += 1;
            }
        }
        if self.faults.reorder && batch.len() > 1 {
            let before = batch.clone();
            let rng = &mut self.rng;
            interleave(&mut batch, |n| (rng.next_u64() % n as u64) as usize);
            if batch != before {
                self.fired("reorder");
            }
        }
        self.ready.extend(batch);
    }

    /// Fails the run if a listener's backlog waits while descriptors are spare and no accept is
    /// armed there (nor its last completion still on its way to the shard).
    fn watch_accepts(&mut self) -> io::Result<()> {
        let pending = |l: usize| {
            let accept = |data: u64| {
                let token = Token::decode(data);
                // The shard's listener index is the kernel's: the harness binds them in order.
                token.kind == Kind::Accept && token.slot as usize == l
            };
            self.ready.iter().any(|&(data, _, _)| accept(data))
                || self.late.iter().any(|&(_, (data, _, _))| accept(data))
                || self
                    .straddling
                    .iter()
                    .any(|&(_, (data, _, _))| accept(data))
        };
        let regs = &self.regs;
        let armed = |fd: i32, l: usize| {
            regs.iter().any(|r| r.kind == RegKind::Accept && r.fd == fd) || pending(l)
        };
        let net = self.net.borrow();
        self.accept_watch
            .check(&net, self.now, armed)
            .map_err(io::Error::other)
    }

    /// Counts a fault that fired (the tests check that every kind fires somewhere in a block).
    fn fired(&self, fault: &'static str) {
        self.net.borrow_mut().fire(fault);
    }

    fn short(&mut self, n: usize) -> usize {
        if n > 1 && self.rng.chance(self.faults.short_io) {
            self.fired("short_io");
            self.rng.range(1, n as u64 - 1) as usize
        } else {
            n
        }
    }

    /// Cancels the operations `targets` name: each completes with `-ECANCELED` (or, if it was
    /// ready already, sometimes with its real result), and the cancel itself completes.
    fn cancel_targets(&mut self, targets: &[u64], user_data: u64) {
        for &target in targets {
            match self.regs.iter().position(|r| r.user_data == target) {
                Some(at) => {
                    let reg = self.regs.remove(at);
                    // An operation that was ready when the cancel came may have completed first:
                    // its real result arrives instead of -ECANCELED (the cancel finds nothing).
                    let wake_pending = self.control.pending.load(Ordering::Acquire);
                    let always = (libc::POLLERR | libc::POLLHUP) as u32 | libc::POLLRDHUP as u32;
                    let ready = if reg.kind == RegKind::Once {
                        self.net.borrow().readiness(reg.fd, wake_pending) & (reg.events | always)
                    } else {
                        0
                    };
                    let cancelled = if ready != 0 && self.rng.chance(500) {
                        self.fired("cancel_lost_race");
                        (target, ready as i32, 0)
                    } else {
                        (target, -libc::ECANCELED, 0)
                    };
                    if self.faults.reorder && self.rng.chance(300) {
                        self.fired("straddles_accept");
                        self.straddling.push((STRADDLE_TURNS, cancelled));
                    } else if self.faults.reorder && self.rng.chance(600) {
                        self.fired("late_cancel");
                        let delay = self.rng.range(0, 8) as u32;
                        self.late.push((delay, cancelled));
                    } else {
                        self.ready.push_back(cancelled);
                    }
                    self.ready.push_back((user_data, 0, 0));
                }
                None => self.ready.push_back((user_data, -libc::ENOENT, 0)),
            }
        }
    }

    /// Refuses a poll's registration: it and every other readiness interest on `fd` complete with
    /// `-ENOSPC` (the epoll backend drops the descriptor's interests together). Noted by
    /// destination (a connect poll) or client (a head poll) for the oracle.
    fn refuse_poll(&mut self, fd: i32, kind: Kind, user_data: u64) {
        let mut net = self.net.borrow_mut();
        let remote = net.endpoints[net.ep(fd)].remote;
        if kind == Kind::ConnectPoll {
            net.fire("poll_refused_connect");
            *net.refused_connect_polls.entry(remote).or_insert(0) += 1;
        } else {
            net.fire("poll_refused_head");
            net.refused_head_polls.insert(remote);
        }
        drop(net);
        self.ready.push_back((user_data, -libc::ENOSPC, 0));
        let mut i = 0;
        while i < self.regs.len() {
            if self.regs[i].fd == fd && self.regs[i].kind == RegKind::Once {
                let other = self.regs.remove(i);
                self.ready.push_back((other.user_data, -libc::ENOSPC, 0));
            } else {
                i += 1;
            }
        }
    }

    fn register(&mut self, fd: i32, events: u32, user_data: u64, kind: RegKind) {
        // The shard never has two operations in flight under one token (a re-arm while the
        // first is live would double every completion after it).
        assert!(
            self.regs.iter().all(|r| r.user_data != user_data),
            "a second operation with a live one's token: {:?} on fd {fd}",
            Token::decode(user_data)
        );
        self.regs.push(Reg {
            fd,
            events,
            user_data,
            kind,
        });
    }
}

impl Drop for SimKernel {
    fn drop(&mut self) {
        // The wake-up descriptor is the kernel's own.
        let fd = self.control.wake_fd;
        let mut net = self.net.borrow_mut();
        if net.object(fd).is_some() {
            net.close(fd);
        }
    }
}

fn os(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

impl Kernel for SimKernel {
    type Socket = SimFd;
    type PipeEnds = SimPipe;
    type Spare = SimFd;
    type Native = NoNative;

    fn raw(socket: &SimFd) -> i32 {
        socket.fd
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(self.now)
    }

    fn poll_once(&mut self, fd: i32, events: u32, user_data: u64) {
        let kind = Token::decode(user_data).kind;
        if matches!(kind, Kind::ConnectPoll | Kind::HeadPoll)
            && self.rng.chance(self.faults.poll_refused)
        {
            self.refuse_poll(fd, kind, user_data);
            return;
        }
        self.register(fd, events, user_data, RegKind::Once);
    }

    fn watch(&mut self, fd: i32, user_data: u64) {
        self.register(fd, libc::POLLERR as u32, user_data, RegKind::Once);
    }

    fn accept_multi(&mut self, fd: i32, user_data: u64) {
        self.register(fd, 0, user_data, RegKind::Accept);
    }

    fn poll_multi(&mut self, fd: i32, user_data: u64) {
        self.register(fd, libc::POLLIN as u32, user_data, RegKind::Multi);
    }

    fn cancel_ops(&mut self, fds: &[i32], targets: &[u64], user_data: u64) {
        // The contract allows either: by the targets' tokens (io_uring), or everything on the
        // descriptors (epoll removes them from its interest list). The seed picks per call, so a
        // shard that names the wrong descriptors or forgets a target leaves an operation on a
        // closed descriptor, which `evaluate` refuses.
        if self.rng.chance(500) {
            let on_fds: Vec<u64> = self
                .regs
                .iter()
                .filter(|r| fds.contains(&r.fd))
                .map(|r| r.user_data)
                .collect();
            if on_fds.is_empty() {
                self.ready.push_back((user_data, -libc::ENOENT, 0));
            }
            self.cancel_targets(&on_fds, user_data);
        } else {
            self.cancel_targets(targets, user_data);
        }
    }

    fn cancel_accept(&mut self, _fd: i32, target: u64, user_data: u64) {
        self.cancel_targets(&[target], user_data);
    }

    fn submit(&mut self) {}

    fn has_backlog(&self) -> bool {
        false
    }

    fn wait(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        let deadline = timeout.map(|t| self.now + u64::try_from(t.as_nanos()).unwrap_or(u64::MAX));
        if self.turns_at_now.0 == self.now {
            self.turns_at_now.1 += 1;
            if self.turns_at_now.1 > LIVELOCK_TURNS {
                return Err(io::Error::other(format!(
                    "livelock: the shard turned {LIVELOCK_TURNS} times at virtual instant {} ns \
                     without time moving (operations in flight: {})",
                    self.now,
                    self.regs.len()
                )));
            }
        } else {
            self.turns_at_now = (self.now, 0);
        }
        loop {
            let activity = self.net.borrow().activity;
            if self.rng.chance(self.faults.stray_wakes) {
                self.net.borrow_mut().fire("stray_wake");
                self.control.poke();
            }
            {
                let mut net = self.net.borrow_mut();
                self.workload.step(&mut net, self.now);
                net.progress_connects(self.now);
                if !self.drain_sent && self.workload.done(&net, self.now) {
                    self.drain_sent = true;
                    self.control.request_drain();
                }
            }
            self.evaluate();
            self.watch_accepts()?;
            if want == 0 || !self.ready.is_empty() {
                return Ok(());
            }
            if !self.late.is_empty() {
                continue;
            }
            if deadline.is_some_and(|d| self.now >= d) {
                return Ok(());
            }
            let mut next = self.now + TICK_NS;
            let (idle, next_connect) = {
                let net = self.net.borrow();
                (net.activity == activity, net.next_connect())
            };
            if idle {
                // Nothing moved this tick and nothing is ready: jump to what comes next.
                next = [deadline, self.workload.next_event(self.now), next_connect]
                    .into_iter()
                    .flatten()
                    .filter(|&t| t > self.now)
                    .min()
                    .unwrap_or(self.now + IDLE_JUMP_NS);
            }
            if let Some(d) = deadline {
                next = next.min(d.max(self.now + 1));
            }
            self.now = next;
            if self.now > self.limit {
                let net = self.net.borrow();
                let mut kinds = std::collections::BTreeMap::new();
                for object in net.fds.values() {
                    let kind = match object {
                        Object::Socket(_) => "socket",
                        Object::Listener(_) => "listener",
                        Object::Pipe(_) => "pipe end",
                        Object::Spare => "spare",
                        Object::Wake => "wake",
                    };
                    *kinds.entry(kind).or_insert(0) += 1;
                }
                let backlog: Vec<usize> = net.listeners.iter().map(|l| l.backlog.len()).collect();
                let regs: Vec<String> = self
                    .regs
                    .iter()
                    .map(|r| format!("{:?}@{}", Token::decode(r.user_data).kind, r.fd))
                    .collect();
                return Err(io::Error::other(format!(
                    "the simulated run passed its limit of {} ms of virtual time: descriptors {kinds:?} \
                     (limit {}), listener backlogs {backlog:?}, operations in flight {regs:?}",
                    self.limit / 1_000_000,
                    net.fd_limit
                )));
            }
        }
    }

    fn completions(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        out.extend(self.ready.drain(..));
    }

    fn adopt(&mut self, fd: i32) -> SimFd {
        self.fd(fd)
    }

    fn accept_evidence(&mut self, socket: &SimFd, transparent: bool) -> io::Result<AcceptEvidence> {
        let net = self.net.borrow();
        let ep = &net.endpoints[net.ep(socket.fd)];
        if ep.error.is_some() {
            // Reset while in the accept queue: getpeername says ENOTCONN.
            let own = ep.remote.ip() == net.proxy_ip;
            drop(net);
            if own {
                self.fired("own_connection_gone_at_accept");
            }
            return Err(os(libc::ENOTCONN));
        }
        let sockopt = match (transparent, ep.orig_dst) {
            (true, _) => SockOptAnswer::NotQueried,
            (false, Some(dst @ SocketAddr::V4(_))) => SockOptAnswer::V4(dst),
            (false, Some(dst)) => SockOptAnswer::V6(dst),
            (false, None) => SockOptAnswer::NotFound,
        };
        Ok(AcceptEvidence {
            client: ClientAddr::new(ep.remote),
            local: LocalAddr::new(ep.local),
            transparent,
            sockopt,
            mark: None,
            internal: None,
            own_upstream: false,
            redirect_record: RecordAnswer::None,
        })
    }

    fn set_nodelay(&mut self, _socket: &SimFd) {}

    fn redirect_record(&mut self, socket: &SimFd) -> RecordAnswer {
        let net = self.net.borrow();
        match &net.endpoints[net.ep(socket.fd)].record {
            Some(record) => RecordAnswer::Record(record.clone()),
            None => RecordAnswer::None,
        }
    }

    fn connect(
        &mut self,
        upstream: SocketAddr,
        _mark: Option<u32>,
        _source: Option<SocketAddr>,
        record: Option<&RedirectRecord>,
    ) -> io::Result<ConnectStart<SimFd>> {
        let delay = self.rng.range(0, self.faults.connect_delay_ms.max(1)) * 1_000_000;
        let mut net = self.net.borrow_mut();
        if net.fds.len() >= net.fd_limit {
            return Err(os(libc::EMFILE));
        }
        // An attempt from here on (out of descriptors, there was none).
        *net.connects.entry(upstream).or_insert(0) += 1;
        if net.socket_fails.contains(&upstream) {
            return Err(os(libc::ENOBUFS));
        }
        if net.unreachable.contains(&upstream) {
            return Ok(ConnectStart::Failed(IoErrorKind::Unreachable));
        }
        let ep = net.connect(upstream, self.now + delay, record);
        let fd = net.open(Object::Socket(ep)).map_err(os)?;
        drop(net);
        Ok(ConnectStart::InProgress(self.fd(fd)))
    }

    fn socket_error(&mut self, socket: &SimFd) -> Option<IoErrorKind> {
        let mut net = self.net.borrow_mut();
        let ep = net.ep(socket.fd);
        let e = &mut net.endpoints[ep];
        match e.error {
            Some(err) if !e.error_taken => {
                e.error_taken = true;
                Some(errno_kind(err))
            }
            _ => None,
        }
    }

    fn local_addr(&mut self, socket: &SimFd) -> io::Result<SocketAddr> {
        let net = self.net.borrow();
        Ok(net.endpoints[net.ep(socket.fd)].local)
    }

    fn shutdown_write(&mut self, socket: &SimFd) -> Result<(), IoErrorKind> {
        let mut net = self.net.borrow_mut();
        let ep = net.ep(socket.fd);
        net.shutdown(ep).map_err(errno_kind)
    }

    fn arm_reset(&mut self, socket: &SimFd) {
        let mut net = self.net.borrow_mut();
        let ep = net.ep(socket.fd);
        net.endpoints[ep].linger0 = true;
    }

    fn stop_listening(&mut self, socket: &SimFd) {
        let mut net = self.net.borrow_mut();
        let Some(Object::Listener(l)) = net.object(socket.fd) else {
            return;
        };
        net.listeners[l].stopped = true;
        // Handshakes completed but never accepted are reset when the listener goes.
        while let Some(ep) = net.listeners[l].backlog.pop_front() {
            net.abort(ep);
            // Clients only: the proxy's own connections that looped back are not anyone's.
            if net.endpoints[ep].remote.ip() != net.proxy_ip {
                net.never_accepted += 1;
            }
        }
    }

    fn set_rcvlowat(&mut self, socket: &SimFd, bytes: u32) -> io::Result<()> {
        let mut net = self.net.borrow_mut();
        let ep = net.ep(socket.fd);
        net.endpoints[ep].rcvlowat = bytes as usize;
        Ok(())
    }

    fn set_peek_offset(&mut self, socket: &SimFd, offset: i32) -> io::Result<()> {
        let mut net = self.net.borrow_mut();
        let ep = net.ep(socket.fd);
        net.endpoints[ep].peek_off = usize::try_from(offset).ok();
        Ok(())
    }

    fn peek(&mut self, socket: &SimFd, buf: &mut [u8]) -> io::Result<usize> {
        // Readiness is a hint: the bytes a poll saw may not be there for the peek after it.
        if self.rng.chance(self.faults.spurious_eagain) {
            self.fired("spurious_eagain");
            return Err(os(libc::EAGAIN));
        }
        let mut net = self.net.borrow_mut();
        let ep = net.ep(socket.fd);
        let e = &mut net.endpoints[ep];
        if let Some(err) = e.error {
            return Err(os(err));
        }
        let from = e.peek_off.unwrap_or(0).min(e.recv.len());
        let n = buf.len().min(e.recv.len() - from);
        if n == 0 {
            return if e.fin { Ok(0) } else { Err(os(libc::EAGAIN)) };
        }
        for (slot, byte) in buf.iter_mut().zip(e.recv.range(from..from + n)) {
            *slot = *byte;
        }
        if let Some(off) = e.peek_off.as_mut() {
            *off += n;
        }
        Ok(n)
    }

    fn reserve_fd(&mut self) -> io::Result<SimFd> {
        let fd = self.net.borrow_mut().open(Object::Spare).map_err(os)?;
        Ok(self.fd(fd))
    }

    fn new_pipe(&mut self, size_bytes: u32) -> Option<(SimPipe, u32)> {
        let capacity = if self.rng.chance(self.faults.small_pipe) {
            4096
        } else {
            size_bytes as usize
        };
        // pipe(2) fails now and then (ENFILE: the system's file table is full).
        if self.rng.chance(self.faults.small_pipe / 3) {
            self.fired("pipe_fails");
            return None;
        }
        let mut net = self.net.borrow_mut();
        if net.fds.len() + 2 > net.fd_limit {
            net.fire("pipe_no_fd");
            return None;
        }
        let id = net.pipes.len();
        net.pipes.push(net::Pipe {
            data: VecDeque::new(),
            capacity,
            closed: false,
        });
        let read = net.open(Object::Pipe(id)).ok()?;
        let write = net.open(Object::Pipe(id)).ok()?;
        drop(net);
        if capacity < size_bytes as usize {
            self.fired("small_pipe");
        }
        Some((
            SimPipe {
                id,
                read: self.fd(read),
                _write: self.fd(write),
            },
            capacity as u32,
        ))
    }

    fn splice_in(&mut self, src: i32, pipe: &SimPipe, len: usize) -> Result<usize, Errno> {
        if self.rng.chance(self.faults.spurious_eagain) {
            self.fired("spurious_eagain");
            return Err(libc::EAGAIN);
        }
        let mut net = self.net.borrow_mut();
        let ep = net.ep(src);
        let free = net.pipes[pipe.id].capacity - net.pipes[pipe.id].data.len();
        let mut buf = vec![0u8; len.min(free)];
        let n = net.read(ep, &mut buf)?;
        drop(net);
        let kept = self.short(n);
        let mut net = self.net.borrow_mut();
        if kept < n {
            // Put back what the short splice did not take (it stays first in the queue).
            let e = &mut net.endpoints[ep];
            for &byte in buf[kept..n].iter().rev() {
                e.recv.push_front(byte);
            }
        }
        net.pipes[pipe.id].data.extend(&buf[..kept]);
        Ok(kept)
    }

    fn splice_out(&mut self, pipe: &SimPipe, sink: i32, len: usize) -> Result<usize, Errno> {
        let net = self.net.borrow();
        let ep = net.ep(sink);
        let n = len.min(net.pipes[pipe.id].data.len());
        let bytes: Vec<u8> = net.pipes[pipe.id].data.iter().take(n).copied().collect();
        drop(net);
        let n = self.short(n);
        let mut net = self.net.borrow_mut();
        let written = net.write(ep, &bytes[..n])?;
        net.pipes[pipe.id].data.drain(..written);
        Ok(written)
    }

    fn read(&mut self, fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
        if self.rng.chance(self.faults.spurious_eagain) {
            self.fired("spurious_eagain");
            return Err(libc::EAGAIN);
        }
        let n = self.short(buf.len());
        let mut net = self.net.borrow_mut();
        let ep = net.ep(fd);
        net.read(ep, &mut buf[..n])
    }

    fn send(&mut self, fd: i32, buf: &[u8]) -> Result<usize, Errno> {
        let n = self.short(buf.len());
        let mut net = self.net.borrow_mut();
        let ep = net.ep(fd);
        net.write(ep, &buf[..n])
    }

    fn native_dir(&self, _path: DataPath) -> Option<NoNative> {
        None
    }

    fn recycle_stale(&mut self, _token: Token, _flags: u32) {}
}
