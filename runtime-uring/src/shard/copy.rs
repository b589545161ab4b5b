//! The uring-copy data path for one direction: a multishot recv picks buffers from the shard's
//! provided-buffer ring, each buffer is sent to the sink in order (one send in flight), and goes
//! back to the ring when fully sent. Backpressure: past `QUEUE_HIGH` queued buffers the recv is
//! cancelled, and it is re-armed once the queue drains below `QUEUE_LOW`.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use io_uring::{cqueue, opcode, types};

use origdst_engine::slots::DirKey;

use super::Io;
use origdst_engine::progress::{DirEnd, Progress};
use origdst_engine::shard::errno_kind;
use origdst_engine::token::{Kind, Token};

/// A received buffer not yet fully sent.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    id: u16,
    offset: u32,
    len: u32,
}

/// Where the head chunk's send stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum SendState {
    /// No send outstanding.
    #[default]
    Idle,
    /// A send SQE owns the head chunk's buffer until its completion.
    Sending,
    /// A send hit EAGAIN; a POLLOUT is armed (it references no buffer).
    AwaitingWritable,
}

#[derive(Debug, Default)]
pub(crate) struct CopyDir {
    recv_armed: bool,
    cancelling: bool,
    send: SendState,
    /// The recv ended with ENOBUFS; we sit in the shard's waiter queue.
    starved: bool,
    eof: bool,
    queue: VecDeque<Chunk>,
}

impl CopyDir {
    /// `Transfer{dir}`: arm the recv.
    pub(crate) fn start(&mut self, io: &mut Io, src: RawFd, key: DirKey) {
        self.arm_recv(io, src, key);
    }

    /// A recv completion.
    pub(crate) fn on_recv(
        &mut self,
        io: &mut Io,
        fds: (RawFd, RawFd),
        key: DirKey,
        res: i32,
        flags: u32,
    ) -> Progress {
        let (src, sink) = fds;
        if !cqueue::more(flags) {
            self.recv_armed = false;
            self.cancelling = false;
        }
        if res > 0 {
            let Some(id) = cqueue::buffer_select(flags) else {
                // The kernel promises a buffer with every positive multishot recv result.
                unreachable!("recv completion with data but no buffer");
            };
            let ring = io
                .kernel
                .buf_ring
                .as_mut()
                .expect("copy path has a buffer ring");
            ring.taken();
            self.queue.push_back(Chunk {
                id,
                offset: 0,
                len: res as u32,
            });
            if self.send == SendState::Idle {
                self.send_head(io, sink, key);
            }
            if self.recv_armed && !self.cancelling && self.queue.len() >= QUEUE_HIGH {
                let target = Token::new(Kind::Recv, key.slot, key.generation, key.dir).encode();
                io.kernel.poller.push(
                    opcode::AsyncCancel::new(target)
                        .build()
                        .user_data(cancel_token(key)),
                );
                self.cancelling = true;
            }
            self.maybe_rearm(io, src, key);
            return Progress::default();
        }
        if res == 0 {
            self.eof = true;
            return self.check_eof(0);
        }
        match -res {
            libc::ECANCELED => {
                self.maybe_rearm(io, src, key);
                Progress::default()
            }
            libc::ENOBUFS => {
                self.starved = true;
                io.waiters.push_back(key);
                Progress::default()
            }
            errno => Progress::ended(0, DirEnd::Failed(key.dir.source(), errno_kind(errno))),
        }
    }

    /// A send completion for this direction's head chunk.
    pub(crate) fn on_send(
        &mut self,
        io: &mut Io,
        fds: (RawFd, RawFd),
        key: DirKey,
        res: i32,
    ) -> Progress {
        let (src, sink) = fds;
        assert_eq!(
            self.send,
            SendState::Sending,
            "send completion with no send in flight"
        );
        self.send = SendState::Idle;
        if res < 0 {
            return match -res {
                libc::EAGAIN => {
                    io.poll_dir(sink, key, Kind::PollOut, libc::POLLOUT);
                    self.send = SendState::AwaitingWritable;
                    Progress::default()
                }
                errno => Progress::ended(0, DirEnd::Failed(key.dir.sink(), errno_kind(errno))),
            };
        }
        let sent = res as u32;
        let head = self
            .queue
            .front_mut()
            .expect("a send in flight has a head chunk");
        assert!(sent <= head.len, "sent more than the chunk held");
        head.offset += sent;
        head.len -= sent;
        if head.len == 0 {
            let id = head.id;
            self.queue.pop_front();
            io.kernel
                .buf_ring
                .as_mut()
                .expect("copy path has a buffer ring")
                .give_back(id);
            io.wake_waiter();
        }
        if !self.queue.is_empty() {
            self.send_head(io, sink, key);
        }
        self.maybe_rearm(io, src, key);
        self.check_eof(u64::from(sent))
    }

    /// POLLOUT after a send hit EAGAIN: send the head again.
    pub(crate) fn on_pollout(&mut self, io: &mut Io, sink: RawFd, key: DirKey) {
        assert_eq!(
            self.send,
            SendState::AwaitingWritable,
            "POLLOUT completion with no send waiting"
        );
        self.send = SendState::Idle;
        self.send_head(io, sink, key);
    }

    /// A buffer came back after we starved: arm the recv again.
    pub(crate) fn resume(&mut self, io: &mut Io, src: RawFd, key: DirKey) {
        if self.starved {
            self.starved = false;
            self.maybe_rearm(io, src, key);
        }
    }

    /// The connection is closing: give back every buffer not owned by an in-flight send (that one
    /// comes back with its completion, whose token carries the buffer id).
    /// The `user_data` of operations that may be in flight for this direction.
    pub(crate) fn inflight(&self, key: DirKey, out: &mut Vec<u64>) {
        if self.recv_armed {
            out.push(Token::new(Kind::Recv, key.slot, key.generation, key.dir).encode());
        }
        match self.send {
            SendState::Idle => {}
            SendState::Sending => {
                if let Some(head) = self.queue.front() {
                    let token = Token::new(Kind::Send, key.slot, key.generation, key.dir);
                    out.push(token.with_buf(head.id).encode());
                }
            }
            SendState::AwaitingWritable => {
                out.push(Token::new(Kind::PollOut, key.slot, key.generation, key.dir).encode());
            }
        }
    }

    pub(crate) fn release(&mut self, io: &mut Io) {
        let skip = usize::from(self.send == SendState::Sending);
        let ring = io
            .kernel
            .buf_ring
            .as_mut()
            .expect("copy path has a buffer ring");
        for chunk in self.queue.drain(..).skip(skip) {
            ring.give_back(chunk.id);
        }
    }

    fn check_eof(&self, bytes: u64) -> Progress {
        if self.eof && self.queue.is_empty() && self.send == SendState::Idle {
            Progress::ended(bytes, DirEnd::Eof)
        } else {
            Progress::bytes(bytes)
        }
    }

    fn maybe_rearm(&mut self, io: &mut Io, src: RawFd, key: DirKey) {
        if !self.recv_armed && !self.eof && !self.starved && self.queue.len() < QUEUE_LOW {
            self.arm_recv(io, src, key);
        }
    }

    fn arm_recv(&mut self, io: &mut Io, src: RawFd, key: DirKey) {
        assert!(!self.recv_armed, "recv armed twice");
        let group = io
            .kernel
            .buf_ring
            .as_ref()
            .expect("copy path has a buffer ring")
            .group();
        let token = Token::new(Kind::Recv, key.slot, key.generation, key.dir);
        io.kernel.poller.push(
            opcode::RecvMulti::new(types::Fd(src), group)
                .build()
                .user_data(token.encode()),
        );
        self.recv_armed = true;
    }

    fn send_head(&mut self, io: &mut Io, sink: RawFd, key: DirKey) {
        assert_eq!(
            self.send,
            SendState::Idle,
            "one send in flight per direction keeps bytes in order"
        );
        let head = *self.queue.front().expect("send_head with an empty queue");
        let ring = io
            .kernel
            .buf_ring
            .as_ref()
            .expect("copy path has a buffer ring");
        let ptr = ring.ptr(head.id, head.offset, head.len);
        let token = Token::new(Kind::Send, key.slot, key.generation, key.dir).with_buf(head.id);
        let send = opcode::Send::new(types::Fd(sink), ptr, head.len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        io.kernel.poller.push(send.user_data(token.encode()));
        self.send = SendState::Sending;
    }
}

fn cancel_token(key: DirKey) -> u64 {
    Token::new(Kind::Cancel, key.slot, key.generation, key.dir).encode()
}

/// Buffers queued per direction before the recv is paused: 4 × 64 KiB keeps a bulk stream busy
/// while bounding what one slow reader can hold.
const QUEUE_HIGH: usize = 4;
/// Re-arm once the queue is down to this.
const QUEUE_LOW: usize = 2;
const _: () = assert!(QUEUE_LOW <= QUEUE_HIGH);
