//! The clients and servers outside the proxy: each client dials (redirected, perhaps with a
//! redirect record), uploads its own bytes (its request head first in header mode), half-closes
//! or resets at its byte, reads and checks the download; each server does the mirror image.

use std::cell::RefCell;
use std::rc::Rc;

use origdst_core::orig_dst::RedirectRecord;
use origdst_runtime_sim::kernel::Workload;
use origdst_runtime_sim::kernel::net::{Ep, Net};

use origdst_engine::listeners::{
    GroupAdd, GroupId, GroupKind, HandedSocket, ListenerChange, NetnsId,
};
use origdst_runtime_sim::kernel::SimControl;

use super::scenario::{
    DOOMED_LISTENER, EFault, EFlow, EHead, EPod, ERoute, FRESH_PORT, PROXY_IP, PUSHED_ENDPOINTS,
    SPREAD_ENDPOINTS, TPROXY_LISTENER, client_addr, decoy_addr, dest, head, listener_group,
    stream_byte,
};

/// How one side of a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SideEnd {
    /// Still going.
    Open,
    /// Clean EOF.
    Eof,
    /// An error (a reset reached it).
    Error(i32),
    /// It reset on purpose.
    AbortedByMe,
}

/// One side's ledger.
#[derive(Debug, Clone)]
pub struct Side {
    /// Its endpoint, once connected.
    pub ep: Option<Ep>,
    /// Bytes sent.
    pub sent: u64,
    /// Bytes received (checked).
    pub received: u64,
    /// The first wrong byte's offset.
    pub mismatch_at: Option<u64>,
    /// How its reading ended.
    pub end: SideEnd,
    /// A write failed with this errno.
    pub write_error: Option<i32>,
    /// It shut its write half.
    pub shut: bool,
    /// It reset the connection on purpose.
    pub aborted: bool,
    /// When its reading ended (ns).
    pub ended_at: u64,
    /// When it paused (ns), and until when.
    pub paused: Option<(u64, u64)>,
    /// When it last received a byte (ns).
    pub last_rx_at: u64,
    /// Its dial was refused by the kernel (the proxy's listener had stopped).
    pub refused: bool,
}

impl Side {
    pub(super) fn new() -> Self {
        Self {
            ep: None,
            sent: 0,
            received: 0,
            mismatch_at: None,
            end: SideEnd::Open,
            write_error: None,
            shut: false,
            aborted: false,
            ended_at: 0,
            paused: None,
            last_rx_at: 0,
            refused: false,
        }
    }

    /// Nothing more to do on this side.
    fn done(&self) -> bool {
        self.aborted
            || matches!(self.end, SideEnd::Error(_))
            || (self.end != SideEnd::Open && (self.shut || self.write_error.is_some()))
    }
}

/// The clients and servers.
pub(super) struct Flows {
    /// When the supervisor drains the proxy regardless of the flows (ns).
    pub(super) drain_at: Option<u64>,
    pub(super) flows: Vec<EFlow>,
    pub(super) state: Rc<RefCell<Vec<(Side, Side)>>>,
    /// The servers at the STATIC endpoints: each connection read to its end, then closed.
    pub(super) sinks: Vec<(Ep, bool)>,
    /// Virtual time, for the log recorder.
    pub(super) clock: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The pods the supervisor adds and removes.
    pub(super) pods: Vec<EPod>,
    /// Each pod's listener in the network (once added) and whether it was removed.
    pub(super) pod_state: PodStates,
    /// The shard's control (set once the kernel exists), through which pods come and go.
    pub(super) control: Rc<std::cell::OnceCell<std::sync::Arc<SimControl>>>,
    /// A reload to hand the shard at this virtual ns (taken when sent).
    pub(super) reload: Option<(u64, std::sync::Arc<origdst_core::config::Config>)>,
    /// A control-plane push to hand the shard (taken when sent).
    pub(super) push: Option<Push>,
    /// The `fresh` listener's index in the network, once the push bound it (shared with the
    /// world that goes on after the shard stopped).
    pub(super) fresh_listener: Rc<std::cell::Cell<Option<usize>>>,
}

impl Flows {
    /// Adds and removes the pods that are due: a pod's listening socket is made and handed to
    /// the shard, as the pod manager does; removing it asks the shard to stop it.
    fn pods_step(&mut self, net: &mut Net, now: u64) {
        let Some(control) = self.control.get() else {
            return;
        };
        let mut state = self.pod_state.borrow_mut();
        for (index, pod) in self.pods.iter().enumerate() {
            let (listener, removed) = &mut state[index];
            if listener.is_none() && now >= pod.add_at_ms * 1_000_000 {
                let (at, fd) = net.listen(EPod::addr(index));
                *listener = Some(at);
                control.change_listeners(ListenerChange::Add(GroupAdd {
                    group: GroupId(EPod::group(index)),
                    kind: GroupKind::Pod,
                    name: std::sync::Arc::from(EPod::name(index).as_str()),
                    // Serving the capture listener's config.
                    sockets: vec![HandedSocket {
                        fd,
                        listener: std::sync::Arc::from("capture"),
                    }],
                    netns: Some(NetnsId(EPod::netns(index))),
                }));
            }
            if let Some(at) = pod.remove_at_ms
                && !*removed
                && listener.is_some()
                && now >= at * 1_000_000
            {
                *removed = true;
                control.change_listeners(ListenerChange::Remove(GroupId(EPod::group(index))));
            }
        }
    }

    /// Hands the shard the push when it is due: the `fresh` listener's socket is bound first (as
    /// the supervisor binds an added listener on every shard before the reload), then the
    /// reload removes `doomed` and adds `fresh`.
    fn push_step(&mut self, net: &mut Net, now: u64) {
        if self.push.as_ref().is_none_or(|p| now < p.at) {
            return;
        }
        let Some(control) = self.control.get() else {
            return;
        };
        let Some(push) = self.push.take() else {
            return;
        };
        if self.drain_at.is_some_and(|drain| now >= drain) {
            // The supervisor refuses a push once draining (the control plane hears a NACK).
            return;
        }
        // What the supervisor stops and starts: its own diff of the two configs.
        let (removed, added) = origdst_engine::listeners::diff(&push.before, &push.config);
        let port = |config: &origdst_core::config::Config, name: &str| {
            config
                .listeners
                .iter()
                .find(|l| l.name == name)
                .and_then(|l| l.socket_addresses().first().map(std::net::SocketAddr::port))
                .expect("a bound listener has an address")
        };
        let removed = removed
            .iter()
            .map(|name| GroupId(listener_group(port(&push.before, name))))
            .collect();
        let added = added
            .iter()
            .map(|name| {
                let at = port(&push.config, name);
                let (index, fd) = net.listen(std::net::SocketAddr::new(PROXY_IP, at));
                if at == FRESH_PORT {
                    self.fresh_listener.set(Some(index));
                }
                GroupAdd {
                    group: GroupId(listener_group(at)),
                    kind: GroupKind::Listener,
                    name: std::sync::Arc::from(name.as_str()),
                    sockets: vec![HandedSocket {
                        fd,
                        listener: std::sync::Arc::from(name.as_str()),
                    }],
                    netns: None,
                }
            })
            .collect();
        control.reload(origdst_engine::listeners::Reload {
            config: push.config,
            removed,
            added,
        });
    }

    /// Every pod change is made.
    fn pods_done(&self) -> bool {
        let state = self.pod_state.borrow();
        self.pods
            .iter()
            .zip(state.iter())
            .all(|(pod, (listener, removed))| {
                listener.is_some() && (pod.remove_at_ms.is_none() || *removed)
            })
    }
}

/// A control-plane push: at this virtual ns, the config in force (`before`) gives way to
/// `config`; the listeners the supervisor's diff of the two removes and adds stop and start.
pub(super) struct Push {
    pub(super) at: u64,
    pub(super) before: std::sync::Arc<origdst_core::config::Config>,
    pub(super) config: std::sync::Arc<origdst_core::config::Config>,
}

/// Each pod's listener in the network (once added) and whether it was removed.
pub(super) type PodStates = Rc<RefCell<Vec<(Option<usize>, bool)>>>;

/// The prefix a flow's upload starts with (its request head in header mode).
pub(super) fn prefix(flow: &EFlow) -> Vec<u8> {
    match flow.route {
        ERoute::Header => head(flow),
        _ => Vec::new(),
    }
}

/// Writes as much of direction `dir` of `flow` as the window takes, up to `total`.
#[allow(clippy::too_many_arguments)]
fn push(
    net: &mut Net,
    ep: Ep,
    flow: usize,
    dir: u8,
    prefix: &[u8],
    side: &mut Side,
    total: u64,
    chunk: usize,
) {
    while side.sent < total && side.write_error.is_none() {
        let n = (total - side.sent).min(chunk as u64) as usize;
        let bytes: Vec<u8> = (0..n as u64)
            .map(|i| stream_byte(prefix, flow, dir, side.sent + i))
            .collect();
        match net.write(ep, &bytes) {
            Ok(0) | Err(libc::EAGAIN) => return,
            Ok(written) => side.sent += written as u64,
            Err(errno) => side.write_error = Some(errno),
        }
    }
}

/// Reads what is there (at most `limit` per call if set), checking every byte.
#[allow(clippy::too_many_arguments)]
fn pull(
    net: &mut Net,
    ep: Ep,
    flow: usize,
    dir: u8,
    prefix: &[u8],
    side: &mut Side,
    limit: usize,
    now: u64,
) {
    let mut buf = vec![0u8; if limit == 0 { 65536 } else { limit }];
    while side.end == SideEnd::Open {
        match net.read(ep, &mut buf) {
            Ok(0) => {
                side.end = SideEnd::Eof;
                side.ended_at = now;
            }
            Ok(n) => {
                for (i, &b) in buf[..n].iter().enumerate() {
                    let offset = side.received + i as u64;
                    if side.mismatch_at.is_none() && b != stream_byte(prefix, flow, dir, offset) {
                        side.mismatch_at = Some(offset);
                    }
                }
                side.received += n as u64;
                side.last_rx_at = now;
                if limit != 0 {
                    return;
                }
            }
            Err(libc::EAGAIN) => return,
            Err(errno) => {
                side.end = SideEnd::Error(errno);
                side.ended_at = now;
            }
        }
    }
}

impl Workload for Flows {
    fn step(&mut self, net: &mut Net, now: u64) {
        self.clock.store(now, std::sync::atomic::Ordering::Relaxed);
        self.pods_step(net, now);
        self.push_step(net, now);
        if self.reload.as_ref().is_some_and(|(at, _)| now >= *at)
            && let Some(control) = self.control.get()
            && let Some((_, config)) = self.reload.take()
        {
            control.reload(origdst_engine::listeners::Reload {
                config,
                removed: Vec::new(),
                added: Vec::new(),
            });
        }
        for endpoint in SPREAD_ENDPOINTS.into_iter().chain(PUSHED_ENDPOINTS) {
            if let Some(queue) = net.servers.get_mut(&endpoint) {
                self.sinks.extend(queue.drain(..).map(|ep| (ep, false)));
            }
        }
        let mut scratch = [0u8; 16 * 1024];
        for (ep, shut) in &mut self.sinks {
            while !*shut {
                match net.read(*ep, &mut scratch) {
                    Ok(0) => {
                        // The upload ended: answer with the end of the (empty) download.
                        let _ = net.shutdown(*ep);
                        *shut = true;
                    }
                    Ok(_) => {}
                    Err(libc::EAGAIN) => break,
                    Err(_) => *shut = true,
                }
            }
        }
        let mut state = self.state.borrow_mut();
        for flow in &self.flows {
            let (client, server) = &mut state[flow.id];
            let prefix = prefix(flow);
            let upload = prefix.len() as u64 + flow.upload;
            // The client: uploads (or resets at its byte), half-closes, reads the download.
            // (A flow through the pushed listener never starts if the push never came: the
            // shard drained first.)
            let unbound = flow.route == ERoute::Fresh && self.fresh_listener.get().is_none();
            if client.ep.is_none() && now >= flow.start_ms * 1_000_000 && !unbound {
                let record = || RedirectRecord(vec![0x7e, flow.id as u8]);
                let pod_listener = flow
                    .pod
                    .and_then(|pod| self.pod_state.borrow().get(pod).and_then(|p| p.0));
                client.ep = Some(match flow.route {
                    ERoute::Plain if flow.pod.is_some() => {
                        let listener = pod_listener.expect("a pod's flows start after it is added");
                        net.dial_redirected(client_addr(flow.id), dest(flow), listener)
                    }
                    ERoute::Plain => net.dial_redirected(client_addr(flow.id), dest(flow), 0),
                    ERoute::Header => {
                        net.dial_redirected(client_addr(flow.id), decoy_addr(flow.id), 1)
                    }
                    ERoute::Internal => net.dial_redirected(client_addr(flow.id), dest(flow), 2),
                    ERoute::Inbound => net.dial_redirected(client_addr(flow.id), dest(flow), 3),
                    ERoute::Spread => net.dial_redirected(client_addr(flow.id), dest(flow), 5),
                    ERoute::Doomed => {
                        net.dial_redirected(client_addr(flow.id), dest(flow), DOOMED_LISTENER)
                    }
                    ERoute::Fresh => {
                        let listener = self
                            .fresh_listener
                            .get()
                            .expect("a fresh flow starts after the push bound its listener");
                        net.dial_redirected(client_addr(flow.id), dest(flow), listener)
                    }
                    ERoute::Tproxy | ERoute::TproxyLoop => {
                        net.dial_tproxy(client_addr(flow.id), dest(flow), TPROXY_LISTENER)
                    }
                    ERoute::Outbound => {
                        net.dial_with_record(client_addr(flow.id), dest(flow), 0, record())
                    }
                    ERoute::Misdeclared => {
                        net.dial_with_record(client_addr(flow.id), dest(flow), 4, record())
                    }
                });
            }
            if let Some(ep) = client.ep
                && !client.refused
                && client.sent == 0
                && net.endpoints[ep].error == Some(libc::ECONNREFUSED)
            {
                client.refused = true;
            }
            if let Some(ep) = client.ep
                && !client.aborted
            {
                let mut limit = match flow.fault {
                    EFault::ClientReset(k) => k,
                    _ => upload,
                };
                if let Some((at, ms)) = flow.pause {
                    let at = prefix.len() as u64 + at;
                    match client.paused {
                        None if client.sent >= at => {
                            client.paused = Some((now, now + ms * 1_000_000));
                            limit = at;
                        }
                        None => limit = limit.min(at),
                        Some((_, until)) if now < until => limit = at,
                        Some(_) => {}
                    }
                }
                if flow.head == EHead::Trickle && client.sent < prefix.len() as u64 {
                    // A few bytes of the head per tick: the proxy sees it in pieces.
                    let piece = (client.sent + flow.chunk.min(16) as u64).min(limit);
                    push(net, ep, flow.id, 0, &prefix, client, piece, flow.chunk);
                } else {
                    push(net, ep, flow.id, 0, &prefix, client, limit, flow.chunk);
                }
                if let EFault::ClientGivesUp(ms) = flow.fault
                    && now >= (flow.start_ms + ms) * 1_000_000
                {
                    net.abort(ep);
                    client.aborted = true;
                    client.ended_at = now;
                    continue;
                }
                if let EFault::ClientReset(k) = flow.fault
                    && client.sent >= k
                {
                    net.abort(ep);
                    client.aborted = true;
                    client.ended_at = now;
                    continue;
                }
                if client.sent >= upload
                    && !client.shut
                    && client.write_error.is_none()
                    && flow.head != EHead::Never
                    && !matches!(flow.fault, EFault::ClientGivesUp(_))
                {
                    client.shut = net.shutdown(ep).is_ok();
                }
                // (Not reading a stuck download until 200 ms after the server reset, so a proxy
                // that notices the reset only once the client drained its pipe is late; a reset
                // of its own connection it sees at once.)
                if flow.fault != EFault::UpstreamResetStuck
                    || (server.aborted && now >= server.ended_at + 200_000_000)
                    || net.endpoints[ep].error.is_some()
                {
                    pull(
                        net,
                        ep,
                        flow.id,
                        1,
                        &prefix,
                        client,
                        flow.read_per_tick,
                        now,
                    );
                }
            }
            // The server: reads the upload (or resets at its byte), answers, half-closes.
            // A retried connect whose first attempt reached the server after all: that one was
            // reset unused, the next is the flow's.
            if let Some(ep) = server.ep
                && server.received == 0
                && net.endpoints[ep].error.is_some()
                && net.servers.get(&dest(flow)).is_some_and(|q| !q.is_empty())
            {
                *server = Side::new();
            }
            if server.ep.is_none()
                && let Some(queue) = net.servers.get_mut(&dest(flow))
            {
                server.ep = queue.pop_front();
            }
            if let Some(ep) = server.ep
                && !server.aborted
            {
                pull(net, ep, flow.id, 0, &prefix, server, 0, now);
                let reset = match flow.fault {
                    EFault::UpstreamReset(k) => server.received >= k && server.end == SideEnd::Open,
                    // Once the proxy is stuck: after its turn, the client's window is full and
                    // so is the proxy's own receive window on this socket (it holds bytes for
                    // the client and reads nothing more from the server).
                    EFault::UpstreamResetStuck => {
                        let full = |e: Option<usize>| {
                            e.is_some_and(|e| {
                                net.endpoints[e].recv.len() >= net.endpoints[e].window
                            })
                        };
                        full(client.ep) && full(net.endpoints[ep].peer)
                    }
                    _ => false,
                };
                if reset {
                    net.abort(ep);
                    server.aborted = true;
                    server.ended_at = now;
                    continue;
                }
                if !flow.client_first || server.end != SideEnd::Open {
                    push(
                        net,
                        ep,
                        flow.id,
                        1,
                        &prefix,
                        server,
                        flow.download,
                        flow.chunk,
                    );
                    if server.sent >= flow.download && !server.shut && server.write_error.is_none()
                    {
                        server.shut = net.shutdown(ep).is_ok();
                    }
                }
            }
        }
    }

    fn next_event(&self, now: u64) -> Option<u64> {
        let state = self.state.borrow();
        let starts = self
            .flows
            .iter()
            .filter(|flow| state[flow.id].0.ep.is_none())
            .map(|flow| flow.start_ms * 1_000_000);
        let resumes = state
            .iter()
            .filter_map(|(client, _)| client.paused.map(|(_, until)| until));
        let pods = self
            .pods
            .iter()
            .flat_map(|pod| [Some(pod.add_at_ms), pod.remove_at_ms])
            .flatten()
            .map(|ms| ms * 1_000_000);
        let reload = self.reload.as_ref().map(|(at, _)| *at);
        let push = self.push.as_ref().map(|p| p.at);
        starts
            .chain(resumes)
            .chain(pods)
            .chain(reload)
            .chain(push)
            .chain(self.drain_at)
            .filter(|&t| t > now)
            .min()
    }

    fn done(&self, net: &Net, now: u64) -> bool {
        if self.drain_at.is_some_and(|at| now >= at) {
            return true;
        }
        if !self.pods_done() || self.reload.is_some() || self.push.is_some() {
            return false;
        }
        let state = self.state.borrow();
        self.flows.iter().all(|flow| {
            let (client, server) = &state[flow.id];
            let server_done = match server.ep {
                None => true,
                Some(ep) => server.done() || net.endpoints[ep].closed,
            };
            // After the client is done, the server side gets a grace period to see its end.
            client.done() && (server_done || now > client.ended_at + 3_000_000_000)
        })
    }
}
