//! `origdst iptables apply|remove` on the real kernel: in a pod namespace (application, origdst and
//! the rules together, a sidecar), the generated rules capture outbound and inbound connections for
//! IPv4 and IPv6 with iptables and with nftables, REDIRECT and TPROXY; applying twice changes
//! nothing, and removing leaves exactly the host's own rules.

use std::net::SocketAddr;
use std::process::Output;

use origdst_netns_tests::config::ConfigFile;
use origdst_netns_tests::netns::{Netns, veth};
use origdst_netns_tests::origdst_bin;
use origdst_netns_tests::proxy::Proxy;
use origdst_netns_tests::server::{Server, ask_local};

const POD: [&str; 2] = ["10.13.1.2", "fd13:1::2"];
const REMOTE: [&str; 2] = ["10.13.1.10", "fd13:1::10"];

/// A pod and a remote namespace on one link, each with an address per family.
fn pod_and_remote(tag: &str) -> (Netns, Netns) {
    let pod = Netns::new(&format!("{tag}-pod"));
    let remote = Netns::new(&format!("{tag}-rem"));
    veth(&pod, "eth0", &remote, "r0");
    pod.ip(&["addr", "add", "10.13.1.2/24", "dev", "eth0"]);
    pod.ip(&["-6", "addr", "add", "fd13:1::2/64", "dev", "eth0", "nodad"]);
    remote.ip(&["addr", "add", "10.13.1.10/24", "dev", "r0"]);
    remote.ip(&["-6", "addr", "add", "fd13:1::10/64", "dev", "r0", "nodad"]);
    (pod, remote)
}

fn origdst_iptables(ns: &Netns, args: &[&str]) -> Output {
    let output = ns
        .command(origdst_bin!())
        .arg("iptables")
        .args(args)
        .output()
        .expect("run origdst iptables");
    assert!(
        output.status.success(),
        "origdst iptables {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The rule set as the tool shows it, without timestamps and counters.
fn snapshot(ns: &Netns, backend: &str) -> String {
    let text = |program: &str, args: &[&str]| {
        String::from_utf8_lossy(&ns.exec(program, args).stdout).into_owned()
    };
    if backend != "iptables" {
        return text("nft", &["list", "ruleset"])
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| format!("{line}\n"))
            .collect();
    }
    let mut out = String::new();
    for program in ["iptables-save", "ip6tables-save"] {
        // iptables-save prints a table once anything used it, even when it is empty again: an
        // empty table (built-in chains, no rule) is not a rule left behind.
        let mut table = String::new();
        let mut has_rules = false;
        for line in text(program, &[]).lines() {
            if line.starts_with('#') {
                continue;
            }
            // Chain policy lines carry packet counters in brackets.
            let line = match line.find(" [") {
                Some(at) if line.starts_with(':') => &line[..at],
                _ => line,
            };
            has_rules |= line.starts_with("-A") || line.ends_with(" -");
            table.push_str(line);
            table.push('\n');
            if line == "COMMIT" {
                if has_rules {
                    out.push_str(&table);
                }
                table.clear();
                has_rules = false;
            }
        }
    }
    out
}

/// Rules of the host's own that origdst must leave alone.
fn install_unrelated(ns: &Netns, backend: &str) {
    match backend {
        "iptables" => {
            for tables in ["iptables", "ip6tables"] {
                ns.exec(tables, &["-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "ACCEPT"]);
                ns.exec(tables, &["-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"]);
            }
        }
        _ => ns.load_nft(
            "table inet host_own {
               chain input { type filter hook input priority 0; policy accept; tcp dport 22 accept; }
             }
            ",
        ),
    }
}

/// origdst's embedded default (outbound 15001, inbound 15006 from 127.0.0.6 / ::6), its inbound
/// listener transparent for TPROXY.
fn sidecar_config(tag: &str, transparent: bool) -> ConfigFile {
    let default = origdst_core::config::DEFAULT_YAML;
    let inbound = "  - name: virtualInbound\n";
    assert!(default.contains(inbound));
    let yaml = if transparent {
        default.replacen(inbound, &format!("{inbound}    transparent: true\n"), 1)
    } else {
        default.to_string()
    };
    ConfigFile::new(tag, &yaml)
}

/// Dials `dst` from inside `ns` on a socket carrying `mark` (as origdst's upstream sockets do)
/// and returns what an `echo_local` server answered.
fn ask_local_marked(ns: &Netns, dst: SocketAddr, mark: u32) -> String {
    ns.run(move || {
        use std::io::Read;
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(dst),
            socket2::Type::STREAM,
            None,
        )
        .expect("socket");
        socket.set_mark(mark).expect("SO_MARK");
        socket
            .connect_timeout(&dst.into(), std::time::Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
        let mut stream = std::net::TcpStream::from(socket);
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .expect("read timeout");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .unwrap_or_else(|e| panic!("read from {dst}: {e}"));
        answer
    })
}

fn captures_and_cleans_up(tag: &str, backend: &str, inbound: &str) {
    let (pod, remote) = pod_and_remote(tag);
    install_unrelated(&pod, backend);
    let before = snapshot(&pod, backend);
    // `apply` checks the rules against the config origdst will run: it has the inbound listener.
    let config = sidecar_config(tag, inbound == "tproxy");
    let args = [
        "apply",
        "--backend",
        backend,
        "--inbound",
        inbound,
        "--config",
        config.arg(),
    ];
    if inbound == "tproxy" {
        // Switching modes converges: REDIRECT's inbound rules go when TPROXY's come.
        origdst_iptables(
            &pod,
            &[
                "apply",
                "--backend",
                backend,
                "--inbound",
                "redirect",
                "--config",
                config.arg(),
            ],
        );
    }
    origdst_iptables(&pod, &args);
    let applied = snapshot(&pod, backend);
    if inbound == "tproxy" {
        assert!(!applied.contains("IN_REDIRECT"), "{applied}");
        assert!(!applied.contains("redirect to :15006"), "{applied}");
    }
    assert!(applied.to_lowercase().contains("origdst"), "{applied}");
    origdst_iptables(&pod, &args);
    assert_eq!(
        snapshot(&pod, backend),
        applied,
        "a second apply changed the rules"
    );

    // Outbound: the pod's application dials the remote server.
    let outbound: Vec<SocketAddr> = REMOTE
        .iter()
        .map(|ip| SocketAddr::new(ip.parse().unwrap(), 8080))
        .collect();
    let (_remote_server, remote_seen) = Server::echo_local(&remote, &outbound);
    // Inbound: a remote client dials the pod's application.
    let inbound_dsts: Vec<SocketAddr> = POD
        .iter()
        .map(|ip| SocketAddr::new(ip.parse().unwrap(), 9090))
        .collect();
    let (_app, app_seen) = Server::echo_local(&pod, &inbound_dsts);
    // Istio's health port (excluded by default, as are 15000, 15020 and 15090): never captured.
    let health = SocketAddr::new(POD[0].parse().unwrap(), 15021);
    let (_health, health_seen) = Server::echo_local(&pod, &[health]);
    let proxy = Proxy::start(
        origdst_bin!(),
        &pod,
        &["--config", config.arg(), "--shards", "1"],
    );
    for &dst in &outbound {
        assert_eq!(ask_local(&pod, dst), dst.to_string());
        assert_eq!(remote_seen.recv().unwrap(), dst);
    }
    for &dst in &inbound_dsts {
        assert_eq!(ask_local(&remote, dst), dst.to_string());
        assert_eq!(app_seen.recv().unwrap(), dst);
    }
    assert_eq!(ask_local(&remote, health), health.to_string());
    assert_eq!(health_seen.recv().unwrap(), health);
    // The application calling its own address is not captured; the proxy's own connection to
    // it (marked) goes through the inbound listener, as Istio's sidecar rule has it (REDIRECT
    // only), and that relay's connection from 127.0.0.6 / ::6 is not captured again.
    let mut captured = 4;
    for &dst in &inbound_dsts {
        assert_eq!(ask_local(&pod, dst), dst.to_string());
        assert_eq!(app_seen.recv().unwrap(), dst);
        if inbound == "redirect" {
            assert_eq!(ask_local_marked(&pod, dst, 1337), dst.to_string());
            assert_eq!(app_seen.recv().unwrap(), dst);
            captured += 1;
        }
    }
    let exit = proxy.stop_clean();
    // Each captured connection exactly once (none looped back through the rules; the health
    // check and the application's own calls went straight to the application).
    assert_eq!(exit.stat("downstream_cx_total"), captured, "{}", exit.log);
    assert_eq!(exit.stat("completed"), captured);
    let provenance = match inbound {
        "tproxy" => ("orig_dst_transparent_local", 2),
        // (The proxy's own call to the pod's address too, through the inbound listener.)
        _ => ("orig_dst_sockopt_v4", 3),
    };
    assert_eq!(exit.stat(provenance.0), provenance.1, "{}", exit.log);

    let remove = ["remove", "--backend", backend];
    origdst_iptables(&pod, &remove);
    origdst_iptables(&pod, &remove);
    assert_eq!(
        snapshot(&pod, backend),
        before,
        "remove left something behind"
    );
    assert!(
        pod.exec("ip", &["rule", "list"])
            .stdout
            .windows(4)
            .all(|w| w != b"1338"),
        "the TPROXY policy rule is still there"
    );
}

#[test]
fn iptables_redirect_captures_both_ways_is_idempotent_and_removes_cleanly() {
    captures_and_cleans_up("rulesipt", "iptables", "redirect");
}

#[test]
fn nftables_redirect_captures_both_ways_is_idempotent_and_removes_cleanly() {
    captures_and_cleans_up("rulesnft", "nftables", "redirect");
}

#[test]
fn iptables_tproxy_captures_both_ways_is_idempotent_and_removes_cleanly() {
    captures_and_cleans_up("rulesiptp", "iptables", "tproxy");
}

#[test]
fn nftables_tproxy_captures_both_ways_is_idempotent_and_removes_cleanly() {
    captures_and_cleans_up("rulesnfttp", "nftables", "tproxy");
}

#[test]
fn apply_refuses_rules_that_redirect_to_a_port_without_a_listener() {
    let (pod, _remote) = pod_and_remote("rulesnolisten");
    let before = snapshot(&pod, "iptables");
    // Inbound REDIRECT to a port where the embedded default has no listener would black-hole
    // every inbound connection of the host.
    let output = pod
        .command(origdst_bin!())
        .args([
            "iptables",
            "apply",
            "--inbound",
            "redirect",
            "--inbound-port",
            "15008",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "--inbound-port 15008: the embedded default config has no IPv4 listener on port 15008"
        ),
        "{stderr}"
    );
    assert_eq!(
        snapshot(&pod, "iptables"),
        before,
        "a refused apply changed the rules"
    );
    // With its defaults, apply follows the default config: outbound to 15001, inbound to
    // 15006 but for SSH and Istio's ports, 127.0.0.6 never captured.
    origdst_iptables(&pod, &["apply"]);
    let applied = snapshot(&pod, "iptables");
    for rule in [
        "--to-ports 15001",
        "--to-ports 15006",
        "--dport 22 -j RETURN",
        "-s 127.0.0.6/32 -o lo -j RETURN",
    ] {
        assert!(applied.contains(rule), "no {rule:?} in {applied}");
    }
    origdst_iptables(&pod, &["remove"]);
    assert_eq!(snapshot(&pod, "iptables"), before);
}

#[test]
fn print_shows_what_apply_runs_and_bad_flags_name_the_flag() {
    let (pod, _remote) = pod_and_remote("rulesprint");
    let printed = origdst_iptables(&pod, &["print", "--inbound", "tproxy"]);
    let script = String::from_utf8(printed.stdout).unwrap();
    assert!(script.starts_with("#!/bin/sh"));
    assert!(script.contains("TPROXY --on-port 15006"), "{script}");
    // Printing touches nothing.
    assert!(!snapshot(&pod, "iptables").contains("ORIGDST"));
    let output = pod
        .command(origdst_bin!())
        .args([
            "iptables",
            "apply",
            "--inbound",
            "tproxy",
            "--tproxy-mark",
            "1337",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tproxy-mark"), "{stderr}");
    assert!(
        !snapshot(&pod, "iptables").contains("ORIGDST"),
        "a refused spec applied rules"
    );
}
