//! The uring-opsplice data path for one direction, kept to measure against uring-splice:
//! `IORING_OP_SPLICE` socket → pipe → socket, but only ever issued on a non-blocking socket after a
//! one-shot `POLL_ADD` said it was ready (or right after the previous op moved bytes), so no io-wq
//! worker parks on an idle connection (`../shared/reference/uring-splice.md` §1, pattern 2).
//! What it still pays, and what the benchmark shows: the kernel always punts `IORING_OP_SPLICE` to
//! io-wq, so every op is a worker hand-off plus a task-work completion, where uring-splice makes
//! the same `splice(2)` call inline.
//!
//! One op at a time per direction, and the pipe is always drained before the next read, so an
//! `-EAGAIN` from the socket → pipe op always means "socket empty". No copy fallback: a direction
//! that finds the pool empty waits for a pipe to come back (pipes are held only while bytes are in
//! flight).

use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, types};

use origdst_engine::slots::DirKey;

use super::Io;
use crate::pipe_pool::Ends;
use origdst_engine::pipes::Pipe;
use origdst_engine::progress::{DirEnd, Progress};
use origdst_engine::shard::errno_kind;
use origdst_engine::token::{Kind, Token};

/// Where one direction stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not started, or waiting in the shard's waiter queue for a pipe.
    #[default]
    Idle,
    /// POLLIN armed on the source.
    WaitIn,
    /// A socket → pipe op in flight.
    SplicingIn,
    /// A pipe → socket op in flight.
    SplicingOut,
    /// POLLOUT armed on the sink (the pipe holds bytes).
    WaitOut,
    /// EOF or an error was reported; nothing more is issued.
    Done,
}

#[derive(Debug, Default)]
pub(crate) struct OpSpliceDir {
    pipe: Option<Pipe<Ends>>,
    state: State,
}

impl OpSpliceDir {
    /// `Transfer{dir}`, or woken from the ready/waiter queue: wait for the source to be readable.
    pub(crate) fn start(&mut self, io: &mut Io, fds: (RawFd, RawFd), key: DirKey) -> Progress {
        if self.state == State::Idle {
            self.wait_in(io, fds.0, key);
        }
        Progress::default()
    }

    /// A one-shot poll completed.
    pub(crate) fn on_poll(&mut self, io: &mut Io, fds: (RawFd, RawFd), key: DirKey) -> Progress {
        match self.state {
            State::WaitIn => self.splice_in(io, fds.0, key),
            State::WaitOut => self.splice_out(io, fds.1, key),
            state => unreachable!("poll completion in {state:?}"),
        }
        Progress::default()
    }

    /// An op completed with `res` (bytes moved, 0 at EOF, or -errno).
    pub(crate) fn on_splice(
        &mut self,
        io: &mut Io,
        fds: (RawFd, RawFd),
        key: DirKey,
        kind: Kind,
        res: i32,
    ) -> Progress {
        match (self.state, kind) {
            (State::SplicingIn, Kind::SpliceIn) => match res {
                n if n > 0 => {
                    let pipe = self.pipe.as_mut().expect("a pipe is leased while splicing");
                    assert_eq!(pipe.data, 0, "read into a pipe that was not drained");
                    pipe.data = n as u32;
                    self.splice_out(io, fds.1, key);
                    Progress::default()
                }
                0 => {
                    self.give_back(io);
                    self.state = State::Done;
                    Progress::ended(0, DirEnd::Eof)
                }
                n if n == -libc::EAGAIN => {
                    self.give_back(io);
                    self.wait_in(io, fds.0, key);
                    Progress::default()
                }
                n => {
                    self.state = State::Done;
                    Progress::ended(0, DirEnd::Failed(key.dir.source(), errno_kind(-n)))
                }
            },
            (State::SplicingOut, Kind::SpliceOut) => match res {
                n if n > 0 => {
                    let pipe = self.pipe.as_mut().expect("a pipe is leased while splicing");
                    assert!(n as u32 <= pipe.data, "spliced out more than the pipe held");
                    pipe.data -= n as u32;
                    if pipe.data > 0 {
                        self.splice_out(io, fds.1, key);
                    } else {
                        // Under load the source usually has more already; an empty one answers
                        // -EAGAIN and the direction falls back to polling.
                        self.splice_in(io, fds.0, key);
                    }
                    Progress::bytes(n as u64)
                }
                n if n == -libc::EAGAIN => {
                    let token = Token::new(Kind::PollOut, key.slot, key.generation, key.dir);
                    io.poll_once(fds.1, libc::POLLOUT as u32, token.encode());
                    self.state = State::WaitOut;
                    Progress::default()
                }
                n => {
                    self.state = State::Done;
                    let errno = if n == 0 { libc::EPIPE } else { -n };
                    Progress::ended(0, DirEnd::Failed(key.dir.sink(), errno_kind(errno)))
                }
            },
            (state, kind) => unreachable!("{kind:?} completion in {state:?}"),
        }
    }

    /// The op this direction has in flight, if any (one at a time).
    pub(crate) fn armed(&self) -> Option<Kind> {
        match self.state {
            State::WaitIn => Some(Kind::PollIn),
            State::WaitOut => Some(Kind::PollOut),
            State::SplicingIn => Some(Kind::SpliceIn),
            State::SplicingOut => Some(Kind::SpliceOut),
            State::Idle | State::Done => None,
        }
    }

    /// The connection is closing. A pipe an op may still be using, or one holding bytes, is
    /// discarded (the kernel keeps its own reference until the op completes); an empty idle one
    /// goes back to the pool.
    pub(crate) fn release(&mut self, io: &mut Io) {
        if let Some(pipe) = self.pipe.take() {
            let busy = matches!(self.state, State::SplicingIn | State::SplicingOut);
            if busy {
                io.pipes.discard(pipe);
            } else {
                io.pipes.release(pipe);
            }
            io.wake_waiter();
        }
        self.state = State::Done;
    }

    fn wait_in(&mut self, io: &mut Io, src: RawFd, key: DirKey) {
        let token = Token::new(Kind::PollIn, key.slot, key.generation, key.dir);
        io.poll_once(src, libc::POLLIN as u32, token.encode());
        self.state = State::WaitIn;
    }

    fn splice_in(&mut self, io: &mut Io, src: RawFd, key: DirKey) {
        if self.pipe.is_none() {
            self.pipe = io.lease_pipe();
        }
        let Some(pipe) = self.pipe.as_ref() else {
            io.waiters.push_back(key);
            self.state = State::Idle;
            return;
        };
        let sqe = opcode::Splice::new(
            types::Fd(src),
            -1,
            types::Fd(pipe.ends.write.as_raw_fd()),
            -1,
            pipe.capacity,
        )
        .flags(SPLICE_FLAGS)
        .build()
        .user_data(Token::new(Kind::SpliceIn, key.slot, key.generation, key.dir).encode());
        io.kernel.poller.push(sqe);
        self.state = State::SplicingIn;
    }

    fn splice_out(&mut self, io: &mut Io, sink: RawFd, key: DirKey) {
        let pipe = self.pipe.as_ref().expect("a pipe holds the bytes to send");
        assert!(pipe.data > 0, "nothing to splice out");
        let sqe = opcode::Splice::new(
            types::Fd(pipe.ends.read.as_raw_fd()),
            -1,
            types::Fd(sink),
            -1,
            pipe.data,
        )
        .flags(SPLICE_FLAGS)
        .build()
        .user_data(Token::new(Kind::SpliceOut, key.slot, key.generation, key.dir).encode());
        io.kernel.poller.push(sqe);
        self.state = State::SplicingOut;
    }

    fn give_back(&mut self, io: &mut Io) {
        if let Some(pipe) = self.pipe.take() {
            io.pipes.release(pipe);
            io.wake_waiter();
        }
    }
}

/// `SPLICE_F_NONBLOCK` covers the pipe side; the sockets are `O_NONBLOCK`, which is what keeps
/// the socket side from blocking a worker.
const SPLICE_FLAGS: u32 = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
