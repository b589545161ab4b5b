//! A direction the kernel relays (`kernel-sockmap`): a BPF stream verdict moves what the source
//! receives straight to the sink's egress, so the shard never sees the bytes. What is left for
//! the shard is the direction's end:
//!
//! - **the FIN**: a one-shot POLLIN|POLLRDHUP on the source fires only for a FIN, an error, or
//!   bytes handed back (the relay takes everything else before the socket looks readable);
//! - **passing it on without truncating**: the kernel sends redirected bytes from a work queue
//!   of its own, so when the source's FIN arrives the last bytes may not be on the sink yet, and
//!   a `shutdown` then would put the FIN before them (and fail them). The direction ends only
//!   once the sink has queued every byte the source received — both counted in TCP sequence
//!   space (`TCP_INFO`, `SIOCOUTQ`), from a baseline taken before the relay began — looking
//!   again on a timer that backs off from [`RECHECK_FIRST`] to [`RECHECK_MAX`]; an idle
//!   timeout bounds the wait for a sink that never drains;
//! - **spills**: bytes that reached a socket before its peer was in the map were handed back to
//!   it (the verdict passes rather than drops them, and marks the socket so that every later
//!   byte follows them). Such a direction becomes a copying readiness direction, in order.
//!
//! Progress (bytes) is reported at the end, and whenever the connection's timer fires (so an
//! idle timeout sees a busy relayed connection as busy).

use std::time::Duration;

use origdst_core::outcome::IoErrorKind;
use origdst_core::relay::Side;

use super::errno_kind;
use super::io::Io;
use crate::kernel::{Kernel, RelayedSource};
use crate::progress::{DirEnd, Progress};
use crate::slots::DirKey;
use crate::token::Kind;

/// The first look again at a direction waiting for the kernel (its backlog to reach the sink, or
/// its source's receive queue to be taken).
pub const RECHECK_FIRST: Duration = Duration::from_micros(50);
/// The longest wait between two looks (the backoff doubles up to it).
pub const RECHECK_MAX: Duration = Duration::from_millis(5);
/// The first look at a half-closed relayed connection's remaining sink.
pub const HEALTH_FIRST: Duration = Duration::from_millis(10);
/// The longest wait between two looks at it.
pub const HEALTH_MAX: Duration = Duration::from_millis(200);

/// One direction the kernel relays.
#[derive(Debug)]
pub struct RelayedDir {
    /// The sink's queued count (sequence space) before the relay took the pair: what it queued
    /// since is what the relay moved.
    sink_base: u64,
    /// Bytes reported to core so far.
    reported: u64,
    state: State,
    /// The other direction has ended, so its source (this direction's sink) has its peer's
    /// FIN, and a poll on it would fire at once for ever (io_uring always reports RDHUP): the
    /// sink's health is looked at on a timer instead, backing off from [`HEALTH_FIRST`] to
    /// [`HEALTH_MAX`]. The kernel stops relaying to a sink that failed (and drops what it
    /// takes for it): this is how the shard learns of it before the source's FIN.
    health: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The kernel relays; the shard waits for the source's FIN (a poll is in flight if `armed`).
    Relaying { armed: bool },
    /// Bytes sit in the source's queue the relay has not taken yet: look again after `delay`.
    Pending { delay: Duration },
    /// The FIN arrived: once the sink has queued `target`, the direction is done.
    Delivering { target: u64, delay: Duration },
}

/// What a step of a relayed direction came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Bytes and perhaps the end, as for any direction.
    Progress(Progress),
    /// The relay handed the source back: copy from now on.
    Spilled,
}

impl RelayedDir {
    /// A direction whose sink had queued `sink_base` (sequence space) before the relay began.
    pub fn new(sink_base: u64) -> Self {
        Self {
            sink_base,
            reported: 0,
            state: State::Relaying { armed: false },
            health: None,
        }
    }

    /// The other direction ended: look after this one's sink on a timer from now on.
    pub fn watch_sink<K: Kernel>(&mut self, io: &mut Io<K>, key: DirKey) {
        if self.health.is_none() {
            self.health = Some(HEALTH_FIRST);
            io.later.push((HEALTH_FIRST, key));
        }
    }

    /// `Transfer{dir}`, or woken by its recheck timer.
    pub fn resume<K: Kernel>(&mut self, io: &mut Io<K>, fds: (i32, i32), key: DirKey) -> Step {
        match self.state {
            // A poll is in flight: its completion will look; the timer is the sink's health.
            State::Relaying { armed: true } => self.check_sink(io, fds, key),
            State::Relaying { armed: false } | State::Pending { .. } => self.look(io, fds, key),
            State::Delivering { .. } => self.deliver(io, fds, key),
        }
    }

    /// The source's poll completed.
    pub fn on_poll<K: Kernel>(&mut self, io: &mut Io<K>, fds: (i32, i32), key: DirKey) -> Step {
        assert_eq!(
            self.state,
            State::Relaying { armed: true },
            "a relayed direction's poll completed with none armed"
        );
        self.state = State::Relaying { armed: false };
        self.look(io, fds, key)
    }

    /// The poll this direction has in flight, if any.
    pub fn armed(&self) -> Option<Kind> {
        (self.state == State::Relaying { armed: true }).then_some(Kind::PollIn)
    }

    /// Bytes the relay moved that core has not been told of (the connection's timer fired), and
    /// how long ago the last of them moved.
    pub fn progress<K: Kernel>(&mut self, io: &mut Io<K>, sink: i32) -> Option<(u64, Duration)> {
        let counts = io.kernel.tcp_counts(sink)?;
        let mut moved = counts.queued.saturating_sub(self.sink_base);
        if let State::Delivering { target, .. } = self.state {
            // At most the bytes before the FIN: the sink's own FIN, once queued, counts one.
            moved = moved.min(target - self.sink_base);
        }
        let new = moved.saturating_sub(self.reported);
        self.reported += new;
        (new > 0).then_some((new, counts.since_sent))
    }

    fn check_sink<K: Kernel>(&mut self, io: &mut Io<K>, fds: (i32, i32), key: DirKey) -> Step {
        let Some(delay) = self.health else {
            return Step::Progress(Progress::default());
        };
        if io.kernel.tcp_counts(fds.1).is_none_or(|c| c.closed) {
            return failed(key.dir.sink(), libc::ECONNRESET);
        }
        let next = (delay * 2).min(HEALTH_MAX);
        self.health = Some(next);
        io.later.push((next, key));
        Step::Progress(Progress::default())
    }

    fn look<K: Kernel>(&mut self, io: &mut Io<K>, fds: (i32, i32), key: DirKey) -> Step {
        let (src, _) = fds;
        match io.kernel.relayed_source(src) {
            Ok(RelayedSource::Quiet) => {
                let events = libc::POLLIN | libc::POLLRDHUP;
                io.poll_dir(src, key, Kind::PollIn, events);
                self.state = State::Relaying { armed: true };
                Step::Progress(Progress::default())
            }
            Ok(RelayedSource::Pending) => {
                let delay = match self.state {
                    State::Pending { delay } => (delay * 2).min(RECHECK_MAX),
                    _ => RECHECK_FIRST,
                };
                self.state = State::Pending { delay };
                io.later.push((delay, key));
                Step::Progress(Progress::default())
            }
            Ok(RelayedSource::Spilled) => Step::Spilled,
            Ok(RelayedSource::Eof) => match io.kernel.tcp_counts(src) {
                Some(counts) => {
                    // Sequence space: the FIN counts one, and is not relayed.
                    let data = counts.received.saturating_sub(1);
                    self.state = State::Delivering {
                        target: self.sink_base + data,
                        delay: RECHECK_FIRST,
                    };
                    self.deliver(io, fds, key)
                }
                None => failed(key.dir.source(), libc::ENOTCONN),
            },
            Err(errno) => failed(key.dir.source(), errno),
        }
    }

    fn deliver<K: Kernel>(&mut self, io: &mut Io<K>, fds: (i32, i32), key: DirKey) -> Step {
        let State::Delivering { target, delay } = self.state else {
            unreachable!("delivering in state {:?}", self.state);
        };
        match io.kernel.tcp_counts(fds.1) {
            // The sink failed: what the relay still held for it is lost, and the peer knows.
            Some(counts) if counts.closed => failed(key.dir.sink(), libc::ECONNRESET),
            Some(counts) if counts.queued >= target => {
                let total = target - self.sink_base;
                let bytes = total.saturating_sub(self.reported);
                self.reported = total;
                Step::Progress(Progress::ended(bytes, DirEnd::Eof))
            }
            Some(_) => {
                io.later.push((delay, key));
                self.state = State::Delivering {
                    target,
                    delay: (delay * 2).min(RECHECK_MAX),
                };
                Step::Progress(Progress::default())
            }
            None => failed(key.dir.sink(), libc::ENOTCONN),
        }
    }
}

/// The direction ended with an error on `side` (what it moved is not reported: the connection
/// is reset, and core counts bytes of clean ends only where they were seen).
fn failed(side: Side, errno: i32) -> Step {
    let kind: IoErrorKind = errno_kind(errno);
    Step::Progress(Progress::ended(0, DirEnd::Failed(side, kind)))
}
