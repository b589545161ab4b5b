//! `origdst demo`: a node proxy at work, in one command. It builds a small node from network
//! namespaces (a node, pods behind a bridge, a world beyond the uplink: `topology`), starts this
//! very binary in the node with node-mode interception (`origdst iptables apply --mode node`),
//! sends every kind of traffic from the pods and to them (`traffic`), prints what origdst saw —
//! per pod, from its access log, after each step — checks that every connection went where it
//! should, and removes everything it made. It ends by itself (exit 0 only if every check held),
//! or on Ctrl-C (cleaning up first).

mod topology;
mod traffic;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use self::topology::{NODE_POD_SIDE, NODE_UPLINK, POD_CIDR, Topology, WORLD, pod_ip};
use self::traffic::{Servers, bulk, ping_pong, refused};

/// What the demo was asked for.
#[derive(Debug, Clone)]
pub struct DemoArgs {
    /// How many pods (1–20).
    pub pods: usize,
    /// Bytes each pod sends and receives in its bulk transfer.
    pub bulk_bytes: u64,
    /// Where origdst captures.
    pub mode: DemoMode,
}

/// Where the demo's origdst captures the pods' traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoMode {
    /// In the node's namespace, with node-mode rules (`origdst iptables apply --mode node`):
    /// origdst's connections leave from the node.
    Node,
    /// Inside each pod (`origdst run --in-pod-socket`, `origdst pod add`): origdst's connections
    /// leave from the pod, with its address.
    InPod,
}

const WORLD_BULK: u16 = 8080;
const WORLD_ECHO: u16 = 8081;
/// Nothing listens there: a refused destination.
const WORLD_CLOSED: u16 = 8082;
const POD_ECHO: u16 = 9000;

/// Runs the demo; `Ok(true)` if every check held.
pub fn run(args: &DemoArgs) -> Result<bool, String> {
    if !(1..=20).contains(&args.pods) {
        return Err(format!("--pods {}: between 1 and 20", args.pods));
    }
    if !nix::unistd::Uid::effective().is_root() {
        return Err("the demo builds network namespaces and installs rules: run it as root".into());
    }
    let prefix = format!("odemo{}", std::process::id());
    let work = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    // Ctrl-C: the namespaces (and with them origdst's rules and sockets) go, then the process.
    let cleanup: Cleanup = Arc::new(Mutex::new(Some((prefix.clone(), None))));
    on_interrupt(Arc::clone(&cleanup), args.pods);

    println!(
        "origdst demo: a node with {} pods, in network namespaces {prefix}-*",
        args.pods
    );
    let topology = Topology::build(&prefix, args.pods)?;
    let config = work.join("node.yaml");
    let access_log = work.join("access.log");
    std::fs::write(&config, node_config(&access_log)).map_err(|e| format!("config: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("this binary's path: {e}"))?;
    let pod_socket = work.join("pods.sock");
    let in_pod = args.mode == DemoMode::InPod;
    let extra: Vec<String> = if in_pod {
        vec!["--in-pod-socket".into(), pod_socket.display().to_string()]
    } else {
        Vec::new()
    };
    let mut proxy = Proxy::start(&topology, &exe, &config, &work.join("origdst.log"), &extra)?;
    if let Some((_, pid)) = cleanup.lock().expect("cleanup lock").as_mut() {
        *pid = Some(proxy.pid());
    }
    let exe_str = exe.to_str().ok_or("a non-UTF-8 binary path")?;
    if in_pod {
        for (i, pod) in topology.pods.iter().enumerate() {
            topology::run(
                Command::new(exe_str)
                    .args(["pod", "--socket"])
                    .arg(&pod_socket)
                    .args(["add", &pod_name(i), "--netns"])
                    .arg(format!("/var/run/netns/{}", pod.name)),
            )?;
        }
        println!(
            "  origdst runs in the node (pid {}), in-pod mode: origdst pod add pod-<i> --netns <the pod's netns>\n  \
             (its listeners and capture rules live inside each pod; it dials from there)\n",
            proxy.pid()
        );
    } else {
        topology::run(
            topology
                .node
                .command(exe_str)
                .args([
                    "iptables",
                    "apply",
                    "--mode",
                    "node",
                    "--inbound",
                    "redirect",
                ])
                .args(["--pod-cidr", POD_CIDR, "--ipv4-only", "--config"])
                .arg(&config),
        )?;
        println!(
            "  origdst runs in the node (pid {}), rules: origdst iptables apply --mode node --pod-cidr {POD_CIDR}\n",
            proxy.pid()
        );
    }

    let servers = Servers::start(&topology, WORLD_BULK, WORLD_ECHO, POD_ECHO);
    let mut checks = Checks::default();
    let mut expected: usize = 0;

    step("1. every pod sends bulk to the world and receives it back");
    for (i, pod) in topology.pods.iter().enumerate() {
        let dst = SocketAddr::new(IpAddr::V4(WORLD), WORLD_BULK);
        let result = pod.run({
            let bytes = args.bulk_bytes;
            move || bulk(dst, bytes)
        });
        checks.check(
            &format!("pod {i}: {} bytes up and down, byte-exact", args.bulk_bytes),
            result.as_ref().map(drop).map_err(Clone::clone),
        );
        expected += 1;
    }
    let world = servers.world_seen(topology.pods.len(), Duration::from_secs(5));
    let (from_whom, from) = if in_pod {
        (
            "each pod's own address (origdst dials from inside the pod)",
            None,
        )
    } else {
        (
            "origdst on the node's uplink",
            Some(IpAddr::V4(NODE_UPLINK)),
        )
    };
    checks.check(
        &format!("the world saw {from_whom}, at the address each pod dialled"),
        if world.iter().all(|s| {
            let pod_address =
                (0..topology.pods.len()).any(|i| s.peer.ip() == IpAddr::V4(pod_ip(i)));
            from.map_or(pod_address, |ip| s.peer.ip() == ip) && s.local.port() == WORLD_BULK
        }) && world.len() == topology.pods.len()
        {
            Ok(())
        } else {
            Err(format!("{world:?}"))
        },
    );
    report(&access_log, expected, args.pods);

    step("2. request/response: 100 × 64-byte round trips per pod");
    for (i, pod) in topology.pods.iter().enumerate() {
        let dst = SocketAddr::new(IpAddr::V4(WORLD), WORLD_ECHO);
        let result = pod.run(move || ping_pong(dst, 100));
        checks.check(
            &match &result {
                Ok(p50) => format!("pod {i}: every answer right, median round trip {p50:?}"),
                Err(_) => format!("pod {i}: round trips"),
            },
            result.map(drop),
        );
        expected += 1;
    }
    report(&access_log, expected, args.pods);

    step("3. a refused destination, and a connection to origdst's own port (a loop)");
    for (i, pod) in topology.pods.iter().enumerate() {
        let dst = SocketAddr::new(IpAddr::V4(WORLD), WORLD_CLOSED);
        let result = pod.run(move || refused(dst));
        checks.check(
            &format!("pod {i}: a closed port in the world resets the pod's connection"),
            result,
        );
        expected += 1;
    }
    // origdst's own port: captured like any destination (node mode: the node's uplink), or
    // reached directly (in-pod: the pod's own address, where origdst listens), it would have
    // origdst connect to itself for ever.
    let (looped, where_) = if in_pod {
        (SocketAddr::new(IpAddr::V4(pod_ip(0)), 15001), "in the pod")
    } else {
        (
            SocketAddr::new(IpAddr::V4(NODE_UPLINK), 15001),
            "on the node",
        )
    };
    let result = topology.pods[0].run(move || refused(looped));
    checks.check(
        &format!("pod 0: a connection to origdst's own port {where_} is refused (no loop)"),
        result,
    );
    expected += 1;
    let records = report(&access_log, expected, args.pods);
    let reasons = |reason: &str| records.iter().filter(|r| r.reason == reason).count();
    // Node mode: the loop was redirected, so its destination is origdst's own listener. In-pod:
    // it reached the listener directly (a pod's own address is never captured), so nothing says
    // where it was going.
    let loop_reason = if in_pod {
        "no_original_dst"
    } else {
        "destination_is_listener"
    };
    checks.check(
        &format!("the access log says why: upstream_connect_failed per pod, {loop_reason} once"),
        if reasons("upstream_connect_failed") == args.pods && reasons(loop_reason) == 1 {
            Ok(())
        } else {
            Err(format!("{records:?}"))
        },
    );

    step("4. the world connects to every pod (inbound)");
    for i in 0..topology.pods.len() {
        let dst = SocketAddr::new(IpAddr::V4(pod_ip(i)), POD_ECHO);
        let result = topology.world.run(move || ping_pong(dst, 10));
        checks.check(&format!("pod {i} answers the world"), result.map(drop));
        expected += 1;
    }
    let seen = servers.pod_peers();
    let pods = topology.pods.len();
    let (what, from_origdst): (&str, fn(IpAddr, usize) -> bool) = if in_pod {
        (
            "each pod saw origdst dial from inside it (its own address), not the world",
            |ip, pods| (0..pods).any(|i| ip == IpAddr::V4(pod_ip(i))),
        )
    } else {
        (
            "each pod saw origdst (the node's bridge address), not the world",
            |ip, _| ip == IpAddr::V4(NODE_POD_SIDE),
        )
    };
    checks.check(
        what,
        if seen.len() == pods && seen.iter().all(|p| from_origdst(p.ip(), pods)) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        },
    );
    report(&access_log, expected, args.pods);

    if in_pod {
        step("5. the node's own connection to the world is not captured");
        let dst = SocketAddr::new(IpAddr::V4(WORLD), WORLD_ECHO);
        let result = topology.node.run(move || ping_pong(dst, 10));
        checks.check("the node reaches the world directly", result.map(drop));
    } else {
        step("5. the node's own connection to a pod is not captured");
        let dst = SocketAddr::new(IpAddr::V4(pod_ip(0)), POD_ECHO);
        let result = topology.node.run(move || ping_pong(dst, 10));
        checks.check("the node reaches pod 0 directly", result.map(drop));
    }
    std::thread::sleep(Duration::from_millis(300));
    let records = read_log(&access_log);
    checks.check(
        &format!("origdst relayed exactly {expected} connections"),
        if records.len() == expected {
            Ok(())
        } else {
            Err(format!("{} in the access log", records.len()))
        },
    );

    if in_pod {
        step("6. the pods leave: origdst pod remove (listeners stop, rules go once drained)");
        let mut removed = Ok(());
        for i in 0..topology.pods.len() {
            removed = removed.and(
                topology::run(
                    Command::new(exe_str)
                        .args(["pod", "--socket"])
                        .arg(&pod_socket)
                        .args(["remove", &pod_name(i)]),
                )
                .map(drop),
            );
        }
        checks.check("every pod removed", removed);
        let dst = SocketAddr::new(IpAddr::V4(WORLD), WORLD_ECHO);
        let result = topology.pods[0].run(move || ping_pong(dst, 10));
        std::thread::sleep(Duration::from_millis(300));
        checks.check(
            "pod 0, removed, reaches the world directly (origdst relayed nothing more)",
            result.map(drop).and_then(|()| {
                let n = read_log(&access_log).len();
                if n == expected {
                    Ok(())
                } else {
                    Err(format!("{n} records, expected {expected}"))
                }
            }),
        );
    }
    step(if in_pod {
        "7. origdst stops: SIGTERM drains, nothing left open"
    } else {
        "6. origdst stops: SIGTERM drains, nothing left open"
    });
    let stats = proxy.stop()?;
    let counter = |name: &str| {
        stats.split_whitespace().find_map(|kv| {
            kv.strip_prefix(name)?
                .strip_prefix('=')?
                .parse::<usize>()
                .ok()
        })
    };
    let (total, destroyed) = (
        counter("downstream_cx_total"),
        counter("downstream_cx_destroy"),
    );
    checks.check(
        "origdst exited 0, every connection it accepted closed (downstream_cx_destroy = total)",
        if total == Some(expected) && destroyed == total {
            Ok(())
        } else {
            Err(format!(
                "accepted {total:?}, closed {destroyed:?}, expected {expected}"
            ))
        },
    );
    println!("  final counters: {}", interesting(&stats));
    drop(servers);
    drop(topology);
    // Removed already: Ctrl-C from here on has nothing to clean.
    cleanup.lock().expect("cleanup lock").take();
    let _ = std::fs::remove_dir_all(&work);
    println!(
        "\nremoved the namespaces (and with them the rules); {}",
        checks.summary()
    );
    Ok(checks.failed == 0)
}

/// Pod `i`'s name at origdst's pod interface (and in its metrics and access log).
fn pod_name(i: usize) -> String {
    format!("demo/pod-{i}")
}

/// The demo's config: the embedded default with an inbound listener on 15006 (Istio's
/// `virtualInbound` shape), two shards, and the access log at `access_log`.
fn node_config(access_log: &Path) -> String {
    node_yaml()
        .replacen(
            "origdst:\n",
            &format!(
                "origdst:\n  access_log: {{ path: {} }}\n",
                access_log.display()
            ),
            1,
        )
        .replacen("  shards: 0 ", "  shards: 2 ", 1)
}

/// The node proxy's config: the embedded default (outbound 15001, inbound 15006), its inbound
/// connecting from the node's own address rather than 127.0.0.6 / ::6 — a node relays to pods
/// on other interfaces, where a loopback source cannot go.
pub fn node_yaml() -> String {
    let bind = "    upstream_bind_config:\n      source_address: { address: 127.0.0.6, port_value: 0 }\n      additional_source_addresses:\n      - address: { address: \"::6\", port_value: 0 }\n";
    assert!(
        origdst_core::config::DEFAULT_YAML.contains(bind),
        "the embedded default's inbound passthrough binds 127.0.0.6 / ::6"
    );
    origdst_core::config::DEFAULT_YAML.replacen(bind, "", 1)
}

/// origdst, running in the node.
struct Proxy {
    child: Child,
    log: PathBuf,
}

impl Proxy {
    fn start(
        topology: &Topology,
        exe: &Path,
        config: &Path,
        log: &Path,
        extra: &[String],
    ) -> Result<Self, String> {
        let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = topology
            .node
            .command(exe.to_str().ok_or("a non-UTF-8 binary path")?)
            .args(["run", "--config"])
            .arg(config)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| format!("starting origdst: {e}"))?;
        let mut proxy = Self {
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !proxy.log().contains(" started: ") {
            if Instant::now() > deadline || proxy.child.try_wait().is_ok_and(|s| s.is_some()) {
                return Err(format!("origdst did not start:\n{}", proxy.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(proxy)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, wait (bounded), and the final counters line.
    fn stop(&mut self) -> Result<String, String> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(status)) => {
                    return Err(format!("origdst exited {status}:\n{}", self.log()));
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    return Err("origdst did not stop within 10 s of SIGTERM".into());
                }
            }
        }
        let log = self.log();
        Ok(log
            .lines()
            .rev()
            .find_map(|l| l.split_once("final stats: ").map(|(_, s)| s.to_string()))
            .unwrap_or_default())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One access-log record, as the demo reads it.
#[derive(Debug, Clone)]
struct Record {
    /// The pod origdst says it served (in-pod mode).
    pod: Option<String>,
    client: IpAddr,
    dst: Option<SocketAddr>,
    up: u64,
    down: u64,
    reason: String,
}

fn read_log(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            let addr = |key: &str| v[key].as_str().and_then(|s| s.parse::<SocketAddr>().ok());
            Some(Record {
                pod: v["pod"].as_str().map(str::to_string),
                client: addr("downstream_remote_address")?.ip(),
                dst: addr("original_destination"),
                up: v["bytes_received"].as_u64().unwrap_or(0),
                down: v["bytes_sent"].as_u64().unwrap_or(0),
                reason: v["termination_reason"].as_str().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// Waits (bounded) for `expected` records, then prints them per pod.
fn report(path: &Path, expected: usize, pods: usize) -> Vec<Record> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut records = read_log(path);
    while records.len() < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        records = read_log(path);
    }
    println!("  what origdst saw (its access log), per pod:");
    println!("    pod  address       out  in   bytes up   bytes down  origdst's label  outcomes");
    for i in 0..pods {
        let ip = IpAddr::V4(pod_ip(i));
        let out: Vec<&Record> = records.iter().filter(|r| r.client == ip).collect();
        let inbound: Vec<&Record> = records
            .iter()
            .filter(|r| r.dst.is_some_and(|d| d.ip() == ip))
            .collect();
        let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
        for r in out.iter().chain(&inbound) {
            *outcomes.entry(r.reason.as_str()).or_default() += 1;
        }
        let outcomes: Vec<String> = outcomes.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let labels: std::collections::BTreeSet<&str> = out
            .iter()
            .chain(&inbound)
            .map(|r| r.pod.as_deref().unwrap_or("-"))
            .collect();
        let labels: Vec<&str> = labels.into_iter().collect();
        println!(
            "    {i:<4} {:<13} {:<4} {:<4} {:<10} {:<11} {:<16} {}",
            ip.to_string(),
            out.len(),
            inbound.len(),
            out.iter().chain(&inbound).map(|r| r.up).sum::<u64>(),
            out.iter().chain(&inbound).map(|r| r.down).sum::<u64>(),
            labels.join(","),
            outcomes.join(", ")
        );
    }
    println!();
    records
}

fn step(title: &str) {
    println!("{title}");
}

/// The counters worth a glance.
fn interesting(stats: &str) -> String {
    stats
        .split_whitespace()
        .filter(|kv| !kv.ends_with("=0"))
        .filter(|kv| {
            [
                "downstream_cx_total",
                "completed",
                "upstream_cx_connect_fail",
                "refused_destination_is_listener",
                "downstream_cx_rx_bytes_total",
                "downstream_cx_tx_bytes_total",
            ]
            .iter()
            .any(|k| kv.starts_with(&format!("{k}=")))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Default)]
struct Checks {
    passed: usize,
    failed: usize,
}

impl Checks {
    fn check(&mut self, what: &str, result: Result<(), String>) {
        if interrupted() {
            // Ctrl-C is taking the node away under the checks: nothing they say counts.
            return;
        }
        match result {
            Ok(()) => {
                self.passed += 1;
                println!("  ✓ {what}");
            }
            Err(why) => {
                self.failed += 1;
                println!("  ✗ {what}: {why}");
            }
        }
    }

    fn summary(&self) -> String {
        if self.failed == 0 {
            format!("all {} checks held", self.passed)
        } else {
            format!(
                "{} of {} checks FAILED",
                self.failed,
                self.passed + self.failed
            )
        }
    }
}

/// What Ctrl-C must remove: the namespaces' prefix and origdst's pid, until the demo itself has.
type Cleanup = Arc<Mutex<Option<(String, Option<u32>)>>>;

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Ctrl-C has been pressed (the namespaces are going away).
fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Ctrl-C (or SIGTERM): delete the namespaces the demo made (origdst and its rules go with the
/// node's), then exit 130.
fn on_interrupt(cleanup: Cleanup, pods: usize) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some((prefix, pid)) = cleanup.lock().ok().and_then(|mut c| c.take()) {
                if let Some(pid) = pid {
                    // `ip netns exec` runs origdst in its place: this is origdst's pid.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let mut names = vec![format!("{prefix}-node"), format!("{prefix}-world")];
                names.extend((0..pods).map(|i| format!("{prefix}-pod{i}")));
                for name in names {
                    let _ = Command::new("ip").args(["netns", "del", &name]).output();
                }
                let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&prefix));
            }
            eprintln!("\ninterrupted: removed the demo's namespaces");
            std::process::exit(130);
        }
    });
}
