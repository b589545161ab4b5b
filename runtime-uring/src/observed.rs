//! What the admin endpoint reads: the shards' published rows, the process's lifecycle state, the
//! running config and its reload history. Written by the main thread (and the access-log writer),
//! read by the admin thread; the shards only ever store into their own rows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use origdst_core::config::Config;

use crate::published::ShardRow;

/// The config the process runs, with where it came from.
#[derive(Debug)]
pub struct RunningConfig {
    /// The validated model.
    pub config: Arc<Config>,
    /// The YAML it was parsed from (the embedded default when no file was given).
    pub yaml: String,
    /// The file, if any.
    pub path: Option<std::path::PathBuf>,
    /// 1 at start-up, +1 per accepted reload.
    pub generation: u64,
    /// When it was loaded (`/config_dump`'s `last_updated`).
    pub loaded_at: std::time::SystemTime,
}

/// Access-log throughput, shared by the shards (dropped) and the writer thread (written).
#[derive(Debug, Default)]
pub struct AccessLogCounts {
    /// Lines written.
    pub written: AtomicU64,
    /// Records dropped because the writer fell behind (the queue was full).
    pub dropped: AtomicU64,
    /// Lines that could not be written (I/O error).
    pub failed: AtomicU64,
}

/// Process-wide state for `/metrics`, `/stats`, `/ready`, `/config_dump`.
#[derive(Debug)]
pub struct Observed {
    /// One row per shard, in shard order.
    pub rows: Vec<Arc<ShardRow>>,
    /// `io_uring` or `epoll`.
    pub backend: &'static str,
    /// The data path in use (`uring-splice`, `epoll-splice`, …).
    pub data_path: &'static str,
    /// Every shard started.
    pub started: AtomicBool,
    /// SIGTERM/SIGINT received: no new connections.
    pub draining: AtomicBool,
    /// Reloads accepted / rejected.
    pub reloads_ok: AtomicU64,
    /// Reloads rejected (invalid config, or a change that needs a restart).
    pub reloads_rejected: AtomicU64,
    /// The running config.
    pub config: Mutex<Arc<RunningConfig>>,
    /// Access-log counts, when an access log is configured.
    pub access_log: Option<Arc<AccessLogCounts>>,
    /// When the process started.
    pub started_at: Instant,
    /// In-pod mode's pods, when it runs in that mode.
    pub pods: Option<Arc<crate::pods::PodGauges>>,
    /// The control plane's stream, when the bootstrap has `dynamic_resources`.
    pub xds: Option<Arc<crate::xds_client::XdsGauges>>,
}

impl Observed {
    /// An engine's view with no shard and the embedded default config (unit tests).
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self {
            rows: Vec::new(),
            backend: "io_uring",
            data_path: "uring-splice",
            started: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            reloads_ok: AtomicU64::new(0),
            reloads_rejected: AtomicU64::new(0),
            config: Mutex::new(Arc::new(RunningConfig {
                config: Arc::new(Config::default_config()),
                yaml: origdst_core::config::DEFAULT_YAML.to_string(),
                path: None,
                generation: 1,
                loaded_at: std::time::SystemTime::now(),
            })),
            access_log: None,
            started_at: Instant::now(),
            pods: None,
            xds: None,
        }
    }

    /// The running config (a cheap clone of the Arc).
    pub fn running(&self) -> Arc<RunningConfig> {
        Arc::clone(&self.config.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Ready for traffic: every shard started and not draining.
    pub fn ready(&self) -> bool {
        self.started.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
            && self.xds_initialized()
    }

    /// With a control plane: its first listener response (or cluster response, if it sends no
    /// listeners) was answered with no cluster waiting for its endpoints, or
    /// `initial_fetch_timeout` passed (Envoy's initialization). Without one: always.
    pub fn xds_initialized(&self) -> bool {
        self.xds
            .as_ref()
            .is_none_or(|x| x.initialized.load(Ordering::Relaxed))
    }
}
