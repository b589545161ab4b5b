//! Lock-free publication of per-shard counters: each shard is the only writer of its row and
//! stores relaxed snapshots; readers (the main thread, later the admin endpoint) merge rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use origdst_core::stats::{Counter, Counters};

pub use origdst_engine::report::Gauge;

/// One shard's published row.
#[derive(Debug)]
pub struct ShardRow {
    counters: [AtomicU64; Counter::COUNT],
    gauges: [AtomicU64; Gauge::ALL.len()],
}

impl Default for ShardRow {
    fn default() -> Self {
        Self {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            gauges: std::array::from_fn(|_| AtomicU64::new(0)),
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
