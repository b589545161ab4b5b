//! The boundary between the shard and whatever runs it: the kernel operations a shard needs and
//! the event source that reports their completions. `runtime-uring` implements it with io_uring
//! or epoll and real syscalls; `runtime-sim` with a simulated kernel. The shard never calls the
//! kernel any other way.
//!
//! Completions are `(user_data, result, flags)` triples, io_uring's shape: `user_data` is a
//! [`crate::token::Token`], `result` a byte count, a descriptor, poll events or a negative errno,
//! `flags` carries "more to come" for multishot operations ([`MORE`]).

use std::fmt::Debug;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use origdst_core::config::DataPath;
use origdst_core::orig_dst::{AcceptEvidence, RecordAnswer, RedirectRecord};
use origdst_core::outcome::IoErrorKind;
use origdst_core::time::Instant;

use crate::progress::Progress;
use crate::shard::io::Io;
use crate::slots::DirKey;
use crate::token::{Kind, Token};

/// A completion's flag: the multishot operation stays armed (io_uring's `IORING_CQE_F_MORE`).
pub const MORE: u32 = 1 << 1;

/// An errno, positive (`libc::EAGAIN`, …).
pub type Errno = i32;

/// Reorders a batch of completions the way a kernel may: any interleaving of different
/// operations, but each operation's own completions (a multishot's) in the order they came.
/// `pick(n)` chooses one of `n` operations to deliver from next (a test's seeded choice, below
/// `n`).
pub fn interleave(batch: &mut Vec<(u64, i32, u32)>, mut pick: impl FnMut(usize) -> usize) {
    use std::collections::VecDeque;
    let mut queues: Vec<VecDeque<(u64, i32, u32)>> = Vec::new();
    let mut index: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    for completion in batch.drain(..) {
        let at = *index.entry(completion.0).or_insert_with(|| {
            queues.push(VecDeque::new());
            queues.len() - 1
        });
        queues[at].push_back(completion);
    }
    let mut live: Vec<usize> = (0..queues.len()).collect();
    while !live.is_empty() {
        let choice = pick(live.len());
        let queue = &mut queues[live[choice]];
        batch.push(queue.pop_front().expect("live queues are not empty"));
        if queue.is_empty() {
            live.swap_remove(choice);
        }
    }
}

/// How starting a non-blocking connect went.
#[derive(Debug)]
pub enum ConnectStart<S> {
    /// Connected at once (loopback can).
    Done(S),
    /// In progress: wait for POLLOUT on it, then ask [`Kernel::connect_result`].
    InProgress(S),
    /// Failed at once.
    Failed(IoErrorKind),
}

/// What one socket has moved so far, in TCP sequence space (`TCP_INFO`, `SIOCOUTQ`): how the
/// shard follows a pair the kernel relays without seeing its bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounts {
    /// Received from the peer: data, and one for a FIN (`tcpi_bytes_received`).
    pub received: u64,
    /// Queued for the peer: acknowledged plus still in the send queue (`tcpi_bytes_acked` +
    /// `SIOCOUTQ`; a connecting socket's SYN counts one).
    pub queued: u64,
    /// The connection is gone (`TCP_CLOSE`: reset, or failed): nothing sent from it arrives.
    pub closed: bool,
    /// Since this socket last sent data (`tcpi_last_data_sent`, milliseconds): when a relayed
    /// direction's bytes last moved.
    pub since_sent: Duration,
}

/// What the source of a direction the kernel relays has to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayedSource {
    /// Nothing for the shard: the kernel takes what arrives.
    Quiet,
    /// Bytes sit in the receive queue the relay has not taken yet (it will): look again soon.
    Pending,
    /// The relay handed this socket's bytes back (they arrived before its peer was in the map):
    /// the shard must move them, all of them from now on.
    Spilled,
    /// The peer's FIN arrived.
    Eof,
}

/// The two ends of a pipe the kernel made.
pub trait PipeEnds: Debug {
    /// What the kernel says the pipe holds, where it can tell (`None` where it cannot).
    fn kernel_queued(&self) -> Option<u32>;
}

/// What a shard needs from a kernel.
pub trait Kernel: Sized {
    /// A socket the shard owns; dropping it closes the descriptor.
    type Socket: Debug;
    /// A pipe's two ends.
    type PipeEnds: PipeEnds;
    /// A descriptor held in reserve for when the table is full.
    type Spare;
    /// Data paths only this kernel has (io_uring's provided-buffer copy, `IORING_OP_SPLICE`); a
    /// kernel without any uses [`NoNative`].
    type Native: NativeDir<Self>;

    /// The number that names `socket` in operations and completions.
    fn raw(socket: &Self::Socket) -> i32;

    /// Now, on the shard's clock.
    fn now(&self) -> Instant;

    // --- the event source ---

    /// One-shot readiness: a completion with the ready events once `fd` has any of `events`
    /// (errors and hang-ups always count).
    fn poll_once(&mut self, fd: i32, events: u32, user_data: u64);
    /// One-shot watch for errors and hang-ups only.
    fn watch(&mut self, fd: i32, user_data: u64);
    /// Multishot accept on a listening socket: one completion per accepted descriptor.
    fn accept_multi(&mut self, fd: i32, user_data: u64);
    /// Persistent readiness (the shard's wake-up descriptor).
    fn poll_multi(&mut self, fd: i32, user_data: u64);
    /// Cancels operations in flight before `fds` close: by `targets` (user_data), or everything on
    /// `fds`, whichever the kernel does best.
    fn cancel_ops(&mut self, fds: &[i32], targets: &[u64], user_data: u64);
    /// Cancels a multishot accept (its end is reported as a completion without [`MORE`]).
    fn cancel_accept(&mut self, fd: i32, target: u64, user_data: u64);
    /// Submits what is queued without waiting.
    fn submit(&mut self);
    /// Whether operations wait for room (their descriptors must stay open until submitted).
    fn has_backlog(&self) -> bool;
    /// Submits, then waits for at least `want` completions or `timeout`.
    fn wait(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()>;
    /// Moves every completion into `out`.
    fn completions(&mut self, out: &mut Vec<(u64, i32, u32)>);

    // --- sockets ---

    /// Takes ownership of a descriptor an accept completion carried.
    fn adopt(&mut self, fd: i32) -> Self::Socket;
    /// Reads, once, everything core needs to decide an accepted connection.
    fn accept_evidence(
        &mut self,
        socket: &Self::Socket,
        transparent: bool,
    ) -> io::Result<AcceptEvidence>;
    /// Creates the upstream socket (marked, bound to `source` if given, carrying the platform's
    /// redirect `record` if any, in network namespace `netns` if given) and starts connecting.
    fn connect(
        &mut self,
        upstream: SocketAddr,
        mark: Option<u32>,
        source: Option<origdst_core::config::Source>,
        record: Option<&RedirectRecord>,
        netns: Option<crate::listeners::NetnsId>,
    ) -> io::Result<ConnectStart<Self::Socket>>;
    /// The redirect record the platform attached to an accepted connection (Windows HNS/WFP
    /// style); Linux attaches none.
    fn redirect_record(&mut self, _socket: &Self::Socket) -> RecordAnswer {
        RecordAnswer::None
    }
    /// After POLLOUT on a connecting socket, or an error watch: `None` if all is well, else the
    /// socket's pending error (`SO_ERROR`).
    fn socket_error(&mut self, socket: &Self::Socket) -> Option<IoErrorKind>;
    /// The local address of a socket.
    fn local_addr(&mut self, socket: &Self::Socket) -> io::Result<SocketAddr>;
    /// `shutdown(SHUT_WR)`.
    fn shutdown_write(&mut self, socket: &Self::Socket) -> Result<(), IoErrorKind>;
    /// Makes the final close of `socket` a reset (`SO_LINGER` 0).
    fn arm_reset(&mut self, socket: &Self::Socket);
    /// Stops a listening socket from completing handshakes (drain).
    fn stop_listening(&mut self, socket: &Self::Socket);
    /// `SO_RCVLOWAT`.
    fn set_rcvlowat(&mut self, socket: &Self::Socket, bytes: u32) -> io::Result<()>;
    /// `SO_PEEK_OFF` (-1: off).
    fn set_peek_offset(&mut self, socket: &Self::Socket, offset: i32) -> io::Result<()>;
    /// Reads without consuming (`MSG_PEEK|MSG_DONTWAIT`).
    fn peek(&mut self, socket: &Self::Socket, buf: &mut [u8]) -> io::Result<usize>;
    /// A descriptor to hold in reserve.
    fn reserve_fd(&mut self) -> io::Result<Self::Spare>;

    // --- moving bytes (the readiness data path) ---

    /// A non-blocking pipe of about `size_bytes` and the capacity granted; `None` when refused.
    fn new_pipe(&mut self, size_bytes: u32) -> Option<(Self::PipeEnds, u32)>;
    /// `splice(socket → pipe)`, non-blocking, at most `len` bytes.
    fn splice_in(&mut self, src: i32, pipe: &Self::PipeEnds, len: usize) -> Result<usize, Errno>;
    /// `splice(pipe → socket)`, non-blocking, at most `len` bytes.
    fn splice_out(&mut self, pipe: &Self::PipeEnds, sink: i32, len: usize) -> Result<usize, Errno>;
    /// `read(2)`, non-blocking.
    fn read(&mut self, fd: i32, buf: &mut [u8]) -> Result<usize, Errno>;
    /// `send(2)` with `MSG_NOSIGNAL`, non-blocking.
    fn send(&mut self, fd: i32, buf: &[u8]) -> Result<usize, Errno>;

    // --- the in-kernel relay (kernel-sockmap) ---

    /// Hands a connected pair to the kernel's relay: what each socket receives leaves through
    /// the other, and bytes already queued are taken. `Err` (an errno) if this kernel has no
    /// relay or it refused the pair; the pair is then untouched.
    fn relay_pair(
        &mut self,
        _client: &Self::Socket,
        _upstream: &Self::Socket,
    ) -> Result<(), Errno> {
        Err(libc::ENOSYS)
    }
    /// The TCP counts of a socket (`None` if it cannot say: closed, not TCP).
    fn tcp_counts(&mut self, _fd: i32) -> Option<TcpCounts> {
        None
    }
    /// What the source `fd` of a relayed direction has to say, or its pending error.
    fn relayed_source(&mut self, _fd: i32) -> Result<RelayedSource, Errno> {
        Err(libc::ENOSYS)
    }
    /// The connection of a relayed pair is closing: forget whatever the relay keeps about `fd`
    /// beyond the socket's life (its spill mark).
    fn relay_forget(&mut self, _fd: i32) {}

    // --- kernel-specific data paths ---

    /// A direction on `path` if this kernel has a native data path for it (else the shard runs
    /// the readiness pump).
    fn native_dir(&self, path: DataPath) -> Option<Self::Native>;
    /// A completion of a native operation whose connection is gone: give back what it carries
    /// (a provided buffer).
    fn recycle_stale(&mut self, token: Token, flags: u32);
    /// Provided buffers holding bytes in flight (a native data path's gauge).
    fn buffers_in_flight(&self) -> u64 {
        0
    }
    /// (waits a busy poll answered, waits that slept) since the start: how the event source's
    /// polling window is doing.
    fn wait_counts(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// A direction on a kernel-specific data path, driven by the shard like the readiness pump.
pub trait NativeDir<K: Kernel>: Debug + Sized {
    /// `Transfer{dir}`.
    fn start(&mut self, io: &mut Io<K>, fds: (i32, i32), key: DirKey) -> Progress;
    /// Woken from the ready queue.
    fn resume(&mut self, io: &mut Io<K>, fds: (i32, i32), key: DirKey) -> Progress;
    /// One of its operations completed.
    fn on_completion(
        &mut self,
        io: &mut Io<K>,
        fds: (i32, i32),
        key: DirKey,
        kind: Kind,
        res: i32,
        flags: u32,
    ) -> Progress;
    /// The `user_data` of its operations in flight.
    fn inflight(&self, key: DirKey, out: &mut Vec<u64>);
    /// The connection is released: give back pipes and buffers.
    fn release(&mut self, io: &mut Io<K>);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaving_keeps_each_operations_order() {
        let mut batch: Vec<(u64, i32, u32)> = (0..40).map(|i| (i % 3, i as i32, 0)).collect();
        let mut state = 7u64;
        interleave(&mut batch, |n| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) as usize % n
        });
        assert_eq!(batch.len(), 40);
        for key in 0..3 {
            let results: Vec<i32> = batch.iter().filter(|c| c.0 == key).map(|c| c.1).collect();
            assert!(
                results.windows(2).all(|w| w[0] < w[1]),
                "{key}: {results:?}"
            );
        }
        let original: Vec<i32> = (0..40).collect();
        assert_ne!(
            batch.iter().map(|c| c.1).collect::<Vec<_>>(),
            original,
            "reordered"
        );
    }
}

/// A kernel without native data paths.
#[derive(Debug)]
pub enum NoNative {}

impl<K: Kernel> NativeDir<K> for NoNative {
    fn start(&mut self, _: &mut Io<K>, _: (i32, i32), _: DirKey) -> Progress {
        match *self {}
    }
    fn resume(&mut self, _: &mut Io<K>, _: (i32, i32), _: DirKey) -> Progress {
        match *self {}
    }
    fn on_completion(
        &mut self,
        _: &mut Io<K>,
        _: (i32, i32),
        _: DirKey,
        _: Kind,
        _: i32,
        _: u32,
    ) -> Progress {
        match *self {}
    }
    fn inflight(&self, _: DirKey, _: &mut Vec<u64>) {
        match *self {}
    }
    fn release(&mut self, _: &mut Io<K>) {
        match *self {}
    }
}
