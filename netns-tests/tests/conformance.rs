//! Conformance: the same scripted connections, once through the real binary on the real kernel
//! (runtime-uring in a namespace) and once through the simulator (runtime-sim over turmoil), must
//! leave core with the same milestones and outcomes — so drop, shutdown and error semantics mean
//! the same thing in both drivers, and what the simulator proves carries over.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use origdst_netns_tests::origdst_bin;
use origdst_netns_tests::proxy::Proxy;
use origdst_netns_tests::server::Server;
use origdst_netns_tests::topology::{Gateway, PROXY_PORT, ROUTER_CLIENT_SIDE_V4, SERVER_V4, addr};
use origdst_sim_tests::scenario::{
    Family, Fault, Flow, Order, RouteKind, Scenario, TCP_CAPACITY, Upstream,
};
use origdst_sim_tests::world;

/// The scripts, in the order both drivers run them, with the milestones core must record.
const EXPECTED: [&str; 5] = [
    "accept(sockopt_v4) connected eof(client_to_upstream) eof(upstream_to_client) close(completed)",
    "accept(sockopt_v4) connected eof(upstream_to_client) eof(client_to_upstream) close(completed)",
    "accept(sockopt_v4) close(upstream_connect_failed)",
    "accept(sockopt_v4) connected error(client) close(client_failed)",
    "accept(-) close(no_original_dst)",
];

#[test]
fn uring_and_sim_agree_on_milestones_and_outcomes() {
    let sim = sim_histories();
    let uring = uring_histories();
    assert_eq!(sim, EXPECTED, "simulator");
    assert_eq!(uring, EXPECTED, "real kernel");
}

fn flow(id: usize, order: Order, fault: Fault, route: RouteKind) -> Flow {
    Flow {
        id,
        route,
        upstream: Upstream::A,
        upload: 1000,
        download: 3000,
        chunk: 512,
        order,
        fault,
        // Sequential, like the real-kernel script: each starts after the previous one ended.
        start_ms: 300 * id as u64,
        slow_client_ms: 0,
        slow_upstream_ms: 0,
        pace_ms: 0,
    }
}

fn sim_histories() -> Vec<String> {
    let scenario = Scenario {
        seed: 1,
        family: Family::Happy,
        v6: false,
        flows: vec![
            flow(0, Order::ClientFirst, Fault::None, RouteKind::Redirect),
            flow(1, Order::UpstreamFirst, Fault::None, RouteKind::Redirect),
            flow(2, Order::ClientFirst, Fault::Refused, RouteKind::Redirect),
            flow(
                3,
                Order::ClientFirst,
                Fault::ClientReset(100),
                RouteKind::Redirect,
            ),
            flow(
                4,
                Order::ClientFirst,
                Fault::None,
                RouteKind::Direct { unrestored: true },
            ),
        ],
        latency_ms: (1, 1),
        tcp_capacity: TCP_CAPACITY,
        random_order: false,
        forgot_mark_exclusion: false,
        require_records: false,
        lifecycle: None,
        routing: false,
    };
    let report = world::run(&scenario, false);
    assert_eq!(report.sim_error, None);
    let mut records = report.proxy;
    records.sort_by_key(|r| r.accepted_at);
    records.iter().map(|r| r.history.to_string()).collect()
}

fn uring_histories() -> Vec<String> {
    let gw = Gateway::new("conform");
    let handler = Arc::new(|stream: TcpStream, local: SocketAddr, _: SocketAddr| {
        thread::spawn(move || {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut stream = stream;
            match local.port() {
                // Script 1: read the request to EOF, then answer.
                8080 => {
                    let mut request = Vec::new();
                    stream.read_to_end(&mut request).unwrap();
                    stream.write_all(&[7u8; 3000]).unwrap();
                }
                // Script 2: answer first and half-close, then read the upload to EOF.
                8081 => {
                    stream.write_all(&[7u8; 3000]).unwrap();
                    stream.shutdown(Shutdown::Write).unwrap();
                    let mut upload = Vec::new();
                    stream.read_to_end(&mut upload).unwrap();
                }
                // Script 4: read until the client's reset arrives.
                _ => {
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink);
                }
            }
        });
    });
    let ports = [8080, 8081, 8083].map(|port| addr(SERVER_V4[0], port));
    let _server = Server::start(&gw.server, &ports, handler);
    let proxy = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--shards", "1", "--log-level", "debug"],
    );
    gw.client.run(|| {
        let timeout = Some(Duration::from_secs(10));
        // 1: client-first half-close.
        let mut s = TcpStream::connect(addr(SERVER_V4[0], 8080)).unwrap();
        s.set_read_timeout(timeout).unwrap();
        s.write_all(&[1u8; 1000]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        assert_eq!(answer.len(), 3000);
        settle();
        // 2: upstream-first half-close.
        let mut s = TcpStream::connect(addr(SERVER_V4[0], 8081)).unwrap();
        s.set_read_timeout(timeout).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        s.write_all(&[1u8; 1000]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        settle();
        // 3: nothing listens upstream.
        let mut s = TcpStream::connect(addr(SERVER_V4[0], 8082)).unwrap();
        s.set_read_timeout(timeout).unwrap();
        assert!(s.read(&mut [0u8; 8]).is_err());
        settle();
        // 4: the client sends, then resets.
        let s = TcpStream::connect(addr(SERVER_V4[0], 8083)).unwrap();
        (&s).write_all(&[1u8; 100]).unwrap();
        thread::sleep(Duration::from_millis(50));
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
        settle();
        // 5: the proxy port itself, no redirect.
        let mut s = TcpStream::connect(addr(ROUTER_CLIENT_SIDE_V4, PROXY_PORT)).unwrap();
        s.set_read_timeout(timeout).unwrap();
        assert!(s.read(&mut [0u8; 8]).is_err());
        settle();
    });
    let exit = proxy.stop();
    assert!(exit.status.success(), "{}", exit.log);
    exit.log
        .lines()
        .filter_map(|line| {
            line.split_once("history=")
                .map(|(_, history)| history.trim().to_string())
        })
        .collect()
}

/// Lets the proxy finish closing one script's connection before the next starts, so the log order
/// is the script order.
fn settle() {
    thread::sleep(Duration::from_millis(100));
}
