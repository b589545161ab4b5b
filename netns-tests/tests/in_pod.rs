//! In-pod mode (ztunnel's design) against the real kernel: one origdst in the node namespace
//! serves 50 pods from *inside* their namespaces. Each pod is handed over through the pod
//! interface (`origdst pod add`, its namespace passed with SCM_RIGHTS); origdst opens the pod's
//! listeners and installs its capture rules there, and dials from there. Every pod's outbound
//! and inbound connections are relayed exactly once and byte-exact, leave with the pod's own
//! address, and are counted as the pod's; the node's own traffic is not captured; pods removed
//! and added again while traffic runs lose nothing; a pod removed mid-transfer drains; and when
//! every pod is gone the listeners, descriptors and rules are back to where they started.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use origdst_netns_tests::admin::scrape;
use origdst_netns_tests::config::ConfigFile;
use origdst_netns_tests::netns::Netns;
use origdst_netns_tests::node::{Node, WORLD_V4, WORLD_V6, pod_v4, pod_v6};
use origdst_netns_tests::origdst_bin;
use origdst_netns_tests::pattern::{Pattern, Verified};
use origdst_netns_tests::proxy::Proxy;
use origdst_netns_tests::server::Server;
use origdst_runtime_uring::pods::protocol::Client;

const UP: Pattern = Pattern::new(0x1d01);
const DOWN: Pattern = Pattern::new(0x1d02);
const BYTES: u64 = 64 * 1024;
const WORLD_PORT: u16 = 8080;
const POD_PORT: u16 = 9000;
const PODS: usize = 50;
const SHARDS: usize = 2;
/// Listening sockets per pod: 15001 and 15006, IPv4 and IPv6, one per shard.
const LISTENERS_PER_POD: usize = 4 * SHARDS;
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// What a server saw of one connection.
#[derive(Debug, Clone)]
struct Seen {
    local: SocketAddr,
    peer: SocketAddr,
    upload: Verified,
}

type Ledger = Arc<Mutex<Vec<Seen>>>;

/// Verifies the upload to its end, answers with the download, closes; reports what it saw.
fn serve(ns: &Netns, addrs: &[SocketAddr], seen: &Ledger) -> Server {
    let seen = Arc::clone(seen);
    let handler = Arc::new(
        move |stream: TcpStream, local: SocketAddr, peer: SocketAddr| {
            let seen = Arc::clone(&seen);
            thread::spawn(move || {
                stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let upload = UP.verify_from(&mut &stream).expect("server receive");
                DOWN.write_to(&mut &stream, BYTES).expect("server send");
                let _ = stream.shutdown(Shutdown::Write);
                seen.lock().unwrap().push(Seen {
                    local,
                    peer,
                    upload,
                });
            });
        },
    );
    Server::start(ns, addrs, handler)
}

/// One exchange from inside `ns`: the upload (in `pieces`, `gap` apart), the FIN, the download.
fn exchange_paced(ns: &Netns, dst: SocketAddr, pieces: u64, gap: Duration) -> Verified {
    ns.run(move || {
        let stream = TcpStream::connect_timeout(&dst, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let piece = (BYTES / pieces) as usize;
        let mut buf = vec![0u8; piece];
        for k in 0..pieces {
            UP.fill(k * piece as u64, &mut buf);
            (&stream).write_all(&buf).expect("client send");
            thread::sleep(gap);
        }
        stream.shutdown(Shutdown::Write).expect("client shutdown");
        DOWN.verify_from(&mut &stream).expect("client receive")
    })
}

fn exchange(ns: &Netns, dst: SocketAddr) -> Verified {
    exchange_paced(ns, dst, 1, Duration::ZERO)
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an IP"), port)
}

/// Waits (bounded) until the servers have reported `n` connections.
fn reported(seen: &Ledger, n: usize) -> Vec<Seen> {
    for _ in 0..1000 {
        if seen.lock().unwrap().len() >= n {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    seen.lock().unwrap().clone()
}

/// `origdst pod <args>` against the test's socket, as a node agent would run it.
fn pod_cli(socket: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(origdst_bin!())
        .args(["pod", "--socket", socket])
        .args(args)
        .output()
        .expect("run origdst pod")
}

fn add(socket: &str, name: &str, pod: &Netns) {
    let netns = format!("/var/run/netns/{}", pod.name());
    let out = pod_cli(socket, &["add", name, "--netns", &netns]);
    assert!(
        out.status.success(),
        "origdst pod add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn remove(socket: &str, name: &str) {
    let out = pod_cli(socket, &["remove", name]);
    assert!(
        out.status.success(),
        "origdst pod remove {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The capture rules in a namespace (iptables and ip6tables), origdst's only.
fn our_rules(ns: &Netns) -> Vec<String> {
    ["iptables-save", "ip6tables-save"]
        .iter()
        .flat_map(|tool| {
            String::from_utf8_lossy(&ns.exec(tool, &[]).stdout)
                .lines()
                .filter(|l| l.contains("ORIGDST"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Polls `done` for up to 5 s.
fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    done()
}

fn name(i: usize) -> String {
    format!("default/pod-{i}")
}

fn pod_counter(node: &Netns, metric: &str, i: usize) -> f64 {
    scrape(node)
        .get(&format!("origdst_{metric}{{pod=\"{}\"}}", name(i)))
        .unwrap_or(0.0)
}

#[test]
fn in_pod_mode_serves_fifty_pods_from_inside_their_namespaces_iptables() {
    fifty_pods("inpodipt", "iptables");
}

#[test]
fn in_pod_mode_serves_fifty_pods_from_inside_their_namespaces_nftables() {
    fifty_pods("inpodnft", "nftables");
}

/// The capture rules in a namespace (nftables), origdst's only.
fn our_nft_rules(ns: &Netns) -> Vec<String> {
    // (No table: no rules; `nft` says so with a failure.)
    let out = ns
        .command("nft")
        .args(["list", "table", "inet", "origdst"])
        .output()
        .expect("run nft");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn fifty_pods(tag: &str, backend: &str) {
    let node = Node::new(tag, PODS);
    let config = ConfigFile::new(tag, &origdst_runtime_uring::demo::node_yaml());
    let our_rules = |ns: &Netns| -> Vec<String> {
        if backend == "nftables" {
            our_nft_rules(ns)
        } else {
            our_rules(ns)
        }
    };
    let socket = std::env::temp_dir()
        .join(format!("{}-pods.sock", node.node.name()))
        .display()
        .to_string();
    let shards = SHARDS.to_string();
    let mut proxy = Proxy::start(
        origdst_bin!(),
        &node.node,
        &[
            "--config",
            config.arg(),
            "--shards",
            &shards,
            "--in-pod-socket",
            &socket,
            "--pods-max",
            "50",
            "--pod-rules",
            backend,
        ],
    );
    // (Pipes are pooled by the traffic to come, and kept: not counted.)
    let held = |proxy: &Proxy| {
        let mut kinds = proxy.fds_by_kind();
        kinds.remove("pipe");
        kinds
    };
    let fds_before = held(&proxy);
    let rules_before: Vec<Vec<String>> = node.pods.iter().map(our_rules).collect();
    assert!(rules_before.iter().all(Vec::is_empty), "{rules_before:?}");
    // Nothing listens in the node itself: in-pod mode opens listeners only in pods.
    let node_listens = node.node.run(|| {
        TcpStream::connect_timeout(&addr("127.0.0.1", 15001), Duration::from_secs(1)).is_ok()
    });
    assert!(!node_listens, "in-pod mode must not listen in the node");

    let started = Instant::now();
    for (i, pod) in node.pods.iter().enumerate() {
        add(&socket, &name(i), pod);
    }
    let add_time = started.elapsed();
    let metrics = scrape(&node.node);
    assert_eq!(metrics.value("origdst_pods"), PODS as f64);
    assert_eq!(
        metrics.value("origdst_pod_listeners"),
        (PODS * LISTENERS_PER_POD) as f64
    );
    for pod in &node.pods {
        assert!(
            !our_rules(pod).is_empty(),
            "no capture rules in {}",
            pod.name()
        );
    }

    // The interface refuses what it must, by reason, and changes nothing.
    let client = Client::connect(std::path::Path::new(&socket)).expect("pod socket");
    let pod0 = std::fs::File::open(format!("/var/run/netns/{}", node.pods[0].name())).unwrap();
    let refusals = [
        (client.add(&name(0), &pod0), "already served"),
        (client.add("evil\nname", &pod0), "only A-Z"),
        (client.add("pod-51", &pod0), "the limit"),
        (client.remove("nobody"), "no such pod"),
        (client.ask("ADD no-fd", None), "exactly one descriptor"),
        (
            client.add(
                "host",
                &std::fs::File::open(format!("/var/run/netns/{}", node.node.name()))
                    .expect("origdst's netns"),
            ),
            "own network namespace",
        ),
    ];
    for (answer, why) in refusals {
        let err = answer.expect_err(why).to_string();
        assert!(err.contains(why), "{why}: {err}");
    }
    let listed = client.list().expect("LIST");
    assert!(listed.starts_with("50\n"), "{listed}");
    drop(client);

    let world_seen: Ledger = Arc::new(Mutex::new(Vec::new()));
    let _world = serve(
        &node.world,
        &[addr(WORLD_V4, WORLD_PORT), addr(WORLD_V6, WORLD_PORT)],
        &world_seen,
    );
    let pod_seen: Ledger = Arc::new(Mutex::new(Vec::new()));
    let _pod_servers: Vec<Server> = node
        .pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            serve(
                pod,
                &[addr(&pod_v4(i), POD_PORT), addr(&pod_v6(i), POD_PORT)],
                &pod_seen,
            )
        })
        .collect();
    let v6 = |i: usize| i.is_multiple_of(5);

    // Outbound: every pod to the world, relayed from inside the pod: the world sees the pod's
    // own address.
    let mut outbound = 0;
    for (i, pod) in node.pods.iter().enumerate() {
        let mut dsts = vec![addr(WORLD_V4, WORLD_PORT)];
        if v6(i) {
            dsts.push(addr(WORLD_V6, WORLD_PORT));
        }
        for dst in dsts {
            outbound += 1;
            assert_eq!(
                exchange(pod, dst),
                Verified::intact(BYTES),
                "pod {i} → {dst}"
            );
        }
    }
    let seen = reported(&world_seen, outbound);
    assert_eq!(seen.len(), outbound, "the world saw every connection once");
    for s in &seen {
        assert_eq!(s.upload, Verified::intact(BYTES), "{s:?}");
        let from_a_pod =
            (0..PODS).any(|i| [pod_v4(i), pod_v6(i)].contains(&s.peer.ip().to_string()));
        assert!(
            from_a_pod,
            "the world must see the pod's own address: {s:?}"
        );
    }
    assert_eq!(proxy.live_stat("downstream_cx_total"), outbound as u64);

    // Inbound: the world to every pod, captured in the pod on its way in.
    let mut inbound = 0;
    for i in 0..PODS {
        let mut dsts = vec![addr(&pod_v4(i), POD_PORT)];
        if v6(i) {
            dsts.push(addr(&pod_v6(i), POD_PORT));
        }
        for dst in dsts {
            inbound += 1;
            assert_eq!(
                exchange(&node.world, dst),
                Verified::intact(BYTES),
                "→ pod {i}"
            );
        }
    }
    let seen = reported(&pod_seen, inbound);
    assert_eq!(seen.len(), inbound, "the pods saw every connection once");
    for s in &seen {
        assert_eq!(s.upload, Verified::intact(BYTES), "{s:?}");
        assert_eq!(s.local.port(), POD_PORT, "{s:?}");
    }
    let relayed = (outbound + inbound) as u64;
    assert_eq!(proxy.live_stat("downstream_cx_total"), relayed);

    // Each pod's own counters (published at most every 100 ms).
    thread::sleep(Duration::from_millis(300));
    for i in [0, 1, 5, 49] {
        let want = if v6(i) { 4.0 } else { 2.0 };
        assert_eq!(pod_counter(&node.node, "pod_cx_total", i), want, "pod {i}");
        assert_eq!(
            pod_counter(&node.node, "pod_rx_bytes_total", i),
            want * BYTES as f64,
            "pod {i}"
        );
    }

    // The node's own traffic is not captured.
    assert_eq!(
        exchange(&node.node, addr(WORLD_V4, WORLD_PORT)),
        Verified::intact(BYTES)
    );
    assert_eq!(proxy.live_stat("downstream_cx_total"), relayed);

    // Pods 40–49 are removed and added again, twice, while pods 30–39 keep sending, and pod 3
    // streams slowly (4 s) while it is removed: it drains, byte-exact.
    thread::scope(|scope| {
        let steady: Vec<_> = (30..40)
            .map(|i| {
                let pod = &node.pods[i];
                scope.spawn(move || {
                    (0..8)
                        .map(|_| exchange(pod, addr(WORLD_V4, WORLD_PORT)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let pod3 = &node.pods[3];
        let slow = scope.spawn(move || {
            exchange_paced(
                pod3,
                addr(WORLD_V4, WORLD_PORT),
                16,
                Duration::from_millis(250),
            )
        });
        thread::sleep(Duration::from_millis(500));
        remove(&socket, &name(3));
        for _ in 0..2 {
            for i in 40..PODS {
                remove(&socket, &name(i));
            }
            for i in 40..PODS {
                add(&socket, &name(i), &node.pods[i]);
            }
        }
        for (i, worker) in steady.into_iter().enumerate() {
            for verified in worker.join().expect("steady traffic") {
                assert_eq!(verified, Verified::intact(BYTES), "pod {}", 30 + i);
            }
        }
        assert_eq!(
            slow.join().expect("slow transfer"),
            Verified::intact(BYTES),
            "a pod removed mid-transfer drains"
        );
    });
    for i in 40..PODS {
        assert_eq!(
            exchange(&node.pods[i], addr(WORLD_V4, WORLD_PORT)),
            Verified::intact(BYTES),
            "pod {i} after it came back"
        );
    }
    // Pod 3 is no longer captured: its next connection goes straight to the world.
    let before = proxy.live_stat("downstream_cx_total");
    assert_eq!(
        exchange(&node.pods[3], addr(WORLD_V4, WORLD_PORT)),
        Verified::intact(BYTES)
    );
    assert_eq!(proxy.live_stat("downstream_cx_total"), before);
    // Its rules went once its last connection closed (they stay, capturing nothing, until then:
    // the kernel translates a redirected connection only while they exist).
    assert!(
        wait_until(|| our_rules(&node.pods[3]).is_empty()),
        "pod 3's rules stayed"
    );

    // Every pod gone: listeners, descriptors and rules back to where they were.
    for i in (0..PODS).filter(|&i| i != 3) {
        remove(&socket, &name(i));
    }
    let metrics = scrape(&node.node);
    assert_eq!(metrics.value("origdst_pods"), 0.0);
    assert_eq!(metrics.value("origdst_pod_listeners"), 0.0);
    assert_eq!(
        metrics.value("origdst_pods_added_total"),
        (PODS + 20) as f64
    );
    assert_eq!(
        metrics.value("origdst_pods_removed_total"),
        (PODS + 20) as f64
    );
    wait_until(|| held(&proxy) == fds_before);
    assert_eq!(held(&proxy), fds_before, "descriptors leaked");
    for (i, pod) in node.pods.iter().enumerate() {
        assert!(
            wait_until(|| our_rules(pod) == rules_before[i]),
            "rules left in pod {i}: {:?}",
            our_rules(pod)
        );
    }
    let exit = proxy.stop_clean();
    let total = exit.stat("downstream_cx_total");
    assert_eq!(exit.stat("completed"), total, "{}", exit.log);
    assert_eq!(
        exit.stat("refused_own_mark") + exit.stat("refused_own_upstream"),
        0
    );
    println!(
        "in-pod ({backend}): {PODS} pods added in {add_time:?}, {total} connections relayed \
         ({outbound} outbound, {inbound} inbound, the rest during churn), all pods removed, \
         nothing left"
    );
}
