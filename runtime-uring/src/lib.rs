//! origdst's real engine: one io_uring shard per core relaying redirected TCP connections, driving
//! the sans-IO `origdst-core`. All `unsafe` of the project lives in this crate (ring memory, SQE
//! submission, adopting descriptors from completions), each block with its reason.

#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
mod buf_ring;
pub mod config_dump;
pub mod demo;
pub mod interception;
mod kernel;
mod listener_reload;
pub mod metrics;
pub mod observed;
mod pipe_pool;
pub mod pods;
pub mod published;
mod shard;
mod sockmap;
pub mod supervisor;
mod sys;
pub mod xds_client;
