//! The simulated kernel's objects: descriptors (with a limit), TCP endpoints with receive windows,
//! listening sockets with backlogs, pipes with capacities, and the REDIRECT record of each
//! redirected connection. Deterministic: no clock, no randomness, no I/O — the [`super::SimKernel`]
//! and the workload mutate it.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use origdst_core::orig_dst::RedirectRecord;

/// An endpoint id (index into [`Net::endpoints`]).
pub type Ep = usize;

/// One end of a TCP connection.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its own address.
    pub local: SocketAddr,
    /// The other end's address.
    pub remote: SocketAddr,
    /// The other end, once connected.
    pub peer: Option<Ep>,
    /// Bytes received and not read yet.
    pub recv: VecDeque<u8>,
    /// The receive window: at most this many unread bytes.
    pub window: usize,
    /// The peer shut its write half (EOF after `recv` drains).
    pub fin: bool,
    /// A reset arrived (or the connect failed): reads and writes fail.
    pub error: Option<i32>,
    /// `SO_ERROR` was read.
    pub error_taken: bool,
    /// This end shut its write half.
    pub wr_shut: bool,
    /// Closed (by its owner).
    pub closed: bool,
    /// `SO_LINGER` 0: closing sends a reset.
    pub linger0: bool,
    /// A connect in progress: (completes at, refused?) — `None` when it never completes.
    pub connecting: Option<Option<(u64, bool)>>,
    /// `SO_PEEK_OFF`.
    pub peek_off: Option<usize>,
    /// `SO_RCVLOWAT`.
    pub rcvlowat: usize,
    /// Where the client dialled (proxy-side endpoints of redirected connections).
    pub orig_dst: Option<SocketAddr>,
    /// Bytes ever written into this endpoint's receive queue (for the workload's checks).
    pub received_total: u64,
    /// The redirect record the platform attached (proxy-side endpoints of captured outbound
    /// connections, where the platform has records).
    pub record: Option<RedirectRecord>,
    /// A proxy connect the platform's redirect policy sends back to the proxy (no valid record).
    pub loop_back: bool,
    /// Bytes ever written by this endpoint into its peer's receive queue.
    pub sent_total: u64,
    /// When it last wrote any (virtual ns).
    pub last_sent_at: u64,
    /// Sequence space a connecting socket's SYN took (1; 0 for an accepted one): what TCP's
    /// counters add to the bytes, which the shard must not mistake for bytes.
    pub syn: u64,
    /// The in-kernel relay moves what this endpoint receives to this endpoint's egress.
    pub relay_to: Option<Ep>,
    /// The relay handed this endpoint's bytes back to it (they stay in `recv`).
    pub spilled: bool,
    /// Bytes the relay took from its source and has not sent from this endpoint yet (the
    /// kernel's work queue, `sk_psock_backlog`).
    pub relay_backlog: VecDeque<u8>,
    /// A spilled endpoint's bytes the verdict passed that the work queue has not put in `recv`
    /// yet (the kernel queues them when the socket's receive memory is full). A read that finds
    /// `recv` empty after the FIN returns 0 even while bytes wait here, as the kernel's does.
    pub pass_backlog: VecDeque<u8>,
}

impl Endpoint {
    fn new(local: SocketAddr, remote: SocketAddr, window: usize) -> Self {
        Self {
            local,
            remote,
            peer: None,
            recv: VecDeque::new(),
            window,
            fin: false,
            error: None,
            error_taken: false,
            wr_shut: false,
            closed: false,
            linger0: false,
            connecting: None,
            peek_off: None,
            rcvlowat: 1,
            orig_dst: None,
            received_total: 0,
            record: None,
            loop_back: false,
            sent_total: 0,
            last_sent_at: 0,
            syn: 0,
            relay_to: None,
            spilled: false,
            relay_backlog: VecDeque::new(),
            pass_backlog: VecDeque::new(),
        }
    }

    /// Relayed by the kernel and not handed back: received bytes are the relay's, not readable.
    pub fn relayed(&self) -> bool {
        self.relay_to.is_some() && !self.spilled
    }
}

/// What a descriptor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    /// A TCP endpoint.
    Socket(Ep),
    /// A listening socket (index into [`Net::listeners`]).
    Listener(usize),
    /// A pipe (index into [`Net::pipes`]).
    Pipe(usize),
    /// A reserved descriptor.
    Spare,
    /// The shard's wake-up descriptor.
    Wake,
}

/// A listening socket.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections whose handshake completed, waiting for accept (proxy-side endpoints).
    pub backlog: VecDeque<Ep>,
    /// Accepting stopped (drain).
    pub stopped: bool,
}

/// A pipe.
#[derive(Debug, Clone, Default)]
pub struct Pipe {
    /// Bytes in it.
    pub data: VecDeque<u8>,
    /// Its capacity.
    pub capacity: usize,
    /// Both its ends are closed.
    pub closed: bool,
}

/// The whole simulated network and descriptor table.
#[derive(Debug)]
pub struct Net {
    /// Every endpoint ever made.
    pub endpoints: Vec<Endpoint>,
    /// Every listening socket the proxy has.
    pub listeners: Vec<Listener>,
    /// Every pipe.
    pub pipes: Vec<Pipe>,
    /// Open descriptors.
    pub fds: BTreeMap<i32, Object>,
    next_fd: i32,
    /// The descriptor limit (`RLIMIT_NOFILE`).
    pub fd_limit: usize,
    /// Servers outside the proxy: address → accepted endpoints not yet taken by the workload.
    pub servers: BTreeMap<SocketAddr, VecDeque<Ep>>,
    /// Destinations whose SYNs are dropped: connects there never complete.
    pub black_holes: Vec<SocketAddr>,
    /// Destinations with no route: `connect` fails at once.
    pub unreachable: Vec<SocketAddr>,
    /// Destinations for which making the socket fails (`ENOBUFS`).
    pub socket_fails: Vec<SocketAddr>,
    /// The receive window of new endpoints.
    pub window: usize,
    /// Ephemeral port counter for the proxy's upstream sockets.
    next_port: u16,
    /// The proxy's own address (upstream sockets' source).
    pub proxy_ip: std::net::IpAddr,
    /// The platform re-redirects the proxy's outbound connections that carry no record it
    /// issued (Windows HNS/WFP): they come back to listener 0.
    pub require_records: bool,
    /// The records the platform issued.
    pub issued: Vec<RedirectRecord>,
    /// Bumped by everything that changes what a socket could report: while it stands still and
    /// nothing is due, virtual time may jump.
    pub activity: u64,
    /// Connect attempts the proxy made, by destination (counted by the kernel's `connect`).
    pub connects: BTreeMap<SocketAddr, u32>,
    /// The namespaces the proxy made its sockets towards each destination in (`None`: its own).
    pub connect_netns: BTreeMap<SocketAddr, std::collections::BTreeSet<Option<u32>>>,
    /// Connections reset in a backlog when its listener stopped (never accepted).
    pub never_accepted: usize,
    /// How often each kind of fault fired.
    pub fired: BTreeMap<&'static str, u64>,
    /// Pipes closed while they still held bytes (a connection that died with bytes in flight).
    pub pipes_closed_holding_bytes: u64,
    /// Virtual time as of the kernel's last step (ns).
    pub now: u64,
    /// Bytes the relay had taken and could not send because its sink's write half was shut
    /// first (the FIN passed on before them: a truncated stream).
    pub relay_bytes_lost: u64,
    /// Destinations whose connections from the proxy TPROXY captures again (a node whose rules
    /// do not exempt the proxy's own traffic), delivered to this listener as a transparent
    /// connection.
    pub recaptured: Vec<SocketAddr>,
    /// The listener TPROXY delivers to.
    pub tproxy_listener: usize,
    /// Connect polls the kernel refused, by the destination being dialled.
    pub refused_connect_polls: BTreeMap<SocketAddr, u32>,
    /// Clients whose head poll the kernel refused.
    pub refused_head_polls: std::collections::BTreeSet<SocketAddr>,
}

impl Net {
    /// An empty network.
    pub fn new(proxy_ip: std::net::IpAddr, fd_limit: usize, window: usize) -> Self {
        Self {
            endpoints: Vec::new(),
            listeners: Vec::new(),
            pipes: Vec::new(),
            fds: BTreeMap::new(),
            next_fd: 3,
            fd_limit,
            servers: BTreeMap::new(),
            black_holes: Vec::new(),
            unreachable: Vec::new(),
            socket_fails: Vec::new(),
            window,
            // The range clients use too (ports are per address): a client's port often equals
            // one of the proxy's own upstream sockets', as on a real node.
            next_port: 30000,
            proxy_ip,
            require_records: false,
            issued: Vec::new(),
            activity: 0,
            connects: BTreeMap::new(),
            connect_netns: BTreeMap::new(),
            never_accepted: 0,
            fired: BTreeMap::new(),
            pipes_closed_holding_bytes: 0,
            relay_bytes_lost: 0,
            now: 0,
            recaptured: Vec::new(),
            tproxy_listener: 0,
            refused_connect_polls: BTreeMap::new(),
            refused_head_polls: std::collections::BTreeSet::new(),
        }
    }

    /// A new descriptor for `object`, or EMFILE.
    pub fn open(&mut self, object: Object) -> Result<i32, i32> {
        if self.fds.len() >= self.fd_limit {
            return Err(libc::EMFILE);
        }
        let fd = self.next_fd;
        self.next_fd += 1;
        self.fds.insert(fd, object);
        Ok(fd)
    }

    /// The object behind `fd`.
    pub fn object(&self, fd: i32) -> Option<Object> {
        self.fds.get(&fd).copied()
    }

    /// The endpoint behind socket `fd`.
    pub fn ep(&self, fd: i32) -> Ep {
        match self.object(fd) {
            Some(Object::Socket(ep)) => ep,
            other => panic!("fd {fd} is not a socket: {other:?}"),
        }
    }

    /// Closes `fd`: a socket sends FIN (or RST with linger 0, or when unread bytes remain).
    pub fn close(&mut self, fd: i32) {
        let object = self
            .fds
            .remove(&fd)
            .unwrap_or_else(|| panic!("close of fd {fd} not open"));
        match object {
            Object::Socket(ep) => self.close_endpoint(ep),
            Object::Pipe(id) => {
                let still_open = self.fds.values().any(|o| *o == Object::Pipe(id));
                let pipe = &mut self.pipes[id];
                if !still_open && !pipe.closed {
                    pipe.closed = true;
                    if !pipe.data.is_empty() {
                        self.pipes_closed_holding_bytes += 1;
                    }
                }
            }
            _ => {}
        }
    }

    /// Closes an endpoint as its owner's last close would.
    pub fn close_endpoint(&mut self, ep: Ep) {
        self.activity += 1;
        let e = &mut self.endpoints[ep];
        if e.closed {
            return;
        }
        e.closed = true;
        let reset = e.linger0 || !e.recv.is_empty() || !e.pass_backlog.is_empty();
        let peer = e.peer;
        if let Some(peer) = peer {
            let p = &mut self.endpoints[peer];
            if reset {
                if p.error.is_none() {
                    p.error = Some(libc::ECONNRESET);
                }
            } else {
                p.fin = true;
            }
        }
    }

    /// A new endpoint pair: `a` at `a_addr` connected to `b` at `b_addr`.
    pub fn pair(&mut self, a_addr: SocketAddr, b_addr: SocketAddr) -> (Ep, Ep) {
        let a = self.endpoints.len();
        self.endpoints
            .push(Endpoint::new(a_addr, b_addr, self.window));
        let b = self.endpoints.len();
        self.endpoints
            .push(Endpoint::new(b_addr, a_addr, self.window));
        self.endpoints[a].peer = Some(b);
        self.endpoints[b].peer = Some(a);
        (a, b)
    }

    /// A listening socket (its handshakes queue in its backlog): its index in
    /// [`Net::listeners`] and its descriptor.
    pub fn listen(&mut self, addr: SocketAddr) -> (usize, i32) {
        let index = self.listeners.len();
        self.listeners.push(Listener {
            addr,
            backlog: VecDeque::new(),
            stopped: false,
        });
        let fd = self
            .open(Object::Listener(index))
            .expect("a descriptor for a listener");
        (index, fd)
    }

    /// Counts a fault the kernel injected.
    pub fn fire(&mut self, fault: &'static str) {
        *self.fired.entry(fault).or_insert(0) += 1;
    }

    /// A client dials `orig_dst`; REDIRECT sends it to `listener`. The client's endpoint.
    pub fn dial_redirected(
        &mut self,
        client: SocketAddr,
        orig_dst: SocketAddr,
        listener: usize,
    ) -> Ep {
        let proxy_addr = self.listeners[listener].addr;
        let (client_ep, proxy_ep) = self.pair(client, proxy_addr);
        self.endpoints[proxy_ep].orig_dst = Some(orig_dst);
        self.queue(listener, client_ep, proxy_ep);
        client_ep
    }

    /// A client dials `orig_dst`; TPROXY delivers it to `listener` as it is: the proxy's end has
    /// the address the client dialled as its own (no NAT, nothing for `SO_ORIGINAL_DST`).
    pub fn dial_tproxy(&mut self, client: SocketAddr, orig_dst: SocketAddr, listener: usize) -> Ep {
        let (client_ep, proxy_ep) = self.pair(client, orig_dst);
        self.queue(listener, client_ep, proxy_ep);
        client_ep
    }

    /// A dialled connection waits in `listener`'s backlog (its handshake done), or is refused
    /// when the listener stopped.
    fn queue(&mut self, listener: usize, client_ep: Ep, proxy_ep: Ep) {
        if self.listeners[listener].stopped {
            self.endpoints[client_ep].error = Some(libc::ECONNREFUSED);
        } else {
            self.listeners[listener].backlog.push_back(proxy_ep);
        }
    }

    /// Whether `ep`'s remote end is one of the proxy's own sockets (its connection come back).
    pub fn from_proxy(&self, ep: Ep) -> bool {
        self.endpoints[ep].remote.ip() == self.proxy_ip
    }

    /// A client dials `orig_dst`, captured outbound with a platform `record`.
    pub fn dial_with_record(
        &mut self,
        client: SocketAddr,
        orig_dst: SocketAddr,
        listener: usize,
        record: RedirectRecord,
    ) -> Ep {
        let client_ep = self.dial_redirected(client, orig_dst, listener);
        let proxy_ep = self.endpoints[client_ep].peer.expect("paired");
        self.issued.push(record.clone());
        self.endpoints[proxy_ep].record = Some(record);
        client_ep
    }

    /// The proxy opens a socket towards `upstream`: its endpoint, connecting.
    pub fn connect(
        &mut self,
        upstream: SocketAddr,
        completes_at: u64,
        record: Option<&RedirectRecord>,
    ) -> Ep {
        let looped = (self.require_records
            && upstream.ip() != self.proxy_ip
            && !record.is_some_and(|r| self.issued.contains(r)))
            || self.recaptured.contains(&upstream);
        let port = self.next_port;
        self.next_port = self.next_port.wrapping_add(1).max(30000);
        let local = SocketAddr::new(self.proxy_ip, port);
        let ep = self.endpoints.len();
        let mut e = Endpoint::new(local, upstream, self.window);
        e.loop_back = looped;
        e.syn = 1;
        e.connecting = if looped {
            Some(Some((completes_at, false)))
        } else if self.black_holes.contains(&upstream) {
            Some(None)
        } else {
            Some(Some((completes_at, !self.servers.contains_key(&upstream))))
        };
        self.endpoints.push(e);
        ep
    }

    /// Finishes connects that are due: establishes (a server endpoint appears for the workload)
    /// or refuses them.
    pub fn progress_connects(&mut self, now: u64) {
        for ep in 0..self.endpoints.len() {
            let Some(Some((at, refused))) = self.endpoints[ep].connecting else {
                continue;
            };
            if at > now || self.endpoints[ep].closed {
                continue;
            }
            self.endpoints[ep].connecting = None;
            self.activity += 1;
            if refused {
                self.endpoints[ep].error = Some(libc::ECONNREFUSED);
                continue;
            }
            let remote = self.endpoints[ep].remote;
            if self.endpoints[ep].loop_back && self.recaptured.contains(&remote) {
                // Captured again by TPROXY: the proxy accepts its own connection, whose local
                // address is the destination it dialled.
                let back = self.answer(ep, remote);
                let listener = self.tproxy_listener;
                self.listeners[listener].backlog.push_back(back);
                continue;
            }
            if self.endpoints[ep].loop_back {
                // Redirected again, to the proxy's own capture listener: a loop the proxy must
                // recognise (by its own upstream's address; no mark is visible here).
                let back = self.answer(ep, self.listeners[0].addr);
                self.endpoints[back].orig_dst = Some(remote);
                self.listeners[0].backlog.push_back(back);
                continue;
            }
            let server = self.answer(ep, remote);
            self.servers.entry(remote).or_default().push_back(server);
        }
    }

    /// The far end of the proxy's connecting `ep`, at `addr`, connected to it.
    fn answer(&mut self, ep: Ep, addr: SocketAddr) -> Ep {
        let far = self.endpoints.len();
        let local = self.endpoints[ep].local;
        self.endpoints.push(Endpoint::new(addr, local, self.window));
        self.endpoints[ep].peer = Some(far);
        self.endpoints[far].peer = Some(ep);
        far
    }

    /// Room in the peer's window for bytes written by `ep`.
    pub fn room(&self, ep: Ep) -> usize {
        match self.endpoints[ep].peer {
            Some(peer) => {
                let p = &self.endpoints[peer];
                if p.closed {
                    usize::MAX
                } else {
                    p.window.saturating_sub(p.recv.len() + p.pass_backlog.len())
                }
            }
            None => 0,
        }
    }

    /// Writes up to `bytes.len()` bytes from `ep` to its peer: how many, or an errno.
    pub fn write(&mut self, ep: Ep, bytes: &[u8]) -> Result<usize, i32> {
        let e = &self.endpoints[ep];
        if let Some(err) = e.error {
            return Err(if err == libc::ECONNREFUSED {
                libc::EPIPE
            } else {
                err
            });
        }
        if e.wr_shut {
            return Err(libc::EPIPE);
        }
        let Some(peer) = e.peer else {
            return Err(libc::ENOTCONN);
        };
        if self.endpoints[peer].closed {
            // The peer is gone: this write draws its reset.
            self.endpoints[ep].error = Some(libc::ECONNRESET);
            return Err(libc::EPIPE);
        }
        let n = bytes.len().min(self.room(ep));
        if n == 0 && !bytes.is_empty() {
            return Err(libc::EAGAIN);
        }
        let p = &mut self.endpoints[peer];
        if p.spilled {
            p.pass_backlog.extend(&bytes[..n]);
        } else {
            p.recv.extend(&bytes[..n]);
        }
        p.received_total += n as u64;
        self.endpoints[ep].sent_total += n as u64;
        self.endpoints[ep].last_sent_at = self.now;
        self.activity += 1;
        Ok(n)
    }

    /// The in-kernel relay's work: each relayed endpoint's received bytes are taken into its
    /// sink's backlog at once (the verdict runs as they arrive), up to a window; a backlog is
    /// sent on only when `send_now` says (the work queue runs when it runs), as are the bytes a
    /// spilled endpoint was passed. A sink whose write half is shut first loses its backlog:
    /// counted (a FIN passed on too early), and the socket fails as the kernel's would (EPIPE);
    /// a sink that failed loses it with the connection.
    pub fn relay_step(&mut self, mut send_now: impl FnMut() -> bool) {
        for ep in 0..self.endpoints.len() {
            let e = &self.endpoints[ep];
            let Some(sink) = e.relay_to.filter(|_| e.relayed() && !e.closed) else {
                continue;
            };
            // Taken bytes stay charged to the source's receive memory until sent, so the
            // backlog is bounded by the source's window (TCP's back-pressure through a relay).
            let room = self.endpoints[ep]
                .window
                .saturating_sub(self.endpoints[sink].relay_backlog.len());
            let n = room.min(self.endpoints[ep].recv.len());
            if n > 0 {
                let bytes: Vec<u8> = self.endpoints[ep].recv.drain(..n).collect();
                self.endpoints[sink].relay_backlog.extend(bytes);
                self.activity += 1;
            }
        }
        for ep in 0..self.endpoints.len() {
            if !self.endpoints[ep].pass_backlog.is_empty() && send_now() {
                let e = &mut self.endpoints[ep];
                let bytes: Vec<u8> = e.pass_backlog.drain(..).collect();
                e.recv.extend(bytes);
                self.activity += 1;
            }
        }
        for sink in 0..self.endpoints.len() {
            if self.endpoints[sink].relay_backlog.is_empty() || !send_now() {
                continue;
            }
            let e = &self.endpoints[sink];
            if e.closed {
                continue;
            }
            if e.error.is_some() {
                // The connection failed: what it held is lost with it, as the peer was told.
                self.endpoints[sink].relay_backlog.clear();
                self.activity += 1;
                continue;
            }
            if e.wr_shut {
                self.relay_bytes_lost += e.relay_backlog.len() as u64;
                let e = &mut self.endpoints[sink];
                e.relay_backlog.clear();
                e.error = Some(libc::EPIPE);
                self.activity += 1;
                continue;
            }
            let bytes: Vec<u8> = self.endpoints[sink].relay_backlog.iter().copied().collect();
            match self.write(sink, &bytes) {
                Ok(n) => {
                    self.endpoints[sink].relay_backlog.drain(..n);
                }
                Err(libc::EAGAIN) => {}
                Err(errno) => {
                    let e = &mut self.endpoints[sink];
                    e.relay_backlog.clear();
                    e.error.get_or_insert(errno);
                }
            }
        }
    }

    /// Reads up to `buf.len()` bytes: how many (0 at EOF), or an errno.
    pub fn read(&mut self, ep: Ep, buf: &mut [u8]) -> Result<usize, i32> {
        let e = &mut self.endpoints[ep];
        if let Some(err) = e.error {
            return Err(err);
        }
        if e.recv.is_empty() {
            return if e.fin { Ok(0) } else { Err(libc::EAGAIN) };
        }
        let n = buf.len().min(e.recv.len());
        self.activity += 1;
        let e = &mut self.endpoints[ep];
        for (slot, byte) in buf.iter_mut().zip(e.recv.drain(..n)) {
            *slot = byte;
        }
        if let Some(off) = e.peek_off.as_mut() {
            *off = off.saturating_sub(n);
        }
        Ok(n)
    }

    /// `shutdown(SHUT_WR)` of `ep`.
    pub fn shutdown(&mut self, ep: Ep) -> Result<(), i32> {
        let e = &mut self.endpoints[ep];
        if let Some(err) = e.error {
            return Err(err);
        }
        e.wr_shut = true;
        if let Some(peer) = e.peer {
            self.endpoints[peer].fin = true;
        }
        self.activity += 1;
        Ok(())
    }

    /// Resets `ep` now (the workload's abort): its peer sees ECONNRESET.
    pub fn abort(&mut self, ep: Ep) {
        self.endpoints[ep].linger0 = true;
        self.close_endpoint(ep);
    }

    /// Poll events of descriptor `fd` now (io_uring's mask: ERR, HUP, RDHUP always reported).
    pub fn readiness(&self, fd: i32, wake_pending: bool) -> u32 {
        let bits = |b: i16| b as u32;
        match self.object(fd) {
            Some(Object::Listener(l)) => {
                if self.listeners[l].backlog.is_empty() {
                    0
                } else {
                    bits(libc::POLLIN)
                }
            }
            Some(Object::Wake) => {
                if wake_pending {
                    bits(libc::POLLIN)
                } else {
                    0
                }
            }
            Some(Object::Socket(ep)) => {
                let e = &self.endpoints[ep];
                let mut r = 0;
                if let Some(Some(_)) | Some(None) = e.connecting {
                    return 0;
                }
                if e.error.is_some() && !e.error_taken {
                    r |= bits(libc::POLLERR);
                }
                if e.error.is_some() {
                    r |= bits(libc::POLLHUP) | bits(libc::POLLIN) | bits(libc::POLLOUT);
                    r |= libc::POLLRDHUP as u32;
                    return r;
                }
                // A relayed socket's bytes are the relay's: only a FIN (or an error, or bytes
                // handed back) makes it readable.
                if !e.relayed()
                    && (e.recv.len() >= e.rcvlowat.max(1) || (e.fin && !e.recv.is_empty()))
                {
                    r |= bits(libc::POLLIN);
                }
                if e.fin {
                    r |= bits(libc::POLLIN) | libc::POLLRDHUP as u32;
                }
                if e.fin && e.wr_shut {
                    r |= bits(libc::POLLHUP);
                }
                if e.peer.is_some() && !e.wr_shut && self.room(ep) > 0 {
                    r |= bits(libc::POLLOUT);
                }
                r
            }
            Some(Object::Pipe(_) | Object::Spare) | None => 0,
        }
    }

    /// A relay backlog waits to be sent from an open socket.
    pub fn relay_has_work(&self) -> bool {
        self.endpoints.iter().any(|e| {
            (!e.relay_backlog.is_empty() || !e.pass_backlog.is_empty())
                && !e.closed
                && e.error.is_none()
        })
    }

    /// When the next pending connect completes, if one will.
    pub fn next_connect(&self) -> Option<u64> {
        self.endpoints
            .iter()
            .filter(|e| !e.closed)
            .filter_map(|e| match e.connecting {
                Some(Some((at, _))) => Some(at),
                _ => None,
            })
            .min()
    }

    /// Descriptors open now.
    pub fn open_fds(&self) -> usize {
        self.fds.len()
    }
}
