//! A connection as the shard holds it: core's state machine plus the sockets and the two
//! directions' I/O state.

use std::os::fd::{OwnedFd, RawFd};

use origdst_core::config::DataPath;
use origdst_core::connection::Connection;
use origdst_core::relay::{Dir, Side};
use origdst_core::time::Instant;

use super::copy::CopyDir;
use super::internal::{InternalDir, Role, Which};
use super::io::{DirKey, Io};
use super::opsplice::OpSpliceDir;
use super::splice::SpliceDir;
use crate::sys::raw;
use origdst_engine::progress::Progress;
use origdst_engine::token::Token;

/// One direction's data path state.
#[derive(Debug)]
pub(crate) enum DirIo {
    Copy(CopyDir),
    Splice(SpliceDir),
    OpSplice(OpSpliceDir),
    /// One end is an internal-listener queue.
    Internal(InternalDir),
}

impl DirIo {
    fn new(path: DataPath) -> Self {
        match path {
            DataPath::UringCopy => Self::Copy(CopyDir::default()),
            DataPath::UringSplice => Self::Splice(SpliceDir::default()),
            DataPath::UringOpSplice => Self::OpSplice(OpSpliceDir::default()),
        }
    }

    /// `Transfer{dir}`.
    pub(crate) fn start(&mut self, io: &mut Io, fds: (RawFd, RawFd), key: DirKey) -> Progress {
        match self {
            Self::Copy(copy) => {
                copy.start(io, fds.0, key);
                Progress::default()
            }
            Self::Splice(splice) => splice.pump(io, fds, key),
            Self::OpSplice(op) => op.start(io, fds, key),
            Self::Internal(internal) => internal.pump(io, fds, key),
        }
    }

    /// Woken from the ready queue (yielded, or a buffer/pipe came back).
    pub(crate) fn resume(&mut self, io: &mut Io, fds: (RawFd, RawFd), key: DirKey) -> Progress {
        match self {
            Self::Copy(copy) => {
                copy.resume(io, fds.0, key);
                Progress::default()
            }
            Self::Splice(splice) => splice.pump(io, fds, key),
            Self::OpSplice(op) => op.start(io, fds, key),
            Self::Internal(internal) => internal.pump(io, fds, key),
        }
    }

    /// The `user_data` of the operations in flight for this direction. Only those: each cancel
    /// costs the kernel a search (io-wq's lists included), and a closing connection whose
    /// directions both ended has none, so a short connection closes with no cancel at all.
    pub(crate) fn inflight(&self, key: DirKey, out: &mut Vec<u64>) {
        let armed = match self {
            Self::Copy(copy) => return copy.inflight(key, out),
            Self::OpSplice(op) => op.armed(),
            Self::Splice(splice) => splice.armed(),
            Self::Internal(internal) => internal.armed(),
        };
        if let Some(kind) = armed {
            out.push(Token::new(kind, key.slot, key.generation, key.dir).encode());
        }
    }

    pub(crate) fn release(&mut self, io: &mut Io) {
        match self {
            Self::Copy(copy) => copy.release(io),
            Self::Splice(splice) => splice.release(io),
            Self::OpSplice(op) => op.release(io),
            Self::Internal(_) => {}
        }
    }
}

/// The error watch on one socket ([`super::Shard::arm_watches`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Watch {
    /// Not armed yet.
    Off,
    /// A poll is in flight.
    Armed,
    /// Fired or cancelled; never re-armed (the socket hung up).
    Done,
}

pub(crate) struct ConnIo {
    pub(crate) core: Connection,
    pub(crate) generation: u16,
    /// `None` for an inner connection: its client is an internal-listener pair.
    pub(crate) client: Option<OwnedFd>,
    pub(crate) upstream: Option<OwnedFd>,
    pub(crate) dirs: [DirIo; 2],
    /// The deadline of this connection's live entry in the timer heap, if any.
    pub(crate) timer_at: Option<Instant>,
    /// (local port, key) of the upstream socket in the shared loop registry.
    pub(crate) own_upstream: Option<(u16, u64)>,
    /// While reading the request head: the most bytes to peek.
    pub(crate) peek_max: u32,
    /// While reading the request head: the bytes core holds already.
    pub(crate) peek_have: u32,
    /// The client socket's peek offset is on (SO_PEEK_OFF): a peek returns only new bytes.
    pub(crate) peek_incremental: bool,
    /// This connection's upstream is an internal listener: the pair (outer end).
    pub(crate) internal_upstream: Option<usize>,
    /// This connection came from an internal listener: the pair (inner end).
    pub(crate) internal_client: Option<usize>,
    /// The listener that handled it, kept only when an access log wants it.
    pub(crate) listener_name: Option<std::sync::Arc<str>>,
    /// A POLLOUT on the connecting upstream socket is in flight.
    pub(crate) connect_poll_armed: bool,
    /// A POLLIN on the client while reading the request head is in flight.
    pub(crate) head_poll_armed: bool,
    /// The error watches on the client (0) and the upstream (1) socket.
    pub(crate) watch: [Watch; 2],
}

impl ConnIo {
    pub(crate) fn new(
        core: Connection,
        generation: u16,
        client: Option<OwnedFd>,
        path: DataPath,
    ) -> Self {
        Self {
            core,
            generation,
            client,
            upstream: None,
            dirs: [DirIo::new(path), DirIo::new(path)],
            timer_at: None,
            own_upstream: None,
            peek_max: 0,
            peek_have: 0,
            peek_incremental: false,
            internal_upstream: None,
            internal_client: None,
            listener_name: None,
            connect_poll_armed: false,
            head_poll_armed: false,
            watch: [Watch::Off; 2],
        }
    }

    pub(crate) fn fd(&self, side: Side) -> Option<&OwnedFd> {
        match side {
            Side::Client => self.client.as_ref(),
            Side::Upstream => self.upstream.as_ref(),
        }
    }

    /// The pair behind `side`, if that side is an internal-listener end.
    pub(crate) fn internal(&self, side: Side) -> Option<usize> {
        match side {
            Side::Client => self.internal_client,
            Side::Upstream => self.internal_upstream,
        }
    }

    /// (source, sink) descriptors of `dir`; -1 for an internal end. Only called while relaying,
    /// when both ends exist.
    pub(crate) fn fds(&self, dir: Dir) -> (RawFd, RawFd) {
        let fd = |side| match self.internal(side) {
            Some(_) => -1,
            None => raw(self.fd(side).expect("both sockets exist while relaying")),
        };
        (fd(dir.source()), fd(dir.sink()))
    }

    /// Turns both directions into queue pumps around `pair`; `outer`: this connection's upstream
    /// is the pair (else its client is).
    pub(crate) fn use_pair(&mut self, pair: usize, outer: bool) {
        let (c2u, u2c) = if outer {
            self.internal_upstream = Some(pair);
            (
                InternalDir::new(pair, Which::Forward, Role::FdToQueue),
                InternalDir::new(pair, Which::Backward, Role::QueueToFd),
            )
        } else {
            self.internal_client = Some(pair);
            (
                InternalDir::new(pair, Which::Forward, Role::QueueToFd),
                InternalDir::new(pair, Which::Backward, Role::FdToQueue),
            )
        };
        self.dirs = [DirIo::Internal(c2u), DirIo::Internal(u2c)];
    }
}
