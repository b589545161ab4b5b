//! What must hold for each flow: its bytes, how it ended and who saw what, its timers, its
//! connect attempts, its refusals.

use origdst_core::outcome::Outcome;
use origdst_core::stats::Counter;
use origdst_engine::report::Finished;
use origdst_engine::shard::errno_kind;

use super::{clean, closed_at, refused_connects};
use crate::engine::harness::EReport;
use crate::engine::scenario::{
    EFault, EHead, ERoute, EScenario, HEAD_TIMEOUT_MS, IDLE_TIMEOUT_MS, PUSHED_ENDPOINTS,
    SPREAD_ENDPOINTS, client_addr, dest, max_attempts,
};
use crate::engine::workload::{SideEnd, prefix};

/// Checks every flow of the run.
pub(super) fn check(scenario: &EScenario, report: &EReport, fail: &mut impl FnMut(String)) {
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
        // So does removing the flow's listener (its pod's, or one a push removed): it stops at
        // once, its backlog is reset.
        let listener_removed = scenario.removed_at_ms(flow).is_some();
        let shut_out = (scenario.drain_at_ms.is_some() || listener_removed)
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
            // Cut by an early drain, or by its listener's removal: reset at its deadline.
            || ((scenario.drain_at_ms.is_some() || scenario.removed_at_ms(flow).is_some())
                && record.outcome == Outcome::DrainAborted)
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
            if (!matches!(client.end, SideEnd::Error(_)) && !client.aborted) || server.ep.is_some()
            {
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
                .is_some_and(|u| SPREAD_ENDPOINTS.contains(&u) || PUSHED_ENDPOINTS.contains(&u))
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
            // (A client whose download had ended already — the server answered first and
            // half-closed — meets its reset on the write side, when the pause is over.)
            let client_reset = matches!(client.end, SideEnd::Error(_))
                || (!flow.client_first
                    && client.end == SideEnd::Eof
                    && client.write_error.is_some());
            if !starved && (!client_reset || !matches!(server.end, SideEnd::Error(_))) {
                fail(format!(
                    "flow {f} (paused {ms} ms): both sides must be reset, client {:?}, server {:?}",
                    client.end, server.end
                ));
            }
            if record.outcome == Outcome::IdleTimeout {
                // (When the reset: on the server's side where the client's read side had ended.)
                let reset_at = if matches!(client.end, SideEnd::Error(_)) {
                    client.ended_at
                } else {
                    server.ended_at
                };
                let waited = reset_at.saturating_sub(last);
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
                let_go_promptly(
                    f,
                    "client",
                    client.ended_at,
                    closed_at(report, record),
                    fail,
                );
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
                let_go_promptly(
                    f,
                    "server",
                    server.ended_at,
                    closed_at(report, record),
                    fail,
                );
                if !matches!(client.end, SideEnd::Error(_)) {
                    fail(format!(
                        "flow {f} ({fault:?}): the client must see a reset, it ended {:?}",
                        client.end
                    ));
                }
            }
            EFault::UpstreamReset(_)
                if scenario.relay
                    && scenario.faults.relay_refused == 0
                    && !flow.client_first
                    && flow.pause.is_some()
                    && !starved =>
            {
                // A relayed, half-closed connection whose server resets while its client is
                // paused: the relay's look at its sink (a timer backing off to 200 ms) must
                // notice, not the client's next write two seconds later.
                let closed = closed_at(report, record);
                if closed > server.ended_at + 250_000_000 {
                    fail(format!(
                        "flow {f}: the server reset at {} ms behind the relay, the proxy let go \
                         only at {} ms",
                        server.ended_at / 1_000_000,
                        closed / 1_000_000
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
}

/// A reset the proxy can see on a socket it watches is acted on within a tick or two (50 ms), not
/// at the next timeout: `who` reset at `reset_at`, the proxy closed the connection at `closed`.
fn let_go_promptly(f: usize, who: &str, reset_at: u64, closed: u64, fail: &mut impl FnMut(String)) {
    if closed > reset_at + 50_000_000 {
        fail(format!(
            "flow {f}: the {who} reset at {} ms, the proxy let go only at {} ms",
            reset_at / 1_000_000,
            closed / 1_000_000
        ));
    }
}
