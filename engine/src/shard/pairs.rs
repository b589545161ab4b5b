//! Internal listeners: connecting to one opens a pair and an inner connection on this shard;
//! resets and starts cross pairs through the main loop, never by recursion.

use origdst_core::addr::{ClientAddr, LocalAddr};
use origdst_core::connection::Connection;
use origdst_core::orig_dst::{AcceptEvidence, RecordAnswer, SockOptAnswer};
use origdst_core::outcome::IoErrorKind;
use origdst_core::relay::Side;
use origdst_core::route;
use origdst_core::time::Instant;

use super::internal;
use super::{Shard, SlotKey};
use crate::kernel::Kernel;
use crate::token::SLOT_LIMIT;

impl<K: Kernel> Shard<K> {
    pub(super) fn connect_internal(
        &mut self,
        now: Instant,
        slot: usize,
        listener: usize,
        handoff: origdst_core::orig_dst::InternalMetadata,
    ) {
        let Some(settings) = self.setup.config.internal_listener else {
            unreachable!("config validation requires the internal_listener extension");
        };
        let limit = self.setup.config.knobs.connections_per_shard_max as usize;
        if self.conns.len() >= limit.min(SLOT_LIMIT) {
            // The inner connection needs a slot like any other: at the limit, the outer one is
            // refused as a failed connect.
            self.conns[slot].core.handle_connect_failed(
                now,
                IoErrorKind::Other {
                    errno: libc::EAGAIN,
                },
                &mut self.stats,
            );
            return;
        }
        let outer = &mut self.conns[slot];
        let pair = self.io.pairs.insert_with(|_| {
            internal::Pair::new(
                settings.buffer_size_bytes as usize,
                (slot, outer.generation),
            )
        });
        outer.use_pair(pair, true);
        outer.core.handle_connected(now);
        let client = handoff
            .filter_state_remote
            .as_deref()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| outer.core.client().get());
        let evidence = AcceptEvidence {
            client: ClientAddr::new(client),
            local: LocalAddr::new(std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
            transparent: false,
            sockopt: SockOptAnswer::NotQueried,
            mark: None,
            internal: Some(handoff),
            own_upstream: false,
            redirect_record: RecordAnswer::None,
        };
        let route = route::route(
            &self.setup.config,
            &self.setup.me,
            listener,
            &evidence,
            &mut self.balancer,
            &mut self.stats,
        );
        let core = Connection::start(now, &evidence, route, &mut self.stats);
        let netns = self.conns[slot].netns;
        let inner = self.insert_conn(core, None);
        let generation = self.conns[inner].generation;
        // A pod's chain dials from the pod's namespace to its end (the outer connection's group
        // drains it: a reset of the outer crosses the pair).
        self.conns[inner].netns = netns;
        self.conns[inner].use_pair(pair, false);
        if let Some(entry) = self.io.pairs.get_mut(pair) {
            entry.inner = Some((inner, generation));
        }
        // Driven from the main loop, not from here: the inner connection may connect to another
        // internal listener in turn, and a chain must never become recursion on the shard's stack
        // (a cycle once overflowed it). Core bounds the hops; this bounds the stack.
        self.inner_starts.push_back((inner, generation));
    }

    pub(super) fn flush_inner_starts(&mut self, now: Instant) {
        while let Some((slot, generation)) = self.inner_starts.pop_front() {
            if self.conns.get(SlotKey { slot, generation }).is_some() {
                self.drive(now, slot);
            }
        }
    }

    pub(super) fn reset_peer(&mut self, pair: SlotKey, side: Side) {
        let Some(entry) = self.io.pairs.get_mut(pair) else {
            return;
        };
        let (peer, peer_side) = match side {
            Side::Upstream => (entry.inner.take(), Side::Client),
            Side::Client => (entry.outer.take(), Side::Upstream),
        };
        if let Some((peer_slot, generation)) = peer {
            // Delivered from the main loop, never inside another connection's `drive`: the peer's
            // reaction may come back to this connection while it is still being driven.
            self.peer_errors
                .push_back((peer_slot, generation, peer_side));
        }
    }

    pub(super) fn flush_deferred(&mut self, now: Instant) {
        while !(self.inner_starts.is_empty() && self.peer_errors.is_empty()) {
            self.flush_inner_starts(now);
            self.flush_peer_errors(now);
        }
    }

    pub(super) fn flush_peer_errors(&mut self, now: Instant) {
        while let Some((slot, generation, side)) = self.peer_errors.pop_front() {
            let Some(conn) = self.conns.get_mut(SlotKey { slot, generation }) else {
                continue;
            };
            conn.core
                .handle_error(now, side, IoErrorKind::Reset, &mut self.stats);
            self.drive(now, slot);
        }
    }

    pub(super) fn leave_pair(&mut self, pair: SlotKey, side: Side) {
        let Some(entry) = self.io.pairs.get_mut(pair) else {
            return;
        };
        let finished = match side {
            Side::Upstream => entry.forward.eof,
            Side::Client => entry.backward.eof,
        };
        if !finished {
            self.reset_peer(pair, side);
        }
        let Some(entry) = self.io.pairs.get_mut(pair) else {
            return;
        };
        match side {
            Side::Upstream => entry.outer = None,
            Side::Client => entry.inner = None,
        }
        if entry.outer.is_none() && entry.inner.is_none() {
            self.io.pairs.remove(pair.slot);
        }
    }
}
