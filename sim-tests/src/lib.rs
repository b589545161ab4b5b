//! Seeded deterministic simulation of origdst's core: scenario families drawn from one `u64` seed,
//! run over turmoil with the kernel models of `origdst-runtime-sim`, judged by an oracle from
//! per-flow ledgers; and the production shard of `origdst-engine` over `runtime-sim`'s simulated
//! kernel ([`engine`]). A failure prints its seed; `SIM_SEED=<n>` replays it.

#![warn(missing_docs)]

pub mod coverage;
pub mod engine;
pub mod oracle;
pub mod rng;
pub mod runner;
pub mod scenario;
pub mod world;
