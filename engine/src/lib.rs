//! origdst-engine: one shard's decisions, no kernel calls.
//!
//! The layer between `origdst-core` (one connection, no I/O) and the runtimes (`runtime-uring`'s
//! io_uring and epoll shards, the simulator). What is here is what a shard decides whatever its
//! event source: which connection a completion belongs to (slots and generations, operation
//! tokens), when it is due (timers), which pipe or buffer it may use and whether a pipe may be
//! pooled again, how in-process connections queue bytes, which accepted connection is our own
//! come back, how many lines a flood may log. Each piece is small and unit-tested here; the shard
//! state machine itself is moving here from `runtime-uring/src/shard/` (see ARCHITECTURE.md).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod buffers;
pub mod kernel;
pub mod listeners;
pub mod log_budget;
pub mod own_upstreams;
pub mod pairs;
pub mod pipes;
pub mod progress;
pub mod report;
pub mod shard;
pub mod slots;
pub mod timers;
pub mod token;
