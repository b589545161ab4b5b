//! A connection's end: cancels, pools, access record and log line; and the error watches that
//! end it early when a socket fails while nobody else is looking.

use std::sync::Arc;

use origdst_core::connection::Connection;
use origdst_core::outcome::{IoErrorKind, Outcome};
use origdst_core::relay::{Dir, Side};
use origdst_core::stats::Counter;
use origdst_core::time::Instant;

use super::{Shard, Watch, watch_dir, watch_index};
use crate::kernel::Kernel;
use crate::report::Finished;
use crate::slots::DirKey;
use crate::token::{Kind, Token};

impl<K: Kernel> Shard<K> {
    pub(super) fn release(&mut self, now: Instant, slot: usize) {
        let mut conn = self.conns.remove(slot);
        if let Some((port, key)) = conn.own_upstream {
            self.setup.own_upstreams.remove(port, key);
        }
        for (pair, side) in [
            (conn.internal_upstream, Side::Upstream),
            (conn.internal_client, Side::Client),
        ] {
            if let Some(pair) = pair {
                self.leave_pair(pair, side);
            }
        }
        let mut fds = [-1; 2];
        let mut nfds = 0;
        for fd in [conn.client.as_ref(), conn.upstream.as_ref()]
            .into_iter()
            .flatten()
        {
            fds[nfds] = K::raw(fd);
            nfds += 1;
        }
        // Reused: closing a connection allocates nothing.
        let mut targets = std::mem::take(&mut self.cancel_targets);
        targets.clear();
        for (armed, kind) in [
            (conn.connect_poll_armed, Kind::ConnectPoll),
            (conn.head_poll_armed, Kind::HeadPoll),
        ] {
            if armed {
                targets
                    .push(Token::new(kind, slot, conn.generation, Dir::ClientToUpstream).encode());
            }
        }
        for side in [Side::Client, Side::Upstream] {
            if conn.watch[watch_index(side)] == Watch::Armed {
                let token = Token::new(Kind::Watch, slot, conn.generation, watch_dir(side));
                targets.push(token.encode());
            }
        }
        for dir in Dir::ALL {
            let key = DirKey {
                slot,
                generation: conn.generation,
                dir,
            };
            conn.dirs[dir.index()].inflight(key, &mut targets);
        }
        let token = Token::new(Kind::Cancel, slot, conn.generation, Dir::ClientToUpstream);
        self.io
            .kernel
            .cancel_ops(&fds[..nfds], &targets, token.encode());
        self.cancel_targets = targets;
        for dir in &mut conn.dirs {
            dir.release(&mut self.io);
        }
        if conn.relayed {
            for fd in &fds[..nfds] {
                self.io.kernel.relay_forget(*fd);
            }
        }
        self.report_close(now, &conn.core, conn.listener_name.clone(), conn.group);
        if let Some(group) = conn.group {
            self.group_released(group, &conn.core);
        }
        if let Some(client) = conn.client {
            self.io.closing.push(client);
        }
        if let Some(upstream) = conn.upstream {
            if !conn.core.history().connected {
                // An attempt whose connect we gave up on (its poll failed, or timed out) may
                // have connected after all: reset it, or the server would see a clean, empty
                // connection nobody made.
                self.io.kernel.arm_reset(&upstream);
            }
            self.io.closing.push(upstream);
        }
        if self.accepts_paused {
            // The descriptors close after this round's submit; try again on the next loop.
            self.schedule_resume(now);
        }
    }

    /// A closed connection's log line and access record (every connection the shard accepted
    /// has exactly one, refused and overflowed ones included).
    pub(super) fn report_close(
        &mut self,
        now: Instant,
        core: &Connection,
        listener_name: Option<Arc<str>>,
        group: Option<crate::listeners::GroupId>,
    ) {
        let outcome = core.outcome().expect("reported only once closed");
        self.log_close(now, core, outcome);
        // Sampling thins the completed connections; every failure and refusal is logged (the
        // queue bound still holds if they flood).
        if let Some(log) = self.setup.access_log.as_mut()
            && (outcome != Outcome::Completed || log.sampled())
        {
            log.send(Finished {
                age: core.age(now),
                client: core.client().get(),
                orig_dst: core.orig_dst().map(|a| a.get()),
                provenance: core.provenance().map(|p| p.name()),
                upstream: core.upstream().map(|a| a.get()),
                listener: listener_name.unwrap_or_else(|| Arc::from("-")),
                group: group
                    .and_then(|g| self.groups.get(&g))
                    .filter(|g| g.is_pod())
                    .map(|g| Arc::clone(&g.name)),
                bytes_received: core.bytes(Dir::ClientToUpstream),
                bytes_sent: core.bytes(Dir::UpstreamToClient),
                outcome,
                shard: self.setup.id,
            });
        }
    }

    fn log_close(&mut self, now: Instant, core: &Connection, outcome: Outcome) {
        let c2u = core.bytes(Dir::ClientToUpstream);
        let u2c = core.bytes(Dir::UpstreamToClient);
        let orig_dst = core
            .orig_dst()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let provenance = core.provenance().map_or("-", |p| p.name());
        let upstream = core
            .upstream()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let age_ms = core.age(now).as_millis();
        let history = core.history();
        if outcome == Outcome::Completed {
            tracing::debug!(client = %core.client(), %orig_dst, provenance, %upstream, c2u, u2c, age_ms, %history,
                "connection completed");
        } else if self.log_budget.take(now) {
            let error = match outcome.error() {
                Some(IoErrorKind::Other { errno }) => {
                    std::io::Error::from_raw_os_error(errno).to_string()
                }
                Some(kind) => kind.name().to_string(),
                None => "-".to_string(),
            };
            tracing::info!(client = %core.client(), %orig_dst, provenance, %upstream, reason = outcome.name(), error, c2u, u2c,
                age_ms, %history, "connection closed");
        }
    }

    pub(super) fn arm_watches(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if conn.core.is_closed() {
            return;
        }
        for side in [Side::Client, Side::Upstream] {
            let index = watch_index(side);
            if conn.watch[index] != Watch::Off {
                continue;
            }
            if side == Side::Upstream && !conn.core.history().connected {
                continue;
            }
            let Some(fd) = conn.fd(side).map(K::raw) else {
                continue;
            };
            let token = Token::new(Kind::Watch, slot, conn.generation, watch_dir(side));
            conn.watch[index] = Watch::Armed;
            self.io.kernel.watch(fd, token.encode());
        }
    }

    pub(super) fn on_watch(&mut self, now: Instant, slot: usize, side: Side, res: i32) {
        let conn = &mut self.conns[slot];
        // Watches are cancelled only at release, so a live connection's watch completion is for
        // the watch it armed; anything else is another connection's (a slot handed on without a
        // new generation).
        debug_assert_eq!(
            conn.watch[watch_index(side)],
            Watch::Armed,
            "a watch completion for a connection with no watch armed on that side"
        );
        // Hung up without an error (the peer's FIN: io_uring polls always report RDHUP), or the
        // watch was cancelled: nothing more to watch on this socket — the reading pump will meet
        // the end of stream, the writing pump any later error.
        conn.watch[watch_index(side)] = Watch::Done;
        if res < 0 || res as u32 & libc::POLLERR as u32 == 0 || conn.core.is_closed() {
            return;
        }
        let Some(fd) = conn.fd(side) else {
            return;
        };
        // SO_ERROR: a pump may have consumed the error meanwhile and reported it itself.
        let Some(kind) = self.io.kernel.socket_error(fd) else {
            return;
        };
        self.stats.incr(Counter::WatchedErrors);
        conn.core.handle_error(now, side, kind, &mut self.stats);
        self.drive(now, slot);
    }
}
