//! What must hold for the run as a whole: the drain deadline, every counter against the
//! connection log, loops, connect attempts and retries, round robin, pipes, the log budget, the
//! connection limit, the engine's metrics, and nothing left open.

use origdst_core::outcome::Outcome;
use origdst_core::stats::Counter;
use origdst_engine::log_budget::LOG_LINES_PER_SECOND_MAX;
use origdst_engine::report::{Finished, Gauge};

use super::{clean, refused_connects};
use crate::engine::harness::EReport;
use crate::engine::scenario::{
    DRAIN_TIMEOUT_MS, EFlow, ERoute, EScenario, PROXY_IP, PUSHED_ENDPOINTS, SPREAD_ENDPOINTS,
    client_addr, dest, max_attempts,
};

/// Checks the run as a whole.
pub(super) fn check(scenario: &EScenario, report: &EReport, fail: &mut impl FnMut(String)) {
    // An early drain ends within its timeout: whatever is still open then is reset.
    if let Some(ms) = scenario.drain_at_ms {
        let deadline = (ms + DRAIN_TIMEOUT_MS + 50) * 1_000_000;
        if let Some(&late) = report.finished_at.iter().find(|&&t| t > deadline) {
            fail(format!(
                "drained at {ms} ms (drain_timeout {DRAIN_TIMEOUT_MS} ms), a connection closed only at {} ms",
                late / 1_000_000
            ));
        }
    }
    let count = |c: Counter| report.stats.get(c);
    // (A flow that never dialled, or was refused by the kernel after an early drain closed the
    // listeners, never reached the proxy at all.)
    let fired = |fault: &str| report.fired.get(fault).copied().unwrap_or(0);
    let gone = scenario
        .flows
        .iter()
        .filter(|flow| {
            let client = &report.sides[flow.id].0;
            let thinned = scenario.sample_every > 1 && clean(flow, client);
            client.ep.is_some()
                && !client.refused
                && !thinned
                && !report
                    .finished
                    .iter()
                    .any(|r| r.client == client_addr(flow.id))
        })
        .count() as u64;
    // (The proxy's own looped connections, reset before their accept, count there too.)
    let gone = gone + fired("own_connection_gone_at_accept");
    if count(Counter::AcceptClientGone) + report.never_accepted as u64 != gone {
        fail(format!(
            "{gone} clients left before they were accepted, downstream_cx_accept_client_gone = {} \
             (and {} never accepted before the drain)",
            count(Counter::AcceptClientGone),
            report.never_accepted
        ));
    }
    // An accept that failed (no memory, no descriptor) is counted and retried; the connection
    // it left queued is accepted later (the per-flow checks above see it relayed).
    let failed = fired("accept_nomem") + fired("accept_emfile");
    if count(Counter::AcceptFail) != failed {
        fail(format!(
            "{failed} accepts failed (ENOMEM, EMFILE), downstream_cx_accept_fail = {}",
            count(Counter::AcceptFail)
        ));
    }
    if count(Counter::DownstreamCxTotal) != report.finished.len() as u64 + report.unsampled {
        fail(format!(
            "downstream_cx_total {} for {} finished connections ({} more left out by sampling)",
            count(Counter::DownstreamCxTotal),
            report.finished.len(),
            report.unsampled
        ));
    }
    let loops = report
        .finished
        .iter()
        .filter(|r| r.client.ip() == PROXY_IP && r.outcome != Outcome::Overflow)
        .count() as u64;
    // A looping attempt retired after its connect poll was refused no longer counts as the
    // proxy's own when its loop arrives (it was reset; nothing else is recognisable without a
    // mark): then only some of the returns are refused as loops.
    let retired_loops = scenario.flows.iter().any(|flow| {
        matches!(flow.route, ERoute::Misdeclared | ERoute::TproxyLoop)
            && refused_connects(report, flow) > 0
    });
    let refused_loops = count(Counter::RefusedOwnUpstream);
    if refused_loops != loops && !(retired_loops && refused_loops < loops) {
        fail(format!(
            "{loops} of the proxy's own connections came back, refused_own_upstream = {}",
            count(Counter::RefusedOwnUpstream)
        ));
    }
    let misdeclared = scenario
        .flows
        .iter()
        .filter(|flow| {
            matches!(flow.route, ERoute::Misdeclared | ERoute::TproxyLoop)
                && report
                    .finished
                    .iter()
                    .any(|r| r.client == client_addr(flow.id))
        })
        .count() as u64;
    if loops < misdeclared
        && scenario.drain_at_ms.is_none()
        && scenario.conn_limit.is_none()
        && !retired_loops
    {
        fail(format!(
            "{misdeclared} misdeclared flows, only {loops} loops recognised"
        ));
    }
    // Connect attempts: a refused or black-holed destination is tried as often as its listener
    // allows, a reachable one once, and the retry counters say so. (Not under descriptor
    // exhaustion: a parked connect that times out is retried without reaching the network.)
    if scenario.fd_limit >= 100 {
        let mut exceeded = 0;
        for flow in scenario.flows.iter().filter(|f| f.route != ERoute::Spread) {
            if matches!(flow.route, ERoute::Misdeclared | ERoute::TproxyLoop)
                && refused_connects(report, flow) > 0
            {
                // Its retired attempt's loop came back as a new client and dialled again.
                continue;
            }
            let attempts = report.connects.get(&dest(flow)).copied().unwrap_or(0);
            let Some(record) = report
                .finished
                .iter()
                .filter(|r| r.client == client_addr(flow.id))
                .find(|r| r.upstream == Some(dest(flow)))
            else {
                continue;
            };
            let want = match record.outcome {
                // Cut by an early drain: as many attempts as it had made.
                Outcome::DrainAborted => attempts,
                Outcome::ConnectFailed(_) | Outcome::ConnectTimeout => {
                    if max_attempts(flow) > 1 {
                        exceeded += 1;
                    }
                    max_attempts(flow)
                }
                _ if matches!(flow.route, ERoute::Misdeclared | ERoute::TproxyLoop) => attempts,
                // Each refused connect poll cost an attempt.
                _ => 1 + refused_connects(report, flow),
            };
            if attempts != want {
                fail(format!(
                    "flow {f} ({:?}, {:?}): {attempts} connect attempts to {}, {want} expected (ended {})",
                    flow.route,
                    flow.fault,
                    dest(flow),
                    record.outcome.name(),
                    f = flow.id
                ));
            }
        }
        let retried: u64 = report
            .connects
            .iter()
            .filter(|(dest, _)| {
                !SPREAD_ENDPOINTS.contains(dest) && !PUSHED_ENDPOINTS.contains(dest)
            })
            .map(|(_, &n)| u64::from(n.saturating_sub(1)))
            .sum();
        // (Retired looping attempts come back as clients that dial again: not retries.)
        if count(Counter::UpstreamCxConnectRetry) != retried && !retired_loops {
            fail(format!(
                "{retried} connects retried, upstream_cx_connect_attempts_retried = {}",
                count(Counter::UpstreamCxConnectRetry)
            ));
        }
        if count(Counter::UpstreamCxConnectAttemptsExceeded) != exceeded && !retired_loops {
            fail(format!(
                "{exceeded} connections used every attempt, upstream_cx_connect_attempts_exceeded = {}",
                count(Counter::UpstreamCxConnectAttemptsExceeded)
            ));
        }
    }
    // Round robin over the STATIC endpoints: the connections routed there differ by at most one
    // per endpoint, whatever order they came in — over each set of endpoints a push put in force
    // (the balancer keeps its place across the push: a contiguous run of its turns either way).
    for endpoints in [SPREAD_ENDPOINTS, PUSHED_ENDPOINTS] {
        let mut spread = [0u64; 3];
        for record in &report.finished {
            if let Some(at) = endpoints.iter().position(|&e| record.upstream == Some(e)) {
                spread[at] += 1;
            }
        }
        if report.unsampled == 0
            && spread.iter().max().unwrap_or(&0) - spread.iter().min().unwrap_or(&0) > 1
        {
            fail(format!(
                "round robin over three STATIC endpoints {endpoints:?} gave {spread:?} connections"
            ));
        }
    }
    // Pipes: every one the kernel made smaller than asked is counted; where pipes are configured
    // and descriptors are plenty, relaying leases them.
    let small = report.fired.get("small_pipe").copied().unwrap_or(0);
    if report.gauges[Gauge::PipesShrunk as usize] != small {
        fail(format!(
            "the kernel made {small} pipes smaller than asked, pipes_shrunk = {}",
            report.gauges[Gauge::PipesShrunk as usize]
        ));
    }
    // A pipe closed with bytes in it is a discarded one (never pooled), and counted.
    if report.gauges[Gauge::PipesDiscarded as usize] != report.pipes_closed_holding_bytes {
        fail(format!(
            "{} pipes closed holding bytes, pipes_discarded = {}",
            report.pipes_closed_holding_bytes,
            report.gauges[Gauge::PipesDiscarded as usize]
        ));
    }
    // Every pipe the kernel would not make left a direction copying instead, counted.
    let refused = fired("pipe_fails") + fired("pipe_no_fd");
    if scenario.pipes && report.gauges[Gauge::SpliceFallbackCopies as usize] < refused {
        fail(format!(
            "the kernel refused {refused} pipes, splice_fallback_copies = {}",
            report.gauges[Gauge::SpliceFallbackCopies as usize]
        ));
    }
    // The readiness path's split between splicing and copying. Splice-auto splices once a read
    // fills half a buffer: certain for a socket-to-socket flow that completed after writing
    // whole buffers at once, several of them, into a window that holds one, with no read
    // shortened. Without pipes, every byte between two sockets is copied.
    let buffer = u64::from(scenario.buffer_bytes);
    let bulk_relayed = scenario.faults.short_io == 0
        && scenario.window as u64 >= buffer
        && socket_flows_completed(scenario, report).any(|(flow, r)| {
            flow.chunk as u64 >= buffer && r.bytes_received.max(r.bytes_sent) >= 4 * buffer
        });
    let relayed =
        socket_flows_completed(scenario, report).any(|(_, r)| r.bytes_received + r.bytes_sent > 0);
    let spliced = report.gauges[Gauge::SplicedBytes as usize];
    let copied = report.gauges[Gauge::CopiedBytes as usize];
    // (With the in-kernel relay, the socket flows' bytes never reach the readiness path.)
    if scenario.pipes && scenario.fd_limit >= 100 && bulk_relayed && !scenario.relay {
        if report.pipes_created == 0 {
            fail("pipes configured and bulk relayed, but no pipe was ever made".into());
        }
        if spliced == 0 {
            fail("pipes configured and bulk relayed, but spliced_bytes is 0".into());
        }
    }
    if !scenario.pipes && spliced != 0 {
        fail(format!("no pipe budget, yet spliced_bytes is {spliced}"));
    }
    if !scenario.pipes && relayed && copied == 0 && !scenario.relay {
        fail("no pipe budget and bytes relayed, yet copied_bytes is 0".into());
    }
    // The in-kernel relay: a FIN is passed on only after every byte before it has left.
    if report.relay_bytes_lost != 0 {
        fail(format!(
            "the relay lost {} bytes: a FIN was passed on before them",
            report.relay_bytes_lost
        ));
    }
    let (relayed_pairs, refused_pairs, spilled) = (
        count(Counter::KernelRelayCx),
        count(Counter::KernelRelayRefused),
        count(Counter::KernelRelaySpilled),
    );
    if !scenario.relay && relayed_pairs + refused_pairs + spilled != 0 {
        fail(format!(
            "no relay configured, yet kernel_relay_cx_total {relayed_pairs}, refused \
             {refused_pairs}, spilled {spilled}"
        ));
    }
    if refused_pairs != fired("relay_refused") {
        fail(format!(
            "the relay refused {} pairs, kernel_relay_refused = {refused_pairs}",
            fired("relay_refused")
        ));
    }
    if spilled > fired("relay_spill") {
        fail(format!(
            "the relay handed back {} sockets, kernel_relay_spilled = {spilled}",
            fired("relay_spill")
        ));
    }
    if scenario.relay && relayed && relayed_pairs + refused_pairs == 0 {
        fail(
            "kernel-sockmap and bytes relayed between sockets, yet no pair went to the relay"
                .into(),
        );
    }
    if report.own_upstreams_left != 0 {
        fail(format!(
            "{} of the proxy's upstream sockets still in the loop-detection table after the drain",
            report.own_upstreams_left
        ));
    }
    // The log budget: failures (connections that did not complete, accepts that failed for a
    // reason other than descriptors) are logged, but never more than two windows' worth in any
    // second.
    let failures = report
        .finished
        .iter()
        .filter(|r| r.outcome != Outcome::Completed)
        .count()
        + fired("accept_nomem") as usize;
    let budget = LOG_LINES_PER_SECOND_MAX as usize;
    let mut lines = report.logs.closed.clone();
    lines.extend(&report.logs.accept_failed);
    lines.sort_unstable();
    if lines.len() < failures.min(budget) {
        fail(format!(
            "{failures} failures, only {} logged (the first {budget} a second must be)",
            lines.len()
        ));
    }
    // The budget's windows, replayed: the first opens at time zero, each next one at the first
    // line a second or more after the last opened (the line that opens a window is always
    // granted); none holds more than the budget.
    let mut window = (0u64, 0usize);
    for &at in &lines {
        if at >= window.0 + 1_000_000_000 {
            window = (at, 0);
        }
        window.1 += 1;
        if window.1 > budget {
            fail(format!(
                "more than {budget} failure lines in the second from {} ms",
                window.0 / 1_000_000
            ));
            break;
        }
    }
    // A summary of suppressed lines only when some were.
    if lines.len() == failures && report.logs.summaries > 0 {
        fail(format!(
            "nothing suppressed, yet {} 'lines suppressed' summaries",
            report.logs.summaries
        ));
    }
    // A shrunk pipe is worth one warning per shard, not one per pipe.
    if report.logs.shrunk_warnings != small.min(1) {
        fail(format!(
            "{small} pipes shrunk, {} warnings (one is right)",
            report.logs.shrunk_warnings
        ));
    }
    if let Some(limit) = scenario.conn_limit {
        // Counted from the connection log (each connection open from its accept to its close),
        // not from the shard's own gauge.
        let mut edges: Vec<(u64, i64)> = Vec::new();
        for (record, &closed) in report.finished.iter().zip(&report.finished_at) {
            if record.outcome == Outcome::Overflow {
                continue;
            }
            let age = u64::try_from(record.age.as_nanos()).unwrap_or(u64::MAX);
            edges.push((closed.saturating_sub(age), 1));
            edges.push((closed, -1));
        }
        edges.sort_unstable();
        let (mut open, mut most) = (0i64, 0i64);
        for (_, delta) in edges {
            open += delta;
            most = most.max(open);
        }
        if most > i64::from(limit) {
            fail(format!(
                "{most} connections open at once, connections_per_shard_max is {limit}"
            ));
        }
    }
    // Every refusal reason's counter agrees with the connections logged with it.
    for (counter, reason) in [
        (Counter::HttpHeadTooLarge, "http_head_too_large"),
        (Counter::HttpHeadTimeout, "http_head_timeout"),
        (Counter::HttpHeadInvalid, "http_head_invalid"),
        (
            Counter::OriginalDstHostDuplicate,
            "original_dst_host_duplicate",
        ),
        (Counter::RefusedDestinationDenied, "destination_denied"),
        (Counter::RefusedOverflow, "overflow"),
    ] {
        let logged = report
            .finished
            .iter()
            .filter(|r| r.outcome.name() == reason)
            .count() as u64;
        if count(counter) != logged {
            fail(format!(
                "{} = {}, {logged} connections logged as {reason}",
                counter.name(),
                count(counter)
            ));
        }
    }
    if count(Counter::DownstreamCxDestroy) != count(Counter::DownstreamCxTotal) {
        fail("not every accepted connection was destroyed".into());
    }
    let completed = report
        .finished
        .iter()
        .filter(|r| r.outcome == Outcome::Completed)
        .count() as u64;
    if count(Counter::Completed) != completed + report.unsampled {
        fail(format!(
            "completed = {}, {completed} finished records say completed",
            count(Counter::Completed)
        ));
    }
    let up: u64 = report.finished.iter().map(|r| r.bytes_received).sum();
    let down: u64 = report.finished.iter().map(|r| r.bytes_sent).sum();
    if report.unsampled == 0
        && (count(Counter::DownstreamCxRxBytesTotal) != up
            || count(Counter::DownstreamCxTxBytesTotal) != down)
    {
        fail("byte counters disagree with the finished connections".into());
    }
    if report.gauges[Gauge::ConnectionsActive as usize] != 0
        || report.gauges[Gauge::PipesLeased as usize] != 0
        || report.gauges[Gauge::BuffersInFlight as usize] != 0
        || report.gauges[Gauge::InternalPairs as usize] != 0
    {
        fail(format!("after the drain: gauges {:?}", report.gauges));
    }
    // The engine's metrics under the names the README documents (dashboards use them), each of
    // the right type with its help text; counters never go down.
    for (name, counter) in [
        ("connections_active", false),
        ("pipes_leased", false),
        ("pipes_shrunk", true),
        ("pipes_discarded", true),
        ("buffers_in_flight", false),
        ("splice_fallback_copies", true),
        ("internal_pairs_active", false),
        ("spliced_bytes", true),
        ("copied_bytes", true),
        ("busy_poll_hits", true),
        ("wait_sleeps", true),
    ] {
        match report.scraped.get(name) {
            None => fail(format!("no metric named {name} in the scrape")),
            Some(metric) if metric.counter != counter || metric.help.is_empty() => fail(format!(
                "metric {name}: exported as a {}, help {:?}",
                if metric.counter { "counter" } else { "gauge" },
                metric.help
            )),
            Some(_) => {}
        }
    }
    if !report.scrape_errors.is_empty() {
        fail(format!(
            "metrics a scrape got wrong: {:?}",
            report.scrape_errors
        ));
    }
    if report.open_fds != 0 {
        fail(format!(
            "{} descriptors still open after the shard stopped",
            report.open_fds
        ));
    }
}

/// Flows whose connections run socket to socket through the readiness path (an internal
/// listener's move bytes through queues; a loop is refused), with their completed record.
fn socket_flows_completed<'a>(
    scenario: &'a EScenario,
    report: &'a EReport,
) -> impl Iterator<Item = (&'a EFlow, &'a Finished)> + 'a {
    scenario
        .flows
        .iter()
        .filter(|flow| {
            !matches!(
                flow.route,
                ERoute::Internal | ERoute::Misdeclared | ERoute::TproxyLoop
            )
        })
        .filter_map(|flow| {
            report
                .finished
                .iter()
                .find(|r| r.client == client_addr(flow.id) && r.outcome == Outcome::Completed)
                .map(|r| (flow, r))
        })
}
