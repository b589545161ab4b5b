//! Scenarios: everything a run does, drawn from one `u64` seed per family.

use std::fmt;

use crate::rng::Rng;

/// A family of scenarios: what kind of trouble the seed draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// Healthy relays: 0 B to MBs, odd chunking, many flows.
    Happy,
    /// Client-first, upstream-first and concurrent half-closes with data still flowing.
    HalfClose,
    /// Resets on each side, in each phase.
    Resets,
    /// Connect refused, connect held past the timeout.
    ConnectFailures,
    /// Black-holed upstreams that only the idle timeout resolves.
    BlackHole,
    /// Slow readers and small windows.
    Backpressure,
    /// REDIRECT/TPROXY semantics: missing rule, stale conntrack, destination = self, forgotten mark.
    Redirect,
    /// Windows-style redirect records.
    Records,
    /// Internal-listener metadata and filter state.
    Internal,
    /// Drain under load, proxy and upstream crash/restart.
    Lifecycle,
    /// Everything, fault classes switched on and off per seed.
    Swarm,
    /// Istio's virtual listener: `use_original_dst` hand-off to `bind_to_port: false` listeners
    /// (a STATIC service cluster, a black hole), passthrough for the rest.
    Handoff,
    /// The idle timer: clients that pause between writes for less than the idle timeout (the
    /// traffic postpones it: the flow completes however long it lasts) or for more (both sides
    /// are reset, an idle timeout after the last byte moved, not before).
    Timers,
}

impl Family {
    /// Every family.
    pub const ALL: [Self; 13] = [
        Self::Happy,
        Self::HalfClose,
        Self::Resets,
        Self::ConnectFailures,
        Self::BlackHole,
        Self::Backpressure,
        Self::Redirect,
        Self::Records,
        Self::Internal,
        Self::Lifecycle,
        Self::Swarm,
        Self::Handoff,
        Self::Timers,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Happy => "happy",
            Self::HalfClose => "half-close",
            Self::Resets => "resets",
            Self::ConnectFailures => "connect-failures",
            Self::BlackHole => "black-hole",
            Self::Backpressure => "backpressure",
            Self::Redirect => "redirect",
            Self::Records => "records",
            Self::Internal => "internal",
            Self::Lifecycle => "lifecycle",
            Self::Swarm => "swarm",
            Self::Handoff => "handoff",
            Self::Timers => "timers",
        }
    }

    /// Parses `name()`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == text)
    }
}

/// How a flow reaches the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKind {
    /// NAT REDIRECT.
    Redirect,
    /// REDIRECT with a redirect record.
    Record,
    /// REDIRECT whose redirect-record query fails: refused.
    RecordQueryFails,
    /// TPROXY.
    Tproxy,
    /// Internal listener with this metadata variant.
    Internal(MetaVariant),
    /// Dialled the proxy port directly; `unrestored`: conntrack answers the proxy's own address.
    Direct {
        /// Which kernel answer.
        unrestored: bool,
    },
    /// REDIRECT whose conntrack entry is gone.
    Stale,
    /// REDIRECT to a destination that is one of the proxy's own listeners.
    ToListener,
    /// REDIRECT to a "service address" whose `bind_to_port: false` listener has a STATIC cluster
    /// pointing at the flow's real upstream (the client dials the other upstream's address).
    HandoffStatic,
    /// REDIRECT to an address whose listener goes to a black hole: refused.
    HandoffBlackhole,
}

/// Internal-listener metadata shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaVariant {
    /// Dynamic metadata `local` only.
    Dynamic,
    /// Filter state `local_ip` only.
    FilterState,
    /// Both, pointing at different upstreams: dynamic metadata must win.
    Both,
    /// Neither: refused (`no_metadata`).
    Missing,
    /// Not an ip:port: refused.
    Malformed,
}

/// The order in which the two sides send and half-close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Both send at once.
    Concurrent,
    /// The client sends everything and half-closes; then the upstream answers.
    ClientFirst,
    /// The upstream sends everything and half-closes; then the client uploads.
    UpstreamFirst,
}

/// What goes wrong in a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing.
    None,
    /// No listener at the destination.
    Refused,
    /// The SYN to the destination is held past the connect timeout.
    ConnectHold,
    /// The upstream reads this many bytes of the upload, then resets.
    UpstreamReset(u64),
    /// The client sends this many bytes, then resets.
    ClientReset(u64),
    /// The path to the upstream black-holes once connected.
    BlackHole,
    /// The client pauses longer than the idle timeout between two writes (`Flow::pace_ms`).
    IdlePause,
}

/// Where a flow's upstream lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Healthy server A.
    A,
    /// Healthy server B (a wrong destination cannot pass unnoticed).
    B,
    /// The black-holed server.
    Hole,
    /// The server behind a held link.
    Slow,
}

/// One client connection and what happens to it.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Index in the scenario; also picks the destination port.
    pub id: usize,
    /// How it reaches the proxy.
    pub route: RouteKind,
    /// Which server it dials.
    pub upstream: Upstream,
    /// Bytes the client sends.
    pub upload: u64,
    /// Bytes the upstream sends.
    pub download: u64,
    /// Write size (odd sizes exercise chunking).
    pub chunk: usize,
    /// Who sends first.
    pub order: Order,
    /// The fault.
    pub fault: Fault,
    /// Virtual ms after start before the client dials.
    pub start_ms: u64,
    /// Pause (ms) between the reads of a slow reader on the client side.
    pub slow_client_ms: u64,
    /// Pause (ms) between the reads of a slow reader on the upstream side.
    pub slow_upstream_ms: u64,
    /// Pause (ms) the client makes after each upload write (the idle-timer family).
    pub pace_ms: u64,
}

impl Flow {
    /// The destination port on its upstream.
    pub fn port(&self) -> u16 {
        UPSTREAM_PORT_BASE + self.id as u16
    }

    /// Whether the proxy is expected to relay (not refuse) it.
    pub fn routed(&self) -> bool {
        match &self.route {
            RouteKind::Redirect
            | RouteKind::Record
            | RouteKind::Tproxy
            | RouteKind::HandoffStatic => true,
            RouteKind::Internal(variant) => matches!(
                variant,
                MetaVariant::Dynamic | MetaVariant::FilterState | MetaVariant::Both
            ),
            RouteKind::Direct { .. }
            | RouteKind::Stale
            | RouteKind::ToListener
            | RouteKind::RecordQueryFails
            | RouteKind::HandoffBlackhole => false,
        }
    }
}

/// A mid-run lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// The proxy stops accepting at this virtual ms.
    Drain(u64),
    /// The proxy host crashes at this ms and restarts 100 ms later.
    ProxyCrash(u64),
    /// Upstream A crashes at this ms and restarts 100 ms later.
    UpstreamCrash(u64),
}

/// Everything one run does.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The seed it was drawn from.
    pub seed: u64,
    /// Its family.
    pub family: Family,
    /// IPv6 sim (turmoil has one family per sim).
    pub v6: bool,
    /// The flows.
    pub flows: Vec<Flow>,
    /// Message latency range in ms.
    pub latency_ms: (u64, u64),
    /// turmoil's per-stream window and backlog, in segments.
    pub tcp_capacity: usize,
    /// Whether turmoil shuffles host order each step.
    pub random_order: bool,
    /// The proxy host's outbound rule set forgot to exclude the proxy's mark.
    pub forgot_mark_exclusion: bool,
    /// A Windows-style policy requires redirect records on proxy connections.
    pub require_records: bool,
    /// A lifecycle event, if any.
    pub lifecycle: Option<Lifecycle>,
    /// The proxy routes through an Envoy config (listener hand-off, chains, clusters) instead of
    /// straight to the restored destination.
    pub routing: bool,
}

impl Scenario {
    /// Draws the scenario for `seed` in `family`.
    pub fn draw(seed: u64, family: Family) -> Self {
        let mut rng = Rng::new(seed ^ (family as u64).wrapping_mul(0xa076_1d64_78bd_642f));
        let mut scenario = Self {
            seed,
            family,
            v6: rng.chance(25),
            flows: Vec::new(),
            latency_ms: (rng.range(0, 2), rng.range(3, 25)),
            tcp_capacity: TCP_CAPACITY,
            random_order: rng.chance(50),
            forgot_mark_exclusion: false,
            require_records: false,
            lifecycle: None,
            routing: family == Family::Handoff,
        };
        let count = rng.range(1, FLOWS_MAX as u64) as usize;
        for id in 0..count {
            let flow = draw_flow(&mut rng, family, id, &mut scenario);
            scenario.flows.push(flow);
        }
        scenario
    }
}

fn draw_flow(rng: &mut Rng, family: Family, id: usize, scenario: &mut Scenario) -> Flow {
    let mut flow = Flow {
        id,
        route: RouteKind::Redirect,
        upstream: if rng.chance(50) {
            Upstream::A
        } else {
            Upstream::B
        },
        upload: rng.size(64 * 1024),
        download: rng.size(64 * 1024),
        chunk: rng.pick(&[1, 7, 512, 1448, 4096, 16 * 1024, 65 * 1024]),
        order: rng.pick(&[Order::Concurrent, Order::ClientFirst, Order::UpstreamFirst]),
        fault: Fault::None,
        start_ms: rng.range(0, 200),
        slow_client_ms: 0,
        slow_upstream_ms: 0,
        pace_ms: 0,
    };
    if flow.chunk == 1 {
        // One-byte writes are one segment each in turmoil: keep them short.
        flow.upload = flow.upload.min(2048);
        flow.download = flow.download.min(2048);
    }
    draw_family(rng, family, id, scenario, &mut flow);
    fit_slow_readers(&mut flow);
    fit_window(&mut flow);
    flow
}

/// Each write is one turmoil segment: a flow must never have more segments in flight than the
/// window holds, or a writer whose peer vanished (crash, reset) would block forever — turmoil
/// does not wake it the way a kernel's RST would.
fn fit_window(flow: &mut Flow) {
    let max_bytes = (TCP_CAPACITY / 2 * flow.chunk) as u64;
    flow.upload = flow.upload.min(max_bytes);
    flow.download = flow.download.min(max_bytes);
    if let Fault::UpstreamReset(k) | Fault::ClientReset(k) = &mut flow.fault {
        *k = (*k).min(flow.upload.saturating_sub(1));
    }
}

/// A slow reader pauses after every segment it reads. Once the proxy has handed everything to the
/// socket, nothing moves *at the proxy* while the reader drains — exactly what an idle timeout
/// measures — so the drain must fit well inside the (short, simulated) idle timeout, as it would
/// inside a production one.
fn fit_slow_readers(flow: &mut Flow) {
    let budget_ms = SLOW_READ_BUDGET.as_millis() as u64;
    let chunk = flow.chunk as u64;
    if let Some(reads) = budget_ms.checked_div(flow.slow_client_ms) {
        flow.download = flow.download.min(reads * chunk);
    }
    if let Some(reads) = budget_ms.checked_div(flow.slow_upstream_ms) {
        flow.upload = flow.upload.min(reads * chunk);
    }
}

fn draw_family(rng: &mut Rng, family: Family, id: usize, scenario: &mut Scenario, flow: &mut Flow) {
    match family {
        Family::Happy => {
            if rng.chance(10) {
                flow.upload = rng.range(1, 2 << 20);
                flow.download = rng.range(1, 2 << 20);
                flow.chunk = 64 * 1024;
            }
        }
        Family::HalfClose => {}
        Family::Resets => {
            flow.upload = flow.upload.max(2);
            flow.download = flow.download.max(2);
            flow.fault = if rng.chance(50) {
                // The upstream reads before it resets: a client waiting for the response first
                // would deadlock with it (and the idle timeout would be the right outcome).
                if flow.order == Order::UpstreamFirst {
                    flow.order = Order::Concurrent;
                }
                Fault::UpstreamReset(rng.range(0, flow.upload - 1))
            } else {
                Fault::ClientReset(rng.range(0, flow.upload - 1))
            };
        }
        Family::ConnectFailures => {
            flow.fault = rng.pick(&[Fault::Refused, Fault::ConnectHold, Fault::None]);
            if flow.fault == Fault::ConnectHold {
                flow.upstream = Upstream::Slow;
            }
        }
        Family::BlackHole => {
            if rng.chance(60) {
                flow.fault = Fault::BlackHole;
                flow.upstream = Upstream::Hole;
                flow.order = Order::ClientFirst;
                flow.upload = flow.upload.max(1);
                flow.download = flow.download.max(1);
            }
        }
        Family::Backpressure => {
            flow.upload = rng.range(32 * 1024, 256 * 1024);
            flow.download = rng.range(32 * 1024, 256 * 1024);
            flow.chunk = rng.pick(&[1448, 4096, 16 * 1024]);
            flow.slow_client_ms = rng.pick(&[0, 1, 5]);
            flow.slow_upstream_ms = rng.pick(&[0, 1, 5]);
        }
        Family::Redirect => {
            flow.route = rng.pick(&[
                RouteKind::Redirect,
                RouteKind::Tproxy,
                RouteKind::Direct { unrestored: true },
                RouteKind::Direct { unrestored: false },
                RouteKind::Stale,
                RouteKind::ToListener,
            ]);
            if id == 0 && rng.chance(30) {
                scenario.forgot_mark_exclusion = true;
            }
        }
        Family::Records => {
            scenario.require_records = true;
            flow.route = if rng.chance(15) {
                RouteKind::RecordQueryFails
            } else {
                RouteKind::Record
            };
        }
        Family::Internal => {
            let variant = rng.pick(&[
                MetaVariant::Dynamic,
                MetaVariant::FilterState,
                MetaVariant::Both,
                MetaVariant::Missing,
                MetaVariant::Malformed,
            ]);
            flow.route = RouteKind::Internal(variant);
        }
        Family::Lifecycle => {
            flow.start_ms = rng.range(0, 600);
            if id == 0 {
                let at = rng.range(50, 400);
                scenario.lifecycle = Some(rng.pick(&[
                    Lifecycle::Drain(at),
                    Lifecycle::ProxyCrash(at),
                    Lifecycle::UpstreamCrash(at),
                ]));
            }
        }
        Family::Timers => {
            // A few writes, each followed by a pause: shorter than the idle timeout by more than
            // the latency (the flow must complete, in several idle timeouts' time), or longer
            // (the proxy must reset both sides an idle timeout after the last byte).
            let idle_ms = crate::world::IDLE_TIMEOUT.as_millis() as u64;
            flow.order = Order::ClientFirst;
            flow.fault = Fault::None;
            flow.chunk = rng.pick(&[7, 512, 1448]);
            flow.upload = flow.chunk as u64 * rng.range(2, 4);
            flow.download = flow.download.min(4096);
            flow.start_ms = rng.range(0, 50);
            if rng.chance(50) {
                flow.pace_ms = rng.range(idle_ms / 2, idle_ms - 300);
            } else {
                flow.pace_ms = rng.range(idle_ms + 300, idle_ms * 3 / 2);
                flow.fault = Fault::IdlePause;
            }
        }
        Family::Handoff => {
            flow.route = rng.pick(&[
                RouteKind::Redirect,
                RouteKind::HandoffStatic,
                RouteKind::HandoffBlackhole,
            ]);
        }
        Family::Swarm => {
            // Swarm testing: each seed switches whole fault classes on or off.
            let classes = rng.next_u64();
            let on = |bit: u32| classes >> bit & 1 == 1;
            if on(0) && rng.chance(30) {
                if flow.order == Order::UpstreamFirst {
                    flow.order = Order::ClientFirst;
                }
                flow.fault = Fault::UpstreamReset(rng.range(0, flow.upload.max(1)));
                flow.upload = flow.upload.max(2);
                flow.download = flow.download.max(2);
                if let Fault::UpstreamReset(k) = &mut flow.fault {
                    *k = (*k).min(flow.upload - 1);
                }
            } else if on(1) && rng.chance(30) {
                flow.upload = flow.upload.max(2);
                flow.fault = Fault::ClientReset(rng.range(0, flow.upload - 1));
            } else if on(2) && rng.chance(20) {
                flow.fault = Fault::Refused;
            } else if on(3) && rng.chance(15) {
                flow.fault = Fault::ConnectHold;
                flow.upstream = Upstream::Slow;
            } else if on(4) && rng.chance(15) {
                flow.fault = Fault::BlackHole;
                flow.upstream = Upstream::Hole;
                flow.order = Order::ClientFirst;
                flow.upload = flow.upload.max(1);
                flow.download = flow.download.max(1);
            }
            if on(5) && rng.chance(30) {
                flow.route = rng.pick(&[
                    RouteKind::Tproxy,
                    RouteKind::Stale,
                    RouteKind::Direct { unrestored: true },
                ]);
            }
            if on(6) {
                flow.slow_client_ms = rng.pick(&[0, 1, 3]);
                flow.slow_upstream_ms = rng.pick(&[0, 1, 3]);
            }
            if on(7) && rng.chance(20) {
                flow.route = RouteKind::Internal(rng.pick(&[
                    MetaVariant::Dynamic,
                    MetaVariant::Both,
                    MetaVariant::Missing,
                ]));
            }
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario seed={} family={} v6={} latency={:?}ms tcp_capacity={} random_order={} forgot_mark={} records={} routing={} lifecycle={:?}",
            self.seed,
            self.family.name(),
            self.v6,
            self.latency_ms,
            self.tcp_capacity,
            self.random_order,
            self.forgot_mark_exclusion,
            self.require_records,
            self.routing,
            self.lifecycle
        )?;
        for flow in &self.flows {
            writeln!(f, "  {flow:?}")?;
        }
        Ok(())
    }
}

/// Flows per scenario: below turmoil's accept backlog (`tcp_capacity` ≥ 4 concurrent SYNs... the
/// proxy accepts promptly, so 12 stays far from the panic).
pub const FLOWS_MAX: usize = 12;
/// turmoil's window and backlog, in segments: large enough that no flow fills a receive channel
/// (see runtime-sim's crate docs on turmoil's FIN handling).
pub const TCP_CAPACITY: usize = 8192;
/// How long a slow reader may take to drain what the proxy handed to its socket.
const SLOW_READ_BUDGET: std::time::Duration = std::time::Duration::from_millis(500);
/// Flow `i` dials port `UPSTREAM_PORT_BASE + i` on its upstream.
pub const UPSTREAM_PORT_BASE: u16 = 10_000;
