//! What must hold for a run of the engine: every byte, each connection's outcome, the counters,
//! and nothing left open.

use std::fmt;

use origdst_core::outcome::Outcome;
use origdst_core::stats::Counter;
use origdst_engine::log_budget::LOG_LINES_PER_SECOND_MAX;
use origdst_engine::report::{Finished, Gauge};
use origdst_engine::shard::errno_kind;

use super::harness::EReport;
use super::scenario::{
    DRAIN_TIMEOUT_MS, EFault, EHead, ERoute, EScenario, HEAD_TIMEOUT_MS, IDLE_TIMEOUT_MS, PROXY_IP,
    SPREAD_ENDPOINTS, client_addr, dest, max_attempts,
};
use super::workload::{SideEnd, prefix};

/// A broken rule.
#[derive(Debug, Clone)]
pub struct EViolation(pub String);

impl fmt::Display for EViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything that must hold for a run.
pub fn check(scenario: &EScenario, report: &EReport) -> Vec<EViolation> {
    let mut v = Vec::new();
    let mut fail = |s: String| v.push(EViolation(s));
    if let Some(err) = &report.error {
        fail(format!("the shard failed: {err}"));
    }
    for flow in &scenario.flows {
        let (client, server) = &report.sides[flow.id];
        let f = flow.id;
        // What the client uploads, its request head included (header mode).
        let upload = prefix(flow).len() as u64 + flow.upload;
        if let Some(at) = client.mismatch_at {
            fail(format!(
                "flow {f}: the client received a wrong byte at {at}"
            ));
        }
        if let Some(at) = server.mismatch_at {
            fail(format!(
                "flow {f}: the server received a wrong byte at {at}"
            ));
        }
        if client.end == SideEnd::Eof && client.received != flow.download {
            fail(format!(
                "flow {f}: clean EOF after {} of {} bytes (truncation disguised as success)",
                client.received, flow.download
            ));
        }
        if server.end == SideEnd::Eof && server.received != upload {
            let allowed = matches!(
                flow.fault,
                EFault::UpstreamReset(_) | EFault::UpstreamResetStuck
            );
            if !allowed {
                fail(format!(
                    "flow {f}: the server saw a clean EOF after {} of {} bytes",
                    server.received, upload
                ));
            }
        }
        // An internal-listener flow is two connections (outer and inner, the inner with the
        // outer's client): judge the inner one, which dials the server.
        let records: Vec<&Finished> = report
            .finished
            .iter()
            .filter(|r| r.client == client_addr(f))
            .collect();
        let record = records
            .iter()
            .find(|r| r.upstream == Some(dest(flow)))
            .or_else(|| records.iter().find(|r| r.upstream.is_some()))
            .or(records.first())
            .copied();
        let limited = scenario.conn_limit.is_some()
            && records.first().is_some_and(|r| {
                matches!(r.outcome, Outcome::Overflow | Outcome::ConnectFailed(_))
            });
        // With the access log sampled, a completed connection may have left no record: a flow
        // its client saw through cleanly is judged by its bytes alone (checked above).
        let thinned = scenario.sample_every > 1 && clean(flow, client);
        if thinned {
            continue;
        }
        if flow.route == ERoute::Internal && records.len() == 1 && !client.aborted && !limited {
            fail(format!(
                "flow {f}: an internal-listener flow left one connection record, not two"
            ));
        }
        // An early drain closes the listeners: a flow that dials later is refused by the kernel,
        // one still in the backlog is reset, one that had not started yet never runs.
        let shut_out = scenario.drain_at_ms.is_some()
            && (client.ep.is_none()
                || client.refused
                || matches!(
                    client.end,
                    SideEnd::Error(libc::ECONNREFUSED | libc::ECONNRESET)
                ));
        let Some(record) = record else {
            // A client that reset before it was accepted is gone: nothing to relay or log.
            if !client.aborted && !shut_out {
                fail(format!("flow {f}: the proxy logged no finished connection"));
            }
            continue;
        };
        // A reset reaches the client a tick or two after the proxy logged the close, never at
        // some later event (nothing may wait in a closing descriptor; an internal listener's
        // inner connection that fails resets its outer one at once); checked where the client
        // reads everything as it comes.
        let first_close = report
            .finished
            .iter()
            .zip(&report.finished_at)
            .filter(|(r, _)| r.client == client_addr(f))
            .map(|(_, &at)| at)
            .min();
        if flow.read_per_tick == 0
            && !client.aborted
            && matches!(client.end, SideEnd::Error(_))
            && let Some(at) = first_close
            && client.ended_at > at + 50_000_000
        {
            fail(format!(
                "flow {f}: the proxy closed at {} ms, the client saw the reset only at {} ms",
                at / 1_000_000,
                client.ended_at / 1_000_000
            ));
        }
        // Descriptor exhaustion may leave a connection parked until the drain resets it, or past
        // its connect timeout (which bounds the wait for a descriptor too).
        let parked = report.stats.get(Counter::UpstreamCxParkedNoFd) > 0;
        let starved = (scenario.fd_limit < 100
            && (record.outcome == Outcome::DrainAborted
                || (parked && record.outcome == Outcome::ConnectTimeout)))
            // Cut by an early drain: reset at its deadline.
            || (scenario.drain_at_ms.is_some() && record.outcome == Outcome::DrainAborted)
            // Past the connection limit: reset at once (an internal listener's inner
            // connection needs a slot too; without one its outer connection fails to connect).
            || (scenario.conn_limit.is_some()
                && (record.outcome == Outcome::Overflow
                    || (flow.route == ERoute::Internal
                        && matches!(record.outcome, Outcome::ConnectFailed(_)))));
        // The kernel refused a poll of this flow's (ENOSPC): a head poll's refusal ends the
        // connection (the client reset, nothing dialled); a connect poll's fails that attempt,
        // retried while attempts remain.
        let connect_refused = refused_connects(report, flow);
        if report.refused_head_polls.contains(&client_addr(f)) {
            let want = Outcome::ClientFailed(errno_kind(libc::ENOSPC));
            if record.outcome != want && !starved {
                fail(format!(
                    "flow {f}: its head poll was refused, the proxy ended it as {:?}, not {want:?}",
                    record.outcome
                ));
            }
            if !matches!(client.end, SideEnd::Error(_)) || server.ep.is_some() {
                fail(format!(
                    "flow {f}: its head poll was refused, yet the client ended {:?} and the server was {}",
                    client.end,
                    if server.ep.is_some() {
                        "reached"
                    } else {
                        "not reached"
                    }
                ));
            }
            continue;
        }
        if connect_refused > 0 && (flow.route == ERoute::Spread || flow.fault != EFault::None) {
            // Mixed with the flow's own fault, or on endpoints other flows share: any outcome a
            // connect can have is right (its bytes are checked above).
            continue;
        }
        let looping = matches!(flow.route, ERoute::Misdeclared | ERoute::TproxyLoop);
        if connect_refused >= max_attempts(flow) && !starved && !looping {
            let want = Outcome::ConnectFailed(errno_kind(libc::ENOSPC));
            if record.outcome != want || !matches!(client.end, SideEnd::Error(_)) {
                fail(format!(
                    "flow {f}: each of its {connect_refused} connect polls refused, the proxy ended it as {:?} (not {want:?}), the client {:?}",
                    record.outcome, client.end
                ));
            }
            continue;
        }
        if flow.route == ERoute::Spread {
            // To one of the STATIC endpoints: the whole upload, then the sink's FIN.
            if client.aborted || starved {
                continue;
            }
            if record.outcome != Outcome::Completed
                || client.end != SideEnd::Eof
                || record.bytes_received != upload
            {
                fail(format!(
                    "flow {f} (STATIC endpoints): ended {} after {} of {upload} bytes, client {:?}",
                    record.outcome.name(),
                    record.bytes_received,
                    client.end
                ));
            }
            if !record
                .upstream
                .is_some_and(|u| SPREAD_ENDPOINTS.contains(&u))
            {
                fail(format!(
                    "flow {f} (STATIC endpoints): dialled {:?}, not an endpoint of its cluster",
                    record.upstream
                ));
            }
            continue;
        }
        // The silence the proxy saw: from the last byte it delivered (the server's last receive,
        // or the pause itself if that came later) to the end of the pause. Under descriptor
        // exhaustion the proxy may accept late and see a shorter one.
        let silence = client.paused.map(|(paused_at, until)| {
            let last = paused_at.max(server.last_rx_at);
            (last, until.saturating_sub(last) / 1_000_000)
        });
        let margin_ms = 50;
        if let Some((_, silent_ms)) = silence
            && silent_ms.abs_diff(IDLE_TIMEOUT_MS) <= margin_ms
        {
            // Too close to the idle timeout to say which way it goes.
            continue;
        }
        if let Some((last, silent_ms)) = silence
            && silent_ms > IDLE_TIMEOUT_MS
        {
            let ms = silent_ms;
            // Silent past the idle timeout: both sides reset, an idle timeout after the last
            // byte moved, not before.
            if record.outcome != Outcome::IdleTimeout && !starved {
                fail(format!(
                    "flow {f} (paused {ms} ms): the proxy ended it as {}, not idle_timeout",
                    record.outcome.name()
                ));
            }
            if !starved
                && (!matches!(client.end, SideEnd::Error(_))
                    || !matches!(server.end, SideEnd::Error(_)))
            {
                fail(format!(
                    "flow {f} (paused {ms} ms): both sides must be reset, client {:?}, server {:?}",
                    client.end, server.end
                ));
            }
            if record.outcome == Outcome::IdleTimeout {
                let waited = client.ended_at.saturating_sub(last);
                let timeout = IDLE_TIMEOUT_MS * 1_000_000;
                if waited < timeout || waited > timeout + margin_ms * 1_000_000 {
                    fail(format!(
                        "flow {f}: reset {} ms after the last byte moved, idle_timeout is {IDLE_TIMEOUT_MS} ms",
                        waited / 1_000_000
                    ));
                }
            }
            continue;
        }
        if let Some(reason) = flow.head.refusal() {
            // Refused on its head: logged with the reason, the client reset, no upstream ever.
            if record.outcome.name() != reason && !starved {
                fail(format!(
                    "flow {f} (head {:?}): the proxy ended it as {}, not {reason}",
                    flow.head,
                    record.outcome.name()
                ));
            }
            if !matches!(client.end, SideEnd::Error(_)) {
                fail(format!(
                    "flow {f} (head {:?}): the client must see a reset, it ended {:?}",
                    flow.head, client.end
                ));
            }
            if server.ep.is_some() || record.upstream.is_some() {
                fail(format!(
                    "flow {f} (head {:?}): a refused head reached an upstream ({:?})",
                    flow.head, record.upstream
                ));
            }
            if flow.head == EHead::Never && record.outcome.name() == reason {
                // Not before the head timeout from its dial, nor much after it from its accept
                // (which an accept error or descriptor exhaustion may delay).
                let waited = client.ended_at.saturating_sub(flow.start_ms * 1_000_000);
                let age = u64::try_from(record.age.as_nanos()).unwrap_or(u64::MAX);
                let timeout = HEAD_TIMEOUT_MS * 1_000_000;
                if waited < timeout || age > timeout + 50_000_000 {
                    fail(format!(
                        "flow {f}: a silent client was reset {} ms after its dial, {} ms after its accept (http_head_timeout {HEAD_TIMEOUT_MS} ms)",
                        waited / 1_000_000,
                        age / 1_000_000
                    ));
                }
            }
            continue;
        }
        if matches!(flow.route, ERoute::Misdeclared | ERoute::TproxyLoop) {
            // The record was never applied (or TPROXY captured the proxy's own connection): the
            // platform sent the proxy's connection back to it, the proxy refused its own upstream
            // (no mark visible), and the client was reset.
            if !matches!(
                record.outcome,
                Outcome::ConnectFailed(_) | Outcome::UpstreamFailed(_)
            ) && !starved
            {
                fail(format!(
                    "flow {f} ({:?}: its own connection came back to the proxy): the proxy ended it as {}",
                    flow.route,
                    record.outcome.name()
                ));
            }
            if !matches!(client.end, SideEnd::Error(_)) {
                fail(format!(
                    "flow {f} ({:?}): the client must see a reset, it ended {:?}",
                    flow.route, client.end
                ));
            }
            if server.ep.is_some() {
                fail(format!(
                    "flow {f} ({:?}): the looped connection reached the server",
                    flow.route
                ));
            }
            continue;
        }
        // A server that read everything before its reset byte came never reset: that flow is a
        // normal one.
        // Likewise one that reset only after the proxy had relayed everything both ways (the
        // rest of the upload was in its receive queue): the proxy finished first, as TCP would.
        let relayed_all = record.bytes_received == upload
            && record.bytes_sent == flow.download
            && client.end == SideEnd::Eof
            && client.received == flow.download;
        let fault = match flow.fault {
            EFault::UpstreamReset(_) | EFault::UpstreamResetStuck
                if !server.aborted || relayed_all =>
            {
                EFault::None
            }
            fault => fault,
        };
        let want: fn(Outcome) -> bool = match fault {
            EFault::None => |o| o == Outcome::Completed,
            EFault::ClientReset(_) | EFault::ClientGivesUp(_) => {
                |o| matches!(o, Outcome::ClientFailed(_))
            }
            EFault::UpstreamReset(_) | EFault::UpstreamResetStuck => {
                |o| matches!(o, Outcome::UpstreamFailed(_))
            }
            EFault::Refused | EFault::Unreachable | EFault::SocketFails => {
                |o| matches!(o, Outcome::ConnectFailed(_))
            }
            EFault::BlackHole => |o| o == Outcome::ConnectTimeout,
        };
        if !want(record.outcome) && !starved {
            fail(format!(
                "flow {f} ({fault:?}): the proxy ended it as {}",
                record.outcome.name()
            ));
        }
        match fault {
            EFault::ClientGivesUp(_) if !starved => {
                // Noticed on the client's socket while the proxy waited on the connect: within
                // a tick or two of the reset, not at the connect timeout.
                let closed = report
                    .finished
                    .iter()
                    .position(|r| std::ptr::eq(r, record))
                    .map(|i| report.finished_at[i])
                    .unwrap_or(0);
                if closed > client.ended_at + 50_000_000 {
                    fail(format!(
                        "flow {f}: the client reset at {} ms, the proxy let go only at {} ms",
                        client.ended_at / 1_000_000,
                        closed / 1_000_000
                    ));
                }
            }
            EFault::ClientGivesUp(_) => {}
            EFault::None if !starved => {
                if client.end != SideEnd::Eof || client.received != flow.download {
                    fail(format!(
                        "flow {f}: the client got {} of {} bytes and ended {:?}",
                        client.received, flow.download, client.end
                    ));
                }
                if server.received != upload && !server.aborted {
                    fail(format!(
                        "flow {f}: the server got {} of {} bytes",
                        server.received, upload
                    ));
                }
                if record.bytes_received != upload || record.bytes_sent != flow.download {
                    fail(format!(
                        "flow {f}: the proxy counted {}/{} bytes, the flow moved {}/{}",
                        record.bytes_received, record.bytes_sent, upload, flow.download
                    ));
                }
                if record.upstream != Some(dest(flow)) {
                    fail(format!(
                        "flow {f}: the proxy dialled {:?}, the client dialled {}",
                        record.upstream,
                        dest(flow)
                    ));
                }
            }
            EFault::UpstreamResetStuck if !starved => {
                // Noticed on the upstream socket while the proxy only waited to write to the
                // client: within a tick or two of the reset, not once the client drained the pipe.
                let closed = report
                    .finished
                    .iter()
                    .position(|r| std::ptr::eq(r, record))
                    .map(|i| report.finished_at[i])
                    .unwrap_or(0);
                if closed > server.ended_at + 50_000_000 {
                    fail(format!(
                        "flow {f}: the server reset at {} ms, the proxy let go only at {} ms",
                        server.ended_at / 1_000_000,
                        closed / 1_000_000
                    ));
                }
                if !matches!(client.end, SideEnd::Error(_)) {
                    fail(format!(
                        "flow {f} ({fault:?}): the client must see a reset, it ended {:?}",
                        client.end
                    ));
                }
            }
            EFault::UpstreamReset(_)
            | EFault::UpstreamResetStuck
            | EFault::Refused
            | EFault::BlackHole
            | EFault::Unreachable
            | EFault::SocketFails => {
                // The reset reaches the client unless it had already read everything cleanly.
                let complete = client.end == SideEnd::Eof && client.received == flow.download;
                if !matches!(client.end, SideEnd::Error(_)) && !complete && !starved {
                    fail(format!(
                        "flow {f} ({fault:?}): the client must see a reset, it ended {:?}",
                        client.end
                    ));
                }
            }
            EFault::ClientReset(_) => {
                if server.ep.is_some() && server.end == SideEnd::Eof && server.received < upload {
                    fail(format!(
                        "flow {f}: the client reset, the server saw a clean EOF"
                    ));
                }
            }
            EFault::None => {}
        }
    }
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
            .filter(|(dest, _)| !SPREAD_ENDPOINTS.contains(dest))
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
    // per endpoint, whatever order they came in.
    let mut spread = [0u64; SPREAD_ENDPOINTS.len()];
    for record in &report.finished {
        if let Some(at) = SPREAD_ENDPOINTS
            .iter()
            .position(|&e| record.upstream == Some(e))
        {
            spread[at] += 1;
        }
    }
    if report.unsampled == 0
        && spread.iter().max().unwrap_or(&0) - spread.iter().min().unwrap_or(&0) > 1
    {
        fail(format!(
            "round robin over three STATIC endpoints gave {spread:?} connections"
        ));
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
    // (Socket to socket: an internal listener's connections move bytes through queues.)
    let relayed = scenario
        .flows
        .iter()
        .filter(|flow| {
            !matches!(
                flow.route,
                ERoute::Internal | ERoute::Misdeclared | ERoute::TproxyLoop
            )
        })
        .any(|flow| {
            report.finished.iter().any(|r| {
                r.client == client_addr(flow.id)
                    && r.outcome == Outcome::Completed
                    && r.bytes_received + r.bytes_sent > 0
            })
        });
    if scenario.pipes && scenario.fd_limit >= 100 && relayed && report.pipes_created == 0 {
        fail("pipes configured and bytes relayed, but no pipe was ever made".into());
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
    if !report.went_down.is_empty() {
        fail(format!("counters went down: {:?}", report.went_down));
    }
    if report.open_fds != 0 {
        fail(format!(
            "{} descriptors still open after the shard stopped",
            report.open_fds
        ));
    }
    v
}

/// The client saw the flow through: every byte of its download, then a clean end.
fn clean(flow: &super::scenario::EFlow, client: &super::workload::Side) -> bool {
    !client.aborted && client.end == SideEnd::Eof && client.received == flow.download
}

/// Connect polls the kernel refused while `flow`'s destination was dialled (for the STATIC
/// endpoints, any of them).
fn refused_connects(report: &EReport, flow: &super::scenario::EFlow) -> u32 {
    let refused = |dest| {
        report
            .refused_connect_polls
            .get(&dest)
            .copied()
            .unwrap_or(0)
    };
    match flow.route {
        ERoute::Spread => SPREAD_ENDPOINTS.into_iter().map(refused).sum(),
        _ => refused(dest(flow)),
    }
}
