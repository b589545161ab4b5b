//! What must hold for a control-plane push (one reload that removes a listener, adds one and
//! moves a cluster's endpoints while flows run): a cluster change applies to new connections
//! only — dialled after the push, a connection goes to the pushed endpoints, dialled before, to
//! the old ones, and an open one is left alone (its bytes and clean end are the flow checks');
//! the removed listener refuses what comes after and drains what it had (the removal checks,
//! shared with pods); the added one serves; both listeners' counters match the log.

use crate::engine::harness::EReport;
use crate::engine::scenario::{
    ERoute, EScenario, PUSH_SETTLES_MS, PUSHED_ENDPOINTS, SPREAD_ENDPOINTS, client_addr,
};

/// Checks the run's push.
pub(super) fn check(scenario: &EScenario, report: &EReport, fail: &mut impl FnMut(String)) {
    let Some(at) = scenario.push_at_ms else {
        return;
    };
    let at_ns = at * 1_000_000;
    for flow in scenario.flows.iter().filter(|f| f.route == ERoute::Spread) {
        let f = flow.id;
        let Some((record, closed)) = report
            .finished
            .iter()
            .zip(&report.finished_at)
            .find(|(r, _)| r.client == client_addr(f) && r.upstream.is_some())
        else {
            continue;
        };
        let Some(upstream) = record.upstream else {
            continue;
        };
        // Routed when accepted: the push applies from the shard's first wake at or after it.
        let accepted = closed.saturating_sub(record.age.as_nanos() as u64);
        let pushed = PUSHED_ENDPOINTS.contains(&upstream);
        if accepted > at_ns + PUSH_SETTLES_MS * 1_000_000 && !pushed {
            fail(format!(
                "flow {f}: accepted {} ms after the push moved its cluster to {PUSHED_ENDPOINTS:?}, relayed to {upstream}",
                (accepted - at_ns) / 1_000_000
            ));
        }
        if accepted < at_ns && !SPREAD_ENDPOINTS.contains(&upstream) {
            fail(format!(
                "flow {f}: accepted {} ms before the push, relayed to {upstream} (a push applies to new connections only)",
                (at_ns - accepted) / 1_000_000
            ));
        }
    }
    if scenario.drain_at_ms.is_some_and(|drain| drain <= at) {
        // The shard drained before the push came: nothing was pushed.
        return;
    }
    for (name, route, removed) in [
        ("doomed", ERoute::Doomed, true),
        ("fresh", ERoute::Fresh, false),
    ] {
        let Some(counts) = report.groups.get(name) else {
            fail(format!(
                "the {name} listener: its counters were never published"
            ));
            continue;
        };
        if counts.removed != removed || counts.active != 0 {
            fail(format!(
                "the {name} listener: published removed={} with {} open at the end (removed={removed} expected, none open)",
                counts.removed, counts.active
            ));
        }
        if scenario.sample_every > 1 {
            continue;
        }
        let logged = scenario
            .flows
            .iter()
            .filter(|flow| flow.route == route)
            .map(|flow| {
                report
                    .finished
                    .iter()
                    .filter(|r| r.client == client_addr(flow.id))
                    .count() as u64
            })
            .sum::<u64>();
        if counts.accepted != logged {
            fail(format!(
                "the {name} listener: {} connections counted, {logged} logged",
                counts.accepted
            ));
        }
    }
}
