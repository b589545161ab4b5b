//! Envoy semantics on the real kernel: Istio's virtual-listener hand-off with passthrough and
//! black hole, and ORIGINAL_DST's header mode (the seed blog's teapot demo on port 9001).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use origdst_netns_tests::config::ConfigFile;
use origdst_netns_tests::origdst_bin;
use origdst_netns_tests::pattern::{Pattern, Verified};
use origdst_netns_tests::proxy::Proxy;
use origdst_netns_tests::server::{Server, ask_local};
use origdst_netns_tests::topology::{Gateway, ROUTER_CLIENT_SIDE_V4, SERVER_V4, addr};

const TIMEOUT: Duration = Duration::from_secs(10);
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

fn tcp_proxy_chain(cluster: &str) -> String {
    format!(
        "    filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config: {{ \"@type\": {TCP_PROXY}, stat_prefix: {cluster}, cluster: {cluster} }}\n"
    )
}

/// Reads until EOF or error: what a client of a refused connection sees.
fn outcome(stream: &mut TcpStream) -> Result<Vec<u8>, ErrorKind> {
    let mut got = Vec::new();
    stream
        .read_to_end(&mut got)
        .map(|_| got)
        .map_err(|e| e.kind())
}

#[test]
fn istio_virtual_outbound_hands_off_passes_through_and_black_holes() {
    let gw = Gateway::new("istio");
    let passthrough = addr(SERVER_V4[0], 8080);
    let service_vip = addr(SERVER_V4[0], 8081);
    let service_pod = addr(SERVER_V4[1], 8081);
    let denied = addr(SERVER_V4[0], 8082);
    let (_server, seen) = Server::echo_local(&gw.server, &[passthrough, service_pod, denied]);
    let yaml = format!(
        "origdst: {{ upstream_mark: 1337 }}
static_resources:
  listeners:
  - name: virtualOutbound
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15001 }} }}
    use_original_dst: true
{pass}  - name: 0.0.0.0_8081
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 8081 }} }}
    bind_to_port: false
{svc}  - name: {denied_ip}_8082
    address: {{ socket_address: {{ address: {denied_ip}, port_value: 8082 }} }}
    bind_to_port: false
{hole}  clusters:
  - {{ name: PassthroughCluster, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED, connect_timeout: 5s }}
  - {{ name: BlackHoleCluster, type: STATIC }}
  - name: outbound|8081||svc
    type: STATIC
    load_assignment:
      cluster_name: outbound|8081||svc
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {pod_ip}, port_value: 8081 }} }} }}
",
        pass = tcp_proxy_chain("PassthroughCluster"),
        svc = tcp_proxy_chain("outbound|8081||svc"),
        hole = tcp_proxy_chain("BlackHoleCluster"),
        denied_ip = SERVER_V4[0],
        pod_ip = SERVER_V4[1],
    );
    let config = ConfigFile::new("istio", &yaml);
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--config", config.arg(), "--shards", "2"],
    );
    // No listener for 8080: the virtual listener relays to the original destination.
    assert_eq!(ask_local(&gw.client, passthrough), passthrough.to_string());
    assert_eq!(seen.recv_timeout(TIMEOUT).unwrap(), passthrough);
    // 8081 is handed to its listener, whose STATIC cluster picks the pod behind the "VIP".
    assert_eq!(ask_local(&gw.client, service_vip), service_pod.to_string());
    assert_eq!(seen.recv_timeout(TIMEOUT).unwrap(), service_pod);
    // 8082 on that address goes to the black hole: the client is reset, nothing arrives.
    let got = gw.client.run(move || {
        let mut stream = TcpStream::connect(denied).expect("the proxy accepts");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        outcome(&mut stream)
    });
    assert_eq!(got, Err(ErrorKind::ConnectionReset));
    assert!(
        seen.try_recv().is_err(),
        "the black hole let a connection through"
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("listener_handoff"), 2, "{}", exit.log);
    assert_eq!(exit.stat("upstream_cx_none_healthy"), 1);
    assert_eq!(exit.stat("completed"), 2);
}

/// The teapot: answers 418 with the exact request head it received as the body, so the test sees
/// that origdst forwarded the request unchanged.
fn teapot(gw: &Gateway, at: SocketAddr) -> Server {
    let handler = Arc::new(|mut stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        std::thread::spawn(move || {
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            let answer = format!(
                "HTTP/1.1 418 I'm a teapot\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                head.len()
            );
            let _ = stream.write_all(answer.as_bytes());
            let _ = stream.write_all(&head);
        });
    });
    Server::start(&gw.server, &[at], handler)
}

fn header_mode_config(tag: &str) -> ConfigFile {
    let yaml = format!(
        "origdst: {{ http_head_max_bytes: 1024, http_head_timeout: 0.5s }}
static_resources:
  listeners:
  - name: teapot_9001
    address: {{ socket_address: {{ address: {router}, port_value: 9001 }} }}
{chain}  clusters:
  - name: original_dst_header
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    original_dst_lb_config: {{ use_http_header: true }}
",
        router = ROUTER_CLIENT_SIDE_V4,
        chain = tcp_proxy_chain("original_dst_header"),
    );
    ConfigFile::new(tag, &yaml)
}

/// Sends `request` to the proxy's port 9001 and returns what came back (or the error).
fn ask_9001(
    gw: &Gateway,
    request: Vec<u8>,
    pause_after: Option<usize>,
) -> Result<Vec<u8>, ErrorKind> {
    let proxy = addr(ROUTER_CLIENT_SIDE_V4, 9001);
    gw.client.run(move || {
        let mut stream = TcpStream::connect(proxy).expect("connect to 9001");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        match pause_after {
            None => stream.write_all(&request).expect("send"),
            Some(n) => stream.write_all(&request[..n]).expect("send part"),
        }
        outcome(&mut stream)
    })
}

#[test]
fn header_mode_teapot_on_9001_routes_by_header_and_forwards_unchanged() {
    let gw = Gateway::new("teapot");
    let server = addr(SERVER_V4[1], 80);
    let _teapot = teapot(&gw, server);
    let config = header_mode_config("teapot");
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--config", config.arg(), "--shards", "2"],
    );
    // curl -H "x-envoy-original-dst-host: 10.11.2.11:80" 10.11.1.1:9001/status/418
    let request = format!(
        "GET /status/418 HTTP/1.1\r\nHost: {ROUTER_CLIENT_SIDE_V4}:9001\r\nUser-Agent: curl/8\r\nAccept: */*\r\nx-envoy-original-dst-host: {server}\r\n\r\n"
    );
    let answer = ask_9001(&gw, request.clone().into_bytes(), None).expect("an answer");
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 418 I'm a teapot"), "{answer}");
    assert!(
        answer.ends_with(&request),
        "the request reached the teapot changed:\n{answer}"
    );

    // Refusals: no header and no restored destination; a malformed header; a head larger than
    // http_head_max_bytes; a head that stalls past http_head_timeout; bytes that are not HTTP.
    let refused = |request: String, pause: Option<usize>| {
        let got = ask_9001(&gw, request.into_bytes(), pause);
        assert_eq!(got, Err(ErrorKind::ConnectionReset));
    };
    refused("GET / HTTP/1.1\r\nHost: x\r\n\r\n".into(), None);
    refused(
        "GET / HTTP/1.1\r\nx-envoy-original-dst-host: teapot:80\r\n\r\n".into(),
        None,
    );
    refused(
        format!("GET / HTTP/1.1\r\nx-pad: {}\r\n\r\n", "a".repeat(2000)),
        None,
    );
    refused(request, Some(20));
    refused("\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03".into(), None);
    // Each refusal moved its reason in /metrics.
    let metrics = origdst_netns_tests::admin::scrape(&gw.router);
    for reason in [
        "no_original_dst",
        "original_dst_host_invalid",
        "http_head_too_large",
        "http_head_timeout",
        "http_head_invalid",
    ] {
        let series = format!("origdst_downstream_cx_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(metrics.value(&series), 1.0, "{series}");
    }
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("completed"), 1, "{}", exit.log);
    assert_eq!(exit.stat("refused_no_original_dst"), 1);
    assert_eq!(exit.stat("original_dst_host_invalid"), 1);
    assert_eq!(exit.stat("http_head_too_large"), 1);
    assert_eq!(exit.stat("http_head_timeout"), 1);
    assert_eq!(exit.stat("http_head_invalid"), 1);
}

#[test]
fn header_mode_cannot_reach_the_admin_endpoint_loopback_or_the_metadata_service() {
    let gw = Gateway::new("hdrpolicy");
    let config = header_mode_config("hdrpolicy");
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--config", config.arg(), "--shards", "2"],
    );
    // Each of these, before the destination policy, got origdst's own /config_dump or tried the
    // metadata service: now a reset, counted under its own reason.
    for header in [
        "x-envoy-original-dst-host: 127.0.0.1:15000\r\n",
        "x-envoy-original-dst-host: [::ffff:127.0.0.1]:15000\r\n",
        "x-envoy-original-dst-host: 169.254.169.254:80\r\n",
        "x-envoy-original-dst-host: 127.0.0.1:15000\r\nx-envoy-original-dst-host: 10.11.2.11:80\r\n",
    ] {
        let request = format!("GET /config_dump HTTP/1.1\r\nHost: x\r\n{header}\r\n");
        let got = ask_9001(&gw, request.into_bytes(), None);
        assert_eq!(
            got.map(|b| String::from_utf8_lossy(&b).into_owned()),
            Err(ErrorKind::ConnectionReset),
            "{header}"
        );
    }
    let metrics = origdst_netns_tests::admin::scrape(&gw.router);
    for (reason, count) in [
        ("destination_denied", 3.0),
        ("original_dst_host_duplicate", 1.0),
    ] {
        let series = format!("origdst_downstream_cx_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(metrics.value(&series), count, "{series}");
    }
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("refused_destination_denied"), 3, "{}", exit.log);
    assert_eq!(exit.stat("original_dst_host_duplicate"), 1);
    assert_eq!(exit.stat("upstream_cx_total"), 0, "nothing was dialled");
}

#[test]
fn slow_heads_do_not_delay_another_clients_head() {
    let gw = Gateway::new("slowhead");
    let server = addr(SERVER_V4[1], 80);
    let _teapot = teapot(&gw, server);
    let yaml = std::fs::read_to_string(header_mode_config("slowhead0").arg())
        .unwrap()
        .replace(
            "http_head_max_bytes: 1024, http_head_timeout: 0.5s",
            "http_head_max_bytes: 65536, http_head_timeout: 30s",
        );
    let config = ConfigFile::new("slowhead", &yaml);
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--config", config.arg(), "--shards", "1"],
    );
    // Four clients trickle 60 kB heads a few bytes per segment (each segment once woke the shard,
    // which zeroed a 64 KiB buffer and re-peeked and re-parsed the whole head every time:
    // quadratic, 7–20× the clients' own CPU, and a normal head waited seconds behind them).
    let target = addr(ROUTER_CLIENT_SIDE_V4, 9001);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", proxy.pid())).unwrap();
        let fields: Vec<u64> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        fields[0] + fields[1] // utime + stime, in clock ticks
    };
    let cpu_before = cpu();
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let stop = Arc::clone(&stop);
            gw.client.spawn(move || {
                let mut stream = TcpStream::connect(target).expect("connect");
                stream.set_nodelay(true).unwrap();
                let head = format!("GET / HTTP/1.1\r\nx-pad: {}", "a".repeat(60 * 1000));
                let mut sent = 0usize;
                for piece in head.as_bytes().chunks(16) {
                    if stop.load(std::sync::atomic::Ordering::Relaxed)
                        || stream.write_all(piece).is_err()
                    {
                        break;
                    }
                    sent += piece.len();
                    // 16 bytes a segment, 1 000 segments a second per client: the heads grow
                    // to 24 kB by the time the normal request comes, so re-parsing a whole head
                    // per segment (the quadratic handling this test was written for) would fill
                    // the shard many times over, while the wake-ups alone stay far below it on a
                    // loaded machine running the debug build (at one byte and 5 000 segments a
                    // second each, the wake-ups alone filled it there: a normal head waited
                    // 8.5 s with no quadratic work at all, measuring the machine).
                    std::thread::sleep(Duration::from_millis(1));
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // Meanwhile a normal header request is answered at once.
    let request = format!(
        "GET /status/418 HTTP/1.1\r\nHost: x\r\nx-envoy-original-dst-host: {server}\r\n\r\n"
    );
    let started = std::time::Instant::now();
    let answer = ask_9001(&gw, request.into_bytes(), None).expect("an answer");
    let waited = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: usize = slow.into_iter().map(|t| t.join().unwrap()).sum();
    let ticks = cpu() - cpu_before;
    println!(
        "origdst CPU while {sent} head bytes trickled in 16 per segment: {ticks} ticks (1/100 s); a normal head waited {waited:?}"
    );
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 418"));
    assert!(
        waited < Duration::from_secs(1),
        "a normal head waited {waited:?} behind four slow ones"
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("completed"), 1, "{}", exit.log);
}

/// Starts Envoy's internal-listener example, unmodified, in the router with `server` on
/// 0.0.0.0:19001 beside it (the example's STATIC endpoint).
fn internal_example(
    gw: &Gateway,
    tag: &str,
    server: origdst_netns_tests::server::Handler,
    shards: &str,
) -> (Server, ConfigFile, Proxy) {
    let server = Server::start(&gw.router, &[addr("0.0.0.0", 19001)], server);
    let config = ConfigFile::new(
        tag,
        include_str!("../configs/envoy-internal-listener-example.yaml"),
    );
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--config", config.arg(), "--shards", shards],
    );
    (server, config, proxy)
}

/// Envoy's own internal-listener example, unmodified: 19000 → internal listener
/// `singleton_internal_encap` → 0.0.0.0:19001 (a server beside origdst). Byte-exact both ways
/// with the half-close crossing the in-process hop, then a reset crossing it.
#[test]
fn envoy_internal_listener_example_relays_byte_exact_through_the_internal_hop() {
    let gw = Gateway::new("internal");
    let echo = Arc::new(|stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        std::thread::spawn(move || {
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            // Echo until the client's EOF arrives through both hops, then half-close back.
            let _ = std::io::copy(&mut &stream, &mut &stream);
            let _ = stream.shutdown(std::net::Shutdown::Write);
        });
    });
    let (_server, _config, proxy) = internal_example(&gw, "internal", echo, "2");
    let front = addr(ROUTER_CLIENT_SIDE_V4, 19000);
    let got = gw.client.run(move || {
        let stream = TcpStream::connect(front).expect("connect to 19000");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let writer = {
            let stream = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                DATA.write_to(&mut &stream, INTERNAL_BYTES).expect("upload");
                stream.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        let got = DATA.verify_from(&mut &stream).expect("echo");
        writer.join().unwrap();
        got
    });
    assert_eq!(got, Verified::intact(INTERNAL_BYTES));
    let exit = proxy.stop_clean();
    assert_eq!(
        exit.stat("downstream_cx_total"),
        2,
        "one outer and one inner connection:\n{}",
        exit.log
    );
    assert_eq!(exit.stat("completed"), 2);
    assert_eq!(
        exit.stat("downstream_cx_rx_bytes_total"),
        2 * INTERNAL_BYTES
    );
}

#[test]
fn a_reset_crosses_the_internal_hop_never_a_clean_eof() {
    let gw = Gateway::new("intreset");
    let resetter = Arc::new(|stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        std::thread::spawn(move || {
            let mut first = [0u8; 1024];
            let _ = (&stream).read_exact(&mut first);
            let _ = (&stream).write_all(&first);
            socket2::SockRef::from(&stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        });
    });
    let (_server, _config, proxy) = internal_example(&gw, "intreset", resetter, "1");
    let front = addr(ROUTER_CLIENT_SIDE_V4, 19000);
    let got = gw.client.run(move || {
        let mut stream = TcpStream::connect(front).expect("connect to 19000");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(&[7u8; 1024]).unwrap();
        outcome(&mut stream)
    });
    assert_eq!(
        got,
        Err(ErrorKind::ConnectionReset),
        "the upstream's reset became {got:?}"
    );
    let exit = proxy.stop_clean();
    // Both connections saw their upstream fail: the inner one from the server's reset, the outer
    // one from the internal hop carrying it.
    assert_eq!(exit.stat("upstream_cx_reset"), 2, "{}", exit.log);
    assert_eq!(exit.stat("completed"), 0);
}

const DATA: Pattern = Pattern::new(0x1a7e);
const INTERNAL_BYTES: u64 = 32 * 1024 * 1024;

/// A client that stops reading must stop the server behind the internal hop too: the queue is
/// bounded by `buffer_size_kb` (1 MiB by default) and origdst's memory stays flat.
#[test]
fn a_stalled_reader_backpressures_through_the_internal_hop() {
    let gw = Gateway::new("intslow");
    let sender = Arc::new(|stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        std::thread::spawn(move || {
            let _ = DATA.write_to(&mut &stream, STALL_BYTES);
        });
    });
    let (_server, _config, proxy) = internal_example(&gw, "intslow", sender, "1");
    let front = addr(ROUTER_CLIENT_SIDE_V4, 19000);
    let (stalled_tx, stalled) = std::sync::mpsc::channel();
    let (go_tx, go) = std::sync::mpsc::channel::<()>();
    let client = gw.client.spawn(move || {
        let mut stream = TcpStream::connect(front).expect("connect to 19000");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut first = vec![0u8; 64 * 1024];
        stream.read_exact(&mut first).expect("first bytes");
        stalled_tx.send(()).unwrap();
        go.recv().unwrap();
        DATA.verify_from(&mut (&first[..]).chain(&stream))
            .expect("the rest")
    });
    stalled
        .recv_timeout(TIMEOUT)
        .expect("client read its first bytes");
    let rss_before = proxy.rss_kib();
    let mut rss_peak = 0;
    for _ in 0..40 {
        rss_peak = rss_peak.max(proxy.rss_kib());
        std::thread::sleep(Duration::from_millis(50));
    }
    go_tx.send(()).unwrap();
    let got = client.join().expect("client");
    println!("internal hop, stalled reader: RSS {rss_before} KiB → peak {rss_peak} KiB");
    assert_eq!(got, Verified::intact(STALL_BYTES));
    assert!(
        rss_peak < 64 * 1024,
        "origdst grew to {rss_peak} KiB behind a stalled reader"
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("completed"), 2, "{}", exit.log);
}

const STALL_BYTES: u64 = 64 * 1024 * 1024;
