//! The adaptive busy-poll window, KVM's halt-polling rule applied to a shard's wait: before it
//! sleeps, a shard polls for completions for up to `window`; each wait then tells the window
//! whether polling would have paid. A wait that ended within the window needed no change; one that
//! ended later but within `max` (a short sleep: a poll that long would have caught it) grows the
//! window; one longer than `max` (sparse traffic, an idle shard) shrinks it, down to zero. So a
//! shard that relays request/response traffic answers without a wake-up, and a quiet one sleeps
//! at once and costs nothing.

use std::time::Duration;

/// The window's first step when it grows from zero (KVM's `halt_poll_ns_grow_start`).
const GROW_START: Duration = Duration::from_micros(4);

/// A shard's polling window (one per shard: no sharing).
#[derive(Debug, Clone)]
pub(crate) struct SpinWindow {
    /// `origdst.busy_poll`: the longest the window may grow to; zero turns polling off.
    max: Duration,
    window: Duration,
    /// Waits that a poll answered (completions found without sleeping).
    hits: u64,
    /// Waits that slept.
    sleeps: u64,
}

impl SpinWindow {
    pub(crate) fn new(max: Duration) -> Self {
        Self {
            max,
            window: Duration::ZERO,
            hits: 0,
            sleeps: 0,
        }
    }

    /// How long to poll before sleeping.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// A wait that polled and found a completion.
    pub(crate) fn hit(&mut self) {
        self.hits += 1;
    }

    /// A wait that slept, `waited` in all (polling included) until it returned.
    pub(crate) fn slept(&mut self, waited: Duration) {
        self.sleeps += 1;
        if self.max.is_zero() {
            return;
        }
        if waited > self.max {
            // Long gaps: polling would not have caught it. Halve, and stop below the first step.
            self.window /= 2;
            if self.window < GROW_START {
                self.window = Duration::ZERO;
            }
        } else if waited > self.window {
            // A short sleep a longer poll would have saved.
            self.window = (self.window * 2).max(GROW_START).min(self.max);
        }
        debug_assert!(self.window <= self.max);
    }

    /// (polls that found completions, waits that slept), since the start.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.hits, self.sleeps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(50);

    #[test]
    fn short_sleeps_grow_the_window_up_to_max() {
        let mut w = SpinWindow::new(MAX);
        assert_eq!(w.window(), Duration::ZERO);
        w.slept(Duration::from_micros(10));
        assert_eq!(w.window(), GROW_START);
        for _ in 0..10 {
            w.slept(Duration::from_micros(49));
        }
        assert_eq!(w.window(), MAX);
    }

    #[test]
    fn long_sleeps_shrink_it_to_zero() {
        let mut w = SpinWindow::new(MAX);
        for _ in 0..10 {
            w.slept(Duration::from_micros(49));
        }
        assert_eq!(w.window(), MAX);
        w.slept(Duration::from_millis(5));
        assert_eq!(w.window(), MAX / 2);
        for _ in 0..10 {
            w.slept(Duration::from_millis(5));
        }
        assert_eq!(w.window(), Duration::ZERO);
    }

    #[test]
    fn a_sleep_within_the_window_changes_nothing() {
        let mut w = SpinWindow::new(MAX);
        for _ in 0..3 {
            w.slept(Duration::from_micros(30));
        }
        let before = w.window();
        w.slept(before / 2);
        assert_eq!(w.window(), before);
    }

    #[test]
    fn zero_max_never_polls() {
        let mut w = SpinWindow::new(Duration::ZERO);
        w.slept(Duration::from_nanos(1));
        w.hit();
        assert_eq!(w.window(), Duration::ZERO);
        assert_eq!(w.counts(), (1, 1));
    }
}
