//! The shard's I/O context: the kernel and everything pumps borrow while a connection is borrowed
//! too (pipe pool, fallback buffers, the ready and waiter queues, internal-listener pairs).

use std::collections::VecDeque;

use crate::buffers::BufferPool;
use crate::kernel::Kernel;
use crate::pairs::Pair;
use crate::pipes::{Pipe, PipePool};
use crate::slots::{DirKey, Slots};
use crate::token::{Kind, Token};

/// Rounds (one flush + one fill each, up to a pipe's or queue's capacity) before a readiness pump
/// yields: with 256 KiB pipes, 4 MiB per turn keeps one bulk stream from starving the shard's
/// other connections.
pub const PUMP_ROUNDS_MAX: usize = 32;

/// Fallback copy buffers per shard (splice path, pool empty): 256 × 64 KiB at most.
pub const FALLBACK_BUFFERS_MAX: u32 = 256;

/// The kernel and the shard's pools and queues.
pub struct Io<K: Kernel> {
    /// The kernel (event source and operations).
    pub kernel: K,
    /// Splice pipes.
    pub pipes: PipePool<Pipe<K::PipeEnds>>,
    /// Copy-fallback buffers.
    pub fallback: BufferPool,
    /// Directions to pump again this turn (yielded after their round budget, or resumed).
    pub ready: VecDeque<DirKey>,
    /// Directions waiting for a buffer or pipe to come back.
    pub waiters: VecDeque<DirKey>,
    /// Sockets to close once the cancels queued for them have been submitted.
    pub closing: Vec<K::Socket>,
    /// Times a splice direction had to copy because no pipe was available.
    pub fallback_copies: u64,
    /// Bytes the readiness data path wrote from pipes (spliced): with `copied_bytes`, which way
    /// splice-auto sent the traffic.
    pub spliced_bytes: u64,
    /// Bytes the readiness data path wrote from buffers (copied).
    pub copied_bytes: u64,
    /// Internal-listener pairs (in-process connections) of this shard.
    pub pairs: Slots<Pair>,
    /// Directions to look at again after a delay (a relayed direction waiting for the kernel).
    pub later: Vec<(std::time::Duration, DirKey)>,
    /// Relayed directions the kernel handed back (spilled), not yet counted.
    pub relay_spills: u64,
}

impl<K: Kernel> Io<K> {
    /// A context around `kernel` with a pipe budget and buffer sizes.
    pub fn new(
        kernel: K,
        pipe_budget_bytes: u64,
        pipe_size_bytes: u32,
        buffer_bytes: u32,
        fallback_buffers: u32,
    ) -> Self {
        Self {
            kernel,
            pipes: PipePool::new(pipe_budget_bytes, pipe_size_bytes),
            fallback: BufferPool::new(fallback_buffers, buffer_bytes),
            ready: VecDeque::new(),
            waiters: VecDeque::new(),
            closing: Vec::new(),
            fallback_copies: 0,
            spliced_bytes: 0,
            copied_bytes: 0,
            pairs: Slots::default(),
            later: Vec::new(),
            relay_spills: 0,
        }
    }

    /// One-shot readiness on `fd`.
    pub fn poll_once(&mut self, fd: i32, events: u32, user_data: u64) {
        self.kernel.poll_once(fd, events, user_data);
    }

    /// A readiness pump's one-shot poll for direction `key` (`kind`: PollIn or PollOut).
    pub fn poll_dir(&mut self, fd: i32, key: DirKey, kind: Kind, events: i16) {
        let token = Token::new(kind, key.slot, key.generation, key.dir);
        self.kernel.poll_once(fd, events as u32, token.encode());
    }

    /// A buffer or pipe came back: let one waiting direction try again.
    pub fn wake_waiter(&mut self) {
        if let Some(key) = self.waiters.pop_front() {
            self.ready.push_back(key);
        }
    }

    /// Leases a pipe, making one through the kernel if the budget allows.
    pub fn lease_pipe(&mut self) -> Option<Pipe<K::PipeEnds>> {
        let kernel = &mut self.kernel;
        self.pipes.lease(|size| {
            kernel.new_pipe(size).map(|(ends, capacity)| Pipe {
                ends,
                capacity,
                data: 0,
            })
        })
    }
}
