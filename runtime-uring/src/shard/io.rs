//! The shard's I/O context: the ring and everything pumps borrow while a connection is borrowed
//! too (buffer ring, pipe pool, fallback buffers, the ready and waiter queues).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use io_uring::squeue;
pub(crate) use origdst_engine::buffers::BufferPool;
pub(crate) use origdst_engine::slots::DirKey;

use super::poller::Poller;
use crate::buf_ring::BufRing;
use crate::pipe_pool::PipePool;
use origdst_engine::token::{Kind, Token};

/// Rounds (one flush + one fill each, up to a pipe's or queue's capacity) before a readiness pump
/// yields: with 256 KiB pipes, 4 MiB per turn keeps one bulk stream from starving the shard's
/// other connections.
pub(crate) const PUMP_ROUNDS_MAX: usize = 32;

/// Declared first in `Shard` so the ring is dropped before the buffers it may reference.
pub(crate) struct Io {
    /// io_uring or epoll.
    pub(crate) poller: Poller,
    pub(crate) buf_ring: Option<BufRing>,
    pub(crate) pipes: PipePool,
    pub(crate) fallback: BufferPool,
    /// Directions to pump again this turn (yielded after their round budget, or resumed).
    pub(crate) ready: VecDeque<DirKey>,
    /// Directions waiting for a buffer or pipe to come back.
    pub(crate) waiters: VecDeque<DirKey>,
    /// Descriptors to close once the cancels queued for them have been submitted.
    pub(crate) closing: Vec<OwnedFd>,
    /// Times a splice direction had to copy because no pipe was available.
    pub(crate) fallback_copies: u64,
    /// Internal-listener pairs (in-process connections) of this shard.
    pub(crate) pairs: slab::Slab<super::internal::Pair>,
}

impl Io {
    /// Queues an io_uring SQE (io_uring-only paths).
    pub(crate) fn push(&mut self, entry: squeue::Entry) {
        self.poller.push(entry);
    }

    /// One-shot readiness on `fd` (POLL_ADD, or an epoll interest).
    pub(crate) fn poll_once(&mut self, fd: std::os::fd::RawFd, events: u32, user_data: u64) {
        self.poller.poll_once(fd, events, user_data);
    }

    /// A readiness pump's one-shot poll for direction `key` (`kind`: PollIn or PollOut).
    pub(crate) fn poll_dir(
        &mut self,
        fd: std::os::fd::RawFd,
        key: DirKey,
        kind: Kind,
        events: i16,
    ) {
        let token = Token::new(kind, key.slot, key.generation, key.dir);
        self.poller.poll_once(fd, events as u32, token.encode());
    }

    /// A buffer or pipe came back: let one waiting direction try again.
    pub(crate) fn wake_waiter(&mut self) {
        if let Some(key) = self.waiters.pop_front() {
            self.ready.push_back(key);
        }
    }
}
