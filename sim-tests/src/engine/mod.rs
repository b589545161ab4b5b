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
mod oracle;
mod scenario;
mod workload;

pub use self::harness::{EReport, run};
pub use self::oracle::{EViolation, check};
pub use self::scenario::{EFault, EFlow, ERoute, EScenario, byte, head};
pub use self::workload::{Side, SideEnd};
