//! Running origdst as an operator does: `/metrics` scraped before and after a scripted workload,
//! the access log, `/ready` through a drain, and a SIGHUP reload (accepted, and rejected twice).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use origdst_netns_tests::admin::{self, Metrics};
use origdst_netns_tests::config::ConfigFile;
use origdst_netns_tests::origdst_bin;
use origdst_netns_tests::proxy::Proxy;
use origdst_netns_tests::server::{Server, ask_greeting, ask_local};
use origdst_netns_tests::topology::{
    Gateway, PROXY_PORT, ROUTER_CLIENT_SIDE_V4, ROUTER_SERVER_SIDE_V4, SERVER_V4, addr,
};

const TIMEOUT: Duration = Duration::from_secs(10);
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// Every refusal reason origdst counts: each must be exported, moving or not.
const REFUSAL_REASONS: [&str; 17] = [
    "no_original_dst",
    "orig_dst_query_failed",
    "destination_is_listener",
    "own_mark",
    "own_upstream",
    "invalid_metadata",
    "no_filter_chain_match",
    "no_healthy_upstream",
    "original_dst_host_invalid",
    "http_head_too_large",
    "http_head_timeout",
    "http_head_invalid",
    "redirect_record_query_failed",
    "original_dst_host_duplicate",
    "destination_denied",
    "internal_hop_limit",
    "overflow",
];

/// One capture listener whose chains pass 8080 through, black-hole 8081, and match nothing else;
/// and a listener of origdst's own on 8080.
fn chained_config(knobs: &str, hole_port: u16) -> String {
    format!(
        "origdst: {{ {knobs} }}
static_resources:
  listeners:
  - name: virtualOutbound
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: {PROXY_PORT} }} }}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst }}
    filter_chains:
    - filter_chain_match: {{ destination_port: 8080 }}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: pass, cluster: PassthroughCluster }}
    # Not redirected (dialled directly): the chain matches, the restored destination is missing.
    - filter_chain_match: {{ destination_port: {PROXY_PORT} }}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: direct, cluster: PassthroughCluster }}
    - filter_chain_match: {{ destination_port: {hole_port} }}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: hole, cluster: BlackHoleCluster }}
  # Something of origdst's own on 8080, so a redirect to this host's 8080 is a loop.
  - name: sideDoor
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 8080 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: side, cluster: BlackHoleCluster }}
  clusters:
  - {{ name: PassthroughCluster, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED, connect_timeout: 5s }}
  - {{ name: BlackHoleCluster, type: STATIC }}
"
    )
}

/// Connects to `dst` from the client and reads until EOF: Ok(bytes) or the error kind (a reset).
/// `chained_config`'s capture listener whose cluster enters two internal listeners that pass
/// connections to each other (a → b → a).
fn internal_cycle(access: &str) -> String {
    let cluster = |name: &str, to: &str| {
        format!(
            "  - {{ name: {name}, type: STATIC, load_assignment: {{ cluster_name: {name}, endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ envoy_internal_address: {{ server_listener_name: {to} }} }} }} }} ] }} ] }} }}\n"
        )
    };
    let listener = |name: &str, cluster: &str| {
        format!(
            "  - name: {name}\n    address: {{ envoy_internal_address: {{ server_listener_name: {name} }} }}\n    filter_chains: [ {{ filters: [ {{ name: envoy.filters.network.tcp_proxy, typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: {name}, cluster: {cluster} }} }} ] }} ]\n"
        )
    };
    let base = chained_config(&format!("shards: 2, {access}"), 8082);
    let with_listeners = base.replacen(
        "  clusters:\n",
        &format!(
            "{}{}  clusters:\n{}{}",
            listener("a", "to_b"),
            listener("b", "to_a"),
            cluster("to_a", "a"),
            cluster("to_b", "b")
        ),
        1,
    );
    format!("{with_listeners}bootstrap_extensions:\n- name: envoy.bootstrap.internal_listener\n")
}

#[test]
fn a_sighup_onto_a_pathological_file_never_delays_the_drain() {
    let gw = Gateway::new("hupdeep");
    let config = ConfigFile::default_with("hupdeep", &[]);
    let proxy = Proxy::start(origdst_bin!(), &gw.router, &["--config", config.arg()]);
    // 400 kB of nested flow sequences (77 s of parser CPU before the limits), then SIGTERM at once.
    config.rewrite(&format!(
        "static_resources:\n  listeners: {}{}\n",
        "[".repeat(200_000),
        "]".repeat(200_000)
    ));
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(20));
    let started = Instant::now();
    let exit = proxy.stop_clean();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the drain took {:?}",
        started.elapsed()
    );
    assert!(
        exit.log.contains("more than the limit of 64") || exit.log.contains("SIGHUP"),
        "{}",
        exit.log
    );
}

#[test]
fn idle_admin_connections_hold_no_thread_and_the_data_path_keeps_its_descriptors() {
    let gw = Gateway::new("adminidle");
    let proxy = Proxy::start(origdst_bin!(), &gw.router, &["--shards", "1"]);
    let tasks = || {
        std::fs::read_dir(format!("/proc/{}/task", proxy.pid()))
            .expect("proc tasks")
            .count()
    };
    let threads = tasks();
    let fds = proxy.open_fds();
    // A hundred idle clients of the admin endpoint (loopback inside the router namespace).
    let admin_addr: SocketAddr = admin::ADMIN.parse().unwrap();
    let idle: Vec<TcpStream> = gw.router.run(move || {
        (0..100)
            .map(|_| TcpStream::connect(admin_addr).expect("connect admin"))
            .collect()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tasks(), threads, "a thread per admin connection");
    assert!(
        proxy.open_fds() <= fds + 32,
        "{} descriptors for idle admin clients",
        proxy.open_fds() - fds
    );
    // A scraper is still answered, and says how many it closed to make room.
    let metrics = admin::scrape(&gw.router);
    assert!(metrics.value("origdst_admin_connections_evicted_total") >= 68.0);
    drop(idle);
    drop(proxy);
}

fn dial(gw: &Gateway, dst: SocketAddr) -> Result<Vec<u8>, ErrorKind> {
    gw.client.run(move || {
        let mut stream = TcpStream::connect(dst).map_err(|e| e.kind())?;
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut got = Vec::new();
        stream
            .read_to_end(&mut got)
            .map(|_| got)
            .map_err(|e| e.kind())
    })
}

fn refused(metrics: &Metrics, reason: &str) -> f64 {
    metrics.value(&format!(
        "origdst_downstream_cx_refused_total{{reason=\"{reason}\"}}"
    ))
}

/// Waits (bounded) until `series` reaches `want` in a fresh scrape.
fn settle(gw: &Gateway, series: &str, want: f64) -> Metrics {
    let start = Instant::now();
    loop {
        let metrics = admin::scrape(&gw.router);
        if metrics.get(series) == Some(want) || start.elapsed() > TIMEOUT {
            return metrics;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_move_as_a_scripted_workload_says_and_the_access_log_has_a_line_each() {
    let gw = Gateway::new("metrics");
    let pass = addr(SERVER_V4[0], 8080);
    let (_server, seen) = Server::echo_local(&gw.server, &[pass]);
    let held_at = addr(SERVER_V4[1], 8080);
    // A server that keeps its connection open until the client closes.
    let holder = Arc::new(|mut stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    });
    let _holder = Server::start(&gw.server, &[held_at], holder);
    let log_path = std::env::temp_dir().join(format!("origdst-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log_path);
    let config = ConfigFile::new(
        "metrics",
        &chained_config(
            &format!(
                "shards: 1, connections_per_shard_max: 1, access_log: {{ path: {} }}",
                log_path.display()
            ),
            8081,
        ),
    );
    let proxy = Proxy::start(origdst_bin!(), &gw.router, &["--config", config.arg()]);

    let before = admin::scrape(&gw.router);
    assert_eq!(before.value("origdst_downstream_cx_total"), 0.0);
    assert_eq!(before.value("origdst_downstream_cx_active"), 0.0);
    for reason in REFUSAL_REASONS {
        assert_eq!(refused(&before, reason), 0.0, "{reason}");
    }
    assert_eq!(
        before.value(
            "origdst_server_info{version=\"0.1.0\",backend=\"io_uring\",data_path=\"uring-splice\"}"
        ),
        1.0
    );
    assert_eq!(before.value("origdst_server_shards"), 1.0);

    // The workload: three relayed connections, one to the black hole, one no chain matches, one
    // straight at the proxy port (not redirected), and one past the connection limit.
    for _ in 0..3 {
        assert_eq!(ask_local(&gw.client, pass), pass.to_string());
        seen.recv_timeout(TIMEOUT).expect("the server saw it");
    }
    assert_eq!(
        dial(&gw, addr(SERVER_V4[0], 8081)),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(
        dial(&gw, addr(SERVER_V4[0], 8082)),
        Err(ErrorKind::ConnectionReset)
    );
    assert_eq!(
        dial(&gw, addr(ROUTER_CLIENT_SIDE_V4, PROXY_PORT)),
        Err(ErrorKind::ConnectionReset)
    );
    // A redirect whose original destination is one of origdst's own listeners (a loop by rules):
    // the router's own address, port 8080, where `sideDoor` listens.
    let router_own = addr(ROUTER_SERVER_SIDE_V4, 8080);
    let rule = format!(
        "-t nat -I PREROUTING 1 -i rc -p tcp -d {ROUTER_SERVER_SIDE_V4} --dport 8080 -j REDIRECT --to-ports {PROXY_PORT}"
    );
    gw.router
        .exec("iptables", &rule.split_whitespace().collect::<Vec<_>>());
    assert_eq!(dial(&gw, router_own), Err(ErrorKind::ConnectionReset));
    let held = gw
        .client
        .run(move || TcpStream::connect(held_at).expect("connect"));
    settle(&gw, "origdst_downstream_cx_active", 1.0);
    assert_eq!(
        dial(&gw, addr(SERVER_V4[0], 8080)),
        Err(ErrorKind::ConnectionReset),
        "past connections_per_shard_max: 1"
    );
    drop(held);
    settle(&gw, "origdst_downstream_cx_active", 0.0);
    // The writer thread counts a line once it has it; the last one may trail the close.
    let after = settle(&gw, "origdst_access_log_written_total", 9.0);

    let bytes_down = 3.0 * pass.to_string().len() as f64;
    for (series, want) in [
        ("origdst_downstream_cx_total", 9.0),
        ("origdst_downstream_cx_destroy_total", 9.0),
        ("origdst_downstream_cx_active", 0.0),
        ("origdst_completed_total", 4.0),
        ("origdst_upstream_cx_total", 4.0),
        ("origdst_downstream_cx_tx_bytes_total", bytes_down),
        ("origdst_downstream_cx_rx_bytes_total", 0.0),
        ("origdst_upstream_cx_none_healthy_total", 1.0),
        ("origdst_no_filter_chain_match_total", 1.0),
        ("origdst_refused_no_original_dst_total", 1.0),
        ("origdst_downstream_cx_overflow_total", 1.0),
        // Connections relayed to a restored destination (refusals are not resolutions).
        ("origdst_orig_dst_total{provenance=\"sockopt_v4\"}", 4.0),
        ("origdst_refused_destination_is_listener_total", 1.0),
        ("origdst_shard_connections_active{shard=\"0\"}", 0.0),
        ("origdst_access_log_written_total", 9.0),
        ("origdst_access_log_dropped_total", 0.0),
        ("origdst_config_generation", 1.0),
    ] {
        assert_eq!(after.value(series), want, "{series}:\n{}", after.0);
    }
    for (reason, want) in [
        ("no_healthy_upstream", 1.0),
        ("no_filter_chain_match", 1.0),
        ("no_original_dst", 1.0),
        ("overflow", 1.0),
        ("destination_is_listener", 1.0),
    ] {
        assert_eq!(refused(&after, reason), want, "{reason}");
    }
    for reason in REFUSAL_REASONS {
        // Exported whether or not it moved; the ones this workload cannot cause stay 0.
        let value = refused(&after, reason);
        assert!(value <= 1.0, "{reason} = {value}");
    }
    let excerpt: Vec<&str> = after
        .0
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && [
                    "downstream_cx_total",
                    "downstream_cx_active",
                    "tx_bytes",
                    "upstream_cx_connect_fail",
                    "refused_total{",
                    "orig_dst_total{",
                    "server_info",
                    "shard_connections_active",
                    "pipes_leased",
                    "config_generation",
                    "access_log_written",
                ]
                .iter()
                .any(|k| l.contains(k))
        })
        .collect();
    println!(
        "/metrics after the workload (excerpt):\n{}",
        excerpt.join("\n")
    );
    let (status, stats) = admin::get(&gw.router, "/stats");
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("/stats is JSON");
    assert_eq!(stats["counters"]["downstream_cx_total"], 9);
    assert_eq!(stats["server"]["backend"], "io_uring");
    let exit = proxy.stop_clean();

    // One line per accepted connection, the one refused at the connection limit included.
    let log = std::fs::read_to_string(&log_path).expect("the access log exists");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 9, "{log}");
    let completed: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["termination_reason"] == "completed")
        .collect();
    assert_eq!(completed.len(), 4, "{log}");
    let first = completed[0];
    assert_eq!(first["original_destination"], pass.to_string());
    assert_eq!(first["original_destination_provenance"], "sockopt_v4");
    assert_eq!(first["upstream_host"], pass.to_string());
    assert_eq!(first["listener"], "virtualOutbound");
    assert_eq!(first["bytes_sent"], pass.to_string().len());
    assert_eq!(first["bytes_received"], 0);
    assert!(first["start_time"].as_str().unwrap().ends_with('Z'));
    let reasons: Vec<&str> = lines
        .iter()
        .map(|l| l["termination_reason"].as_str().unwrap())
        .collect();
    for reason in [
        "no_healthy_upstream",
        "no_filter_chain_match",
        "no_original_dst",
        "destination_is_listener",
        "overflow",
    ] {
        assert!(reasons.contains(&reason), "{reason} not in {reasons:?}");
    }
    for line in log
        .lines()
        .filter(|l| l.contains("\"completed\"") || l.contains("no_healthy_upstream"))
    {
        println!("access log line: {line}");
    }
    assert_eq!(exit.stat("downstream_cx_total"), 9);
    let _ = std::fs::remove_file(&log_path);
}

#[test]
fn ready_turns_503_while_draining_and_the_open_connection_still_finishes() {
    let gw = Gateway::new("ready");
    let held_at = addr(SERVER_V4[0], 8080);
    let echo = Arc::new(|mut stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 || stream.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    let _server = Server::start(&gw.server, &[held_at], echo);
    let config = ConfigFile::default_with("ready", &[("drain_timeout: 30s", "drain_timeout: 10s")]);
    let proxy = Proxy::start(origdst_bin!(), &gw.router, &["--config", config.arg()]);
    assert_eq!(admin::get(&gw.router, "/ready"), (200, "ready\n".into()));
    assert_eq!(admin::get(&gw.router, "/healthz").0, 200);
    let mut held = gw.client.run(move || {
        let stream = TcpStream::connect(held_at).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream
    });
    proxy.signal_term();
    let start = Instant::now();
    while admin::get(&gw.router, "/ready").0 != 503 {
        assert!(start.elapsed() < TIMEOUT, "/ready never turned 503");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(admin::get(&gw.router, "/ready").1, "draining\n");
    assert_eq!(
        admin::scrape(&gw.router).value("origdst_server_draining"),
        1.0
    );
    // The listening sockets close (the kernel drops each once its accept request is cancelled,
    // a few milliseconds): from then on new connections are refused, the open one still works.
    let closing = Instant::now();
    while String::from_utf8_lossy(&gw.router.exec("ss", &["-Hltn", "sport = :15001"]).stdout)
        .contains("15001")
    {
        assert!(
            closing.elapsed() < TIMEOUT,
            "the capture listeners never closed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "listeners closed {:?} after /ready turned 503",
        closing.elapsed()
    );
    let refused = gw
        .client
        .run(move || TcpStream::connect_timeout(&held_at, Duration::from_secs(2)).map(drop));
    assert!(
        refused.is_err(),
        "a new connection was accepted while draining: {}",
        String::from_utf8_lossy(&gw.router.exec("ss", &["-ltnp"]).stdout)
    );
    held.write_all(b"still here").expect("write while draining");
    let mut echo = [0u8; 10];
    held.read_exact(&mut echo).expect("echo while draining");
    assert_eq!(&echo, b"still here");
    drop(held);
    let exit = proxy.wait_exit(TIMEOUT);
    assert!(exit.status.success(), "{}", exit.log);
    assert_eq!(exit.stat("completed"), 1);
}

#[test]
fn sighup_reload_applies_to_new_connections_keeps_open_ones_and_rejects_bad_configs() {
    let gw = Gateway::new("reload");
    let pass = addr(SERVER_V4[0], 8080);
    let other = addr(SERVER_V4[0], 8081);
    // Greets with the address it was dialled on, then echoes; a thread per connection, since
    // one stays open across the reload.
    let _server = Server::greet_and_echo(&gw.server, &[pass, other]);
    // An access log that samples nothing: only failures and refusals are written.
    let log_path = std::env::temp_dir().join(format!("origdst-reload-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log_path);
    let access = format!(
        "access_log: {{ path: {}, sample: 0.0 }}",
        log_path.display()
    );
    // Generation 1: 8081 is the black hole.
    let config = ConfigFile::new(
        "reload",
        &chained_config(&format!("shards: 2, {access}"), 8081),
    );
    let mut proxy = Proxy::start(origdst_bin!(), &gw.router, &["--config", config.arg()]);
    assert_eq!(dial(&gw, other), Err(ErrorKind::ConnectionReset));
    let mut open = gw.client.run(move || {
        let stream = TcpStream::connect(pass).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream
    });
    let mut greeting = vec![0u8; pass.to_string().len()];
    open.read_exact(&mut greeting).expect("greeting");

    // Generation 2: 8082 is the black hole, so 8081 matches no chain at all.
    config.rewrite(&chained_config(&format!("shards: 2, {access}"), 8082));
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    proxy.wait_for_log("config reloaded", TIMEOUT);
    let metrics = settle(&gw, "origdst_config_generation", 2.0);
    assert_eq!(metrics.value("origdst_config_generation"), 2.0);
    assert_eq!(
        metrics.value("origdst_config_reloads_total{result=\"accepted\"}"),
        1.0
    );
    let no_chain_before = metrics.value("origdst_no_filter_chain_match_total");
    assert_eq!(dial(&gw, other), Err(ErrorKind::ConnectionReset));
    let metrics = admin::scrape(&gw.router);
    assert_eq!(
        metrics.value("origdst_no_filter_chain_match_total"),
        no_chain_before + 1.0,
        "the new connection was routed by the new config"
    );
    // The dump in Envoy's shape: version 2, the new chain's match among the static listeners.
    let (_, dump) = admin::get(&gw.router, "/config_dump");
    let dump: serde_json::Value = serde_json::from_str(&dump).expect("a JSON config dump");
    let listeners = &dump["configs"][1];
    assert_eq!(
        listeners["@type"],
        "type.googleapis.com/envoy.admin.v3.ListenersConfigDump"
    );
    assert_eq!(listeners["version_info"], "2", "{dump}");
    let text = listeners["static_listeners"].to_string();
    assert!(text.contains("\"destination_port\":8082"), "{text}");
    let (_, yaml) = admin::get(&gw.router, "/config_dump?format=yaml");
    assert!(
        yaml.contains("generation 2") && yaml.contains("destination_port: 8082"),
        "{yaml}"
    );
    // The connection opened under generation 1 still relays.
    open.write_all(b"across the reload").unwrap();
    let mut echo = [0u8; 17];
    open.read_exact(&mut echo).expect("echo after reload");
    assert_eq!(&echo, b"across the reload");

    // An invalid config is rejected with the field named; generation 2 keeps running.
    config.rewrite(&chained_config(
        &format!("shards: 2, pipe_size_bytes: 1000, {access}"),
        8082,
    ));
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    proxy.wait_for_log("origdst.pipe_size_bytes", TIMEOUT);
    // A change that needs a restart is rejected too.
    config.rewrite(&chained_config(&format!("shards: 3, {access}"), 8082));
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    proxy.wait_for_log("origdst.shards changed: that needs a restart", TIMEOUT);
    // A cycle of internal listeners (it passed the reload, then aborted the process on the first
    // connection) is rejected naming the chain.
    config.rewrite(&internal_cycle(&access));
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    proxy.wait_for_log("internal listeners form a cycle: a → b → a", TIMEOUT);
    // A new listener on an address something else holds: its bind fails, nothing changes.
    let squatter = gw
        .router
        .run(|| std::net::TcpListener::bind("0.0.0.0:15009").expect("bind"));
    let squatted = format!(
        "  - name: squatted\n    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15009 }} }}\n    filter_chains: [ {{ filters: [ {{ name: envoy.filters.network.tcp_proxy, typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: s, cluster: BlackHoleCluster }} }} ] }} ]\n"
    );
    config.rewrite(
        &chained_config(&format!("shards: 2, {access}"), 8082).replacen(
            "  clusters:\n",
            &format!("{squatted}  clusters:\n"),
            1,
        ),
    );
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    proxy.wait_for_log(
        "listener \"squatted\": cannot listen on 0.0.0.0:15009",
        TIMEOUT,
    );
    drop(squatter);
    let metrics = settle(
        &gw,
        "origdst_config_reloads_total{result=\"rejected\"}",
        4.0,
    );
    assert_eq!(
        metrics.value("origdst_config_reloads_total{result=\"rejected\"}"),
        4.0
    );
    assert_eq!(metrics.value("origdst_config_generation"), 2.0);
    assert!(
        proxy
            .log()
            .contains("config reload rejected, the running config is kept")
    );
    let greeting = gw.client.run(move || {
        let mut stream = TcpStream::connect(pass).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut got = vec![0u8; pass.to_string().len()];
        stream.read_exact(&mut got).expect("greeting");
        String::from_utf8(got).unwrap()
    });
    assert_eq!(
        greeting,
        pass.to_string(),
        "still relaying under generation 2"
    );
    drop(open);
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("upstream_cx_none_healthy"), 1, "{}", exit.log);
    // The two completed connections sampled out, the two refusals logged.
    let log = std::fs::read_to_string(&log_path).expect("the access log exists");
    let reasons: Vec<serde_json::Value> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["termination_reason"].clone()
        })
        .collect();
    assert_eq!(
        reasons,
        ["no_healthy_upstream", "no_filter_chain_match"],
        "{log}"
    );
    assert_eq!(exit.stat("completed"), 2, "{}", exit.log);
    let _ = std::fs::remove_file(&log_path);
}

/// `ask_greeting` from the client.
fn ask(gw: &Gateway, dst: SocketAddr) -> Result<Vec<u8>, ErrorKind> {
    ask_greeting(&gw.client, dst)
}

/// Listeners come and go on SIGHUP (the path a control plane's LDS takes too): an added
/// listener accepts on every shard, its connections counted under its name; a removed one stops
/// at once (new connections are refused by the kernel) while its open connection drains
/// byte-exact; the listeners the reload keeps are untouched.
#[test]
fn sighup_adds_and_removes_listeners_live() {
    let gw = Gateway::new("livelst");
    let port = 9000;
    let extra_dst = addr(SERVER_V4[0], port);
    let pass = addr(SERVER_V4[0], 8080);
    // Answers with the address it was dialled on, then echoes whatever comes until EOF.
    let _server = Server::greet_and_echo(&gw.server, &[pass, extra_dst]);
    // Port 9000 is captured to 15101, where generation 1 has no listener.
    gw.redirect_port(9000, 15101);
    let base = origdst_core::config::DEFAULT_YAML;
    let config = ConfigFile::new("livelst", base);
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--config", config.arg(), "--shards", "2"],
    );
    assert_eq!(ask(&gw, extra_dst), Err(ErrorKind::ConnectionRefused));

    // Generation 2 adds "extra" on 15101.
    let extra = "  - name: extra\n    address: { socket_address: { address: 0.0.0.0, port_value: 15101 } }\n    listener_filters: [ { name: envoy.filters.listener.original_dst } ]\n    filter_chains: [ { filters: [ { name: envoy.filters.network.tcp_proxy, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: extra, cluster: PassthroughCluster } } ] } ]\n";
    config.rewrite(&base.replacen("  clusters:\n", &format!("{extra}  clusters:\n"), 1));
    let pushed = Instant::now();
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    let accepting = loop {
        if ask(&gw, extra_dst).is_ok() {
            break pushed.elapsed();
        }
        assert!(
            pushed.elapsed() < TIMEOUT,
            "the added listener never accepted"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    // Every shard has it: a burst of connections is served, each counted under its name.
    for _ in 0..20 {
        let got = ask(&gw, extra_dst).expect("through the added listener");
        assert_eq!(got, extra_dst.to_string().into_bytes());
    }
    // An open connection through it, mid-conversation.
    let mut open = gw.client.run(move || {
        let stream = TcpStream::connect(extra_dst).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream
    });
    let mut greeting = vec![0u8; extra_dst.to_string().len()];
    open.read_exact(&mut greeting).expect("greeting");
    // (Each shard publishes its listener counters at most every 100 ms: wait for both shards'
    // latest, the total first — settling on one shard's gauge alone read the other's stale.)
    let metrics = settle(&gw, "origdst_listener_cx_total{listener=\"extra\"}", 22.0);
    assert_eq!(
        metrics.value("origdst_listener_cx_total{listener=\"extra\"}"),
        22.0,
        "{}",
        metrics.0
    );
    let metrics = settle(&gw, "origdst_listener_cx_active{listener=\"extra\"}", 1.0);
    assert_eq!(
        metrics.value("origdst_listener_cx_active{listener=\"extra\"}"),
        1.0,
        "{}",
        metrics.0
    );

    // Generation 3 takes it out again: it stops at once, its open connection drains.
    config.rewrite(base);
    let pushed = Instant::now();
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    let refusing = loop {
        if ask(&gw, extra_dst) == Err(ErrorKind::ConnectionRefused) {
            break pushed.elapsed();
        }
        assert!(
            pushed.elapsed() < TIMEOUT,
            "the removed listener kept accepting"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let metrics = settle(&gw, "origdst_listener_draining{listener=\"extra\"}", 1.0);
    assert_eq!(
        metrics.value("origdst_listener_draining{listener=\"extra\"}"),
        1.0
    );
    let payload = vec![0x5au8; 256 * 1024];
    open.write_all(&payload).expect("write while draining");
    let mut back = vec![0u8; payload.len()];
    open.read_exact(&mut back).expect("echo while draining");
    assert_eq!(back, payload, "the draining connection relays byte-exact");
    open.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).expect("clean end");
    assert!(rest.is_empty());
    // The listener the reloads kept never stopped.
    assert_eq!(ask(&gw, pass), Ok(pass.to_string().into_bytes()));
    let exit = proxy.stop_clean();
    assert_eq!(
        exit.stat("downstream_cx_listener_removed"),
        0,
        "{}",
        exit.log
    );
    assert_eq!(exit.stat("drain_aborted"), 0, "{}", exit.log);
    println!(
        "a SIGHUP's added listener accepted after {accepting:?}, a removed one refused after {refusing:?}"
    );
}

/// A reload that brings 1 000 service listeners (Istio's `bind_to_port: false` services behind
/// a `use_original_dst` virtual listener, what a control plane pushes) applies at once, routes
/// by them, and leaves an open connection alone. Prints how long it took.
#[test]
fn a_reload_of_a_thousand_service_listeners_applies_without_touching_open_connections() {
    let gw = Gateway::new("thousand");
    let backend = addr(SERVER_V4[0], 8080);
    let _server = Server::greet_and_echo(&gw.server, &[backend]);
    let virtual_outbound = origdst_core::config::DEFAULT_YAML.replacen(
        "  - name: virtualOutbound\n",
        "  - name: virtualOutbound\n    use_original_dst: true\n",
        1,
    );
    let config = ConfigFile::new("thousand", &virtual_outbound);
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--config", config.arg(), "--shards", "2"],
    );
    let mut open = gw.client.run(move || {
        let stream = TcpStream::connect(backend).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream
    });
    let mut greeting = vec![0u8; backend.to_string().len()];
    open.read_exact(&mut greeting).expect("greeting");

    const SERVICES: u16 = 1000;
    let mut services = String::new();
    for i in 0..SERVICES {
        services.push_str(&format!(
            "  - {{ name: svc{i}, address: {{ socket_address: {{ address: 0.0.0.0, port_value: {} }} }}, bind_to_port: false, filter_chains: [ {{ filters: [ {{ name: envoy.filters.network.tcp_proxy, typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: svc{i}, cluster: services }} }} ] }} ] }}\n",
            20000 + i
        ));
    }
    let cluster = format!(
        "  - {{ name: services, type: STATIC, load_assignment: {{ cluster_name: services, endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: 8080 }} }} }} }} ] }} ] }} }}\n",
        SERVER_V4[0]
    );
    let pushed_yaml = virtual_outbound.replacen(
        "  clusters:\n",
        &format!("{services}  clusters:\n{cluster}"),
        1,
    );
    config.rewrite(&pushed_yaml);
    let pushed = Instant::now();
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    let metrics = settle(&gw, "origdst_config_generation", 2.0);
    assert_eq!(
        metrics.value("origdst_config_generation"),
        2.0,
        "{}",
        proxy.log()
    );
    let applied = pushed.elapsed();
    // A connection to the 501st service is handed to its listener and goes to its cluster.
    let service = addr(SERVER_V4[0], 20500);
    let routed = loop {
        if let Ok(got) = ask(&gw, service) {
            assert_eq!(
                got,
                backend.to_string().into_bytes(),
                "via the service's cluster"
            );
            break pushed.elapsed();
        }
        assert!(
            pushed.elapsed() < TIMEOUT,
            "the pushed services never routed"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    // The connection opened before the push never noticed.
    open.write_all(b"after the push").unwrap();
    let mut back = [0u8; 14];
    open.read_exact(&mut back).expect("echo after the push");
    assert_eq!(&back, b"after the push");
    drop(open);
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("listener_handoff"), 1, "{}", exit.log);
    println!(
        "{SERVICES} service listeners: the reload applied {applied:?} after SIGHUP (generation 2 scraped), the first connection through one routed after {routed:?}"
    );
}
