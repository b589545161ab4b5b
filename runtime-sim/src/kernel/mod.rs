//! A simulated kernel for the engine's shard: the production [`origdst_engine::shard::Shard`]
//! runs over it unchanged. Sockets with receive windows, pipes with capacities, a descriptor
//! limit, one-shot and multishot readiness with io_uring's completion shapes, cancels that
//! complete the cancelled operation with `-ECANCELED`, REDIRECT's original destination — and
//! faults chosen by one `u64` seed (see [`Faults`]): completions reordered within a batch, short
//! splices, reads and sends, spurious `EAGAIN`, pipes smaller than asked or refused, accepts and
//! polls that fail, connects that complete late or never, descriptors that run out.
//!
//! Time is virtual: the shard's `wait` advances it in ticks, letting the [`Workload`] (the
//! clients and servers outside the proxy) act each tick, until a completion is ready or the
//! timeout passes. When the workload is done, the kernel asks the shard to drain through its
//! [`SimControl`]; `Shard::run` then returns and the test inspects what is left.
//!
//! Here: the kernel's state and how registrations become completions (`evaluate`, cancels).
//! `ops` is its side of the engine's `Kernel` interface, `net` the sockets, pipes and descriptor
//! table, `faults` what goes wrong and when, `handles` what the shard holds, `accept_watch` the
//! watchdog over accepting.

mod accept_watch;
mod faults;
mod handles;
pub mod net;
mod ops;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use origdst_engine::kernel::{MORE, interleave};
use origdst_engine::token::{Kind, Token};

use self::accept_watch::AcceptWatch;
pub use self::faults::{Faults, Rng};
pub use self::handles::{SimControl, SimFd, SimPipe};
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
            changes: std::sync::Mutex::new(Vec::new()),
            reloads: std::sync::Mutex::new(Vec::new()),
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
        let (_, fd) = self.net.borrow_mut().listen(addr);
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
                                if net.from_proxy(ep) {
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
