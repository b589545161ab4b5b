//! Accepting: multishot accept per listener, what is read of an accepted socket, the connection
//! limit, and running out of descriptors (pause accepting, spend the reserve, park, resume).

use std::io as stdio;
use std::sync::Arc;

use origdst_core::addr::canonical;
use origdst_core::config::TrafficDirection;
use origdst_core::connection::Connection;
use origdst_core::orig_dst::SockOptAnswer;
use origdst_core::relay::Dir;
use origdst_core::route;
use origdst_core::stats::Counter;
use origdst_core::time::Instant;

use super::{ACCEPT_BACKOFF, Shard, SlotKey, is_descriptor_exhaustion};
use crate::kernel::{Kernel, MORE};
use crate::timers::TimerKey;
use crate::token::{Kind, SLOT_LIMIT, Token};

impl<K: Kernel> Shard<K> {
    pub(super) fn arm_accept(&mut self, index: usize) {
        let listener = &mut self.listeners[index];
        let Some(socket) = &listener.socket else {
            return;
        };
        if listener.armed || self.draining || self.accepts_paused {
            return;
        }
        let token = Token::new(
            Kind::Accept,
            index,
            listener.generation,
            Dir::ClientToUpstream,
        );
        listener.armed = true;
        let fd = K::raw(socket);
        self.io.kernel.accept_multi(fd, token.encode());
    }

    pub(super) fn on_accept(
        &mut self,
        now: Instant,
        index: usize,
        generation: u16,
        res: i32,
        flags: u32,
    ) {
        let more = flags & MORE != 0;
        let current = self
            .listeners
            .get(index)
            .is_some_and(|l| l.generation == generation);
        if !current {
            // An entry is reused only once its last accept completion came (`vacant`), so no
            // completion can outlive its socket's entry; should one, its connection is not
            // served by the wrong listener: reset and counted as gone.
            debug_assert!(false, "an accept completion for a reused listener entry");
            if res >= 0 {
                let socket = self.io.kernel.adopt(res);
                self.io.kernel.arm_reset(&socket);
                self.io.closing.push(socket);
                self.stats.incr(Counter::AcceptClientGone);
            }
            return;
        }
        if !more {
            self.listeners[index].armed = false;
        }
        if res < 0 {
            if res == -libc::ECONNABORTED {
                // The client reset while in the accept queue: not a failure of ours, and counted
                // while draining too (found by the simulator: a client gone during the drain was
                // in no counter).
                self.stats.incr(Counter::AcceptClientGone);
                if !more {
                    self.arm_accept(index);
                }
                return;
            }
            if self.draining {
                return;
            }
            if res == -libc::ECANCELED {
                // The end of an accept cancelled by a pause. Its completion may come after the
                // pause already ended (the resume found the listener still armed and left it):
                // then re-arm here, or the listener would never accept again (found by the
                // simulator's late cancellations).
                if !more {
                    self.arm_accept(index);
                }
                return;
            }
            self.stats.incr(Counter::AcceptFail);
            if is_descriptor_exhaustion(-res) {
                if !more && (self.io.pipes.shed_idle() > 0 || self.descriptor_came_back()) {
                    self.arm_accept(index);
                    return;
                }
                // The connection stays in the kernel's backlog; nothing is lost by waiting.
                self.pause_accepts(now, -res);
                return;
            }
            if self.log_budget.take(now) {
                tracing::warn!(shard = self.setup.id, errno = -res, error = %stdio::Error::from_raw_os_error(-res),
                    "accept failed; backing off {ACCEPT_BACKOFF:?}");
            }
            if !more {
                self.timers.push(
                    now + ACCEPT_BACKOFF,
                    TimerKey::AcceptBackoff {
                        listener: index,
                        generation,
                    },
                );
            }
            return;
        }
        if !more {
            self.arm_accept(index);
        }
        let socket = self.io.kernel.adopt(res);
        self.accept_one(now, index, socket);
    }

    pub(super) fn accept_one(&mut self, now: Instant, index: usize, fd: K::Socket) {
        let config_index = self.listeners[index].config_index;
        if config_index == super::GONE {
            self.io.kernel.arm_reset(&fd);
            self.io.closing.push(fd);
            self.stats.incr(Counter::AcceptListenerGone);
            return;
        }
        let group = self.listeners[index].group;
        let listener = &self.setup.config.listeners[config_index];
        let evidence = match self.io.kernel.accept_evidence(&fd, listener.transparent) {
            Ok(mut evidence) => {
                let dst = match evidence.sockopt {
                    SockOptAnswer::V4(dst) | SockOptAnswer::V6(dst) => Some(canonical(dst)),
                    _ if evidence.transparent => Some(evidence.local.get()),
                    _ => None,
                };
                let client = evidence.client.get();
                evidence.own_upstream = self.setup.config.knobs.detect_own_upstream
                    && dst.is_some_and(|dst| {
                        let own = &self.setup.own_upstreams;
                        // Our own connection comes from one of our addresses: only such a client
                        // can be one whose record is still being written (the wait is for those).
                        if self.setup.me.local_ips.contains(&client.ip()) {
                            own.contains_settled(client, dst)
                        } else {
                            own.contains(client, dst)
                        }
                    });
                // Where the platform attaches redirect records, an OUTBOUND listener reads the
                // connection's and applies it to the upstream socket (else the platform would
                // redirect our own connection again); an INBOUND one does not (Envoy's
                // original_dst filter on Windows).
                if self.setup.config.knobs.redirect_records
                    && listener.traffic_direction == TrafficDirection::Outbound
                {
                    evidence.redirect_record = self.io.kernel.redirect_record(&fd);
                }
                evidence
            }
            Err(err) => {
                // The client left between accept and getpeername (a reset in the accept queue
                // shows up here on Linux): nothing to relay or reset.
                self.stats.incr(Counter::AcceptClientGone);
                tracing::debug!(error = %err, "accepted socket unusable");
                return;
            }
        };
        let limit = self.setup.config.knobs.connections_per_shard_max as usize;
        if self.conns.len() >= limit.min(SLOT_LIMIT) {
            // Reset at once, and logged and recorded like any other connection (the log line
            // names the reason, `overflow`, within the log budget).
            let mut core = Connection::overflow(now, evidence.client, &mut self.stats);
            while core.poll_action().is_some() {}
            self.io.kernel.arm_reset(&fd);
            // Accepted and reset at once: counted as its listener's (or pod's) like any other
            // connection it logs (found by the push family: the log had it, the counters not).
            if let Some(group) = group {
                self.group_accepted(group);
                self.group_released(group, &core);
            }
            let listener_name = Arc::clone(&self.listener_names[config_index]);
            self.report_close(now, &core, Some(listener_name), group);
            return;
        }
        let route = route::route(
            &self.setup.config,
            &self.setup.me,
            config_index,
            &evidence,
            &mut self.balancer,
            &mut self.stats,
        );
        let listener_name = self.setup.access_log.is_some().then(|| {
            // A refused connection is logged under the listener that accepted it.
            let index = route.as_ref().map_or(config_index, |r| r.listener);
            Arc::clone(&self.listener_names[index])
        });
        let core = Connection::start(now, &evidence, route, &mut self.stats);
        let slot = self.insert_conn(core, Some(fd));
        self.conns[slot].listener_name = listener_name;
        if let Some(group) = group {
            self.conns[slot].group = Some(group);
            self.conns[slot].netns = self.group_accepted(group);
        }
        self.drive(now, slot);
    }

    /// Closes now what this turn released (its cancels submitted first), instead of just before
    /// the next wait: descriptors are wanted back at once.
    pub(super) fn close_released(&mut self) {
        if !self.io.closing.is_empty() {
            self.io.kernel.submit();
            self.close_submitted();
        }
    }

    /// Whether a descriptor is free now, although an accept said none was: the accept ran before
    /// connections released in this turn closed their sockets, and its answer is stale (found
    /// by the simulator's accept watchdog: a full backlog waited out a 50 ms backoff with
    /// descriptors free). The probe becomes the reserve if that was spent.
    fn descriptor_came_back(&mut self) -> bool {
        self.close_released();
        match self.io.kernel.reserve_fd() {
            Ok(fd) => {
                if self.spare_fd.is_none() {
                    self.spare_fd = Some(fd);
                }
                true
            }
            Err(_) => false,
        }
    }

    pub(super) fn pause_accepts(&mut self, now: Instant, errno: i32) {
        if self.accepts_paused {
            return;
        }
        self.accepts_paused = true;
        self.stats.incr(Counter::AcceptPausedNoFd);
        tracing::warn!(shard = self.setup.id, open = self.conns.len(), error = %stdio::Error::from_raw_os_error(errno),
            "out of file descriptors; accepting paused until connections close (raise `ulimit -n`)");
        for index in 0..self.listeners.len() {
            let listener = &self.listeners[index];
            if let (true, Some(socket)) = (listener.armed, &listener.socket) {
                let fd = K::raw(socket);
                self.cancel_accept(index, fd);
            }
        }
        self.schedule_resume(now + ACCEPT_BACKOFF);
    }

    /// Cancels listener `index`'s multishot accept (on its socket `fd`); its last completion
    /// comes without MORE.
    pub(super) fn cancel_accept(&mut self, index: usize, fd: i32) {
        let generation = self.listeners[index].generation;
        let token = Token::new(Kind::Cancel, index, generation, Dir::ClientToUpstream);
        let target = Token::new(Kind::Accept, index, generation, Dir::ClientToUpstream).encode();
        self.io.kernel.cancel_accept(fd, target, token.encode());
    }

    pub(super) fn schedule_resume(&mut self, at: Instant) {
        debug_assert!(self.accepts_paused, "resuming needs a pause");
        if self.resume_at.is_none_or(|pending| at < pending) {
            self.resume_at = Some(at);
            self.timers.push(at, TimerKey::AcceptResume);
        }
    }

    pub(super) fn try_resume_accepts(&mut self, now: Instant) {
        if !self.accepts_paused {
            return;
        }
        self.close_released();
        while let Some(waiter) = self.fd_waiters.pop_front() {
            let Some(conn) = self.conns.get(SlotKey {
                slot: waiter.slot,
                generation: waiter.generation,
            }) else {
                continue;
            };
            if conn.core.is_closed() || conn.upstream.is_some() {
                // Closed meanwhile (connect timeout, client reset, drain abort).
                continue;
            }
            let parked = self.fd_waiters.len();
            self.start_connect(
                now,
                waiter.slot,
                waiter.upstream,
                waiter.mark,
                waiter.source,
                waiter.record,
            );
            if self.fd_waiters.len() > parked {
                // Parked again (pushed to the back): restore its place and wait for more.
                if let Some(again) = self.fd_waiters.pop_back() {
                    self.fd_waiters.push_front(again);
                }
                self.schedule_resume(now + ACCEPT_BACKOFF);
                return;
            }
            self.drive(now, waiter.slot);
        }
        if self.draining {
            return;
        }
        if self.spare_fd.is_none() {
            let mut reserved = self.io.kernel.reserve_fd();
            // Idle pooled pipes hold descriptors too: without shedding them, a shard whose open
            // connections all closed could wait forever for one descriptor (found by the
            // simulator with a limit of 12).
            if reserved.is_err() && self.io.pipes.shed_idle() > 0 {
                reserved = self.io.kernel.reserve_fd();
            }
            match reserved {
                Ok(fd) => self.spare_fd = Some(fd),
                Err(_) => {
                    self.schedule_resume(now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
        self.accepts_paused = false;
        tracing::info!(
            shard = self.setup.id,
            open = self.conns.len(),
            "file descriptors available again; accepting"
        );
        for index in 0..self.listeners.len() {
            self.arm_accept(index);
        }
    }
}
