//! origdst-xds: the control-plane client, protocol first.
//!
//! [`session::AdsSession`] is the aggregated discovery (ADS, state of the world) protocol as a
//! state machine with no I/O: fed the stream's events (connected, a response and whether its
//! resources were accepted, disconnected), it says which requests to send — the subscriptions in
//! Envoy's order (clusters before listeners), each response ACKed with its version and nonce or
//! NACKed with the last accepted version, the nonce and an error detail, everything resent after a
//! reconnect with the versions in force; [`delta::DeltaSession`] is the same for incremental
//! (delta) xDS. [`compose`] decides what of the pushed resources is in force and what warms.
//! [`screen`] sets aside what of a push cannot be taken, as Envoy does, so the rest goes into
//! force. [`backoff::Backoff`] spaces reconnects with jitter. The
//! gRPC transport (tonic, `envoy-types`' protos) and the translation of resources into origdst's
//! validated config plug in around them; the state machine is what the tests pin.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
pub mod compose;
pub mod delta;
pub mod dial;
mod plan;
pub mod resources;
pub mod screen;
pub mod session;
pub mod stream;
pub mod translate;
