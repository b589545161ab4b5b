//! The shard's deadlines: each connection keeps at most one live entry in the timer heap (the
//! earliest its core asked for); an entry that went stale is recognised when it pops and the
//! connection's next deadline is armed instead. Expiries are bounded per turn.

use origdst_core::relay::{Dir, HalfState};
use origdst_core::time::Instant;

use super::Shard;
use crate::kernel::Kernel;
use crate::slots::SlotKey;
use crate::timers::TimerKey;

impl<K: Kernel> Shard<K> {
    pub(super) fn rearm_timer(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        let Some(at) = conn.core.next_timeout() else {
            return;
        };
        if conn.timer_at.is_none_or(|armed| at < armed) {
            conn.timer_at = Some(at);
            self.timers.push(
                at,
                TimerKey::Conn {
                    slot,
                    generation: conn.generation,
                },
            );
        }
    }

    /// Moves the directions that asked to be looked at again into the timer heap.
    pub(super) fn schedule_later(&mut self) {
        if self.io.later.is_empty() {
            return;
        }
        let now = self.now();
        for (delay, key) in self.io.later.drain(..) {
            self.timers.push(now + delay, TimerKey::Dir(key));
        }
    }

    pub(super) fn fire_timers(&mut self, now: Instant) {
        // Bounded per turn, like every other source of work: a burst of expiries (or a deadline
        // that keeps coming due) cannot starve completions; what is left fires next turn, the
        // wait's timeout being zero while a deadline has passed.
        for _ in 0..TIMERS_PER_TURN_MAX {
            let Some((at, key)) = self.timers.pop_due(now) else {
                break;
            };
            match key {
                TimerKey::Conn { slot, generation } => {
                    let Some(conn) = self.conns.get_mut(SlotKey { slot, generation }) else {
                        continue;
                    };
                    if conn.timer_at == Some(at) {
                        conn.timer_at = None;
                    }
                    // What the kernel relayed since the last look is activity the idle timer
                    // must see before it decides.
                    // (Open directions only: a finished one's sink has queued its FIN since,
                    // which TCP counts and which is no byte.)
                    for dir in Dir::ALL {
                        if !conn.relayed || conn.core.half_state(dir) != HalfState::Open {
                            continue;
                        }
                        let fds = conn.fds(dir);
                        if let Some((bytes, ago)) =
                            conn.dirs[dir.index()].unreported(&mut self.io, fds)
                        {
                            let at = now.saturating_sub(ago);
                            conn.core
                                .handle_transferred(at, dir, bytes, &mut self.stats);
                        }
                    }
                    conn.core.handle_timeout(now, &mut self.stats);
                    self.drive(now, slot);
                }
                TimerKey::Dir(key) => self.resume_dir(now, key),
                TimerKey::AcceptBackoff {
                    listener,
                    generation,
                } => {
                    if self.listeners[listener].generation == generation {
                        self.arm_accept(listener);
                    }
                }
                TimerKey::GroupDrain(group) => self.group_drain_ends(now, group),
                TimerKey::GroupsPublish => {
                    self.groups_publish_pending = false;
                    self.publish_groups(Some(now));
                }
                TimerKey::AcceptResume => {
                    if self.resume_at == Some(at) {
                        self.resume_at = None;
                        self.try_resume_accepts(now);
                    }
                }
                TimerKey::Drain => self.abort_all(now),
            }
        }
    }
}

/// Timer expiries handled per turn of the loop (the rest wait for the next turn).
const TIMERS_PER_TURN_MAX: usize = 1024;
