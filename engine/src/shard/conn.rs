//! A connection as the shard holds it: core's state machine plus the sockets and the two
//! directions' I/O state.

use origdst_core::config::DataPath;
use origdst_core::connection::Connection;
use origdst_core::relay::{Dir, Side};
use origdst_core::time::Instant;
use std::time::Duration;

use super::internal::{InternalDir, Role, Which};
use super::io::Io;
use super::relayed::{RelayedDir, Step};
use super::splice::SpliceDir;
use crate::kernel::{Kernel, NativeDir};
use crate::progress::Progress;
use crate::slots::{DirKey, SlotKey};
use crate::token::{Kind, Token};

/// One direction's data path state.
#[derive(Debug)]
pub enum DirIo<K: Kernel> {
    /// Readiness + inline splice (or copy through a pooled buffer).
    Splice(SpliceDir<K>),
    /// A data path only this kernel has.
    Native(K::Native),
    /// One end is an internal-listener queue.
    Internal(InternalDir),
    /// The kernel relays (kernel-sockmap); the shard watches for the end.
    Relayed(RelayedDir),
}

impl<K: Kernel> DirIo<K> {
    fn new(kernel: &K, path: DataPath) -> Self {
        match kernel.native_dir(path) {
            Some(native) => Self::Native(native),
            None => Self::Splice(SpliceDir::default()),
        }
    }

    /// `Transfer{dir}`.
    pub fn start(&mut self, io: &mut Io<K>, fds: (i32, i32), key: DirKey) -> Progress {
        match self {
            Self::Splice(splice) => splice.pump(io, fds, key),
            Self::Native(native) => native.start(io, fds, key),
            Self::Internal(internal) => internal.pump(io, fds, key),
            Self::Relayed(relayed) => {
                let step = relayed.resume(io, fds, key);
                self.settle(io, fds, key, step)
            }
        }
    }

    /// Woken from the ready queue (yielded, or a buffer/pipe came back), or by its timer.
    pub fn resume(&mut self, io: &mut Io<K>, fds: (i32, i32), key: DirKey) -> Progress {
        match self {
            Self::Splice(splice) => splice.pump(io, fds, key),
            Self::Native(native) => native.resume(io, fds, key),
            Self::Internal(internal) => internal.pump(io, fds, key),
            Self::Relayed(relayed) => {
                let step = relayed.resume(io, fds, key);
                self.settle(io, fds, key, step)
            }
        }
    }

    /// A relayed direction's step: a spilled one becomes a copying readiness direction (every
    /// byte of its source comes to the shard now, in order) and pumps at once.
    fn settle(&mut self, io: &mut Io<K>, fds: (i32, i32), key: DirKey, step: Step) -> Progress {
        match step {
            Step::Progress(progress) => progress,
            Step::Spilled => {
                io.relay_spills += 1;
                let mut copy = SpliceDir::copy_only();
                let progress = copy.pump(io, fds, key);
                *self = Self::Splice(copy);
                progress
            }
        }
    }

    /// The other direction ended: a relayed direction looks after its sink from now on.
    pub fn other_ended(&mut self, io: &mut Io<K>, key: DirKey) {
        if let Self::Relayed(relayed) = self {
            relayed.watch_sink(io, key);
        }
    }

    /// Bytes a relayed direction moved that core has not been told of, and how long ago the
    /// last moved (`None` for other paths: they report as they go).
    pub fn unreported(&mut self, io: &mut Io<K>, fds: (i32, i32)) -> Option<(u64, Duration)> {
        match self {
            Self::Relayed(relayed) => relayed.progress(io, fds.1),
            _ => None,
        }
    }

    /// One of this direction's operations completed.
    pub fn on_completion(
        &mut self,
        io: &mut Io<K>,
        fds: (i32, i32),
        key: DirKey,
        kind: Kind,
        res: i32,
        flags: u32,
    ) -> Progress {
        if let (Self::Relayed(relayed), Kind::PollIn) = (&mut *self, kind) {
            let step = relayed.on_poll(io, fds, key);
            return self.settle(io, fds, key, step);
        }
        match (self, kind) {
            (Self::Splice(splice), Kind::PollIn | Kind::PollOut) => splice.on_poll(io, fds, key),
            (Self::Internal(internal), Kind::PollIn | Kind::PollOut) => {
                internal.on_poll(io, fds, key)
            }
            (Self::Native(native), kind) => native.on_completion(io, fds, key, kind, res, flags),
            (_, kind) => unreachable!("{kind:?} completion on a direction of another data path"),
        }
    }

    /// The `user_data` of the operations in flight for this direction. Only those: each cancel
    /// costs the kernel a search (io-wq's lists included), and a closing connection whose
    /// directions both ended has none, so a short connection closes with no cancel at all.
    pub fn inflight(&self, key: DirKey, out: &mut Vec<u64>) {
        let armed = match self {
            Self::Native(native) => return native.inflight(key, out),
            Self::Splice(splice) => splice.armed(),
            Self::Internal(internal) => internal.armed(),
            Self::Relayed(relayed) => relayed.armed(),
        };
        if let Some(kind) = armed {
            out.push(Token::new(kind, key.slot, key.generation, key.dir).encode());
        }
    }

    /// The connection is released: give back pipes and buffers.
    pub fn release(&mut self, io: &mut Io<K>) {
        match self {
            Self::Splice(splice) => splice.release(io),
            Self::Native(native) => native.release(io),
            Self::Internal(_) | Self::Relayed(_) => {}
        }
    }
}

/// The error watch on one socket ([`super::Shard::arm_watches`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Not armed yet.
    Off,
    /// A poll is in flight.
    Armed,
    /// Fired or cancelled; never re-armed (the socket hung up).
    Done,
}

/// A connection as the shard holds it.
pub struct ConnIo<K: Kernel> {
    /// Core's state machine.
    pub core: Connection,
    /// Its slot's generation.
    pub generation: u16,
    /// `None` for an inner connection: its client is an internal-listener pair.
    pub client: Option<K::Socket>,
    /// The upstream socket, once one is open.
    pub upstream: Option<K::Socket>,
    /// Each direction's data path.
    pub dirs: [DirIo<K>; 2],
    /// The deadline of this connection's live entry in the timer heap, if any.
    pub timer_at: Option<Instant>,
    /// (local port, key) of the upstream socket in the shared loop registry.
    pub own_upstream: Option<(u16, u64)>,
    /// While reading the request head: the most bytes to peek.
    pub peek_max: u32,
    /// While reading the request head: the bytes core holds already.
    pub peek_have: u32,
    /// The client socket's peek offset is on (SO_PEEK_OFF): a peek returns only new bytes.
    pub peek_incremental: bool,
    /// This connection's upstream is an internal listener: the pair (outer end).
    pub internal_upstream: Option<SlotKey>,
    /// This connection came from an internal listener: the pair (inner end).
    pub internal_client: Option<SlotKey>,
    /// The listener that handled it, kept only when an access log wants it.
    pub listener_name: Option<std::sync::Arc<str>>,
    /// A POLLOUT on the connecting upstream socket is in flight.
    pub connect_poll_armed: bool,
    /// A POLLIN on the client while reading the request head is in flight.
    pub head_poll_armed: bool,
    /// The error watches on the client (0) and the upstream (1) socket.
    pub watch: [Watch; 2],
    /// The pair was handed to the kernel's relay (kernel-sockmap).
    pub relayed: bool,
    /// The group (pod) whose listener accepted it, if one added at run time.
    pub group: Option<crate::listeners::GroupId>,
    /// The namespace its upstream socket is made in (its group's).
    pub netns: Option<crate::listeners::NetnsId>,
}

impl<K: Kernel> ConnIo<K> {
    /// A connection in a fresh slot.
    pub fn new(
        kernel: &K,
        core: Connection,
        generation: u16,
        client: Option<K::Socket>,
        path: DataPath,
    ) -> Self {
        Self {
            core,
            generation,
            client,
            upstream: None,
            dirs: [DirIo::new(kernel, path), DirIo::new(kernel, path)],
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
            relayed: false,
            group: None,
            netns: None,
        }
    }

    /// The socket on `side`, if it is a kernel socket that exists.
    pub fn fd(&self, side: Side) -> Option<&K::Socket> {
        match side {
            Side::Client => self.client.as_ref(),
            Side::Upstream => self.upstream.as_ref(),
        }
    }

    /// The pair behind `side`, if that side is an internal-listener end.
    pub fn internal(&self, side: Side) -> Option<SlotKey> {
        match side {
            Side::Client => self.internal_client,
            Side::Upstream => self.internal_upstream,
        }
    }

    /// (source, sink) descriptors of `dir`; -1 for an internal end. Only called while relaying,
    /// when both ends exist.
    pub fn fds(&self, dir: Dir) -> (i32, i32) {
        let fd = |side| match self.internal(side) {
            Some(_) => -1,
            None => K::raw(self.fd(side).expect("both sockets exist while relaying")),
        };
        (fd(dir.source()), fd(dir.sink()))
    }

    /// Hands the pair to the kernel's relay if the data path asks for it and both ends are
    /// sockets that have moved nothing yet: `Some(taken)` if it was tried. Called at the first
    /// `Transfer`, before either direction has started.
    pub fn try_relay(&mut self, io: &mut Io<K>, path: DataPath) -> Option<bool> {
        if path != DataPath::KernelSockmap || self.relayed {
            return None;
        }
        let fresh = matches!(&self.dirs, [DirIo::Splice(a), DirIo::Splice(b)] if a.is_fresh() && b.is_fresh());
        if !fresh || self.internal_client.is_some() || self.internal_upstream.is_some() {
            return None;
        }
        let (client, upstream) = (self.client.as_ref()?, self.upstream.as_ref()?);
        // Baselines first: whatever the sinks queue from here on is the relay's.
        let client_counts = io.kernel.tcp_counts(K::raw(client))?;
        let upstream_counts = io.kernel.tcp_counts(K::raw(upstream))?;
        if io.kernel.relay_pair(client, upstream).is_err() {
            return Some(false);
        }
        self.relayed = true;
        self.dirs = [
            DirIo::Relayed(RelayedDir::new(upstream_counts.queued)),
            DirIo::Relayed(RelayedDir::new(client_counts.queued)),
        ];
        Some(true)
    }

    /// Turns both directions into queue pumps around `pair`; `outer`: this connection's upstream
    /// is the pair (else its client is).
    pub fn use_pair(&mut self, pair: SlotKey, outer: bool) {
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
