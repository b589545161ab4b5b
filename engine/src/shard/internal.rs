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

use origdst_core::outcome::IoErrorKind;

use super::errno_kind;
use super::io::{Io, PUMP_ROUNDS_MAX};
use crate::kernel::Kernel;
pub use crate::pairs::{Pair, Which};
use crate::progress::{DirEnd, Progress};
use crate::slots::{DirKey, SlotKey};
use crate::token::Kind;

/// Whether a direction fills its queue from its socket or drains it into its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads its socket into the queue.
    FdToQueue,
    /// Writes the queue into its socket.
    QueueToFd,
}

/// One direction of a connection with an internal end.
#[derive(Debug)]
pub struct InternalDir {
    /// The pair, by key: a pair's index is reused once both its connections left, and a
    /// connection that outlives its pair must find nothing there, never the next pair.
    pair: SlotKey,
    which: Which,
    role: Role,
    /// The one-shot poll in flight on the socket end, if any.
    armed: Option<Kind>,
}

impl InternalDir {
    /// The direction of `pair`'s `which` queue playing `role`.
    pub fn new(pair: SlotKey, which: Which, role: Role) -> Self {
        Self {
            pair,
            which,
            role,
            armed: None,
        }
    }

    /// Moves bytes until the socket or the queue blocks, the direction ends, or the round budget
    /// is spent. `fds` = (source, sink); the internal end's entry is unused.
    /// Moves bytes between its socket and its queue until one side waits.
    pub fn pump<K: Kernel>(&mut self, io: &mut Io<K>, fds: (i32, i32), key: DirKey) -> Progress {
        if self.armed.is_some() {
            return Progress::default();
        }
        match self.role {
            Role::FdToQueue => self.fill(io, fds.0, key),
            Role::QueueToFd => self.drain(io, fds.1, key),
        }
    }

    /// The poll in flight on the socket end, if any.
    /// The poll in flight, if any.
    pub fn armed(&self) -> Option<Kind> {
        self.armed
    }

    /// A readiness completion on the socket: pump again.
    /// Its poll completed: pump again.
    pub fn on_poll<K: Kernel>(&mut self, io: &mut Io<K>, fds: (i32, i32), key: DirKey) -> Progress {
        self.armed = None;
        self.pump(io, fds, key)
    }

    fn fill<K: Kernel>(&mut self, io: &mut Io<K>, src: i32, key: DirKey) -> Progress {
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
            match io.kernel.read(src, space) {
                Ok(0) => return Progress::ended(bytes, DirEnd::Eof),
                Ok(n) => {
                    bytes += n as u64;
                    if let Some(waiting) = queue.commit(n) {
                        io.ready.push_back(waiting);
                    }
                }
                Err(libc::EAGAIN) => {
                    self.arm_poll(io, src, key, Kind::PollIn, libc::POLLIN);
                    return Progress::bytes(bytes);
                }
                Err(errno) => {
                    return Progress::ended(
                        bytes,
                        DirEnd::Failed(key.dir.source(), errno_kind(errno)),
                    );
                }
            }
        }
        io.ready.push_back(key);
        Progress::bytes(bytes)
    }

    fn drain<K: Kernel>(&mut self, io: &mut Io<K>, sink: i32, key: DirKey) -> Progress {
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
            match io.kernel.send(sink, queue.filled_slice()) {
                Ok(n) => {
                    bytes += n as u64;
                    if let Some(waiting) = queue.consume(n) {
                        io.ready.push_back(waiting);
                    }
                }
                Err(libc::EAGAIN) => {
                    self.arm_poll(io, sink, key, Kind::PollOut, libc::POLLOUT);
                    return Progress::bytes(bytes);
                }
                Err(errno) => {
                    return Progress::ended(
                        bytes,
                        DirEnd::Failed(key.dir.sink(), errno_kind(errno)),
                    );
                }
            }
        }
        io.ready.push_back(key);
        Progress::bytes(bytes)
    }

    fn arm_poll<K: Kernel>(
        &mut self,
        io: &mut Io<K>,
        fd: i32,
        key: DirKey,
        kind: Kind,
        events: i16,
    ) {
        self.armed = Some(kind);
        io.poll_dir(fd, key, kind, events);
    }
}
