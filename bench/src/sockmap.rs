//! The in-kernel anchor: a relay whose bytes never leave the kernel. A BPF `sk_skb` stream-verdict
//! program (`bench/bpf/sockmap_relay.c`, built at run time with Debian's clang) redirects what
//! one socket of a pair receives to the egress of the other, as Cilium and Merbridge
//! short-circuit local traffic; this user-space side accepts the redirected connection, reads its
//! original destination, connects there, puts the pair in the `SOCKHASH` (loaded and attached
//! with aya) and passes each FIN on. It measures what a proxy would cost if its data path were
//! the kernel's alone.
//!
//! It is a benchmark candidate, not a data path, for reasons the measurements and the design
//! show (see `bench/README.md`): bytes a socket received before the pair was in the map need a
//! kick to be redirected; the verdict drops what the first socket of a pair receives before its
//! peer is in the map (fine for client-first protocols only); and the kernel sends redirected
//! bytes from a work queue user space cannot see, so a FIN may be passed on only once the other
//! end has acknowledged every byte (`TCP_INFO` counts on both sockets), a wait a proxy that
//! answers its client's FIN at once does not have.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{MapData, SockHash};
use aya::programs::SkSkb;
use socket2::{Domain, SockRef, Socket, Type};

/// The BPF program's source, compiled by the harness (no build-time clang dependency).
const SOURCE: &str = include_str!("../bpf/sockmap_relay.c");
/// Connections relayed at once (one thread each; the harness needs at most eight).
const WORKERS: usize = 32;
/// origdst's mark: the sidecar topology's rules leave the relay's upstream connections alone.
const UPSTREAM_MARK: u32 = 1337;

/// Whether this machine can build the program (clang and libbpf's headers, Debian's `clang` and
/// `libbpf-dev`).
pub(crate) fn available() -> bool {
    Path::new("/usr/include/bpf/bpf_helpers.h").exists()
        && Command::new("clang")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Compiles the program into a temporary object file.
pub(crate) fn compile() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("origdst-bench-bpf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let source = dir.join("sockmap_relay.c");
    let object = dir.join("sockmap_relay.o");
    std::fs::write(&source, SOURCE).map_err(|e| format!("{}: {e}", source.display()))?;
    // <asm/types.h> lives under the multiarch include directory on Debian.
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let output = Command::new("clang")
        .args(["-O2", "-g", "-target", "bpf", "-I", &multiarch, "-c"])
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .output()
        .map_err(|e| format!("clang: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "clang failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(object)
}

/// The relay process (the harness's hidden `--sockmap-relay ADDR OBJECT`): loads and attaches the
/// program, listens on `listen`, prints "listening", and relays until it is killed.
pub(crate) fn run(listen: SocketAddr, object: &Path) -> Result<(), String> {
    let mut bpf = aya::Ebpf::load_file(object).map_err(|e| format!("load {object:?}: {e}"))?;
    let map = bpf.take_map("peers").ok_or("no map named peers")?;
    let peers: SockHash<MapData, u64> =
        SockHash::try_from(map).map_err(|e| format!("peers: {e}"))?;
    let program: &mut SkSkb = bpf
        .program_mut("relay")
        .ok_or("no program named relay")?
        .try_into()
        .map_err(|e| format!("relay: {e}"))?;
    program.load().map_err(|e| format!("load relay: {e}"))?;
    program
        .attach(peers.fd())
        .map_err(|e| format!("attach relay: {e}"))?;
    let listener = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    let peers = Arc::new(Mutex::new(peers));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let listener = listener.try_clone().expect("clone the listener");
            let peers = Arc::clone(&peers);
            std::thread::spawn(move || {
                while let Ok((client, _)) = listener.accept() {
                    if let Err(err) = relay_one(client, &peers) {
                        eprintln!("sockmap relay: {err}");
                    }
                }
            })
        })
        .collect();
    println!("listening");
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

/// One connection: connect to its original destination, hand the pair to the kernel, pass each
/// FIN on, and take the pair out of the map when both directions are done.
fn relay_one(client: TcpStream, peers: &Mutex<SockHash<MapData, u64>>) -> Result<(), String> {
    let dst = SockRef::from(&client)
        .original_dst_v4()
        .map_err(|e| format!("SO_ORIGINAL_DST: {e}"))?
        .as_socket()
        .ok_or("not an inet destination")?;
    let upstream = Socket::new(Domain::for_address(dst), Type::STREAM, None)
        .map_err(|e| format!("socket: {e}"))?;
    upstream
        .set_mark(UPSTREAM_MARK)
        .map_err(|e| format!("SO_MARK: {e}"))?;
    upstream
        .connect(&dst.into())
        .map_err(|e| format!("connect {dst}: {e}"))?;
    let upstream = TcpStream::from(upstream);
    let (client_cookie, upstream_cookie) = (cookie(&client)?, cookie(&upstream)?);
    {
        let mut map = peers.lock().expect("peers lock");
        // What the client sends leaves through the upstream socket; the upstream goes in first,
        // so its own verdict (which needs the client) sees no bytes before the client's arrive.
        map.insert(client_cookie, upstream.as_raw_fd(), 0)
            .map_err(|e| format!("insert upstream: {e}"))?;
        map.insert(upstream_cookie, client.as_raw_fd(), 0)
            .map_err(|e| format!("insert client: {e}"))?;
    }
    // Bytes that arrived before the verdict was attached sit in the receive queue; setting
    // SO_RCVLOWAT runs the socket's data-ready callback, now the verdict's, which takes them.
    for socket in [&client, &upstream] {
        set_rcvlowat(socket.as_raw_fd(), 1);
    }
    pass_fins(&client, &upstream);
    let mut map = peers.lock().expect("peers lock");
    let _ = map.remove(&client_cookie);
    let _ = map.remove(&upstream_cookie);
    Ok(())
}

/// Waits for each side's FIN and passes it on once everything that side sent has reached the
/// other end; ends when both directions are closed, on an error, or after an hour.
fn pass_fins(client: &TcpStream, upstream: &TcpStream) {
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut open = [true, true];
    let sockets = [client, upstream];
    while open.iter().any(|o| *o) && Instant::now() < deadline {
        let mut fds = [0, 1].map(|i| libc::pollfd {
            fd: if open[i] { sockets[i].as_raw_fd() } else { -1 },
            events: libc::POLLRDHUP,
            revents: 0,
        });
        // SAFETY: two pollfd entries owned by this frame.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if n <= 0 {
            continue;
        }
        for (i, fd) in fds.iter().enumerate() {
            if fd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                return;
            }
            if fd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0 && open[i] {
                let sink = sockets[1 - i];
                wait_delivered(sockets[i], sink);
                let _ = sink.shutdown(std::net::Shutdown::Write);
                open[i] = false;
            }
        }
    }
}

/// After `source`'s FIN: until `sink`'s peer has acknowledged as many bytes as `source` received
/// (at most 30 s). The kernel sends redirected bytes from a work queue user space cannot see, so
/// a FIN passed on at once could overtake (and, shutting the socket, drop) the last of them; the
/// two sockets' `TCP_INFO` byte counts say exactly when they are through.
fn wait_delivered(source: &TcpStream, sink: &TcpStream) {
    let limit = Instant::now() + Duration::from_secs(30);
    let Some(received) = tcp_info(source).map(|i| i.tcpi_bytes_received) else {
        return;
    };
    while Instant::now() < limit {
        match tcp_info(sink) {
            Some(info) if info.tcpi_bytes_acked < received => {
                std::thread::sleep(Duration::from_micros(100));
            }
            _ => return,
        }
    }
    eprintln!("sockmap relay: {received} bytes not delivered after 30 s; passing the FIN on");
}

fn tcp_info(socket: &TcpStream) -> Option<libc::tcp_info> {
    // SAFETY: an all-zero tcp_info is valid; the kernel fills what it knows of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: TCP_INFO writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

/// `SO_COOKIE`: the socket's kernel-wide id, what the verdict program looks its peer up by.
fn cookie(socket: &impl AsFd) -> Result<u64, String> {
    let mut value: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes a u64 into `value`, `len` its size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(format!("SO_COOKIE: {}", std::io::Error::last_os_error()))
    }
}

fn set_rcvlowat(fd: i32, bytes: libc::c_int) {
    // SAFETY: an int option on a socket this thread owns.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&bytes as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
