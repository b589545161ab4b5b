//! Upstream servers inside a namespace: one listener per address, each accepted connection handed
//! to a handler with the address it was accepted on (to prove the destination was preserved).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::netns::Netns;

/// Handles one accepted connection: (stream, local address it was accepted on, peer).
pub type Handler = Arc<dyn Fn(TcpStream, SocketAddr, SocketAddr) + Send + Sync>;

/// Running listeners; stopped on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Listens on every address in `addrs` inside `ns`; the handler runs on the accept thread
    /// (handlers that block spawn their own thread).
    pub fn start(ns: &Netns, addrs: &[SocketAddr], handler: Handler) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &addr in addrs {
            let listener = ns.run(move || {
                // std's backlog (128) overflows when thousands of connections arrive at once; the
                // kernel then drops handshakes and the test would measure its own server.
                let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)
                    .expect("server socket");
                socket.set_reuse_address(true).expect("SO_REUSEADDR");
                socket
                    .bind(&addr.into())
                    .unwrap_or_else(|e| panic!("server bind {addr}: {e}"));
                socket.listen(BACKLOG).expect("server listen");
                socket.set_nonblocking(true).expect("nonblocking listener");
                TcpListener::from(socket)
            });
            let stop = Arc::clone(&stop);
            let handler = Arc::clone(&handler);
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            stream.set_nonblocking(false).expect("blocking stream");
                            let local = stream.local_addr().expect("local addr");
                            handler(stream, local, peer);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        Err(e) => panic!("server accept on {addr}: {e}"),
                    }
                }
            }));
        }
        Self { stop, threads }
    }
}

impl Server {
    /// A server that answers each connection with the address it was accepted on, then closes —
    /// the proof that a connection reached the destination its client dialled.
    pub fn echo_local(
        ns: &Netns,
        addrs: &[SocketAddr],
    ) -> (Self, std::sync::mpsc::Receiver<SocketAddr>) {
        let (tx, seen) = std::sync::mpsc::channel();
        let handler = Arc::new(
            move |mut stream: TcpStream, local: SocketAddr, _peer: SocketAddr| {
                use std::io::Write;
                let _ = stream.write_all(local.to_string().as_bytes());
                let _ = tx.send(local);
            },
        );
        (Self::start(ns, addrs, handler), seen)
    }

    /// A server that greets each connection with the address it was accepted on, then echoes
    /// until EOF, a thread per connection (one may stay open while others come and go).
    pub fn greet_and_echo(ns: &Netns, addrs: &[SocketAddr]) -> Self {
        let handler = Arc::new(|mut stream: TcpStream, local: SocketAddr, _: SocketAddr| {
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let _ = stream.write_all(local.to_string().as_bytes());
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        });
        Self::start(ns, addrs, handler)
    }
}

/// Dials `dst` from inside `ns`, half-closes at once and reads to EOF: a `greet_and_echo`
/// server's greeting, or the error kind (refused, reset).
pub fn ask_greeting(ns: &Netns, dst: SocketAddr) -> Result<Vec<u8>, std::io::ErrorKind> {
    ns.run(move || {
        use std::io::Read;
        let mut stream = TcpStream::connect(dst).map_err(|e| e.kind())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.kind())?;
        stream
            .shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.kind())?;
        let mut got = Vec::new();
        stream
            .read_to_end(&mut got)
            .map(|_| got)
            .map_err(|e| e.kind())
    })
}

/// Dials `dst` from inside `ns` and returns what an `echo_local` server answered.
pub fn ask_local(ns: &Netns, dst: SocketAddr) -> String {
    ns.run(move || {
        use std::io::Read;
        let mut stream = TcpStream::connect(dst).unwrap_or_else(|e| panic!("connect {dst}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .unwrap_or_else(|e| panic!("read from {dst}: {e}"));
        answer
    })
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

const BACKLOG: i32 = 8192;
