//! The shard's timer heap. Core says when each connection wants `handle_timeout`; the heap holds
//! at most one live entry per connection (the earliest it asked for). Entries that went stale —
//! the connection closed or its deadline moved later — are recognised when popped and re-armed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use origdst_core::time::Instant;

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKey {
    /// A connection's `next_timeout`.
    Conn {
        /// The connection's slot.
        slot: usize,
        /// The connection's generation.
        generation: u16,
    },
    /// Look at a direction again (a relayed direction waiting for the kernel).
    Dir(crate::slots::DirKey),
    /// Re-arm a listener's accept after an error back-off (ENOMEM, ENOBUFS, ...).
    AcceptBackoff {
        /// The listener's index.
        listener: usize,
        /// Its generation (the entry may hold another socket by then).
        generation: u16,
    },
    /// Accepts are paused for want of descriptors: try to take them up again.
    AcceptResume,
    /// The drain deadline.
    Drain,
    /// A removed group's drain deadline: its connections still open are reset.
    GroupDrain(crate::listeners::GroupId),
    /// Publish the groups' counters held back by the rate limit.
    GroupsPublish,
}

/// Deadlines in order, stale ones included (the caller recognises them).
#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, TimerKey)>>,
}

impl Timers {
    /// Adds a deadline.
    pub fn push(&mut self, at: Instant, key: TimerKey) {
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops one entry due at `now`, with the deadline it was pushed for.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, TimerKey)> {
        let Reverse((at, _)) = self.heap.peek()?;
        if *at > now {
            return None;
        }
        self.heap.pop().map(|Reverse(entry)| entry)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let mut timers = Timers::default();
        timers.push(Instant::from_nanos(30), TimerKey::Drain);
        timers.push(
            Instant::from_nanos(10),
            TimerKey::AcceptBackoff {
                listener: 1,
                generation: 0,
            },
        );
        assert_eq!(timers.next(), Some(Instant::from_nanos(10)));
        assert_eq!(timers.pop_due(Instant::from_nanos(9)), None);
        assert_eq!(
            timers.pop_due(Instant::from_nanos(30)),
            Some((
                Instant::from_nanos(10),
                TimerKey::AcceptBackoff {
                    listener: 1,
                    generation: 0,
                }
            ))
        );
        assert_eq!(
            timers.pop_due(Instant::from_nanos(30)),
            Some((Instant::from_nanos(30), TimerKey::Drain))
        );
        assert_eq!(timers.len(), 0);
    }
}
