//! What must hold for a run of the engine: every byte, each connection's outcome, the counters,
//! and nothing left open.

mod flows;
mod pods;
mod push;
mod run;

use std::fmt;

use origdst_engine::report::Finished;

use super::harness::EReport;
use super::scenario::{ERoute, EScenario, PUSHED_ENDPOINTS, SPREAD_ENDPOINTS, dest};
use super::workload::SideEnd;

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
    flows::check(scenario, report, &mut fail);
    run::check(scenario, report, &mut fail);
    pods::check(scenario, report, &mut fail);
    push::check(scenario, report, &mut fail);
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
        ERoute::Spread => SPREAD_ENDPOINTS
            .into_iter()
            .chain(PUSHED_ENDPOINTS)
            .map(refused)
            .sum(),
        _ => refused(dest(flow)),
    }
}

/// When the proxy logged `record`'s close (virtual ns).
fn closed_at(report: &EReport, record: &Finished) -> u64 {
    report
        .finished
        .iter()
        .position(|r| std::ptr::eq(r, record))
        .map_or(0, |i| report.finished_at[i])
}
