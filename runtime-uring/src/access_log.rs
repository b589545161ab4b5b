//! The access log: one JSON line per finished connection, written by its own thread. A shard
//! only fills a small record and `try_send`s it into a bounded queue; when the writer falls
//! behind, records are dropped and counted (`origdst_access_log_dropped_total`), never waited for.
//! Sampling (`sample`) is decided in the shard with a per-shard xorshift, so a sampled-out
//! connection costs one multiplication.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use serde::{Serialize, Serializer};

use crate::observed::AccessLogCounts;

/// Records waiting for the writer, process-wide. 64 Ki records is ~10 MiB at worst.
const QUEUE_MAX: usize = 65_536;

/// One finished connection, as the shard fills it: plain values; the writer thread does every
/// bit of formatting (addresses, the timestamp, error text) while it serialises.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// When it was accepted (written as RFC 3339 UTC with milliseconds).
    #[serde(serialize_with = "rfc3339")]
    pub start_time: SystemTime,
    /// Milliseconds from accept to close.
    pub duration_ms: u64,
    /// The client's address.
    pub downstream_remote_address: SocketAddr,
    /// The original destination, if one was found.
    pub original_destination: Option<SocketAddr>,
    /// Where the original destination came from (sockopt_v4, transparent_local, …).
    pub original_destination_provenance: Option<&'static str>,
    /// The address origdst connected to.
    pub upstream_host: Option<SocketAddr>,
    /// The listener that handled it (after a hand-off, the target listener).
    pub listener: Arc<str>,
    /// The pod whose listener accepted it (in-pod mode); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Arc<str>>,
    /// Bytes from the client relayed upstream.
    pub bytes_received: u64,
    /// Bytes from the upstream relayed to the client.
    pub bytes_sent: u64,
    /// completed, upstream_connect_failed, no_original_dst, idle_timeout, …
    pub termination_reason: &'static str,
    /// The I/O error behind it, if any.
    pub error: Option<ErrorText>,
    /// The shard (thread) that relayed it.
    pub shard: usize,
}

impl Record {
    /// The record of a connection the engine finished (time-stamped here, off the hot path's
    /// clock: the engine has none).
    pub fn from_finished(f: origdst_engine::report::Finished) -> Self {
        use origdst_core::outcome::IoErrorKind;
        Self {
            start_time: SystemTime::now()
                .checked_sub(f.age)
                .unwrap_or(std::time::UNIX_EPOCH),
            duration_ms: f.age.as_millis() as u64,
            downstream_remote_address: f.client,
            original_destination: f.orig_dst,
            original_destination_provenance: f.provenance,
            upstream_host: f.upstream,
            listener: f.listener,
            pod: f.group,
            bytes_received: f.bytes_received,
            bytes_sent: f.bytes_sent,
            termination_reason: f.outcome.name(),
            error: f.outcome.error().map(|kind| match kind {
                IoErrorKind::Other { errno } => ErrorText::Errno(errno),
                kind => ErrorText::Named(kind.name()),
            }),
            shard: f.shard,
        }
    }
}

/// An I/O error as a record holds it; its text is made when the line is written.
#[derive(Debug, Clone, Copy)]
pub enum ErrorText {
    /// An errno, written as the OS describes it.
    Errno(i32),
    /// A named kind (reset, refused, …).
    Named(&'static str),
}

impl Serialize for ErrorText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Errno(errno) => {
                serializer.collect_str(&std::io::Error::from_raw_os_error(*errno))
            }
            Self::Named(name) => serializer.serialize_str(name),
        }
    }
}

fn rfc3339<S: Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*at))
}

/// A shard's handle: where records go, and its sampling state.
#[derive(Debug, Clone)]
pub struct AccessLogSender {
    queue: Sender<Record>,
    counts: Arc<AccessLogCounts>,
    /// `sample` as a threshold on a 32-bit random value.
    threshold: u64,
    rng: u64,
}

impl AccessLogSender {
    /// Whether this connection is logged (decided at close).
    pub fn sampled(&mut self) -> bool {
        if self.threshold >= 1 << 32 {
            return true;
        }
        // xorshift64: a sampling decision, not cryptography.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng & 0xffff_ffff) < self.threshold
    }

    /// Queues a record, or counts it dropped.
    pub fn send(&self, record: Record) {
        match self.queue.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A copy for another shard, with its own random stream.
    pub fn for_shard(&self, shard: usize) -> Self {
        let mut copy = self.clone();
        copy.rng = 0x9e37_79b9_7f4a_7c15 ^ (shard as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        copy
    }
}

/// The writer thread; flushes and stops when every sender is gone.
pub struct AccessLogWriter {
    thread: Option<JoinHandle<()>>,
}

impl AccessLogWriter {
    /// Opens `path` (appending; `/dev/stdout` and `/dev/stderr` work) and starts the writer.
    pub fn start(
        path: &Path,
        sample: f64,
        counts: Arc<AccessLogCounts>,
    ) -> Result<(Self, AccessLogSender), String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|err| format!("access log {}: {err}", path.display()))?;
        let (queue, records) = bounded(QUEUE_MAX);
        let writer_counts = Arc::clone(&counts);
        let thread = std::thread::Builder::new()
            .name("origdst-access-log".into())
            .spawn(move || write_loop(file, &records, &writer_counts))
            .map_err(|err| format!("access log: spawning its thread: {err}"))?;
        let threshold = (sample.clamp(0.0, 1.0) * (1u64 << 32) as f64) as u64;
        Ok((
            Self {
                thread: Some(thread),
            },
            AccessLogSender {
                queue,
                counts,
                threshold,
                rng: 1,
            },
        ))
    }

    /// Waits for the writer to drain the queue (call after every sender is dropped).
    pub fn finish(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop(file: std::fs::File, records: &Receiver<Record>, counts: &AccessLogCounts) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    loop {
        let record = match records.recv_timeout(Duration::from_millis(200)) {
            Ok(record) => record,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                let _ = out.flush();
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        let mut line = serde_json::to_vec(&record).unwrap_or_default();
        line.push(b'\n');
        match out.write_all(&line) {
            Ok(()) => counts.written.fetch_add(1, Ordering::Relaxed),
            Err(_) => counts.failed.fetch_add(1, Ordering::Relaxed),
        };
        if records.is_empty() {
            let _ = out.flush();
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_keeps_about_the_asked_share() {
        let counts = Arc::new(AccessLogCounts::default());
        let (queue, _records) = bounded(1);
        let base = AccessLogSender {
            queue,
            counts,
            threshold: (0.25 * (1u64 << 32) as f64) as u64,
            rng: 1,
        };
        let mut sender = base.for_shard(3);
        let kept = (0..100_000).filter(|_| sender.sampled()).count();
        assert!(
            (23_000..27_000).contains(&kept),
            "kept {kept} of 100 000 at 25 %"
        );
        let mut all = AccessLogSender {
            threshold: 1 << 32,
            ..base
        };
        assert!((0..1000).all(|_| all.sampled()));
    }
}
