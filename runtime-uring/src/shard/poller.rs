//! Where a shard's events come from: io_uring (the default) or epoll (when io_uring is refused:
//! container seccomp profiles, `kernel.io_uring_disabled`). Both hand the shard the same
//! `(user_data, result, flags)` completions, so there is one state machine above them. The epoll
//! side emulates the three io_uring operations the readiness data path uses: one-shot `POLL_ADD`
//! (per descriptor, a read and a write interest), multishot accept (level-triggered listener plus
//! an `accept4` loop) and a persistent poll (the wake-up eventfd).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use io_uring::{IoUring, opcode, squeue, types};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use super::spin::SpinWindow;

/// Which event source a shard runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// io_uring (the default).
    IoUring,
    /// epoll: where io_uring is refused (seccomp, `kernel.io_uring_disabled`), or on request.
    Epoll,
}

impl Backend {
    /// The spelling in logs and on the command line.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::IoUring => "io_uring",
            Self::Epoll => "epoll",
        }
    }
}

/// The event source.
pub(crate) enum Poller {
    Uring {
        ring: IoUring,
        /// SQEs that did not fit the submission queue; flushed before anything else each turn.
        backlog: VecDeque<squeue::Entry>,
        /// How long to poll before sleeping (adaptive, up to `busy_poll`).
        spin: SpinWindow,
    },
    Epoll(EpollPoller),
}

/// What epoll watches on one descriptor.
#[derive(Debug, Default)]
struct Interest {
    /// One-shot read interest (POLLIN, maybe POLLRDHUP) and its user_data.
    read: Option<(u32, u64)>,
    /// One-shot write interest (POLLOUT) and its user_data.
    write: Option<(u32, u64)>,
    /// Persistent level-triggered interest: (user_data, accept loop?).
    persistent: Option<(u64, bool)>,
    /// One-shot error/hang-up watch (epoll reports EPOLLERR and EPOLLHUP whatever the mask).
    watch: Option<u64>,
    registered: bool,
}

impl Interest {
    fn flags(&self) -> EpollFlags {
        let mut bits = 0u32;
        if let Some((events, _)) = self.read {
            bits |= events;
        }
        if let Some((events, _)) = self.write {
            bits |= events;
        }
        if self.persistent.is_some() {
            bits |= libc::POLLIN as u32;
        }
        EpollFlags::from_bits_truncate(bits as i32)
    }

    fn is_empty(&self) -> bool {
        self.read.is_none()
            && self.write.is_none()
            && self.persistent.is_none()
            && self.watch.is_none()
    }
}

/// epoll with io_uring's operation shapes.
pub(crate) struct EpollPoller {
    epoll: Epoll,
    interests: HashMap<RawFd, Interest>,
    events: Vec<EpollEvent>,
    /// Completions produced and not yet taken by the shard.
    pending: VecDeque<(u64, i32, u32)>,
    /// How long to poll before sleeping (adaptive, up to `busy_poll`).
    spin: SpinWindow,
}

impl Poller {
    pub(crate) fn uring(ring: IoUring, spin: Duration) -> Self {
        Self::Uring {
            ring,
            backlog: VecDeque::new(),
            spin: SpinWindow::new(spin),
        }
    }

    pub(crate) fn epoll(spin: Duration) -> std::io::Result<Self> {
        Ok(Self::Epoll(EpollPoller {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            interests: HashMap::new(),
            events: vec![EpollEvent::empty(); EPOLL_EVENTS_MAX],
            pending: VecDeque::new(),
            spin: SpinWindow::new(spin),
        }))
    }

    /// Queues an io_uring SQE (io_uring backend only: the copy data path and cancels by
    /// user_data exist only there). If the submission queue is full, submits and retries, and
    /// only if that fails too keeps it for the next turn.
    pub(crate) fn push(&mut self, entry: squeue::Entry) {
        let Self::Uring { ring, backlog, .. } = self else {
            unreachable!("io_uring operation on the epoll backend");
        };
        if !backlog.is_empty() {
            backlog.push_back(entry);
            return;
        }
        // SAFETY (for every push in this crate): SQEs reference only memory that outlives the
        // operation — descriptors kept open until their cancels are submitted, buffer-ring memory
        // dropped after the ring, and no stack memory.
        if unsafe { ring.submission().push(&entry) }.is_ok() {
            return;
        }
        let _ = ring.submit();
        if unsafe { ring.submission().push(&entry) }.is_err() {
            backlog.push_back(entry);
        }
    }

    /// Whether SQEs wait for room (their descriptors must stay open until they are submitted).
    pub(crate) fn has_backlog(&self) -> bool {
        matches!(self, Self::Uring { backlog, .. } if !backlog.is_empty())
    }

    /// One-shot readiness: a completion with the ready events once `fd` has any of `events`.
    pub(crate) fn poll_once(&mut self, fd: RawFd, events: u32, user_data: u64) {
        match self {
            Self::Uring { .. } => {
                let poll = opcode::PollAdd::new(types::Fd(fd), events).build();
                self.push(poll.user_data(user_data));
            }
            Self::Epoll(epoll) => {
                let interest = epoll.interests.entry(fd).or_default();
                if events & libc::POLLOUT as u32 != 0 {
                    interest.write = Some((events, user_data));
                } else {
                    interest.read = Some((events, user_data));
                }
                epoll.sync(fd);
            }
        }
    }

    /// One-shot watch for errors and hang-ups on `fd`: a completion with the events once the
    /// socket has an error (a reset) or is hung up. io_uring adds EPOLLRDHUP to every poll, so
    /// there a peer's FIN fires it too; the shard then stops watching (nothing more can fail
    /// silently on the reading side, and the writing side's errors reach its pump).
    pub(crate) fn watch(&mut self, fd: RawFd, user_data: u64) {
        match self {
            Self::Uring { .. } => {
                let poll = opcode::PollAdd::new(types::Fd(fd), libc::POLLERR as u32).build();
                self.push(poll.user_data(user_data));
            }
            Self::Epoll(epoll) => {
                epoll.interests.entry(fd).or_default().watch = Some(user_data);
                epoll.sync(fd);
            }
        }
    }

    /// Multishot accept on a listener: one completion per accepted descriptor (flag MORE).
    pub(crate) fn accept_multi(&mut self, fd: RawFd, user_data: u64) {
        match self {
            Self::Uring { .. } => {
                let accept = opcode::AcceptMulti::new(types::Fd(fd))
                    .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                    .build();
                self.push(accept.user_data(user_data));
            }
            Self::Epoll(epoll) => {
                epoll.interests.entry(fd).or_default().persistent = Some((user_data, true));
                epoll.sync(fd);
            }
        }
    }

    /// Persistent readiness (the wake-up eventfd): a completion (flag MORE) whenever readable.
    pub(crate) fn poll_multi(&mut self, fd: RawFd, user_data: u64) {
        match self {
            Self::Uring { .. } => {
                let poll = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                    .multi(true)
                    .build();
                self.push(poll.user_data(user_data));
            }
            Self::Epoll(epoll) => {
                epoll.interests.entry(fd).or_default().persistent = Some((user_data, false));
                epoll.sync(fd);
            }
        }
    }

    /// Cancels a connection's operations before its descriptors close: io_uring by each
    /// operation's `user_data` (a hash lookup; cancelling by descriptor scans every request in
    /// flight, which made closing 10 000 connections quadratic), epoll by forgetting `fds`.
    pub(crate) fn cancel_ops(&mut self, fds: &[RawFd], targets: &[u64], user_data: u64) {
        match self {
            Self::Uring { .. } => {
                for &target in targets {
                    self.push(
                        opcode::AsyncCancel::new(target)
                            .build()
                            .user_data(user_data),
                    );
                }
            }
            Self::Epoll(epoll) => {
                for &fd in fds {
                    epoll.forget(fd);
                }
            }
        }
    }

    /// Cancels the multishot accept armed on listener `fd` with `target` user_data.
    pub(crate) fn cancel_accept(&mut self, fd: RawFd, target: u64, user_data: u64) {
        match self {
            Self::Uring { .. } => {
                self.push(
                    opcode::AsyncCancel::new(target)
                        .build()
                        .user_data(user_data),
                );
            }
            Self::Epoll(epoll) => {
                // io_uring reports the end of a cancelled multishot; so does this.
                epoll.forget(fd);
                epoll.pending.push_back((target, -libc::ECANCELED, 0));
            }
        }
    }

    /// Submits what is queued and waits for at least `want` completions or `timeout`.
    pub(crate) fn wait(&mut self, want: usize, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Self::Uring {
                ring,
                backlog,
                spin,
            } => {
                while let Some(entry) = backlog.front() {
                    if unsafe { ring.submission().push(entry) }.is_err() {
                        break;
                    }
                    backlog.pop_front();
                }
                let started = std::time::Instant::now();
                let window = spin.window().min(timeout.unwrap_or(Duration::MAX));
                if want > 0 && !window.is_zero() && spin_for_completions(ring, window) {
                    spin.hit();
                    return Ok(());
                }
                let result = match (want, timeout) {
                    (0, _) => ring.submit(),
                    (_, Some(timeout)) => {
                        let ts = types::Timespec::from(timeout.max(Duration::from_micros(1)));
                        let args = types::SubmitArgs::new().timespec(&ts);
                        ring.submitter().submit_with_args(want, &args)
                    }
                    (_, None) => ring.submit_and_wait(want),
                };
                if want > 0 {
                    spin.slept(started.elapsed());
                }
                match result {
                    Ok(_) => Ok(()),
                    Err(err) => match err.raw_os_error() {
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => Ok(()),
                        _ => Err(err),
                    },
                }
            }
            Self::Epoll(epoll) => epoll.wait(want, timeout),
        }
    }

    /// (waits a busy poll answered, waits that slept) since the start.
    pub(crate) fn wait_counts(&self) -> (u64, u64) {
        match self {
            Self::Uring { spin, .. } => spin.counts(),
            Self::Epoll(epoll) => epoll.spin.counts(),
        }
    }

    /// Submits without waiting (io_uring; a no-op for epoll).
    pub(crate) fn submit(&mut self) {
        if let Self::Uring { ring, .. } = self {
            let _ = ring.submit();
        }
    }

    /// Moves every completion into `out` as (user_data, result, flags).
    pub(crate) fn completions(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        match self {
            Self::Uring { ring, .. } => out.extend(
                ring.completion()
                    .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
            ),
            Self::Epoll(epoll) => out.extend(epoll.pending.drain(..)),
        }
    }
}

impl EpollPoller {
    /// Brings the kernel's registration of `fd` in line with its interests.
    fn sync(&mut self, fd: RawFd) {
        let Some(interest) = self.interests.get_mut(&fd) else {
            return;
        };
        // SAFETY: the shard keeps `fd` open until it has forgotten it here.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let event = EpollEvent::new(interest.flags(), fd as u64);
        let result = if interest.is_empty() {
            let result = if interest.registered {
                self.epoll.delete(borrowed)
            } else {
                Ok(())
            };
            self.interests.remove(&fd);
            result
        } else if interest.registered {
            self.epoll.modify(borrowed, &mut event.clone())
        } else {
            interest.registered = true;
            self.epoll.add(borrowed, event)
        };
        if let Err(errno) = result {
            // A descriptor epoll refuses (closed under us would be a bug): report it to whoever
            // waits on it as an error, so the connection ends instead of hanging.
            tracing::warn!(fd, %errno, "epoll registration failed");
            if let Some(interest) = self.interests.remove(&fd) {
                for (_, user_data) in [interest.read, interest.write].into_iter().flatten() {
                    self.pending.push_back((user_data, -(errno as i32), 0));
                }
                if let Some(user_data) = interest.watch {
                    self.pending.push_back((user_data, -(errno as i32), 0));
                }
            }
        }
    }

    fn forget(&mut self, fd: RawFd) {
        if let Some(interest) = self.interests.get_mut(&fd) {
            interest.read = None;
            interest.write = None;
            interest.persistent = None;
            interest.watch = None;
            self.sync(fd);
        }
    }

    fn wait(&mut self, want: usize, timeout: Option<Duration>) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        let window = self.spin.window().min(timeout.unwrap_or(Duration::MAX));
        if want > 0 && self.pending.is_empty() && !window.is_zero() {
            let until = started + window;
            loop {
                match self.epoll.wait(&mut self.events, EpollTimeout::ZERO) {
                    Ok(0) | Err(Errno::EINTR) => {}
                    Ok(n) => {
                        self.dispatch_all(n);
                        self.spin.hit();
                        return Ok(());
                    }
                    Err(errno) => return Err(errno.into()),
                }
                if std::time::Instant::now() >= until {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        let timeout = if want == 0 || !self.pending.is_empty() {
            EpollTimeout::ZERO
        } else {
            match timeout {
                None => EpollTimeout::NONE,
                Some(t) => {
                    // Round up: waking a millisecond early would spin until the timer is due.
                    let ms = t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                    EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::NONE)
                }
            }
        };
        let sleeps = timeout != EpollTimeout::ZERO;
        let result = self.epoll.wait(&mut self.events, timeout);
        if sleeps {
            self.spin.slept(started.elapsed());
        }
        let n = match result {
            Ok(n) => n,
            Err(Errno::EINTR) => return Ok(()),
            Err(errno) => return Err(errno.into()),
        };
        self.dispatch_all(n);
        Ok(())
    }

    fn dispatch_all(&mut self, n: usize) {
        for index in 0..n {
            let event = self.events[index];
            let fd = event.data() as RawFd;
            let ready = event.events().bits() as u32;
            self.dispatch(fd, ready);
        }
    }

    /// Turns one epoll event into completions: disarm one-shot interests that fired, accept in
    /// a loop on listeners, report persistent polls.
    fn dispatch(&mut self, fd: RawFd, ready: u32) {
        let Some(interest) = self.interests.get_mut(&fd) else {
            return;
        };
        let errors = (libc::POLLERR | libc::POLLHUP) as u32;
        let mut fired = Vec::with_capacity(3);
        if let Some((events, user_data)) = interest.read
            && ready & (events | errors) != 0
        {
            interest.read = None;
            fired.push((user_data, (ready & (events | errors)) as i32, 0));
        }
        if let Some((events, user_data)) = interest.write
            && ready & (events | errors) != 0
        {
            interest.write = None;
            fired.push((user_data, (ready & (events | errors)) as i32, 0));
        }
        if let Some(user_data) = interest.watch
            && ready & errors != 0
        {
            interest.watch = None;
            fired.push((user_data, (ready & errors) as i32, 0));
        }
        let persistent = interest.persistent;
        self.pending.extend(fired);
        match persistent {
            Some((user_data, true)) => self.accept_all(fd, user_data),
            Some((user_data, false)) => {
                self.pending
                    .push_back((user_data, ready as i32, cqueue_more_flag()));
            }
            None => {}
        }
        self.sync(fd);
    }

    /// Accepts until the backlog is empty (bounded per turn), as a multishot accept would.
    fn accept_all(&mut self, fd: RawFd, user_data: u64) {
        for _ in 0..ACCEPTS_PER_EVENT_MAX {
            // SAFETY: a listening socket the shard owns; accept4 returns a fresh descriptor.
            let accepted = unsafe {
                libc::accept4(
                    fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if accepted >= 0 {
                self.pending
                    .push_back((user_data, accepted, cqueue_more_flag()));
                continue;
            }
            let errno = Errno::last();
            if errno != Errno::EAGAIN && errno != Errno::EINTR {
                // As io_uring ends a multishot accept on error: disarm, report without MORE,
                // and let the shard back off or pause before arming again. A level-triggered
                // listener left armed would fire in a loop while descriptors are exhausted.
                self.forget(fd);
                self.pending.push_back((user_data, -(errno as i32), 0));
            }
            return;
        }
    }
}

/// IORING_CQE_F_MORE (the uapi's `1 << 1`; io-uring keeps its constant private): the multishot
/// operation stays armed.
fn cqueue_more_flag() -> u32 {
    1 << 1
}

const EPOLL_EVENTS_MAX: usize = 1024;
/// A listener with a deep backlog still yields to the connections it already has.
const ACCEPTS_PER_EVENT_MAX: usize = 256;

/// `busy_poll` on io_uring: enter with GETEVENTS and `min_complete` 0 (which runs the deferred
/// task work, where network completions wait under DEFER_TASKRUN, and returns) until a completion
/// shows up or `spin` passes. Whether one did.
fn spin_for_completions(ring: &mut IoUring, spin: Duration) -> bool {
    let until = std::time::Instant::now() + spin;
    loop {
        let pending = ring.submission().len() as u32;
        // SAFETY: no argument struct is passed; the SQEs being submitted are covered by `push`'s
        // invariant.
        let _ = unsafe {
            ring.submitter()
                .enter::<libc::sigset_t>(pending, 0, IORING_ENTER_GETEVENTS, None)
        };
        if !ring.completion().is_empty() {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::hint::spin_loop();
    }
}

/// `io_uring_enter(2)`'s flag (the io-uring crate sets it only inside `submit_and_wait`).
const IORING_ENTER_GETEVENTS: u32 = 1;

#[cfg(test)]
mod tests {
    #[test]
    fn the_more_flag_is_io_urings() {
        assert!(io_uring::cqueue::more(super::cqueue_more_flag()));
    }
}
