//! Lock-free publication of per-shard counters: each shard is the only writer of its row and
//! stores relaxed snapshots; readers (the main thread, later the admin endpoint) merge rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use origdst_core::stats::{Counter, Counters};

pub use origdst_engine::listeners::{GroupKind, GroupReport};
pub use origdst_engine::report::Gauge;

/// One shard's published row.
#[derive(Debug)]
pub struct ShardRow {
    counters: [AtomicU64; Counter::COUNT],
    gauges: [AtomicU64; Gauge::ALL.len()],
    /// Its pods' connections (in-pod mode), replaced whole at most every 100 ms.
    groups: std::sync::Mutex<Vec<GroupReport>>,
}

impl Default for ShardRow {
    fn default() -> Self {
        Self {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            gauges: std::array::from_fn(|_| AtomicU64::new(0)),
            groups: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl ShardRow {
    /// Called by the owning shard only.
    pub(crate) fn publish(&self, counters: &Counters, gauges: &[u64; Gauge::ALL.len()]) {
        for (slot, value) in self.counters.iter().zip(counters.as_array()) {
            slot.store(*value, Ordering::Relaxed);
        }
        for (slot, value) in self.gauges.iter().zip(gauges) {
            slot.store(*value, Ordering::Relaxed);
        }
    }

    /// Called by the owning shard only (rarely: a lock is fine here).
    pub(crate) fn publish_groups(&self, groups: &[GroupReport]) {
        let mut row = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        row.clear();
        row.extend_from_slice(groups);
    }

    /// Its pods' connections as last published.
    pub fn groups(&self) -> Vec<GroupReport> {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        Counters::from_array(std::array::from_fn(|i| {
            self.counters[i].load(Ordering::Relaxed)
        }))
    }

    /// A gauge's value.
    pub fn gauge(&self, gauge: Gauge) -> u64 {
        self.gauges[gauge as usize].load(Ordering::Relaxed)
    }
}

/// Every shard's counters summed: how shards are aggregated, without a lock.
pub fn merged(rows: &[Arc<ShardRow>]) -> Counters {
    let mut total = Counters::default();
    for row in rows {
        total.merge(&row.counters());
    }
    total
}

/// A gauge summed over the shards.
pub fn gauge_sum(rows: &[Arc<ShardRow>], gauge: Gauge) -> u64 {
    rows.iter().map(|row| row.gauge(gauge)).sum()
}

/// Renders merged counters and summed gauges as one `name=value` line.
pub fn render(rows: &[Arc<ShardRow>]) -> String {
    let mut out = String::new();
    for (name, value) in merged(rows).iter() {
        out.push_str(&format!("{name}={value} "));
    }
    for gauge in Gauge::ALL {
        out.push_str(&format!("{}={} ", gauge.name(), gauge_sum(rows, gauge)));
    }
    out.pop();
    out
}

/// Each pod's connections summed over the shards, by pod name (sorted).
pub fn pods(rows: &[Arc<ShardRow>]) -> Vec<GroupReport> {
    summed(rows, GroupKind::Pod)
}

/// Each listener's connections summed over the shards, by listener name (sorted).
pub fn listeners(rows: &[Arc<ShardRow>]) -> Vec<GroupReport> {
    summed(rows, GroupKind::Listener)
}

fn summed(rows: &[Arc<ShardRow>], kind: GroupKind) -> Vec<GroupReport> {
    let mut by_name: std::collections::BTreeMap<Arc<str>, GroupReport> =
        std::collections::BTreeMap::new();
    for row in rows {
        for report in row.groups().into_iter().filter(|r| r.kind == kind) {
            match by_name.get_mut(&report.name) {
                Some(sum) => {
                    sum.accepted += report.accepted;
                    sum.active += report.active;
                    sum.bytes_up += report.bytes_up;
                    sum.bytes_down += report.bytes_down;
                    sum.drain_reset += report.drain_reset;
                    sum.removed &= report.removed;
                }
                None => {
                    by_name.insert(Arc::clone(&report.name), report);
                }
            }
        }
    }
    by_name.into_values().collect()
}
