//! Splice pipes as the kernel makes them: `pipe2`, `F_SETPIPE_SZ`, verified with `F_GETPIPE_SZ`.
//! The pool's rules (lease while bytes are in flight, never pool a pipe that holds bytes, a byte
//! budget) are the engine's ([`origdst_engine::pipes`]).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::pipe2;
use origdst_engine::pipes::PooledPipe;

/// A shard's pool of kernel pipes.
pub(crate) type PipePool = origdst_engine::pipes::PipePool<Pipe>;

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

impl PooledPipe for Pipe {
    fn queued(&self) -> u32 {
        self.data
    }

    fn capacity(&self) -> u32 {
        self.capacity
    }

    fn kernel_queued(&self) -> Option<u32> {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer, which outlives the call.
        let rc = unsafe { libc::ioctl(self.read.as_raw_fd(), libc::FIONREAD, &mut queued) };
        (rc == 0).then(|| u32::try_from(queued).unwrap_or(0))
    }
}

/// A non-blocking pipe of (about) `size_bytes`; `None` when the kernel refuses (descriptor
/// limits): the direction then copies.
pub(crate) fn create(size_bytes: u32) -> Option<Pipe> {
    let (read, write) = match pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
        Ok(fds) => fds,
        Err(errno) => {
            tracing::debug!(%errno, "pipe2 failed; copying instead");
            return None;
        }
    };
    let requested = i32::try_from(size_bytes).unwrap_or(i32::MAX);
    let _ = fcntl(write.as_fd(), FcntlArg::F_SETPIPE_SZ(requested));
    let capacity = match fcntl(write.as_fd(), FcntlArg::F_GETPIPE_SZ) {
        Ok(size) => u32::try_from(size).unwrap_or(0),
        Err(_) => 0,
    };
    if capacity == 0 {
        return None;
    }
    Some(Pipe {
        read,
        write,
        capacity,
        data: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_pipes_report_what_they_hold() {
        let mut pool = PipePool::new(2 * 65536, 65536);
        let mut pipe = pool.lease(create).expect("a pipe");
        assert!(pipe.capacity >= 4096);
        assert_eq!(pipe.kernel_queued(), Some(0));
        nix::unistd::write(&pipe.write, b"leftover").unwrap();
        pipe.data = 8;
        assert_eq!(pipe.kernel_queued(), Some(8));
        pool.release(pipe);
        assert_eq!(pool.discarded, 1, "a pipe with bytes is closed, not pooled");
        let next = pool.lease(create).expect("a fresh pipe");
        assert_eq!(next.kernel_queued(), Some(0));
    }
}
