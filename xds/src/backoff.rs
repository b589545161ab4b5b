//! How long to wait before reconnecting to the control plane: exponential from `base` to `max`,
//! each wait drawn uniformly from its upper half ("equal jitter"), so a fleet whose control plane
//! restarted does not come back in one wave; a stream that lived long enough resets it.

use std::time::Duration;

/// Reconnect delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// Delays from `base` up to `max`, jittered from `seed` (a process's own: its pid and clock).
    pub fn new(base: Duration, max: Duration, seed: u64) -> Self {
        assert!(
            base > Duration::ZERO && base <= max,
            "backoff {base:?}..{max:?}"
        );
        Self {
            base,
            max,
            attempt: 0,
            // Mixed first: neighbouring seeds (pids) must not give one sequence (xorshift needs
            // a non-zero state).
            rng: (seed ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9) | 1,
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt.min(16)).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(if spread == 0 {
            0
        } else {
            self.random() % spread
        })
    }

    /// A stream that stayed up: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn random(&mut self) -> u64 {
        // xorshift64: jitter, not cryptography.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(10));
        let mut backoff = Backoff::new(base, max, 42);
        let mut ceiling = base;
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(max);
        }
        // Two fleets' worth of proxies do not pick the same delays.
        let mut other = Backoff::new(base, max, 43);
        let a: Vec<Duration> = (0..5)
            .map(|_| Backoff::new(base, max, 7).next_delay())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]), "one seed, one sequence");
        let mine: Vec<Duration> = {
            let mut b = Backoff::new(base, max, 42);
            (0..8).map(|_| b.next_delay()).collect()
        };
        let theirs: Vec<Duration> = (0..8).map(|_| other.next_delay()).collect();
        assert_ne!(mine, theirs);
        backoff.reset();
        assert!(backoff.next_delay() <= base);
    }
}
