//! Interception modes a node proxy meets in production, on the real kernel: the same relay
//! reached through nftables REDIRECT, through TPROXY with a transparent listener and policy
//! routing, and through sidecar-style OUTPUT rules that exclude origdst's own mark — IPv4 and IPv6.

use std::net::SocketAddr;
use std::time::Duration;

use origdst_netns_tests::config::ConfigFile;
use origdst_netns_tests::netns::{Netns, veth};
use origdst_netns_tests::origdst_bin;
use origdst_netns_tests::proxy::{Proxy, ProxyExit};
use origdst_netns_tests::server::{Server, ask_local};
use origdst_netns_tests::topology::{
    CLIENT_V4, CLIENT_V6, Gateway, Interception, SERVER_V4, SERVER_V6, TPROXY_PORT, addr,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Dials the second address of each family (a wrong destination cannot pass) and checks the
/// server saw the dialled address.
fn relays_to_dialled(
    client: &Netns,
    seen: &std::sync::mpsc::Receiver<SocketAddr>,
    dsts: &[SocketAddr],
) {
    for &dst in dsts {
        assert_eq!(
            ask_local(client, dst),
            dst.to_string(),
            "connection to {dst} arrived elsewhere"
        );
        assert_eq!(seen.recv_timeout(TIMEOUT).expect("server saw it"), dst);
    }
}

#[test]
fn nftables_redirect_relays_v4_and_v6() {
    let gw = Gateway::with("nft", Interception::NftablesRedirect);
    let dsts = [addr(SERVER_V4[1], 8080), addr(SERVER_V6[1], 8080)];
    let (_server, seen) = Server::echo_local(&gw.server, &dsts);
    let proxy = Proxy::start(origdst_bin!(), &gw.router, &["--shards", "2"]);
    relays_to_dialled(&gw.client, &seen, &dsts);
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("orig_dst_sockopt_v4"), 1);
    assert_eq!(exit.stat("orig_dst_sockopt_v6"), 1);
}

fn tproxy_relays_v4_and_v6(tag: &str, interception: Interception) {
    let gw = Gateway::with(tag, interception);
    let dsts = [addr(SERVER_V4[1], 8080), addr(SERVER_V6[1], 8080)];
    let (_server, seen) = Server::echo_local(&gw.server, &dsts);
    let port = format!("port_value: {TPROXY_PORT} }}");
    let config = ConfigFile::default_with(
        tag,
        &[
            // (The default's inbound listener makes room on the TPROXY port.)
            ("port_value: 15006 }", "port_value: 15016 }"),
            ("port_value: 15006 }", "port_value: 15016 }"),
            ("port_value: 15001 }", &port),
            ("port_value: 15001 }", &port),
            (
                "  - name: virtualOutbound\n",
                "  - name: tproxyCapture\n    transparent: true\n",
            ),
        ],
    );
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--config", config.arg(), "--shards", "2"],
    );
    relays_to_dialled(&gw.client, &seen, &dsts);
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("orig_dst_transparent_local"), 2, "{}", exit.log);
    assert_eq!(
        exit.stat("orig_dst_sockopt_v4") + exit.stat("orig_dst_sockopt_v6"),
        0
    );
}

#[test]
fn tproxy_transparent_listener_relays_v4_and_v6() {
    tproxy_relays_v4_and_v6("tproxy", Interception::IptablesTproxy);
}

#[test]
fn nftables_tproxy_relays_v4_and_v6() {
    tproxy_relays_v4_and_v6("nfttproxy", Interception::NftablesTproxy);
}

/// A pod's capture rules.
enum PodRules<'a> {
    /// Lines for both iptables and ip6tables.
    Iptables(&'a [&'a str]),
    /// One `inet` nftables ruleset for both families.
    Nftables(&'a str),
}

/// One pod namespace holding the application and origdst, with these OUTPUT rules, and a server
/// namespace answering on two addresses per family.
fn sidecar(tag: &str, rules: PodRules<'_>) -> (Netns, Netns) {
    let pod = Netns::new(&format!("{tag}-pod"));
    let server = Netns::new(&format!("{tag}-srv"));
    veth(&pod, "eth0", &server, "s0");
    pod.ip(&["addr", "add", "10.12.1.2/24", "dev", "eth0"]);
    pod.ip(&["-6", "addr", "add", "fd12:1::2/64", "dev", "eth0", "nodad"]);
    for ip in ["10.12.1.10/24", "10.12.1.11/24"] {
        server.ip(&["addr", "add", ip, "dev", "s0"]);
    }
    for ip in ["fd12:1::10/64", "fd12:1::11/64"] {
        server.ip(&["-6", "addr", "add", ip, "dev", "s0", "nodad"]);
    }
    match rules {
        PodRules::Iptables(lines) => {
            for tables in ["iptables", "ip6tables"] {
                for line in lines {
                    pod.exec(tables, &line.split_whitespace().collect::<Vec<_>>());
                }
            }
        }
        PodRules::Nftables(ruleset) => pod.load_nft(ruleset),
    }
    (pod, server)
}

/// Every connection was relayed once: none came back to origdst as a second connection.
fn assert_relayed_without_loop(exit: &ProxyExit, connections: u64) {
    assert_eq!(
        exit.stat("downstream_cx_total"),
        connections,
        "a connection looped back:\n{}",
        exit.log
    );
    assert_eq!(exit.stat("completed"), connections);
}

const SIDECAR_DSTS: [&str; 2] = ["10.12.1.11:8080", "[fd12:1::11]:8080"];

#[test]
fn sidecar_output_redirect_excludes_the_proxy_mark() {
    // Istio-style: capture every TCP connection of the pod except origdst's own (mark 1337) and
    // loopback.
    let (pod, server) = sidecar(
        "sidecar",
        PodRules::Iptables(&[
            "-t nat -A OUTPUT -p tcp -m mark --mark 1337 -j RETURN",
            "-t nat -A OUTPUT -p tcp -o lo -j RETURN",
            "-t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 15001",
        ]),
    );
    let dsts = SIDECAR_DSTS.map(|a| a.parse::<SocketAddr>().unwrap());
    let (_server, seen) = Server::echo_local(&server, &dsts);
    let proxy = Proxy::start(origdst_bin!(), &pod, &["--shards", "2"]);
    relays_to_dialled(&pod, &seen, &dsts);
    let exit = proxy.stop_clean();
    assert_relayed_without_loop(&exit, 2);
}

#[test]
fn sidecar_rules_that_forget_the_mark_loop_once_and_are_refused() {
    // The rule set captures origdst's own upstream connections too. Each comes straight back;
    // origdst recognises its own socket, refuses it, and the client is reset — one extra
    // connection per attempt, never a storm.
    let (pod, server) = sidecar(
        "loop",
        PodRules::Iptables(&[
            "-t nat -A OUTPUT -p tcp -o lo -j RETURN",
            "-t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 15001",
        ]),
    );
    let dsts = SIDECAR_DSTS.map(|a| a.parse::<SocketAddr>().unwrap());
    let (_server, seen) = Server::echo_local(&server, &dsts);
    let proxy = Proxy::start(origdst_bin!(), &pod, &["--shards", "2"]);
    for dst in dsts {
        let outcome = pod.run(move || {
            use std::io::Read;
            let mut stream = std::net::TcpStream::connect(dst).expect("the proxy accepts");
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            stream.read(&mut [0u8; 64]).map_err(|e| e.kind())
        });
        assert_eq!(outcome, Err(std::io::ErrorKind::ConnectionReset), "{dst}");
    }
    assert!(seen.try_recv().is_err(), "nothing reached the server");
    // What an operator's dashboard shows: the loop, by reason.
    let metrics = origdst_netns_tests::admin::scrape(&pod);
    assert_eq!(
        metrics.value("origdst_downstream_cx_refused_total{reason=\"own_upstream\"}"),
        2.0
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("refused_own_upstream"), 2, "{}", exit.log);
    assert_eq!(
        exit.stat("downstream_cx_total"),
        4,
        "each attempt looped exactly once:\n{}",
        exit.log
    );
    assert_eq!(exit.stat("upstream_cx_total"), 2);
}

/// Where the node sets `net.ipv4.tcp_fwmark_accept=1`, a looped connection carries origdst's own
/// mark into the accepted socket, and that alone refuses it (the address check turned off here).
/// origdst reads the mark only where the sysctl makes it meaningful: this is the case it is read.
#[test]
fn with_fwmark_accept_a_looped_connection_is_refused_by_its_mark() {
    let (pod, server) = sidecar(
        "fwmark",
        PodRules::Iptables(&[
            "-t nat -A OUTPUT -p tcp -o lo -j RETURN",
            "-t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 15001",
        ]),
    );
    pod.exec("sysctl", &["-qw", "net.ipv4.tcp_fwmark_accept=1"]);
    let dst: SocketAddr = SIDECAR_DSTS[0].parse().unwrap();
    let (_server, seen) = Server::echo_local(&server, &[dst]);
    let config = ConfigFile::default_with(
        "fwmark",
        &[("origdst:\n", "origdst:\n  detect_own_upstream: false\n")],
    );
    let proxy = Proxy::start(origdst_bin!(), &pod, &["--config", config.arg()]);
    let outcome = pod.run(move || {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect(dst).expect("the proxy accepts");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.read(&mut [0u8; 64]).map_err(|e| e.kind())
    });
    assert_eq!(outcome, Err(std::io::ErrorKind::ConnectionReset));
    assert!(seen.try_recv().is_err(), "nothing reached the server");
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("refused_own_mark"), 1, "{}", exit.log);
    assert_eq!(exit.stat("refused_own_upstream"), 0, "{}", exit.log);
    assert_eq!(
        exit.stat("downstream_cx_total"),
        2,
        "the attempt looped exactly once"
    );
}

/// Least privilege for the mark: uid 1337 with CAP_NET_ADMIN alone marks its upstream sockets
/// and relays through mark-excluding rules; without the capability, start-up stops and names the
/// field and the capability instead of failing on every connection.
#[test]
fn sidecar_as_uid_1337_with_only_cap_net_admin_marks_and_without_it_refuses_to_start() {
    let (pod, server) = sidecar(
        "netadmin",
        PodRules::Iptables(&[
            "-t nat -A OUTPUT -p tcp -m mark --mark 1337 -j RETURN",
            "-t nat -A OUTPUT -p tcp -o lo -j RETURN",
            "-t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 15001",
        ]),
    );
    let dsts = SIDECAR_DSTS.map(|a| a.parse::<SocketAddr>().unwrap());
    let (_server, seen) = Server::echo_local(&server, &dsts);
    let proxy = Proxy::start_as_net_admin(origdst_bin!(), &pod, 1337, &["--shards", "1"]);
    relays_to_dialled(&pod, &seen, &dsts);
    let exit = proxy.stop_clean();
    assert_relayed_without_loop(&exit, 2);
    assert!(
        exit.log.contains("uid=1337 capabilities=CAP_NET_ADMIN"),
        "the start-up log names what it runs with:\n{}",
        exit.log
    );
    let refused = Proxy::unprivileged_command(origdst_bin!(), &pod, 1337)
        .arg("run")
        .output()
        .expect("run origdst");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "started without CAP_NET_ADMIN");
    assert!(
        stderr.contains("origdst.upstream_mark=1337") && stderr.contains("CAP_NET_ADMIN"),
        "{stderr}"
    );
}

#[test]
fn sidecar_uid_owner_exclusion_with_an_unprivileged_proxy() {
    // The other Istio convention: origdst runs as uid 1337 without privileges (so no SO_MARK:
    // `upstream_mark: null`), and the rules exclude that uid's traffic instead of a mark. The
    // splice path's pipes then count against uid 1337's per-user pipe limit.
    let (pod, server) = sidecar(
        "uid",
        PodRules::Iptables(&[
            "-t nat -A OUTPUT -p tcp -m owner --uid-owner 1337 -j RETURN",
            "-t nat -A OUTPUT -p tcp -o lo -j RETURN",
            "-t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 15001",
        ]),
    );
    let dsts = SIDECAR_DSTS.map(|a| a.parse::<SocketAddr>().unwrap());
    let (_server, seen) = Server::echo_local(&server, &dsts);
    let config = ConfigFile::default_with("uid", &[("upstream_mark: 1337", "upstream_mark: null")]);
    let proxy = Proxy::start_as(
        origdst_bin!(),
        &pod,
        1337,
        &["--config", config.arg(), "--shards", "2"],
    );
    relays_to_dialled(&pod, &seen, &dsts);
    let exit = proxy.stop_clean();
    assert_relayed_without_loop(&exit, 2);
    assert!(
        exit.log.contains("upstream_mark=off"),
        "the start-up line says marking is off"
    );
}

#[test]
fn sidecar_nftables_redirect_excludes_the_proxy_mark() {
    // The same capture as `sidecar_output_redirect_excludes_the_proxy_mark`, as one nftables
    // ruleset for both families.
    let (pod, server) = sidecar(
        "nftsidecar",
        PodRules::Nftables(
            "table inet origdst_test {
               chain output {
                 type nat hook output priority -100; policy accept;
                 meta mark 1337 return
                 oifname \"lo\" return
                 meta l4proto tcp redirect to :15001
               }
             }
            ",
        ),
    );
    let dsts = SIDECAR_DSTS.map(|a| a.parse::<SocketAddr>().unwrap());
    let (_server, seen) = Server::echo_local(&server, &dsts);
    let proxy = Proxy::start(origdst_bin!(), &pod, &["--shards", "2"]);
    relays_to_dialled(&pod, &seen, &dsts);
    let exit = proxy.stop_clean();
    assert_relayed_without_loop(&exit, 2);
    assert_eq!(exit.stat("orig_dst_sockopt_v4"), 1);
    assert_eq!(exit.stat("orig_dst_sockopt_v6"), 1);
}

/// Opt-in source preservation (Envoy's `original_src` listener filter): the upstream connection
/// leaves the router with the client's address, and the server sees the client, not the router.
#[test]
fn original_src_upstream_sees_the_client_address_v4_and_v6() {
    let gw = Gateway::new("origsrc");
    gw.route_replies_to_transparent_sockets();
    let dsts = [addr(SERVER_V4[1], 8080), addr(SERVER_V6[1], 8080)];
    let handler = std::sync::Arc::new(
        |mut stream: std::net::TcpStream, _local: SocketAddr, peer: SocketAddr| {
            use std::io::Write;
            let _ = stream.write_all(peer.ip().to_string().as_bytes());
        },
    );
    let _server = Server::start(&gw.server, &dsts, handler);
    let config = ConfigFile::default_with(
        "origsrc",
        &[(
            "    listener_filters:\n",
            "    listener_filters:\n    - name: envoy.filters.listener.original_src\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc\n",
        )],
    );
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--config", config.arg(), "--shards", "2"],
    );
    for (dst, client) in dsts.into_iter().zip([CLIENT_V4, CLIENT_V6]) {
        let t = std::time::Instant::now();
        assert_eq!(
            ask_local(&gw.client, dst),
            client,
            "the server at {dst} saw another source"
        );
        eprintln!("{dst}: {:?}", t.elapsed());
    }
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("original_src_bound"), 2, "{}", exit.log);
    assert_eq!(exit.stat("completed"), 2, "{}", exit.log);
}
