//! What goes wrong in a simulated run, and the generator that decides when: one `u64` seed.

/// Which faults a run injects (each a per-mille chance per opportunity).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Completions of one batch delivered in a shuffled order.
    pub reorder: bool,
    /// A splice, read or send moves fewer bytes than it could.
    pub short_io: u16,
    /// A splice or read answers EAGAIN although bytes are there.
    pub spurious_eagain: u16,
    /// A new pipe comes out smaller than asked (the per-user pipe limit).
    pub small_pipe: u16,
    /// A connect completes only after up to this many ms.
    pub connect_delay_ms: u64,
    /// An accept fails: `ENOMEM` (the connection stays queued), or `ECONNABORTED` for one whose
    /// client reset in the queue; either ends the multishot accept, as io_uring's errors do.
    pub accept_errors: u16,
    /// The supervisor wakes the shard with nothing to ask (per mille per tick), and the wake-up's
    /// multishot poll sometimes ends (io_uring ends multishots when its queue overflows).
    pub stray_wakes: u16,
    /// The kernel refuses a connect or head poll's registration (`ENOSPC`: epoll's
    /// `max_user_watches`), failing every readiness interest on that descriptor, as the epoll
    /// backend reports it.
    pub poll_refused: u16,
    /// The in-kernel relay refuses a pair (its map is full): the shard relays it.
    pub relay_refused: u16,
    /// The upstream socket of a relayed pair is handed back (a server's bytes arrived before
    /// the pair was complete in the map): the shard copies that direction.
    pub relay_spill: u16,
    /// The relay's work queue sends a backlog on a given tick (per mille): lower means the last
    /// bytes trail further behind the FIN the shard sees.
    pub relay_send: u16,
}

/// A deterministic generator (splitmix64): the kernel's only source of choice.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with `per_mille`/1000.
    pub fn chance(&mut self, per_mille: u16) -> bool {
        per_mille > 0 && self.next_u64() % 1000 < u64::from(per_mille)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}
