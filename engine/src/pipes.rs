//! The accounting of a shard's splice pipes, HAProxy's model: a direction leases a pipe only while
//! bytes are in flight and gives it back empty; a pipe that still holds bytes — its connection
//! died with them — is discarded, never pooled, or the next connection would receive them. The
//! pool's size comes from a byte budget because pipes count against per-UID limits
//! (`fs.pipe-user-pages-soft`: past it new pipes silently shrink to 8 KiB). The pipes themselves
//! (descriptors, `F_SETPIPE_SZ`) are the runtime's; this is the rule book.

/// A pipe the data path leases: the kernel's two ends, the capacity it granted, and the bytes the
/// data path put in and has not taken out.
#[derive(Debug)]
pub struct Pipe<E> {
    /// The kernel's pipe.
    pub ends: E,
    /// What the kernel granted (`F_GETPIPE_SZ`), not what was asked for.
    pub capacity: u32,
    /// Bytes spliced in and not yet spliced out.
    pub data: u32,
}

impl<E: crate::kernel::PipeEnds> PooledPipe for Pipe<E> {
    fn queued(&self) -> u32 {
        self.data
    }

    fn capacity(&self) -> u32 {
        self.capacity
    }

    fn kernel_queued(&self) -> Option<u32> {
        self.ends.kernel_queued()
    }
}

/// What the pool needs to know of a pipe.
pub trait PooledPipe {
    /// Bytes the data path put in and has not taken out (its own bookkeeping).
    fn queued(&self) -> u32;
    /// The capacity the kernel granted (not what was asked for).
    fn capacity(&self) -> u32;
    /// What the kernel says the pipe holds, where it can tell (FIONREAD); checked against the
    /// bookkeeping in debug builds, so an accounting slip fails the tests instead of leaking one
    /// connection's bytes into the next.
    fn kernel_queued(&self) -> Option<u32>;
}

/// A shard's pipes: free ones, and how many exist.
#[derive(Debug)]
pub struct PipePool<P> {
    free: Vec<P>,
    created: u32,
    max: u32,
    size_bytes: u32,
    /// Pipes the kernel made smaller than asked.
    pub shrunk: u64,
    /// Pipes closed with bytes in them (or in use by an operation) when their connection ended.
    pub discarded: u64,
}

impl<P: PooledPipe> PipePool<P> {
    /// A pool of at most `budget_bytes / size_bytes` pipes of `size_bytes` each.
    pub fn new(budget_bytes: u64, size_bytes: u32) -> Self {
        assert!(size_bytes.is_power_of_two(), "pipe sizes are powers of two");
        let max = u32::try_from(budget_bytes / u64::from(size_bytes)).unwrap_or(u32::MAX);
        Self {
            free: Vec::new(),
            created: 0,
            max,
            size_bytes,
            shrunk: 0,
            discarded: 0,
        }
    }

    /// An empty pipe: a pooled one, or a new one from `create(size_bytes)` while the budget
    /// allows; `None` when the budget is spent or creation failed (the direction copies instead).
    pub fn lease(&mut self, create: impl FnOnce(u32) -> Option<P>) -> Option<P> {
        if let Some(pipe) = self.free.pop() {
            assert_eq!(pipe.queued(), 0, "a pooled pipe is empty");
            return Some(pipe);
        }
        if self.created >= self.max {
            return None;
        }
        let pipe = create(self.size_bytes)?;
        if pipe.capacity() < self.size_bytes {
            self.shrunk += 1;
            if self.shrunk == 1 {
                tracing::warn!(
                    requested = self.size_bytes,
                    got = pipe.capacity(),
                    "pipe smaller than requested (per-user pipe limit, fs.pipe-user-pages-soft); \
                     splice still works but costs more CPU per byte"
                );
            }
        }
        self.created += 1;
        Some(pipe)
    }

    /// A pipe comes back: pooled if empty, discarded if it holds bytes.
    pub fn release(&mut self, pipe: P) {
        let queued = pipe.queued();
        debug_assert_eq!(
            pipe.kernel_queued().unwrap_or(queued),
            queued,
            "the pipe's bookkeeping disagrees with the kernel"
        );
        if queued == 0 {
            assert!(
                self.free.len() < self.created as usize,
                "more pipes returned than created"
            );
            self.free.push(pipe);
        } else {
            self.discard(pipe);
        }
    }

    /// Closes a pipe that must not be pooled whatever it holds (an operation may still use it).
    pub fn discard(&mut self, pipe: P) {
        assert!(self.created > 0, "discarding a pipe the pool never made");
        self.created -= 1;
        self.discarded += 1;
        drop(pipe);
    }

    /// Closes every idle pipe (descriptors are short); how many.
    pub fn shed_idle(&mut self) -> u32 {
        let idle = self.free.len() as u32;
        self.created -= idle;
        self.free.clear();
        idle
    }

    /// Pipes out on lease.
    pub fn leased(&self) -> u32 {
        self.created - self.free.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Fake {
        id: u32,
        capacity: u32,
        queued: u32,
    }

    impl PooledPipe for Fake {
        fn queued(&self) -> u32 {
            self.queued
        }
        fn capacity(&self) -> u32 {
            self.capacity
        }
        fn kernel_queued(&self) -> Option<u32> {
            None
        }
    }

    fn maker(next: &mut u32) -> impl FnOnce(u32) -> Option<Fake> + '_ {
        move |size| {
            *next += 1;
            Some(Fake {
                id: *next,
                capacity: size,
                queued: 0,
            })
        }
    }

    #[test]
    fn a_pipe_holding_a_dead_connections_bytes_is_never_leased_again() {
        let mut ids = 0;
        let mut pool = PipePool::new(2 * 65536, 65536);
        let mut dirty = pool.lease(maker(&mut ids)).unwrap();
        dirty.queued = 1000;
        let dirty_id = dirty.id;
        pool.release(dirty);
        assert_eq!(pool.discarded, 1);
        assert_eq!(pool.leased(), 0);
        // Whatever is leased next is a new, empty pipe.
        for _ in 0..2 {
            let pipe = pool.lease(maker(&mut ids)).unwrap();
            assert_ne!(pipe.id, dirty_id);
            assert_eq!(pipe.queued, 0);
        }
    }

    #[test]
    fn budget_bounds_the_pool_and_empty_pipes_are_reused() {
        let mut ids = 0;
        let mut pool = PipePool::new(2 * 65536, 65536);
        let a = pool.lease(maker(&mut ids)).unwrap();
        let _b = pool.lease(maker(&mut ids)).unwrap();
        assert!(pool.lease(maker(&mut ids)).is_none(), "budget allows two");
        let a_id = a.id;
        pool.release(a);
        assert_eq!(pool.leased(), 1);
        assert_eq!(pool.lease(maker(&mut ids)).unwrap().id, a_id);
        assert_eq!(ids, 2, "no third pipe was made");
    }

    #[test]
    fn shrunk_pipes_are_counted_and_idle_ones_shed() {
        let mut pool = PipePool::new(4 * 65536, 65536);
        let small = pool
            .lease(|_| {
                Some(Fake {
                    id: 1,
                    capacity: 8192,
                    queued: 0,
                })
            })
            .unwrap();
        assert_eq!(pool.shrunk, 1);
        pool.release(small);
        assert_eq!(pool.shed_idle(), 1);
        assert_eq!(pool.leased(), 0);
        let mut ids = 0;
        assert!(
            pool.lease(maker(&mut ids)).is_some(),
            "shedding frees budget"
        );
    }

    #[test]
    #[should_panic(expected = "bookkeeping disagrees with the kernel")]
    fn bookkeeping_that_disagrees_with_the_kernel_fails_loudly() {
        struct Lying;
        impl PooledPipe for Lying {
            fn queued(&self) -> u32 {
                0
            }
            fn capacity(&self) -> u32 {
                65536
            }
            fn kernel_queued(&self) -> Option<u32> {
                Some(17)
            }
        }
        let mut pool = PipePool::new(65536, 65536);
        let pipe = pool.lease(|_| Some(Lying)).unwrap();
        pool.release(pipe);
    }
}
