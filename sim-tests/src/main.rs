//! The sweep: many seeds across the families, with seeds/s, failures (with their seeds) and the
//! coverage report; exits non-zero on a failure or on a required counter never hit.
//!
//! ```text
//! cargo run -p origdst-sim-tests --release -- --seeds 100000          # all families
//! cargo run -p origdst-sim-tests --release -- --family resets --seeds 5000 --start 7 --jobs 2
//! cargo run -p origdst-sim-tests --release -- --family resets --seed 1000042 --trace
//! cargo run -p origdst-sim-tests --release -- --family engine --seeds 20000   # the production shard
//! # split across machines: each runs one shard of the seed space and writes a report...
//! cargo run -p origdst-sim-tests --release -- --seeds 1000000 --shard 3/16 --report shard3.txt
//! # ...and one merges them (exit status as a single sweep's)
//! cargo run -p origdst-sim-tests --release -- --merge shard0.txt shard1.txt ...
//! ```

use std::process::ExitCode;
use std::time::Instant;

use origdst_sim_tests::coverage::Coverage;
use origdst_sim_tests::engine::{self, EScenario};
use origdst_sim_tests::runner;
use origdst_sim_tests::scenario::Family;

/// What a block of seeds runs: one of the core's turmoil families, or the production shard over
/// the simulated kernel (the engine tier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    Turmoil(Family),
    Engine,
}

impl Tier {
    fn name(self) -> &'static str {
        match self {
            Self::Turmoil(family) => family.name(),
            Self::Engine => "engine",
        }
    }

    fn all() -> Vec<Self> {
        let mut all: Vec<Self> = Family::ALL.into_iter().map(Self::Turmoil).collect();
        all.push(Self::Engine);
        all
    }

    /// Runs seeds `from..to`; failures as (seed, what to print).
    fn sweep(self, from: u64, to: u64, coverage: &mut Coverage) -> Vec<(u64, String)> {
        match self {
            Self::Turmoil(family) => runner::sweep(family, from..to, coverage)
                .into_iter()
                .map(|f| (f.scenario.seed, f.to_string()))
                .collect(),
            Self::Engine => (from..to)
                .filter_map(|seed| {
                    let scenario = EScenario::draw(seed);
                    let violations = engine::run_checked(&scenario);
                    (!violations.is_empty()).then(|| (seed, engine_failure(&scenario, &violations)))
                })
                .collect(),
        }
    }
}

fn engine_failure(scenario: &EScenario, violations: &[engine::EViolation]) -> String {
    let mut text = format!("FAILED seed={} family=engine\n", scenario.seed);
    for violation in violations {
        text.push_str(&format!("  {violation}\n"));
    }
    text.push_str(&format!(
        "{scenario:?}\nreplay: SIM_SEED={} cargo test -p origdst-sim-tests --test engine   \
         (ledgers: cargo run -p origdst-sim-tests --example engine_one -- {})",
        scenario.seed, scenario.seed
    ));
    text
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|a| a == "--merge") {
        return merge(&args[at + 1..]);
    }
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let families: Vec<Tier> = match value("--family") {
        Some(name) if name == "engine" => vec![Tier::Engine],
        Some(name) => match Family::parse(&name) {
            Some(family) => vec![Tier::Turmoil(family)],
            None => {
                eprintln!(
                    "unknown family {name:?}; one of: {}, engine",
                    Family::ALL.map(Family::name).join(", ")
                );
                return ExitCode::from(2);
            }
        },
        None => Tier::all(),
    };
    if let Some(seed) = value("--seed").and_then(|s| s.parse().ok()) {
        return match families[0] {
            Tier::Turmoil(family) => replay(family, seed, args.iter().any(|a| a == "--trace")),
            Tier::Engine => replay_engine(seed),
        };
    }
    let total: u64 = value("--seeds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let start: u64 = value("--start").and_then(|s| s.parse().ok()).unwrap_or(1);
    let jobs: u64 = value("--jobs")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64))
        .max(1);
    // `--shard K/N`: this machine's share of the work items (every N-th chunk from the K-th), so
    // N machines together run exactly the seeds one would.
    let (shard, shards) = match value("--shard") {
        None => (0, 1),
        Some(text) => match text
            .split_once('/')
            .and_then(|(k, n)| Some((k.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
            .filter(|&(k, n)| n > 0 && k < n)
        {
            Some(split) => split,
            None => {
                eprintln!("--shard takes K/N with 0 <= K < N, got {text:?}");
                return ExitCode::from(2);
            }
        },
    };
    let per_family = total.div_ceil(families.len() as u64);
    let began = Instant::now();
    // Work items: (family, first seed, end seed), handed out to `jobs` threads; each turmoil sim
    // lives on one thread, so seeds parallelise without sharing anything.
    let mut chunks = Vec::new();
    for (index, family) in families.iter().enumerate() {
        let first = start + index as u64 * per_family;
        for chunk_start in (first..first + per_family).step_by(CHUNK_SEEDS as usize) {
            chunks.push((
                *family,
                chunk_start,
                (chunk_start + CHUNK_SEEDS).min(first + per_family),
            ));
        }
    }
    let chunks: Vec<_> = chunks
        .into_iter()
        .enumerate()
        .filter(|(index, _)| *index as u64 % shards == shard)
        .map(|(_, chunk)| chunk)
        .collect();
    let planned: u64 = chunks.iter().map(|(_, from, to)| to - from).sum();
    let queue = std::sync::Mutex::new(chunks.into_iter());
    let results =
        std::sync::Mutex::new((Coverage::default(), Vec::<(Tier, u64, String)>::new(), 0u64));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let Some((family, from, to)) = queue.lock().expect("queue").next() else {
                        return;
                    };
                    let mut coverage = Coverage::default();
                    let found = family.sweep(from, to, &mut coverage);
                    let mut results = results.lock().expect("results");
                    results.0.merge(&coverage);
                    results
                        .1
                        .extend(found.into_iter().map(|(seed, text)| (family, seed, text)));
                    results.2 += to - from;
                    let rate = results.2 as f64 / began.elapsed().as_secs_f64();
                    if results.2 % PROGRESS_EVERY < to - from {
                        eprintln!(
                            "{}/{planned} seeds, {rate:.0} seeds/s, {} failures",
                            results.2,
                            results.1.len()
                        );
                    }
                }
            });
        }
    });
    let (coverage, mut failures, done) = results.into_inner().expect("results");
    failures.sort_by_key(|&(tier, seed, _)| (tier, seed));
    let elapsed = began.elapsed().as_secs_f64();
    if let Some(path) = value("--report") {
        let mut text = format!("seeds {done}\nseconds {elapsed:.1}\n");
        for (tier, seed, _) in &failures {
            text.push_str(&format!("failure {} {seed}\n", tier.name()));
        }
        for (name, count) in coverage.iter() {
            text.push_str(&format!("coverage {name} {count}\n"));
        }
        if let Err(err) = std::fs::write(&path, text) {
            eprintln!("{path}: {err}");
            return ExitCode::FAILURE;
        }
    }
    println!(
        "sweep: {done} seeds in {elapsed:.1} s = {:.0} seeds/s, {} failures",
        done as f64 / elapsed,
        failures.len()
    );
    for (_, _, failure) in failures.iter().take(FAILURES_SHOWN) {
        println!("{failure}\n");
    }
    conclude(
        &coverage,
        failures.is_empty(),
        families.len() == Tier::all().len(),
    )
}

/// Merges the reports of a sharded sweep: seeds and coverage add up, failures are listed with
/// their replay seeds; the exit status is a single sweep's.
fn merge(paths: &[String]) -> ExitCode {
    let mut coverage = Coverage::default();
    let (mut seeds, mut seconds, mut failures) = (0u64, 0f64, Vec::new());
    for path in paths {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) => {
                eprintln!("{path}: {err}");
                return ExitCode::from(2);
            }
        };
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["seeds", n] => seeds += n.parse::<u64>().unwrap_or(0),
                ["seconds", s] => seconds += s.parse::<f64>().unwrap_or(0.0),
                ["failure", family, seed] => failures.push(format!("{family} {seed}")),
                ["coverage", name, count] => coverage.add(name, count.parse().unwrap_or(0)),
                _ => {
                    eprintln!("{path}: not a sweep report line: {line:?}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    println!(
        "merged {} reports: {seeds} seeds, {seconds:.1} s of sweep time, {} failures",
        paths.len(),
        failures.len()
    );
    for failure in &failures {
        println!("FAILED family seed: {failure}  (replay: --family FAMILY --seed SEED --trace)");
    }
    conclude(&coverage, failures.is_empty(), true)
}

/// Prints the coverage and gives a sweep's exit status: failure on a failed seed, or on a
/// required counter never hit when every family ran.
fn conclude(coverage: &Coverage, passed: bool, every_family: bool) -> ExitCode {
    println!("coverage (sometimes counters):");
    for (name, count) in coverage.iter() {
        println!("  {name:<58} {count}");
    }
    let missing = coverage.missing();
    if !missing.is_empty() && every_family {
        println!("NEVER HIT: {}", missing.join(", "));
        return ExitCode::FAILURE;
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn replay(family: Family, seed: u64, trace: bool) -> ExitCode {
    let (scenario, report, violations) = runner::run_seed(seed, family, trace);
    print!("{scenario}");
    for line in &report.trace {
        println!("{line}");
    }
    println!("trace hash {:016x}", report.trace_hash);
    for (id, flow) in report.flows.iter().enumerate() {
        println!("flow {id}: {flow:?}");
    }
    if violations.is_empty() {
        println!("ok");
        return ExitCode::SUCCESS;
    }
    for violation in &violations {
        println!("VIOLATION {violation}");
    }
    ExitCode::FAILURE
}

fn replay_engine(seed: u64) -> ExitCode {
    let scenario = EScenario::draw(seed);
    let violations = engine::run_checked(&scenario);
    if violations.is_empty() {
        println!("{scenario:?}\nok");
        return ExitCode::SUCCESS;
    }
    println!("{}", engine_failure(&scenario, &violations));
    ExitCode::FAILURE
}

const PROGRESS_EVERY: u64 = 1000;
const CHUNK_SEEDS: u64 = 100;
const FAILURES_SHOWN: usize = 20;
