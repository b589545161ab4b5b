//! The real origdst binary relaying iptables/ip6tables-REDIRECTed traffic in network namespaces
//! (gateway topology, see `topology.rs`). Each test builds and removes its own namespaces.

use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use origdst_netns_tests::config::ConfigFile;
use origdst_netns_tests::origdst_bin;
use origdst_netns_tests::pattern::{Pattern, Verified};
use origdst_netns_tests::proxy::{Proxy, ProxyExit};
use origdst_netns_tests::server::{Server, ask_local};
use origdst_netns_tests::topology::{
    Gateway, PROXY_PORT, ROUTER_CLIENT_SIDE_V4, ROUTER_SERVER_SIDE_V4, ROUTER_SERVER_SIDE_V6,
    SERVER_V4, SERVER_V6, addr,
};

const UP: Pattern = Pattern::new(0x5eed_0001);
const DOWN: Pattern = Pattern::new(0x5eed_0002);
const BULK_BYTES: u64 = 64 * 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(60);
const SERVER_PORT: u16 = 8080;

/// What a server saw on one connection.
#[derive(Debug)]
struct Seen {
    local: SocketAddr,
    peer: SocketAddr,
    upload: Verified,
}

fn start_proxy(gw: &Gateway, data_path: &str) -> Proxy {
    start_proxy_with(gw, data_path, &[])
}

fn start_proxy_with(gw: &Gateway, data_path: &str, extra: &[&str]) -> Proxy {
    let mut args = vec![
        "--data-path",
        data_path,
        "--shards",
        "2",
        "--log-level",
        "debug",
    ];
    args.extend_from_slice(extra);
    // The runtime's fault switch is on for every relay here: short splices, reads and sends,
    // spurious EAGAIN, small pipes and reordered completions must not cost a byte.
    Proxy::start_buggified(origdst_bin!(), &gw.router, &args)
}

fn timeouts(stream: &TcpStream) {
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
}

/// A server that sends `download` bytes of DOWN while verifying the client's UP upload, then
/// reports what it saw.
fn bulk_server(gw: &Gateway, ips: [&str; 2], download: u64) -> (Server, mpsc::Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    let handler = Arc::new(
        move |stream: TcpStream, local: SocketAddr, peer: SocketAddr| {
            let tx = tx.clone();
            thread::spawn(move || {
                timeouts(&stream);
                let mut writer = stream.try_clone().expect("clone");
                let sending = thread::spawn(move || {
                    DOWN.write_to(&mut writer, download).expect("server send");
                    writer.shutdown(Shutdown::Write).expect("server shutdown");
                });
                let upload = UP.verify_from(&mut &stream).expect("server receive");
                sending.join().expect("server sender");
                let _ = tx.send(Seen {
                    local,
                    peer,
                    upload,
                });
            });
        },
    );
    let addrs: Vec<SocketAddr> = ips.iter().map(|ip| addr(ip, SERVER_PORT)).collect();
    (Server::start(&gw.server, &addrs, handler), rx)
}

/// Uploads `upload` bytes of UP while verifying the DOWN download; returns what came down.
fn bulk_client(gw: &Gateway, dst: SocketAddr, upload: u64) -> Verified {
    gw.client.run(move || {
        let stream = TcpStream::connect(dst).unwrap_or_else(|e| panic!("connect {dst}: {e}"));
        timeouts(&stream);
        let mut writer = stream.try_clone().expect("clone");
        let sending = thread::spawn(move || {
            UP.write_to(&mut writer, upload).expect("client send");
            writer.shutdown(Shutdown::Write).expect("client shutdown");
        });
        let download = DOWN.verify_from(&mut &stream).expect("client receive");
        sending.join().expect("client sender");
        download
    })
}

fn bulk_each_way(tag: &str, data_path: &str, ips: [&str; 2], router_ip: &str) -> ProxyExit {
    bulk_each_way_with(tag, data_path, ips, router_ip, &[])
}

fn bulk_each_way_with(
    tag: &str,
    data_path: &str,
    ips: [&str; 2],
    router_ip: &str,
    extra: &[&str],
) -> ProxyExit {
    bulk_each_way_faults(tag, data_path, ips, router_ip, extra, true)
}

/// `faults`: with the runtime's fault switch on (what every relay test here runs with), or off.
fn bulk_each_way_faults(
    tag: &str,
    data_path: &str,
    ips: [&str; 2],
    router_ip: &str,
    extra: &[&str],
    faults: bool,
) -> ProxyExit {
    let gw = Gateway::new(tag);
    let (_server, seen) = bulk_server(&gw, ips, BULK_BYTES);
    let mut proxy = if faults {
        start_proxy_with(&gw, data_path, extra)
    } else {
        let mut args = vec!["--data-path", data_path, "--shards", "2"];
        args.extend_from_slice(extra);
        Proxy::start(origdst_bin!(), &gw.router, &args)
    };
    let dst = addr(ips[1], SERVER_PORT);
    let started = Instant::now();
    let download = bulk_client(&gw, dst, BULK_BYTES);
    let elapsed = started.elapsed();
    if download != Verified::intact(BULK_BYTES) {
        // What origdst counted, while it still runs (a short download must say why).
        let stats = proxy.live_stats();
        panic!("download through origdst: {download:?} of {BULK_BYTES} bytes; {stats}");
    }
    let seen = seen.recv_timeout(IO_TIMEOUT).expect("server report");
    assert_eq!(
        seen.upload,
        Verified::intact(BULK_BYTES),
        "upload through origdst"
    );
    assert_eq!(
        seen.local, dst,
        "the server must see the address the client dialled"
    );
    assert_eq!(
        seen.peer.ip(),
        addr(router_ip, 0).ip(),
        "the upstream connection must come from origdst"
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("completed"), 1);
    assert_eq!(exit.stat("downstream_cx_rx_bytes_total"), BULK_BYTES);
    assert_eq!(exit.stat("downstream_cx_tx_bytes_total"), BULK_BYTES);
    assert_eq!(
        exit.stat("pipes_leased"),
        0,
        "no pipe stays leased after the connection ends"
    );
    assert_eq!(
        exit.stat("buffers_in_flight"),
        0,
        "no buffer stays out after the connection ends"
    );
    // The readiness path (uring-splice on either backend) accounts for every byte once, spliced
    // or copied; bulk is spliced (splice-auto copies only small reads, and where no pipe is free).
    let (spliced, copied) = (exit.stat("spliced_bytes"), exit.stat("copied_bytes"));
    if data_path == "uring-splice" {
        assert_eq!(spliced + copied, 2 * BULK_BYTES, "spliced + copied bytes");
    }
    println!(
        "{tag}: 2 × 64 MiB through origdst ({data_path}) in {elapsed:?}: {spliced} bytes spliced, {copied} copied"
    );
    exit
}

#[test]
fn ipv4_64mib_each_way_byte_exact_splice() {
    let exit = bulk_each_way("v4splice", "uring-splice", SERVER_V4, ROUTER_SERVER_SIDE_V4);
    // Splice-auto splices bulk. How much of it depends on the fault switch: a one-page pipe it
    // hands out splices 4 KiB a round where a copy moves 64 KiB (30–99 % spliced here; 97 % in
    // the benchmark, which runs without faults).
    assert!(
        exit.stat("spliced_bytes") > BULK_BYTES / 4,
        "splice-auto must splice bulk"
    );
}

#[test]
fn ipv4_64mib_each_way_byte_exact_copy() {
    bulk_each_way("v4copy", "uring-copy", SERVER_V4, ROUTER_SERVER_SIDE_V4);
}

#[test]
fn ipv4_64mib_each_way_byte_exact_opsplice() {
    bulk_each_way(
        "v4opsplice",
        "uring-opsplice",
        SERVER_V4,
        ROUTER_SERVER_SIDE_V4,
    );
}

#[test]
fn ipv6_64mib_each_way_byte_exact_splice() {
    bulk_each_way("v6splice", "uring-splice", SERVER_V6, ROUTER_SERVER_SIDE_V6);
}

#[test]
fn ipv6_64mib_each_way_byte_exact_copy() {
    bulk_each_way("v6copy", "uring-copy", SERVER_V6, ROUTER_SERVER_SIDE_V6);
}

/// The in-kernel relay (kernel-sockmap): the same bytes, none of them through the shard, and
/// core's byte counts (from the sockets' TCP counters) exact.
fn bulk_each_way_in_kernel(
    tag: &str,
    ips: [&str; 2],
    router_ip: &str,
    extra: &[&str],
    faults: bool,
) {
    let exit = bulk_each_way_faults(tag, "kernel-sockmap", ips, router_ip, extra, faults);
    assert!(
        exit.log.contains(" data_path=kernel-sockmap ")
            || exit.log.contains(" data_path=epoll-kernel-sockmap "),
        "the start-up line names the relay (it loaded):\n{}",
        exit.log
    );
    assert_eq!(
        exit.stat("kernel_relay_cx_total"),
        1,
        "the kernel relayed the pair"
    );
    assert_eq!(exit.stat("kernel_relay_refused"), 0);
    assert_eq!(exit.stat("spliced_bytes"), 0, "nothing spliced");
    if faults {
        // The server writes its download as soon as it accepts, and the fault switch pauses
        // 20 ms between the pair's two map updates: the upstream's first bytes arrive in between
        // and are handed back, and the shard copies the download — every byte, in order, though
        // the kernel reports the FIN while the last of them still wait in its backlog. The
        // upload stays the kernel's.
        assert_eq!(exit.stat("kernel_relay_spilled"), 1, "the download spilled");
        assert_eq!(
            exit.stat("copied_bytes"),
            BULK_BYTES,
            "the download copied, only it"
        );
    } else {
        assert_eq!(exit.stat("kernel_relay_spilled"), 0);
        assert_eq!(
            exit.stat("copied_bytes"),
            0,
            "no byte went through the shard"
        );
    }
}

#[test]
fn ipv4_64mib_each_way_byte_exact_kernel_sockmap() {
    bulk_each_way_in_kernel("v4kernel", SERVER_V4, ROUTER_SERVER_SIDE_V4, &[], false);
}

/// The download handed back (spilled) and copied by the shard, under the fault switch.
#[test]
fn ipv4_64mib_each_way_byte_exact_kernel_sockmap_spilled() {
    bulk_each_way_in_kernel("v4kernelspill", SERVER_V4, ROUTER_SERVER_SIDE_V4, &[], true);
}

#[test]
fn ipv6_64mib_each_way_byte_exact_kernel_sockmap_on_epoll() {
    bulk_each_way_in_kernel(
        "v6kernelepoll",
        SERVER_V6,
        ROUTER_SERVER_SIDE_V6,
        &["--backend", "epoll"],
        true,
    );
}

/// Each FIN is passed on only after every byte before it: the response follows the client's
/// half-close, byte-exact, through the kernel.
#[test]
fn half_close_client_first_through_the_kernel_relay() {
    let exit = half_close_client_first("hcckernel", "kernel-sockmap");
    assert_eq!(exit.stat("kernel_relay_cx_total"), 1);
    assert_eq!(exit.stat("downstream_cx_rx_bytes_total"), 1 << 20);
    assert_eq!(exit.stat("downstream_cx_tx_bytes_total"), 4 << 20);
}

/// A server that speaks first (its bytes may reach the upstream socket before the pair is
/// complete in the map: kicked, or handed back and copied — either way in order).
#[test]
fn half_close_server_first_through_the_kernel_relay() {
    let exit = half_close_server_first("hcskernel", "kernel-sockmap");
    assert_eq!(exit.stat("kernel_relay_cx_total"), 1);
    assert_eq!(exit.stat("downstream_cx_rx_bytes_total"), 1 << 20);
    assert_eq!(exit.stat("downstream_cx_tx_bytes_total"), 4 << 20);
    println!(
        "server first through the kernel: {} directions spilled",
        exit.stat("kernel_relay_spilled")
    );
}

/// The epoll backend (what origdst uses where io_uring is refused) moves the same bytes.
fn bulk_each_way_on_epoll(tag: &str, data_path: &str, ips: [&str; 2], router_ip: &str) {
    let exit = bulk_each_way_with(tag, data_path, ips, router_ip, &["--backend", "epoll"]);
    assert!(
        exit.log.contains("backend=epoll"),
        "the start-up line names the backend:\n{}",
        exit.log
    );
}

#[test]
fn ipv4_64mib_each_way_byte_exact_epoll_splice() {
    bulk_each_way_on_epoll("v4epoll", "uring-splice", SERVER_V4, ROUTER_SERVER_SIDE_V4);
}

#[test]
fn ipv6_64mib_each_way_byte_exact_epoll_copy() {
    bulk_each_way_on_epoll(
        "v6epollcopy",
        "uring-copy",
        SERVER_V6,
        ROUTER_SERVER_SIDE_V6,
    );
}

#[test]
fn empty_pipe_pool_falls_back_to_copying_byte_exact() {
    // No pipe budget at all: every splice direction must copy through pooled buffers instead.
    let config = ConfigFile::default_with(
        "nopipes",
        &[("origdst:\n", "origdst:\n  pipe_budget_bytes: 0\n")],
    );
    let exit = bulk_each_way_with(
        "nopipes",
        "uring-splice",
        SERVER_V4,
        ROUTER_SERVER_SIDE_V4,
        &["--config", config.arg()],
    );
    assert!(
        exit.stat("splice_fallback_copies") > 0,
        "the copy fallback must have been used"
    );
    assert_eq!(exit.stat("spliced_bytes"), 0, "no pipe, nothing spliced");
}

/// Adaptive busy polling, on by default (`busy_poll: 50µs` the ceiling): the bytes are the same on
/// both backends, and a bulk transfer's short waits open the window, so some waits are answered
/// by polling; `busy_poll: 0s` never polls.
#[test]
fn adaptive_busy_poll_relays_byte_exact_on_both_backends_and_can_be_turned_off() {
    for (tag, backend) in [("busyuring", "io-uring"), ("busyepoll", "epoll")] {
        let exit = bulk_each_way_with(
            tag,
            "uring-splice",
            SERVER_V4,
            ROUTER_SERVER_SIDE_V4,
            &["--backend", backend],
        );
        assert!(
            exit.log.contains("busy_poll=50µs"),
            "the start-up line names the polling ceiling:\n{}",
            exit.log
        );
        assert!(
            exit.stat("busy_poll_hits") > 0,
            "{backend}: no wait was answered by polling during a bulk transfer:\n{}",
            exit.log
        );
    }
    let off = ConfigFile::default_with("nopoll", &[("origdst:\n", "origdst:\n  busy_poll: 0s\n")]);
    let exit = bulk_each_way_with(
        "nopoll",
        "uring-splice",
        SERVER_V4,
        ROUTER_SERVER_SIDE_V4,
        &["--config", off.arg()],
    );
    assert!(!exit.log.contains("busy_poll="), "{}", exit.log);
    assert_eq!(exit.stat("busy_poll_hits"), 0, "busy_poll: 0s polled");
    assert!(exit.stat("wait_sleeps") > 0, "{}", exit.log);
}

#[test]
fn server_sees_the_address_the_client_dialled() {
    let gw = Gateway::new("dst");
    let all: Vec<SocketAddr> = SERVER_V4
        .iter()
        .chain(SERVER_V6.iter())
        .map(|ip| addr(ip, SERVER_PORT))
        .collect();
    let (_server, seen) = Server::echo_local(&gw.server, &all);
    let proxy = start_proxy(&gw, "uring-splice");
    for &dst in &all {
        assert_eq!(
            ask_local(&gw.client, dst),
            dst.to_string(),
            "connection to {dst} arrived elsewhere"
        );
        assert_eq!(seen.recv_timeout(IO_TIMEOUT).expect("server saw it"), dst);
    }
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("orig_dst_sockopt_v4"), 2);
    assert_eq!(exit.stat("orig_dst_sockopt_v6"), 2);
}

#[test]
fn half_close_client_first_response_still_flows() {
    half_close_client_first("hcc", "uring-splice");
}

fn half_close_client_first(tag: &str, data_path: &str) -> ProxyExit {
    let gw = Gateway::new(tag);
    let (tx, done) = mpsc::channel();
    // The server reads the whole request (to the client's FIN), then answers.
    let handler = Arc::new(move |stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        let tx = tx.clone();
        thread::spawn(move || {
            timeouts(&stream);
            let request = UP.verify_from(&mut &stream).expect("server read request");
            DOWN.write_to(&mut &stream, 4 << 20)
                .expect("server send response");
            stream.shutdown(Shutdown::Write).expect("server shutdown");
            let _ = tx.send(request);
        });
    });
    let _server = Server::start(&gw.server, &[addr(SERVER_V4[0], SERVER_PORT)], handler);
    let proxy = start_proxy(&gw, data_path);
    let dst = addr(SERVER_V4[0], SERVER_PORT);
    let response = gw.client.run(move || {
        let stream = TcpStream::connect(dst).expect("connect");
        timeouts(&stream);
        UP.write_to(&mut &stream, 1 << 20).expect("client send");
        stream.shutdown(Shutdown::Write).expect("client half-close");
        DOWN.verify_from(&mut &stream)
            .expect("client read response")
    });
    assert_eq!(response, Verified::intact(4 << 20));
    assert_eq!(
        done.recv_timeout(IO_TIMEOUT).unwrap(),
        Verified::intact(1 << 20)
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("half_close_from_client"), 1);
    assert_eq!(exit.stat("completed"), 1);
    exit
}

#[test]
fn half_close_server_first_upload_still_flows() {
    half_close_server_first("hcs", "uring-copy");
}

fn half_close_server_first(tag: &str, data_path: &str) -> ProxyExit {
    let gw = Gateway::new(tag);
    let (tx, done) = mpsc::channel();
    // The server sends everything and shuts its write half first, then reads the upload.
    let handler = Arc::new(move |stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        let tx = tx.clone();
        thread::spawn(move || {
            timeouts(&stream);
            DOWN.write_to(&mut &stream, 4 << 20).expect("server send");
            stream.shutdown(Shutdown::Write).expect("server half-close");
            let upload = UP.verify_from(&mut &stream).expect("server read upload");
            let _ = tx.send(upload);
        });
    });
    let _server = Server::start(&gw.server, &[addr(SERVER_V4[0], SERVER_PORT)], handler);
    let proxy = start_proxy(&gw, data_path);
    let dst = addr(SERVER_V4[0], SERVER_PORT);
    let download = gw.client.run(move || {
        let stream = TcpStream::connect(dst).expect("connect");
        timeouts(&stream);
        let download = DOWN.verify_from(&mut &stream).expect("client read");
        // Only after the server's EOF arrived does the client start uploading.
        UP.write_to(&mut &stream, 1 << 20)
            .expect("client send after server EOF");
        stream.shutdown(Shutdown::Write).expect("client shutdown");
        download
    });
    assert_eq!(download, Verified::intact(4 << 20));
    assert_eq!(
        done.recv_timeout(IO_TIMEOUT).unwrap(),
        Verified::intact(1 << 20)
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("half_close_from_upstream"), 1);
    assert_eq!(exit.stat("completed"), 1);
    exit
}

#[test]
fn upstream_refused_resets_the_client() {
    let gw = Gateway::new("refused");
    let proxy = start_proxy(&gw, "uring-splice");
    // Nothing listens on the server: the kernel there answers the proxy's SYN with RST.
    let dst = addr(SERVER_V4[0], 9);
    let outcome = gw.client.run(move || {
        let mut stream =
            TcpStream::connect(dst).expect("the proxy accepts before it connects upstream");
        timeouts(&stream);
        let mut buf = [0u8; 16];
        stream.read(&mut buf).map_err(|e| e.kind())
    });
    assert_eq!(
        outcome,
        Err(ErrorKind::ConnectionReset),
        "a refused upstream must reach the client as a reset"
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("upstream_cx_connect_fail"), 1);
    assert_eq!(exit.stat("completed"), 0);
}

#[test]
fn direct_connection_to_the_proxy_port_is_refused_and_counted() {
    let gw = Gateway::new("direct");
    let proxy = start_proxy(&gw, "uring-splice");
    // Dialling origdst's own port: no REDIRECT happened, so there is no original destination.
    let dst = addr(ROUTER_CLIENT_SIDE_V4, PROXY_PORT);
    let outcome = gw.client.run(move || {
        let mut stream = TcpStream::connect(dst).expect("connect to the proxy port");
        timeouts(&stream);
        let mut buf = [0u8; 16];
        stream.read(&mut buf).map_err(|e| e.kind())
    });
    assert_eq!(outcome, Err(ErrorKind::ConnectionReset));
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("refused_no_original_dst"), 1, "{}", exit.log);
    assert_eq!(
        exit.stat("upstream_cx_total"),
        0,
        "a refused connection must not be relayed"
    );
    assert!(
        exit.log.contains("reason=\"no_original_dst\""),
        "the refusal is logged:\n{}",
        exit.log
    );
}

/// Under a container-style seccomp profile that refuses io_uring (EPERM), origdst says so, runs
/// on epoll and relays; forcing io_uring there fails at start-up with the reason.
#[test]
fn io_uring_refused_by_seccomp_falls_back_to_epoll() {
    let gw = Gateway::new("seccomp");
    let dst = addr(SERVER_V4[1], SERVER_PORT);
    let (_server, seen) = Server::echo_local(&gw.server, &[dst]);
    let no_io_uring = env!("CARGO_BIN_EXE_no-io-uring");
    let proxy = Proxy::start_wrapped(origdst_bin!(), &gw.router, no_io_uring, &["--shards", "2"]);
    assert_eq!(ask_local(&gw.client, dst), dst.to_string());
    assert_eq!(seen.recv_timeout(IO_TIMEOUT).unwrap(), dst);
    let exit = proxy.stop_clean();
    assert!(
        exit.log
            .contains("using the epoll backend (io_uring unavailable: Operation not permitted"),
        "no line says why epoll was chosen:\n{}",
        exit.log
    );
    assert!(
        exit.log.contains("backend=epoll data_path=epoll-splice"),
        "{}",
        exit.log
    );
    assert_eq!(exit.stat("completed"), 1);

    let forced = gw
        .router
        .command(no_io_uring)
        .args([origdst_bin!(), "run", "--backend", "io-uring"])
        .output()
        .expect("run origdst");
    assert!(!forced.status.success(), "forced io_uring must fail here");
    let stderr = String::from_utf8_lossy(&forced.stderr);
    assert!(
        stderr.contains("io_uring set-up failed") && stderr.contains("Operation not permitted"),
        "{stderr}"
    );
}

/// Istio's inbound passthrough: a connection to the workload's own address is redirected to
/// 15006, and origdst connects to the workload from 127.0.0.6 (the `InboundPassthroughCluster`'s
/// `upstream_bind_config`) — as uid 1337 with no capability at all: binding one of the host's own
/// addresses needs no IP_TRANSPARENT.
#[test]
fn inbound_passthrough_connects_from_127_0_0_6_without_capabilities() {
    let gw = Gateway::new("inpass");
    let app = addr(ROUTER_CLIENT_SIDE_V4, 8080);
    let (tx, seen) = mpsc::channel();
    let handler = Arc::new(
        move |stream: TcpStream, local: SocketAddr, peer: SocketAddr| {
            let tx = tx.clone();
            thread::spawn(move || {
                timeouts(&stream);
                let upload = UP.verify_from(&mut &stream).expect("app receive");
                DOWN.write_to(&mut &stream, 4096).expect("app send");
                let _ = stream.shutdown(Shutdown::Write);
                let _ = tx.send((local, peer, upload));
            });
        },
    );
    let _app = Server::start(&gw.router, &[app], handler);
    gw.redirect_port(8080, 15006);
    let yaml = r#"origdst: { upstream_mark: null, shards: 1 }
static_resources:
  listeners:
  - name: virtualInbound
    address: { socket_address: { address: 0.0.0.0, port_value: 15006 } }
    listener_filters: [ { name: envoy.filters.listener.original_dst } ]
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: InboundPassthroughCluster
          cluster: InboundPassthroughCluster
  clusters:
  - name: InboundPassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s
    upstream_bind_config:
      source_address: { address: 127.0.0.6, port_value: 0 }
"#;
    let config = ConfigFile::new("inpass", yaml);
    let proxy = Proxy::start_as(
        origdst_bin!(),
        &gw.router,
        1337,
        &["--config", config.arg()],
    );
    let download = gw.client.run(move || {
        let stream = TcpStream::connect(app).expect("connect to the app");
        timeouts(&stream);
        UP.write_to(&mut &stream, 4096).expect("client send");
        stream.shutdown(Shutdown::Write).expect("client shutdown");
        DOWN.verify_from(&mut &stream).expect("client receive")
    });
    assert_eq!(download, Verified::intact(4096));
    let (local, peer, upload) = seen.recv_timeout(IO_TIMEOUT).expect("the app's report");
    assert_eq!(upload, Verified::intact(4096));
    assert_eq!(local, app, "the app accepted on its own address");
    assert_eq!(
        peer.ip().to_string(),
        "127.0.0.6",
        "origdst connects from the cluster's bind address"
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("completed"), 1, "{}", exit.log);
}
