//! A per-shard bound on log lines: a flood of failures (a reset storm, a scan of the capture port)
//! must not turn into a flood of lines. The counters keep the full tally.

use std::time::Duration;

use origdst_core::time::Instant;

/// At most [`LOG_LINES_PER_SECOND_MAX`] lines per second; the rest are counted and summarised.
#[derive(Debug, Default)]
pub struct LogBudget {
    window_start: Instant,
    used: u32,
    suppressed: u64,
}

/// Lines per second per shard.
pub const LOG_LINES_PER_SECOND_MAX: u32 = 20;

impl LogBudget {
    /// Whether a line may be written now. The first call of a new window logs how many lines the
    /// last one suppressed.
    pub fn take(&mut self, now: Instant) -> bool {
        if now - self.window_start >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                tracing::info!(
                    suppressed = self.suppressed,
                    "log lines suppressed in the last second (see counters)"
                );
            }
            self.window_start = now;
            self.used = 0;
            self.suppressed = 0;
        }
        if self.used < LOG_LINES_PER_SECOND_MAX {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_lines_a_second_then_silence_until_the_next_second() {
        let mut budget = LogBudget::default();
        let start = Instant::from_nanos(5_000_000_000);
        let granted = (0..100).filter(|_| budget.take(start)).count();
        assert_eq!(granted, LOG_LINES_PER_SECOND_MAX as usize);
        assert!(!budget.take(start + Duration::from_millis(999)));
        assert!(budget.take(start + Duration::from_secs(1)));
    }
}
