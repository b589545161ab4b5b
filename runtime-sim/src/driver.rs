//! The proxy host: turmoil listeners feeding the unchanged core, one task per connection that
//! executes core's actions and reports what happened — the simulator's counterpart of a shard.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use origdst_core::config::Config;
use origdst_core::config::ConnParams;
use origdst_core::connection::{Action, Connection, History};
use origdst_core::orig_dst::SelfAddrs;
use origdst_core::outcome::IoErrorKind;
use origdst_core::relay::{Dir, Side};
use origdst_core::route::{self, Balancer};
use origdst_core::stats::Counters;
use origdst_core::time::Instant;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use turmoil::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use turmoil::net::{TcpListener, TcpStream};

use crate::io as sim_io;
use crate::net::{ListenerKind, ProxyPorts, SimNet};

/// What the simulated proxy runs with.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Its listener ports.
    pub ports: ProxyPorts,
    /// The unspecified address of the sim's family (turmoil binds only that).
    pub bind_ip: std::net::IpAddr,
    /// Per-connection knobs, as a listener's tcp_proxy and cluster would give them.
    pub params: ConnParams,
    /// What the proxy knows about itself (loop rules).
    pub me: SelfAddrs,
    /// An Envoy config whose first listener is the capture port: connections there are routed
    /// through it (hand-off, chains, clusters). `None`: straight to the restored destination.
    pub routing: Option<Rc<Config>>,
}

/// One accepted connection as the proxy saw it.
#[derive(Debug, Clone)]
pub struct ProxyRecord {
    /// The accepted peer.
    pub peer: SocketAddr,
    /// Virtual time of the accept (sim time).
    pub accepted_at: std::time::Duration,
    /// Core's milestones (outcome included once closed).
    pub history: History,
    /// Bytes relayed per direction (index: `Dir::index`).
    pub bytes: [u64; 2],
    /// Where core decided to connect, if it did.
    pub upstream: Option<SocketAddr>,
    /// Virtual time of the close (sim time).
    pub closed_at: Option<std::time::Duration>,
}

#[derive(Debug, Default)]
struct LedgerState {
    records: Vec<ProxyRecord>,
    stats: Counters,
    trace_hash: u64,
    trace: Vec<String>,
    keep_trace: bool,
    max_buffered_bytes: usize,
    accepting: bool,
}

/// What the proxy did, shared with the test's oracle.
#[derive(Debug, Clone, Default)]
pub struct ProxyLedger(Rc<RefCell<LedgerState>>);

impl ProxyLedger {
    /// A ledger; with `keep_trace`, every event is also kept as text (for replay debugging).
    pub fn new(keep_trace: bool) -> Self {
        let ledger = Self::default();
        ledger.0.borrow_mut().keep_trace = keep_trace;
        ledger.0.borrow_mut().trace_hash = FNV_OFFSET;
        ledger
    }

    /// Every accepted connection so far.
    pub fn records(&self) -> Vec<ProxyRecord> {
        self.0.borrow().records.clone()
    }

    /// The proxy's counters.
    pub fn stats(&self) -> Counters {
        self.0.borrow().stats.clone()
    }

    /// A hash of every event and action with its virtual time: equal for equal runs.
    pub fn trace_hash(&self) -> u64 {
        self.0.borrow().trace_hash
    }

    /// The event trace as text (empty unless kept).
    pub fn trace(&self) -> Vec<String> {
        self.0.borrow().trace.clone()
    }

    /// The most bytes one direction ever held read-but-not-written.
    pub fn max_buffered_bytes(&self) -> usize {
        self.0.borrow().max_buffered_bytes
    }

    /// Whether the proxy still accepts (false once draining).
    pub fn accepting(&self) -> bool {
        self.0.borrow().accepting
    }

    fn note(&self, origin: tokio::time::Instant, conn: usize, what: &str) {
        let mut state = self.0.borrow_mut();
        let line = format!("{:>12} #{conn} {what}", origin.elapsed().as_nanos());
        let mut hash = state.trace_hash;
        for byte in line.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        }
        state.trace_hash = hash;
        if state.keep_trace {
            state.trace.push(line);
        }
    }
}

/// Drain control: `drain()` stops the listeners; open connections continue (their own timers and
/// the test's liveness phase end them).
#[derive(Debug, Clone, Default)]
pub struct DrainSwitch(Rc<Notify>);

impl DrainSwitch {
    /// Stop accepting. `notify_one` keeps the request even if the proxy is not waiting yet.
    pub fn drain(&self) {
        self.0.notify_one();
    }
}

/// The proxy host's software. Runs until the host is crashed or the sim ends.
pub async fn run(
    net: SimNet,
    config: ProxyConfig,
    ledger: ProxyLedger,
    drain: DrainSwitch,
) -> turmoil::Result {
    let origin = tokio::time::Instant::now();
    ledger.0.borrow_mut().accepting = true;
    let kinds = [
        (config.ports.capture, ListenerKind::Redirect),
        (config.ports.transparent, ListenerKind::Transparent),
        (config.ports.internal, ListenerKind::Internal),
    ];
    let config = Rc::new(config);
    let balancer = Rc::new(RefCell::new(Balancer::default()));
    let mut accept_loops = Vec::new();
    for (port, kind) in kinds {
        let listener = TcpListener::bind(SocketAddr::new(config.bind_ip, port)).await?;
        let ctx = Ctx {
            net: net.clone(),
            config: Rc::clone(&config),
            ledger: ledger.clone(),
            origin,
            balancer: Rc::clone(&balancer),
        };
        accept_loops.push(tokio::task::spawn_local(accept_loop(listener, kind, ctx)));
    }
    drain.0.notified().await;
    ledger.0.borrow_mut().accepting = false;
    for accept in accept_loops {
        accept.abort();
    }
    // Keep the host alive so open connections can finish.
    std::future::pending::<()>().await;
    Ok(())
}

#[derive(Clone)]
struct Ctx {
    net: SimNet,
    config: Rc<ProxyConfig>,
    ledger: ProxyLedger,
    origin: tokio::time::Instant,
    balancer: Rc<RefCell<Balancer>>,
}

impl Ctx {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn deadline(&self, at: Instant) -> tokio::time::Instant {
        self.origin + std::time::Duration::from_nanos(at.as_nanos())
    }
}

async fn accept_loop(listener: TcpListener, kind: ListenerKind, ctx: Ctx) {
    // turmoil's accept fails only when the host is going away.
    while let Ok((stream, peer)) = listener.accept().await {
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        tokio::task::spawn_local(connection(ctx.clone(), kind, stream, local, peer));
    }
}

/// What the I/O tasks of one connection report.
enum Event {
    Connected(TcpStream),
    ConnectFailed(IoErrorKind),
    Transferred(Dir, u64),
    Eof(Dir, OwnedWriteHalf),
    Failed(Side, IoErrorKind),
}

/// A socket's halves while nobody is using them, and its addresses (for the reset model).
struct Socket {
    read: Option<OwnedReadHalf>,
    write: Option<OwnedWriteHalf>,
    local: SocketAddr,
    peer: SocketAddr,
}

impl Socket {
    fn new(stream: TcpStream) -> io::Result<Self> {
        let local = stream.local_addr()?;
        let peer = stream.peer_addr()?;
        let (read, write) = stream.into_split();
        Ok(Self {
            read: Some(read),
            write: Some(write),
            local,
            peer,
        })
    }
}

async fn connection(
    ctx: Ctx,
    kind: ListenerKind,
    stream: TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
) {
    let id = {
        let mut state = ctx.ledger.0.borrow_mut();
        let accepted_at = turmoil::sim_elapsed().unwrap_or_default();
        state.records.push(ProxyRecord {
            peer,
            accepted_at,
            history: History::default(),
            bytes: [0; 2],
            upstream: None,
            closed_at: None,
        });
        state.records.len() - 1
    };
    let evidence = ctx.net.accept_evidence(kind, local, peer).await;
    let mut core = {
        let stats = &mut ctx.ledger.0.borrow_mut().stats;
        match (&ctx.config.routing, kind) {
            (Some(config), ListenerKind::Redirect) => {
                let route = route::route(
                    config,
                    &ctx.config.me,
                    0,
                    &evidence,
                    &mut ctx.balancer.borrow_mut(),
                    stats,
                );
                Connection::start(ctx.now(), &evidence, route, stats)
            }
            _ => Connection::accept(
                ctx.now(),
                &evidence,
                &ctx.config.me,
                &ctx.config.params,
                stats,
            ),
        }
    };
    ctx.ledger.note(
        ctx.origin,
        id,
        &format!("accept {kind:?} from {peer}: {}", core.history()),
    );
    let Ok(client) = Socket::new(stream) else {
        return;
    };
    let mut sides: [Option<Socket>; 2] = [Some(client), None];
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    loop {
        while let Some(action) = core.poll_action() {
            ctx.ledger
                .note(ctx.origin, id, &format!("action {action:?}"));
            match action {
                Action::Connect {
                    upstream,
                    mark,
                    record,
                    ..
                } => {
                    ctx.ledger.0.borrow_mut().records[id].upstream = Some(upstream.get());
                    let (net, tx) = (ctx.net.clone(), tx.clone());
                    tasks.push(tokio::task::spawn_local(async move {
                        let event = match net
                            .proxy_connect(upstream.get(), mark, record.as_ref())
                            .await
                        {
                            Ok(stream) => Event::Connected(stream),
                            Err(err) => Event::ConnectFailed(error_kind(&err)),
                        };
                        let _ = tx.send(event);
                    }));
                }
                Action::Transfer { dir } => {
                    let read = side(&mut sides, dir.source())
                        .read
                        .take()
                        .expect("source read half");
                    let write = side(&mut sides, dir.sink())
                        .write
                        .take()
                        .expect("sink write half");
                    tasks.push(tokio::task::spawn_local(pump(
                        ctx.clone(),
                        dir,
                        read,
                        write,
                        tx.clone(),
                    )));
                }
                Action::ShutdownWrite { side: which } => {
                    let socket = side(&mut sides, which);
                    let mut write = socket
                        .write
                        .take()
                        .expect("a finished direction parks its sink");
                    if let Err(err) = sim_io::shutdown(&ctx.net, &mut write).await {
                        let stats = &mut ctx.ledger.0.borrow_mut().stats;
                        core.handle_error(ctx.now(), which, error_kind(&err), stats);
                    }
                    socket.write = Some(write);
                }
                Action::Reset { side: which } => {
                    if let Some(socket) = sides[side_index(which)].as_ref() {
                        ctx.net.record_abort(socket.local, socket.peer);
                    }
                }
                Action::Close => {
                    for task in tasks.drain(..) {
                        task.abort();
                    }
                    drop(sides);
                    let mut state = ctx.ledger.0.borrow_mut();
                    let record = &mut state.records[id];
                    record.history = core.history();
                    record.bytes = [
                        core.bytes(Dir::ClientToUpstream),
                        core.bytes(Dir::UpstreamToClient),
                    ];
                    record.closed_at = Some(turmoil::sim_elapsed().unwrap_or_default());
                    drop(state);
                    ctx.ledger
                        .note(ctx.origin, id, &format!("closed: {}", core.history()));
                    return;
                }
                // This driver's scenarios route without internal listeners or header mode
                // (internal hand-offs arrive as injected metadata); the engine simulation is
                // where they run. Named, not a wildcard: a new action is a compile error here.
                Action::ConnectInternal { .. } | Action::PeekHead { .. } => {
                    unreachable!(
                        "the core-only simulator has no internal listener or header mode: {action:?}"
                    )
                }
            }
        }
        let event = match core.next_timeout() {
            Some(at) => tokio::time::timeout_at(ctx.deadline(at), rx.recv())
                .await
                .ok(),
            None => Some(rx.recv().await),
        };
        let now = ctx.now();
        let Some(event) = event else {
            ctx.ledger.note(ctx.origin, id, "timeout");
            core.handle_timeout(now, &mut ctx.ledger.0.borrow_mut().stats);
            continue;
        };
        // The connection task holds a sender until it returns, so the channel never closes early.
        let event = event.expect("a sender is alive");
        let stats = &mut ctx.ledger.0.borrow_mut().stats;
        match event {
            Event::Connected(stream) => match Socket::new(stream) {
                Ok(socket) => {
                    sides[side_index(Side::Upstream)] = Some(socket);
                    core.handle_connected(now);
                }
                Err(err) => core.handle_connect_failed(now, error_kind(&err), stats),
            },
            Event::ConnectFailed(kind) => core.handle_connect_failed(now, kind, stats),
            Event::Transferred(dir, n) => core.handle_transferred(now, dir, n, stats),
            Event::Eof(dir, write) => {
                side(&mut sides, dir.sink()).write = Some(write);
                core.handle_eof(now, dir, stats);
            }
            Event::Failed(which, kind) => core.handle_error(now, which, kind, stats),
        }
    }
}

/// One direction: read a chunk from the source, write it all to the sink, report, repeat. At most
/// one chunk is held: backpressure from a slow sink stops reading.
async fn pump(
    ctx: Ctx,
    dir: Dir,
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
    tx: mpsc::UnboundedSender<Event>,
) {
    let mut buf = vec![0u8; PUMP_CHUNK_BYTES];
    loop {
        let n = match sim_io::read(&ctx.net, &mut read, &mut buf).await {
            Ok(0) => {
                let _ = tx.send(Event::Eof(dir, write));
                return;
            }
            Ok(n) => n,
            Err(err) => {
                let _ = tx.send(Event::Failed(dir.source(), error_kind(&err)));
                return;
            }
        };
        {
            let mut state = ctx.ledger.0.borrow_mut();
            state.max_buffered_bytes = state.max_buffered_bytes.max(n);
        }
        if let Err(err) = sim_io::write_all(&ctx.net, &mut write, &buf[..n]).await {
            let _ = tx.send(Event::Failed(dir.sink(), error_kind(&err)));
            return;
        }
        let _ = tx.send(Event::Transferred(dir, n as u64));
    }
}

fn side(sides: &mut [Option<Socket>; 2], which: Side) -> &mut Socket {
    sides[side_index(which)]
        .as_mut()
        .expect("socket exists while relaying")
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Upstream => 1,
    }
}

/// Maps a (simulated) I/O error as the real runtime maps errno.
pub fn error_kind(err: &io::Error) -> IoErrorKind {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => IoErrorKind::Refused,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => IoErrorKind::Reset,
        io::ErrorKind::TimedOut => IoErrorKind::TimedOut,
        io::ErrorKind::BrokenPipe => IoErrorKind::BrokenPipe,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            IoErrorKind::Unreachable
        }
        _ => IoErrorKind::Other { errno: 0 },
    }
}

/// The pump's single buffer: what one direction may hold read-but-not-written.
pub const PUMP_CHUNK_BYTES: usize = 16 * 1024;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
