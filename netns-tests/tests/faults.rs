//! Faults on the real kernel: what a client and an upstream see when the other side or the path
//! fails, and what origdst counts. Every failure must reach the peer as a reset — never as a clean
//! EOF after a truncated stream — within a bound.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use origdst_netns_tests::config::ConfigFile;
use origdst_netns_tests::origdst_bin;
use origdst_netns_tests::pattern::{Pattern, Verified};
use origdst_netns_tests::proxy::Proxy;
use origdst_netns_tests::server::Server;
use origdst_netns_tests::topology::{Gateway, SERVER_V4, addr};

const IO_TIMEOUT: Duration = Duration::from_secs(30);
const DATA: Pattern = Pattern::new(0xfa17);

fn start(gw: &Gateway, config: &ConfigFile) -> Proxy {
    start_on(gw, config, "uring-splice")
}

fn start_on(gw: &Gateway, config: &ConfigFile, data_path: &str) -> Proxy {
    Proxy::start(
        origdst_bin!(),
        &gw.router,
        &[
            "--config",
            config.arg(),
            "--shards",
            "2",
            "--log-level",
            "debug",
            "--data-path",
            data_path,
        ],
    )
}

/// Reads until EOF or error: (bytes read, how it ended).
fn read_until_end(stream: &mut TcpStream) -> (u64, Result<(), ErrorKind>) {
    let mut buf = [0u8; 65536];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (total, Ok(())),
            Ok(n) => total += n as u64,
            Err(e) => return (total, Err(e.kind())),
        }
    }
}

fn reset_on_close(stream: &TcpStream) {
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
}

#[test]
fn black_holed_upstream_resets_the_client_at_the_connect_timeout() {
    let gw = Gateway::new("blackhole");
    // The server silently drops SYNs to this port: the connect neither succeeds nor fails.
    gw.server.exec(
        "iptables",
        &["-A", "INPUT", "-p", "tcp", "--dport", "8090", "-j", "DROP"],
    );
    let config = ConfigFile::default_with(
        "blackhole",
        &[("connect_timeout: 10s", "connect_timeout: 1s")],
    );
    let proxy = start(&gw, &config);
    let dst = addr(SERVER_V4[0], 8090);
    let (waited, outcome) = gw.client.run(move || {
        let mut stream = TcpStream::connect(dst).expect("the proxy accepts");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let started = Instant::now();
        let outcome = stream.read(&mut [0u8; 8]).map_err(|e| e.kind());
        (started.elapsed(), outcome)
    });
    assert_eq!(outcome, Err(ErrorKind::ConnectionReset));
    assert!(
        waited >= Duration::from_millis(900),
        "reset before the connect timeout: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "the client waited {waited:?} for a 1 s connect timeout"
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("upstream_cx_connect_timeout"), 1);
}

#[test]
fn upstream_reset_mid_stream_reaches_the_client_as_a_reset() {
    upstream_reset_mid_stream("upreset", "uring-splice");
}

#[test]
fn upstream_reset_mid_stream_reaches_the_client_through_the_kernel_relay() {
    upstream_reset_mid_stream("upresetk", "kernel-sockmap");
}

fn upstream_reset_mid_stream(tag: &str, data_path: &str) {
    let gw = Gateway::new(tag);
    let handler = Arc::new(|stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        thread::spawn(move || {
            DATA.write_to(&mut &stream, 256 * 1024)
                .expect("server send");
            thread::sleep(Duration::from_millis(100));
            reset_on_close(&stream);
        });
    });
    let _server = Server::start(&gw.server, &[addr(SERVER_V4[0], 8091)], handler);
    let config = ConfigFile::default_with(tag, &[]);
    let proxy = start_on(&gw, &config, data_path);
    let dst = addr(SERVER_V4[0], 8091);
    let (got, end) = gw.client.run(move || {
        let mut stream = TcpStream::connect(dst).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        read_until_end(&mut stream)
    });
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "after {got} bytes the client saw {end:?}, not a reset"
    );
    assert!(got <= 256 * 1024);
    let exit = proxy.stop_clean();
    // Through the kernel relay, the pair really was in its map (not relayed by the fallback).
    let relayed = u64::from(data_path == "kernel-sockmap");
    assert_eq!(exit.stat("kernel_relay_cx_total"), relayed, "{}", exit.log);
    assert_eq!(exit.stat("upstream_cx_reset"), 1, "{}", exit.log);
}

#[test]
fn client_reset_mid_upload_reaches_the_upstream_as_a_reset() {
    client_reset_mid_upload("clreset", "uring-splice");
}

#[test]
fn client_reset_mid_upload_reaches_the_upstream_through_the_kernel_relay() {
    client_reset_mid_upload("clresetk", "kernel-sockmap");
}

fn client_reset_mid_upload(tag: &str, data_path: &str) {
    let gw = Gateway::new(tag);
    let (tx, seen) = mpsc::channel();
    let handler = Arc::new(move |mut stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        let tx = tx.clone();
        thread::spawn(move || {
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let _ = tx.send(read_until_end(&mut stream));
        });
    });
    let _server = Server::start(&gw.server, &[addr(SERVER_V4[0], 8092)], handler);
    let config = ConfigFile::default_with(tag, &[]);
    let proxy = start_on(&gw, &config, data_path);
    let dst = addr(SERVER_V4[0], 8092);
    gw.client.run(move || {
        let stream = TcpStream::connect(dst).expect("connect");
        DATA.write_to(&mut &stream, 1 << 20).expect("client send");
        thread::sleep(Duration::from_millis(200));
        reset_on_close(&stream);
    });
    let (got, end) = seen.recv_timeout(IO_TIMEOUT).expect("server result");
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "after {got} bytes the upstream saw {end:?}, not a reset"
    );
    let exit = proxy.stop_clean();
    // Through the kernel relay, the pair really was in its map (not relayed by the fallback).
    let relayed = u64::from(data_path == "kernel-sockmap");
    assert_eq!(exit.stat("kernel_relay_cx_total"), relayed, "{}", exit.log);
    assert_eq!(exit.stat("downstream_cx_reset"), 1, "{}", exit.log);
}

#[test]
fn idle_timeout_resets_both_sides() {
    idle_timeout_resets("idle", "uring-splice");
}

#[test]
fn idle_timeout_resets_both_sides_of_a_kernel_relayed_connection() {
    idle_timeout_resets("idlek", "kernel-sockmap");
}

fn idle_timeout_resets(tag: &str, data_path: &str) {
    let gw = Gateway::new(tag);
    let (tx, seen) = mpsc::channel();
    let handler = Arc::new(move |mut stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        let tx = tx.clone();
        thread::spawn(move || {
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let started = Instant::now();
            let end = read_until_end(&mut stream);
            let _ = tx.send((started.elapsed(), end));
        });
    });
    let _server = Server::start(&gw.server, &[addr(SERVER_V4[0], 8093)], handler);
    let config = ConfigFile::default_with(tag, &[("idle_timeout: 3600s", "idle_timeout: 1s")]);
    let proxy = start_on(&gw, &config, data_path);
    let dst = addr(SERVER_V4[0], 8093);
    let (waited, end) = gw.client.run(move || {
        let mut stream = TcpStream::connect(dst).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let started = Instant::now();
        let end = read_until_end(&mut stream);
        (started.elapsed(), end)
    });
    assert_eq!(end, (0, Err(ErrorKind::ConnectionReset)), "client");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "client waited {waited:?}"
    );
    let (server_waited, server_end) = seen.recv_timeout(IO_TIMEOUT).expect("server result");
    assert_eq!(server_end, (0, Err(ErrorKind::ConnectionReset)), "upstream");
    assert!(
        server_waited < Duration::from_secs(5),
        "upstream waited {server_waited:?}"
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("idle_timeout"), 1);
    // Through the kernel relay, the pair really was in its map (not relayed by the fallback).
    let relayed = u64::from(data_path == "kernel-sockmap");
    assert_eq!(exit.stat("kernel_relay_cx_total"), relayed, "{}", exit.log);
}

/// The kernel relays the bytes, so the shard sees none of them: a transfer that keeps moving for
/// three idle timeouts must not be cut as idle (the shard reads the sockets' TCP counters when
/// the idle timer comes due).
#[test]
fn a_busy_kernel_relayed_connection_is_not_idle() {
    let gw = Gateway::new("busyk");
    let (tx, seen) = mpsc::channel();
    let handler = Arc::new(move |mut stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        let tx = tx.clone();
        thread::spawn(move || {
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let _ = tx.send(read_until_end(&mut stream));
        });
    });
    let _server = Server::start(&gw.server, &[addr(SERVER_V4[0], 8094)], handler);
    let config = ConfigFile::default_with("busyk", &[("idle_timeout: 3600s", "idle_timeout: 1s")]);
    let proxy = start_on(&gw, &config, "kernel-sockmap");
    let dst = addr(SERVER_V4[0], 8094);
    gw.client.run(move || {
        let mut stream = TcpStream::connect(dst).expect("connect");
        // 3 s of 1 KiB every 100 ms, then a clean end.
        for _ in 0..30 {
            stream.write_all(&[7u8; 1024]).expect("client send");
            thread::sleep(Duration::from_millis(100));
        }
        stream.shutdown(Shutdown::Write).expect("client shutdown");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        assert_eq!(read_until_end(&mut stream), (0, Ok(())), "client end");
    });
    let (got, end) = seen.recv_timeout(IO_TIMEOUT).expect("server result");
    assert_eq!(
        (got, end),
        (30 * 1024, Ok(())),
        "the server got the whole upload"
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("idle_timeout"), 0, "{}", exit.log);
    assert_eq!(exit.stat("kernel_relay_cx_total"), 1);
    assert_eq!(exit.stat("downstream_cx_rx_bytes_total"), 30 * 1024);
}

/// The client sends its request and half-closes; the server streams its answer for three idle
/// timeouts. Every idle-timer look at the relay must count only the open direction (the closed
/// one's sink has queued a FIN since, which TCP counts; counting it once crashed the shard).
#[test]
fn a_half_closed_kernel_relayed_connection_streams_past_its_timers() {
    let gw = Gateway::new("halfk");
    let handler = Arc::new(move |mut stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        thread::spawn(move || {
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let request = read_until_end(&mut stream);
            assert_eq!(request, (100, Ok(())), "server: the request, then the FIN");
            for _ in 0..30 {
                stream.write_all(&[9u8; 1024]).expect("server send");
                thread::sleep(Duration::from_millis(100));
            }
        });
    });
    let _server = Server::start(&gw.server, &[addr(SERVER_V4[0], 8096)], handler);
    let config = ConfigFile::default_with(
        "halfk",
        &[
            ("idle_timeout: 3600s", "idle_timeout: 1s"),
            ("connect_timeout: 10s", "connect_timeout: 0.5s"),
        ],
    );
    let proxy = start_on(&gw, &config, "kernel-sockmap");
    let dst = addr(SERVER_V4[0], 8096);
    let answer = gw.client.run(move || {
        let mut stream = TcpStream::connect(dst).expect("connect");
        stream.write_all(&[3u8; 100]).expect("client send");
        // (A socket that has its peer's FIN already is not ESTABLISHED, and the kernel's socket
        // map takes only established ones: such a pair is relayed by the shard, and counted as
        // refused. Half-close once the pair is in the map.)
        thread::sleep(Duration::from_millis(100));
        stream.shutdown(Shutdown::Write).expect("client shutdown");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        read_until_end(&mut stream)
    });
    assert_eq!(
        answer,
        (30 * 1024, Ok(())),
        "the whole answer, then the FIN"
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("idle_timeout"), 0, "{}", exit.log);
    assert_eq!(exit.stat("completed"), 1, "{}", exit.log);
    assert_eq!(exit.stat("downstream_cx_rx_bytes_total"), 100);
    assert_eq!(exit.stat("downstream_cx_tx_bytes_total"), 30 * 1024);
    assert_eq!(exit.stat("kernel_relay_cx_total"), 1);
}

/// The upstream answers, half-closes, then resets while the client is still uploading: the
/// kernel stops relaying to the dead socket, and the shard, looking after it on a timer since
/// its FIN, resets the client promptly (not at the idle timeout an hour later).
#[test]
fn an_upstream_reset_after_its_fin_reaches_a_kernel_relayed_client() {
    let gw = Gateway::new("finrstk");
    let handler = Arc::new(|stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        thread::spawn(move || {
            DATA.write_to(&mut &stream, 64 * 1024).expect("server send");
            stream.shutdown(Shutdown::Write).expect("server FIN");
            thread::sleep(Duration::from_millis(300));
            reset_on_close(&stream);
        });
    });
    let _server = Server::start(&gw.server, &[addr(SERVER_V4[0], 8095)], handler);
    let config = ConfigFile::default_with("finrstk", &[]);
    let proxy = start_on(&gw, &config, "kernel-sockmap");
    let dst = addr(SERVER_V4[0], 8095);
    let (download, upload_end, waited) = gw.client.run(move || {
        let mut stream = TcpStream::connect(dst).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let download = read_until_end(&mut stream);
        // Upload until the reset arrives (a few seconds at most).
        let started = Instant::now();
        let end = loop {
            if started.elapsed() > Duration::from_secs(20) {
                break Ok(());
            }
            if let Err(e) = stream.write_all(&[1u8; 4096]) {
                break Err(e.kind());
            }
            thread::sleep(Duration::from_millis(5));
        };
        (download, end, started.elapsed())
    });
    assert_eq!(
        download,
        (64 * 1024, Ok(())),
        "the download, then the server's FIN"
    );
    assert!(
        matches!(
            upload_end,
            Err(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
        ),
        "the client must be reset, saw {upload_end:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "the reset took {waited:?} to reach the client"
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("upstream_cx_reset"), 1, "{}", exit.log);
    assert_eq!(exit.stat("kernel_relay_cx_total"), 1, "{}", exit.log);
}

#[test]
fn sigterm_drains_an_open_transfer_byte_exact_and_refuses_new_connections() {
    let gw = Gateway::new("drain");
    let (tx, seen) = mpsc::channel();
    let handler = Arc::new(move |stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        let tx = tx.clone();
        thread::spawn(move || {
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let got = DATA.verify_from(&mut &stream).expect("server receive");
            DATA.write_to(&mut &stream, 1 << 20).expect("server answer");
            stream.shutdown(Shutdown::Write).expect("server shutdown");
            let _ = tx.send(got);
        });
    });
    let _server = Server::start(&gw.server, &[addr(SERVER_V4[0], 8094)], handler);
    let config = ConfigFile::default_with("drain", &[]);
    let mut proxy = start(&gw, &config);
    let dst = addr(SERVER_V4[0], 8094);
    let (ready_tx, ready) = mpsc::channel();
    let (go_tx, go) = mpsc::channel::<()>();
    let client = gw.client.spawn(move || {
        let stream = TcpStream::connect(dst).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        DATA.write_to(&mut &stream, 1 << 20).expect("first half");
        ready_tx.send(()).unwrap();
        // The proxy is draining now: the open connection must still carry everything.
        go.recv().unwrap();
        let mut rest = Vec::new();
        DATA.write_to(&mut rest, 2 << 20).unwrap();
        (&stream)
            .write_all(&rest[1 << 20..])
            .expect("second half during the drain");
        stream.shutdown(Shutdown::Write).unwrap();
        DATA.verify_from(&mut &stream)
            .expect("answer during the drain")
    });
    ready.recv_timeout(IO_TIMEOUT).expect("client started");
    let term = Instant::now();
    proxy.signal_term();
    proxy.wait_for_log("draining", Duration::from_secs(10));
    // New connections are refused while the open one drains.
    let refused = gw
        .client
        .run(move || TcpStream::connect(dst).map(|_| ()).map_err(|e| e.kind()));
    go_tx.send(()).unwrap();
    let answer = client.join().expect("client thread");
    assert_eq!(
        refused,
        Err(ErrorKind::ConnectionRefused),
        "a draining proxy must not accept"
    );
    assert_eq!(answer, Verified::intact(1 << 20));
    assert_eq!(
        seen.recv_timeout(IO_TIMEOUT).unwrap(),
        Verified::intact(2 << 20)
    );
    let exit = proxy.wait_exit(Duration::from_secs(30));
    println!(
        "SIGTERM → drained (1 open transfer finished byte-exact) → exit in {:?}",
        term.elapsed()
    );
    assert!(exit.status.success(), "{}", exit.log);
    assert_eq!(exit.stat("completed"), 1);
    assert_eq!(exit.stat("drain_aborted"), 0);
}

/// Connections open in `ns` toward `port` (ESTABLISHED), as `ss` lists them.
fn established(ns: &origdst_netns_tests::netns::Netns, port: u16) -> usize {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let out = ns.exec("ss", &["-Htn", "state", "established", &filter]);
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Polls `check` every 10 ms for up to one second; how long it took, or the last value.
fn within_a_second(mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        if check() {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Clients that reset while origdst waits on the other side — pushing into an upstream that
/// stopped reading, or waiting for a connect to a black hole — must be noticed at once: both
/// sockets released, the upstream reset, counters back to zero within a second, on every data
/// path and both backends (not at the idle timeout, an hour, or the connect timeout).
fn client_reset_while_waiting_is_noticed(tag: &str, args: &[&str]) {
    let gw = Gateway::new(tag);
    const CLIENTS: usize = 4;
    // The stuck upstream: accepts, holds the connection, never reads.
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = Arc::clone(&held);
    let handler = Arc::new(move |stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        holder.lock().unwrap().push(stream);
    });
    let stuck = addr(SERVER_V4[0], 8092);
    let _server = Server::start(&gw.server, &[stuck], handler);
    // The black hole: SYNs dropped.
    gw.server.exec(
        "iptables",
        &["-A", "INPUT", "-p", "tcp", "--dport", "8093", "-j", "DROP"],
    );
    let black_hole = addr(SERVER_V4[0], 8093);
    // Timeouts far beyond the test: only the watch can end these connections in time.
    let config = ConfigFile::default_with(tag, &[("connect_timeout: 10s", "connect_timeout: 60s")]);
    let mut proxy_args = vec!["--config", config.arg(), "--shards", "2"];
    proxy_args.extend_from_slice(args);
    let mut proxy = Proxy::start(origdst_bin!(), &gw.router, &proxy_args);
    // Sockets, not every descriptor: pooled pipes come and go with the traffic (the pool sheds
    // idle ones), sockets are what a connection whose client reset must give back.
    let sockets = |proxy: &Proxy| proxy.fds_by_kind().get("socket").copied().unwrap_or(0);
    let idle_fds = sockets(&proxy);

    // 1. Pushing into an upstream that stopped reading, then a reset.
    let clients: Vec<TcpStream> = gw.client.run(move || {
        (0..CLIENTS)
            .map(|_| {
                let mut stream = TcpStream::connect(stuck).expect("connect");
                stream.set_nonblocking(true).unwrap();
                let chunk = [0x5au8; 65536];
                let (mut sent, mut blocked_since) = (0usize, None::<Instant>);
                // Until the send has been blocked for 300 ms: every buffer on the way is full.
                while blocked_since.is_none_or(|t| t.elapsed() < Duration::from_millis(300)) {
                    assert!(sent < 256 << 20, "the upstream's window never closed");
                    match stream.write(&chunk) {
                        Ok(n) => {
                            sent += n;
                            blocked_since = None;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            blocked_since.get_or_insert_with(Instant::now);
                            thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => panic!("client write: {e}"),
                    }
                }
                stream
            })
            .collect()
    });
    assert_eq!(held.lock().unwrap().len(), CLIENTS);
    assert_eq!(established(&gw.server, 8092), CLIENTS);
    assert_eq!(proxy.live_stat("connections_active"), CLIENTS as u64);
    for stream in clients {
        reset_on_close(&stream);
    }
    // (At most as many as when idle: a socket of the earlier step may close meanwhile.)
    let released = within_a_second(|| sockets(&proxy) <= idle_fds);
    assert!(
        released.is_some(),
        "origdst still holds {} sockets ({} idle) a second after the clients reset:\n{}",
        sockets(&proxy),
        idle_fds,
        proxy.log()
    );
    assert!(
        within_a_second(|| established(&gw.server, 8092) == 0).is_some(),
        "the stuck upstream's connections were not reset"
    );
    assert_eq!(proxy.live_stat("connections_active"), 0);

    // The pipes and buffers those connections held had the clients' bytes in them: the next
    // connections must receive exactly their own bytes (a pipe pooled with a dead connection's
    // bytes would deliver them first).
    let verified = Arc::new(std::sync::Mutex::new(Vec::new()));
    let results = Arc::clone(&verified);
    let verifier = Arc::new(move |mut stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        let results = Arc::clone(&results);
        thread::spawn(move || {
            let seen = DATA.verify_from(&mut stream).map_err(|e| e.kind());
            results.lock().unwrap().push(seen);
        });
    });
    let clean = addr(SERVER_V4[0], 8095);
    let _verifier = Server::start(&gw.server, &[clean], verifier);
    const NEXT_BYTES: u64 = 4 << 20;
    gw.client.run(move || {
        for _ in 0..2 * CLIENTS {
            let mut stream = TcpStream::connect(clean).expect("connect");
            DATA.write_to(&mut stream, NEXT_BYTES).expect("send");
            stream.shutdown(Shutdown::Write).unwrap();
            let _ = read_until_end(&mut stream);
        }
    });
    let settled = within_a_second(|| verified.lock().unwrap().len() == 2 * CLIENTS);
    assert!(
        settled.is_some(),
        "the verifier saw {:?}",
        verified.lock().unwrap()
    );
    for seen in verified.lock().unwrap().iter() {
        assert_eq!(
            *seen,
            Ok(Verified::intact(NEXT_BYTES)),
            "a later connection's upload"
        );
    }

    let idle_fds = sockets(&proxy);

    // 2. Waiting for a connect to a black hole, then a reset.
    let clients: Vec<TcpStream> = gw.client.run(move || {
        (0..CLIENTS)
            .map(|_| TcpStream::connect(black_hole).expect("the proxy accepts"))
            .collect()
    });
    let pending = within_a_second(|| proxy.live_stat("connections_active") == CLIENTS as u64);
    assert!(pending.is_some(), "the connects never started");
    thread::sleep(Duration::from_millis(100));
    for stream in clients {
        reset_on_close(&stream);
    }
    // (At most as many as when idle: a socket of the earlier step may close meanwhile.)
    let released = within_a_second(|| sockets(&proxy) <= idle_fds);
    assert!(
        released.is_some(),
        "origdst still holds {} sockets ({} idle) a second after the clients reset",
        sockets(&proxy),
        idle_fds
    );
    assert_eq!(proxy.live_stat("connections_active"), 0);

    let exit = proxy.stop_clean();
    assert_eq!(
        exit.stat("downstream_cx_reset"),
        2 * CLIENTS as u64,
        "{}",
        exit.log
    );
    assert!(
        exit.stat("watched_socket_errors") >= CLIENTS as u64,
        "the connect waits can only end through the watch: {}",
        exit.log
    );
    assert_eq!(exit.stat("upstream_cx_connect_timeout"), 0);
    assert_eq!(exit.stat("idle_timeout"), 0);
}

#[test]
fn client_reset_while_waiting_is_noticed_uring_splice() {
    client_reset_while_waiting_is_noticed("rwwsplice", &["--data-path", "uring-splice"]);
}

#[test]
fn client_reset_while_waiting_is_noticed_uring_copy() {
    client_reset_while_waiting_is_noticed("rwwcopy", &["--data-path", "uring-copy"]);
}

#[test]
fn client_reset_while_waiting_is_noticed_uring_opsplice() {
    client_reset_while_waiting_is_noticed("rwwopsplice", &["--data-path", "uring-opsplice"]);
}

#[test]
fn client_reset_while_waiting_is_noticed_epoll() {
    client_reset_while_waiting_is_noticed("rwwepoll", &["--backend", "epoll"]);
}

#[test]
fn a_client_reset_in_the_accept_queue_is_counted_as_gone_not_as_an_accept_failure() {
    let gw = Gateway::new("acceptgone");
    let config = ConfigFile::default_with("acceptgone", &[]);
    let proxy = start(&gw, &config);
    // Stopped, origdst accepts nothing: the connection waits in the listen backlog, and its
    // client resets there.
    proxy.signal(nix::sys::signal::Signal::SIGSTOP);
    let dst = addr(SERVER_V4[0], 8094);
    gw.client.run(move || {
        let stream = TcpStream::connect(dst).expect("the kernel completes the handshake");
        reset_on_close(&stream);
    });
    thread::sleep(Duration::from_millis(100));
    proxy.signal(nix::sys::signal::Signal::SIGCONT);
    thread::sleep(Duration::from_millis(300));
    let exit = proxy.stop_clean();
    assert_eq!(
        exit.stat("downstream_cx_accept_client_gone"),
        1,
        "{}",
        exit.log
    );
    assert_eq!(
        exit.stat("downstream_cx_accept_fail"),
        0,
        "a client that left is not an accept failure (EMFILE, ENFILE, ENOMEM)"
    );
}
