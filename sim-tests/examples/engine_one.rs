//! Replays one engine seed and prints the scenario, each flow's ledgers, the proxy's finished
//! connections and any violation: `cargo run -p origdst-sim-tests --example engine_one -- SEED`.

fn main() {
    let seed: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("usage: engine_one SEED");
    let scenario = origdst_sim_tests::engine::EScenario::draw(seed);
    println!("{scenario:#?}");
    let report = origdst_sim_tests::engine::run(&scenario);
    for (i, (client, server)) in report.sides.iter().enumerate() {
        println!(
            "flow {i}: client sent {} received {} ended {:?} at {} ms (paused {:?}) | server sent {} received {} ended {:?}",
            client.sent,
            client.received,
            client.end,
            client.ended_at / 1_000_000,
            client.paused.map(|(a, b)| (a / 1_000_000, b / 1_000_000)),
            server.sent,
            server.received,
            server.end
        );
    }
    for finished in &report.finished {
        println!(
            "{} {} up {} down {}",
            finished.client,
            finished.outcome.name(),
            finished.bytes_received,
            finished.bytes_sent
        );
    }
    let violations = origdst_sim_tests::engine::check(&scenario, &report);
    for violation in &violations {
        println!("violation: {violation}");
    }
    std::process::exit(i32::from(!violations.is_empty()));
}
