//! The admin endpoint: a small HTTP/1.1 server off the data path (loopback by default).
//!
//! | path | what |
//! |---|---|
//! | `/metrics` | OpenMetrics text (Prometheus) |
//! | `/stats` | the same numbers as JSON |
//! | `/ready` | 200 once every shard runs (and, with a control plane, its first listeners were taken or `initial_fetch_timeout` passed) and while not draining, else 503 |
//! | `/healthz` | 200 while the process serves |
//! | `/config_dump` | the running config in Envoy's `ConfigDump` JSON shape (`?format=yaml`: the file as loaded, with its generation) |
//!
//! Bounded in everything, because anyone who can reach it can open connections: one thread runs
//! a `poll(2)` loop over the listener and at most [`CONNECTIONS_MAX`] open connections (more are
//! close the oldest waiting one, counted), one request per connection, a head of at most [`HEAD_BYTES_MAX`]
//! that must arrive within [`IO_TIMEOUT`]. A hundred idle admin clients therefore cost at most
//! that many descriptors and no thread, and a scraper is still answered meanwhile. (tiny_http,
//! used before, started a thread per connection without limit.) Request parsing is httparse's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::metrics;
use crate::observed::Observed;

/// Admin connections open at once; a new one beyond it closes the oldest waiting one (counted).
pub const CONNECTIONS_MAX: usize = 32;
/// The longest request head read.
const HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long a client may take to send its request (and to take the answer).
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections the admin endpoint closed unanswered because [`CONNECTIONS_MAX`] were open.
/// Exported as `origdst_admin_connections_evicted_total`.
pub static EVICTED: AtomicU64 = AtomicU64::new(0);

/// A running admin server; stopped on drop.
pub struct Admin {
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The bound address (the port may have been 0).
    pub addr: SocketAddr,
}

impl Admin {
    /// Binds `addr` and serves until dropped. A bind failure is a start-up error.
    pub fn start(addr: SocketAddr, observed: Arc<Observed>) -> Result<Self, String> {
        let listener = TcpListener::bind(addr)
            .map_err(|err| format!("admin endpoint: cannot listen on {addr}: {err}"))?;
        let bound = listener
            .local_addr()
            .map_err(|err| format!("admin endpoint: {err}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|err| format!("admin endpoint: {err}"))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let thread = std::thread::Builder::new()
            .name("origdst-admin".into())
            .spawn(move || serve_loop(&listener, &stop, &observed))
            .map_err(|err| format!("admin endpoint: spawning its thread: {err}"))?;
        Ok(Self {
            stopping,
            thread: Some(thread),
            addr: bound,
        })
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A connection waiting for its request head.
struct Pending {
    stream: TcpStream,
    head: Vec<u8>,
    deadline: Instant,
}

/// How often the loop looks at the stop flag and the deadlines.
const TICK: Duration = Duration::from_millis(100);

fn serve_loop(listener: &TcpListener, stopping: &AtomicBool, observed: &Arc<Observed>) {
    let mut pending: Vec<Pending> = Vec::with_capacity(CONNECTIONS_MAX);
    while !stopping.load(Ordering::Acquire) {
        let ready: Vec<bool> = {
            let mut fds = Vec::with_capacity(pending.len() + 1);
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            fds.extend(
                pending
                    .iter()
                    .map(|p| PollFd::new(p.stream.as_fd(), PollFlags::POLLIN)),
            );
            let tick = PollTimeout::try_from(TICK).unwrap_or(PollTimeout::NONE);
            if poll(&mut fds, tick).is_err() {
                continue;
            }
            fds.iter()
                .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let now = Instant::now();
        let keep: Vec<bool> = pending
            .iter_mut()
            .enumerate()
            .map(|(index, conn)| {
                let readable = ready[index + 1];
                // A head that trickles in still has to be complete by its deadline.
                let waiting = !readable || read_and_answer(conn, observed);
                waiting && now < conn.deadline
            })
            .collect();
        let mut keep = keep.into_iter();
        pending.retain(|_| keep.next().unwrap_or(false));
        // Accepted after the readiness was used, so indexes above stay aligned.
        if ready[0] {
            accept_all(listener, &mut pending);
        }
    }
}

fn accept_all(listener: &TcpListener, pending: &mut Vec<Pending>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if pending.len() >= CONNECTIONS_MAX {
                    // Full: the oldest waiting connection makes room (closed unanswered), so idle
                    // clients cannot lock a scraper out; they only lose their own connections.
                    EVICTED.fetch_add(1, Ordering::Relaxed);
                    pending.remove(0);
                }
                let _ = stream.set_nonblocking(true);
                pending.push(Pending {
                    stream,
                    head: Vec::new(),
                    deadline: Instant::now() + IO_TIMEOUT,
                });
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            // EMFILE and friends: the listener stays readable; the next tick tries again.
            Err(_) => return,
        }
    }
}

/// Reads what arrived; answers once the head is complete. Whether to keep waiting.
fn read_and_answer(conn: &mut Pending, observed: &Arc<Observed>) -> bool {
    let mut buf = [0u8; 4096];
    match conn.stream.read(&mut buf) {
        Ok(0) => return false,
        Ok(n) => conn.head.extend_from_slice(&buf[..n]),
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return true,
        Err(_) => return false,
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let (answer, head_only) = match request.parse(&conn.head) {
        Ok(httparse::Status::Complete(_)) => {
            let method = request.method.unwrap_or("");
            let path = request.path.unwrap_or("");
            (respond(method, path, observed), method == "HEAD")
        }
        Ok(httparse::Status::Partial) if conn.head.len() < HEAD_BYTES_MAX => return true,
        Ok(httparse::Status::Partial) | Err(_) => (text(400, PLAIN, "bad request\n".into()), false),
    };
    // The answer is written blocking, bounded by the write timeout.
    let _ = conn.stream.set_nonblocking(false);
    let _ = conn.stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = write_response(&mut conn.stream, &answer, head_only);
    false
}

/// An answer: status, content type, body.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
}

fn write_response(stream: &mut TcpStream, answer: &Answer, head_only: bool) -> std::io::Result<()> {
    let reason = match answer.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(answer.body.as_bytes());
    }
    stream.write_all(&out)?;
    stream.flush()
}

fn text(status: u16, content_type: &'static str, body: String) -> Answer {
    Answer {
        status,
        content_type,
        body,
    }
}

const PLAIN: &str = "text/plain; charset=utf-8";

fn respond(method: &str, url: &str, observed: &Arc<Observed>) -> Answer {
    if method != "GET" && method != "HEAD" {
        return text(405, PLAIN, "only GET\n".into());
    }
    let path = url.split('?').next().unwrap_or(url);
    match path {
        "/metrics" => text(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics::render_prometheus(observed),
        ),
        "/stats" => text(200, "application/json", metrics::render_json(observed)),
        "/ready" => {
            if observed.ready() {
                text(200, PLAIN, "ready\n".into())
            } else if observed.draining.load(Ordering::Relaxed) {
                text(503, PLAIN, "draining\n".into())
            } else if !observed.xds_initialized() {
                text(
                    503,
                    PLAIN,
                    "initializing: waiting for the control plane's first listeners and endpoints\n"
                        .into(),
                )
            } else {
                text(503, PLAIN, "starting\n".into())
            }
        }
        "/healthz" => text(200, PLAIN, "ok\n".into()),
        "/config_dump" => {
            let running = observed.running();
            if url
                .split_once('?')
                .is_some_and(|(_, query)| query == "format=yaml")
            {
                let source = running
                    .path
                    .as_ref()
                    .map_or("the embedded default".to_string(), |p| {
                        p.display().to_string()
                    });
                text(
                    200,
                    "application/yaml; charset=utf-8",
                    format!(
                        "# origdst running config: generation {}, from {source}\n{}",
                        running.generation, running.yaml
                    ),
                )
            } else {
                text(
                    200,
                    "application/json",
                    crate::config_dump::envoy_json(&running, observed.xds.as_deref()),
                )
            }
        }
        _ => text(
            404,
            PLAIN,
            "not found; try /metrics /stats /ready /healthz /config_dump\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn idle_clients_are_bounded_and_do_not_stop_answers() {
        let admin = Admin::start(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Observed::for_tests()),
        )
        .unwrap();
        let idle: Vec<TcpStream> = (0..100)
            .map(|_| TcpStream::connect(admin.addr).unwrap())
            .collect();
        let start = Instant::now();
        while EVICTED.load(Ordering::Relaxed) < (100 - CONNECTIONS_MAX) as u64 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "extra connections not refused"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Once the idle ones time out, a request is answered (no thread is held by them).
        let answer = get(admin.addr, "/healthz");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
        assert!(start.elapsed() < IO_TIMEOUT + Duration::from_secs(2));
        drop(idle);
        let answer = get(admin.addr, "/nowhere");
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        let mut stream = TcpStream::connect(admin.addr).unwrap();
        write!(stream, "\x16\x03\x01 not http\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
    }
}
