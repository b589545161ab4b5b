//! origdst-core: the runtime-free heart of origdst.
//!
//! This crate does **no** I/O: it opens no socket, reads no clock, spawns no thread and depends on
//! no runtime (tokio, io-uring, turmoil). A runtime feeds it what happened — with the current
//! time — and executes what it asks for. The real engine (`runtime-uring`) and the simulator drive
//! the very same code, so the relay's half-close, error and timeout logic exists once.
//!
//! ```text
//!        runtime (io_uring shard / simulator)                      origdst-core
//!   ┌────────────────────────────────────────┐  accept(now, evidence)  ┌──────────────────┐
//!   │ accept, getsockopt(SO_ORIGINAL_DST)    │ ──────────────────────▶ │ orig_dst::resolve │
//!   │ connect, recv/send, splice, shutdown   │  handle_connected(now)  │ Connection        │
//!   │ timers                                 │  handle_transferred/eof │  (Phase, 2 ×      │
//!   │                                        │  handle_error/timeout   │   HalfDuplex)     │
//!   │                                        │ ◀────────────────────── │ Counters          │
//!   └────────────────────────────────────────┘  poll_action(),         └──────────────────┘
//!                                               next_timeout()
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod addr;
pub mod config;
pub mod connection;
pub mod http_head;
pub mod orig_dst;
pub mod outcome;
pub mod relay;
pub mod route;
pub mod stats;
pub mod time;

#[cfg(test)]
mod proptests;
