//! Load generators and sinks: bulk streams, 64-byte ping-pong, connection rate, idle connections.
//! Clients run in the client namespace, servers in the server namespace; every loop is bounded by
//! a deadline or a count and stops by itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use origdst_netns_tests::netns::Netns;

/// Servers in the server namespace: a sink (counts bytes) and an echo.
pub(crate) struct Servers {
    stop: Arc<AtomicBool>,
    /// Bytes the sink has received, all connections together.
    pub(crate) received: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Starts the sink on `sink` and the echo on each of `echo` inside `ns`; `pin` is the CPU
    /// their threads run on.
    pub(crate) fn start(
        ns: &Netns,
        sink: SocketAddr,
        echo: &[SocketAddr],
        pin: Option<usize>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        // Echo connections go to a fixed pool of workers: a thread spawned per connection cost
        // the connection-rate test ~20 µs of the load CPU per connection, for every candidate.
        let (echo_tx, echo_rx) = std::sync::mpsc::channel::<TcpStream>();
        let echo_rx = Arc::new(std::sync::Mutex::new(echo_rx));
        for _ in 0..ECHO_WORKERS {
            let (stop, echo_rx) = (Arc::clone(&stop), Arc::clone(&echo_rx));
            threads.push(std::thread::spawn(move || {
                pin_to(pin);
                loop {
                    let next = echo_rx
                        .lock()
                        .map(|rx| rx.recv_timeout(Duration::from_millis(50)));
                    match next {
                        Ok(Ok(stream)) => echo_loop(stream, &stop),
                        Ok(Err(std::sync::mpsc::RecvTimeoutError::Timeout)) => {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            }));
        }
        let listeners = std::iter::once((sink, true)).chain(echo.iter().map(|&addr| (addr, false)));
        for (addr, is_sink) in listeners {
            let listener = ns.run(move || {
                let listener =
                    TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                listener.set_nonblocking(true).expect("nonblocking");
                listener
            });
            let (stop, received) = (Arc::clone(&stop), Arc::clone(&received));
            let echo_tx = echo_tx.clone();
            threads.push(std::thread::spawn(move || {
                pin_to(pin);
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).expect("blocking");
                            if !is_sink {
                                let _ = echo_tx.send(stream);
                                continue;
                            }
                            let received = Arc::clone(&received);
                            std::thread::spawn(move || {
                                pin_to(pin);
                                sink_loop(stream, &received);
                            });
                        }
                        // Wait for the next connection (bounded, to see `stop`): a fixed sleep
                        // here capped every candidate's connection rate at ~4 000/s.
                        Err(_) => wait_readable(&listener, Duration::from_millis(50)),
                    }
                }
            }));
        }
        Self {
            stop,
            received,
            threads,
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Echo connections served at once: ping-pong holds one, the connection-rate test four.
const ECHO_WORKERS: usize = 8;

fn wait_readable(listener: &TcpListener, timeout: Duration) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    let _ = poll(&mut fds, timeout);
}

fn sink_loop(mut stream: TcpStream, received: &AtomicU64) {
    let mut buf = vec![0u8; 256 * 1024];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            return;
        }
        received.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn echo_loop(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

/// Pins the calling thread (an optimisation: ignored where the CPU does not exist).
pub(crate) fn pin_to(cpu: Option<usize>) {
    if let Some(id) = cpu.and_then(|cpu| {
        core_affinity::get_core_ids()?
            .into_iter()
            .find(|c| c.id == cpu)
    }) {
        let _ = core_affinity::set_for_current(id);
    }
}

/// Bulk upload for `duration` over `streams` connections, spread round-robin over the client
/// namespaces `from` (the first takes the first stream), to the sink at `dst`: (bytes written
/// and received, elapsed).
pub(crate) fn bulk(
    from: &[&Netns],
    dst: SocketAddr,
    streams: usize,
    duration: Duration,
    received: &AtomicU64,
) -> (u64, Duration) {
    let start_count = received.load(Ordering::Relaxed);
    let started = Instant::now();
    let per_ns: Vec<usize> = (0..from.len())
        .map(|i| streams / from.len() + usize::from(i < streams % from.len()))
        .collect();
    let writers: Vec<_> = from
        .iter()
        .zip(per_ns)
        .filter(|(_, n)| *n > 0)
        .map(|(ns, n)| ns.spawn(move || bulk_writers(dst, n, duration)))
        .collect();
    let written: u64 = writers
        .into_iter()
        .map(|w| w.join().expect("bulk writers"))
        .sum();
    // Done when the sink has everything that was written (bounded: a stalled path is an error).
    let limit = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) - start_count < written {
        assert!(
            Instant::now() < limit,
            "the sink is missing bytes 30 s after the writers stopped"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    (written, started.elapsed())
}

/// `streams` writers to `dst` from the calling thread's namespace, for `duration`: bytes written.
fn bulk_writers(dst: SocketAddr, streams: usize, duration: Duration) -> u64 {
    let threads: Vec<_> = (0..streams)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream =
                    TcpStream::connect(dst).unwrap_or_else(|e| panic!("connect {dst}: {e}"));
                let buf = vec![0x5au8; 256 * 1024];
                let deadline = Instant::now() + duration;
                let mut total = 0u64;
                while Instant::now() < deadline {
                    match stream.write(&buf) {
                        Ok(n) => total += n as u64,
                        Err(e) => panic!("bulk write to {dst}: {e}"),
                    }
                }
                let _ = stream.shutdown(std::net::Shutdown::Write);
                total
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("bulk writer"))
        .sum()
}

/// Ping-pong of 64-byte messages on one connection: round-trip times and transactions per second.
pub(crate) fn ping_pong(
    ns: &Netns,
    dst: SocketAddr,
    count: u64,
    pin: Option<usize>,
) -> (Histogram<u64>, f64) {
    ns.run(move || {
        pin_to(pin);
        let mut stream = TcpStream::connect(dst).unwrap_or_else(|e| panic!("connect {dst}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram");
        let request = [7u8; 64];
        let mut response = [0u8; 64];
        // Warm-up: connect-time effects are not latency.
        for _ in 0..count / 10 {
            stream.write_all(&request).expect("ping");
            stream.read_exact(&mut response).expect("pong");
        }
        let started = Instant::now();
        for _ in 0..count {
            let sent = Instant::now();
            stream.write_all(&request).expect("ping");
            stream.read_exact(&mut response).expect("pong");
            let _ = histogram.record(sent.elapsed().as_nanos() as u64);
        }
        let tps = count as f64 / started.elapsed().as_secs_f64();
        (histogram, tps)
    })
}

/// New connections for `duration` from one client thread per destination in `dsts`, each: connect,
/// one byte each way, close. Returns (completed connections per second, errors, completed
/// connections). One destination
/// per thread because each source/destination pair is its own ephemeral-port space: with one
/// destination, TIME_WAIT reuse (after 1 s) capped every candidate, direct included, at ~22 500/s.
pub(crate) fn connection_rate(
    from: &[&Netns],
    dsts: &[SocketAddr],
    duration: Duration,
    pin: Option<usize>,
) -> (f64, u64, u64) {
    let started = Instant::now();
    // Destination i's thread runs in namespace i mod the namespaces' count.
    let workers: Vec<_> = dsts
        .iter()
        .enumerate()
        .map(|(i, &dst)| from[i % from.len()].spawn(move || connect_loop(dst, duration, pin)))
        .collect();
    let (ok, errors) = workers
        .into_iter()
        .map(|w| w.join().expect("connection-rate worker"))
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    (ok as f64 / started.elapsed().as_secs_f64(), errors, ok)
}

/// Connect, one byte each way, close, to `dst` until `duration` is up: (completed, errors).
fn connect_loop(dst: SocketAddr, duration: Duration, pin: Option<usize>) -> (u64, u64) {
    pin_to(pin);
    let deadline = Instant::now() + duration;
    let (mut ok, mut errors) = (0u64, 0u64);
    while Instant::now() < deadline {
        let step = |what: &'static str| {
            move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
        };
        let attempt = (|| -> std::io::Result<()> {
            let mut stream = TcpStream::connect_timeout(&dst, Duration::from_secs(2))
                .map_err(step("connect"))?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(&[1]).map_err(step("send"))?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).map_err(step("receive"))?;
            Ok(())
        })();
        match attempt {
            Ok(()) => ok += 1,
            Err(err) => {
                errors += 1;
                // The first few say what went wrong (the tables only count).
                if errors <= 3 {
                    eprintln!("connection to {dst} failed: {err} ({:?})", err.kind());
                }
            }
        }
    }
    (ok, errors)
}

/// Opens `n` connections to an echo server, one byte echoed on each, and keeps them open.
pub(crate) fn open_idle(ns: &Netns, dst: SocketAddr, n: usize) -> Result<Vec<TcpStream>, String> {
    ns.run(move || {
        (0..n)
            .map(|i| {
                let fail =
                    |what: &str, e: std::io::Error| format!("idle connection #{i}: {what}: {e}");
                let mut stream = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
                    .map_err(|e| fail("connect", e))?;
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .map_err(|e| fail("timeout", e))?;
                stream.write_all(&[1]).map_err(|e| fail("send", e))?;
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).map_err(|e| fail("echo", e))?;
                Ok(stream)
            })
            .collect()
    })
}
