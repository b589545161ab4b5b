//! The simulated kernel's side of the engine's [`Kernel`] interface: readiness and accepts
//! registered for `evaluate`, cancels, virtual time in `wait`, and the socket, pipe and descriptor
//! operations over [`super::net::Net`], with the seed's faults at each.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use origdst_core::addr::{ClientAddr, LocalAddr};
use origdst_core::config::DataPath;
use origdst_core::orig_dst::{AcceptEvidence, RecordAnswer, RedirectRecord, SockOptAnswer};
use origdst_core::outcome::IoErrorKind;
use origdst_core::time::Instant;
use origdst_engine::kernel::{ConnectStart, Errno, Kernel, NoNative, RelayedSource, TcpCounts};
use origdst_engine::shard::errno_kind;
use origdst_engine::token::{Kind, Token};

use super::net::{self, Object};
use super::{IDLE_JUMP_NS, LIVELOCK_TURNS, RegKind, SimFd, SimKernel, SimPipe, TICK_NS, os};

impl Kernel for SimKernel {
    type Socket = SimFd;
    type PipeEnds = SimPipe;
    type Spare = SimFd;
    type Native = NoNative;

    fn raw(socket: &SimFd) -> i32 {
        socket.fd
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(self.now)
    }

    fn poll_once(&mut self, fd: i32, events: u32, user_data: u64) {
        let kind = Token::decode(user_data).kind;
        if matches!(kind, Kind::ConnectPoll | Kind::HeadPoll)
            && self.rng.chance(self.faults.poll_refused)
        {
            self.refuse_poll(fd, kind, user_data);
            return;
        }
        self.register(fd, events, user_data, RegKind::Once);
    }

    fn watch(&mut self, fd: i32, user_data: u64) {
        self.register(fd, libc::POLLERR as u32, user_data, RegKind::Once);
    }

    fn accept_multi(&mut self, fd: i32, user_data: u64) {
        self.register(fd, 0, user_data, RegKind::Accept);
    }

    fn poll_multi(&mut self, fd: i32, user_data: u64) {
        self.register(fd, libc::POLLIN as u32, user_data, RegKind::Multi);
    }

    fn cancel_ops(&mut self, fds: &[i32], targets: &[u64], user_data: u64) {
        // The contract allows either: by the targets' tokens (io_uring), or everything on the
        // descriptors (epoll removes them from its interest list). The seed picks per call, so a
        // shard that names the wrong descriptors or forgets a target leaves an operation on a
        // closed descriptor, which `evaluate` refuses.
        if self.rng.chance(500) {
            let on_fds: Vec<u64> = self
                .regs
                .iter()
                .filter(|r| fds.contains(&r.fd))
                .map(|r| r.user_data)
                .collect();
            if on_fds.is_empty() {
                self.ready.push_back((user_data, -libc::ENOENT, 0));
            }
            self.cancel_targets(&on_fds, user_data);
        } else {
            self.cancel_targets(targets, user_data);
        }
    }

    fn cancel_accept(&mut self, _fd: i32, target: u64, user_data: u64) {
        self.cancel_targets(&[target], user_data);
    }

    fn submit(&mut self) {}

    fn has_backlog(&self) -> bool {
        false
    }

    fn wait(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        let deadline = timeout.map(|t| self.now + u64::try_from(t.as_nanos()).unwrap_or(u64::MAX));
        if self.turns_at_now.0 == self.now {
            self.turns_at_now.1 += 1;
            if self.turns_at_now.1 > LIVELOCK_TURNS {
                return Err(io::Error::other(format!(
                    "livelock: the shard turned {LIVELOCK_TURNS} times at virtual instant {} ns \
                     without time moving (operations in flight: {})",
                    self.now,
                    self.regs.len()
                )));
            }
        } else {
            self.turns_at_now = (self.now, 0);
        }
        loop {
            let activity = self.net.borrow().activity;
            if self.rng.chance(self.faults.stray_wakes) {
                self.net.borrow_mut().fire("stray_wake");
                self.control.poke();
            }
            {
                let mut net = self.net.borrow_mut();
                // The relay's work queue runs before the workload looks: what it sends at this
                // instant is received at it, as the shard's own sends are.
                net.now = self.now;
                let (rng, send) = (&mut self.rng, self.faults.relay_send);
                net.relay_step(|| send == 0 || rng.chance(send));
                self.workload.step(&mut net, self.now);
                net.progress_connects(self.now);
                if !self.drain_sent && self.workload.done(&net, self.now) {
                    self.drain_sent = true;
                    self.control.request_drain();
                }
            }
            self.evaluate();
            self.watch_accepts()?;
            if want == 0 || !self.ready.is_empty() {
                return Ok(());
            }
            if !self.late.is_empty() {
                continue;
            }
            if deadline.is_some_and(|d| self.now >= d) {
                return Ok(());
            }
            let mut next = self.now + TICK_NS;
            let (idle, next_connect) = {
                let net = self.net.borrow();
                // The relay's work queue has bytes to send: time moves tick by tick, as it
                // would for any socket with bytes in flight.
                (
                    net.activity == activity && !net.relay_has_work(),
                    net.next_connect(),
                )
            };
            if idle {
                // Nothing moved this tick and nothing is ready: jump to what comes next.
                next = [deadline, self.workload.next_event(self.now), next_connect]
                    .into_iter()
                    .flatten()
                    .filter(|&t| t > self.now)
                    .min()
                    .unwrap_or(self.now + IDLE_JUMP_NS);
            }
            if let Some(d) = deadline {
                next = next.min(d.max(self.now + 1));
            }
            self.now = next;
            if self.now > self.limit {
                let net = self.net.borrow();
                let mut kinds = std::collections::BTreeMap::new();
                for object in net.fds.values() {
                    let kind = match object {
                        Object::Socket(_) => "socket",
                        Object::Listener(_) => "listener",
                        Object::Pipe(_) => "pipe end",
                        Object::Spare => "spare",
                        Object::Wake => "wake",
                    };
                    *kinds.entry(kind).or_insert(0) += 1;
                }
                let backlog: Vec<usize> = net.listeners.iter().map(|l| l.backlog.len()).collect();
                let regs: Vec<String> = self
                    .regs
                    .iter()
                    .map(|r| format!("{:?}@{}", Token::decode(r.user_data).kind, r.fd))
                    .collect();
                return Err(io::Error::other(format!(
                    "the simulated run passed its limit of {} ms of virtual time: descriptors {kinds:?} \
                     (limit {}), listener backlogs {backlog:?}, operations in flight {regs:?}",
                    self.limit / 1_000_000,
                    net.fd_limit
                )));
            }
        }
    }

    fn completions(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        out.extend(self.ready.drain(..));
    }

    fn adopt(&mut self, fd: i32) -> SimFd {
        self.fd(fd)
    }

    fn accept_evidence(&mut self, socket: &SimFd, transparent: bool) -> io::Result<AcceptEvidence> {
        let net = self.net.borrow();
        let ep = &net.endpoints[net.ep(socket.fd)];
        if ep.error.is_some() {
            // Reset while in the accept queue: getpeername says ENOTCONN.
            let own = net.from_proxy(net.ep(socket.fd));
            drop(net);
            if own {
                self.fired("own_connection_gone_at_accept");
            }
            return Err(os(libc::ENOTCONN));
        }
        let sockopt = match (transparent, ep.orig_dst) {
            (true, _) => SockOptAnswer::NotQueried,
            (false, Some(dst @ SocketAddr::V4(_))) => SockOptAnswer::V4(dst),
            (false, Some(dst)) => SockOptAnswer::V6(dst),
            (false, None) => SockOptAnswer::NotFound,
        };
        Ok(AcceptEvidence {
            client: ClientAddr::new(ep.remote),
            local: LocalAddr::new(ep.local),
            transparent,
            sockopt,
            mark: None,
            internal: None,
            own_upstream: false,
            redirect_record: RecordAnswer::None,
        })
    }

    fn redirect_record(&mut self, socket: &SimFd) -> RecordAnswer {
        let net = self.net.borrow();
        match &net.endpoints[net.ep(socket.fd)].record {
            Some(record) => RecordAnswer::Record(record.clone()),
            None => RecordAnswer::None,
        }
    }

    fn connect(
        &mut self,
        upstream: SocketAddr,
        _mark: Option<u32>,
        _source: Option<origdst_core::config::Source>,
        record: Option<&RedirectRecord>,
        netns: Option<origdst_engine::listeners::NetnsId>,
    ) -> io::Result<ConnectStart<SimFd>> {
        let delay = self.rng.range(0, self.faults.connect_delay_ms.max(1)) * 1_000_000;
        let mut net = self.net.borrow_mut();
        if net.fds.len() >= net.fd_limit {
            return Err(os(libc::EMFILE));
        }
        net.connect_netns
            .entry(upstream)
            .or_default()
            .insert(netns.map(|n| n.0));
        // An attempt from here on (out of descriptors, there was none).
        *net.connects.entry(upstream).or_insert(0) += 1;
        if net.socket_fails.contains(&upstream) {
            return Err(os(libc::ENOBUFS));
        }
        if net.unreachable.contains(&upstream) {
            return Ok(ConnectStart::Failed(IoErrorKind::Unreachable));
        }
        let ep = net.connect(upstream, self.now + delay, record);
        let fd = net.open(Object::Socket(ep)).map_err(os)?;
        drop(net);
        Ok(ConnectStart::InProgress(self.fd(fd)))
    }

    fn socket_error(&mut self, socket: &SimFd) -> Option<IoErrorKind> {
        let mut net = self.net.borrow_mut();
        let ep = net.ep(socket.fd);
        let e = &mut net.endpoints[ep];
        match e.error {
            Some(err) if !e.error_taken => {
                e.error_taken = true;
                Some(errno_kind(err))
            }
            _ => None,
        }
    }

    fn local_addr(&mut self, socket: &SimFd) -> io::Result<SocketAddr> {
        let net = self.net.borrow();
        Ok(net.endpoints[net.ep(socket.fd)].local)
    }

    fn shutdown_write(&mut self, socket: &SimFd) -> Result<(), IoErrorKind> {
        let mut net = self.net.borrow_mut();
        let ep = net.ep(socket.fd);
        net.shutdown(ep).map_err(errno_kind)
    }

    fn arm_reset(&mut self, socket: &SimFd) {
        let mut net = self.net.borrow_mut();
        let ep = net.ep(socket.fd);
        net.endpoints[ep].linger0 = true;
    }

    fn stop_listening(&mut self, socket: &SimFd) {
        let mut net = self.net.borrow_mut();
        let Some(Object::Listener(l)) = net.object(socket.fd) else {
            return;
        };
        net.listeners[l].stopped = true;
        // Handshakes completed but never accepted are reset when the listener goes.
        while let Some(ep) = net.listeners[l].backlog.pop_front() {
            net.abort(ep);
            // Clients only: the proxy's own connections that looped back are not anyone's.
            if !net.from_proxy(ep) {
                net.never_accepted += 1;
            }
        }
    }

    fn set_rcvlowat(&mut self, socket: &SimFd, bytes: u32) -> io::Result<()> {
        let mut net = self.net.borrow_mut();
        let ep = net.ep(socket.fd);
        net.endpoints[ep].rcvlowat = bytes as usize;
        Ok(())
    }

    fn set_peek_offset(&mut self, socket: &SimFd, offset: i32) -> io::Result<()> {
        let mut net = self.net.borrow_mut();
        let ep = net.ep(socket.fd);
        net.endpoints[ep].peek_off = usize::try_from(offset).ok();
        Ok(())
    }

    fn peek(&mut self, socket: &SimFd, buf: &mut [u8]) -> io::Result<usize> {
        // Readiness is a hint: the bytes a poll saw may not be there for the peek after it.
        if self.rng.chance(self.faults.spurious_eagain) {
            self.fired("spurious_eagain");
            return Err(os(libc::EAGAIN));
        }
        let mut net = self.net.borrow_mut();
        let ep = net.ep(socket.fd);
        let e = &mut net.endpoints[ep];
        if let Some(err) = e.error {
            return Err(os(err));
        }
        let from = e.peek_off.unwrap_or(0).min(e.recv.len());
        let n = buf.len().min(e.recv.len() - from);
        if n == 0 {
            return if e.fin { Ok(0) } else { Err(os(libc::EAGAIN)) };
        }
        for (slot, byte) in buf.iter_mut().zip(e.recv.range(from..from + n)) {
            *slot = *byte;
        }
        if let Some(off) = e.peek_off.as_mut() {
            *off += n;
        }
        Ok(n)
    }

    fn reserve_fd(&mut self) -> io::Result<SimFd> {
        let fd = self.net.borrow_mut().open(Object::Spare).map_err(os)?;
        Ok(self.fd(fd))
    }

    fn new_pipe(&mut self, size_bytes: u32) -> Option<(SimPipe, u32)> {
        let capacity = if self.rng.chance(self.faults.small_pipe) {
            4096
        } else {
            size_bytes as usize
        };
        // pipe(2) fails now and then (ENFILE: the system's file table is full).
        if self.rng.chance(self.faults.small_pipe / 3) {
            self.fired("pipe_fails");
            return None;
        }
        let mut net = self.net.borrow_mut();
        if net.fds.len() + 2 > net.fd_limit {
            net.fire("pipe_no_fd");
            return None;
        }
        let id = net.pipes.len();
        net.pipes.push(net::Pipe {
            data: VecDeque::new(),
            capacity,
            closed: false,
        });
        let read = net.open(Object::Pipe(id)).ok()?;
        let write = net.open(Object::Pipe(id)).ok()?;
        drop(net);
        if capacity < size_bytes as usize {
            self.fired("small_pipe");
        }
        Some((
            SimPipe {
                id,
                read: self.fd(read),
                _write: self.fd(write),
            },
            capacity as u32,
        ))
    }

    fn splice_in(&mut self, src: i32, pipe: &SimPipe, len: usize) -> Result<usize, Errno> {
        if self.rng.chance(self.faults.spurious_eagain) {
            self.fired("spurious_eagain");
            return Err(libc::EAGAIN);
        }
        let mut net = self.net.borrow_mut();
        let ep = net.ep(src);
        let free = net.pipes[pipe.id].capacity - net.pipes[pipe.id].data.len();
        let mut buf = vec![0u8; len.min(free)];
        let n = net.read(ep, &mut buf)?;
        drop(net);
        let kept = self.short(n);
        let mut net = self.net.borrow_mut();
        if kept < n {
            // Put back what the short splice did not take (it stays first in the queue).
            let e = &mut net.endpoints[ep];
            for &byte in buf[kept..n].iter().rev() {
                e.recv.push_front(byte);
            }
        }
        net.pipes[pipe.id].data.extend(&buf[..kept]);
        Ok(kept)
    }

    fn splice_out(&mut self, pipe: &SimPipe, sink: i32, len: usize) -> Result<usize, Errno> {
        let net = self.net.borrow();
        let ep = net.ep(sink);
        let n = len.min(net.pipes[pipe.id].data.len());
        let bytes: Vec<u8> = net.pipes[pipe.id].data.iter().take(n).copied().collect();
        drop(net);
        let n = self.short(n);
        let mut net = self.net.borrow_mut();
        let written = net.write(ep, &bytes[..n])?;
        net.pipes[pipe.id].data.drain(..written);
        Ok(written)
    }

    fn read(&mut self, fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
        if self.rng.chance(self.faults.spurious_eagain) {
            self.fired("spurious_eagain");
            return Err(libc::EAGAIN);
        }
        let n = self.short(buf.len());
        let mut net = self.net.borrow_mut();
        let ep = net.ep(fd);
        net.read(ep, &mut buf[..n])
    }

    fn send(&mut self, fd: i32, buf: &[u8]) -> Result<usize, Errno> {
        let n = self.short(buf.len());
        let mut net = self.net.borrow_mut();
        let ep = net.ep(fd);
        net.write(ep, &buf[..n])
    }

    fn native_dir(&self, _path: DataPath) -> Option<NoNative> {
        None
    }

    fn recycle_stale(&mut self, _token: Token, _flags: u32) {}

    fn relay_pair(&mut self, client: &SimFd, upstream: &SimFd) -> Result<(), Errno> {
        if self.rng.chance(self.faults.relay_refused) {
            self.fired("relay_refused");
            return Err(libc::ENOSPC);
        }
        let spill = self.rng.chance(self.faults.relay_spill);
        if spill {
            self.fired("relay_spill");
        }
        let mut net = self.net.borrow_mut();
        let (c, u) = (net.ep(client.fd), net.ep(upstream.fd));
        assert!(
            net.endpoints[c].relay_to.is_none() && net.endpoints[u].relay_to.is_none(),
            "a socket put in the relay's map twice"
        );
        net.endpoints[c].relay_to = Some(u);
        net.endpoints[u].relay_to = Some(c);
        net.endpoints[u].spilled = spill;
        net.activity += 1;
        Ok(())
    }

    fn tcp_counts(&mut self, fd: i32) -> Option<TcpCounts> {
        let net = self.net.borrow();
        let Some(Object::Socket(ep)) = net.object(fd) else {
            return None;
        };
        let e = &net.endpoints[ep];
        Some(TcpCounts {
            received: e.received_total + u64::from(e.fin),
            // Sequence space, as TCP counts it: the SYN and the FIN take one each.
            queued: e.syn + e.sent_total + u64::from(e.wr_shut),
            closed: e.error.is_some(),
            since_sent: Duration::from_nanos(self.now.saturating_sub(e.last_sent_at)),
        })
    }

    fn relayed_source(&mut self, fd: i32) -> Result<RelayedSource, Errno> {
        let net = self.net.borrow();
        let e = &net.endpoints[net.ep(fd)];
        assert!(
            e.relay_to.is_some(),
            "relayed_source on a socket not in the relay's map"
        );
        if let Some(err) = e.error {
            return Err(err);
        }
        Ok(if e.spilled {
            RelayedSource::Spilled
        } else if !e.recv.is_empty() {
            RelayedSource::Pending
        } else if e.fin {
            RelayedSource::Eof
        } else {
            RelayedSource::Quiet
        })
    }
}
