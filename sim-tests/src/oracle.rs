//! The oracle: what must hold for every flow and for the proxy as a whole, judged from the ledgers
//! of both workload sides and the proxy. Safety rules hold for every flow; liveness rules are
//! checked after the faults healed and the run quiesced.

use std::fmt;

use origdst_core::orig_dst::RefuseReason;
use origdst_core::outcome::Outcome;
use origdst_runtime_sim::driver::{PUMP_CHUNK_BYTES, ProxyRecord};

use crate::scenario::{Fault, Flow, Lifecycle, MetaVariant, RouteKind, Scenario};
use crate::world::{CONNECT_TIMEOUT, End, FlowResult, IDLE_TIMEOUT, RESTART_AFTER_MS, Report};

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The flow it concerns, if one.
    pub flow: Option<usize>,
    /// What broke.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.flow {
            Some(flow) => write!(f, "flow {flow}: {}", self.what),
            None => write!(f, "proxy: {}", self.what),
        }
    }
}

/// Every violation in a run (empty: the run is correct).
pub fn check(scenario: &Scenario, report: &Report) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut fail = |flow: Option<usize>, what: String| out.push(Violation { flow, what });
    if let Some(err) = &report.sim_error {
        fail(None, format!("simulation did not complete: {err}"));
    }
    for flow in &scenario.flows {
        let result = &report.flows[flow.id];
        let record = result
            .client_addr
            .and_then(|addr| report.proxy.iter().find(|r| r.peer == addr));
        for what in check_flow(scenario, report, flow, result, record) {
            fail(Some(flow.id), what);
        }
    }
    for what in check_proxy(scenario, report) {
        fail(None, what);
    }
    out
}

fn check_flow(
    scenario: &Scenario,
    report: &Report,
    flow: &Flow,
    result: &FlowResult,
    record: Option<&ProxyRecord>,
) -> Vec<String> {
    let mut v = Vec::new();
    // Safety, always: bytes exact and in order; nobody hangs; one upstream connection at most.
    if let Some(client) = &result.client {
        if let Some(at) = client.mismatch_at {
            v.push(format!("client received a wrong byte at offset {at}"));
        }
        if client.end == End::TimedOut {
            v.push(format!(
                "client heard nothing for the read deadline (hang) after {} bytes",
                client.received
            ));
        }
    }
    for upstream in &result.upstream {
        if let Some(at) = upstream.mismatch_at {
            v.push(format!("upstream received a wrong byte at offset {at}"));
        }
    }
    if result.upstream.len() > 1 {
        v.push(format!(
            "{} upstream connections for one flow",
            result.upstream.len()
        ));
    }
    if result.dial_error.is_some() {
        match scenario.lifecycle {
            // Dials while the proxy is down or drained are refused by the kernel: expected, also for
            // a dial whose handshake (two one-way latencies) was still in flight at that moment.
            Some(Lifecycle::Drain(at) | Lifecycle::ProxyCrash(at))
                if result.dialled_ms + 2 * scenario.latency_ms.1 + 10 >= at =>
            {
                return v;
            }
            _ => {
                v.push(format!("dial failed: {:?}", result.dial_error));
                return v;
            }
        }
    }
    if let Some(Lifecycle::Drain(at)) = scenario.lifecycle
        && let Some(record) = record
        && record.accepted_at.as_millis() as u64 > at
    {
        v.push("accepted after the drain started".into());
    }
    if relaxed(scenario, flow, result) {
        // A crash closes sockets with the kernel's semantics (FIN or RST, whatever was unread):
        // truncation and outcome rules do not apply to flows it cut.
        return v;
    }
    let Some(client) = &result.client else {
        v.push("client never recorded a result".into());
        return v;
    };
    // No truncation disguised as success, on either side.
    if client.end == End::CleanEof && client.received != flow.download {
        v.push(format!(
            "clean EOF after {} of {} download bytes (truncation disguised as success)",
            client.received, flow.download
        ));
    }
    for upstream in &result.upstream {
        if upstream.end == End::CleanEof && upstream.received != flow.upload {
            v.push(format!(
                "upstream saw a clean EOF after {} of {} upload bytes",
                upstream.received, flow.upload
            ));
        }
    }
    let outcome = record.and_then(|r| r.history.outcome);
    if record.is_none() {
        v.push("the proxy has no record of this connection".into());
        return v;
    }
    let record = record.expect("checked above");
    let is_reset = client.end == End::Reset;
    if !flow.routed() {
        let want = match (&flow.route, scenario.forgot_mark_exclusion) {
            (RouteKind::ToListener, _) => RefuseReason::DestinationIsListener,
            (RouteKind::Internal(MetaVariant::Malformed), _) => RefuseReason::InvalidMetadata,
            (RouteKind::RecordQueryFails, _) => RefuseReason::RecordQueryFailed { errno: 5 },
            (RouteKind::HandoffBlackhole, _) => RefuseReason::NoHealthyUpstream,
            _ => RefuseReason::NoOriginalDst,
        };
        expect_outcome(
            &mut v,
            outcome,
            |o| o == Outcome::Refused(want),
            &format!("refused ({want:?})"),
        );
        let own_abort = matches!(flow.fault, Fault::ClientReset(_));
        expect(
            &mut v,
            is_reset || own_abort,
            "a refused client must see a reset",
            client.end,
        );
        expect(
            &mut v,
            result.upstream.is_empty(),
            "a refused connection reached an upstream",
            client.end,
        );
        return v;
    }
    if scenario.forgot_mark_exclusion {
        // The proxy's own connection came back to it, was refused (own mark), and that reset
        // reached the client: no loop, no silent success.
        expect_outcome(
            &mut v,
            outcome,
            |o| matches!(o, Outcome::UpstreamFailed(_)),
            "upstream_failed (own-mark loop refused)",
        );
        expect(
            &mut v,
            is_reset,
            "client of a looped connection must see a reset",
            client.end,
        );
        return v;
    }
    let want_dst = report.addrs.server(flow);
    match flow.fault {
        Fault::None => {
            expect_outcome(&mut v, outcome, |o| o == Outcome::Completed, "completed");
            expect(
                &mut v,
                client.end == End::CleanEof && client.received == flow.download,
                "client must get the whole download",
                client.end,
            );
            match result.upstream.first() {
                Some(up) => expect(
                    &mut v,
                    up.end == End::CleanEof && up.received == flow.upload,
                    "upstream must get the whole upload",
                    up.end,
                ),
                None => v.push("no upstream connection".into()),
            }
            if record.upstream != Some(want_dst) {
                v.push(format!(
                    "proxy connected to {:?}, the flow's server is {want_dst}",
                    record.upstream
                ));
            }
            if record.bytes != [flow.upload, flow.download] {
                v.push(format!(
                    "proxy counted {:?} bytes, the flow moved [{}, {}]",
                    record.bytes, flow.upload, flow.download
                ));
            }
        }
        Fault::Refused => {
            expect_outcome(
                &mut v,
                outcome,
                |o| matches!(o, Outcome::ConnectFailed(_)),
                "upstream_connect_failed",
            );
            expect(
                &mut v,
                is_reset,
                "a refused upstream must reach the client as a reset",
                client.end,
            );
        }
        Fault::ConnectHold => {
            expect_outcome(
                &mut v,
                outcome,
                |o| o == Outcome::ConnectTimeout,
                "upstream_connect_timeout",
            );
            expect(
                &mut v,
                is_reset,
                "a connect timeout must reach the client as a reset",
                client.end,
            );
            let waited = client.ended_ms.saturating_sub(result.dialled_ms);
            if waited > CONNECT_TIMEOUT.as_millis() as u64 + 1000 {
                v.push(format!(
                    "client told of the connect timeout only after {waited} ms"
                ));
            }
        }
        Fault::UpstreamReset(_) => {
            expect_outcome(
                &mut v,
                outcome,
                |o| matches!(o, Outcome::UpstreamFailed(_)),
                "upstream_failed",
            );
            expect(
                &mut v,
                is_reset,
                "an upstream reset must reach the client as a reset",
                client.end,
            );
        }
        Fault::ClientReset(k) => {
            expect_outcome(
                &mut v,
                outcome,
                |o| matches!(o, Outcome::ClientFailed(_)),
                "client_failed",
            );
            for up in &result.upstream {
                expect(
                    &mut v,
                    up.end == End::Reset,
                    "a client reset must reach the upstream as a reset",
                    up.end,
                );
                if up.received > k {
                    v.push(format!(
                        "upstream got {} bytes, the client sent {k}",
                        up.received
                    ));
                }
            }
        }
        Fault::IdlePause => {
            // The idle timer: both sides reset, an idle timeout after the last byte moved — not
            // before (the pause is the only silence), and not much after.
            expect_outcome(
                &mut v,
                outcome,
                |o| o == Outcome::IdleTimeout,
                "idle_timeout",
            );
            expect(
                &mut v,
                is_reset,
                "an idle timeout must reach the client as a reset",
                client.end,
            );
            for up in &result.upstream {
                expect(
                    &mut v,
                    up.end == End::Reset,
                    "an idle timeout must reach the upstream as a reset",
                    up.end,
                );
            }
            if let Some(closed) = record.closed_at {
                let closed_ms = closed.as_millis() as u64;
                let idle_ms = IDLE_TIMEOUT.as_millis() as u64;
                let earliest = result.last_write_ms + idle_ms;
                let latest = earliest + scenario.latency_ms.1 + 100;
                if closed_ms < earliest {
                    v.push(format!(
                        "idle timeout fired at {closed_ms} ms, the last byte was written at {} ms: \
                         earlier than the idle timeout",
                        result.last_write_ms
                    ));
                }
                if closed_ms > latest {
                    v.push(format!(
                        "idle timeout fired at {closed_ms} ms, the last byte was written at {} ms: \
                         later than the idle timeout allows",
                        result.last_write_ms
                    ));
                }
            }
        }
        Fault::BlackHole => {
            expect_outcome(
                &mut v,
                outcome,
                |o| matches!(o, Outcome::IdleTimeout | Outcome::ConnectFailed(_)),
                "idle_timeout (or connect failed into the hole)",
            );
            expect(
                &mut v,
                is_reset,
                "a black-holed flow must end in a reset for the client",
                client.end,
            );
        }
    }
    v
}

fn check_proxy(scenario: &Scenario, report: &Report) -> Vec<String> {
    let mut v = Vec::new();
    for (peer, count) in &report.queries {
        if *count != 1 {
            v.push(format!(
                "original destination of {peer} resolved {count} times (must be exactly once)"
            ));
        }
    }
    let crash_at = match scenario.lifecycle {
        Some(Lifecycle::ProxyCrash(at)) => Some(at),
        _ => None,
    };
    for record in &report.proxy {
        let lost_in_crash = crash_at
            .is_some_and(|at| record.accepted_at.as_millis() as u64 <= at + RESTART_AFTER_MS);
        if record.closed_at.is_none() && !lost_in_crash {
            v.push(format!(
                "connection from {} never ended ({})",
                record.peer, record.history
            ));
        }
    }
    if crash_at.is_none() && report.stats.active() != 0 {
        v.push(format!(
            "{} connections still counted active after quiescence",
            report.stats.active()
        ));
    }
    if crash_at.is_none() {
        v.extend(check_counters(report));
    }
    if report.max_buffered_bytes > PUMP_CHUNK_BYTES {
        v.push(format!(
            "a direction buffered {} bytes (budget {PUMP_CHUNK_BYTES})",
            report.max_buffered_bytes
        ));
    }
    let own_mark_refusals = report
        .proxy
        .iter()
        .filter(|r| {
            matches!(
                r.history.outcome,
                Some(Outcome::Refused(RefuseReason::OwnMark { .. }))
            )
        })
        .count() as u32;
    if scenario.forgot_mark_exclusion {
        if own_mark_refusals != report.self_redirects {
            v.push(format!(
                "{} connections looped back, {own_mark_refusals} refused for carrying the own mark",
                report.self_redirects
            ));
        }
    } else if report.self_redirects != 0 {
        v.push(format!(
            "{} of the proxy's own connections were redirected back to it (loop)",
            report.self_redirects
        ));
    }
    if scenario.require_records {
        for flow in scenario.flows.iter().filter(|f| f.routed()) {
            let dst = report.addrs.orig_dst(flow);
            let carried: Vec<_> = report
                .upstream_connects
                .iter()
                .filter(|(d, _)| *d == dst)
                .collect();
            if carried.iter().any(|(_, record)| record.is_none()) {
                v.push(format!(
                    "flow {} reached its upstream without its redirect record",
                    flow.id
                ));
            }
        }
        let mut records: Vec<_> = report
            .upstream_connects
            .iter()
            .filter_map(|(_, r)| r.clone())
            .collect();
        let total = records.len();
        records.sort();
        records.dedup();
        if records.len() != total {
            v.push("one redirect record was applied to two upstream connections".into());
        }
    }
    v
}

/// Every counter a user scrapes agrees with what the proxy's records say happened: connections,
/// endings by kind, refusals by reason, bytes each way, provenance.
fn check_counters(report: &Report) -> Vec<String> {
    use origdst_core::stats::Counter;
    let mut v = Vec::new();
    let stats = &report.stats;
    let records = &report.proxy;
    let count = |f: &dyn Fn(&ProxyRecord) -> bool| records.iter().filter(|r| f(r)).count() as u64;
    let outcome_is =
        |want: fn(Outcome) -> bool| count(&|r: &ProxyRecord| r.history.outcome.is_some_and(want));
    let agree = |v: &mut Vec<String>, counter: Counter, want: u64| {
        let got = stats.get(counter);
        if got != want {
            v.push(format!(
                "counter {} = {got}, the records say {want}",
                counter.name()
            ));
        }
    };
    agree(&mut v, Counter::DownstreamCxTotal, records.len() as u64);
    agree(
        &mut v,
        Counter::DownstreamCxDestroy,
        count(&|r: &ProxyRecord| r.history.outcome.is_some()),
    );
    agree(
        &mut v,
        Counter::Completed,
        outcome_is(|o| o == Outcome::Completed),
    );
    agree(
        &mut v,
        Counter::UpstreamCxConnectFail,
        outcome_is(|o| matches!(o, Outcome::ConnectFailed(_))),
    );
    agree(
        &mut v,
        Counter::UpstreamCxConnectTimeout,
        outcome_is(|o| o == Outcome::ConnectTimeout),
    );
    agree(
        &mut v,
        Counter::UpstreamCxReset,
        outcome_is(|o| matches!(o, Outcome::UpstreamFailed(_))),
    );
    agree(
        &mut v,
        Counter::DownstreamCxReset,
        outcome_is(|o| matches!(o, Outcome::ClientFailed(_))),
    );
    agree(
        &mut v,
        Counter::IdleTimeout,
        outcome_is(|o| o == Outcome::IdleTimeout),
    );
    agree(
        &mut v,
        Counter::DrainAborted,
        outcome_is(|o| o == Outcome::DrainAborted),
    );
    let refused = outcome_is(|o| matches!(o, Outcome::Refused(_)));
    let refusals: u64 = Counter::ALL
        .iter()
        .filter(|c| c.refusal_reason().is_some())
        .map(|&c| stats.get(c))
        .sum();
    if refusals != refused {
        v.push(format!(
            "refusal counters add up to {refusals}, the records have {refused} refused connections"
        ));
    }
    for record in records {
        if let Some(Outcome::Refused(reason)) = record.history.outcome {
            let named = Counter::ALL
                .iter()
                .find(|c| c.refusal_reason() == Some(reason.name()));
            if named.is_none_or(|&c| stats.get(c) == 0) {
                v.push(format!(
                    "refusal {} was not counted under its reason",
                    reason.name()
                ));
            }
        }
    }
    let bytes = |dir: usize| records.iter().map(|r| r.bytes[dir]).sum::<u64>();
    agree(&mut v, Counter::DownstreamCxRxBytesTotal, bytes(0));
    agree(&mut v, Counter::DownstreamCxTxBytesTotal, bytes(1));
    let connected = count(&|r: &ProxyRecord| r.history.connected);
    let provenances: u64 = Counter::ALL
        .iter()
        .filter(|c| c.provenance().is_some())
        .map(|&c| stats.get(c))
        .sum();
    let resolved = count(&|r: &ProxyRecord| {
        r.history.provenance.is_some() && !matches!(r.history.outcome, Some(Outcome::Refused(_)))
    });
    if provenances != resolved {
        v.push(format!(
            "provenance counters add up to {provenances}, {resolved} connections resolved a destination"
        ));
    }
    if stats.get(Counter::UpstreamCxTotal) < connected {
        v.push(format!(
            "upstream_cx_total {} is below the {connected} connections that connected",
            stats.get(Counter::UpstreamCxTotal)
        ));
    }
    v
}

fn relaxed(scenario: &Scenario, flow: &Flow, result: &FlowResult) -> bool {
    let (at, only_a) = match scenario.lifecycle {
        Some(Lifecycle::ProxyCrash(at)) => (at, false),
        Some(Lifecycle::UpstreamCrash(at)) => (at, true),
        _ => return false,
    };
    if only_a && flow.upstream != crate::scenario::Upstream::A {
        return false;
    }
    let ended = result.client.as_ref().map_or(u64::MAX, |c| c.ended_ms);
    result.dialled_ms <= at + RESTART_AFTER_MS + 50 && ended + 50 >= at
}

fn expect(v: &mut Vec<String>, ok: bool, what: &str, end: End) {
    if !ok {
        v.push(format!("{what} (ended with {end:?})"));
    }
}

fn expect_outcome(
    v: &mut Vec<String>,
    outcome: Option<Outcome>,
    ok: impl Fn(Outcome) -> bool,
    want: &str,
) {
    match outcome {
        Some(o) if ok(o) => {}
        other => v.push(format!("proxy outcome {other:?}, expected {want}")),
    }
}
