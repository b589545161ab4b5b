//! origdst-runtime-sim: a simulated kernel for the engine's production shard ([`kernel`]), and
//! the same `origdst-core` that runs on io_uring, driven over turmoil's
//! deterministic network — a thin driver like `runtime-uring` — plus deterministic models of what
//! the kernel and platform do for a transparent proxy, which turmoil does not have:
//!
//! - NAT REDIRECT / TPROXY: a conntrack-like table answering the original-destination query
//!   (`ENOENT` when there is no entry or it went stale) and the mark bypass that keeps the proxy's
//!   own upstream connections from being redirected again ([`net`]);
//! - Windows-style redirect records: a redirect policy re-redirects any proxy connection that does
//!   not carry its flow's record ([`net`]);
//! - internal listeners: connections carrying dynamic metadata / filter state ([`net`]);
//! - resets: turmoil resets only on drop-with-unread, so an abort is recorded in the model and the
//!   peer's reads and writes turn EOF into `ConnectionReset` ([`io`]).
//!
//! turmoil has no retransmission (a partition mid-stream wedges the stream), one address family per
//! sim, and panics when a listener's backlog (`tcp_capacity`) overflows: scenarios keep concurrent
//! connects below it and model black holes as partitions that only the idle timeout resolves.
//! turmoil 0.7.2's FIN bypasses its flow control, and one that reaches a full receive channel
//! stays in the reorder buffer until another segment arrives — never, after a FIN — so scenarios
//! run with a window (`tcp_capacity`) no flow can fill; backpressure against a slow reader is
//! therefore exercised by the real-kernel suite, not here.

#![warn(missing_docs)]

pub mod driver;
pub mod io;
pub mod kernel;
pub mod net;
