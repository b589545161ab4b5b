//! What a run does, drawn from its seed: flows (sizes, chunking, faults, routes) and the kernel's
//! faults, and the addresses and bytes every flow uses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use origdst_engine::shard::io::FALLBACK_BUFFERS_MAX;
use origdst_runtime_sim::kernel::{Faults, Rng};

/// What goes wrong in an engine flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EFault {
    /// Nothing.
    None,
    /// The client resets after sending this many bytes.
    ClientReset(u64),
    /// The server resets after reading this many bytes.
    UpstreamReset(u64),
    /// The client reads nothing of a large download until the server resets, which it does once
    /// its writes stall (the client's window, the proxy's pipe and the proxy's own receive window
    /// all full): the proxy, blocked writing to the client and reading nothing from the server,
    /// must still notice the reset at once (its error watch on the upstream socket).
    UpstreamResetStuck,
    /// Nobody listens at the destination.
    Refused,
    /// The destination drops SYNs.
    BlackHole,
    /// No route to the destination: `connect` fails at once (`ENETUNREACH`).
    Unreachable,
    /// Making the upstream socket fails for a reason other than descriptors (`ENOBUFS`): the
    /// connection fails, nothing pauses.
    SocketFails,
    /// The destination drops SYNs and the client gives up (resets) after this many ms, while
    /// the proxy still waits for its connect: the proxy must notice at once (its error watch on
    /// the client), not at the connect timeout.
    ClientGivesUp(u64),
}

/// How a header-mode client's request head arrives (and what the proxy must make of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EHead {
    /// In one write: relayed to the server the header names.
    Whole,
    /// A few bytes per tick: relayed like a whole one.
    Trickle,
    /// Without the header: the restored destination (the address the client dialled) is used.
    Missing,
    /// Longer than `http_head_max_bytes` before its end: refused (`http_head_too_large`).
    TooLarge,
    /// Not HTTP: refused (`http_head_invalid`).
    Malformed,
    /// Half a head, then the client's FIN: refused (`http_head_invalid`).
    EndsEarly,
    /// Nothing at all, the connection left open: refused after `http_head_timeout`.
    Never,
    /// The header twice: refused (`original_dst_host_duplicate`).
    Duplicate,
    /// The header names a loopback destination: refused by the destination policy.
    Denied,
    /// The header names the server as a v4-mapped IPv6 address: canonicalised, then dialled.
    Mapped,
    /// The header names loopback as a v4-mapped IPv6 address: canonicalised, then refused.
    MappedDenied,
}

impl EHead {
    /// The refusal the proxy must log for this head, if it must refuse.
    pub fn refusal(self) -> Option<&'static str> {
        match self {
            Self::Whole | Self::Trickle | Self::Missing | Self::Mapped => None,
            Self::TooLarge => Some("http_head_too_large"),
            Self::Malformed | Self::EndsEarly => Some("http_head_invalid"),
            Self::Never => Some("http_head_timeout"),
            Self::Duplicate => Some("original_dst_host_duplicate"),
            Self::Denied | Self::MappedDenied => Some("destination_denied"),
        }
    }
}

/// The connect attempts the listener a flow arrives on allows (`max_connect_attempts` in the
/// harness's config: the capture listener 2, the internal listener's inner one 3).
pub(super) fn max_attempts(flow: &EFlow) -> u32 {
    match flow.route {
        ERoute::Plain
        | ERoute::Outbound
        | ERoute::Tproxy
        | ERoute::TproxyLoop
        | ERoute::Doomed
        | ERoute::Fresh => 2,
        ERoute::Internal => 3,
        ERoute::Header | ERoute::Inbound | ERoute::Misdeclared | ERoute::Spread => 1,
    }
}

/// The longest request head the harness's proxy waits for (`http_head_max_bytes`), unless a
/// scenario raises it ([`EScenario::head_max`]).
pub(super) const HEAD_MAX: usize = 512;
/// The raised limit: heads of a few KiB, padded, must pass whole.
pub(super) const HEAD_MAX_LARGE: usize = 4096;
/// How long it waits for one (`http_head_timeout`).
pub(super) const HEAD_TIMEOUT_MS: u64 = 1000;

/// How a flow reaches its server through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ERoute {
    /// REDIRECT to the capture listener, ORIGINAL_DST to the restored destination.
    Plain,
    /// Header mode: the client's request head names the server (`x-envoy-original-dst-host`);
    /// it dials a decoy address, the head is peeked and forwarded unchanged.
    Header,
    /// Through an internal listener: the outer listener's cluster is an
    /// `envoy_internal_address` endpoint, the inner listener restores the destination from the
    /// shared filter state and dials it.
    Internal,
    /// Where the platform attaches redirect records (Windows HNS/WFP): an outbound capture on the
    /// OUTBOUND listener, which reads the record and applies it to the upstream socket.
    Outbound,
    /// An inbound capture on the INBOUND listener, to an application on the proxy's host (no
    /// record is read, none is needed).
    Inbound,
    /// An outbound capture on a listener declared INBOUND: the record is never read, the
    /// platform redirects the proxy's upstream connection back to it — a loop the proxy must
    /// recognise and refuse.
    Misdeclared,
    /// TPROXY to a transparent listener: the destination is the accepted socket's own address.
    Tproxy,
    /// TPROXY, on a node whose rules capture the proxy's own connection to the destination
    /// again: the proxy must recognise its own upstream (no mark visible) and refuse it.
    TproxyLoop,
    /// To a listener whose cluster is STATIC with three endpoints (round robin): the upload goes
    /// to whichever the balancer picks (a sink there reads it and closes), and the connections
    /// spread evenly.
    Spread,
    /// Through a listener a control-plane push removes ([`EScenario::push_at_ms`]): relayed as
    /// a plain capture while it stands; after the push, refused by the kernel; open at the
    /// push, drained until `drain_timeout`, then reset.
    Doomed,
    /// Through a listener the push adds: dialled only after the push, relayed as a plain capture.
    Fresh,
}

/// What a control-plane push in the engine family changes, all in one reload: it removes the
/// `doomed` listener (port [`DOOMED_PORT`]), adds the `fresh` one ([`FRESH_PORT`]), and moves
/// the `spread` cluster's endpoints from [`SPREAD_ENDPOINTS`] to [`PUSHED_ENDPOINTS`] (for new
/// connections only).
pub(super) const DOOMED_PORT: u16 = 15008;
/// The listener the push adds.
pub(super) const FRESH_PORT: u16 = 15009;
/// The `spread` cluster's endpoints after the push.
pub(super) const PUSHED_ENDPOINTS: [SocketAddr; 3] = [
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 3, 1)), 9000),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 3, 2)), 9000),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 3, 3)), 9000),
];
/// The engine group of a bound listener of the harness (the runtime makes every bound listener
/// a group).
pub(super) const fn listener_group(port: u16) -> u32 {
    1000 + port as u32
}
/// A connection accepted this soon after the push (virtual ms) may be routed by either config:
/// the shard applies the push on its first wake at or after it.
pub(super) const PUSH_SETTLES_MS: u64 = 5;

/// The STATIC endpoints of the `Spread` listener's cluster.
pub(super) const SPREAD_ENDPOINTS: [SocketAddr; 3] = [
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1)), 9000),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2)), 9000),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 3)), 9000),
];

/// One client connection.
#[derive(Debug, Clone)]
pub struct EFlow {
    /// Index; picks its addresses and its bytes.
    pub id: usize,
    /// How it reaches the server.
    pub route: ERoute,
    /// Client → server bytes.
    pub upload: u64,
    /// Server → client bytes.
    pub download: u64,
    /// Bytes per write.
    pub chunk: usize,
    /// The server answers only after the upload ended (else at once).
    pub client_first: bool,
    /// Its fault.
    pub fault: EFault,
    /// Virtual ms before it dials.
    pub start_ms: u64,
    /// Bytes a slow reader takes per tick (0: all it can).
    pub read_per_tick: usize,
    /// Its request head (header mode; `Whole` otherwise).
    pub head: EHead,
    /// The client stops writing at this byte of its upload for this many ms (nothing else
    /// moves meanwhile: the server answers only after the upload).
    pub pause: Option<(u64, u64)>,
    /// Bytes of an `x-pad` header in its request head (header mode): a large head, or one too
    /// large.
    pub head_pad: usize,
    /// Arrives through this pod's listener (a group added at run time) instead of the capture
    /// listener: relayed the same, dialled from the pod's namespace, counted as the pod's.
    pub pod: Option<usize>,
}

/// A pod: a listener group the supervisor adds while the shard runs, and may remove while its
/// connections are still open (they drain until `drain_timeout`, then are reset).
#[derive(Debug, Clone, Copy)]
pub struct EPod {
    /// When it is added (virtual ms).
    pub add_at_ms: u64,
    /// When it is removed, if it is.
    pub remove_at_ms: Option<u64>,
}

impl EPod {
    /// Its listening address (one socket, serving the capture listener's config).
    pub fn addr(index: usize) -> SocketAddr {
        SocketAddr::new(PROXY_IP, 16000 + index as u16)
    }

    /// Its group's number in the engine.
    pub fn group(index: usize) -> u32 {
        100 + index as u32
    }

    /// The namespace number its connections must be dialled from.
    pub fn netns(index: usize) -> u32 {
        200 + index as u32
    }

    /// Its name (metrics, access log).
    pub fn name(index: usize) -> String {
        format!("ns/pod-{index}")
    }
}

/// The harness's `drain_timeout`.
pub(super) const DRAIN_TIMEOUT_MS: u64 = 2000;

/// The idle timeout of the harness's listeners (`idle_timeout: 5s`).
pub(super) const IDLE_TIMEOUT_MS: u64 = 5000;

/// A run of the engine.
#[derive(Debug, Clone)]
pub struct EScenario {
    /// Its seed.
    pub seed: u64,
    /// The flows.
    pub flows: Vec<EFlow>,
    /// The kernel's faults.
    pub faults: Faults,
    /// The descriptor limit.
    pub fd_limit: usize,
    /// Receive windows.
    pub window: usize,
    /// The data path (the readiness pump; "copy" means no pipes).
    pub pipes: bool,
    /// The platform attaches redirect records and re-redirects connections without one.
    pub records: bool,
    /// The supervisor drains the shard at this virtual ms, flows still running (else once every
    /// flow is done); connections still open after `drain_timeout` (2 s here) are reset.
    pub drain_at_ms: Option<u64>,
    /// `connections_per_shard_max` (churn scenarios): past it, connections are reset at once
    /// and counted (`downstream_cx_overflow`).
    pub conn_limit: Option<u32>,
    /// `http_head_max_bytes`.
    pub head_max: usize,
    /// The access log keeps one completed connection in this many (failures always); 1: all.
    pub sample_every: u32,
    /// Copy buffers the shard may hold at once (production: 256); a few make directions wait
    /// for one to come back.
    pub copy_buffers: u32,
    /// `buffer_size_bytes`: splice-auto copies until a read fills half a buffer, so small
    /// buffers make flows switch between copying and splicing.
    pub buffer_bytes: u32,
    /// `data_path: kernel-sockmap`: the kernel relays socket pairs (some refused, some handed
    /// back, its backlog trailing the FINs the shard sees).
    pub relay: bool,
    /// Pods added (and removed) while flows run.
    pub pods: Vec<EPod>,
    /// The supervisor reloads the config at this virtual ms: the same listeners in the reverse
    /// order (every listener's position changes; each must be found again by name, or flows
    /// are routed by another listener's config).
    pub reload_at_ms: Option<u64>,
    /// A control plane pushes a new config at this virtual ms (translated from its protos by the
    /// xDS client's own translation): a listener removed, one added, a cluster's endpoints
    /// moved, while flows run through all three.
    pub push_at_ms: Option<u64>,
}

impl EScenario {
    /// When the listener `flow` arrived on was removed (its pod's, or the pushed-away one).
    pub fn removed_at_ms(&self, flow: &EFlow) -> Option<u64> {
        match (flow.pod, flow.route) {
            (Some(pod), _) => self.pods[pod].remove_at_ms,
            (None, ERoute::Doomed) => self.push_at_ms,
            _ => None,
        }
    }
}

impl EScenario {
    /// Draws the scenario of `seed`.
    pub fn draw(seed: u64) -> Self {
        let (mut scenario, mut rng) = Self::draw_before_push(seed);
        scenario.draw_push(&mut rng);
        scenario
    }

    /// The scenario `seed` drew before the push family existed (a regression seed found then
    /// replays what it found).
    pub fn draw_before_push(seed: u64) -> (Self, Rng) {
        let mut rng = Rng::new(seed ^ 0x5eed_e761_4e00_0001);
        let count = rng.range(1, 16) as usize;
        let records = rng.chance(200);
        // Churn: many short connections in a few bursts, so slots, pipes and descriptors are
        // handed from a closing connection to the next while the old one's completions are
        // still landing.
        let churn = rng.chance(200);
        // A storm: a burst of connections to dead ports (a scan of the capture port), each
        // refused — the log budget must hold while the counters keep the tally.
        let storm = churn && rng.chance(300);
        let count = if storm {
            rng.range(48, 64) as usize
        } else if churn {
            rng.range(24, 48) as usize
        } else {
            count
        };
        let mut flows = Vec::new();
        for id in 0..count {
            let sizes: &[u64] = if churn {
                &[0, 1, 100, 5000]
            } else {
                &[0, 1, 100, 5000, 70_000, 300_000]
            };
            let upload = pick(&mut rng, sizes);
            let download = pick(&mut rng, sizes);
            let fault = match rng.range(0, 9) {
                0 if upload > 1 => EFault::ClientReset(rng.range(0, upload - 1)),
                1 if upload > 1 => EFault::UpstreamReset(rng.range(0, upload - 1)),
                2 => match rng.range(0, 4) {
                    0 => EFault::Unreachable,
                    1 => EFault::SocketFails,
                    _ => EFault::Refused,
                },
                3 if rng.chance(400) => EFault::ClientGivesUp(rng.range(50, 800)),
                3 => EFault::BlackHole,
                _ => EFault::None,
            };
            let route = match (records, rng.range(0, 5)) {
                (false, 0) => ERoute::Header,
                (false, 1) => ERoute::Internal,
                (false, 2) if rng.chance(500) => ERoute::Spread,
                (false, _) => ERoute::Plain,
                (true, 0) => ERoute::Inbound,
                (true, 1) => ERoute::Misdeclared,
                (true, _) => ERoute::Outbound,
            };
            let mut flow = EFlow {
                id,
                route,
                upload,
                download,
                chunk: pick(&mut rng, &[1, 7, 1448, 16 * 1024, 64 * 1024]) as usize,
                client_first: rng.chance(500),
                fault,
                start_ms: if churn {
                    rng.range(0, 4) * 40 + rng.range(0, 2)
                } else {
                    rng.range(0, 300)
                },
                read_per_tick: if rng.chance(200) {
                    pick(&mut rng, &[100, 4096]) as usize
                } else {
                    0
                },
                head: EHead::Whole,
                pause: None,
                head_pad: 0,
                pod: None,
            };
            if !churn && flow.route == ERoute::Plain && flow.upload > 1 && rng.chance(120) {
                // A pause shorter than the idle timeout (the flow completes, however long it
                // takes) or longer (both sides reset, an idle timeout after the last byte).
                let at = rng.range(0, flow.upload - 1);
                let ms = pick(&mut rng, &[2000, 4900, 5200, 9000]);
                flow.pause = Some((at, ms));
                flow.fault = EFault::None;
                flow.client_first = true;
            }
            if flow.route == ERoute::Header {
                flow.head = match rng.range(0, 12) {
                    0..=2 => EHead::Whole,
                    3..=5 => EHead::Trickle,
                    6 => EHead::Missing,
                    7 => EHead::TooLarge,
                    8 => EHead::Malformed,
                    9 => EHead::EndsEarly,
                    10 => EHead::Never,
                    _ => match rng.range(0, 4) {
                        0 => EHead::Duplicate,
                        1 => EHead::Denied,
                        2 => EHead::Mapped,
                        _ => EHead::MappedDenied,
                    },
                };
                if flow.head.refusal().is_some() {
                    // Refused before any upstream: no server fault to play, and nothing beyond
                    // the head (or nothing at all) to upload.
                    flow.fault = EFault::None;
                    flow.upload = 0;
                }
            }
            // One-byte writes and slow readers cost a step per few bytes: keep those flows short
            // (the sweep's time budget is for many seeds, not for long ones).
            if flow.chunk == 1 || flow.read_per_tick == 100 {
                flow.upload = flow.upload.min(4096);
                flow.download = flow.download.min(4096);
            }
            if let EFault::ClientReset(k) | EFault::UpstreamReset(k) = &mut flow.fault {
                *k = (*k).min(flow.upload.saturating_sub(1));
            }
            if let Some((at, _)) = &mut flow.pause {
                *at = (*at).min(flow.upload.saturating_sub(1));
            }
            if storm && matches!(flow.route, ERoute::Plain | ERoute::Outbound) {
                flow.fault = EFault::Refused;
                flow.pause = None;
            }
            if flow.route == ERoute::Spread {
                // A sink answers nothing and plays no fault.
                flow.download = 0;
                flow.fault = EFault::None;
            }
            if flow.route == ERoute::Misdeclared {
                flow.fault = EFault::None;
            }
            flows.push(flow);
        }
        let mut faults = Faults {
            reorder: rng.chance(500),
            short_io: pick(&mut rng, &[0, 0, 100, 500]) as u16,
            spurious_eagain: pick(&mut rng, &[0, 0, 50, 200]) as u16,
            small_pipe: pick(&mut rng, &[0, 0, 300]) as u16,
            connect_delay_ms: pick(&mut rng, &[0, 2, 20]),
            accept_errors: 0,
            stray_wakes: 0,
            poll_refused: 0,
            relay_refused: 0,
            relay_spill: 0,
            relay_send: 0,
        };
        let mut scenario = Self {
            seed,
            flows,
            faults,
            // Listeners, wake-up, spare, and three per connection at most (two sockets, pipes
            // come and go): a low limit makes the shard pause accepting and park connects.
            // (Not with records: a loop under descriptor exhaustion waits in the backlog until
            // the idle timeout, which is right but not what those scenarios are about.)
            fd_limit: if !records && rng.chance(150) {
                12
            } else {
                10_000
            },
            window: pick(&mut rng, &[4096, 65536, 1 << 20]) as usize,
            pipes: rng.chance(800),
            records,
            drain_at_ms: (!churn && rng.chance(120)).then(|| rng.range(50, 400)),
            conn_limit: (churn && rng.chance(500)).then_some(12),
            head_max: HEAD_MAX,
            sample_every: 1,
            copy_buffers: FALLBACK_BUFFERS_MAX,
            buffer_bytes: 65536,
            relay: false,
            pods: Vec::new(),
            reload_at_ms: None,
            push_at_ms: None,
        };
        // Drawn last, so what the draws above give each seed stays as it was.
        for flow in &mut scenario.flows {
            if flow.route == ERoute::Plain && !churn && rng.chance(250) {
                // (A loop under descriptor exhaustion waits in the backlog until the idle
                // timeout, as with records.)
                flow.route = if rng.chance(250) && scenario.fd_limit >= 100 {
                    flow.fault = EFault::None;
                    flow.pause = None;
                    ERoute::TproxyLoop
                } else {
                    ERoute::Tproxy
                };
                continue;
            }
            if flow.route == ERoute::Plain
                && flow.fault == EFault::None
                && flow.pause.is_none()
                && rng.chance(60)
            {
                flow.fault = EFault::UpstreamResetStuck;
                flow.upload = flow.upload.min(100);
                flow.download = 4 * scenario.window as u64 + (2 << 20);
                flow.client_first = false;
                flow.chunk = 64 * 1024;
                flow.read_per_tick = 0;
            }
        }
        if scenario.fd_limit < 100 {
            // Eight descriptors are the shard's own (seven listeners, the wake-up): 12 leaves
            // room for one connection, 15 or 16 for a connection and its two pipes, so idle
            // pooled pipes can hold the descriptors a paused shard needs back.
            scenario.fd_limit = pick(&mut rng, &[12, 15, 16]) as usize;
        }
        if rng.chance(300) {
            scenario.head_max = HEAD_MAX_LARGE;
        }
        for flow in &mut scenario.flows {
            flow.head_pad = match flow.head {
                EHead::TooLarge => scenario.head_max,
                EHead::Whole | EHead::Trickle if scenario.head_max > HEAD_MAX => {
                    rng.range(1200, 3000) as usize
                }
                _ => 0,
            };
        }
        if rng.chance(200) {
            scenario.sample_every = 2;
        }
        if rng.chance(200) {
            // Copying through a pool of one to four buffers: directions wait for one to come back
            // (and must be woken when it does).
            scenario.copy_buffers = pick(&mut rng, &[1, 2, 4]) as u32;
            scenario.pipes = false;
        }
        faults.accept_errors = pick(&mut rng, &[0, 0, 0, 150]) as u16;
        faults.stray_wakes = pick(&mut rng, &[0, 0, 5]) as u16;
        faults.poll_refused = pick(&mut rng, &[0, 0, 0, 100]) as u16;
        scenario.faults = faults;
        // At most the socket window: a read can fill a buffer only if the window holds one.
        scenario.buffer_bytes =
            pick(&mut rng, &[4096, 4096, 16384, 65536]).min(scenario.window as u64) as u32;
        // Drawn last, so what the draws above give each seed stays as it was.
        if rng.chance(250) {
            scenario.relay = true;
            scenario.faults.relay_refused = pick(&mut rng, &[0, 0, 200]) as u16;
            scenario.faults.relay_spill = pick(&mut rng, &[0, 0, 300]) as u16;
            scenario.faults.relay_send = pick(&mut rng, &[0, 100, 500]) as u16;
            // A half-closed relayed connection that outlives a timer: the server answers at
            // once and half-closes, the client pauses mid-upload (past the idle timeout, or
            // not), so the connection's timer looks at the relay with one direction finished.
            let chosen = scenario.flows.iter_mut().find(|f| {
                f.route == ERoute::Plain && f.upload > 1 && f.fault == EFault::None && f.chunk > 1
            });
            if let Some(flow) = chosen.filter(|_| rng.chance(500)) {
                flow.pause = Some((flow.upload / 2, pick(&mut rng, &[2000, 5200])));
                flow.client_first = false;
                flow.download = flow.download.clamp(1, 100);
                if rng.chance(400) {
                    // ...and the server, having answered, resets while the client is paused:
                    // no byte moves and no poll can fire (the server's FIN came first), only
                    // the relay's look at its sink notices.
                    flow.pause = Some((flow.upload / 2, 2000));
                    flow.fault = EFault::UpstreamReset(flow.upload / 2);
                }
            }
        }
        // Drawn last, so what the draws above give each seed stays as it was.
        if scenario.fd_limit >= 100
            && scenario.conn_limit.is_none()
            && scenario.drain_at_ms.is_none()
            && rng.chance(250)
        {
            let count = rng.range(1, 3) as usize;
            for _ in 0..count {
                let add_at_ms = rng.range(0, 150);
                let remove_at_ms = rng
                    .chance(600)
                    .then(|| add_at_ms + pick(&mut rng, &[20, 80, 200, 400]));
                scenario.pods.push(EPod {
                    add_at_ms,
                    remove_at_ms,
                });
            }
            for flow in &mut scenario.flows {
                if flow.route != ERoute::Plain || !rng.chance(500) {
                    continue;
                }
                let pod = rng.range(0, count as u64 - 1) as usize;
                flow.pod = Some(pod);
                // After its pod was added: before, nothing listens (and nothing captures: in
                // a real pod the rules arrive with the listeners).
                flow.start_ms = scenario.pods[pod].add_at_ms + 1 + rng.range(0, 450);
                if flow.upload > 1 && flow.fault == EFault::None && rng.chance(300) {
                    // Still open when its pod is removed, and silent past the pod's drain (not
                    // past the idle timeout): the drain's deadline must reset it.
                    flow.pause = Some((flow.upload / 2, 3000));
                    flow.client_first = true;
                }
            }
        }
        // Drawn last, so what the draws above give each seed stays as it was.
        if rng.chance(200) {
            scenario.reload_at_ms = Some(rng.range(0, 300));
        }
        (scenario, rng)
    }

    /// A control-plane push, drawn after everything else (so what the draws before give each
    /// seed stays as it was).
    fn draw_push(&mut self, rng: &mut Rng) {
        let scenario = self;
        let records = scenario.records;
        debug_assert!(scenario.push_at_ms.is_none());
        // A control-plane push (not with the reload above: one config change at a time; not
        // with records, whose routes bypass the listeners it changes).
        // Not under descriptor exhaustion either: the supervisor binds the pushed listener, and
        // a bind that fails refuses the whole push (the runtime's rule, not the shard's).
        if scenario.reload_at_ms.is_none()
            && !records
            && scenario.fd_limit >= 100
            && rng.chance(200)
        {
            let at = rng.range(30, 300);
            scenario.push_at_ms = Some(at);
            for flow in &mut scenario.flows {
                if flow.route != ERoute::Plain || flow.pod.is_some() {
                    continue;
                }
                match rng.range(0, 4) {
                    0 => {
                        flow.route = ERoute::Doomed;
                        if flow.start_ms < at
                            && flow.upload > 1
                            && flow.fault == EFault::None
                            && rng.chance(700)
                        {
                            // Open at the push and silent past its listener's drain (not past
                            // the idle timeout): the drain's deadline must reset it.
                            flow.pause = Some((flow.upload / 2, 3000));
                            flow.client_first = true;
                        }
                    }
                    1 => {
                        flow.route = ERoute::Fresh;
                        flow.start_ms = at + PUSH_SETTLES_MS + rng.range(0, 300);
                    }
                    2 => {
                        // To the moved cluster, on either side of the push (an upload to a
                        // sink: as the other STATIC-endpoint flows).
                        flow.route = ERoute::Spread;
                        flow.download = 0;
                        flow.fault = EFault::None;
                        flow.pause = None;
                    }
                    _ => {}
                }
            }
        }
    }
}

fn pick(rng: &mut Rng, from: &[u64]) -> u64 {
    from[(rng.next_u64() % from.len() as u64) as usize]
}

/// The byte at `offset` of flow `flow`'s stream in direction `dir` (0 up, 1 down): every flow's
/// bytes differ, so one delivered on another connection cannot pass.
pub fn byte(flow: usize, dir: u8, offset: u64) -> u8 {
    let x = (flow as u64) << 48 ^ u64::from(dir) << 40 ^ (offset / 8);
    let mut rng = Rng::new(x);
    rng.next_u64().to_le_bytes()[(offset % 8) as usize]
}

/// The request head a header-mode client sends before its upload (and the server receives,
/// unchanged, when the proxy relays it).
pub fn head(flow: &EFlow) -> Vec<u8> {
    let id = flow.id;
    let server = server_addr(id);
    let text = match flow.head {
        EHead::Whole | EHead::Trickle if flow.head_pad > 0 => format!(
            "POST /upload HTTP/1.1\r\nHost: svc\r\nx-pad: {}\r\nx-envoy-original-dst-host: {server}\r\n\r\n",
            "p".repeat(flow.head_pad)
        ),
        EHead::Whole | EHead::Trickle => format!(
            "POST /upload HTTP/1.1\r\nHost: svc\r\nx-envoy-original-dst-host: {server}\r\n\r\n"
        ),
        EHead::Missing => "POST /upload HTTP/1.1\r\nHost: svc\r\n\r\n".to_owned(),
        EHead::TooLarge => format!(
            "POST /upload HTTP/1.1\r\nHost: svc\r\nx-pad: {}\r\nx-envoy-original-dst-host: {server}\r\n\r\n",
            "a".repeat(flow.head_pad)
        ),
        EHead::Malformed => "POST /upload HTTP/1.1\r\nthis line has no colon\r\n\r\n".to_owned(),
        EHead::EndsEarly => "POST /upload HTTP/1.1\r\nHost: sv".to_owned(),
        EHead::Never => String::new(),
        EHead::Duplicate => format!(
            "POST /upload HTTP/1.1\r\nx-envoy-original-dst-host: {server}\r\nx-envoy-original-dst-host: {}\r\n\r\n",
            server_addr(id + 100)
        ),
        EHead::Denied => format!(
            "POST /upload HTTP/1.1\r\nx-envoy-original-dst-host: 127.0.0.1:{}\r\n\r\n",
            server.port()
        ),
        EHead::Mapped => format!(
            "POST /upload HTTP/1.1\r\nx-envoy-original-dst-host: [::ffff:{}]:{}\r\n\r\n",
            server.ip(),
            server.port()
        ),
        EHead::MappedDenied => format!(
            "POST /upload HTTP/1.1\r\nx-envoy-original-dst-host: [::ffff:127.0.0.1]:{}\r\n\r\n",
            server.port()
        ),
    };
    text.into_bytes()
}

/// The byte at `offset` of `flow`'s stream in direction `dir`, where the upload (0) starts with
/// `prefix` (the request head, in header mode).
pub(super) fn stream_byte(prefix: &[u8], flow: usize, dir: u8, offset: u64) -> u8 {
    match prefix.get(offset as usize) {
        Some(&b) if dir == 0 => b,
        _ if dir == 0 => byte(flow, 0, offset - prefix.len() as u64),
        _ => byte(flow, dir, offset),
    }
}

pub(super) fn client_addr(id: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 30000 + id as u16)
}

pub(super) fn server_addr(id: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)), 8000 + id as u16)
}

/// An application on the proxy's own host (inbound captures go there).
pub(super) fn app_addr(id: usize) -> SocketAddr {
    SocketAddr::new(PROXY_IP, 7000 + id as u16)
}

/// Where `flow`'s server listens.
pub(super) fn dest(flow: &EFlow) -> SocketAddr {
    match flow.route {
        ERoute::Inbound => app_addr(flow.id),
        // No header: the address the client dialled, restored by the kernel.
        ERoute::Header if flow.head == EHead::Missing => decoy_addr(flow.id),
        // Whichever endpoint the balancer picks; the oracle judges these flows apart.
        ERoute::Spread => SPREAD_ENDPOINTS[0],
        _ => server_addr(flow.id),
    }
}

/// What a header-mode client dials: the head, not this, decides where it goes.
pub(super) fn decoy_addr(id: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 9, 9)), 9000 + id as u16)
}

pub(super) const PROXY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
/// The listener index (in the network's order) of the `doomed` listener: bound right after
/// [`PORTS`] in push scenarios.
pub(super) const DOOMED_LISTENER: usize = PORTS.len();
/// The bound listeners, in config order: capture, header, outer, inbound, misdeclared, spread,
/// tproxy.
pub(super) const PORTS: [u16; 7] = [15001, 15002, 15003, 15004, 15005, 15006, 15007];
/// The transparent listener's index in [`PORTS`].
pub(super) const TPROXY_LISTENER: usize = 6;
