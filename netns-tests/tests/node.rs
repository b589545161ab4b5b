//! Node mode: origdst in the host namespace serving every pod of a node (`origdst iptables apply
//! --mode node`, the real rule generator), against the real kernel: 50 pod namespaces behind a
//! bridge, a world beyond the uplink. Every pod's outbound and inbound connections are relayed
//! exactly once and byte-exact (IPv4 for all, IPv6 for every fifth), a pod talking to a pod is
//! relayed once, an opted-out pod and the node's own traffic are not captured, and removing the
//! rules leaves nothing behind.

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use origdst_netns_tests::config::ConfigFile;
use origdst_netns_tests::netns::Netns;
use origdst_netns_tests::node::{
    NODE_POD_SIDE_V4, NODE_UPLINK_V4, NODE_UPLINK_V6, Node, POD_CIDR_V4, POD_CIDR_V6, WORLD_V4,
    WORLD_V6, pod_v4, pod_v6,
};
use origdst_netns_tests::origdst_bin;
use origdst_netns_tests::pattern::{Pattern, Verified};
use origdst_netns_tests::proxy::Proxy;
use origdst_netns_tests::server::Server;

const UP: Pattern = Pattern::new(0x90d1);
const DOWN: Pattern = Pattern::new(0x90d2);
const BYTES: u64 = 64 * 1024;
const WORLD_PORT: u16 = 8080;
const POD_PORT: u16 = 9000;
const PODS: usize = 50;
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// The node proxy's config (the demo's): the embedded default and an inbound listener on 15006.
fn node_config(tag: &str) -> ConfigFile {
    ConfigFile::new(tag, &origdst_runtime_uring::demo::node_yaml())
}

/// What a server saw of one connection.
#[derive(Debug, Clone)]
struct Seen {
    local: SocketAddr,
    peer: SocketAddr,
    upload: Verified,
}

/// Verifies the upload to its end, answers with the download, closes; reports what it saw.
fn serve(ns: &Netns, addrs: &[SocketAddr], seen: &Arc<Mutex<Vec<Seen>>>) -> Server {
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

/// One exchange from inside `ns`: the upload, the FIN, the whole download.
fn exchange(ns: &Netns, dst: SocketAddr) -> Verified {
    ns.run(move || {
        let stream = TcpStream::connect_timeout(&dst, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        UP.write_to(&mut &stream, BYTES).expect("client send");
        stream.shutdown(Shutdown::Write).expect("client shutdown");
        DOWN.verify_from(&mut &stream).expect("client receive")
    })
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an IP"), port)
}

/// Waits (bounded) until the servers have reported `n` connections.
fn reported(seen: &Arc<Mutex<Vec<Seen>>>, n: usize) -> Vec<Seen> {
    for _ in 0..500 {
        if seen.lock().unwrap().len() >= n {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    seen.lock().unwrap().clone()
}

fn rules(node: &Netns, action: &str, backend: &str, config: &ConfigFile) {
    let cidrs = format!("{POD_CIDR_V4},{POD_CIDR_V6}");
    let excluded = format!("{}/32,{}/128", pod_v4(0), pod_v6(0));
    node.exec(
        origdst_bin!(),
        &[
            "iptables",
            action,
            "--mode",
            "node",
            "--backend",
            backend,
            "--pod-cidr",
            &cidrs,
            "--exclude-pod-cidr",
            &excluded,
            "--config",
            config.arg(),
        ],
    );
}

fn ruleset(node: &Netns) -> String {
    let iptables = node.exec("iptables-save", &[]);
    let ip6tables = node.exec("ip6tables-save", &[]);
    let nft = node.exec("nft", &["list", "ruleset"]);
    // (Without the save tools' dated comment lines.)
    [iptables, ip6tables, nft]
        .iter()
        .flat_map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn every_pods_traffic_relayed_once(tag: &str, backend: &str) {
    let node = Node::new(tag, PODS);
    let config = node_config(tag);
    let mut proxy = Proxy::start(
        origdst_bin!(),
        &node.node,
        &["--config", config.arg(), "--shards", "2"],
    );
    let before = ruleset(&node.node);
    rules(&node.node, "apply", backend, &config);
    // Applying twice converges to the same rules.
    let applied = ruleset(&node.node);
    rules(&node.node, "apply", backend, &config);
    assert_eq!(
        ruleset(&node.node),
        applied,
        "a second apply changed the rules"
    );

    let world_seen = Arc::new(Mutex::new(Vec::new()));
    let _world = serve(
        &node.world,
        &[addr(WORLD_V4, WORLD_PORT), addr(WORLD_V6, WORLD_PORT)],
        &world_seen,
    );
    let pod_seen = Arc::new(Mutex::new(Vec::new()));
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

    // Outbound: every pod to the world (IPv6 too for every fifth).
    let mut outbound = Vec::new();
    for (i, pod) in node.pods.iter().enumerate() {
        outbound.push((i, addr(WORLD_V4, WORLD_PORT)));
        assert_eq!(
            exchange(pod, addr(WORLD_V4, WORLD_PORT)),
            Verified::intact(BYTES)
        );
        if v6(i) {
            outbound.push((i, addr(WORLD_V6, WORLD_PORT)));
            assert_eq!(
                exchange(pod, addr(WORLD_V6, WORLD_PORT)),
                Verified::intact(BYTES)
            );
        }
    }
    let seen = reported(&world_seen, outbound.len());
    assert_eq!(seen.len(), outbound.len(), "the world saw every connection");
    for s in &seen {
        assert_eq!(
            s.upload,
            Verified::intact(BYTES),
            "upload to the world: {s:?}"
        );
        let dialled = outbound.iter().any(|(_, dst)| *dst == s.local);
        assert!(dialled, "the world accepted on {} (not dialled)", s.local);
    }
    for (i, family) in [(0, 4), (0, 6)] {
        // The opted-out pod reaches the world from its own address: not captured.
        let own = if family == 4 { pod_v4(i) } else { pod_v6(i) };
        assert!(
            seen.iter().any(|s| s.peer.ip().to_string() == own),
            "pod {i} (opted out) must reach the world from {own}: {seen:?}"
        );
    }
    let through_node = seen
        .iter()
        .filter(|s| [NODE_UPLINK_V4, NODE_UPLINK_V6].contains(&s.peer.ip().to_string().as_str()))
        .count();
    let captured_out = outbound.iter().filter(|(i, _)| *i != 0).count();
    assert_eq!(
        through_node, captured_out,
        "every other pod's connection comes from origdst on the node's uplink"
    );

    // Inbound: the world to every pod.
    let mut inbound = Vec::new();
    for i in 0..PODS {
        let mut dsts = vec![addr(&pod_v4(i), POD_PORT)];
        if v6(i) {
            dsts.push(addr(&pod_v6(i), POD_PORT));
        }
        for dst in dsts {
            inbound.push((i, dst));
            assert_eq!(
                exchange(&node.world, dst),
                Verified::intact(BYTES),
                "to pod {i}"
            );
        }
    }
    let seen = reported(&pod_seen, inbound.len());
    assert_eq!(seen.len(), inbound.len(), "the pods saw every connection");
    for s in &seen {
        assert_eq!(s.upload, Verified::intact(BYTES), "upload to a pod: {s:?}");
        let from_world = [WORLD_V4, WORLD_V6].contains(&s.peer.ip().to_string().as_str());
        let pod0 = [pod_v4(0), pod_v6(0)].contains(&s.local.ip().to_string());
        assert_eq!(
            from_world, pod0,
            "only the opted-out pod is reached by the world directly: {s:?}"
        );
    }
    let captured_in = inbound.iter().filter(|(i, _)| *i != 0).count();

    // A pod to a pod: relayed once (the sender's outbound; origdst's own connection to the
    // receiver leaves the node's stack and is not captured again).
    assert_eq!(
        exchange(&node.pods[1], addr(&pod_v4(2), POD_PORT)),
        Verified::intact(BYTES)
    );
    let seen = reported(&pod_seen, inbound.len() + 1);
    let last = seen.last().expect("pod 2's report");
    assert_eq!(last.peer.ip().to_string(), NODE_POD_SIDE_V4, "via origdst");

    // The node's own connections: to a pod and to the world, not captured.
    let relayed = captured_out + captured_in + 1;
    assert_eq!(proxy.live_stat("downstream_cx_total"), relayed as u64);
    assert_eq!(
        exchange(&node.node, addr(&pod_v4(3), POD_PORT)),
        Verified::intact(BYTES)
    );
    assert_eq!(
        exchange(&node.node, addr(WORLD_V4, WORLD_PORT)),
        Verified::intact(BYTES)
    );
    assert_eq!(
        proxy.live_stat("downstream_cx_total"),
        relayed as u64,
        "the node's own connections must not be captured"
    );

    // Removing the rules leaves the node as it was; a pod then reaches the world directly.
    rules(&node.node, "remove", backend, &config);
    // (iptables-nft keeps the built-in tables it made, empty: no rule is left, and none of ours.)
    let after = ruleset(&node.node);
    let rules_in = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("-A ") || l.contains("origdst") || l.contains("ORIGDST"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        rules_in(&after),
        rules_in(&before),
        "rules left behind:\n{after}"
    );
    assert_eq!(
        exchange(&node.pods[4], addr(WORLD_V4, WORLD_PORT)),
        Verified::intact(BYTES)
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("downstream_cx_total"), relayed as u64);
    assert_eq!(exit.stat("completed"), relayed as u64, "{}", exit.log);
    assert_eq!(
        exit.stat("downstream_cx_rx_bytes_total"),
        relayed as u64 * BYTES
    );
    println!(
        "{tag}: {PODS} pods, {relayed} connections relayed ({captured_out} outbound, \
         {captured_in} inbound, 1 pod to pod), opted-out pod and node traffic direct"
    );
}

#[test]
fn node_mode_iptables_relays_every_pods_traffic_once() {
    every_pods_traffic_relayed_once("nodeipt", "iptables");
}

#[test]
fn node_mode_nftables_relays_every_pods_traffic_once() {
    every_pods_traffic_relayed_once("nodenft", "nftables");
}

/// `origdst demo`, the README's first command, as a user runs it: it builds its node, relays
/// every kind of traffic, checks it, cleans up, and exits 0 — leaving no namespace behind.
#[test]
fn the_demo_runs_its_checks_and_cleans_up() {
    demo("node", "destination_is_listener 1");
}

/// The same in in-pod mode: origdst opens its listeners inside each pod (`origdst pod add`).
#[test]
fn the_in_pod_demo_runs_its_checks_and_cleans_up() {
    demo("in-pod", "no_original_dst 1");
}

fn demo(mode: &str, loop_outcome: &str) {
    let out = std::process::Command::new(origdst_bin!())
        .args(["demo", "--pods", "3", "--mode", mode])
        .output()
        .expect("run origdst demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "origdst demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("checks held"), "{stdout}");
    assert!(!stdout.contains('✗'), "{stdout}");
    let label = if mode == "in-pod" { "demo/pod-0" } else { "" };
    for section in ["per pod:", loop_outcome, "upstream_connect_failed 1", label] {
        assert!(stdout.contains(section), "no {section:?} in:\n{stdout}");
    }
    let prefix = format!("odemo{}-", out_pid(&stdout));
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains(&prefix),
        "the demo left namespaces behind"
    );
}

/// The demo's pid, from its first line ("… in network namespaces odemo<pid>-*").
fn out_pid(stdout: &str) -> String {
    stdout
        .split("odemo")
        .nth(1)
        .and_then(|rest| rest.split('-').next())
        .unwrap_or_default()
        .to_string()
}
