//! Thin, safe helpers over socket calls: listener set-up, what is read from an accepted socket,
//! errno to core's error kinds. Everything here is a direct non-blocking syscall.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use origdst_core::addr::{ClientAddr, LocalAddr};
use origdst_core::orig_dst::{AcceptEvidence, RecordAnswer, SockOptAnswer};
use origdst_core::outcome::IoErrorKind;
use origdst_engine::kernel::ConnectStart;
use socket2::{Domain, SockRef, Socket, Type};

/// Opens a non-blocking `SO_REUSEPORT` listener on `addr` (one per shard share the port).
pub(crate) fn listener(
    addr: SocketAddr,
    transparent: bool,
    freebind: bool,
    backlog: i32,
) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit it: a relay forwards what it has, Nagle would only add delay, and
    // setting it here saves a setsockopt per connection.
    socket.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        // [::] and 0.0.0.0 are separate listeners in config; never let one swallow the other.
        socket.set_only_v6(true)?;
    }
    if transparent {
        match addr {
            SocketAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
            SocketAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
        }
    }
    if freebind {
        match addr {
            SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
            SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
        }
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket)
}

/// Takes ownership of a descriptor the kernel returned in a CQE.
pub(crate) fn own_fd(fd: RawFd) -> OwnedFd {
    assert!(fd >= 0, "negative fd {fd}");
    // SAFETY: the accept CQE's result is a fresh descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Reads, once, everything core needs to decide an accepted connection; the mark only where
/// `fwmark_accept` says the socket carries its SYN's (else it is the listener's, 0).
pub(crate) fn accept_evidence(
    fd: &OwnedFd,
    transparent: bool,
    fwmark_accept: bool,
) -> io::Result<AcceptEvidence> {
    let socket = SockRef::from(fd);
    let peer = socket.peer_addr()?.as_socket().ok_or_else(not_inet)?;
    let local = socket.local_addr()?.as_socket().ok_or_else(not_inet)?;
    let sockopt = if transparent {
        SockOptAnswer::NotQueried
    } else {
        original_dst(&socket, local)
    };
    Ok(AcceptEvidence {
        client: ClientAddr::new(peer),
        local: LocalAddr::new(local),
        transparent,
        sockopt,
        mark: if fwmark_accept {
            socket.mark().ok().filter(|&mark| mark != 0)
        } else {
            None
        },
        internal: None,
        own_upstream: false,
        redirect_record: RecordAnswer::None,
    })
}

fn original_dst(socket: &SockRef<'_>, local: SocketAddr) -> SockOptAnswer {
    let answer = match local {
        SocketAddr::V4(_) => socket.original_dst_v4(),
        SocketAddr::V6(_) => socket.original_dst_v6(),
    };
    match answer {
        Ok(addr) => match (addr.as_socket(), local) {
            (Some(dst), SocketAddr::V4(_)) => SockOptAnswer::V4(dst),
            (Some(dst), SocketAddr::V6(_)) => SockOptAnswer::V6(dst),
            (None, _) => SockOptAnswer::Failed {
                errno: libc::EAFNOSUPPORT,
            },
        },
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => SockOptAnswer::NotFound,
        Err(err) => SockOptAnswer::Failed {
            errno: err.raw_os_error().unwrap_or(0),
        },
    }
}

fn not_inet() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket")
}

/// Creates the upstream socket (non-blocking, marked, `TCP_NODELAY`), binds it to `source` when
/// preserving the client's address, and starts connecting.
pub(crate) fn connect(
    upstream: SocketAddr,
    mark: Option<u32>,
    source: Option<origdst_core::config::Source>,
) -> io::Result<ConnectStart<OwnedFd>> {
    let socket = Socket::new(
        Domain::for_address(upstream),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    socket.set_tcp_nodelay(true)?;
    if let Some(origdst_core::config::Source {
        addr: source,
        transparent,
    }) = source
    {
        // The client's address is not ours: binding it needs IP_TRANSPARENT. A cluster's bind
        // address (upstream_bind_config) is the host's own and needs no capability.
        if transparent {
            match source {
                SocketAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
                SocketAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
            }
        }
        if source.port() == 0 {
            // Defer the port choice to connect(), which picks it per 4-tuple instead of per
            // source address: without this, every client IP gets only ~28k upstream ports in
            // total (the ephemeral-port exhaustion Envoy fixed in envoyproxy/envoy#38288).
            set_bind_address_no_port(&socket)?;
        } else {
            // bind_port: a TIME_WAIT remnant of the client's earlier connection must not block
            // the bind (cilium/proxy#53).
            socket.set_reuse_address(true)?;
        }
        socket.bind(&source.into())?;
    }
    Ok(match socket.connect(&upstream.into()) {
        Ok(()) => ConnectStart::Done(socket.into()),
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {
            ConnectStart::InProgress(socket.into())
        }
        Err(err) => ConnectStart::Failed(error_kind(&err)),
    })
}

/// `IP_BIND_ADDRESS_NO_PORT`: socket2 has no setter for it. Harmless on IPv6 sockets (the kernel
/// reads the IPv4-level flag for both families).
fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    set_int_option(
        socket.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        1,
    )
}

/// `SO_RCVLOWAT`: POLLIN is reported only once `bytes` are queued, so a head that is still
/// incomplete after a peek waits for *more* data instead of spinning. Neither socket2 nor nix
/// has a setter.
pub(crate) fn set_rcvlowat(fd: &OwnedFd, bytes: u32) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVLOWAT, bytes)
}

/// `SO_PEEK_OFF`: with `offset` ≥ 0, each `MSG_PEEK` starts where the previous one ended (and
/// moves the offset on); -1 turns it off.
pub(crate) fn set_peek_offset(fd: &OwnedFd, offset: i32) -> io::Result<()> {
    set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, offset)
}

/// Reads up to `buf.len()` bytes of the stream without consuming them.
pub(crate) fn peek(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    use nix::sys::socket::{MsgFlags, recv};
    recv(
        fd.as_raw_fd(),
        buf,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)
}

/// `SO_RCVLOWAT` on a descriptor the shard holds (the relay's kick).
pub(crate) fn set_rcvlowat_raw(fd: RawFd, bytes: libc::c_int) -> io::Result<()> {
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, bytes)
}

/// `SO_COOKIE`: the socket's kernel-wide id, what the relay's maps are keyed by.
pub(crate) fn socket_cookie(fd: RawFd) -> io::Result<u64> {
    // SAFETY: the shard passes only descriptors of sockets it holds open for the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    SockRef::from(&fd).cookie()
}

/// One byte of the stream, not consumed: 0 at EOF.
pub(crate) fn peek_one(fd: RawFd) -> io::Result<usize> {
    use nix::sys::socket::{MsgFlags, recv};
    let mut byte = [0u8; 1];
    recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)
}

/// `TCP_INFO` (neither socket2 nor nix reads it).
pub(crate) fn tcp_info(fd: RawFd) -> io::Result<libc::tcp_info> {
    // SAFETY: an all-zero tcp_info is valid; the kernel fills what it knows of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: TCP_INFO writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(info)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `SIOCOUTQ`: bytes in the send queue not yet acknowledged.
pub(crate) fn outq(fd: RawFd) -> io::Result<u64> {
    let mut bytes: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ's number) writes one int.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut bytes) };
    if rc == 0 {
        Ok(u64::try_from(bytes).unwrap_or(0))
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid socket descriptor, a c_int option value and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A descriptor to hold in reserve for when the table is full.
pub(crate) fn reserve_fd() -> io::Result<OwnedFd> {
    std::fs::File::open("/dev/null").map(OwnedFd::from)
}

/// Whether this process may bind non-local addresses (`IP_TRANSPARENT` needs CAP_NET_ADMIN or
/// CAP_NET_RAW).
pub(crate) fn check_transparent_allowed() -> io::Result<()> {
    Socket::new(Domain::IPV4, Type::STREAM.cloexec(), None)?.set_ip_transparent_v4(true)
}

/// Whether this process may set `mark` on its sockets (SO_MARK needs CAP_NET_ADMIN).
pub(crate) fn check_mark_allowed(mark: u32) -> io::Result<()> {
    Socket::new(Domain::IPV4, Type::STREAM.cloexec(), None)?.set_mark(mark)
}

/// The local address a socket is bound to (after connect: the kernel-chosen source).
pub(crate) fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    SockRef::from(fd)
        .local_addr()?
        .as_socket()
        .ok_or_else(not_inet)
}

/// After POLLOUT on a connecting socket: `None` if connected, else why not.
pub(crate) fn connect_result(fd: &OwnedFd) -> Option<IoErrorKind> {
    match SockRef::from(fd).take_error() {
        Ok(None) => None,
        Ok(Some(err)) | Err(err) => Some(error_kind(&err)),
    }
}

/// Arms a reset: with `SO_LINGER` {on, 0} the final close sends RST instead of FIN.
pub(crate) fn arm_reset(fd: &OwnedFd) {
    // Failure leaves a FIN instead of RST; there is nothing better to do with a dying socket.
    let _ = SockRef::from(fd).set_linger(Some(Duration::ZERO));
}

/// `shutdown(SHUT_WR)`: sends FIN after queued bytes.
pub(crate) fn shutdown_write(fd: &OwnedFd) -> Result<(), IoErrorKind> {
    SockRef::from(fd)
        .shutdown(std::net::Shutdown::Write)
        .map_err(|err| error_kind(&err))
}

/// Whether this network namespace has `net.ipv4.tcp_fwmark_accept` on (read once per shard;
/// unreadable counts as off, the kernel's default).
pub(crate) fn fwmark_accept() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fwmark_accept")
        .is_ok_and(|text| text.trim() == "1")
}

/// Maps an I/O error to core's kinds.
pub(crate) fn error_kind(err: &io::Error) -> IoErrorKind {
    origdst_engine::shard::error_kind(err)
}

/// The host's addresses, for the "destination is one of our wildcard listeners" rule.
pub(crate) fn local_ips() -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = vec![
        "127.0.0.1".parse().expect("literal"),
        "::1".parse().expect("literal"),
    ];
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifaddr in addrs {
            let Some(address) = ifaddr.address else {
                continue;
            };
            let ip = if let Some(v4) = address.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = address.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    ips
}

/// The network capabilities this process holds, from `CapEff` in /proc/self/status (for the
/// start-up line: an operator sees what origdst runs with, not only what failed).
pub(crate) fn effective_net_capabilities() -> String {
    const CAP_NET_BIND_SERVICE: u32 = 10;
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_NET_RAW: u32 = 13;
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        });
    let Some(bits) = effective else {
        return "unknown".into();
    };
    let held: Vec<&str> = [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_NET_RAW, "CAP_NET_RAW"),
        (CAP_NET_BIND_SERVICE, "CAP_NET_BIND_SERVICE"),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & (1 << bit) != 0)
    .map(|(_, name)| name)
    .collect();
    if held.is_empty() {
        "none".into()
    } else {
        held.join(",")
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::os::fd::OwnedFd;

    use socket2::SockRef;

    /// The listener's `TCP_NODELAY` is what every accepted socket gets (the per-accept
    /// setsockopt this replaced is gone), on both families.
    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let listener = super::listener(any.parse().unwrap(), false, false, 8).unwrap();
            let addr = listener.local_addr().unwrap().as_socket().unwrap();
            let _client = TcpStream::connect(addr).unwrap();
            listener.set_nonblocking(false).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            let accepted = OwnedFd::from(accepted);
            assert!(
                SockRef::from(&accepted).tcp_nodelay().unwrap(),
                "{any}: TCP_NODELAY not inherited"
            );
        }
    }
}
