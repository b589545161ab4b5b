//! The scenario RNG: splitmix64 (the simulated kernel's), ours so a seed means the same scenario
//! forever, whatever version of `rand` turmoil pulls in.

/// A seeded generator: the simulated kernel's splitmix64, with the scenario helpers.
#[derive(Debug, Clone)]
pub struct Rng(origdst_runtime_sim::kernel::Rng);

impl Rng {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(origdst_runtime_sim::kernel::Rng::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 99) < percent
    }

    /// One of `items`.
    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() as u64 - 1) as usize].clone()
    }

    /// A size with a heavy tail: mostly small, sometimes large (0 B to `max`).
    pub fn size(&mut self, max: u64) -> u64 {
        match self.range(0, 9) {
            0 => 0,
            1..=5 => self.range(1, 4096.min(max)),
            6..=8 => self.range(1, (256 * 1024).min(max)),
            _ => self.range(1, max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let a: Vec<u64> = (0..5)
            .scan(Rng::new(42), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..5)
            .scan(Rng::new(42), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(
            a,
            (0..5)
                .scan(Rng::new(43), |r, _| Some(r.next_u64()))
                .collect::<Vec<_>>()
        );
    }
}
