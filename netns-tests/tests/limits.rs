//! Limits on the real kernel: a slow reader must not grow origdst's memory (backpressure, which
//! the simulator cannot show), running out of file descriptors is survived and counted, and a
//! second instance on the same port shares the load through SO_REUSEPORT.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use origdst_netns_tests::config::ConfigFile;
use origdst_netns_tests::origdst_bin;
use origdst_netns_tests::pattern::{Pattern, Verified};
use origdst_netns_tests::proxy::Proxy;
use origdst_netns_tests::server::{Server, ask_local};
use origdst_netns_tests::topology::{Gateway, SERVER_V4, addr};

const DATA: Pattern = Pattern::new(0x510e);
const BULK_BYTES: u64 = 256 * 1024 * 1024;
/// A slow reader may not make origdst hold more than this (its own buffers, not the kernel's).
const RSS_KIB_MAX: u64 = 64 * 1024;

fn slow_reader_keeps_memory_bounded(tag: &str, data_path: &str) {
    let gw = Gateway::new(tag);
    let handler = Arc::new(|stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        thread::spawn(move || {
            // Blocks as soon as the path is full: that pressure must reach the server, not pile
            // up in origdst.
            let _ = DATA.write_to(&mut &stream, BULK_BYTES);
        });
    });
    let _server = Server::start(&gw.server, &[addr(SERVER_V4[0], 8095)], handler);
    // With the runtime's fault switch on (BUGGIFY): the bounds hold under short I/O too.
    let proxy = Proxy::start_buggified(
        origdst_bin!(),
        &gw.router,
        &["--data-path", data_path, "--shards", "2"],
    );
    let dst = addr(SERVER_V4[0], 8095);
    let rss_before = proxy.rss_kib();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (go_tx, go) = std::sync::mpsc::channel::<()>();
    let client = gw.client.spawn(move || {
        let mut stream = TcpStream::connect(dst).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        // Read a trickle, then stall, then read everything and verify it.
        let mut first = vec![0u8; 64 * 1024];
        stream.read_exact(&mut first).expect("first bytes");
        ready_tx.send(()).unwrap();
        go.recv().unwrap();
        let mut rest = (&first[..]).chain(&stream);
        DATA.verify_from(&mut rest).expect("read the rest")
    });
    ready
        .recv_timeout(Duration::from_secs(30))
        .expect("client started reading");
    // While the client stalls, sample origdst's memory for two seconds.
    let rss_max = peak_rss_kib(&proxy, Duration::from_secs(2));
    go_tx.send(()).unwrap();
    let got = client.join().expect("client");
    println!("{tag}: RSS {rss_before} KiB before, {rss_max} KiB max while the client stalled");
    assert_eq!(
        got,
        Verified::intact(BULK_BYTES),
        "the stalled stream still arrives whole"
    );
    assert!(
        rss_max < RSS_KIB_MAX,
        "origdst grew to {rss_max} KiB behind a slow reader"
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("completed"), 1);
}

/// The mirror image: the client uploads as fast as it can while the upstream stalls.
fn slow_upstream_keeps_memory_bounded(tag: &str, data_path: &str) {
    let gw = Gateway::new(tag);
    let (go_tx, go) = std::sync::mpsc::channel::<()>();
    let go = Arc::new(std::sync::Mutex::new(Some(go)));
    let (done_tx, done) = std::sync::mpsc::channel();
    let handler = Arc::new(move |stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        let go = go.lock().unwrap().take().expect("one connection");
        let done_tx = done_tx.clone();
        thread::spawn(move || {
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            let mut first = vec![0u8; 64 * 1024];
            (&stream).read_exact(&mut first).expect("first bytes");
            go.recv().unwrap();
            let mut rest = (&first[..]).chain(&stream);
            let _ = done_tx.send(DATA.verify_from(&mut rest).expect("read the rest"));
        });
    });
    let _server = Server::start(&gw.server, &[addr(SERVER_V4[0], 8097)], handler);
    // With the runtime's fault switch on (BUGGIFY): the bounds hold under short I/O too.
    let proxy = Proxy::start_buggified(
        origdst_bin!(),
        &gw.router,
        &["--data-path", data_path, "--shards", "2"],
    );
    let dst = addr(SERVER_V4[0], 8097);
    let client = gw.client.spawn(move || {
        let stream = TcpStream::connect(dst).expect("connect");
        DATA.write_to(&mut &stream, BULK_BYTES).expect("upload");
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let rss_before = proxy.rss_kib();
    thread::sleep(Duration::from_millis(300));
    let rss_max = peak_rss_kib(&proxy, Duration::from_secs(2));
    go_tx.send(()).unwrap();
    let got = done
        .recv_timeout(Duration::from_secs(120))
        .expect("server result");
    client.join().expect("client");
    println!("{tag}: RSS {rss_before} KiB before, {rss_max} KiB max while the upstream stalled");
    assert_eq!(
        got,
        Verified::intact(BULK_BYTES),
        "the stalled upload still arrives whole"
    );
    assert!(
        rss_max < RSS_KIB_MAX,
        "origdst grew to {rss_max} KiB behind a slow upstream"
    );
    let exit = proxy.stop_clean();
    assert_eq!(exit.stat("completed"), 1);
}

/// The highest RSS origdst shows while sampled every 50 ms for `window`.
fn peak_rss_kib(proxy: &Proxy, window: Duration) -> u64 {
    let until = Instant::now() + window;
    let mut peak = 0;
    while Instant::now() < until {
        peak = peak.max(proxy.rss_kib());
        thread::sleep(Duration::from_millis(50));
    }
    peak
}

#[test]
fn slow_upstream_keeps_memory_bounded_splice() {
    slow_upstream_keeps_memory_bounded("slowupsplice", "uring-splice");
}

#[test]
fn slow_upstream_keeps_memory_bounded_copy() {
    slow_upstream_keeps_memory_bounded("slowupcopy", "uring-copy");
}

#[test]
fn slow_reader_keeps_memory_bounded_splice() {
    slow_reader_keeps_memory_bounded("slowsplice", "uring-splice");
}

#[test]
fn slow_reader_keeps_memory_bounded_copy() {
    slow_reader_keeps_memory_bounded("slowcopy", "uring-copy");
}

#[test]
fn second_instance_on_the_same_port_shares_the_load() {
    // SO_REUSEPORT lets a second origdst (same user) bind the capture port: the kernel spreads new
    // connections over every listener of both, which is how a rolling restart hands over.
    let gw = Gateway::new("reuseport");
    let dst = addr(SERVER_V4[0], 8096);
    let (_server, seen) = Server::echo_local(&gw.server, &[dst]);
    let first = Proxy::start(origdst_bin!(), &gw.router, &["--shards", "2"]);
    // Its own admin port: two processes cannot share one (scrapes would land on either).
    let second = Proxy::start(
        origdst_bin!(),
        &gw.router,
        &["--shards", "2", "--admin", "127.0.0.1:15100"],
    );
    for _ in 0..CONNECTIONS {
        assert_eq!(ask_local(&gw.client, dst), dst.to_string());
        seen.recv_timeout(Duration::from_secs(30))
            .expect("server saw it");
    }
    let (a, b) = (first.stop(), second.stop());
    assert!(a.status.success() && b.status.success());
    let (a, b) = (a.stat("completed"), b.stat("completed"));
    assert_eq!(a + b, CONNECTIONS, "every connection relayed once");
    // All 40 on one instance would happen with probability 2 × 2^-40: a real imbalance.
    assert!(a > 0 && b > 0, "one instance took everything: {a} / {b}");
}

const CONNECTIONS: u64 = 40;

/// What became of one client connection while origdst was out of descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Its byte came back: relayed.
    Echoed,
    /// origdst reset it (no descriptor for the upstream socket).
    Reset,
    /// Still waiting in the listen backlog for a descriptor.
    Waiting,
}

fn fate(stream: &TcpStream) -> Fate {
    let mut byte = [0u8; 1];
    match (&*stream).read(&mut byte) {
        Ok(1) => Fate::Echoed,
        Ok(_) => panic!("clean EOF instead of the echo or a reset: a silently dropped connection"),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Fate::Waiting,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Fate::Reset,
        Err(e) => panic!("unexpected client error: {e}"),
    }
}

#[test]
fn descriptor_exhaustion_backs_off_counts_and_recovers() {
    let gw = Gateway::new("nofile");
    let dst = addr(SERVER_V4[0], 8098);
    let handler = Arc::new(|stream: TcpStream, _: SocketAddr, _: SocketAddr| {
        thread::spawn(move || {
            let _ = std::io::copy(&mut &stream, &mut &stream);
        });
    });
    let _server = Server::start(&gw.server, &[dst], handler);
    let mut proxy =
        Proxy::start_with_nofile(origdst_bin!(), &gw.router, NOFILE, &["--shards", "1"]);
    // More connections than the descriptor table can relay (two descriptors each).
    let streams: Vec<TcpStream> = gw.client.run(move || {
        (0..FLOOD)
            .map(|_| {
                use std::io::Write;
                let mut stream = TcpStream::connect(dst).expect("connect (the backlog accepts)");
                stream.write_all(b"x").expect("send one byte");
                stream
            })
            .collect()
    });
    for stream in &streams {
        stream.set_nonblocking(true).unwrap();
    }
    // Wait until relaying has settled: some echoed, and nothing changed for half a second (a
    // fixed sleep flaked when the machine was busy). An echoed byte is read once, so only the
    // still-waiting connections are asked again.
    let mut before = vec![Fate::Waiting; streams.len()];
    let settle_deadline = Instant::now() + SETTLE_MAX;
    let mut last_change = Instant::now();
    loop {
        for (fate_of, stream) in before.iter_mut().zip(&streams) {
            if *fate_of == Fate::Waiting {
                let now = fate(stream);
                if now != Fate::Waiting {
                    *fate_of = now;
                    last_change = Instant::now();
                }
            }
        }
        let any_echoed = before.contains(&Fate::Echoed);
        if any_echoed && last_change.elapsed() >= Duration::from_millis(500) {
            break;
        }
        assert!(
            Instant::now() < settle_deadline,
            "no connection relayed within {SETTLE_MAX:?} (before any descriptor ran out)"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let echoed = before.iter().filter(|&&f| f == Fate::Echoed).count();
    let waiting = before.iter().filter(|&&f| f == Fate::Waiting).count();
    let reset = before.len() - echoed - waiting;
    println!(
        "out of descriptors: {echoed} relayed, {reset} reset, {waiting} waiting in the backlog"
    );
    assert!(
        echoed > 0 && echoed < FLOOD,
        "{echoed} of {FLOOD} relayed: the limit of {NOFILE} descriptors was not the bottleneck"
    );
    assert_eq!(
        reset, 0,
        "a connection was reset instead of waiting for a descriptor"
    );
    assert!(
        proxy.live_stat("downstream_cx_accept_paused_no_fd") > 0,
        "exhaustion was not counted"
    );

    // Release the relayed connections: their descriptors must go to the waiting ones, and a new
    // connection must be relayed again.
    let released = Instant::now();
    let (hogs, rest): (Vec<_>, Vec<_>) = streams
        .into_iter()
        .zip(before)
        .partition(|(_, fate)| *fate == Fate::Echoed);
    drop(hogs);
    let mut waiting: Vec<TcpStream> = rest
        .into_iter()
        .filter(|(_, fate)| *fate == Fate::Waiting)
        .map(|(stream, _)| stream)
        .collect();
    while !waiting.is_empty() {
        assert!(
            released.elapsed() < RECOVERY_MAX,
            "{} connections still waiting {RECOVERY_MAX:?} after descriptors were freed",
            waiting.len()
        );
        waiting.retain(|stream| fate(stream) == Fate::Waiting);
        thread::sleep(Duration::from_millis(1));
    }
    let backlog_drained = released.elapsed();
    assert_eq!(ask_echo(&gw.client, dst), "fresh");
    let recovered = released.elapsed();
    println!(
        "descriptors freed → backlog served in {backlog_drained:?}, fresh connection relayed after {recovered:?}"
    );
    let exit = proxy.stop_clean();
    assert!(
        exit.log
            .contains("out of file descriptors; accepting paused"),
        "no log line for the exhaustion:\n{}",
        exit.log
    );
    assert!(
        exit.log.contains("file descriptors available again"),
        "no log line for the recovery:\n{}",
        exit.log
    );
    // Nothing lost: the flood and the fresh connection all completed, none was reset.
    assert_eq!(exit.stat("completed"), FLOOD as u64 + 1, "{}", exit.log);
    assert_eq!(exit.stat("drain_aborted"), 0, "{}", exit.log);
}

/// Sends `fresh`, half-closes, and returns what came back through an echo server.
fn ask_echo(ns: &origdst_netns_tests::netns::Netns, dst: SocketAddr) -> String {
    ns.run(move || {
        use std::io::Write;
        let mut stream = TcpStream::connect(dst).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(b"fresh").unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("echo");
        answer
    })
}

/// Small enough that a few dozen connections exhaust it, large enough for start-up.
const NOFILE: u32 = 64;
const FLOOD: usize = 80;
const RECOVERY_MAX: Duration = Duration::from_secs(10);
/// How long relaying may take to settle while the machine is busy with other tests.
const SETTLE_MAX: Duration = Duration::from_secs(20);

/// Running unprivileged, origdst's pipes count against the per-user pipe limit
/// (`fs.pipe-user-pages-soft`, 64 MiB by default): past it the kernel refuses `F_SETPIPE_SZ` and new
/// pipes stay at two pages. Splice must keep working on those small pipes, byte-exact, and say so.
#[test]
fn per_user_pipe_limit_shrinks_pipes_but_stays_byte_exact() {
    let gw = Gateway::new("pipeuser");
    let dst = addr(SERVER_V4[0], 8094);
    // Small socket buffers past origdst (its sends, the server's receives: both per netns), so
    // each stream's 4 MiB holds its pipe full until the server reads. With the kernel's
    // autotuned megabytes there the pipes drained into the buffers, were given back and reused,
    // and whether 64 of them were ever held at once was a race a loaded machine lost.
    gw.router
        .exec("sysctl", &["-qw", "net.ipv4.tcp_wmem=4096 131072 131072"]);
    gw.server
        .exec("sysctl", &["-qw", "net.ipv4.tcp_rmem=4096 131072 131072"]);
    let accepted = Arc::new(std::sync::Barrier::new(PIPE_STREAMS + 1));
    let go = Arc::new(std::sync::Barrier::new(PIPE_STREAMS + 1));
    let (done_tx, done) = std::sync::mpsc::channel();
    let handler = {
        let (accepted, go) = (Arc::clone(&accepted), Arc::clone(&go));
        Arc::new(move |stream: TcpStream, _: SocketAddr, _: SocketAddr| {
            let (accepted, go, done_tx) = (Arc::clone(&accepted), Arc::clone(&go), done_tx.clone());
            thread::spawn(move || {
                // Read nothing until every stream has filled its path (its pipe included).
                accepted.wait();
                go.wait();
                let _ = done_tx.send(DATA.verify_from(&mut &stream));
            });
        })
    };
    let _server = Server::start(&gw.server, &[dst], handler);
    // Enough 1 MiB pipes to pass the 64 MiB per-user default, within origdst's own budget.
    let config = ConfigFile::default_with(
        "pipeuser",
        &[
            ("upstream_mark: 1337", "upstream_mark: null"),
            (
                "  drain_timeout: 30s\n",
                "  drain_timeout: 30s\n  pipe_size_bytes: 1048576\n  pipe_budget_bytes: 268435456\n",
            ),
        ],
    );
    let proxy = Proxy::start_as(
        origdst_bin!(),
        &gw.router,
        PIPE_UID,
        &["--config", config.arg(), "--shards", "2"],
    );
    let clients: Vec<_> = (0..PIPE_STREAMS)
        .map(|_| {
            gw.client.spawn(move || {
                let stream = TcpStream::connect(dst).expect("connect");
                DATA.write_to(&mut &stream, PIPE_STREAM_BYTES)
                    .expect("upload");
                stream.shutdown(std::net::Shutdown::Write).unwrap();
            })
        })
        .collect();
    accepted.wait();
    thread::sleep(Duration::from_millis(500));
    go.wait();
    for _ in 0..PIPE_STREAMS {
        let got = done
            .recv_timeout(Duration::from_secs(120))
            .expect("server result")
            .expect("server read");
        assert_eq!(got, Verified::intact(PIPE_STREAM_BYTES));
    }
    for client in clients {
        client.join().expect("client");
    }
    let exit = proxy.stop_clean();
    println!(
        "uid {PIPE_UID}: {} of the pipes came out smaller than 1 MiB",
        exit.stat("pipes_shrunk")
    );
    assert!(
        exit.stat("pipes_shrunk") > 0,
        "the per-user pipe limit was never reached:\n{}",
        exit.log
    );
    assert!(
        exit.log.contains("per-user pipe limit"),
        "no warning names the per-user limit:\n{}",
        exit.log
    );
    assert_eq!(exit.stat("completed"), PIPE_STREAMS as u64);
}

/// An otherwise unused uid, so no other test's pipes count against its limit.
const PIPE_UID: u32 = 4242;
/// 96 × 1 MiB pipes held at once: 32 past the 64 MiB per-user default.
const PIPE_STREAMS: usize = 96;
const PIPE_STREAM_BYTES: u64 = 4 * 1024 * 1024;
