//! The macro benchmark: origdst's backends beside `direct` (no proxy), HAProxy with and without
//! splice, and socat, **in one run**, through network-namespace topologies: the gateway (client ns
//! → router ns with iptables REDIRECT → server ns), the sidecar (the client in the proxy's ns,
//! OUTPUT capture) and the node (four pod namespaces behind a bridge on the router, PREROUTING
//! capture of what they send). Interleaved repetitions, medians, ratios to HAProxy-splice and to
//! direct from the same run; Markdown, JSON and SVG plots.
//!
//! ```text
//! sudo cargo run -p bench --release -- [--quick] [--reps 3] [--seconds 5] [--only a,b] [--out bench/results]
//! ```

mod candidates;
mod load;
mod report;
mod sockmap;
mod system;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use origdst_netns_tests::netns::raise_nofile_limit;
use origdst_netns_tests::netns::{Netns, veth};
use origdst_netns_tests::topology::{Gateway, SERVER_V4, addr};

use crate::candidates::{ALL, Candidate, Kind, Running, Topology};
use crate::report::{IdleSample, Results};

#[derive(Parser)]
#[command(about = "origdst against direct routing, HAProxy and socat in network namespaces")]
struct Cli {
    /// A smoke run: one short repetition, small idle levels (numbers printed, never asserted).
    #[arg(long)]
    quick: bool,
    /// Repetitions (interleaved across candidates); medians are reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seconds per bulk and connection-rate measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Only these candidates (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Topologies to measure (the idle scale runs in the gateway only).
    #[arg(long, value_delimiter = ',', default_value = "gateway,sidecar,node", value_parser = parse_topology)]
    topology: Vec<Topology>,
    /// The origdst binary (default: `origdst` beside this one, built if missing).
    #[arg(long)]
    origdst: Option<PathBuf>,
    /// Where results.md, results.json and results.svg go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Skip the idle-connection scale (for runs that measure only the data path).
    #[arg(long)]
    skip_idle: bool,
    /// Internal: the in-kernel anchor's relay, run as a child process.
    #[arg(long, hide = true, num_args = 2, value_names = ["ADDR", "OBJECT"])]
    sockmap_relay: Option<Vec<String>>,
    /// Internal: the idle-connection echo server, run as a child process.
    #[arg(long, hide = true, num_args = 2, value_names = ["ADDR", "SECONDS"])]
    echo_holder: Option<Vec<String>>,
}

/// Where the servers listen (all on the server's first address).
const SINK_PORT: u16 = 5001;
const ECHO_PORT: u16 = 5002;
const IDLE_PORT: u16 = 5003;
/// The connection-rate test's destinations: one echo port per client thread.
const CONN_PORT_BASE: u16 = 5010;
const CONN_THREADS: usize = 4;
/// With one thread the proxies run on CPU 0 (under `taskset`, or `cpu-map`); clients and servers
/// on CPU 1.
const LOAD_CPU: usize = 1;

/// The node topology's pods, and the bridge they hang off on the router (the node).
pub(crate) const POD_COUNT: usize = 4;
pub(crate) const POD_BRIDGE: &str = "pods0";

fn parse_topology(text: &str) -> Result<Topology, String> {
    match text {
        "gateway" => Ok(Topology::Gateway),
        "sidecar" => Ok(Topology::Sidecar),
        "node" => Ok(Topology::Node),
        other => Err(format!("{other:?} is not gateway, sidecar or node")),
    }
}

/// The node topology's pods: [`POD_COUNT`] namespaces, `10.11.3.(10+i)/24`, each a veth into
/// the router's bridge [`POD_BRIDGE`] (`10.11.3.1`), their default route through it. The server
/// namespace reaches them through the router already (its default route).
fn build_pods(gw: &Gateway) -> Vec<Netns> {
    gw.router.ip(&["link", "add", POD_BRIDGE, "type", "bridge"]);
    gw.router.ip(&["link", "set", POD_BRIDGE, "up"]);
    gw.router
        .ip(&["addr", "add", "10.11.3.1/24", "dev", POD_BRIDGE]);
    (0..POD_COUNT)
        .map(|i| {
            let pod = Netns::new(&format!("bench-pod{i}"));
            let host_side = format!("bp{i}");
            veth(&pod, "eth0", &gw.router, &host_side);
            gw.router
                .ip(&["link", "set", &host_side, "master", POD_BRIDGE]);
            pod.ip(&[
                "addr",
                "add",
                &format!("10.11.3.{}/24", 10 + i),
                "dev",
                "eth0",
            ]);
            pod.ip(&["route", "add", "default", "via", "10.11.3.1"]);
            pod.exec(
                "sysctl",
                &[
                    "-qw",
                    "net.ipv4.tcp_tw_reuse=1",
                    "net.ipv4.ip_local_port_range=20000 65000",
                ],
            );
            pod
        })
        .collect()
}

fn main() {
    let cli = Cli::parse();
    if let Some(args) = &cli.echo_holder {
        let addr: SocketAddr = args[0].parse().expect("ADDR");
        let seconds: u64 = args[1].parse().expect("SECONDS");
        origdst_netns_tests::echo_holder::run(addr, Duration::from_secs(seconds));
        return;
    }
    if let Some(args) = &cli.sockmap_relay {
        let addr: SocketAddr = args[0].parse().expect("ADDR");
        if let Err(err) = sockmap::run(addr, Path::new(&args[1])) {
            eprintln!("sockmap relay: {err}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(err) = run(&cli) {
        eprintln!("bench: {err}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (network namespaces, iptables)".into());
    }
    raise_nofile_limit();
    let (reps, seconds) = if cli.quick {
        (1, 0.5)
    } else {
        (cli.reps.max(1), cli.seconds)
    };
    let duration = Duration::from_secs_f64(seconds);
    let origdst = match &cli.origdst {
        Some(path) => path.clone(),
        None => origdst_binary()?,
    };
    let candidates: Vec<Candidate> = ALL
        .iter()
        .filter(|c| cli.only.is_empty() || cli.only.iter().any(|o| o == c.name))
        .filter(|c| {
            let ok = candidates::available(c);
            if !ok {
                eprintln!("skipping {}: not installed", c.name);
            }
            ok
        })
        .copied()
        .collect();
    let gw = Gateway::new("bench");
    let pods = if cli.topology.contains(&Topology::Node) {
        build_pods(&gw)
    } else {
        Vec::new()
    };
    for tables in ["iptables", "ip6tables"] {
        // The topology's own REDIRECT rules: each candidate installs what it needs.
        gw.router.exec(tables, &["-t", "nat", "-F", "PREROUTING"]);
    }
    // Every test connection goes from one client address to one server address (and every
    // upstream connection from the router to it): TIME_WAIT sockets pile up in one 4-tuple space
    // and, without reuse and a wide port range, the connection-rate and idle tests would measure
    // port exhaustion (EADDRNOTAVAIL) instead of the proxies. What a busy node proxy host sets.
    // The range starts above the capture ports (15001, socat's 151xx) so no upstream connection
    // ever holds one of them.
    for ns in [&gw.client, &gw.router] {
        ns.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.tcp_tw_reuse=1",
                "net.ipv4.ip_local_port_range=20000 65000",
            ],
        );
    }
    let sink = addr(SERVER_V4[0], SINK_PORT);
    let echo = addr(SERVER_V4[0], ECHO_PORT);
    let idle = addr(SERVER_V4[0], IDLE_PORT);
    let conn_dsts: Vec<SocketAddr> = (0..CONN_THREADS)
        .map(|i| addr(SERVER_V4[0], CONN_PORT_BASE + i as u16))
        .collect();
    let echoes: Vec<SocketAddr> = std::iter::once(echo)
        .chain(conn_dsts.iter().copied())
        .collect();
    let servers = load::Servers::start(&gw.server, sink, &echoes, Some(LOAD_CPU));
    let _holder = EchoHolder::start(&gw.server, idle)?;
    let mut targets = vec![sink, echo, idle];
    targets.extend(&conn_dsts);
    let ping_count = if cli.quick { 2_000 } else { 20_000 };
    let mut results = Results::new(reps, seconds);
    let setup = Setup {
        gw: &gw,
        pods: &pods,
        origdst: &origdst,
        targets: &targets,
        servers: &servers,
        sink,
        echo,
        conn_dsts: &conn_dsts,
        duration,
        ping_count,
    };
    for rep in 1..=reps {
        for &topology in &cli.topology {
            for candidate in &candidates {
                let tag = format!("[rep {rep}/{reps}] {:<8}", topology.name());
                measure(&setup, candidate, topology, &tag, &mut results);
            }
        }
    }
    let levels = if cli.skip_idle {
        Vec::new()
    } else {
        idle_levels(cli.quick)
    };
    // socat and the sockmap relay hold a process or thread per connection: not for 10 000.
    for candidate in candidates
        .iter()
        .filter(|c| !matches!(c.kind, Kind::Socat | Kind::Sockmap))
    {
        for &n in &levels {
            match idle_sample(candidate, &gw, &origdst, idle, n, &targets) {
                Ok(sample) => {
                    eprintln!(
                        "[idle] {:<22} {n:>5} connections: RSS {} KiB, {} iou-wrk, {} pipes, kernel stack +{} KiB, slab +{} KiB",
                        candidate.name,
                        sample.rss_kib.map_or("-".into(), |v| v.to_string()),
                        sample.iou_wrk.map_or("-".into(), |v| v.to_string()),
                        sample.pipes.map_or("-".into(), |v| v.to_string()),
                        sample.kernel_stack_kib,
                        sample.slab_kib
                    );
                    results.add_idle(candidate.name, n, sample);
                }
                Err(err) => {
                    eprintln!("[idle] {} at {n}: {err}", candidate.name);
                    results.add_idle_failure(candidate.name, n, err);
                }
            }
        }
    }
    drop(servers);
    std::fs::create_dir_all(&cli.out).map_err(|e| format!("{}: {e}", cli.out.display()))?;
    let markdown = results.markdown();
    for (name, text) in [
        ("results.md", markdown.clone()),
        ("results.json", results.json()),
        ("results.svg", results.svg()),
        ("latency.svg", results.latency_svg()),
    ] {
        let path = cli.out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("{markdown}");
    eprintln!(
        "wrote {0}/results.{{md,json,svg}} and {0}/latency.svg",
        cli.out.display()
    );
    Ok(())
}

/// What every measurement needs.
struct Setup<'a> {
    gw: &'a Gateway,
    /// The node topology's pods (empty unless it is measured).
    pods: &'a [Netns],
    origdst: &'a Path,
    targets: &'a [SocketAddr],
    servers: &'a load::Servers,
    sink: SocketAddr,
    echo: SocketAddr,
    conn_dsts: &'a [SocketAddr],
    duration: Duration,
    ping_count: u64,
}

/// One candidate in one topology: bulk 1 and 8 streams (two proxy threads: the machine's two
/// cores are shared with load and sink), then latency and connection rate (one proxy thread on
/// CPU 0, client and server on CPU 1, so neither the scheduler nor a shard sharing the load's core
/// decides the numbers).
fn measure(
    setup: &Setup<'_>,
    candidate: &Candidate,
    topology: Topology,
    tag: &str,
    results: &mut Results,
) {
    let gw = setup.gw;
    // As a sidecar the client runs beside the proxy; on a node, in every pod (the first one
    // alone for one stream and for latency).
    let clients: Vec<&Netns> = match topology {
        Topology::Gateway => vec![&gw.client],
        Topology::Sidecar => vec![&gw.router],
        Topology::Node => setup.pods.iter().collect(),
    };
    let client = clients[0];
    let prefix = topology.metric_prefix();
    let start = |threads| {
        Running::start(
            candidate,
            &gw.router,
            setup.origdst,
            threads,
            setup.targets,
            topology,
        )
        .map_err(|err| eprintln!("{tag} {}: did not start: {err}", candidate.name))
        .ok()
    };
    let Some(running) = start(2) else { return };
    for streams in [1, 8] {
        let busy = system::cpu_busy_seconds();
        let (bytes, elapsed) = load::bulk(
            &clients,
            setup.sink,
            streams,
            setup.duration,
            &setup.servers.received,
        );
        let cpu = system::cpu_busy_seconds() - busy;
        let gbit = bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9;
        let gib = bytes as f64 / (1u64 << 30) as f64;
        results.add(
            candidate.name,
            &format!("{prefix}bulk{streams}_gbit_s"),
            gbit,
        );
        results.add(
            candidate.name,
            &format!("{prefix}bulk{streams}_cpu_s_per_gib"),
            cpu / gib,
        );
        eprintln!(
            "{tag} {:<28} {streams} stream(s): {gbit:6.2} Gbit/s, {:.3} CPU s/GiB",
            candidate.name,
            cpu / gib
        );
    }
    // The connection rate with a shard (thread) per core: what a node runs. The load stays on
    // CPU 1, so the proxy's second thread shares it with the clients and servers, for every
    // candidate alike.
    connection_rate(
        setup,
        &clients,
        candidate,
        &format!("{prefix}conn2"),
        tag,
        results,
    );
    drop(running);
    let Some(running) = start(1) else { return };
    let (histogram, tps) = load::ping_pong(client, setup.echo, setup.ping_count, Some(LOAD_CPU));
    for (name, quantile) in [
        ("rr_p50_us", 0.5),
        ("rr_p99_us", 0.99),
        ("rr_p999_us", 0.999),
    ] {
        results.add(
            candidate.name,
            &format!("{prefix}{name}"),
            histogram.value_at_quantile(quantile) as f64 / 1e3,
        );
    }
    results.add(candidate.name, &format!("{prefix}rr_tps"), tps);
    eprintln!(
        "{tag} {:<28} 64 B ping-pong p50 {:.1} µs p99 {:.1} µs p99.9 {:.1} µs, {tps:.0} tx/s",
        candidate.name,
        histogram.value_at_quantile(0.5) as f64 / 1e3,
        histogram.value_at_quantile(0.99) as f64 / 1e3,
        histogram.value_at_quantile(0.999) as f64 / 1e3,
    );
    connection_rate(
        setup,
        &clients,
        candidate,
        &format!("{prefix}conn"),
        tag,
        results,
    );
    drop(running);
}

/// New connections per second through the running candidate, its errors, and the whole-system
/// CPU time each connection cost (proxy, kernel, clients and servers together, in µs), under the
/// metric keys `{key}_per_s`, `{key}_errors` and `{key}_cpu_us`.
fn connection_rate(
    setup: &Setup<'_>,
    clients: &[&Netns],
    candidate: &Candidate,
    key: &str,
    tag: &str,
    results: &mut Results,
) {
    let busy = system::cpu_busy_seconds();
    let (rate, errors, connections) =
        load::connection_rate(clients, setup.conn_dsts, setup.duration, Some(LOAD_CPU));
    let cpu = system::cpu_busy_seconds() - busy;
    let cpu_us = if connections == 0 {
        f64::NAN
    } else {
        cpu * 1e6 / connections as f64
    };
    results.add(candidate.name, &format!("{key}_per_s"), rate);
    results.add(candidate.name, &format!("{key}_errors"), errors as f64);
    results.add(candidate.name, &format!("{key}_cpu_us"), cpu_us);
    eprintln!(
        "{tag} {:<28} {key}: {rate:.0} conn/s ({errors} errors), {cpu_us:.1} CPU µs per connection",
        candidate.name,
    );
}

/// 10, 1 000 and 10 000 idle connections (capped by the hard descriptor limit, which a process
/// without CAP_SYS_RESOURCE cannot raise: each connection costs the proxy two).
fn idle_levels(quick: bool) -> Vec<usize> {
    if quick {
        return vec![10, 200];
    }
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap_or((1024, 1024));
    let top = 10_000usize.min((hard.saturating_sub(64) / 2) as usize);
    vec![10, 1_000, top]
}

fn idle_sample(
    candidate: &Candidate,
    gw: &Gateway,
    origdst: &Path,
    idle: SocketAddr,
    n: usize,
    targets: &[SocketAddr],
) -> Result<IdleSample, String> {
    let running = Running::start(
        candidate,
        &gw.router,
        origdst,
        2,
        targets,
        Topology::Gateway,
    )?;
    let before = system::Meminfo::read();
    let streams = load::open_idle(&gw.client, idle, n)?;
    // Let anything that would park a kernel worker per connection show itself.
    std::thread::sleep(Duration::from_millis(500));
    let after = system::Meminfo::read();
    let process = running.pid().map(system::Process::read);
    drop(streams);
    drop(running);
    Ok(IdleSample {
        rss_kib: process.as_ref().map(|p| p.rss_kib),
        iou_wrk: process.as_ref().map(|p| p.iou_wrk),
        pipes: process.as_ref().map(|p| p.pipes),
        kernel_stack_kib: after
            .kernel_stack_kib
            .saturating_sub(before.kernel_stack_kib),
        slab_kib: after.slab_kib.saturating_sub(before.slab_kib),
    })
}

/// The release origdst next to this binary, built first if missing.
fn origdst_binary() -> Result<PathBuf, String> {
    let here = std::env::current_exe().map_err(|e| e.to_string())?;
    let binary = here.with_file_name("origdst");
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile = if here.to_string_lossy().contains("/release/") {
            "--release"
        } else {
            "--quiet"
        };
        let status = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "origdst-runtime-uring",
                "--bin",
                "origdst",
                profile,
            ])
            .status()
            .map_err(|e| format!("cargo build: {e}"))?;
        if !status.success() || !binary.exists() {
            return Err(format!("could not build {}", binary.display()));
        }
    }
    Ok(binary)
}

/// The idle echo server, a child process so its sockets do not count against ours; it ends when
/// this process closes its stdin (on drop) or after an hour.
struct EchoHolder(Child);

impl EchoHolder {
    fn start(ns: &Netns, at: SocketAddr) -> Result<Self, String> {
        use std::io::BufRead;
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = ns
            .command(me.to_str().ok_or("the bench path is not UTF-8")?)
            .args(["--echo-holder", &at.to_string(), "3600"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start the idle echo server: {e}"))?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().ok_or("no stdout")?)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.trim() != "listening" {
            return Err(format!("the idle echo server said {line:?}"));
        }
        Ok(Self(child))
    }
}

impl Drop for EchoHolder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}
