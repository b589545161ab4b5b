//! Internal listeners' in-process connections: between two connections of the same shard, no
//! kernel socket. Each direction is a byte queue bounded by `buffer_size_kb`: a full queue stops
//! its producer (backpressure) and wakes it when space frees up; an empty one parks its consumer
//! until bytes come; EOF crosses as a shut write half.
//!
//! ```text
//!   client fd ──FdToQueue──▶ forward ──QueueToFd──▶ upstream fd      (outer c2u, inner c2u)
//!   client fd ◀─QueueToFd─── backward ◀─FdToQueue── upstream fd      (outer u2c, inner u2c)
//! ```

use crate::slots::DirKey;

/// One direction's bounded byte queue (a ring, allocated at first use: untouched pages cost no
/// memory, so an idle pair costs a few words).
#[derive(Debug)]
pub struct Queue {
    ring: Vec<u8>,
    cap: usize,
    head: usize,
    len: usize,
    /// The producer's write half is shut: EOF once the queued bytes are consumed.
    pub eof: bool,
    /// The direction waiting for bytes, to wake when some arrive.
    consumer_waiting: Option<DirKey>,
    /// The direction waiting for space, to wake when some frees up.
    producer_waiting: Option<DirKey>,
}

impl Queue {
    /// An empty queue of `cap` bytes.
    pub fn new(cap: usize) -> Self {
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
    pub fn free_slice(&mut self) -> &mut [u8] {
        if self.ring.is_empty() {
            self.ring = vec![0; self.cap];
        }
        let tail = (self.head + self.len) % self.cap;
        // Full: nothing. Queued bytes that do not wrap (or none): up to the end of the ring.
        // Queued bytes that wrap: up to their head.
        let end = if self.len == self.cap {
            tail
        } else if tail >= self.head {
            self.cap
        } else {
            self.head
        };
        &mut self.ring[tail..end]
    }

    /// `n` bytes were written into [`Self::free_slice`]; the consumer waiting for bytes, to wake.
    pub fn commit(&mut self, n: usize) -> Option<DirKey> {
        self.len += n;
        assert!(self.len <= self.cap, "queue over its capacity");
        if n > 0 {
            self.consumer_waiting.take()
        } else {
            None
        }
    }

    /// `key` waits for space (the queue is full).
    pub fn wait_for_space(&mut self, key: DirKey) {
        self.producer_waiting = Some(key);
    }

    /// `key` waits for bytes (the queue is empty).
    pub fn wait_for_bytes(&mut self, key: DirKey) {
        self.consumer_waiting = Some(key);
    }

    /// The contiguous queued bytes at the head.
    pub fn filled_slice(&self) -> &[u8] {
        let end = (self.head + self.len).min(self.cap);
        &self.ring[self.head..end]
    }

    /// `n` bytes of [`Self::filled_slice`] were written out; the producer waiting for space, to
    /// wake.
    pub fn consume(&mut self, n: usize) -> Option<DirKey> {
        assert!(n <= self.len, "consumed more than queued");
        self.head = (self.head + n) % self.cap;
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
        }
        if n > 0 {
            self.producer_waiting.take()
        } else {
            None
        }
    }

    /// The direction waiting for bytes, if any (to wake it).
    pub fn take_consumer(&mut self) -> Option<DirKey> {
        self.consumer_waiting.take()
    }

    /// Bytes queued and not consumed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The two queues between an outer and an inner connection, and who is still there.
#[derive(Debug)]
pub struct Pair {
    /// Outer c2u → inner c2u.
    pub forward: Queue,
    /// Inner u2c → outer u2c.
    pub backward: Queue,
    /// (slot, generation) of the outer connection while it lives.
    pub outer: Option<(usize, u16)>,
    /// (slot, generation) of the inner connection while it lives.
    pub inner: Option<(usize, u16)>,
}

impl Pair {
    /// A pair of `cap`-byte queues for the outer connection `outer`.
    pub fn new(cap: usize, outer: (usize, u16)) -> Self {
        Self {
            forward: Queue::new(cap),
            backward: Queue::new(cap),
            outer: Some(outer),
            inner: None,
        }
    }

    /// One of the two queues.
    pub fn queue(&mut self, which: Which) -> &mut Queue {
        match which {
            Which::Forward => &mut self.forward,
            Which::Backward => &mut self.backward,
        }
    }
}

/// Which queue of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Outer c2u → inner c2u.
    Forward,
    /// Inner u2c → outer u2c.
    Backward,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_wraps_and_never_exceeds_its_capacity() {
        let mut q = Queue::new(8);
        q.free_slice()[..6].copy_from_slice(b"abcdef");
        let _ = q.commit(6);
        assert_eq!(q.filled_slice(), b"abcdef");
        let _ = q.consume(4);
        assert_eq!(q.filled_slice(), b"ef");
        // Free space is the tail (2 bytes) first, then the wrapped head.
        assert_eq!(q.free_slice().len(), 2);
        q.free_slice().copy_from_slice(b"gh");
        let _ = q.commit(2);
        assert_eq!(q.free_slice().len(), 4);
        q.free_slice().copy_from_slice(b"ijkl");
        let _ = q.commit(4);
        assert_eq!(q.len(), 8);
        assert!(q.free_slice().is_empty(), "full");
        assert_eq!(q.filled_slice(), b"efgh");
        let _ = q.consume(4);
        assert_eq!(q.filled_slice(), b"ijkl");
        let _ = q.consume(4);
        assert_eq!(q.len(), 0);
    }
}
