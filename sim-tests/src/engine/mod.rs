//! The production shard under the simulated kernel: `origdst_engine::shard::Shard` — the code
//! that runs on io_uring — driven by `runtime-sim`'s [`SimKernel`] from one `u64` seed. Clients
//! dial redirected destinations, servers answer, faults happen (resets at any byte, refused and
//! black-holed upstreams, slow readers, a descriptor limit, short and reordered completions,
//! spurious EAGAIN, shrunk pipes); the oracle checks every byte of every flow (each flow's bytes
//! are its own, so a byte that crosses flows is caught), how each connection ended, the counters,
//! and that descriptors, pipes and connections are back to zero after the drain.
//!
//! `scenario` draws a run from its seed, `workload` is the clients and servers outside the proxy,
//! `harness` builds the shard over the simulated kernel and runs it, `oracle` judges the result.

mod harness;
mod logs;
mod oracle;
mod push;
mod scenario;
mod workload;

pub use self::harness::{EReport, Scraped, run};
pub use self::logs::LogLines;

/// Runs `scenario` and judges it; a panic in the shard or the simulated kernel (an assertion an
/// invariant broke) is a violation of this seed like any other, not the end of the block.
pub fn run_checked(scenario: &EScenario) -> Vec<EViolation> {
    run_judged(scenario).0
}

/// [`run_checked`], with the report when the run did not panic.
pub fn run_judged(scenario: &EScenario) -> (Vec<EViolation>, Option<EReport>) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let report = run(scenario);
        let violations = check(scenario, &report);
        (violations, Some(report))
    }));
    outcome.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic without a message".to_owned());
        (vec![EViolation(format!("panicked: {message}"))], None)
    })
}
pub use self::oracle::{EViolation, check};
pub use self::scenario::{EFault, EFlow, EHead, ERoute, EScenario, byte, head};
pub use self::workload::{Side, SideEnd};
