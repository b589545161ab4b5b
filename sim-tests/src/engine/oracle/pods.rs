//! What must hold for pods (listener groups added and removed while the shard runs): a pod's
//! connections are dialled from its namespace and logged as its own; once it is removed nothing
//! new reaches its listener, and what it had open ends within `drain_timeout`; its counters match
//! the connection log.

use std::collections::BTreeSet;

use origdst_core::outcome::Outcome;

use crate::engine::harness::EReport;
use crate::engine::scenario::{DRAIN_TIMEOUT_MS, EPod, EScenario, client_addr, dest};
use crate::engine::workload::SideEnd;

/// How long after a removal the shard surely applied it (it acts on its next wake: a tick).
const REMOVAL_SETTLES_MS: u64 = 2;

/// Checks the run's pods.
pub(super) fn check(scenario: &EScenario, report: &EReport, fail: &mut impl FnMut(String)) {
    for flow in &scenario.flows {
        let f = flow.id;
        let (client, server) = &report.sides[f];
        let records: Vec<usize> = report
            .finished
            .iter()
            .enumerate()
            .filter(|(_, r)| r.client == client_addr(f))
            .map(|(i, _)| i)
            .collect();
        let want_netns = flow.pod.map(EPod::netns);
        if let Some(dialled) = report.connect_netns.get(&dest(flow))
            && *dialled != BTreeSet::from([want_netns])
        {
            fail(format!(
                "flow {f} (pod {:?}): dialled from namespaces {dialled:?}, not {want_netns:?}",
                flow.pod
            ));
        }
        let want_group = flow.pod.map(EPod::name);
        for &i in &records {
            let group = report.finished[i].group.as_deref().map(str::to_string);
            if group != want_group {
                fail(format!(
                    "flow {f}: logged as pod {group:?}, not {want_group:?}"
                ));
            }
        }
        // Its listener removed (its pod's, or the one a push removed): nothing new reaches it,
        // what it had open ends within the drain.
        let Some(removed_ms) = scenario.removed_at_ms(flow) else {
            continue;
        };
        let whose = flow.pod.map_or_else(
            || "the pushed-away listener".to_string(),
            |pod| format!("pod {pod}"),
        );
        if flow.start_ms > removed_ms + REMOVAL_SETTLES_MS {
            // Dialled after its listener was removed: the kernel refuses it, nothing relays it.
            if !records.is_empty() || server.ep.is_some() {
                fail(format!(
                    "flow {f}: dialled {} ms after {whose} was removed, yet the proxy served it",
                    flow.start_ms - removed_ms
                ));
            }
            if !client.refused && !matches!(client.end, SideEnd::Error(_)) {
                fail(format!(
                    "flow {f}: dialled after {whose} was removed, the client saw {:?} (not a refusal)",
                    client.end
                ));
            }
        }
        let deadline = (removed_ms + DRAIN_TIMEOUT_MS + 50) * 1_000_000;
        for &i in &records {
            let at = report.finished_at[i];
            if at > deadline {
                fail(format!(
                    "flow {f}: {whose} was removed at {removed_ms} ms (drain_timeout {DRAIN_TIMEOUT_MS} ms), its connection closed only at {} ms",
                    at / 1_000_000
                ));
            }
        }
    }
    // Each pod's counters against the connection log (every connection logged: not sampled).
    for (index, pod) in scenario.pods.iter().enumerate() {
        let name = EPod::name(index);
        let logged: Vec<_> = report
            .finished
            .iter()
            .filter(|r| r.group.as_deref() == Some(name.as_str()))
            .collect();
        let Some(counts) = report.groups.get(&name) else {
            fail(format!("pod {index}: its counters were never published"));
            continue;
        };
        if counts.active != 0 {
            fail(format!(
                "pod {index}: {} connections still open at the end",
                counts.active
            ));
        }
        if counts.removed != pod.remove_at_ms.is_some() {
            fail(format!(
                "pod {index}: published as removed={}, removed at {:?}",
                counts.removed, pod.remove_at_ms
            ));
        }
        if scenario.sample_every > 1 {
            continue;
        }
        if counts.accepted != logged.len() as u64 {
            fail(format!(
                "pod {index}: {} connections counted, {} logged",
                counts.accepted,
                logged.len()
            ));
        }
        let drained = logged
            .iter()
            .filter(|r| r.outcome == Outcome::DrainAborted)
            .count() as u64;
        // (The whole shard's drain at the end resets with the same outcome; only the pod's
        // own drain counts here.)
        if counts.drain_reset > drained {
            fail(format!(
                "pod {index}: {} drain resets counted, {drained} connections ended drain_aborted",
                counts.drain_reset
            ));
        }
        let bytes_up: u64 = logged.iter().map(|r| r.bytes_received).sum();
        let bytes_down: u64 = logged.iter().map(|r| r.bytes_sent).sum();
        if (counts.bytes_up, counts.bytes_down) != (bytes_up, bytes_down) {
            fail(format!(
                "pod {index}: bytes counted {}/{}, logged {bytes_up}/{bytes_down}",
                counts.bytes_up, counts.bytes_down
            ));
        }
    }
}
