//! In-pod mode (ztunnel's design): one origdst per node serves every pod from *inside* the pod's
//! network namespace. A node agent hands origdst each pod's namespace over a Unix socket
//! ([`protocol`]); origdst opens the pod's listening sockets there (one per shard: every shard
//! serves every pod), installs the pod's capture rules there, and makes the pod's upstream
//! connections there, so they leave with the pod's address and routes. The shards' side is the
//! engine's listener groups (`origdst_engine::listeners`).

pub mod manager;
pub(crate) mod netns;
pub mod protocol;

pub use manager::{InPodSettings, PODS_MAX_DEFAULT, PODS_MAX_LIMIT, PodGauges};
