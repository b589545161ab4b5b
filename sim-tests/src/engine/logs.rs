//! The shard's log lines during a run, with the virtual time each was written at: the oracle
//! checks the log budget (a flood of failures is not a flood of lines) and that failures are
//! logged at all. A `tracing` subscriber installed for the run's thread only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// What was logged, by kind, with virtual timestamps (ns).
#[derive(Debug, Default)]
pub struct LogLines {
    /// "connection closed" lines (a connection that did not complete).
    pub closed: Vec<u64>,
    /// "accept failed" warnings (they share the log budget with the closed lines).
    pub accept_failed: Vec<u64>,
    /// "log lines suppressed" summaries.
    pub summaries: u64,
    /// "pipe smaller than requested" warnings.
    pub shrunk_warnings: u64,
}

/// Counts INFO-and-above events into a [`LogLines`], stamped with `clock`.
pub(super) struct Recorder {
    pub(super) clock: Arc<AtomicU64>,
    pub(super) lines: Arc<Mutex<LogLines>>,
}

impl Subscriber for Recorder {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // Asked per event: other threads' runs have their own recorders.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::INFO
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let fields = event.metadata().fields();
        let mut lines = self.lines.lock().expect("log lines");
        if fields.field("reason").is_some() && fields.field("c2u").is_some() {
            lines.closed.push(self.clock.load(Ordering::Relaxed));
        } else if fields.field("errno").is_some() && fields.field("shard").is_some() {
            lines.accept_failed.push(self.clock.load(Ordering::Relaxed));
        } else if fields.field("suppressed").is_some() {
            lines.summaries += 1;
        } else if fields.field("requested").is_some() && fields.field("got").is_some() {
            lines.shrunk_warnings += 1;
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
