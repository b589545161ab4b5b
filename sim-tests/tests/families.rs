//! Each scenario family as a named test over a fixed block of seeds (the PR tier: 1100 seeds in
//! all), plus the determinism meta-test and the regression corpus. A failure prints its seed, the
//! scenario and the replay command; `SIM_SEED=<n>` reruns just that seed, `SIM_SEEDS=<n>` changes
//! how many each test runs.

use origdst_sim_tests::coverage::Coverage;
use origdst_sim_tests::runner::{self, test_seeds};
use origdst_sim_tests::scenario::Family;

fn family(family: Family) {
    let mut coverage = Coverage::default();
    let seeds = test_seeds(family, SEEDS_PER_FAMILY);
    let failures = runner::sweep(family, seeds.iter().copied(), &mut coverage);
    for failure in &failures {
        eprintln!("{failure}\n");
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds of {} failed (seeds and replay commands above)",
        failures.len(),
        seeds.len(),
        family.name()
    );
}

const SEEDS_PER_FAMILY: u64 = 100;

#[test]
fn timers() {
    family(Family::Timers);
}

#[test]
fn handoff() {
    family(Family::Handoff);
}

#[test]
fn happy() {
    family(Family::Happy);
}

#[test]
fn half_close() {
    family(Family::HalfClose);
}

#[test]
fn resets() {
    family(Family::Resets);
}

#[test]
fn connect_failures() {
    family(Family::ConnectFailures);
}

#[test]
fn black_hole() {
    family(Family::BlackHole);
}

#[test]
fn backpressure() {
    family(Family::Backpressure);
}

#[test]
fn redirect() {
    family(Family::Redirect);
}

#[test]
fn records() {
    family(Family::Records);
}

#[test]
fn internal() {
    family(Family::Internal);
}

#[test]
fn lifecycle() {
    family(Family::Lifecycle);
}

#[test]
fn swarm() {
    family(Family::Swarm);
}

#[test]
fn same_seed_same_trace() {
    // Determinism: one seed, run twice, must produce the identical event trace (same hash, same
    // text). Swarm draws every fault class, so it exercises the most code per seed.
    for seed in [7, 1_000_003, 42_424_242] {
        let (_, first, _) = runner::run_seed(seed, Family::Swarm, true);
        let (_, second, _) = runner::run_seed(seed, Family::Swarm, true);
        assert!(!first.trace.is_empty(), "the trace records events");
        assert_eq!(
            first.trace, second.trace,
            "seed {seed} diverged between two runs"
        );
        assert_eq!(first.trace_hash, second.trace_hash);
    }
    let (_, a, _) = runner::run_seed(1, Family::Swarm, false);
    let (_, b, _) = runner::run_seed(2, Family::Swarm, false);
    assert_ne!(
        a.trace_hash, b.trace_hash,
        "different seeds, different runs: the hash means something"
    );
}

#[test]
fn regression_corpus() {
    // Seeds that once failed, kept forever: `family seed` per line.
    let corpus = include_str!("../corpus/seeds.txt");
    let mut ran = 0;
    for line in corpus
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, seed) = line.split_once(' ').expect("`family seed` per line");
        let family =
            Family::parse(name).unwrap_or_else(|| panic!("unknown family {name:?} in corpus"));
        let seed: u64 = seed.trim().parse().expect("numeric seed");
        let (scenario, _, violations) = runner::run_seed(seed, family, false);
        assert!(
            violations.is_empty(),
            "corpus seed {seed} ({name}) fails again: {violations:?}\n{scenario}"
        );
        ran += 1;
    }
    assert!(ran > 0, "the corpus is not empty");
}

#[test]
fn sweep_reaches_every_required_state() {
    // Coverage as a test result: a small all-family sweep must hit every "sometimes" counter.
    let mut coverage = Coverage::default();
    for family in Family::ALL {
        let failures = runner::sweep(family, (0..40).map(|i| 9_000_000 + i), &mut coverage);
        assert!(failures.is_empty(), "{}", failures[0]);
    }
    assert_eq!(
        coverage.missing(),
        Vec::<&str>::new(),
        "states never reached by 440 seeds"
    );
}
