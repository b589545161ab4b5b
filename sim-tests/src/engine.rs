//! The production shard under the simulated kernel: `origdst_engine::shard::Shard` — the code
//! that runs on io_uring — driven by `runtime-sim`'s [`SimKernel`] from one `u64` seed. Clients
//! dial redirected destinations, servers answer, faults happen (resets at any byte, refused and
//! black-holed upstreams, slow readers, a descriptor limit, short and reordered completions,
//! spurious EAGAIN, shrunk pipes); the oracle checks every byte of every flow (each flow's bytes
//! are its own, so a byte that crosses flows is caught), how each connection ended, the counters,
//! and that descriptors, pipes and connections are back to zero after the drain.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use origdst_core::config::Config;
use origdst_core::orig_dst::{RedirectRecord, SelfAddrs};
use origdst_core::outcome::Outcome;
use origdst_core::stats::{Counter, Counters};
use origdst_engine::own_upstreams::OwnUpstreams;
use origdst_engine::report::{AccessLog, Finished, Gauge, Reporter};
use origdst_engine::shard::{Listening, Shard, ShardSetup};
use origdst_runtime_sim::kernel::net::{Ep, Net};
use origdst_runtime_sim::kernel::{Faults, Rng, SimKernel, Workload};

/// What goes wrong in an engine flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EFault {
    /// Nothing.
    None,
    /// The client resets after sending this many bytes.
    ClientReset(u64),
    /// The server resets after reading this many bytes.
    UpstreamReset(u64),
    /// Nobody listens at the destination.
    Refused,
    /// The destination drops SYNs.
    BlackHole,
}

/// How a flow reaches its server through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ERoute {
    /// REDIRECT to the capture listener, ORIGINAL_DST to the restored destination.
    Plain,
    /// Header mode: the client's request head names the server (`x-envoy-original-dst-host`);
    /// it dials a decoy address, the head is peeked and forwarded unchanged.
    Header,
    /// Through an internal listener: the outer listener's cluster is an
    /// `envoy_internal_address` endpoint, the inner listener restores the destination from the
    /// shared filter state and dials it.
    Internal,
    /// Where the platform attaches redirect records (Windows HNS/WFP): an outbound capture on the
    /// OUTBOUND listener, which reads the record and applies it to the upstream socket.
    Outbound,
    /// An inbound capture on the INBOUND listener, to an application on the proxy's host (no
    /// record is read, none is needed).
    Inbound,
    /// An outbound capture on a listener declared INBOUND: the record is never read, the
    /// platform redirects the proxy's upstream connection back to it — a loop the proxy must
    /// recognise and refuse.
    Misdeclared,
}

/// One client connection.
#[derive(Debug, Clone)]
pub struct EFlow {
    /// Index; picks its addresses and its bytes.
    pub id: usize,
    /// How it reaches the server.
    pub route: ERoute,
    /// Client → server bytes.
    pub upload: u64,
    /// Server → client bytes.
    pub download: u64,
    /// Bytes per write.
    pub chunk: usize,
    /// The server answers only after the upload ended (else at once).
    pub client_first: bool,
    /// Its fault.
    pub fault: EFault,
    /// Virtual ms before it dials.
    pub start_ms: u64,
    /// Bytes a slow reader takes per tick (0: all it can).
    pub read_per_tick: usize,
}

/// A run of the engine.
#[derive(Debug, Clone)]
pub struct EScenario {
    /// Its seed.
    pub seed: u64,
    /// The flows.
    pub flows: Vec<EFlow>,
    /// The kernel's faults.
    pub faults: Faults,
    /// The descriptor limit.
    pub fd_limit: usize,
    /// Receive windows.
    pub window: usize,
    /// The data path (the readiness pump; "copy" means no pipes).
    pub pipes: bool,
    /// The platform attaches redirect records and re-redirects connections without one.
    pub records: bool,
}

impl EScenario {
    /// Draws the scenario of `seed`.
    pub fn draw(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x5eed_e761_4e00_0001);
        let count = rng.range(1, 16) as usize;
        let records = rng.chance(200);
        let mut flows = Vec::new();
        for id in 0..count {
            let upload = pick(&mut rng, &[0, 1, 100, 5000, 70_000, 300_000]);
            let download = pick(&mut rng, &[0, 1, 100, 5000, 70_000, 300_000]);
            let fault = match rng.range(0, 9) {
                0 if upload > 1 => EFault::ClientReset(rng.range(0, upload - 1)),
                1 if upload > 1 => EFault::UpstreamReset(rng.range(0, upload - 1)),
                2 => EFault::Refused,
                3 => EFault::BlackHole,
                _ => EFault::None,
            };
            let route = match (records, rng.range(0, 5)) {
                (false, 0) => ERoute::Header,
                (false, 1) => ERoute::Internal,
                (false, _) => ERoute::Plain,
                (true, 0) => ERoute::Inbound,
                (true, 1) => ERoute::Misdeclared,
                (true, _) => ERoute::Outbound,
            };
            let mut flow = EFlow {
                id,
                route,
                upload,
                download,
                chunk: pick(&mut rng, &[1, 7, 1448, 16 * 1024, 64 * 1024]) as usize,
                client_first: rng.chance(500),
                fault,
                start_ms: rng.range(0, 300),
                read_per_tick: if rng.chance(200) {
                    pick(&mut rng, &[100, 4096]) as usize
                } else {
                    0
                },
            };
            // One-byte writes and slow readers cost a step per few bytes: keep those flows short
            // (the sweep's time budget is for many seeds, not for long ones).
            if flow.chunk == 1 || flow.read_per_tick == 100 {
                flow.upload = flow.upload.min(4096);
                flow.download = flow.download.min(4096);
            }
            if let EFault::ClientReset(k) | EFault::UpstreamReset(k) = &mut flow.fault {
                *k = (*k).min(flow.upload.saturating_sub(1));
            }
            if flow.route == ERoute::Misdeclared {
                flow.fault = EFault::None;
            }
            flows.push(flow);
        }
        let faults = Faults {
            reorder: rng.chance(500),
            short_io: pick(&mut rng, &[0, 0, 100, 500]) as u16,
            spurious_eagain: pick(&mut rng, &[0, 0, 50, 200]) as u16,
            small_pipe: pick(&mut rng, &[0, 0, 300]) as u16,
            connect_delay_ms: pick(&mut rng, &[0, 2, 20]),
        };
        Self {
            seed,
            flows,
            faults,
            // Listeners, wake-up, spare, and three per connection at most (two sockets, pipes
            // come and go): a low limit makes the shard pause accepting and park connects.
            // (Not with records: a loop under descriptor exhaustion waits in the backlog until
            // the idle timeout, which is right but not what those scenarios are about.)
            fd_limit: if !records && rng.chance(150) {
                12
            } else {
                10_000
            },
            window: pick(&mut rng, &[4096, 65536, 1 << 20]) as usize,
            pipes: rng.chance(800),
            records,
        }
    }
}

fn pick(rng: &mut Rng, from: &[u64]) -> u64 {
    from[(rng.next_u64() % from.len() as u64) as usize]
}

/// The byte at `offset` of flow `flow`'s stream in direction `dir` (0 up, 1 down): every flow's
/// bytes differ, so one delivered on another connection cannot pass.
pub fn byte(flow: usize, dir: u8, offset: u64) -> u8 {
    let x = (flow as u64) << 48 ^ u64::from(dir) << 40 ^ (offset / 8);
    let mut rng = Rng::new(x);
    rng.next_u64().to_le_bytes()[(offset % 8) as usize]
}

/// The request head a header-mode flow's client sends before its upload (and the server
/// receives, unchanged).
pub fn head(flow: usize) -> Vec<u8> {
    format!(
        "POST /upload HTTP/1.1\r\nHost: svc\r\nx-envoy-original-dst-host: {}\r\n\r\n",
        server_addr(flow)
    )
    .into_bytes()
}

/// The byte at `offset` of what the client sends in `flow` (the head first, in header mode).
fn upload_byte(prefix: &[u8], flow: usize, offset: u64) -> u8 {
    match prefix.get(offset as usize) {
        Some(&b) => b,
        None => byte(flow, 0, offset - prefix.len() as u64),
    }
}

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
}

impl Side {
    fn new() -> Self {
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
        }
    }

    /// Nothing more to do on this side.
    fn done(&self) -> bool {
        self.aborted || (self.end != SideEnd::Open && (self.shut || self.write_error.is_some()))
    }
}

fn client_addr(id: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 30000 + id as u16)
}

fn server_addr(id: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)), 8000 + id as u16)
}

/// An application on the proxy's own host (inbound captures go there).
fn app_addr(id: usize) -> SocketAddr {
    SocketAddr::new(PROXY_IP, 7000 + id as u16)
}

/// Where `flow`'s server listens.
fn dest(flow: &EFlow) -> SocketAddr {
    match flow.route {
        ERoute::Inbound => app_addr(flow.id),
        _ => server_addr(flow.id),
    }
}

/// What a header-mode client dials: the head, not this, decides where it goes.
fn decoy_addr(id: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 9, 9)), 9000 + id as u16)
}

const PROXY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
/// The bound listeners, in config order: capture, header, outer, inbound, misdeclared.
const PORTS: [u16; 5] = [15001, 15002, 15003, 15004, 15005];

/// The clients and servers.
struct Flows {
    flows: Vec<EFlow>,
    state: Rc<RefCell<Vec<(Side, Side)>>>,
}

/// The prefix a flow's upload starts with (its request head in header mode).
fn prefix(flow: &EFlow) -> Vec<u8> {
    match flow.route {
        ERoute::Header => head(flow.id),
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
            .map(|i| {
                if dir == 0 {
                    upload_byte(prefix, flow, side.sent + i)
                } else {
                    byte(flow, dir, side.sent + i)
                }
            })
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
                    let want = if dir == 0 {
                        upload_byte(prefix, flow, offset)
                    } else {
                        byte(flow, dir, offset)
                    };
                    if side.mismatch_at.is_none() && b != want {
                        side.mismatch_at = Some(offset);
                    }
                }
                side.received += n as u64;
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
        let mut state = self.state.borrow_mut();
        for flow in &self.flows {
            let (client, server) = &mut state[flow.id];
            let prefix = prefix(flow);
            let upload = prefix.len() as u64 + flow.upload;
            // The client: uploads (or resets at its byte), half-closes, reads the download.
            if client.ep.is_none() && now >= flow.start_ms * 1_000_000 {
                let record = || RedirectRecord(vec![0x7e, flow.id as u8]);
                client.ep = Some(match flow.route {
                    ERoute::Plain => net.dial_redirected(client_addr(flow.id), dest(flow), 0),
                    ERoute::Header => {
                        net.dial_redirected(client_addr(flow.id), decoy_addr(flow.id), 1)
                    }
                    ERoute::Internal => net.dial_redirected(client_addr(flow.id), dest(flow), 2),
                    ERoute::Inbound => net.dial_redirected(client_addr(flow.id), dest(flow), 3),
                    ERoute::Outbound => {
                        net.dial_with_record(client_addr(flow.id), dest(flow), 0, record())
                    }
                    ERoute::Misdeclared => {
                        net.dial_with_record(client_addr(flow.id), dest(flow), 4, record())
                    }
                });
            }
            if let Some(ep) = client.ep
                && !client.aborted
            {
                let limit = match flow.fault {
                    EFault::ClientReset(k) => k,
                    _ => upload,
                };
                push(net, ep, flow.id, 0, &prefix, client, limit, flow.chunk);
                if let EFault::ClientReset(k) = flow.fault
                    && client.sent >= k
                {
                    net.abort(ep);
                    client.aborted = true;
                    client.ended_at = now;
                    continue;
                }
                if client.sent >= upload && !client.shut && client.write_error.is_none() {
                    client.shut = net.shutdown(ep).is_ok();
                }
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
            // The server: reads the upload (or resets at its byte), answers, half-closes.
            if server.ep.is_none()
                && let Some(queue) = net.servers.get_mut(&dest(flow))
            {
                server.ep = queue.pop_front();
            }
            if let Some(ep) = server.ep
                && !server.aborted
            {
                pull(net, ep, flow.id, 0, &prefix, server, 0, now);
                if let EFault::UpstreamReset(k) = flow.fault
                    && server.received >= k
                    && server.end == SideEnd::Open
                {
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
        self.flows
            .iter()
            .filter(|flow| state[flow.id].0.ep.is_none())
            .map(|flow| flow.start_ms * 1_000_000)
            .filter(|&t| t > now)
            .min()
    }

    fn done(&self, net: &Net, now: u64) -> bool {
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

/// What the proxy reported.
#[derive(Debug, Default)]
struct Reports {
    stats: Counters,
    gauges: [u64; Gauge::ALL.len()],
    finished: Vec<Finished>,
}

struct SimReporter(Rc<RefCell<Reports>>);

impl Reporter for SimReporter {
    fn publish(&mut self, stats: &Counters, gauges: &[u64; Gauge::ALL.len()]) {
        let mut r = self.0.borrow_mut();
        r.stats = stats.clone();
        r.gauges = *gauges;
    }
}

struct SimLog(Rc<RefCell<Reports>>);

impl AccessLog for SimLog {
    fn sampled(&mut self) -> bool {
        true
    }
    fn send(&mut self, finished: Finished) {
        self.0.borrow_mut().finished.push(finished);
    }
}

/// The capture listener (plain REDIRECT), a header-mode listener, and an outer listener whose
/// cluster is an internal listener that restores the destination from shared filter state.
fn config(pipes: bool, records: bool) -> Config {
    const TCP_PROXY: &str =
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
    const SET_STATE: &str =
        "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config";
    let yaml = format!(
        "origdst: {{ pipe_budget_bytes: {budget}, http_head_timeout: 1s, redirect_records: {records} }}
static_resources:
  listeners:
  - name: capture
    traffic_direction: OUTBOUND
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15001 }} }}
    listener_filters: [ {{ name: envoy.filters.listener.original_dst }} ]
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: out, cluster: pass, idle_timeout: 5s }}
  - name: header
    traffic_direction: OUTBOUND
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15002 }} }}
    listener_filters: [ {{ name: envoy.filters.listener.original_dst }} ]
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: hdr, cluster: by_header, idle_timeout: 5s }}
  - name: outer
    traffic_direction: OUTBOUND
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15003 }} }}
    listener_filters: [ {{ name: envoy.filters.listener.original_dst }} ]
    filter_chains:
    - filters:
      - name: envoy.filters.network.set_filter_state
        typed_config:
          \"@type\": {SET_STATE}
          on_new_connection:
          - object_key: envoy.filters.listener.original_dst.local_ip
            shared_with_upstream: ONCE
            format_string: {{ text_format_source: {{ inline_string: \"%DOWNSTREAM_LOCAL_ADDRESS%\" }} }}
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: outer, cluster: to_inner, idle_timeout: 5s }}
  - name: inner
    traffic_direction: OUTBOUND
    address: {{ envoy_internal_address: {{ server_listener_name: inner }} }}
    listener_filters: [ {{ name: envoy.filters.listener.original_dst }} ]
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: inner, cluster: pass, idle_timeout: 5s }}
  - name: inbound
    traffic_direction: INBOUND
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15004 }} }}
    listener_filters: [ {{ name: envoy.filters.listener.original_dst }} ]
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: in, cluster: pass, idle_timeout: 5s }}
  - name: misdeclared
    traffic_direction: INBOUND
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15005 }} }}
    listener_filters: [ {{ name: envoy.filters.listener.original_dst }} ]
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: wrong, cluster: pass, idle_timeout: 5s }}
  clusters:
  - {{ name: pass, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED, connect_timeout: 1s }}
  - {{ name: by_header, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED, connect_timeout: 1s, original_dst_lb_config: {{ use_http_header: true }} }}
  - name: to_inner
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: to_inner
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ envoy_internal_address: {{ server_listener_name: inner }} }} }}
bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
    buffer_size_kb: {queue_kb}
",
        budget = if pipes { 4 * 1024 * 1024 } else { 0 },
        // Small internal-listener queues wrap often (a queue's ring arithmetic is exercised),
        // large ones rarely fill.
        queue_kb = if pipes { 1 } else { 64 },
    );
    Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("engine scenario config: {e}\n{yaml}"))
}

/// What a run produced.
pub struct EReport {
    /// Each flow's (client, server) ledgers.
    pub sides: Vec<(Side, Side)>,
    /// The shard's last published counters.
    pub stats: Counters,
    /// The shard's last published gauges.
    pub gauges: [u64; Gauge::ALL.len()],
    /// Every finished connection.
    pub finished: Vec<Finished>,
    /// Descriptors still open after the shard stopped.
    pub open_fds: usize,
    /// The shard's error, if it failed.
    pub error: Option<String>,
}

/// Runs the production shard over the simulated kernel.
pub fn run(scenario: &EScenario) -> EReport {
    let net = Rc::new(RefCell::new(Net::new(
        PROXY_IP,
        scenario.fd_limit,
        scenario.window,
    )));
    net.borrow_mut().require_records = scenario.records;
    for flow in &scenario.flows {
        match flow.fault {
            EFault::Refused => {}
            EFault::BlackHole => net.borrow_mut().black_holes.push(dest(flow)),
            _ => {
                net.borrow_mut().servers.insert(dest(flow), VecDeque::new());
            }
        }
    }
    let state = Rc::new(RefCell::new(vec![
        (Side::new(), Side::new());
        scenario.flows.len()
    ]));
    let workload = Flows {
        flows: scenario.flows.clone(),
        state: Rc::clone(&state),
    };
    let mut kernel = SimKernel::new(
        Rc::clone(&net),
        Box::new(workload),
        scenario.seed,
        scenario.faults,
        Duration::from_secs(120),
    );
    let listening: Vec<Listening<_>> = PORTS
        .into_iter()
        .enumerate()
        .map(|(config_index, port)| Listening {
            socket: kernel.listen(SocketAddr::new(PROXY_IP, port)),
            config_index,
        })
        .collect();
    let reports = Rc::new(RefCell::new(Reports::default()));
    let config = Arc::new(config(scenario.pipes, scenario.records));
    let setup = ShardSetup {
        id: 0,
        data_path: config.knobs.data_path,
        me: Arc::new(SelfAddrs {
            listeners: PORTS
                .into_iter()
                .map(|port| {
                    origdst_core::addr::ListenerAddr::new(SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                        port,
                    ))
                })
                .collect(),
            local_ips: vec![PROXY_IP],
            own_mark: Some(1337),
            admin: None,
        }),
        control: kernel.control(),
        reporter: Box::new(SimReporter(Rc::clone(&reports))),
        pipe_budget_bytes: config.knobs.pipe_budget_bytes,
        own_upstreams: Arc::new(OwnUpstreams::new()),
        access_log: Some(Box::new(SimLog(Rc::clone(&reports)))),
        config,
    };
    let error = match Shard::new(setup, kernel, listening) {
        Ok(shard) => shard.run().err().map(|e| e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    let reports = Rc::try_unwrap(reports)
        .map(RefCell::into_inner)
        .unwrap_or_else(|r| std::mem::take(&mut *r.borrow_mut()));
    let open_fds = net.borrow().open_fds();
    let sides = state.borrow().clone();
    EReport {
        sides,
        stats: reports.stats,
        gauges: reports.gauges,
        finished: reports.finished,
        open_fds,
        error,
    }
}

/// A broken rule.
#[derive(Debug, Clone)]
pub struct EViolation(pub String);

impl fmt::Display for EViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything that must hold for a run.
pub fn check(scenario: &EScenario, report: &EReport) -> Vec<EViolation> {
    let mut v = Vec::new();
    let mut fail = |s: String| v.push(EViolation(s));
    if let Some(err) = &report.error {
        fail(format!("the shard failed: {err}"));
    }
    for flow in &scenario.flows {
        let (client, server) = &report.sides[flow.id];
        let f = flow.id;
        // What the client uploads, its request head included (header mode).
        let upload = prefix(flow).len() as u64 + flow.upload;
        if let Some(at) = client.mismatch_at {
            fail(format!(
                "flow {f}: the client received a wrong byte at {at}"
            ));
        }
        if let Some(at) = server.mismatch_at {
            fail(format!(
                "flow {f}: the server received a wrong byte at {at}"
            ));
        }
        if client.end == SideEnd::Eof && client.received != flow.download {
            fail(format!(
                "flow {f}: clean EOF after {} of {} bytes (truncation disguised as success)",
                client.received, flow.download
            ));
        }
        if server.end == SideEnd::Eof && server.received != upload {
            let allowed = matches!(flow.fault, EFault::UpstreamReset(_));
            if !allowed {
                fail(format!(
                    "flow {f}: the server saw a clean EOF after {} of {} bytes",
                    server.received, upload
                ));
            }
        }
        // An internal-listener flow is two connections (outer and inner, the inner with the
        // outer's client): judge the inner one, which dials the server.
        let records: Vec<&Finished> = report
            .finished
            .iter()
            .filter(|r| r.client == client_addr(f))
            .collect();
        let record = records
            .iter()
            .find(|r| r.upstream == Some(dest(flow)))
            .or_else(|| records.iter().find(|r| r.upstream.is_some()))
            .or(records.first())
            .copied();
        if flow.route == ERoute::Internal && records.len() == 1 && !client.aborted {
            fail(format!(
                "flow {f}: an internal-listener flow left one connection record, not two"
            ));
        }
        let Some(record) = record else {
            // A client that reset before it was accepted is gone: nothing to relay or log.
            if !client.aborted {
                fail(format!("flow {f}: the proxy logged no finished connection"));
            }
            continue;
        };
        if flow.route == ERoute::Misdeclared {
            // The record was never applied: the platform sent the proxy's connection back to
            // it, the proxy refused its own upstream (no mark visible), and the client was reset.
            if !matches!(
                record.outcome,
                Outcome::ConnectFailed(_) | Outcome::UpstreamFailed(_)
            ) {
                fail(format!(
                    "flow {f} (listener declared INBOUND for outbound traffic): the proxy ended it as {}",
                    record.outcome.name()
                ));
            }
            if !matches!(client.end, SideEnd::Error(_)) {
                fail(format!(
                    "flow {f} (misdeclared): the client must see a reset, it ended {:?}",
                    client.end
                ));
            }
            if server.ep.is_some() {
                fail(format!(
                    "flow {f} (misdeclared): the looped connection reached the server"
                ));
            }
            continue;
        }
        // A server that read everything before its reset byte came never reset: that flow is a
        // normal one.
        // Likewise one that reset only after the proxy had relayed everything both ways (the
        // rest of the upload was in its receive queue): the proxy finished first, as TCP would.
        let relayed_all = record.bytes_received == upload
            && record.bytes_sent == flow.download
            && client.end == SideEnd::Eof
            && client.received == flow.download;
        let fault = match flow.fault {
            EFault::UpstreamReset(_) if !server.aborted || relayed_all => EFault::None,
            fault => fault,
        };
        let want: fn(Outcome) -> bool = match fault {
            EFault::None => |o| o == Outcome::Completed,
            EFault::ClientReset(_) => |o| matches!(o, Outcome::ClientFailed(_)),
            EFault::UpstreamReset(_) => |o| matches!(o, Outcome::UpstreamFailed(_)),
            EFault::Refused => |o| matches!(o, Outcome::ConnectFailed(_)),
            EFault::BlackHole => |o| o == Outcome::ConnectTimeout,
        };
        // Descriptor exhaustion may leave a connection parked until the drain resets it.
        let starved = scenario.fd_limit < 100 && record.outcome == Outcome::DrainAborted;
        if !want(record.outcome) && !starved {
            fail(format!(
                "flow {f} ({fault:?}): the proxy ended it as {}",
                record.outcome.name()
            ));
        }
        match fault {
            EFault::None if !starved => {
                if client.end != SideEnd::Eof || client.received != flow.download {
                    fail(format!(
                        "flow {f}: the client got {} of {} bytes and ended {:?}",
                        client.received, flow.download, client.end
                    ));
                }
                if server.received != upload && !server.aborted {
                    fail(format!(
                        "flow {f}: the server got {} of {} bytes",
                        server.received, upload
                    ));
                }
                if record.bytes_received != upload || record.bytes_sent != flow.download {
                    fail(format!(
                        "flow {f}: the proxy counted {}/{} bytes, the flow moved {}/{}",
                        record.bytes_received, record.bytes_sent, upload, flow.download
                    ));
                }
                if record.upstream != Some(dest(flow)) {
                    fail(format!(
                        "flow {f}: the proxy dialled {:?}, the client dialled {}",
                        record.upstream,
                        dest(flow)
                    ));
                }
            }
            EFault::UpstreamReset(_) | EFault::Refused | EFault::BlackHole => {
                // The reset reaches the client unless it had already read everything cleanly.
                let complete = client.end == SideEnd::Eof && client.received == flow.download;
                if !matches!(client.end, SideEnd::Error(_)) && !complete && !starved {
                    fail(format!(
                        "flow {f} ({fault:?}): the client must see a reset, it ended {:?}",
                        client.end
                    ));
                }
            }
            EFault::ClientReset(_) => {
                if server.ep.is_some() && server.end == SideEnd::Eof && server.received < upload {
                    fail(format!(
                        "flow {f}: the client reset, the server saw a clean EOF"
                    ));
                }
            }
            EFault::None => {}
        }
    }
    let count = |c: Counter| report.stats.get(c);
    let gone = scenario
        .flows
        .iter()
        .filter(|flow| {
            !report
                .finished
                .iter()
                .any(|r| r.client == client_addr(flow.id))
        })
        .count() as u64;
    if count(Counter::AcceptClientGone) != gone {
        fail(format!(
            "{gone} clients left before they were accepted, downstream_cx_accept_client_gone = {}",
            count(Counter::AcceptClientGone)
        ));
    }
    if count(Counter::DownstreamCxTotal) != report.finished.len() as u64 {
        fail(format!(
            "downstream_cx_total {} for {} finished connections",
            count(Counter::DownstreamCxTotal),
            report.finished.len()
        ));
    }
    let loops = report
        .finished
        .iter()
        .filter(|r| r.client.ip() == PROXY_IP)
        .count() as u64;
    if count(Counter::RefusedOwnUpstream) != loops {
        fail(format!(
            "{loops} of the proxy's own connections came back, refused_own_upstream = {}",
            count(Counter::RefusedOwnUpstream)
        ));
    }
    let misdeclared = scenario
        .flows
        .iter()
        .filter(|flow| {
            flow.route == ERoute::Misdeclared
                && report
                    .finished
                    .iter()
                    .any(|r| r.client == client_addr(flow.id))
        })
        .count() as u64;
    if loops < misdeclared {
        fail(format!(
            "{misdeclared} misdeclared flows, only {loops} loops recognised"
        ));
    }
    if count(Counter::DownstreamCxDestroy) != count(Counter::DownstreamCxTotal) {
        fail("not every accepted connection was destroyed".into());
    }
    let completed = report
        .finished
        .iter()
        .filter(|r| r.outcome == Outcome::Completed)
        .count() as u64;
    if count(Counter::Completed) != completed {
        fail(format!(
            "completed = {}, {completed} finished records say completed",
            count(Counter::Completed)
        ));
    }
    let up: u64 = report.finished.iter().map(|r| r.bytes_received).sum();
    let down: u64 = report.finished.iter().map(|r| r.bytes_sent).sum();
    if count(Counter::DownstreamCxRxBytesTotal) != up
        || count(Counter::DownstreamCxTxBytesTotal) != down
    {
        fail("byte counters disagree with the finished connections".into());
    }
    if report.gauges[Gauge::ConnectionsActive as usize] != 0
        || report.gauges[Gauge::PipesLeased as usize] != 0
    {
        fail(format!("after the drain: gauges {:?}", report.gauges));
    }
    if report.open_fds != 0 {
        fail(format!(
            "{} descriptors still open after the shard stopped",
            report.open_fds
        ));
    }
    v
}
