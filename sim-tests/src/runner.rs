//! Running seeds: one at a time, or a sweep with coverage; failures carry everything needed to
//! replay them.

use std::fmt;

use crate::coverage::Coverage;
use crate::oracle::{self, Violation};
use crate::scenario::{Family, Scenario};
use crate::world::{self, Report};

/// A seed that broke a rule.
#[derive(Debug)]
pub struct Failure {
    /// The scenario (seed and family included).
    pub scenario: Scenario,
    /// What broke.
    pub violations: Vec<Violation>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "FAILED seed={} family={}",
            self.scenario.seed,
            self.scenario.family.name()
        )?;
        for violation in &self.violations {
            writeln!(f, "  {violation}")?;
        }
        write!(f, "{}", self.scenario)?;
        write!(
            f,
            "replay: SIM_SEED={} cargo test -p origdst-sim-tests --test families {}   \
             (trace: cargo run -p origdst-sim-tests --release -- --family {} --seed {} --trace)",
            self.scenario.seed,
            test_name(self.scenario.family),
            self.scenario.family.name(),
            self.scenario.seed
        )
    }
}

/// Runs one seed of `family`.
pub fn run_seed(seed: u64, family: Family, keep_trace: bool) -> (Scenario, Report, Vec<Violation>) {
    let scenario = Scenario::draw(seed, family);
    let report = world::run(&scenario, keep_trace);
    let violations = oracle::check(&scenario, &report);
    (scenario, report, violations)
}

/// Runs `seeds` of `family`, adding to `coverage`; returns the failures.
pub fn sweep(
    family: Family,
    seeds: impl IntoIterator<Item = u64>,
    coverage: &mut Coverage,
) -> Vec<Failure> {
    let mut failures = Vec::new();
    for seed in seeds {
        let (scenario, report, violations) = run_seed(seed, family, false);
        coverage.observe(&scenario, &report);
        if !violations.is_empty() {
            failures.push(Failure {
                scenario,
                violations,
            });
            if fail_fast() {
                break;
            }
        }
    }
    failures
}

/// `SIM_FAIL_FAST=1` stops a block of seeds at its first failure: a mutation run needs one
/// failing seed per mutant, not all of them.
pub fn fail_fast() -> bool {
    std::env::var_os("SIM_FAIL_FAST").is_some_and(|v| v == "1")
}

/// The seeds a test runs: `SIM_SEED=<n>` replays one; otherwise `count` seeds (or `SIM_SEEDS`)
/// starting from a fixed base per family, so CI runs the same seeds every time.
pub fn test_seeds(family: Family, count: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(count);
    let base = 1_000_000 * (family as u64 + 1);
    (base..base + count).collect()
}

/// The `tests/families.rs` test that runs `family`.
pub fn test_name(family: Family) -> String {
    family.name().replace('-', "_")
}
