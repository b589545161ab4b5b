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

pub(crate) use origdst_engine::pairs::{Pair, Which};

use super::io::{DirKey, Io, PUMP_ROUNDS_MAX};
use crate::sys::errno_kind;
use origdst_engine::progress::{DirEnd, Progress};
use origdst_engine::token::Kind;

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
                queue.wait_for_space(key);
                return Progress::bytes(bytes);
            }
            // SAFETY: the shard keeps the descriptor open while the connection lives.
            let src_fd = unsafe { BorrowedFd::borrow_raw(src) };
            match nix::unistd::read(src_fd, space) {
                Ok(0) => return Progress::ended(bytes, DirEnd::Eof),
                Ok(n) => {
                    bytes += n as u64;
                    if let Some(waiting) = queue.commit(n) {
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
            if queue.is_empty() {
                if queue.eof {
                    return Progress::ended(bytes, DirEnd::Eof);
                }
                queue.wait_for_bytes(key);
                return Progress::bytes(bytes);
            }
            match nix::sys::socket::send(
                sink,
                queue.filled_slice(),
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => {
                    bytes += n as u64;
                    if let Some(waiting) = queue.consume(n) {
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
