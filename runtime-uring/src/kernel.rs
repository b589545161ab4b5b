//! The real kernel behind the engine's [`Kernel`] boundary: io_uring or epoll as the event source
//! ([`Poller`]), syscalls for everything else, and the two data paths only io_uring has
//! (provided-buffer copy, `IORING_OP_SPLICE`) as native directions.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use io_uring::cqueue;
use nix::fcntl::{SpliceFFlags, splice};
use origdst_core::config::DataPath;
use origdst_core::orig_dst::AcceptEvidence;
use origdst_core::outcome::IoErrorKind;
use origdst_core::time::Instant;
use origdst_engine::kernel::{ConnectStart, Errno, Kernel, NativeDir, interleave};
use origdst_engine::progress::Progress;
use origdst_engine::shard::io::Io;
use origdst_engine::slots::DirKey;
use origdst_engine::token::{Kind, Token};

use crate::buf_ring::BufRing;
use crate::pipe_pool::{self, Ends};
use crate::shard::copy::CopyDir;
use crate::shard::opsplice::OpSpliceDir;
use crate::shard::poller::Poller;
use crate::sys;

/// io_uring or epoll, and real syscalls.
pub(crate) struct RealKernel {
    pub(crate) poller: Poller,
    /// The provided-buffer ring (uring-copy only).
    pub(crate) buf_ring: Option<BufRing>,
    origin: std::time::Instant,
    /// Test-only fault injection (`ORIGDST_BUGGIFY=<seed>`), FoundationDB's BUGGIFY.
    buggify: Option<Buggify>,
    /// `net.ipv4.tcp_fwmark_accept`: only then does an accepted socket carry its SYN's mark, so
    /// only then is it worth a `getsockopt` per connection.
    fwmark_accept: bool,
    /// The in-kernel relay's maps (kernel-sockmap).
    relay: Option<crate::sockmap::ShardRelay>,
    /// Pods' network namespaces (in-pod mode).
    netns: Option<std::sync::Arc<crate::pods::netns::NetnsRegistry>>,
}

/// The simulator's faults, in the real runtime, for the real-kernel tests: short splices, reads
/// and sends, spurious `EAGAIN`, pipes smaller than asked, completion batches reordered (each
/// operation's own completions keep their order). Every one is something the kernel may do
/// anyway; BUGGIFY makes it happen often. Off unless the environment variable is set.
struct Buggify(u64);

impl Buggify {
    fn from_env(shard: usize) -> Option<Self> {
        let seed: u64 = std::env::var(BUGGIFY_ENV).ok()?.parse().ok()?;
        Some(Self(
            seed ^ (shard as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ))
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: test-only choices, not cryptography.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// One time in `one_in`.
    fn sometimes(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }

    /// `len`, or sometimes a shorter non-zero length.
    fn shorten(&mut self, len: usize) -> usize {
        if len > 1 && self.sometimes(4) {
            1 + (self.next() % (len as u64 - 1)) as usize
        } else {
            len
        }
    }
}

/// BUGGIFY's pause between a relayed pair's two map updates, at most (it ends when the upstream
/// spills): long enough for a server that writes on accept to be heard in between on a loaded
/// machine (20 ms was not: seen twice in one full run).
const RELAY_SPILL_PAUSE: Duration = Duration::from_secs(1);

/// Turns BUGGIFY on for a process (with a seed): test-only.
pub(crate) const BUGGIFY_ENV: &str = "ORIGDST_BUGGIFY";

impl RealKernel {
    pub(crate) fn new(
        poller: Poller,
        buf_ring: Option<BufRing>,
        origin: std::time::Instant,
        shard: usize,
        relay: Option<crate::sockmap::ShardRelay>,
        netns: Option<std::sync::Arc<crate::pods::netns::NetnsRegistry>>,
    ) -> Self {
        let buggify = Buggify::from_env(shard);
        if buggify.is_some() && shard == 0 {
            tracing::warn!(
                "{BUGGIFY_ENV} is set: test-only fault injection (short I/O, spurious EAGAIN, \
                 small pipes, reordered completions) is on"
            );
        }
        Self {
            poller,
            buf_ring,
            origin,
            buggify,
            fwmark_accept: sys::fwmark_accept(),
            relay,
            netns,
        }
    }

    fn shorten(&mut self, len: usize) -> usize {
        self.buggify.as_mut().map_or(len, |b| b.shorten(len))
    }

    fn spurious_eagain(&mut self) -> bool {
        self.buggify.as_mut().is_some_and(|b| b.sometimes(16))
    }
}

/// The native data paths' directions.
#[derive(Debug)]
pub(crate) enum NativeDirs {
    Copy(CopyDir),
    OpSplice(OpSpliceDir),
}

impl Kernel for RealKernel {
    type Socket = OwnedFd;
    type PipeEnds = Ends;
    type Spare = OwnedFd;
    type Native = NativeDirs;

    fn raw(socket: &OwnedFd) -> i32 {
        socket.as_raw_fd()
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn poll_once(&mut self, fd: i32, events: u32, user_data: u64) {
        self.poller.poll_once(fd, events, user_data);
    }

    fn watch(&mut self, fd: i32, user_data: u64) {
        self.poller.watch(fd, user_data);
    }

    fn accept_multi(&mut self, fd: i32, user_data: u64) {
        self.poller.accept_multi(fd, user_data);
    }

    fn poll_multi(&mut self, fd: i32, user_data: u64) {
        self.poller.poll_multi(fd, user_data);
    }

    fn cancel_ops(&mut self, fds: &[i32], targets: &[u64], user_data: u64) {
        self.poller.cancel_ops(fds, targets, user_data);
    }

    fn cancel_accept(&mut self, fd: i32, target: u64, user_data: u64) {
        self.poller.cancel_accept(fd, target, user_data);
    }

    fn submit(&mut self) {
        self.poller.submit();
    }

    fn has_backlog(&self) -> bool {
        self.poller.has_backlog()
    }

    fn wait(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        self.poller.wait(want, timeout)
    }

    fn completions(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        let from = out.len();
        self.poller.completions(out);
        if let Some(b) = self.buggify.as_mut() {
            let mut batch = out.split_off(from);
            interleave(&mut batch, |n| (b.next() % n as u64) as usize);
            out.append(&mut batch);
        }
    }

    fn adopt(&mut self, fd: i32) -> OwnedFd {
        sys::own_fd(fd)
    }

    fn accept_evidence(
        &mut self,
        socket: &OwnedFd,
        transparent: bool,
    ) -> io::Result<AcceptEvidence> {
        sys::accept_evidence(socket, transparent, self.fwmark_accept)
    }

    fn connect(
        &mut self,
        upstream: SocketAddr,
        mark: Option<u32>,
        source: Option<origdst_core::config::Source>,
        // Linux has no redirect records (the platforms that do are modelled in the simulator).
        _record: Option<&origdst_core::orig_dst::RedirectRecord>,
        netns: Option<origdst_engine::listeners::NetnsId>,
    ) -> io::Result<ConnectStart<OwnedFd>> {
        match (netns, &self.netns) {
            (None, _) => sys::connect(upstream, mark, source),
            // A pod's connection: its socket is made in the pod (its routes, its address, its
            // capture rules, which skip origdst's mark); connect(2) itself may run anywhere.
            (Some(id), Some(registry)) => {
                registry.run_in_id(id, || sys::connect(upstream, mark, source))?
            }
            (Some(_), None) => Err(io::Error::other("no pod namespaces in this process")),
        }
    }

    fn socket_error(&mut self, socket: &OwnedFd) -> Option<IoErrorKind> {
        sys::connect_result(socket)
    }

    fn local_addr(&mut self, socket: &OwnedFd) -> io::Result<SocketAddr> {
        sys::local_addr(socket)
    }

    fn shutdown_write(&mut self, socket: &OwnedFd) -> Result<(), IoErrorKind> {
        sys::shutdown_write(socket)
    }

    fn arm_reset(&mut self, socket: &OwnedFd) {
        sys::arm_reset(socket);
    }

    fn stop_listening(&mut self, socket: &OwnedFd) {
        // The socket lives on until the kernel has finished cancelling its accept request
        // (milliseconds); until then it would still complete handshakes nobody accepts.
        let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Read);
    }

    fn set_rcvlowat(&mut self, socket: &OwnedFd, bytes: u32) -> io::Result<()> {
        sys::set_rcvlowat(socket, bytes)
    }

    fn set_peek_offset(&mut self, socket: &OwnedFd, offset: i32) -> io::Result<()> {
        sys::set_peek_offset(socket, offset)
    }

    fn peek(&mut self, socket: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
        sys::peek(socket, buf)
    }

    fn reserve_fd(&mut self) -> io::Result<OwnedFd> {
        sys::reserve_fd()
    }

    fn new_pipe(&mut self, size_bytes: u32) -> Option<(Ends, u32)> {
        let small = self.buggify.as_mut().is_some_and(|b| b.sometimes(4));
        pipe_pool::create(if small { 4096 } else { size_bytes })
    }

    fn splice_in(&mut self, src: i32, pipe: &Ends, len: usize) -> Result<usize, Errno> {
        if self.spurious_eagain() {
            return Err(libc::EAGAIN);
        }
        let len = self.shorten(len);
        // SAFETY: the shard keeps `src` open for as long as its connection exists, and a pump
        // runs only for a live connection.
        let src = unsafe { std::os::fd::BorrowedFd::borrow_raw(src) };
        splice(src, None, pipe.write.as_fd(), None, len, splice_flags()).map_err(|e| e as i32)
    }

    fn splice_out(&mut self, pipe: &Ends, sink: i32, len: usize) -> Result<usize, Errno> {
        let len = self.shorten(len);
        // SAFETY: as in `splice_in`.
        let sink = unsafe { std::os::fd::BorrowedFd::borrow_raw(sink) };
        splice(pipe.read.as_fd(), None, sink, None, len, splice_flags()).map_err(|e| e as i32)
    }

    fn read(&mut self, fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
        if self.spurious_eagain() {
            return Err(libc::EAGAIN);
        }
        let n = self.shorten(buf.len());
        let buf = &mut buf[..n];
        // SAFETY: as in `splice_in`.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        nix::unistd::read(fd, buf).map_err(|e| e as i32)
    }

    fn send(&mut self, fd: i32, buf: &[u8]) -> Result<usize, Errno> {
        let n = self.shorten(buf.len());
        let buf = &buf[..n];
        nix::sys::socket::send(fd, buf, nix::sys::socket::MsgFlags::MSG_NOSIGNAL)
            .map_err(|e| e as i32)
    }

    fn native_dir(&self, path: DataPath) -> Option<NativeDirs> {
        match path {
            DataPath::UringCopy => Some(NativeDirs::Copy(CopyDir::default())),
            DataPath::UringOpSplice => Some(NativeDirs::OpSplice(OpSpliceDir::default())),
            DataPath::UringSplice | DataPath::KernelSockmap => None,
        }
    }

    fn relay_pair(&mut self, client: &OwnedFd, upstream: &OwnedFd) -> Result<(), Errno> {
        match self.relay.as_mut() {
            Some(relay) => {
                // BUGGIFY: a pause between the two map updates, so a server that speaks at once
                // spills (its direction is handed back and copied).
                let between = self.buggify.as_ref().map(|_| RELAY_SPILL_PAUSE);
                relay.insert(client.as_raw_fd(), upstream.as_raw_fd(), between)
            }
            None => Err(libc::ENOSYS),
        }
    }

    fn tcp_counts(&mut self, fd: i32) -> Option<origdst_engine::kernel::TcpCounts> {
        crate::sockmap::tcp_counts(fd)
    }

    fn relayed_source(&mut self, fd: i32) -> Result<origdst_engine::kernel::RelayedSource, Errno> {
        match self.relay.as_mut() {
            Some(relay) => relay.source(fd),
            None => Err(libc::ENOSYS),
        }
    }

    fn relay_forget(&mut self, fd: i32) {
        if let Some(relay) = self.relay.as_mut() {
            relay.forget(fd);
        }
    }

    fn recycle_stale(&mut self, token: Token, flags: u32) {
        let Some(ring) = self.buf_ring.as_mut() else {
            return;
        };
        match token.kind {
            Kind::Recv => {
                if let Some(id) = cqueue::buffer_select(flags) {
                    ring.taken();
                    ring.give_back(id);
                }
            }
            // A send's buffer was kept back at release because the kernel still owned it.
            Kind::Send => ring.give_back(token.buf),
            _ => {}
        }
    }

    fn wait_counts(&self) -> (u64, u64) {
        self.poller.wait_counts()
    }

    fn buffers_in_flight(&self) -> u64 {
        self.buf_ring
            .as_ref()
            .map_or(0, |r| u64::from(r.in_flight()))
    }
}

impl NativeDir<RealKernel> for NativeDirs {
    fn start(&mut self, io: &mut Io<RealKernel>, fds: (i32, i32), key: DirKey) -> Progress {
        match self {
            Self::Copy(copy) => {
                copy.start(io, fds.0, key);
                Progress::default()
            }
            Self::OpSplice(op) => op.start(io, fds, key),
        }
    }

    fn resume(&mut self, io: &mut Io<RealKernel>, fds: (i32, i32), key: DirKey) -> Progress {
        match self {
            Self::Copy(copy) => {
                copy.resume(io, fds.0, key);
                Progress::default()
            }
            Self::OpSplice(op) => op.start(io, fds, key),
        }
    }

    fn on_completion(
        &mut self,
        io: &mut Io<RealKernel>,
        fds: (i32, i32),
        key: DirKey,
        kind: Kind,
        res: i32,
        flags: u32,
    ) -> Progress {
        match (self, kind) {
            (Self::Copy(copy), Kind::Recv) => copy.on_recv(io, fds, key, res, flags),
            (Self::Copy(copy), Kind::Send) => copy.on_send(io, fds, key, res),
            (Self::Copy(copy), Kind::PollOut) => {
                copy.on_pollout(io, fds.1, key);
                Progress::default()
            }
            (Self::OpSplice(op), Kind::PollIn | Kind::PollOut) => op.on_poll(io, fds, key),
            (Self::OpSplice(op), kind @ (Kind::SpliceIn | Kind::SpliceOut)) => {
                op.on_splice(io, fds, key, kind, res)
            }
            (dir, kind) => unreachable!("{kind:?} completion on {dir:?}"),
        }
    }

    fn inflight(&self, key: DirKey, out: &mut Vec<u64>) {
        match self {
            Self::Copy(copy) => copy.inflight(key, out),
            Self::OpSplice(op) => {
                if let Some(kind) = op.armed() {
                    out.push(Token::new(kind, key.slot, key.generation, key.dir).encode());
                }
            }
        }
    }

    fn release(&mut self, io: &mut Io<RealKernel>) {
        match self {
            Self::Copy(copy) => copy.release(io),
            Self::OpSplice(op) => op.release(io),
        }
    }
}

fn splice_flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}
