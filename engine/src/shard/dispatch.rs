//! Completions to connections: each completion is routed by its token to a listener, the wake-up
//! descriptor, or a connection's direction (if its generation is still the slot's: a completion of
//! a connection that is gone only gives back what it holds); the progress it reports is fed to
//! the connection's core. Directions woken by internal queues run from the ready list.

use origdst_core::relay::{Dir, HalfState};
use origdst_core::time::Instant;

use super::Shard;
use crate::kernel::Kernel;
use crate::progress::{DirEnd, Progress};
use crate::slots::{DirKey, SlotKey};
use crate::token::{Kind, Token};

impl<K: Kernel> Shard<K> {
    pub(super) fn handle_completions(&mut self, now: Instant) {
        let mut batch = std::mem::take(&mut self.completions);
        batch.clear();
        self.io.kernel.completions(&mut batch);
        for &(data, res, flags) in &batch {
            self.handle_completion(now, Token::decode(data), res, flags);
        }
        self.completions = batch;
    }

    pub(super) fn handle_completion(&mut self, now: Instant, token: Token, res: i32, flags: u32) {
        match token.kind {
            Kind::Accept => {
                self.on_accept(now, token.slot as usize, token.generation, res, flags);
            }
            Kind::Wake => self.on_wake(now, flags),
            Kind::Cancel => {}
            _ => self.on_conn_completion(now, token, res, flags),
        }
    }

    pub(super) fn on_conn_completion(&mut self, now: Instant, token: Token, res: i32, flags: u32) {
        let slot = token.slot as usize;
        let live = self
            .conns
            .get(SlotKey {
                slot,
                generation: token.generation,
            })
            .is_some();
        if !live {
            self.io.kernel.recycle_stale(token, flags);
            return;
        }
        let key = DirKey {
            slot,
            generation: token.generation,
            dir: token.dir,
        };
        let conn = &mut self.conns[slot];
        let progress = match token.kind {
            Kind::ConnectPoll => {
                // A retry cancelled the previous attempt's poll; the new socket has its own. A
                // cancelled poll may still complete with its real result (it fired before the
                // cancel was seen): with no poll armed it belongs to a retired attempt, and the
                // new socket (connected at once, say) must not take it for its own.
                if res != -libc::ECANCELED && conn.connect_poll_armed {
                    conn.connect_poll_armed = false;
                    self.finish_connect(now, slot, res);
                }
                return;
            }
            Kind::HeadPoll => {
                // Cancelled only at release: a live connection's head poll is its own.
                debug_assert!(
                    conn.head_poll_armed,
                    "a head poll completion with none armed"
                );
                conn.head_poll_armed = false;
                self.finish_peek(now, slot, res);
                return;
            }
            Kind::Watch => {
                self.on_watch(now, slot, token.dir.source(), res);
                return;
            }
            Kind::Recv
            | Kind::Send
            | Kind::PollIn
            | Kind::PollOut
            | Kind::SpliceIn
            | Kind::SpliceOut => {
                let fds = conn.fds(token.dir);
                conn.dirs[token.dir.index()].on_completion(
                    &mut self.io,
                    fds,
                    key,
                    token.kind,
                    res,
                    flags,
                )
            }
            Kind::Accept | Kind::Wake | Kind::Cancel => unreachable!("not a connection completion"),
        };
        self.apply(now, key, progress);
    }

    pub(super) fn apply(&mut self, now: Instant, key: DirKey, progress: Progress) {
        self.feed(now, key.slot, key.dir, progress);
        if progress.end == Some(DirEnd::Eof) && self.conns[key.slot].relayed {
            let other = DirKey {
                dir: Dir::from_source(key.dir.sink()),
                ..key
            };
            let conn = &mut self.conns[key.slot];
            conn.dirs[other.dir.index()].other_ended(&mut self.io, other);
        }
        self.drive(now, key.slot);
    }

    pub(super) fn feed(&mut self, now: Instant, slot: usize, dir: Dir, progress: Progress) {
        let core = &mut self.conns[slot].core;
        if progress.bytes > 0 {
            core.handle_transferred(now, dir, progress.bytes, &mut self.stats);
        }
        match progress.end {
            None => {}
            Some(DirEnd::Eof) => core.handle_eof(now, dir, &mut self.stats),
            Some(DirEnd::Failed(side, kind)) => core.handle_error(now, side, kind, &mut self.stats),
        }
    }

    pub(super) fn run_ready(&mut self, now: Instant) {
        for _ in 0..self.io.ready.len() {
            let Some(key) = self.io.ready.pop_front() else {
                break;
            };
            self.resume_dir(now, key);
        }
    }

    /// Runs a direction woken from the ready queue or by its timer, if its connection is still
    /// there and the direction still open.
    pub(super) fn resume_dir(&mut self, now: Instant, key: DirKey) {
        let Some(conn) = self.conns.get_mut(SlotKey {
            slot: key.slot,
            generation: key.generation,
        }) else {
            return;
        };
        if conn.core.is_closed() || conn.core.half_state(key.dir) != HalfState::Open {
            return;
        }
        let fds = conn.fds(key.dir);
        let progress = conn.dirs[key.dir.index()].resume(&mut self.io, fds, key);
        self.apply(now, key, progress);
    }
}
