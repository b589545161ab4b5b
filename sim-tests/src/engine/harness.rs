//! The shard over the simulated kernel: its config (capture, header-mode, internal-chain,
//! inbound and misdeclared listeners), the reporter and access log the oracle reads, the run.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use origdst_core::config::{Config, ListenerAddress};
use origdst_core::orig_dst::SelfAddrs;
use origdst_core::stats::Counters;
use origdst_engine::listeners::GroupReport;
use origdst_engine::own_upstreams::OwnUpstreams;
use origdst_engine::report::{AccessLog, Finished, Gauge, Reporter};
use origdst_engine::shard::{Listening, Shard, ShardSetup};
use origdst_runtime_sim::kernel::net::Net;
use origdst_runtime_sim::kernel::{SimKernel, Workload};

use super::logs::{LogLines, Recorder};
use super::scenario::{
    DOOMED_PORT, EFault, ERoute, EScenario, FRESH_PORT, PORTS, PROXY_IP, PUSHED_ENDPOINTS,
    SPREAD_ENDPOINTS, TPROXY_LISTENER, dest, listener_group,
};
use super::workload::{Flows, Side};

/// What the proxy reported.
#[derive(Debug, Default)]
struct Reports {
    stats: Counters,
    gauges: [u64; Gauge::ALL.len()],
    finished: Vec<Finished>,
    finished_at: Vec<u64>,
    /// Completed connections the sampling left out of the access log.
    unsampled: u64,
    /// Completed connections offered to the sampling.
    offered: u64,
    /// The engine's metrics by exported name.
    scraped: std::collections::BTreeMap<&'static str, Scraped>,
    /// Counters that went down between two publications, gauges below what the kernel shows.
    scrape_errors: Vec<String>,
    /// Each group's (pod's) last published counters, by name.
    groups: std::collections::BTreeMap<String, GroupReport>,
}

/// One engine metric as a scrape shows it: its type, help text and value.
#[derive(Debug, Clone, Copy)]
pub struct Scraped {
    /// Exported as a counter (else a gauge).
    pub counter: bool,
    /// Its help text.
    pub help: &'static str,
    /// Its last value.
    pub value: u64,
}

struct SimReporter(Rc<RefCell<Reports>>, Rc<RefCell<Net>>);

impl Reporter for SimReporter {
    fn publish_groups(&mut self, groups: &[GroupReport]) {
        let mut guard = self.0.borrow_mut();
        let r = &mut *guard;
        for group in groups {
            if let Some(before) = r.groups.get(&*group.name)
                && (group.accepted < before.accepted || group.drain_reset < before.drain_reset)
            {
                r.scrape_errors.push(format!(
                    "pod {}: accepted {} then {}, drain resets {} then {}",
                    group.name,
                    before.accepted,
                    group.accepted,
                    before.drain_reset,
                    group.drain_reset
                ));
            }
            r.groups.insert(group.name.to_string(), group.clone());
        }
    }

    fn publish(&mut self, stats: &Counters, gauges: &[u64; Gauge::ALL.len()]) {
        let mut r = self.0.borrow_mut();
        r.stats = stats.clone();
        r.gauges = *gauges;
        // A pipe that holds bytes is leased (the pool keeps only empty ones): the gauge counts it.
        let holding = self
            .1
            .borrow()
            .pipes
            .iter()
            .filter(|p| !p.closed && !p.data.is_empty())
            .count() as u64;
        let leased = gauges[Gauge::PipesLeased as usize];
        if leased < holding {
            r.scrape_errors.push(format!(
                "pipes_leased {leased} while {holding} pipes hold bytes"
            ));
        }
        // As a scraper sees the engine's metrics: by exported name, with type and help; a
        // counter must never go down between scrapes.
        for gauge in Gauge::ALL {
            let value = gauges[gauge as usize];
            let metric = Scraped {
                counter: gauge.is_counter(),
                help: gauge.help(),
                value,
            };
            if let Some(before) = r.scraped.insert(gauge.name(), metric)
                && metric.counter
                && value < before.value
            {
                r.scrape_errors
                    .push(format!("{}: {} then {value}", gauge.name(), before.value));
            }
        }
    }
}

struct SimLog(Rc<RefCell<Reports>>, Arc<AtomicU64>, u32);

impl AccessLog for SimLog {
    fn sampled(&mut self) -> bool {
        let mut reports = self.0.borrow_mut();
        reports.offered += 1;
        let keep = reports.offered.is_multiple_of(u64::from(self.2));
        if !keep {
            reports.unsampled += 1;
        }
        keep
    }
    fn send(&mut self, finished: Finished) {
        let mut reports = self.0.borrow_mut();
        reports.finished.push(finished);
        reports
            .finished_at
            .push(self.1.load(std::sync::atomic::Ordering::Relaxed));
    }
}

/// The capture listener (plain REDIRECT), a header-mode listener, and an outer listener whose
/// cluster is an internal listener that restores the destination from shared filter state.
fn config(scenario: &EScenario) -> Config {
    let yaml = config_yaml(scenario);
    Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("engine scenario config: {e}\n{yaml}"))
}

fn config_yaml(scenario: &EScenario) -> String {
    config_yaml_shaped(scenario, scenario.push_at_ms.is_some(), true)
}

/// The config a control plane pushes (push scenarios), made as the xDS client makes it: the
/// pushed protos (the `spread` cluster, now EDS, with its moved endpoints, the `fresh` listener)
/// composed (the EDS cluster resolved with its assignment) and
/// translated into the bootstrap's document beside its own resources (here: the harness's
/// config without `doomed` and without the old `spread`), and judged by the one validator.
fn pushed(scenario: &EScenario) -> Config {
    use origdst_xds::compose::{Pushed, compose};
    // (The bootstrap alone does not validate: its `spread` listener waits for the pushed cluster.)
    let bootstrap = config_yaml_shaped(scenario, false, false);
    let statics = config(scenario)
        .clusters
        .iter()
        .map(|c| c.name.clone())
        .filter(|name| name != "spread")
        .collect();
    let pushed = Pushed {
        clusters: vec![super::push::spread_cluster()],
        assignments: [(
            super::push::SPREAD_SERVICE.to_string(),
            super::push::spread_assignment(),
        )]
        .into(),
        listeners: vec![super::push::fresh_listener()],
    };
    assert_eq!(
        origdst_xds::compose::endpoint_names(&pushed.clusters),
        [super::push::SPREAD_SERVICE]
    );
    let composed = compose(&pushed, &statics, &[], &[]).unwrap_or_else(|e| panic!("compose: {e}"));
    assert!(
        composed.warming_clusters.is_empty() && composed.warming_listeners.is_empty(),
        "nothing of the push waits"
    );
    let before = config(scenario);
    let (config, _) = origdst_xds::translate::judge(
        &bootstrap,
        &composed.clusters,
        &composed.listeners,
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("the push: {e}"));
    // The supervisor's diff stops `doomed` and starts `fresh`, and keeps the rest.
    assert_eq!(
        origdst_engine::listeners::diff(&before, &config),
        (vec!["doomed".to_string()], vec!["fresh".to_string()])
    );
    config
}

/// The harness's config, with or without the `doomed` listener and the `spread` cluster (the
/// push's bootstrap has neither: the push removes one and brings the other anew).
fn config_yaml_shaped(scenario: &EScenario, doomed: bool, spread_cluster: bool) -> String {
    let (pipes, records, conn_limit) = (scenario.pipes, scenario.records, scenario.conn_limit);
    const TCP_PROXY: &str =
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
    const SET_STATE: &str =
        "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config";
    let yaml = format!(
        "origdst: {{ data_path: {data_path}, pipe_budget_bytes: {budget}, buffer_size_bytes: {buffer}, http_head_timeout: 1s, http_head_max_bytes: {head_max}, drain_timeout: 2s, connections_per_shard_max: {limit}, redirect_records: {records} }}
static_resources:
  listeners:
  - name: capture
    traffic_direction: OUTBOUND
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15001 }} }}
    listener_filters: [ {{ name: envoy.filters.listener.original_dst }} ]
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: out, cluster: pass, idle_timeout: 5s, max_connect_attempts: 2 }}
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
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: inner, cluster: pass, idle_timeout: 5s, max_connect_attempts: 3 }}
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
  - name: spread
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15006 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: spread, cluster: spread, idle_timeout: 5s }}
  - name: tproxy
    transparent: true
    traffic_direction: OUTBOUND
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15007 }} }}
    listener_filters: [ {{ name: envoy.filters.listener.original_dst }} ]
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: tproxy, cluster: pass, idle_timeout: 5s, max_connect_attempts: 2 }}
{doomed}  clusters:
{spread}  - {{ name: pass, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED, connect_timeout: 1s }}
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
        doomed = if doomed {
            format!("  - name: doomed
    traffic_direction: OUTBOUND
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: {DOOMED_PORT} }} }}
    listener_filters: [ {{ name: envoy.filters.listener.original_dst }} ]
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: doomed, cluster: pass, idle_timeout: 5s, max_connect_attempts: 2 }}
")
        } else {
            String::new()
        },
        spread = if spread_cluster {
            "  - name: spread
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: spread
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 10.0.2.1, port_value: 9000 } } }
        - endpoint: { address: { socket_address: { address: 10.0.2.2, port_value: 9000 } } }
        - endpoint: { address: { socket_address: { address: 10.0.2.3, port_value: 9000 } } }
"
        } else {
            ""
        },
        data_path = if scenario.relay { "kernel-sockmap" } else { "uring-splice" },
        budget = if pipes { 4 * 1024 * 1024 } else { 0 },
        buffer = scenario.buffer_bytes,
        limit = conn_limit.unwrap_or(10_000),
        head_max = scenario.head_max,
        // Small internal-listener queues wrap often (a queue's ring arithmetic is exercised),
        // large ones rarely fill.
        queue_kb = if pipes { 1 } else { 64 },
    );
    yaml
}

/// `config` with its listeners in the reverse order (the same listeners, each at another
/// position): what a reload that moves listeners hands the shard.
fn reversed(config: &Config, scenario: &EScenario) -> Config {
    let yaml = config_yaml(scenario);
    let (head, rest) = yaml
        .split_once("  listeners:\n")
        .expect("the listeners section");
    let (listeners, tail) = rest
        .split_once("  clusters:\n")
        .expect("the clusters section");
    let mut items: Vec<String> = Vec::new();
    for line in listeners.lines() {
        if line.starts_with("  - name: ") || items.is_empty() {
            items.push(String::new());
        }
        let item = items.last_mut().expect("an item");
        item.push_str(line);
        item.push('\n');
    }
    items.reverse();
    let yaml = format!("{head}  listeners:\n{}  clusters:\n{tail}", items.concat());
    let reversed = Config::from_yaml(&yaml)
        .unwrap_or_else(|e| panic!("reversed scenario config: {e}\n{yaml}"));
    assert_eq!(reversed.listeners.len(), config.listeners.len());
    assert_ne!(
        reversed.listeners[0].name, config.listeners[0].name,
        "the order changed"
    );
    reversed
}

/// What a run produced.
pub struct EReport {
    /// Each flow's (client, server) ledgers.
    pub sides: Vec<(Side, Side)>,
    /// The shard's last published counters.
    pub stats: Counters,
    /// The shard's last published gauges.
    pub gauges: [u64; Gauge::ALL.len()],
    /// Every finished connection the access log kept (all failures, the sampled completions).
    pub finished: Vec<Finished>,
    /// Completed connections the access log's sampling left out.
    pub unsampled: u64,
    /// The engine's metrics as a scrape shows them, by exported name.
    pub scraped: std::collections::BTreeMap<&'static str, Scraped>,
    /// Counters that went down between two publications.
    pub scrape_errors: Vec<String>,
    /// Descriptors still open after the shard stopped.
    pub open_fds: usize,
    /// The shard's error, if it failed.
    pub error: Option<String>,
    /// Connect attempts the proxy made, by destination.
    pub connects: std::collections::BTreeMap<SocketAddr, u32>,
    /// When each finished connection was logged (virtual ns), by index in `finished`.
    pub finished_at: Vec<u64>,
    /// Pipes the kernel made during the run.
    pub pipes_created: usize,
    /// Pipes closed while they still held bytes.
    pub pipes_closed_holding_bytes: u64,
    /// Bytes the in-kernel relay could not send because the FIN was passed on before them.
    pub relay_bytes_lost: u64,
    /// Connect polls the kernel refused, by destination.
    pub refused_connect_polls: std::collections::BTreeMap<SocketAddr, u32>,
    /// Clients whose head poll the kernel refused.
    pub refused_head_polls: std::collections::BTreeSet<SocketAddr>,
    /// How often each kind of kernel fault fired.
    pub fired: std::collections::BTreeMap<&'static str, u64>,
    /// The proxy's own upstream sockets still recorded after the drain (loop detection's table).
    pub own_upstreams_left: usize,
    /// The shard's log lines.
    pub logs: LogLines,
    /// Connections still in a listener's backlog when the shard stopped (never accepted: a
    /// client that reset there just before the drain).
    pub never_accepted: usize,
    /// Each pod's last published counters, by name.
    pub groups: std::collections::BTreeMap<String, GroupReport>,
    /// The namespaces the proxy dialled each destination from (`None`: its own).
    pub connect_netns:
        std::collections::BTreeMap<SocketAddr, std::collections::BTreeSet<Option<u32>>>,
}

/// Runs the production shard over the simulated kernel.
pub fn run(scenario: &EScenario) -> EReport {
    let net = Rc::new(RefCell::new(Net::new(
        PROXY_IP,
        scenario.fd_limit,
        scenario.window,
    )));
    net.borrow_mut().require_records = scenario.records;
    net.borrow_mut().tproxy_listener = TPROXY_LISTENER;
    for endpoint in SPREAD_ENDPOINTS.into_iter().chain(PUSHED_ENDPOINTS) {
        net.borrow_mut().servers.insert(endpoint, VecDeque::new());
    }
    for flow in &scenario.flows {
        if flow.route == ERoute::TproxyLoop {
            net.borrow_mut().recaptured.push(dest(flow));
        }
        match flow.fault {
            EFault::Refused => {}
            EFault::Unreachable => net.borrow_mut().unreachable.push(dest(flow)),
            EFault::SocketFails => net.borrow_mut().socket_fails.push(dest(flow)),
            EFault::BlackHole | EFault::ClientGivesUp(_) => {
                net.borrow_mut().black_holes.push(dest(flow));
            }
            _ => {
                net.borrow_mut().servers.insert(dest(flow), VecDeque::new());
            }
        }
    }
    let state = Rc::new(RefCell::new(vec![
        (Side::new(), Side::new());
        scenario.flows.len()
    ]));
    let clock = Arc::new(AtomicU64::new(0));
    let pod_state = Rc::new(RefCell::new(vec![(None, false); scenario.pods.len()]));
    let control_slot = Rc::new(std::cell::OnceCell::new());
    let fresh_listener = Rc::new(std::cell::Cell::new(None));
    let workload = Flows {
        drain_at: scenario.drain_at_ms.map(|ms| ms * 1_000_000),
        flows: scenario.flows.clone(),
        state: Rc::clone(&state),
        sinks: Vec::new(),
        clock: Arc::clone(&clock),
        pods: scenario.pods.clone(),
        pod_state: Rc::clone(&pod_state),
        control: Rc::clone(&control_slot),
        reload: scenario.reload_at_ms.map(|ms| {
            (
                ms * 1_000_000,
                Arc::new(reversed(&config(scenario), scenario)),
            )
        }),
        push: scenario.push_at_ms.map(|ms| super::workload::Push {
            at: ms * 1_000_000,
            before: Arc::new(config(scenario)),
            config: Arc::new(pushed(scenario)),
        }),
        fresh_listener: Rc::clone(&fresh_listener),
    };
    let mut kernel = SimKernel::new(
        Rc::clone(&net),
        Box::new(workload),
        scenario.seed,
        scenario.faults,
        Duration::from_secs(120),
    );
    let _ = control_slot.set(kernel.control());
    let reports = Rc::new(RefCell::new(Reports::default()));
    let config = Arc::new(config(scenario));
    // Each bound socket serves the listener whose address names its port (the internal listener
    // among them has none: indices in the config and in PORTS differ).
    // A push scenario's `doomed` listener is bound right after the others (DOOMED_LISTENER).
    let doomed = scenario.push_at_ms.map(|_| DOOMED_PORT);
    let listening: Vec<Listening<_>> = PORTS
        .into_iter()
        .chain(doomed)
        .map(|port| {
            let config_index = config
                .listeners
                .iter()
                .position(|l| {
                    matches!(&l.address, ListenerAddress::Socket(addrs)
                        if addrs.iter().any(|a| a.port() == port))
                })
                .expect("every port of the harness is a listener's");
            Listening {
                socket: kernel.listen(SocketAddr::new(PROXY_IP, port)),
                config_index,
                // Each a listener group, as the runtime's are (counted per listener).
                group: Some(origdst_engine::listeners::GroupId(listener_group(port))),
            }
        })
        .collect();
    let own_upstreams = Arc::new(OwnUpstreams::new());
    let setup = ShardSetup {
        id: 0,
        data_path: config.knobs.data_path,
        me: Arc::new(SelfAddrs {
            listeners: PORTS
                .into_iter()
                .chain(
                    scenario
                        .push_at_ms
                        .map(|_| [DOOMED_PORT, FRESH_PORT])
                        .into_iter()
                        .flatten(),
                )
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
        reporter: Box::new(SimReporter(Rc::clone(&reports), Rc::clone(&net))),
        pipe_budget_bytes: config.knobs.pipe_budget_bytes,
        fallback_buffers: scenario.copy_buffers,
        own_upstreams: Arc::clone(&own_upstreams),
        access_log: Some(Box::new(SimLog(
            Rc::clone(&reports),
            Arc::clone(&clock),
            scenario.sample_every,
        ))),
        config,
    };
    let lines = Arc::new(Mutex::new(LogLines::default()));
    let recorder = Recorder {
        clock: Arc::clone(&clock),
        lines: Arc::clone(&lines),
    };
    let error = tracing::subscriber::with_default(recorder, || {
        match Shard::new(setup, kernel, listening) {
            Ok(shard) => shard.run().err().map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        }
    });
    let logs = std::mem::take(&mut *lines.lock().expect("log lines"));
    // The world outside goes on for a moment after the shard stopped: clients and servers read
    // what its last turns delivered (an early drain's resets among them).
    let mut after = Flows {
        drain_at: None,
        flows: scenario.flows.clone(),
        state: Rc::clone(&state),
        sinks: Vec::new(),
        clock: Arc::new(AtomicU64::new(0)),
        pods: Vec::new(),
        pod_state: Rc::clone(&pod_state),
        control: Rc::new(std::cell::OnceCell::new()),
        reload: None,
        push: None,
        fresh_listener,
    };
    let end = clock.load(std::sync::atomic::Ordering::Relaxed);
    for tick in 1..=10_000 {
        let now = end + tick * 1_000_000;
        after.step(&mut net.borrow_mut(), now);
        if after.done(&net.borrow(), now) {
            break;
        }
    }
    let reports = Rc::try_unwrap(reports)
        .map(RefCell::into_inner)
        .unwrap_or_else(|r| std::mem::take(&mut *r.borrow_mut()));
    let open_fds = net.borrow().open_fds();
    let connects = net.borrow().connects.clone();
    let never_accepted = net.borrow().never_accepted
        + net
            .borrow()
            .listeners
            .iter()
            .flat_map(|l| l.backlog.iter())
            .filter(|&&ep| !net.borrow().from_proxy(ep))
            .count();
    let sides = state.borrow().clone();
    EReport {
        sides,
        stats: reports.stats,
        gauges: reports.gauges,
        finished: reports.finished,
        unsampled: reports.unsampled,
        scraped: reports.scraped,
        scrape_errors: reports.scrape_errors,
        finished_at: reports.finished_at,
        fired: net.borrow().fired.clone(),
        pipes_created: net.borrow().pipes.len(),
        pipes_closed_holding_bytes: net.borrow().pipes_closed_holding_bytes,
        relay_bytes_lost: net.borrow().relay_bytes_lost,
        refused_connect_polls: net.borrow().refused_connect_polls.clone(),
        refused_head_polls: net.borrow().refused_head_polls.clone(),
        own_upstreams_left: own_upstreams.recorded(),
        logs,
        open_fds,
        error,
        connects,
        never_accepted,
        groups: reports.groups,
        connect_netns: net.borrow().connect_netns.clone(),
    }
}
