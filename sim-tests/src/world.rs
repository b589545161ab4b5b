//! Builds a turmoil simulation from a scenario — the proxy host (runtime-sim's driver over the
//! unchanged core), upstream servers, the client workload — runs it, and collects the ledgers.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use origdst_core::addr::ListenerAddr;
use origdst_core::config::Config;
use origdst_core::config::ConnParams;
use origdst_core::orig_dst::{InternalMetadata, SelfAddrs};
use origdst_core::stats::Counters;
use origdst_runtime_sim::driver::{self, DrainSwitch, ProxyConfig, ProxyLedger, ProxyRecord};
use origdst_runtime_sim::io as sim_io;
use origdst_runtime_sim::net::{ProxyHostRules, ProxyPorts, Route, SimNet};
use turmoil::net::TcpListener;
use turmoil::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::rng::Rng;
use crate::scenario::{Fault, Flow, Lifecycle, MetaVariant, Order, RouteKind, Scenario, Upstream};

/// How one side of a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Read EOF cleanly.
    CleanEof,
    /// Saw a reset (read or write error).
    Reset,
    /// Another I/O error.
    Error(io::ErrorKind),
    /// Nothing arrived within the read deadline.
    TimedOut,
    /// This side reset the connection itself (the fault).
    AbortedByMe,
}

/// One side's ledger for a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideResult {
    /// Bytes received that matched the expected stream.
    pub received: u64,
    /// Where the first wrong byte was, if any.
    pub mismatch_at: Option<u64>,
    /// Bytes written successfully.
    pub sent: u64,
    /// How the receiving side ended.
    pub end: End,
    /// Virtual ms when it ended.
    pub ended_ms: u64,
}

/// A flow's ledgers.
#[derive(Debug, Clone, Default)]
pub struct FlowResult {
    /// When the client dialled (virtual ms), and the dial error if it failed.
    pub dialled_ms: u64,
    /// The dial's error, if the proxy could not be reached at all.
    pub dial_error: Option<io::ErrorKind>,
    /// The client socket's address (the proxy's peer), once dialled.
    pub client_addr: Option<SocketAddr>,
    /// The client's ledger (`None` if the dial failed).
    pub client: Option<SideResult>,
    /// The upstream's ledgers, one per accepted connection (more than one is a bug).
    pub upstream: Vec<SideResult>,
    /// When the client's last upload write went through (virtual ms; paced flows).
    pub last_write_ms: u64,
}

/// Everything a run produced.
#[derive(Debug)]
pub struct Report {
    /// Per-flow ledgers, by flow id.
    pub flows: Vec<FlowResult>,
    /// What the proxy accepted and how each ended.
    pub proxy: Vec<ProxyRecord>,
    /// The proxy's counters.
    pub stats: Counters,
    /// Original-destination queries per accepted peer.
    pub queries: Vec<(SocketAddr, u32)>,
    /// Proxy connections redirected back to the proxy.
    pub self_redirects: u32,
    /// Upstream connects the proxy made (destination, applied record).
    pub upstream_connects: Vec<(SocketAddr, Option<Vec<u8>>)>,
    /// The most bytes one direction held.
    pub max_buffered_bytes: usize,
    /// turmoil's own error (e.g. the duration ran out: a hang).
    pub sim_error: Option<String>,
    /// Hash of the proxy's event trace.
    pub trace_hash: u64,
    /// The trace itself, when asked for.
    pub trace: Vec<String>,
    /// Addresses, for the oracle.
    pub addrs: Addrs,
}

/// Host addresses of a run.
#[derive(Debug, Clone)]
pub struct Addrs {
    /// The proxy.
    pub proxy: IpAddr,
    /// Upstream A, B, hole, slow.
    pub upstreams: BTreeMap<&'static str, IpAddr>,
}

impl Addrs {
    /// The address a flow's client dials (its original destination).
    pub fn orig_dst(&self, flow: &Flow) -> SocketAddr {
        match flow.route {
            RouteKind::ToListener => SocketAddr::new(self.proxy, PORTS.transparent),
            // The "service address": the other upstream's; the hand-off maps it to the server.
            RouteKind::HandoffStatic => self.decoy(flow),
            _ => self.server(flow),
        }
    }

    /// Where the flow's server listens (what the proxy must connect to when it relays).
    pub fn server(&self, flow: &Flow) -> SocketAddr {
        SocketAddr::new(self.upstreams[host_name(flow.upstream)], flow.port())
    }

    /// The other healthy upstream (for "both metadata" flows, the decoy).
    fn decoy(&self, flow: &Flow) -> SocketAddr {
        let other = if flow.upstream == Upstream::A {
            Upstream::B
        } else {
            Upstream::A
        };
        SocketAddr::new(self.upstreams[host_name(other)], flow.port())
    }
}

/// The proxy's ports in every run.
pub const PORTS: ProxyPorts = ProxyPorts {
    capture: 15001,
    transparent: 15002,
    internal: 15003,
};
/// Virtual time per step. Every step polls every host, so the tick sets the cost of a run.
pub const TICK: Duration = Duration::from_millis(2);
/// The proxy's mark.
pub const MARK: u32 = 1337;
/// Connect timeout of the simulated proxy.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Idle timeout of the simulated proxy.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// A side that hears nothing for this long records `TimedOut`.
pub const READ_DEADLINE: Duration = Duration::from_secs(10);
/// The liveness phase: after the workload and the heal, the proxy must close everything within
/// this much virtual time (idle timeout plus slack).
pub const QUIESCE: Duration = Duration::from_secs(4);
/// How long a crashed host stays down.
pub const RESTART_AFTER_MS: u64 = 100;

type Flows = Rc<RefCell<Vec<FlowResult>>>;
/// Upstream connections still being served (their ledgers are written when they end).
type Serving = Rc<std::cell::Cell<usize>>;

/// Runs `scenario`; `keep_trace` keeps the proxy's event trace as text.
pub fn run(scenario: &Scenario, keep_trace: bool) -> Report {
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(scenario.seed)
        .simulation_duration(Duration::from_secs(120))
        .tick_duration(TICK)
        .min_message_latency(Duration::from_millis(scenario.latency_ms.0))
        .max_message_latency(Duration::from_millis(scenario.latency_ms.1))
        .tcp_capacity(scenario.tcp_capacity)
        .ip_version(if scenario.v6 {
            turmoil::IpVersion::V6
        } else {
            turmoil::IpVersion::V4
        });
    if scenario.random_order {
        builder.enable_random_order();
    }
    let mut sim = builder.build();
    let unspecified = if scenario.v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let proxy_ip = sim.lookup("proxy");
    let mut upstreams = BTreeMap::new();
    for name in ["up-a", "up-b", "hole", "slow"] {
        upstreams.insert(name, sim.lookup(name));
    }
    let addrs = Addrs {
        proxy: proxy_ip,
        upstreams,
    };
    let rules = ProxyHostRules {
        redirect_outbound: scenario.forgot_mark_exclusion,
        exclude_mark: if scenario.forgot_mark_exclusion {
            None
        } else {
            Some(MARK)
        },
        require_records: scenario.require_records,
    };
    let net = SimNet::new(proxy_ip, PORTS, rules);
    let ledger = ProxyLedger::new(keep_trace);
    let drain = DrainSwitch::default();
    let config = ProxyConfig {
        ports: PORTS,
        bind_ip: unspecified,
        params: ConnParams {
            connect_timeout: CONNECT_TIMEOUT,
            idle_timeout: Some(IDLE_TIMEOUT),
            upstream_mark: Some(MARK),
            original_src: None,
            bind_source: Default::default(),
        },
        me: SelfAddrs {
            listeners: [PORTS.capture, PORTS.transparent, PORTS.internal]
                .into_iter()
                .map(|port| ListenerAddr::new(SocketAddr::new(unspecified, port)))
                .collect(),
            local_ips: vec![proxy_ip],
            own_mark: Some(MARK),
            admin: None,
        },
        routing: scenario
            .routing
            .then(|| Rc::new(routing_config(scenario, &addrs, unspecified))),
    };
    {
        let (net, ledger, drain) = (net.clone(), ledger.clone(), drain.clone());
        sim.host("proxy", move || {
            driver::run(net.clone(), config.clone(), ledger.clone(), drain.clone())
        });
    }
    let flows: Flows = Rc::new(RefCell::new(vec![
        FlowResult::default();
        scenario.flows.len()
    ]));
    let serving: Serving = Rc::default();
    for upstream in [Upstream::A, Upstream::B, Upstream::Hole, Upstream::Slow] {
        // Every host costs a runtime poll per tick: only build the ones a flow uses (A always, for
        // the upstream-crash lifecycle and the internal-metadata decoy).
        let used = upstream == Upstream::A
            || scenario.flows.iter().any(|f| {
                f.upstream == upstream
                    || (upstream == Upstream::B
                        && matches!(f.route, RouteKind::Internal(MetaVariant::Both)))
            });
        if !used {
            continue;
        }
        let served: Vec<Flow> = scenario
            .flows
            .iter()
            .filter(|f| f.upstream == upstream && f.fault != Fault::Refused)
            .cloned()
            .collect();
        let (net, flows, serving, seed) = (
            net.clone(),
            Rc::clone(&flows),
            Rc::clone(&serving),
            scenario.seed,
        );
        sim.host(host_name(upstream), move || {
            upstream_host(
                net.clone(),
                served.clone(),
                Rc::clone(&flows),
                Rc::clone(&serving),
                unspecified,
                seed,
            )
        });
    }
    {
        let scenario = scenario.clone();
        let (net, flows, addrs) = (net.clone(), Rc::clone(&flows), addrs.clone());
        let serving = Rc::clone(&serving);
        sim.client(
            "client",
            client_workload(net, scenario, flows, addrs, ledger.clone(), serving),
        );
    }
    let sim_error = drive(&mut sim, scenario, &drain).err();
    let flows = flows.borrow().clone();
    Report {
        flows,
        proxy: ledger.records(),
        stats: ledger.stats(),
        queries: net.all_queries(),
        self_redirects: net.self_redirects(),
        upstream_connects: net.upstream_connects(),
        max_buffered_bytes: ledger.max_buffered_bytes(),
        sim_error,
        trace_hash: ledger.trace_hash(),
        trace: ledger.trace(),
        addrs,
    }
}

/// Steps the sim, applying the scenario's lifecycle event at its time.
fn drive(
    sim: &mut turmoil::Sim<'_>,
    scenario: &Scenario,
    drain: &DrainSwitch,
) -> Result<(), String> {
    let mut crashed: Option<(&'static str, u64)> = None;
    let mut fired = false;
    loop {
        let done = sim.step().map_err(|e| e.to_string())?;
        if done {
            return Ok(());
        }
        let now_ms = sim.elapsed().as_millis() as u64;
        match scenario.lifecycle {
            Some(Lifecycle::Drain(at)) if !fired && now_ms >= at => {
                drain.drain();
                fired = true;
            }
            Some(Lifecycle::ProxyCrash(at)) if !fired && now_ms >= at => {
                sim.crash("proxy");
                crashed = Some(("proxy", now_ms));
                fired = true;
            }
            Some(Lifecycle::UpstreamCrash(at)) if !fired && now_ms >= at => {
                sim.crash("up-a");
                crashed = Some(("up-a", now_ms));
                fired = true;
            }
            _ => {}
        }
        if let Some((host, at)) = crashed
            && now_ms >= at + RESTART_AFTER_MS
        {
            sim.bounce(host);
            crashed = None;
        }
    }
}

fn host_name(upstream: Upstream) -> &'static str {
    match upstream {
        Upstream::A => "up-a",
        Upstream::B => "up-b",
        Upstream::Hole => "hole",
        Upstream::Slow => "slow",
    }
}

fn now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

/// Stream seeds: each flow's upload and download are distinct streams.
fn upload_seed(seed: u64, flow: usize) -> u64 {
    Rng::new(seed ^ (flow as u64) << 1).next_u64()
}

fn download_seed(seed: u64, flow: usize) -> u64 {
    Rng::new(seed ^ ((flow as u64) << 1 | 1)).next_u64()
}

fn fill(stream_seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        let position = offset + i as u64;
        *byte = Rng::new(stream_seed ^ (position / 8))
            .next_u64()
            .to_le_bytes()[(position % 8) as usize];
    }
}

/// Sends `len` bytes of the stream in `chunk`-sized writes. Returns bytes written.
async fn send(
    net: &SimNet,
    write: &mut OwnedWriteHalf,
    stream_seed: u64,
    len: u64,
    chunk: usize,
) -> (u64, Option<End>) {
    let (sent, end, _) = send_paced(net, write, stream_seed, len, chunk, 0).await;
    (sent, end)
}

/// [`send`], pausing `pace_ms` after each write but the last; also returns when the last write
/// that went through was made (virtual ms).
async fn send_paced(
    net: &SimNet,
    write: &mut OwnedWriteHalf,
    stream_seed: u64,
    len: u64,
    chunk: usize,
    pace_ms: u64,
) -> (u64, Option<End>, u64) {
    let mut buf = vec![0u8; chunk.max(1)];
    let mut sent = 0u64;
    let mut last_write_ms = now_ms();
    while sent < len {
        let n = (len - sent).min(buf.len() as u64) as usize;
        fill(stream_seed, sent, &mut buf[..n]);
        if let Err(err) = sim_io::write_all(net, write, &buf[..n]).await {
            return (sent, Some(end_of(&err)), last_write_ms);
        }
        last_write_ms = now_ms();
        sent += n as u64;
        if pace_ms > 0 && sent < len {
            tokio::time::sleep(Duration::from_millis(pace_ms)).await;
        }
    }
    (sent, None, last_write_ms)
}

/// Receives and checks the stream until EOF, error, `limit` bytes (then stops), or the deadline.
async fn receive(
    net: &SimNet,
    read: &mut OwnedReadHalf,
    stream_seed: u64,
    limit: Option<u64>,
    pause_ms: u64,
) -> SideResult {
    let mut buf = vec![0u8; 8192];
    let mut want = vec![0u8; 8192];
    let mut result = SideResult {
        received: 0,
        mismatch_at: None,
        sent: 0,
        end: End::CleanEof,
        ended_ms: 0,
    };
    loop {
        if limit.is_some_and(|limit| result.received >= limit) {
            result.end = End::AbortedByMe;
            break;
        }
        let cap = limit.map_or(buf.len(), |limit| {
            ((limit - result.received) as usize).min(buf.len())
        });
        match tokio::time::timeout(READ_DEADLINE, sim_io::read(net, read, &mut buf[..cap])).await {
            Err(_) => {
                result.end = End::TimedOut;
                break;
            }
            Ok(Err(err)) => {
                result.end = end_of(&err);
                break;
            }
            Ok(Ok(0)) => {
                result.end = End::CleanEof;
                break;
            }
            Ok(Ok(n)) => {
                fill(stream_seed, result.received, &mut want[..n]);
                if result.mismatch_at.is_none()
                    && let Some(i) = (0..n).find(|&i| buf[i] != want[i])
                {
                    result.mismatch_at = Some(result.received + i as u64);
                }
                result.received += n as u64;
            }
        }
        if pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
    }
    result.ended_ms = now_ms();
    result
}

fn end_of(err: &io::Error) -> End {
    match err.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => End::Reset,
        kind => End::Error(kind),
    }
}

// === upstream servers ===

async fn upstream_host(
    net: SimNet,
    served: Vec<Flow>,
    flows: Flows,
    serving: Serving,
    unspecified: IpAddr,
    seed: u64,
) -> turmoil::Result {
    let mut loops = Vec::new();
    for flow in served {
        let listener = TcpListener::bind(SocketAddr::new(unspecified, flow.port())).await?;
        let (net, flows, serving) = (net.clone(), Rc::clone(&flows), Rc::clone(&serving));
        loops.push(tokio::task::spawn_local(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (net, flows, flow, serving) = (
                    net.clone(),
                    Rc::clone(&flows),
                    flow.clone(),
                    Rc::clone(&serving),
                );
                // A black-holed server never hears the end of its connection: not waited for.
                let counted = flow.fault != Fault::BlackHole;
                if counted {
                    serving.set(serving.get() + 1);
                }
                tokio::task::spawn_local(async move {
                    let result = serve(&net, &flow, stream, seed).await;
                    flows.borrow_mut()[flow.id].upstream.push(result);
                    if counted {
                        serving.set(serving.get() - 1);
                    }
                });
            }
        }));
    }
    for l in loops {
        let _ = l.await;
    }
    // A host whose software ended drops SYNs instead of refusing them: stay up, as a kernel would.
    std::future::pending::<()>().await;
    Ok(())
}

async fn serve(
    net: &SimNet,
    flow: &Flow,
    stream: turmoil::net::TcpStream,
    seed: u64,
) -> SideResult {
    let (local, peer) = (stream.local_addr().ok(), stream.peer_addr().ok());
    let (mut read, mut write) = stream.into_split();
    let (up, down) = (upload_seed(seed, flow.id), download_seed(seed, flow.id));
    match flow.fault {
        Fault::UpstreamReset(k) => {
            let mut result = receive(net, &mut read, up, Some(k), flow.slow_upstream_ms).await;
            if let (Some(local), Some(peer)) = (local, peer) {
                sim_io::abort(net, local, peer);
            }
            drop((read, write));
            result.end = End::AbortedByMe;
            return result;
        }
        Fault::BlackHole => {
            let mut result = receive(net, &mut read, up, None, flow.slow_upstream_ms).await;
            // From now on nothing gets through: only the proxy's idle timeout can end this.
            turmoil::partition("proxy", "hole");
            let (sent, _) = send(net, &mut write, down, flow.download, flow.chunk).await;
            result.sent = sent;
            let _ = tokio::time::timeout(READ_DEADLINE, sim_io::shutdown(net, &mut write)).await;
            return result;
        }
        _ => {}
    }
    match flow.order {
        Order::ClientFirst => {
            let mut result = receive(net, &mut read, up, None, flow.slow_upstream_ms).await;
            let (sent, _) = send(net, &mut write, down, flow.download, flow.chunk).await;
            let _ = sim_io::shutdown(net, &mut write).await;
            result.sent = sent;
            result
        }
        Order::UpstreamFirst => {
            let (sent, _) = send(net, &mut write, down, flow.download, flow.chunk).await;
            let _ = sim_io::shutdown(net, &mut write).await;
            let mut result = receive(net, &mut read, up, None, flow.slow_upstream_ms).await;
            result.sent = sent;
            result
        }
        Order::Concurrent => {
            let (net2, chunk, len) = (net.clone(), flow.chunk, flow.download);
            let writer = tokio::task::spawn_local(async move {
                let (sent, _) = send(&net2, &mut write, down, len, chunk).await;
                let _ = sim_io::shutdown(&net2, &mut write).await;
                (sent, write)
            });
            let mut result = receive(net, &mut read, up, None, flow.slow_upstream_ms).await;
            if let Ok((sent, write)) = writer.await {
                result.sent = sent;
                drop(write);
            }
            result
        }
    }
}

// === client workload ===

async fn client_workload(
    net: SimNet,
    scenario: Scenario,
    flows: Flows,
    addrs: Addrs,
    ledger: ProxyLedger,
    serving: Serving,
) -> turmoil::Result {
    // Dial only once the proxy listens (its host starts in the same tick as this client).
    while !ledger.accepting() {
        tokio::time::sleep(TICK).await;
    }
    let uses = |u: Upstream| scenario.flows.iter().any(|f| f.upstream == u);
    if uses(Upstream::Slow) {
        turmoil::hold("proxy", "slow");
    }
    let mut tasks = Vec::new();
    for flow in scenario.flows.clone() {
        let (net, flows, addrs, seed) =
            (net.clone(), Rc::clone(&flows), addrs.clone(), scenario.seed);
        tasks.push(tokio::task::spawn_local(async move {
            tokio::time::sleep(Duration::from_millis(flow.start_ms)).await;
            client_flow(&net, &flow, &flows, &addrs, seed).await;
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    // Heal every fault, then let the proxy's timers finish what is left (liveness phase): the run
    // ends as soon as every accepted connection has ended, or after QUIESCE (the oracle then
    // names what is still open).
    if uses(Upstream::Hole) {
        turmoil::repair("proxy", "hole");
    }
    if uses(Upstream::Slow) {
        turmoil::release("proxy", "slow");
    }
    let deadline = tokio::time::Instant::now() + QUIESCE;
    while tokio::time::Instant::now() < deadline
        && (serving.get() > 0 || ledger.records().iter().any(|r| r.closed_at.is_none()))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Istio's outbound shape for a hand-off scenario: the virtual listener on the capture port with
/// `use_original_dst` and a passthrough default, one `bind_to_port: false` listener per hand-off
/// flow (a wildcard one with a STATIC cluster to the flow's server, an exact one to a black hole).
fn routing_config(scenario: &Scenario, addrs: &Addrs, unspecified: IpAddr) -> Config {
    let tcp_proxy = |cluster: &str| {
        format!(
            "    filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {cluster}, cluster: {cluster}, idle_timeout: {}s }}\n",
            IDLE_TIMEOUT.as_secs_f64()
        )
    };
    let address = |ip: IpAddr, port: u16| {
        format!("    address: {{ socket_address: {{ address: \"{ip}\", port_value: {port} }} }}\n")
    };
    let mut listeners = format!(
        "  - name: virtualOutbound\n{}    use_original_dst: true\n{}",
        address(unspecified, PORTS.capture),
        tcp_proxy("PassthroughCluster")
    );
    let connect = CONNECT_TIMEOUT.as_secs_f64();
    let mut clusters = format!(
        "  - {{ name: PassthroughCluster, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED, connect_timeout: {connect}s }}\n  - {{ name: BlackHoleCluster, type: STATIC }}\n"
    );
    for flow in &scenario.flows {
        match flow.route {
            RouteKind::HandoffStatic => {
                let server = addrs.server(flow);
                let name = format!("svc{}", flow.id);
                listeners.push_str(&format!(
                    "  - name: {name}\n{}    bind_to_port: false\n{}",
                    address(unspecified, flow.port()),
                    tcp_proxy(&name)
                ));
                clusters.push_str(&format!(
                    "  - name: {name}\n    type: STATIC\n    connect_timeout: {connect}s\n    load_assignment:\n      cluster_name: {name}\n      endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: \"{}\", port_value: {} }} }} }} }} ] }} ]\n",
                    server.ip(),
                    server.port()
                ));
            }
            RouteKind::HandoffBlackhole => {
                let dst = addrs.orig_dst(flow);
                listeners.push_str(&format!(
                    "  - name: hole{}\n{}    bind_to_port: false\n{}",
                    flow.id,
                    address(dst.ip(), dst.port()),
                    tcp_proxy("BlackHoleCluster")
                ));
            }
            _ => {}
        }
    }
    let yaml = format!(
        "origdst: {{ upstream_mark: {MARK} }}\nstatic_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}"
    );
    Config::from_yaml(&yaml)
        .unwrap_or_else(|e| panic!("the hand-off config is invalid: {e}\n{yaml}"))
}

fn route_for(flow: &Flow, addrs: &Addrs, seed: u64) -> Route {
    let meta = |dynamic: Option<String>, state: Option<String>| InternalMetadata {
        dynamic_local: dynamic,
        filter_state_local: state,
        filter_state_remote: None,
        ..Default::default()
    };
    let dst = addrs.orig_dst(flow).to_string();
    match &flow.route {
        RouteKind::Redirect
        | RouteKind::ToListener
        | RouteKind::HandoffStatic
        | RouteKind::HandoffBlackhole => Route::Redirect,
        RouteKind::Record => Route::RedirectWithRecord(
            Rng::new(seed ^ 0x5ec0_4d00 ^ flow.id as u64)
                .next_u64()
                .to_le_bytes()
                .to_vec(),
        ),
        RouteKind::RecordQueryFails => Route::RedirectRecordQueryFails,
        RouteKind::Tproxy => Route::Tproxy,
        RouteKind::Direct { unrestored } => Route::Direct {
            unrestored: *unrestored,
        },
        RouteKind::Stale => Route::StaleConntrack,
        RouteKind::Internal(variant) => Route::Internal(match variant {
            MetaVariant::Dynamic => meta(Some(dst), None),
            MetaVariant::FilterState => meta(None, Some(dst)),
            MetaVariant::Both => meta(Some(dst), Some(addrs.decoy(flow).to_string())),
            MetaVariant::Missing => meta(None, None),
            MetaVariant::Malformed => meta(Some("not-an-address".into()), None),
        }),
    }
}

async fn client_flow(net: &SimNet, flow: &Flow, flows: &Flows, addrs: &Addrs, seed: u64) {
    let route = route_for(flow, addrs, seed);
    flows.borrow_mut()[flow.id].dialled_ms = now_ms();
    let stream = match net.dial(&route, addrs.orig_dst(flow)).await {
        Ok(stream) => stream,
        Err(err) => {
            flows.borrow_mut()[flow.id].dial_error = Some(err.kind());
            return;
        }
    };
    let (local, peer) = (stream.local_addr().ok(), stream.peer_addr().ok());
    flows.borrow_mut()[flow.id].client_addr = local;
    let (mut read, mut write) = stream.into_split();
    let (up, down) = (upload_seed(seed, flow.id), download_seed(seed, flow.id));
    let result = if let Fault::ClientReset(k) = flow.fault {
        let (sent, _) = send(net, &mut write, up, k, flow.chunk).await;
        // Let the bytes leave before the reset, as a real client's RST follows its data.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let (Some(local), Some(peer)) = (local, peer) {
            sim_io::abort(net, local, peer);
        }
        drop((read, write));
        SideResult {
            received: 0,
            mismatch_at: None,
            sent,
            end: End::AbortedByMe,
            ended_ms: now_ms(),
        }
    } else {
        match flow.order {
            Order::ClientFirst => {
                let (sent, _, last_write_ms) =
                    send_paced(net, &mut write, up, flow.upload, flow.chunk, flow.pace_ms).await;
                flows.borrow_mut()[flow.id].last_write_ms = last_write_ms;
                let _ = sim_io::shutdown(net, &mut write).await;
                let mut result = receive(net, &mut read, down, None, flow.slow_client_ms).await;
                result.sent = sent;
                result
            }
            Order::UpstreamFirst => {
                let mut result = receive(net, &mut read, down, None, flow.slow_client_ms).await;
                if result.end == End::CleanEof {
                    let (sent, _) = send(net, &mut write, up, flow.upload, flow.chunk).await;
                    let _ = sim_io::shutdown(net, &mut write).await;
                    result.sent = sent;
                }
                result
            }
            Order::Concurrent => {
                let (net2, chunk, len) = (net.clone(), flow.chunk, flow.upload);
                let writer = tokio::task::spawn_local(async move {
                    let (sent, _) = send(&net2, &mut write, up, len, chunk).await;
                    let _ = sim_io::shutdown(&net2, &mut write).await;
                    (sent, write)
                });
                let mut result = receive(net, &mut read, down, None, flow.slow_client_ms).await;
                // A writer blocked on a dead proxy must not hang the workload.
                if let Ok(Ok((sent, write))) = tokio::time::timeout(READ_DEADLINE, writer).await {
                    result.sent = sent;
                    drop(write);
                }
                result
            }
        }
    };
    flows.borrow_mut()[flow.id].client = Some(result);
}
