//! The two directions of a relayed connection and their half-close states.
//!
//! ```text
//!            ClientToUpstream: read client ──▶ write upstream
//!   client ◀═════════════════ origdst ═════════════════▶ upstream
//!            UpstreamToClient: read upstream ──▶ write client
//! ```
//!
//! Each direction moves `Open → ReadEof → WriteShut`: its source reached EOF (and every byte read
//! was written), then the proxy shut the sink's write half. The connection lives until both
//! directions are `WriteShut` (join, not try-join: one finished direction never cuts the other).

/// One of the two sockets of a relayed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The downstream socket (accepted).
    Client,
    /// The upstream socket (connected by the proxy).
    Upstream,
}

impl Side {
    /// The other side.
    pub const fn peer(self) -> Self {
        match self {
            Self::Client => Self::Upstream,
            Self::Upstream => Self::Client,
        }
    }

    /// Stable name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
        }
    }
}

/// A direction of byte flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// Bytes read from the client, written to the upstream.
    ClientToUpstream,
    /// Bytes read from the upstream, written to the client.
    UpstreamToClient,
}

impl Dir {
    /// Both directions, in index order.
    pub const ALL: [Self; 2] = [Self::ClientToUpstream, Self::UpstreamToClient];

    /// The side this direction reads from.
    pub const fn source(self) -> Side {
        match self {
            Self::ClientToUpstream => Side::Client,
            Self::UpstreamToClient => Side::Upstream,
        }
    }

    /// The side this direction writes to.
    pub const fn sink(self) -> Side {
        self.source().peer()
    }

    /// The direction that reads from `side`.
    pub const fn from_source(side: Side) -> Self {
        match side {
            Side::Client => Self::ClientToUpstream,
            Side::Upstream => Self::UpstreamToClient,
        }
    }

    /// 0 or 1, for per-direction arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Stable name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ClientToUpstream => "client_to_upstream",
            Self::UpstreamToClient => "upstream_to_client",
        }
    }
}

/// The half-close state of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfState {
    /// Bytes may still flow.
    Open,
    /// The source reached EOF and every byte was written; the sink's write half is not shut yet.
    ReadEof,
    /// The sink's write half is shut: this direction is finished.
    WriteShut,
}

/// One direction's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HalfDuplex {
    pub(crate) state: HalfState,
    pub(crate) bytes: u64,
}

impl HalfDuplex {
    pub(crate) const fn new() -> Self {
        Self {
            state: HalfState::Open,
            bytes: 0,
        }
    }

    pub(crate) fn read_eof(&mut self) {
        assert_eq!(
            self.state,
            HalfState::Open,
            "EOF reported twice for one direction"
        );
        self.state = HalfState::ReadEof;
    }

    pub(crate) fn write_shut(&mut self) {
        // Shutting a sink twice would be a relay bug (linkerd's duplex asserts the same).
        assert_eq!(
            self.state,
            HalfState::ReadEof,
            "sink shut without a prior EOF, or twice"
        );
        self.state = HalfState::WriteShut;
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state == HalfState::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_log_spelling() {
        assert_eq!(
            [Side::Client.name(), Side::Upstream.name()],
            ["client", "upstream"]
        );
        assert_eq!(
            Dir::ALL.map(Dir::name),
            ["client_to_upstream", "upstream_to_client"]
        );
    }

    #[test]
    fn directions_are_mirror_images() {
        for dir in Dir::ALL {
            assert_ne!(dir.source(), dir.sink());
            assert_eq!(Dir::from_source(dir.source()), dir);
            assert_eq!(Dir::ALL[dir.index()], dir);
        }
    }

    #[test]
    fn half_duplex_moves_forward_only() {
        let mut half = HalfDuplex::new();
        assert!(half.is_open());
        half.read_eof();
        assert_eq!(half.state, HalfState::ReadEof);
        half.write_shut();
        assert_eq!(half.state, HalfState::WriteShut);
    }

    #[test]
    #[should_panic(expected = "EOF reported twice")]
    fn double_eof_is_a_bug() {
        let mut half = HalfDuplex::new();
        half.read_eof();
        half.read_eof();
    }
}
