//! The admin endpoint: a small HTTP/1.1 server on its own thread (loopback by default), off the
//! data path. `tiny_http` does the HTTP: a handful of GET routes on a blocking thread need no async
//! runtime.
//!
//! | path | what |
//! |---|---|
//! | `/metrics` | OpenMetrics text (Prometheus) |
//! | `/stats` | the same numbers as JSON |
//! | `/ready` | 200 once every shard runs and while not draining, else 503 |
//! | `/healthz` | 200 while the process serves |
//! | `/config_dump` | the running config (YAML as loaded) and its generation |

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Response, Server};

use crate::metrics;
use crate::observed::Observed;

/// A running admin server; stopped on drop.
pub struct Admin {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    /// The bound address (the port may have been 0).
    pub addr: SocketAddr,
}

impl Admin {
    /// Binds `addr` and serves until dropped. A bind failure is a start-up error.
    pub fn start(addr: SocketAddr, observed: Arc<Observed>) -> Result<Self, String> {
        let server = Server::http(addr)
            .map_err(|err| format!("admin endpoint: cannot listen on {addr}: {err}"))?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or("admin endpoint: not an IP listener")?;
        let server = Arc::new(server);
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("origdst-admin".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    let response = respond(request.method(), request.url(), &observed);
                    // A client that went away is not our problem.
                    let _ = request.respond(response);
                }
            })
            .map_err(|err| format!("admin endpoint: spawning its thread: {err}"))?;
        Ok(Self {
            server,
            thread: Some(thread),
            addr: bound,
        })
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn text(
    status: u16,
    content_type: &'static str,
    body: String,
) -> Response<std::io::Cursor<Vec<u8>>> {
    let header = Header::from_bytes("Content-Type", content_type).expect("a valid header");
    Response::from_string(body)
        .with_status_code(status)
        .with_header(header)
}

const PLAIN: &str = "text/plain; charset=utf-8";

fn respond(
    method: &Method,
    url: &str,
    observed: &Arc<Observed>,
) -> Response<std::io::Cursor<Vec<u8>>> {
    if *method != Method::Get && *method != Method::Head {
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
            } else if observed.draining.load(std::sync::atomic::Ordering::Relaxed) {
                text(503, PLAIN, "draining\n".into())
            } else {
                text(503, PLAIN, "starting\n".into())
            }
        }
        "/healthz" => text(200, PLAIN, "ok\n".into()),
        "/config_dump" => {
            let running = observed.running();
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
        }
        _ => text(
            404,
            PLAIN,
            "not found; try /metrics /stats /ready /healthz /config_dump\n".into(),
        ),
    }
}
