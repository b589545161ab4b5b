//! origdst's own knobs: the one place for what Envoy's schema has no field for. Each has a default,
//! a bound, and an error that names it.

use std::num::NonZeroU32;
use std::time::Duration;

use super::{ConfigError, DestinationPolicy, envoy, parse_duration};

/// How a shard moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    /// io_uring readiness (`POLL_ADD`), then inline non-blocking `splice(2)` through pooled pipes;
    /// copies when the pool is empty.
    UringSplice,
    /// Multishot recv into a per-shard provided-buffer ring, send, recycle.
    UringCopy,
    /// `IORING_OP_SPLICE` through pooled pipes, issued only after `POLL_ADD` says the socket is
    /// ready (non-blocking sockets, so no io-wq worker ever parks). Kept to measure: every op is
    /// an io-wq hand-off.
    UringOpSplice,
    /// The kernel relays: a BPF `sk_skb` stream verdict redirects what each socket of a pair
    /// receives to the other's egress (a `SOCKHASH`), so the bytes never reach user space; the
    /// shard only watches for each FIN and passes it on once every byte before it is queued on
    /// the other side. Needs CAP_BPF (or root); a pair the kernel does not take is relayed by
    /// the readiness path (uring-splice) instead.
    KernelSockmap,
}

impl DataPath {
    /// The config/CLI spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Self::UringSplice => "uring-splice",
            Self::UringCopy => "uring-copy",
            Self::UringOpSplice => "uring-opsplice",
            Self::KernelSockmap => "kernel-sockmap",
        }
    }

    /// Parses the config/CLI spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "uring-splice" => Some(Self::UringSplice),
            "uring-copy" => Some(Self::UringCopy),
            "uring-opsplice" => Some(Self::UringOpSplice),
            "kernel-sockmap" => Some(Self::KernelSockmap),
            _ => None,
        }
    }
}

/// Validated knobs (`origdst:` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    /// Shard threads; `None`: one per CPU.
    pub shards: Option<NonZeroU32>,
    /// The data path.
    pub data_path: DataPath,
    /// Bytes of pipe capacity the whole process may hold (split evenly between shards).
    pub pipe_budget_bytes: u64,
    /// Requested capacity of each pooled pipe (`F_SETPIPE_SZ`).
    pub pipe_size_bytes: u32,
    /// Size of each relay buffer (provided-buffer ring, copy fallback).
    pub buffer_size_bytes: u32,
    /// Relay buffers per shard (a power of two: the provided-buffer ring requires it).
    pub buffer_count: u32,
    /// `SO_MARK` on upstream sockets; `None`: unmarked.
    pub upstream_mark: Option<u32>,
    /// How long open connections may finish after SIGTERM/SIGINT before they are reset.
    pub drain_timeout: Duration,
    /// Open connections per shard before new ones are reset and counted.
    pub connections_per_shard_max: u32,
    /// io-wq worker cap per ring (bounded, unbound): a guard-rail, origdst issues no blocking op.
    pub iowq_workers_max: u32,
    /// The platform attaches redirect records (Windows HNS/WFP style) to redirected connections;
    /// origdst reads them at accept and applies them to the upstream socket.
    pub redirect_records: bool,
    /// `use_http_header`: the longest HTTP/1 request head origdst waits for.
    pub http_head_max_bytes: u32,
    /// `use_http_header`: how long origdst waits for the whole head.
    pub http_head_timeout: Duration,
    /// The most a shard polls for completions before it sleeps (0: never). The window adapts
    /// (`runtime-uring/src/shard/spin.rs`): it grows while sleeps are shorter than this and
    /// shrinks to zero when they are longer, so it costs CPU only where it saves a wake-up (an
    /// IPI, a vCPU exit on a VM), which is most of the latency a proxy adds to small messages.
    pub busy_poll: Duration,
    /// Pin shard `i` to the `i`-th CPU the process may run on. Off by default: on a node the
    /// cores are shared with the workloads, and `SO_REUSEPORT` hands every shard the same share
    /// of connections however busy its core is, so a pinned shard on a busy core makes its share
    /// wait (measured: `bench/README.md`); unpinned, the scheduler moves it.
    pub pin_shards: bool,
    /// The admin endpoint (`/metrics`, `/ready`, …); `None`: off.
    pub admin: Option<std::net::SocketAddr>,
    /// One JSON line per finished connection; `None`: off.
    pub access_log: Option<AccessLog>,
    /// Refuse a redirected connection whose peer and destination are one of origdst's own live
    /// upstream sockets (a loop through rules that forgot to exclude origdst). A safety net with
    /// a rare false positive: see `runtime-uring/src/own_upstreams.rs`.
    pub detect_own_upstream: bool,
    /// Where destinations that arrived as text (header, metadata, filter state) may go.
    pub destination_policy: DestinationPolicy,
}

/// Command-line overrides of knobs. They are applied to the raw `origdst:` section before
/// validation, so an override is held to the same bounds as the field it replaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnobOverrides {
    /// `--shards` (0: one per CPU).
    pub shards: Option<u32>,
    /// `--data-path`.
    pub data_path: Option<DataPath>,
    /// `--admin`: `Some(None)` turns the endpoint off.
    pub admin: Option<Option<std::net::SocketAddr>>,
}

impl KnobOverrides {
    pub(super) fn apply(&self, raw: &mut envoy::Knobs) {
        if let Some(shards) = self.shards {
            raw.shards = Some(shards);
        }
        if let Some(path) = self.data_path {
            raw.data_path = Some(path.name().to_string());
        }
        if let Some(admin) = self.admin {
            raw.admin = Some(admin.map(|addr| addr.to_string()));
        }
    }
}

/// `origdst.access_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// A file (appended to), or `/dev/stdout`.
    pub path: std::path::PathBuf,
    /// Share of connections logged, in parts per million (1.0 = 1 000 000).
    pub sample_ppm: u32,
}

impl AccessLog {
    /// The share of connections logged, 0.0–1.0.
    pub fn sample(&self) -> f64 {
        f64::from(self.sample_ppm) / 1e6
    }
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            shards: None,
            data_path: DataPath::UringSplice,
            pipe_budget_bytes: PIPE_BUDGET_BYTES_DEFAULT,
            pipe_size_bytes: PIPE_SIZE_BYTES_DEFAULT,
            buffer_size_bytes: BUFFER_SIZE_BYTES_DEFAULT,
            buffer_count: BUFFER_COUNT_DEFAULT,
            upstream_mark: Some(UPSTREAM_MARK_DEFAULT),
            drain_timeout: DRAIN_TIMEOUT_DEFAULT,
            connections_per_shard_max: CONNECTIONS_PER_SHARD_MAX_DEFAULT,
            iowq_workers_max: IOWQ_WORKERS_MAX_DEFAULT,
            redirect_records: false,
            http_head_max_bytes: HTTP_HEAD_MAX_BYTES_DEFAULT,
            http_head_timeout: HTTP_HEAD_TIMEOUT_DEFAULT,
            busy_poll: BUSY_POLL_DEFAULT,
            pin_shards: false,
            admin: Some(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                ADMIN_PORT_DEFAULT,
            ))),
            access_log: None,
            detect_own_upstream: true,
            destination_policy: DestinationPolicy::default(),
        }
    }
}

impl Knobs {
    pub(super) fn from_raw(raw: envoy::Knobs) -> Result<Self, ConfigError> {
        let d = Self::default();
        let shards = match raw.shards {
            None | Some(0) => None,
            Some(n) => Some(in_range("origdst.shards", n, 1, SHARDS_MAX).and_then(|n| {
                NonZeroU32::new(n)
                    .ok_or_else(|| ConfigError::new("origdst.shards", "must not be 0"))
            })?),
        };
        let data_path = match raw.data_path {
            None => d.data_path,
            Some(text) => DataPath::parse(&text).ok_or_else(|| {
                ConfigError::new(
                    "origdst.data_path",
                    format!(
                        "{text:?} is not one of uring-splice, uring-copy, uring-opsplice, kernel-sockmap"
                    ),
                )
            })?,
        };
        let pipe_size_bytes = raw.pipe_size_bytes.unwrap_or(d.pipe_size_bytes);
        power_of_two(
            "origdst.pipe_size_bytes",
            pipe_size_bytes,
            PAGE_BYTES,
            PIPE_SIZE_BYTES_MAX,
        )?;
        let buffer_size_bytes = raw.buffer_size_bytes.unwrap_or(d.buffer_size_bytes);
        in_range(
            "origdst.buffer_size_bytes",
            buffer_size_bytes,
            PAGE_BYTES,
            BUFFER_SIZE_BYTES_MAX,
        )?;
        let buffer_count = raw.buffer_count.unwrap_or(d.buffer_count);
        power_of_two("origdst.buffer_count", buffer_count, 1, BUFFER_COUNT_MAX)?;
        let pipe_budget_bytes = raw.pipe_budget_bytes.unwrap_or(d.pipe_budget_bytes);
        if pipe_budget_bytes > PIPE_BUDGET_BYTES_MAX {
            return Err(ConfigError::new(
                "origdst.pipe_budget_bytes",
                format!("{pipe_budget_bytes} is over the maximum {PIPE_BUDGET_BYTES_MAX}"),
            ));
        }
        let drain_timeout = match raw.drain_timeout {
            None => d.drain_timeout,
            Some(text) => parse_duration("origdst.drain_timeout", &text)?,
        };
        let connections_per_shard_max = in_range(
            "origdst.connections_per_shard_max",
            raw.connections_per_shard_max
                .unwrap_or(d.connections_per_shard_max),
            1,
            CONNECTIONS_PER_SHARD_MAX_LIMIT,
        )?;
        let iowq_workers_max = in_range(
            "origdst.iowq_workers_max",
            raw.iowq_workers_max.unwrap_or(d.iowq_workers_max),
            1,
            IOWQ_WORKERS_LIMIT,
        )?;
        let http_head_max_bytes = in_range(
            "origdst.http_head_max_bytes",
            raw.http_head_max_bytes.unwrap_or(d.http_head_max_bytes),
            HTTP_HEAD_MAX_BYTES_MIN,
            HTTP_HEAD_MAX_BYTES_LIMIT,
        )?;
        let busy_poll = match raw.busy_poll {
            None => d.busy_poll,
            Some(text) => parse_duration("origdst.busy_poll", &text)?,
        };
        if busy_poll > BUSY_POLL_MAX {
            return Err(ConfigError::new(
                "origdst.busy_poll",
                format!("{busy_poll:?} is more than {BUSY_POLL_MAX:?}"),
            ));
        }
        let admin = match raw.admin {
            None => d.admin,
            Some(None) => None,
            Some(Some(text)) => Some(text.parse().map_err(|_| {
                ConfigError::new(
                    "origdst.admin",
                    format!("{text:?} is not an ip:port (null turns the endpoint off)"),
                )
            })?),
        };
        let access_log = match raw.access_log {
            None => None,
            Some(log) => {
                if log.path.is_empty() {
                    return Err(ConfigError::new("origdst.access_log.path", "empty"));
                }
                let sample = log.sample.unwrap_or(1.0);
                if !(0.0..=1.0).contains(&sample) {
                    return Err(ConfigError::new(
                        "origdst.access_log.sample",
                        format!("{sample} is outside 0.0..=1.0"),
                    ));
                }
                Some(AccessLog {
                    path: log.path.into(),
                    sample_ppm: (sample * 1e6).round() as u32,
                })
            }
        };
        let http_head_timeout = match raw.http_head_timeout {
            None => d.http_head_timeout,
            Some(text) => parse_duration("origdst.http_head_timeout", &text)?,
        };
        if http_head_timeout.is_zero() {
            return Err(ConfigError::new(
                "origdst.http_head_timeout",
                "must be greater than 0s",
            ));
        }
        Ok(Self {
            shards,
            data_path,
            pipe_budget_bytes,
            pipe_size_bytes,
            buffer_size_bytes,
            buffer_count,
            upstream_mark: raw.upstream_mark.unwrap_or(d.upstream_mark),
            drain_timeout,
            connections_per_shard_max,
            iowq_workers_max,
            redirect_records: raw.redirect_records.unwrap_or(d.redirect_records),
            http_head_max_bytes,
            http_head_timeout,
            busy_poll,
            pin_shards: raw.pin_shards.unwrap_or(d.pin_shards),
            admin,
            access_log,
            detect_own_upstream: raw.detect_own_upstream.unwrap_or(d.detect_own_upstream),
            destination_policy: match raw.destination_policy {
                None => d.destination_policy,
                Some(policy) => policy.validate()?,
            },
        })
    }
}

fn in_range(path: &str, value: u32, min: u32, max: u32) -> Result<u32, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(
            path,
            format!("{value} is outside {min}..={max}"),
        ))
    }
}

fn power_of_two(path: &str, value: u32, min: u32, max: u32) -> Result<u32, ConfigError> {
    in_range(path, value, min, max)?;
    if value.is_power_of_two() {
        Ok(value)
    } else {
        Err(ConfigError::new(
            path,
            format!("{value} is not a power of two"),
        ))
    }
}

const PAGE_BYTES: u32 = 4096;
/// Istio's admin port.
const ADMIN_PORT_DEFAULT: u16 = 15000;
/// Past a millisecond a spin is a busy CPU, not a latency trade.
const BUSY_POLL_MAX: Duration = Duration::from_millis(1);
/// The adaptive window's ceiling: a proxied round trip on a node (the server's turn included)
/// fits in it; gaps longer than it shrink the window to zero.
const BUSY_POLL_DEFAULT: Duration = Duration::from_micros(50);
const SHARDS_MAX: u32 = 256;
/// 256 KiB pipes: the measured sweet spot between 64 KiB (16 slots ≈ 23 KB of MSS-sized skbs)
/// and 1 MiB (which hits the per-UID soft limit after 16 pipes).
const PIPE_SIZE_BYTES_DEFAULT: u32 = 256 * 1024;
/// `fs.pipe-max-size`'s default: unprivileged F_SETPIPE_SZ cannot exceed it.
const PIPE_SIZE_BYTES_MAX: u32 = 1024 * 1024;
/// 32 MiB = 8192 pages: half of `fs.pipe-user-pages-soft` (16384), so a non-root origdst never
/// drives its own pipes into the silent 8 KiB shrink.
const PIPE_BUDGET_BYTES_DEFAULT: u64 = 32 * 1024 * 1024;
const PIPE_BUDGET_BYTES_MAX: u64 = 1 << 30;
/// 64 KiB buffers: measured to match forced splice on bulk (8 KiB reached only 0.32× of direct).
const BUFFER_SIZE_BYTES_DEFAULT: u32 = 64 * 1024;
const BUFFER_SIZE_BYTES_MAX: u32 = 1024 * 1024;
/// 256 × 64 KiB = 16 MiB per shard. The kernel takes buffers from the ring in FIFO order, so after
/// enough traffic every buffer has been touched once: the count bounds the copy path's RSS.
const BUFFER_COUNT_DEFAULT: u32 = 256;
/// The provided-buffer ring's limit.
const BUFFER_COUNT_MAX: u32 = 32768;
const UPSTREAM_MARK_DEFAULT: u32 = 1337;
/// Under Kubernetes' 30 s default termination grace period, with room for the final reset.
const DRAIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(20);
const CONNECTIONS_PER_SHARD_MAX_DEFAULT: u32 = 65536;
const CONNECTIONS_PER_SHARD_MAX_LIMIT: u32 = 1 << 20;
const IOWQ_WORKERS_MAX_DEFAULT: u32 = 2;
const IOWQ_WORKERS_LIMIT: u32 = 64;
/// 8 KiB: what most servers accept as a request head; Envoy's own limit is 60 KiB.
const HTTP_HEAD_MAX_BYTES_DEFAULT: u32 = 8 * 1024;
const HTTP_HEAD_MAX_BYTES_MIN: u32 = 256;
/// The head is read with MSG_PEEK, so it must fit a socket receive queue.
const HTTP_HEAD_MAX_BYTES_LIMIT: u32 = 64 * 1024;
const HTTP_HEAD_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
