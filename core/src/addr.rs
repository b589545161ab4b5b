//! Address newtypes. A bare `SocketAddr` says nothing about whose address it is; in a proxy that
//! confusion is how loops and wrong-destination bugs are born, so every role has its own type.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

macro_rules! addr_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(SocketAddr);

        impl $name {
            /// Wraps `addr`, canonicalising a v4-mapped IPv6 address (`::ffff:a.b.c.d`) to IPv4 so
            /// that one endpoint has one spelling in comparisons, stats and logs.
            pub fn new(addr: SocketAddr) -> Self {
                Self(canonical(addr))
            }

            /// The address itself.
            pub const fn get(self) -> SocketAddr {
                self.0
            }

            /// The IP part.
            pub const fn ip(self) -> IpAddr {
                self.0.ip()
            }

            /// The port part.
            pub const fn port(self) -> u16 {
                self.0.port()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

addr_newtype!(
    /// The downstream peer: whoever connected to the proxy (as the kernel reports it).
    ClientAddr
);
addr_newtype!(
    /// The destination the client dialled before interception rewrote it.
    OrigDstAddr
);
addr_newtype!(
    /// Where the proxy actually connects. Equal to the original destination for ORIGINAL_DST
    /// clusters; kept distinct because overrides (port override, headers) may change it.
    UpstreamAddr
);
addr_newtype!(
    /// The address the proxy accepted the connection on (`getsockname` of the accepted socket).
    LocalAddr
);
addr_newtype!(
    /// An address one of the proxy's own listeners is bound to.
    ListenerAddr
);

/// `::ffff:a.b.c.d` becomes `a.b.c.d`; everything else is unchanged.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        // Scope id and flow label survive on everything that is not v4-mapped.
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// The IP part of [`canonical`].
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_is_canonicalised() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
        assert_eq!(
            OrigDstAddr::new(mapped).get(),
            "10.1.2.3:80".parse().unwrap()
        );
    }

    #[test]
    fn plain_v6_is_kept() {
        let v6: SocketAddr = "[fd00::1]:443".parse().unwrap();
        assert_eq!(OrigDstAddr::new(v6).get(), v6);
        let compat: SocketAddr = "[::10.1.2.3]:443".parse().unwrap();
        assert_eq!(canonical(compat), compat, "v4-compatible is not v4-mapped");
    }
}
