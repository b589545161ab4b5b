//! A per-shard pool of pipes for splice, HAProxy's model: a direction leases a pipe only while
//! bytes are in flight and gives it back empty; a pipe that still holds bytes is never pooled.
//! The pool's size comes from a byte budget because pipes count against per-UID limits
//! (`fs.pipe-user-pages-soft`: past it new pipes silently shrink to 8 KiB).

use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::pipe2;

/// A leased pipe and how many bytes sit in it.
#[derive(Debug)]
pub(crate) struct Pipe {
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
    /// What `F_GETPIPE_SZ` reported, not what we asked for.
    pub(crate) capacity: u32,
    /// Bytes spliced in and not yet spliced out.
    pub(crate) data: u32,
}

/// The pool. Single-threaded: one per shard.
pub(crate) struct PipePool {
    free: Vec<Pipe>,
    /// Pipes that exist (free + leased); never more than `max`.
    created: u32,
    max: u32,
    size_bytes: u32,
    /// Pipes that came out smaller than requested (per-UID limit or `fs.pipe-max-size`).
    pub(crate) shrunk: u64,
    /// Pipes closed because they still held bytes when their connection ended.
    pub(crate) discarded: u64,
}

impl PipePool {
    /// A pool of at most `budget_bytes / size_bytes` pipes of `size_bytes` each.
    pub(crate) fn new(budget_bytes: u64, size_bytes: u32) -> Self {
        assert!(size_bytes.is_power_of_two());
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

    /// A pipe, or `None` when the budget is used up or the kernel refuses (the caller copies).
    pub(crate) fn lease(&mut self) -> Option<Pipe> {
        if let Some(pipe) = self.free.pop() {
            debug_assert_eq!(pipe.data, 0);
            return Some(pipe);
        }
        if self.created >= self.max {
            return None;
        }
        let pipe = self.create()?;
        self.created += 1;
        Some(pipe)
    }

    /// Returns an empty pipe to the pool.
    pub(crate) fn give_back(&mut self, pipe: Pipe) {
        assert_eq!(
            pipe.data, 0,
            "a pipe holding bytes must be discarded, never pooled"
        );
        assert!(
            self.free.len() < self.created as usize,
            "more pipes returned than created"
        );
        self.free.push(pipe);
    }

    /// Closes a pipe that still holds bytes (its connection ended abnormally).
    pub(crate) fn discard(&mut self, pipe: Pipe) {
        assert!(self.created > 0);
        self.created -= 1;
        self.discarded += 1;
        drop(pipe);
    }

    /// Closes every idle pipe (two descriptors each) and returns how many: descriptors are worth
    /// more than warm pipes when the table is full, and splice re-creates pipes as it needs them.
    pub(crate) fn shed_idle(&mut self) -> u32 {
        let idle = self.free.len() as u32;
        self.created -= idle;
        self.free.clear();
        idle
    }

    /// Pipes leased right now.
    pub(crate) fn leased(&self) -> u32 {
        self.created - self.free.len() as u32
    }

    fn create(&mut self) -> Option<Pipe> {
        let (read, write) = match pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
            Ok(fds) => fds,
            Err(errno) => {
                tracing::debug!(%errno, "pipe2 failed; copying instead");
                return None;
            }
        };
        let requested = i32::try_from(self.size_bytes).unwrap_or(i32::MAX);
        // EPERM here is the per-UID limit; the pipe still works at its default size.
        let _ = fcntl(write.as_fd(), FcntlArg::F_SETPIPE_SZ(requested));
        let capacity = match fcntl(write.as_fd(), FcntlArg::F_GETPIPE_SZ) {
            Ok(size) => u32::try_from(size).unwrap_or(0),
            Err(_) => 0,
        };
        if capacity == 0 {
            return None;
        }
        if capacity < self.size_bytes {
            self.shrunk += 1;
            if self.shrunk == 1 {
                tracing::warn!(
                    requested = self.size_bytes,
                    got = capacity,
                    "pipe smaller than requested (per-user pipe limit, fs.pipe-user-pages-soft); \
                     splice still works but costs more CPU per byte"
                );
            }
        }
        Some(Pipe {
            read,
            write,
            capacity,
            data: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_bounds_the_pool_and_pipes_are_reused() {
        let mut pool = PipePool::new(2 * 65536, 65536);
        let a = pool.lease().expect("first pipe");
        let b = pool.lease().expect("second pipe");
        assert!(a.capacity >= 4096);
        assert!(pool.lease().is_none(), "budget allows two");
        assert_eq!(pool.leased(), 2);
        pool.give_back(a);
        assert_eq!(pool.leased(), 1);
        assert!(pool.lease().is_some(), "a returned pipe is leased again");
        let mut full = b;
        full.data = 1;
        pool.discard(full);
        assert_eq!(pool.discarded, 1);
        assert!(pool.lease().is_some(), "discarding frees budget");
    }

    #[test]
    #[should_panic(expected = "must be discarded")]
    fn a_pipe_with_bytes_is_never_pooled() {
        let mut pool = PipePool::new(65536, 65536);
        let mut pipe = pool.lease().unwrap();
        pipe.data = 10;
        pool.give_back(pipe);
    }
}
