//! The readiness data path for one direction (uring-splice, epoll), HAProxy's model:
//! non-blocking `splice(2)` socket → pipe → socket called inline on the shard thread, a pipe
//! leased from the shard's pool only while bytes are in flight, one-shot `POLL_ADD` when the
//! source is empty (POLLIN) or the sink is full (POLLOUT). No `IORING_OP_SPLICE`: on a socket
//! that can block it parks a kernel worker per idle direction.
//!
//! The pipe is always drained before reading again, so an EAGAIN from `splice(sock → pipe)` always
//! means "socket empty", never the ambiguous "pipe full".
//!
//! **Splice-auto**, per direction: small messages are cheaper copied (`read` + `send` through a
//! pooled buffer: no pipe, no page references handed to the socket), bulk is cheaper spliced. A
//! direction starts copying; a read that fills half a buffer or more means bulk is flowing, and
//! it splices from then on; a splice that brings in less than a quarter of a buffer (or of the
//! pipe, if the kernel made it smaller) means the bulk is over, and it copies again. Each switch happens between fills, when nothing is held. Where no
//! buffer is free it splices, where no pipe is free it copies (the pipe pool's fallback), and
//! where splice is refused it copies.

use super::errno_kind;
use super::io::{Io, PUMP_ROUNDS_MAX};
use super::relayed::{RECHECK_FIRST, RECHECK_MAX};
use crate::kernel::{Errno, Kernel};
use crate::pipes::Pipe;
use crate::progress::{DirEnd, Progress};
use crate::slots::DirKey;
use crate::token::Kind;

/// One direction on the readiness data path.
#[derive(Debug)]
pub struct SpliceDir<K: Kernel> {
    pipe: Option<Pipe<K::PipeEnds>>,
    /// Copy fallback: a buffer and the (offset, len) of unsent bytes in it.
    buf: Option<(Box<[u8]>, usize, usize)>,
    src_eof: bool,
    /// The one-shot poll in flight (PollIn on the source or PollOut on the sink), if any.
    armed: Option<Kind>,
    /// How the next fill reads (splice-auto).
    next: Via,
    /// A source the kernel relay handed back (spilled): the bytes read from it so far. Its EOF
    /// is believed only once they are all the source received: the kernel may report the FIN
    /// while passed bytes still wait in the relay's backlog (`tcp_bpf_recvmsg` reads the
    /// socket's own queue, empty, once the backlog holds what the verdict passed).
    spilled_read: Option<u64>,
    /// Looks in a row that found such an early EOF (the recheck backs off with it).
    not_yet: u32,
}

/// How a fill reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Splice through a pipe (bulk).
    Pipe,
    /// Copy through a buffer (small messages), or splice if no buffer is free.
    Buffer,
    /// Copy, always: splice(2) refused this socket pair (EINVAL/ENOSYS).
    BufferOnly,
}

impl<K: Kernel> Default for SpliceDir<K> {
    fn default() -> Self {
        Self {
            pipe: None,
            buf: None,
            src_eof: false,
            armed: None,
            next: Via::Buffer,
            spilled_read: None,
            not_yet: 0,
        }
    }
}

impl<K: Kernel> SpliceDir<K> {
    /// A direction that only copies (a source the kernel relay handed back: splice(2) reads a
    /// socket's receive queue, not what the relay queued for it).
    pub fn copy_only() -> Self {
        Self {
            next: Via::BufferOnly,
            spilled_read: Some(0),
            ..Self::default()
        }
    }

    /// Nothing has happened on it yet.
    pub fn is_fresh(&self) -> bool {
        self.pipe.is_none() && self.buf.is_none() && !self.src_eof && self.armed.is_none()
    }

    /// Moves bytes until the source is empty, the sink is full, the direction ends, or the round
    /// budget is spent (then it re-queues itself so other connections get a turn).
    pub fn pump(&mut self, io: &mut Io<K>, fds: (i32, i32), key: DirKey) -> Progress {
        assert!(self.armed.is_none(), "pumped while waiting for readiness");
        let (src, sink) = fds;
        let mut bytes = 0u64;
        for _ in 0..PUMP_ROUNDS_MAX {
            match self.flush(io, sink) {
                Ok(0) => {}
                Ok(n) => {
                    bytes += n;
                    continue;
                }
                Err(libc::EAGAIN) => {
                    self.arm_poll(io, fds.1, key, Kind::PollOut, libc::POLLOUT);
                    return Progress::bytes(bytes);
                }
                Err(errno) => {
                    return Progress::ended(
                        bytes,
                        DirEnd::Failed(key.dir.sink(), errno_kind(errno)),
                    );
                }
            }
            if self.src_eof {
                self.give_back(io);
                return Progress::ended(bytes, DirEnd::Eof);
            }
            match self.fill(io, src) {
                Ok(Fill::Read) => {}
                Ok(Fill::Eof) => self.src_eof = true,
                Ok(Fill::NoBuffer) => {
                    io.waiters.push_back(key);
                    return Progress::bytes(bytes);
                }
                Ok(Fill::NotYet) => {
                    // The FIN came before the last bytes the relay handed back: look again.
                    self.give_back(io);
                    let delay = (RECHECK_FIRST * 2u32.pow(self.not_yet)).min(RECHECK_MAX);
                    self.not_yet = (self.not_yet + 1).min(8);
                    io.later.push((delay, key));
                    return Progress::bytes(bytes);
                }
                Err(libc::EAGAIN) => {
                    self.give_back(io);
                    self.arm_poll(io, fds.0, key, Kind::PollIn, libc::POLLIN);
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

    /// A readiness completion (POLLIN or POLLOUT, or an error bit): pump again.
    pub fn on_poll(&mut self, io: &mut Io<K>, fds: (i32, i32), key: DirKey) -> Progress {
        assert!(self.armed.is_some(), "poll completion with no poll armed");
        self.armed = None;
        self.pump(io, fds, key)
    }

    /// The poll this direction has in flight, if any (the only operation it ever has).
    pub fn armed(&self) -> Option<Kind> {
        self.armed
    }

    /// The connection is closing: an empty pipe goes back to the pool, a full one is discarded.
    pub fn release(&mut self, io: &mut Io<K>) {
        if let Some(pipe) = self.pipe.take() {
            // The pool discards it if it still holds this connection's bytes.
            io.pipes.release(pipe);
            io.wake_waiter();
        }
        if let Some((buf, _, _)) = self.buf.take() {
            io.fallback.give_back(buf);
            io.wake_waiter();
        }
    }

    /// Writes what the pipe or buffer holds. `Ok(0)`: nothing was held.
    fn flush(&mut self, io: &mut Io<K>, sink: i32) -> Result<u64, Errno> {
        if let Some(pipe) = self.pipe.as_mut().filter(|p| p.data > 0) {
            let n = io.kernel.splice_out(&pipe.ends, sink, pipe.data as usize)?;
            assert!(
                n <= pipe.data as usize,
                "spliced out more than the pipe held"
            );
            pipe.data -= n as u32;
            io.spliced_bytes += n as u64;
            return Ok(n as u64);
        }
        if let Some((buf, offset, len)) = self.buf.as_mut().filter(|b| b.2 > 0) {
            let n = io.kernel.send(sink, &buf[*offset..*offset + *len])?;
            *offset += n;
            *len -= n;
            io.copied_bytes += n as u64;
            return Ok(n as u64);
        }
        Ok(0)
    }

    /// Reads into a pipe or a buffer, as splice-auto chose (`next`), or whichever of the two is
    /// free. Everything held is flushed already.
    fn fill(&mut self, io: &mut Io<K>, src: i32) -> Result<Fill, Errno> {
        let mut via = self.next;
        if via == Via::Buffer && self.buf.is_none() {
            match io.fallback.lease() {
                Some(buf) => self.buf = Some((buf, 0, 0)),
                // No buffer free: splice rather than wait for one.
                None => via = Via::Pipe,
            }
        }
        if via == Via::Pipe
            && let Some(filled) = self.fill_pipe(io, src)
        {
            return filled;
        }
        if self.buf.is_none() {
            let Some(buf) = io.fallback.lease() else {
                return Ok(Fill::NoBuffer);
            };
            self.buf = Some((buf, 0, 0));
        }
        let (buf, offset, len) = self.buf.as_mut().expect("leased above");
        debug_assert_eq!(*len, 0);
        let n = io.kernel.read(src, buf)?;
        if n == 0 {
            if let Some(read) = self.spilled_read {
                // Sequence space: the FIN counts one.
                let received = io
                    .kernel
                    .tcp_counts(src)
                    .map(|c| c.received.saturating_sub(1));
                if received.is_some_and(|received| received > read) {
                    return Ok(Fill::NotYet);
                }
            }
            return Ok(Fill::Eof);
        }
        if let Some(read) = self.spilled_read.as_mut() {
            *read += n as u64;
            self.not_yet = 0;
        }
        if n >= buf.len() / 2 && self.next == Via::Buffer {
            // Half a buffer or more at once: bulk is flowing, splice what comes next. (Not "a
            // whole buffer": a proxy that keeps up reads what one GRO batch brought, just under
            // 64 KiB, and would never switch.)
            self.next = Via::Pipe;
        }
        *offset = 0;
        *len = n;
        Ok(Fill::Read)
    }

    /// Splices into this direction's pipe (leased if need be); `None` when it must copy instead
    /// (no pipe free, or splice refused).
    fn fill_pipe(&mut self, io: &mut Io<K>, src: i32) -> Option<Result<Fill, Errno>> {
        if self.pipe.is_none() {
            self.pipe = io.lease_pipe();
            if self.pipe.is_none() {
                io.fallback_copies += 1;
                return None;
            }
        }
        let pipe = self.pipe.as_mut().expect("leased above");
        debug_assert_eq!(pipe.data, 0);
        match io.kernel.splice_in(src, &pipe.ends, pipe.capacity as usize) {
            Ok(0) => Some(Ok(Fill::Eof)),
            Ok(n) => {
                assert!(
                    n <= pipe.capacity as usize,
                    "spliced in more than the pipe holds"
                );
                pipe.data = n as u32;
                let asked = (pipe.capacity as usize).min(io.fallback.size_bytes());
                if n < asked / 4 && self.next == Via::Pipe {
                    // The bulk is over: copy what comes next.
                    self.next = Via::Buffer;
                }
                Some(Ok(Fill::Read))
            }
            Err(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
                tracing::warn!("splice(2) refused on this socket pair; copying instead");
                self.next = Via::BufferOnly;
                self.give_back(io);
                None
            }
            Err(errno) => Some(Err(errno)),
        }
    }

    /// Returns an empty pipe or buffer: idle directions hold neither.
    fn give_back(&mut self, io: &mut Io<K>) {
        if let Some(pipe) = self.pipe.take() {
            io.pipes.release(pipe);
            io.wake_waiter();
        }
        if let Some((buf, _, len)) = self.buf.take() {
            assert_eq!(len, 0, "a buffer with unsent bytes is never returned");
            io.fallback.give_back(buf);
            io.wake_waiter();
        }
    }

    fn arm_poll(&mut self, io: &mut Io<K>, fd: i32, key: DirKey, kind: Kind, events: i16) {
        io.poll_dir(fd, key, kind, events);
        self.armed = Some(kind);
    }
}

enum Fill {
    Read,
    Eof,
    NoBuffer,
    /// A spilled source reported EOF before all it received was read.
    NotYet,
}
