//! The shard's I/O context: the ring and everything pumps borrow while a connection is borrowed
//! too (buffer ring, pipe pool, fallback buffers, the ready and waiter queues).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use io_uring::squeue;
use origdst_core::relay::Dir;

use super::poller::Poller;
use crate::buf_ring::BufRing;
use crate::pipe_pool::PipePool;
use crate::token::{Kind, Token};

/// Identifies one direction of one live connection; stale keys are detected by generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirKey {
    pub(crate) slot: usize,
    pub(crate) generation: u16,
    pub(crate) dir: Dir,
}

/// Rounds (one flush + one fill each, up to a pipe's or queue's capacity) before a readiness pump
/// yields: with 256 KiB pipes, 4 MiB per turn keeps one bulk stream from starving the shard's
/// other connections.
pub(crate) const PUMP_ROUNDS_MAX: usize = 32;

/// Heap buffers for the splice path's copy fallback (when the pipe pool is empty). Bounded.
pub(crate) struct BufferPool {
    free: Vec<Box<[u8]>>,
    allocated: u32,
    max: u32,
    size_bytes: usize,
}

impl BufferPool {
    pub(crate) fn new(max: u32, size_bytes: u32) -> Self {
        Self {
            free: Vec::new(),
            allocated: 0,
            max,
            size_bytes: size_bytes as usize,
        }
    }

    pub(crate) fn lease(&mut self) -> Option<Box<[u8]>> {
        if let Some(buf) = self.free.pop() {
            return Some(buf);
        }
        if self.allocated >= self.max {
            return None;
        }
        self.allocated += 1;
        Some(vec![0; self.size_bytes].into_boxed_slice())
    }

    pub(crate) fn give_back(&mut self, buf: Box<[u8]>) {
        assert_eq!(buf.len(), self.size_bytes);
        assert!(
            self.free.len() < self.allocated as usize,
            "more buffers returned than leased"
        );
        self.free.push(buf);
    }
}

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
