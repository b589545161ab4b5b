//! The demo's workloads: servers in the world and in the pods, and the clients that exercise
//! them. Every transfer is checked byte for byte against a pattern; every wait is bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::topology::{Topology, WORLD, pod_ip};

/// Every read and connect gives up after this.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Byte `offset` of the stream seeded `seed` (the uploads' and downloads' differ).
fn pattern(seed: u64, offset: u64) -> u8 {
    (offset.wrapping_mul(0x9e37_79b9).wrapping_add(seed) >> 11) as u8
}

const UP: u64 = 0x5eed_0001;
const DOWN: u64 = 0x5eed_0002;

/// What a world server saw of a bulk connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    pub(crate) local: SocketAddr,
    pub(crate) peer: SocketAddr,
}

/// The world's and the pods' servers (their threads end with the process).
pub(crate) struct Servers {
    world: Arc<Mutex<Vec<Seen>>>,
    pods: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Servers {
    /// Bulk and echo in the world, echo in every pod.
    pub(crate) fn start(
        topology: &Topology,
        bulk_port: u16,
        echo_port: u16,
        pod_port: u16,
    ) -> Self {
        let world = Arc::new(Mutex::new(Vec::new()));
        let pods = Arc::new(Mutex::new(Vec::new()));
        let listen = |ns: &super::topology::Netns, addr: SocketAddr| {
            ns.run(move || TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")))
        };
        let bulk = listen(
            &topology.world,
            SocketAddr::new(IpAddr::V4(WORLD), bulk_port),
        );
        let seen = Arc::clone(&world);
        serve(bulk, move |stream, peer| {
            let local = stream.local_addr().expect("local address");
            // As many bytes back as came: the client checks the count and every byte.
            if let Ok(received) = verify(&stream, UP) {
                let _ = send(&stream, DOWN, received);
                seen.lock().expect("world log").push(Seen { local, peer });
            }
            let _ = stream.shutdown(Shutdown::Write);
        });
        let echo = listen(
            &topology.world,
            SocketAddr::new(IpAddr::V4(WORLD), echo_port),
        );
        serve(echo, |stream, _| echo_loop(&stream));
        for i in 0..topology.pods.len() {
            let listener = listen(
                &topology.pods[i],
                SocketAddr::new(IpAddr::V4(pod_ip(i)), pod_port),
            );
            let peers = Arc::clone(&pods);
            serve(listener, move |stream, peer| {
                peers.lock().expect("pods log").push(peer);
                echo_loop(&stream);
            });
        }
        Self { world, pods }
    }

    /// The world's bulk connections, once `n` have finished (or after `wait`).
    pub(crate) fn world_seen(&self, n: usize, wait: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + wait;
        while self.world.lock().expect("world log").len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.world.lock().expect("world log").clone()
    }

    /// The peers the pods' servers saw, one per connection.
    pub(crate) fn pod_peers(&self) -> Vec<SocketAddr> {
        self.pods.lock().expect("pods log").clone()
    }
}

/// Accepts for ever on its own thread, a thread per connection.
fn serve(listener: TcpListener, handler: impl Fn(TcpStream, SocketAddr) + Send + Sync + 'static) {
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for (stream, peer) in listener.incoming().flatten().filter_map(|s| {
            let peer = s.peer_addr().ok()?;
            Some((s, peer))
        }) {
            let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
            let handler = Arc::clone(&handler);
            std::thread::spawn(move || handler(stream, peer));
        }
    });
}

/// Reads to EOF, checking every byte against `seed`'s pattern.
fn verify(mut stream: &TcpStream, seed: u64) -> Result<u64, String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        let n = stream.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Ok(offset);
        }
        if let Some(i) = (0..n).find(|&i| buf[i] != pattern(seed, offset + i as u64)) {
            return Err(format!("byte {} differs", offset + i as u64));
        }
        offset += n as u64;
    }
}

fn send(mut stream: &TcpStream, seed: u64, len: u64) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    while offset < len {
        let n = (len - offset).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(seed, offset + i as u64);
        }
        stream
            .write_all(&buf[..n])
            .map_err(|e| format!("write: {e}"))?;
        offset += n as u64;
    }
    Ok(())
}

fn echo_loop(mut stream: &TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        if stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

fn connect(dst: SocketAddr) -> Result<TcpStream, String> {
    let stream =
        TcpStream::connect_timeout(&dst, IO_TIMEOUT).map_err(|e| format!("connect {dst}: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Uploads `bytes`, half-closes, and verifies the same number coming back.
pub(crate) fn bulk(dst: SocketAddr, bytes: u64) -> Result<(), String> {
    let stream = connect(dst)?;
    send(&stream, UP, bytes)?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let got = verify(&stream, DOWN)?;
    if got == bytes {
        Ok(())
    } else {
        Err(format!("{got} of {bytes} bytes came back"))
    }
}

/// `n` 64-byte round trips on one connection; the median round trip.
pub(crate) fn ping_pong(dst: SocketAddr, n: usize) -> Result<Duration, String> {
    let mut stream = connect(dst)?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut times = Vec::with_capacity(n);
    let mut answer = [0u8; 64];
    for round in 0..n {
        let message = [round as u8; 64];
        let started = Instant::now();
        stream
            .write_all(&message)
            .map_err(|e| format!("round {round}: {e}"))?;
        stream
            .read_exact(&mut answer)
            .map_err(|e| format!("round {round}: {e}"))?;
        times.push(started.elapsed());
        if answer != message {
            return Err(format!("round {round}: a wrong answer"));
        }
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| e.to_string())?;
    times.sort();
    Ok(times[n / 2])
}

/// Connects (origdst accepts: the rules send it there), sends a byte, and expects to be reset.
pub(crate) fn refused(dst: SocketAddr) -> Result<(), String> {
    // origdst may reset it before `connect` has even returned.
    let mut stream = match TcpStream::connect_timeout(&dst, IO_TIMEOUT) {
        Ok(stream) => stream,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(()),
        Err(e) => return Err(format!("connect {dst}: {e}")),
    };
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let _ = stream.write_all(b"?");
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
        Ok(0) => Err("a clean EOF, not a reset".into()),
        Ok(n) => Err(format!("{n} bytes came back")),
        Err(e) => Err(format!("{e}")),
    }
}
