//! Splice pipes as the kernel makes them: `pipe2`, `F_SETPIPE_SZ`, verified with `F_GETPIPE_SZ`.
//! The pool's rules (lease while bytes are in flight, never pool a pipe that holds bytes, a byte
//! budget) are the engine's ([`origdst_engine::pipes`]).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::pipe2;
use origdst_engine::kernel::PipeEnds;

/// A pipe's two ends as the kernel made them.
#[derive(Debug)]
pub(crate) struct Ends {
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
}

impl PipeEnds for Ends {
    fn kernel_queued(&self) -> Option<u32> {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer, which outlives the call.
        let rc = unsafe { libc::ioctl(self.read.as_raw_fd(), libc::FIONREAD, &mut queued) };
        (rc == 0).then(|| u32::try_from(queued).unwrap_or(0))
    }
}

/// A non-blocking pipe of (about) `size_bytes` and the capacity granted; `None` when the kernel
/// refuses (descriptor limits): the direction then copies.
pub(crate) fn create(size_bytes: u32) -> Option<(Ends, u32)> {
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
    (capacity > 0).then_some((Ends { read, write }, capacity))
}

#[cfg(test)]
mod tests {
    use origdst_engine::pipes::{Pipe, PipePool, PooledPipe};

    use super::*;

    fn make(size: u32) -> Option<Pipe<Ends>> {
        create(size).map(|(ends, capacity)| Pipe {
            ends,
            capacity,
            data: 0,
        })
    }

    #[test]
    fn real_pipes_report_what_they_hold() {
        let mut pool = PipePool::new(2 * 65536, 65536);
        let mut pipe = pool.lease(make).expect("a pipe");
        assert!(pipe.capacity >= 4096);
        assert_eq!(pipe.kernel_queued(), Some(0));
        nix::unistd::write(&pipe.ends.write, b"leftover").unwrap();
        pipe.data = 8;
        assert_eq!(pipe.kernel_queued(), Some(8));
        pool.release(pipe);
        assert_eq!(pool.discarded, 1, "a pipe with bytes is closed, not pooled");
        let next = pool.lease(make).expect("a fresh pipe");
        assert_eq!(next.kernel_queued(), Some(0));
    }
}
