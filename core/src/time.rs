//! Time as data. Core never reads a clock: every event carries `now`, and timers are deadlines that
//! the runtime asks for with `next_timeout()` and reports with `handle_timeout(now)`.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time on the runtime's monotonic clock, in nanoseconds since an origin the runtime
/// chooses (process start for the real runtime, zero for the simulator and the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The origin of the clock.
    pub const ZERO: Self = Self(0);

    /// A point `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `ago` before `self`, or the origin if that is earlier.
    pub fn saturating_sub(self, ago: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(u64::try_from(ago.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later (clocks never go back, but a
    /// caller comparing two events out of order must not underflow).
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Self;

    /// Saturates instead of overflowing: a deadline of "never" is `u64::MAX` nanoseconds.
    fn add(self, rhs: Duration) -> Self {
        let nanos = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(nanos))
    }
}

impl Sub for Instant {
    type Output = Duration;

    fn sub(self, rhs: Self) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_saturates_instead_of_wrapping() {
        let late = Instant::from_nanos(u64::MAX - 1);
        assert_eq!(late + Duration::from_secs(1), Instant::from_nanos(u64::MAX));
        assert_eq!(
            Instant::ZERO + Duration::from_millis(3),
            Instant::from_nanos(3_000_000)
        );
    }

    #[test]
    fn sub_never_underflows() {
        let a = Instant::from_nanos(10);
        let b = Instant::from_nanos(25);
        assert_eq!(b - a, Duration::from_nanos(15));
        assert_eq!(a - b, Duration::ZERO);
    }
}
