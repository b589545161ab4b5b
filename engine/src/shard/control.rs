//! The supervisor's requests (drain, abort, reload) and what the shard publishes.

use origdst_core::relay::Dir;
use origdst_core::time::Instant;

use super::Shard;
use crate::kernel::{Kernel, MORE};
use crate::report::Gauge;
use crate::timers::TimerKey;
use crate::token::{Kind, Token};

impl<K: Kernel> Shard<K> {
    pub(super) fn arm_wake(&mut self) {
        let token = Token::new(Kind::Wake, 0, 0, Dir::ClientToUpstream);
        let fd = self.setup.control.wake_fd();
        self.io.kernel.poll_multi(fd, token.encode());
    }

    pub(super) fn on_wake(&mut self, now: Instant, flags: u32) {
        self.setup.control.acknowledge();
        if flags & MORE == 0 {
            self.arm_wake();
        }
        // Reloads (each with the listeners it removes and adds) and listener changes first: a
        // pod added just before a drain is served (and drained) like every other, not dropped.
        for reload in self.setup.control.take_reloads() {
            self.apply_reload(now, reload);
        }
        for change in self.setup.control.take_listener_changes() {
            self.change_listeners(now, change);
        }
        if self.setup.control.drain_requested() && !self.draining {
            self.start_drain(now);
        }
        if self.setup.control.abort_requested() {
            self.abort_all(now);
        }
    }

    pub(super) fn start_drain(&mut self, now: Instant) {
        self.draining = true;
        for index in 0..self.listeners.len() {
            self.stop_listener(index);
        }
        let deadline = now + self.setup.config.knobs.drain_timeout;
        self.timers.push(deadline, TimerKey::Drain);
        tracing::debug!(shard = self.setup.id, open = self.conns.len(), "draining");
    }

    pub(super) fn abort_all(&mut self, now: Instant) {
        let slots: Vec<usize> = self.conns.slots().collect();
        for slot in slots {
            self.conns[slot].core.abort_for_drain(now, &mut self.stats);
            self.drive(now, slot);
        }
    }

    pub(super) fn publish(&mut self) {
        let spills = std::mem::take(&mut self.io.relay_spills);
        if spills > 0 {
            self.stats
                .add(origdst_core::stats::Counter::KernelRelaySpilled, spills);
        }
        let mut gauges = [0u64; Gauge::ALL.len()];
        gauges[Gauge::ConnectionsActive as usize] = self.conns.len() as u64;
        gauges[Gauge::PipesLeased as usize] = u64::from(self.io.pipes.leased());
        gauges[Gauge::PipesShrunk as usize] = self.io.pipes.shrunk;
        gauges[Gauge::PipesDiscarded as usize] = self.io.pipes.discarded;
        gauges[Gauge::InternalPairs as usize] = self.io.pairs.len() as u64;
        gauges[Gauge::BuffersInFlight as usize] = self.io.kernel.buffers_in_flight();
        gauges[Gauge::SpliceFallbackCopies as usize] = self.io.fallback_copies;
        gauges[Gauge::SplicedBytes as usize] = self.io.spliced_bytes;
        gauges[Gauge::CopiedBytes as usize] = self.io.copied_bytes;
        let (hits, sleeps) = self.io.kernel.wait_counts();
        gauges[Gauge::BusyPollHits as usize] = hits;
        gauges[Gauge::WaitSleeps as usize] = sleeps;
        self.setup.reporter.publish(&self.stats, &gauges);
        if self.groups_dirty {
            let now = self.now();
            self.publish_groups(Some(now));
        }
    }
}
