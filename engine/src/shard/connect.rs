//! Upstream connects (with retries and descriptor exhaustion) and header mode's peeks.

use std::io as stdio;
use std::sync::Arc;

use origdst_core::orig_dst::RedirectRecord;
use origdst_core::relay::{Dir, Side};
use origdst_core::stats::Counter;
use origdst_core::time::Instant;

use super::{FdWaiter, Shard, errno_kind, error_kind, is_descriptor_exhaustion};
use crate::kernel::{ConnectStart, Kernel};
use crate::token::{Kind, Token};

impl<K: Kernel> Shard<K> {
    pub(super) fn start_connect(
        &mut self,
        now: Instant,
        slot: usize,
        upstream: std::net::SocketAddr,
        mark: Option<u32>,
        source: Option<origdst_core::config::Source>,
        record: Option<RedirectRecord>,
    ) {
        self.retire_upstream(slot);
        // Until this socket is recorded (or the connect failed), shards accepting a connection to
        // the same destination wait before they decide it is not ours: the kernel can complete a
        // looped connection inside connect(2) (see `own_upstreams`).
        let own_upstreams = Arc::clone(&self.setup.own_upstreams);
        let _connecting = own_upstreams.begin_connect(upstream);
        // A pod's connection dials from the pod's own namespace (its routes, its address).
        let netns = self.conns[slot].netns;
        let connect =
            |kernel: &mut K| kernel.connect(upstream, mark, source, record.as_ref(), netns);
        let mut started = connect(&mut self.io.kernel);
        let exhausted = |started: &std::io::Result<ConnectStart<K::Socket>>| {
            started
                .as_ref()
                .is_err_and(|err| err.raw_os_error().is_some_and(is_descriptor_exhaustion))
        };
        // Out of descriptors: close idle pooled pipes, and what this turn released (a retry's
        // retired socket among them: found by the simulator's accept watchdog, connects parked
        // while their own old sockets waited to close), then try again.
        if exhausted(&started) && self.io.pipes.shed_idle() > 0 {
            started = connect(&mut self.io.kernel);
        }
        if exhausted(&started) && !self.io.closing.is_empty() {
            self.close_released();
            started = connect(&mut self.io.kernel);
        }
        if let Err(err) = &started
            && let Some(errno) = err.raw_os_error().filter(|&e| is_descriptor_exhaustion(e))
        {
            // This client is accepted already: spend the reserve on it rather than reset it, let
            // the next ones wait in the backlog, and park any other accepted one until descriptors
            // come back (its connect timeout still bounds the wait).
            self.pause_accepts(now, errno);
            match self.spare_fd.take() {
                Some(spare) => {
                    drop(spare);
                    started = connect(&mut self.io.kernel);
                }
                None => {
                    self.stats.incr(Counter::UpstreamCxParkedNoFd);
                    let generation = self.conns[slot].generation;
                    self.fd_waiters.push_back(FdWaiter {
                        slot,
                        generation,
                        upstream,
                        mark,
                        source,
                        record,
                    });
                    return;
                }
            }
        }
        let conn = &mut self.conns[slot];
        if let Ok(ConnectStart::Done(fd) | ConnectStart::InProgress(fd)) = &started
            && let Ok(local) = self.io.kernel.local_addr(fd)
        {
            let key = self.setup.own_upstreams.insert(local, upstream);
            conn.own_upstream = Some((local.port(), key));
        }
        match started {
            Ok(ConnectStart::Done(fd)) => {
                conn.upstream = Some(fd);
                conn.core.handle_connected(now);
            }
            Ok(ConnectStart::InProgress(fd)) => {
                let token = Token::new(
                    Kind::ConnectPoll,
                    slot,
                    conn.generation,
                    Dir::ClientToUpstream,
                );
                let raw = K::raw(&fd);
                conn.upstream = Some(fd);
                conn.connect_poll_armed = true;
                self.io.poll_once(raw, libc::POLLOUT as u32, token.encode());
            }
            Ok(ConnectStart::Failed(kind)) => {
                conn.core.handle_connect_failed(now, kind, &mut self.stats)
            }
            // Socket creation itself failed (EMFILE, EPERM on SO_MARK without CAP_NET_ADMIN).
            Err(err) => conn
                .core
                .handle_connect_failed(now, error_kind(&err), &mut self.stats),
        }
    }

    pub(super) fn retire_upstream(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        let Some(old) = conn.upstream.take() else {
            return;
        };
        if let Some((port, key)) = conn.own_upstream.take() {
            self.setup.own_upstreams.remove(port, key);
        }
        let token = Token::new(Kind::Cancel, slot, conn.generation, Dir::ClientToUpstream);
        let connect = Token::new(
            Kind::ConnectPoll,
            slot,
            conn.generation,
            Dir::ClientToUpstream,
        )
        .encode();
        let targets: &[u64] = if conn.connect_poll_armed {
            &[connect]
        } else {
            &[]
        };
        conn.connect_poll_armed = false;
        // A retired attempt may have connected after all (its poll failed, not its connect):
        // reset it, or the server would see a clean, empty connection nobody made.
        self.io.kernel.arm_reset(&old);
        self.io
            .kernel
            .cancel_ops(&[K::raw(&old)], targets, token.encode());
        self.io.closing.push(old);
    }

    pub(super) fn finish_connect(&mut self, now: Instant, slot: usize, res: i32) {
        let conn = &mut self.conns[slot];
        let upstream = conn
            .upstream
            .as_ref()
            .expect("connect poll for a socket we created");
        let failure = if res < 0 {
            Some(errno_kind(-res))
        } else {
            self.io.kernel.socket_error(upstream)
        };
        match failure {
            None => conn.core.handle_connected(now),
            Some(kind) => conn.core.handle_connect_failed(now, kind, &mut self.stats),
        }
        self.drive(now, slot);
    }

    pub(super) fn start_peek(&mut self, slot: usize, have: u32, max: u32) {
        let conn = &mut self.conns[slot];
        conn.peek_max = max;
        conn.peek_have = have;
        // Config validation keeps header mode off internal listeners, whose clients have no fd.
        let client = conn
            .client
            .as_ref()
            .expect("header mode needs a client socket");
        if have == 0 {
            // SO_PEEK_OFF (TCP since 6.9): each peek returns only bytes not peeked before, so a
            // wake-up costs what arrived, not the whole head again. Without it, the whole prefix
            // is peeked and only its new part handed to core.
            conn.peek_incremental = self.io.kernel.set_peek_offset(client, 0).is_ok();
        } else {
            // Without this the poll would fire at once on the bytes already seen.
            let _ = self.io.kernel.set_rcvlowat(client, have.saturating_add(1));
        }
        let token = Token::new(Kind::HeadPoll, slot, conn.generation, Dir::ClientToUpstream);
        let events = (libc::POLLIN | libc::POLLRDHUP) as u32;
        let fd = K::raw(client);
        conn.head_poll_armed = true;
        self.io.poll_once(fd, events, token.encode());
    }

    pub(super) fn finish_peek(&mut self, now: Instant, slot: usize, res: i32) {
        let conn = &mut self.conns[slot];
        if res == -libc::ECANCELED || conn.core.is_closed() {
            return;
        }
        if res < 0 {
            conn.core
                .handle_error(now, Side::Client, errno_kind(-res), &mut self.stats);
            self.drive(now, slot);
            return;
        }
        let revents = res as u32;
        let ended = revents & (libc::POLLRDHUP | libc::POLLHUP) as u32 != 0;
        let have = conn.peek_have as usize;
        let max = (conn.peek_max as usize).min(self.peek_scratch.len());
        let client = conn
            .client
            .as_ref()
            .expect("header mode needs a client socket");
        // Incremental: the socket's peek offset is at `have`, peek only what is new.
        let (into, skip) = if conn.peek_incremental {
            (&mut self.peek_scratch[..max.saturating_sub(have)], 0)
        } else {
            (&mut self.peek_scratch[..max], have)
        };
        match self.io.kernel.peek(client, into) {
            Ok(n) => {
                let piece = &into[skip.min(n)..n];
                conn.core.handle_peeked(
                    now,
                    piece,
                    ended,
                    &self.setup.me,
                    &self.setup.config.knobs.destination_policy,
                    &mut self.stats,
                );
                if !conn.core.is_reading_head() {
                    // Decided: relaying reads from the start of the stream again.
                    let _ = self.io.kernel.set_rcvlowat(client, 1);
                    if conn.peek_incremental {
                        let _ = self.io.kernel.set_peek_offset(client, -1);
                    }
                }
            }
            Err(err) if err.kind() == stdio::ErrorKind::WouldBlock => {
                let have = conn.peek_have;
                let max = conn.peek_max;
                self.start_peek(slot, have, max);
                return;
            }
            Err(err) => {
                conn.core
                    .handle_error(now, Side::Client, error_kind(&err), &mut self.stats);
            }
        }
        self.drive(now, slot);
    }
}
