//! Internal listeners: in-process connections between two connections of the same shard, no
//! kernel socket. A cluster endpoint naming an internal listener makes the *outer* connection's
//! upstream one end of a [`Pair`]; the *inner* connection, routed by that listener's config, has
//! the other end as its client. Each direction is a byte queue bounded by `buffer_size_kb`:
//! a full queue stops its producer (backpressure), EOF crosses as a shut write half, and a reset
//! of either end reaches the other connection as an error (never as a clean EOF).
//!
//! ```text
//!   client fd ──FdToQueue──▶ forward ──QueueToFd──▶ upstream fd      (outer c2u, inner c2u)
//!   client fd ◀─QueueToFd─── backward ◀─FdToQueue── upstream fd      (outer u2c, inner u2c)
//! ```

use std::os::fd::{BorrowedFd, RawFd};

use nix::errno::Errno;
use origdst_core::outcome::IoErrorKind;

use super::io::{DirKey, Io, PUMP_ROUNDS_MAX};
use super::progress::{DirEnd, Progress};
use crate::sys::errno_kind;
use crate::token::Kind;

/// One direction's bounded byte queue (a ring, allocated at first use: untouched pages cost no
/// memory, so an idle pair costs a few words).
#[derive(Debug)]
pub(crate) struct Queue {
    ring: Vec<u8>,
    cap: usize,
    head: usize,
    len: usize,
    /// The producer's write half is shut: EOF once the queued bytes are consumed.
    pub(crate) eof: bool,
    /// The direction waiting for bytes, to wake when some arrive.
    consumer_waiting: Option<DirKey>,
    /// The direction waiting for space, to wake when some frees up.
    producer_waiting: Option<DirKey>,
}

impl Queue {
    fn new(cap: usize) -> Self {
        assert!(cap > 0, "an internal queue needs capacity");
        Self {
            ring: Vec::new(),
            cap,
            head: 0,
            len: 0,
            eof: false,
            consumer_waiting: None,
            producer_waiting: None,
        }
    }

    /// The contiguous free region after the queued bytes.
    fn free_slice(&mut self) -> &mut [u8] {
        if self.ring.is_empty() {
            self.ring = vec![0; self.cap];
        }
        let tail = (self.head + self.len) % self.cap;
        let end = if tail >= self.head && self.len < self.cap {
            self.cap
        } else {
            self.head
        };
        let end = if self.len == self.cap { tail } else { end };
        &mut self.ring[tail..end]
    }

    fn commit(&mut self, n: usize) {
        self.len += n;
        assert!(self.len <= self.cap, "queue over its capacity");
    }

    /// The contiguous queued bytes at the head.
    fn filled_slice(&self) -> &[u8] {
        let end = (self.head + self.len).min(self.cap);
        &self.ring[self.head..end]
    }

    fn consume(&mut self, n: usize) {
        assert!(n <= self.len, "consumed more than queued");
        self.head = (self.head + n) % self.cap;
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
        }
    }

    /// The direction waiting for bytes, if any (to wake it).
    pub(crate) fn take_consumer(&mut self) -> Option<DirKey> {
        self.consumer_waiting.take()
    }

    /// Bytes queued and not consumed.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// The two queues between an outer and an inner connection, and who is still there.
#[derive(Debug)]
pub(crate) struct Pair {
    /// Outer c2u → inner c2u.
    pub(crate) forward: Queue,
    /// Inner u2c → outer u2c.
    pub(crate) backward: Queue,
    /// (slot, generation) of the outer connection while it lives.
    pub(crate) outer: Option<(usize, u16)>,
    /// (slot, generation) of the inner connection while it lives.
    pub(crate) inner: Option<(usize, u16)>,
}

impl Pair {
    pub(crate) fn new(cap: usize, outer: (usize, u16)) -> Self {
        Self {
            forward: Queue::new(cap),
            backward: Queue::new(cap),
            outer: Some(outer),
            inner: None,
        }
    }

    pub(crate) fn queue(&mut self, which: Which) -> &mut Queue {
        match which {
            Which::Forward => &mut self.forward,
            Which::Backward => &mut self.backward,
        }
    }
}

/// Which queue of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Forward,
    Backward,
}

/// Whether a direction fills its queue from its socket or drains it into its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    FdToQueue,
    QueueToFd,
}

/// One direction of a connection with an internal end.
#[derive(Debug)]
pub(crate) struct InternalDir {
    pair: usize,
    which: Which,
    role: Role,
    /// The one-shot poll in flight on the socket end, if any.
    armed: Option<Kind>,
}

impl InternalDir {
    pub(crate) fn new(pair: usize, which: Which, role: Role) -> Self {
        Self {
            pair,
            which,
            role,
            armed: None,
        }
    }

    /// Moves bytes until the socket or the queue blocks, the direction ends, or the round budget
    /// is spent. `fds` = (source, sink); the internal end's entry is unused.
    pub(crate) fn pump(&mut self, io: &mut Io, fds: (RawFd, RawFd), key: DirKey) -> Progress {
        if self.armed.is_some() {
            return Progress::default();
        }
        match self.role {
            Role::FdToQueue => self.fill(io, fds.0, key),
            Role::QueueToFd => self.drain(io, fds.1, key),
        }
    }

    /// The poll in flight on the socket end, if any.
    pub(crate) fn armed(&self) -> Option<Kind> {
        self.armed
    }

    /// A readiness completion on the socket: pump again.
    pub(crate) fn on_poll(&mut self, io: &mut Io, fds: (RawFd, RawFd), key: DirKey) -> Progress {
        self.armed = None;
        self.pump(io, fds, key)
    }

    fn fill(&mut self, io: &mut Io, src: RawFd, key: DirKey) -> Progress {
        let mut bytes = 0u64;
        for _ in 0..PUMP_ROUNDS_MAX {
            let Some(pair) = io.pairs.get_mut(self.pair) else {
                return Progress::ended(bytes, DirEnd::Failed(key.dir.sink(), IoErrorKind::Reset));
            };
            let queue = pair.queue(self.which);
            let space = queue.free_slice();
            if space.is_empty() {
                queue.producer_waiting = Some(key);
                return Progress::bytes(bytes);
            }
            // SAFETY: the shard keeps the descriptor open while the connection lives.
            let src_fd = unsafe { BorrowedFd::borrow_raw(src) };
            match nix::unistd::read(src_fd, space) {
                Ok(0) => return Progress::ended(bytes, DirEnd::Eof),
                Ok(n) => {
                    queue.commit(n);
                    bytes += n as u64;
                    if let Some(waiting) = queue.consumer_waiting.take() {
                        io.ready.push_back(waiting);
                    }
                }
                Err(Errno::EAGAIN) => {
                    self.arm_poll(io, src, key, Kind::PollIn, libc::POLLIN);
                    return Progress::bytes(bytes);
                }
                Err(errno) => {
                    return Progress::ended(
                        bytes,
                        DirEnd::Failed(key.dir.source(), errno_kind(errno as i32)),
                    );
                }
            }
        }
        io.ready.push_back(key);
        Progress::bytes(bytes)
    }

    fn drain(&mut self, io: &mut Io, sink: RawFd, key: DirKey) -> Progress {
        let mut bytes = 0u64;
        for _ in 0..PUMP_ROUNDS_MAX {
            let Some(pair) = io.pairs.get_mut(self.pair) else {
                return Progress::ended(
                    bytes,
                    DirEnd::Failed(key.dir.source(), IoErrorKind::Reset),
                );
            };
            let queue = pair.queue(self.which);
            if queue.len() == 0 {
                if queue.eof {
                    return Progress::ended(bytes, DirEnd::Eof);
                }
                queue.consumer_waiting = Some(key);
                return Progress::bytes(bytes);
            }
            match nix::sys::socket::send(
                sink,
                queue.filled_slice(),
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => {
                    queue.consume(n);
                    bytes += n as u64;
                    if let Some(waiting) = queue.producer_waiting.take() {
                        io.ready.push_back(waiting);
                    }
                }
                Err(Errno::EAGAIN) => {
                    self.arm_poll(io, sink, key, Kind::PollOut, libc::POLLOUT);
                    return Progress::bytes(bytes);
                }
                Err(errno) => {
                    return Progress::ended(
                        bytes,
                        DirEnd::Failed(key.dir.sink(), errno_kind(errno as i32)),
                    );
                }
            }
        }
        io.ready.push_back(key);
        Progress::bytes(bytes)
    }

    fn arm_poll(&mut self, io: &mut Io, fd: RawFd, key: DirKey, kind: Kind, events: i16) {
        self.armed = Some(kind);
        io.poll_dir(fd, key, kind, events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_wraps_and_never_exceeds_its_capacity() {
        let mut q = Queue::new(8);
        q.free_slice()[..6].copy_from_slice(b"abcdef");
        q.commit(6);
        assert_eq!(q.filled_slice(), b"abcdef");
        q.consume(4);
        assert_eq!(q.filled_slice(), b"ef");
        // Free space is the tail (2 bytes) first, then the wrapped head.
        assert_eq!(q.free_slice().len(), 2);
        q.free_slice().copy_from_slice(b"gh");
        q.commit(2);
        assert_eq!(q.free_slice().len(), 4);
        q.free_slice().copy_from_slice(b"ijkl");
        q.commit(4);
        assert_eq!(q.len(), 8);
        assert!(q.free_slice().is_empty(), "full");
        assert_eq!(q.filled_slice(), b"efgh");
        q.consume(4);
        assert_eq!(q.filled_slice(), b"ijkl");
        q.consume(4);
        assert_eq!(q.len(), 0);
    }
}
