//! io_uring `user_data` encoding: which connection (slot + generation), which operation, which
//! direction, and for sends the buffer id — so a completion that arrives after its connection is
//! gone can still give its buffer back.
//!
//! ```text
//!  63      48 47  44 43 42   40 39        24 23                0
//!  ┌─────────┬──────┬──┬───────┬────────────┬───────────────────┐
//!  │ buf id  │ kind │d │ spare │ generation │ slot index         │
//!  └─────────┴──────┴──┴───────┴────────────┴───────────────────┘
//! ```

use origdst_core::relay::Dir;

/// What an SQE was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Multishot accept; `slot` is the listener index.
    Accept,
    /// The shard's wake-up eventfd (drain requests).
    Wake,
    /// POLLOUT on a connecting upstream socket.
    ConnectPoll,
    /// Multishot recv on a direction's source (copy path).
    Recv,
    /// Send on a direction's sink (copy path); `buf` is the provided-buffer id.
    Send,
    /// POLLIN on a direction's source (splice path).
    PollIn,
    /// POLLOUT on a direction's sink (splice path, or copy path after EAGAIN).
    PollOut,
    /// A cancel request; its own completion carries nothing we need.
    Cancel,
    /// POLLIN (past `SO_RCVLOWAT`) on a client whose request head is being read.
    HeadPoll,
    /// `IORING_OP_SPLICE` source socket → pipe (opsplice path).
    SpliceIn,
    /// `IORING_OP_SPLICE` pipe → sink socket (opsplice path).
    SpliceOut,
    /// Errors and hang-ups on one socket of a live connection, whatever its pumps wait for;
    /// `dir`'s source is the watched side.
    Watch,
}

const KINDS: [Kind; 12] = [
    Kind::Accept,
    Kind::Wake,
    Kind::ConnectPoll,
    Kind::Recv,
    Kind::Send,
    Kind::PollIn,
    Kind::PollOut,
    Kind::Cancel,
    Kind::HeadPoll,
    Kind::SpliceIn,
    Kind::SpliceOut,
    Kind::Watch,
];

/// A decoded `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// Which operation.
    pub kind: Kind,
    /// The connection's slot (or the listener's index for accepts).
    pub slot: u32,
    /// The connection's generation.
    pub generation: u16,
    /// The direction (or the watched side: the direction's source).
    pub dir: Dir,
    /// The provided-buffer id of a send.
    pub buf: u16,
}

impl Token {
    /// A token for `kind` on a connection's direction.
    pub fn new(kind: Kind, slot: usize, generation: u16, dir: Dir) -> Self {
        assert!(
            slot < SLOT_LIMIT,
            "slot index {slot} does not fit the token"
        );
        Self {
            kind,
            slot: slot as u32,
            generation,
            dir,
            buf: 0,
        }
    }

    /// The same token carrying a buffer id.
    pub fn with_buf(mut self, buf: u16) -> Self {
        self.buf = buf;
        self
    }

    /// As `user_data`.
    pub fn encode(self) -> u64 {
        let kind = KINDS
            .iter()
            .position(|&k| k == self.kind)
            .expect("every kind is listed") as u64;
        u64::from(self.slot)
            | u64::from(self.generation) << 24
            | (self.dir.index() as u64) << 43
            | kind << 44
            | u64::from(self.buf) << 48
    }

    /// From `user_data`.
    pub fn decode(data: u64) -> Self {
        let kind = KINDS[((data >> 44) & 0xf) as usize % KINDS.len()];
        Self {
            kind,
            slot: (data & 0xff_ffff) as u32,
            generation: ((data >> 24) & 0xffff) as u16,
            dir: Dir::ALL[((data >> 43) & 1) as usize],
            buf: (data >> 48) as u16,
        }
    }
}

/// Slot indexes must fit 24 bits; `connections_per_shard_max` is capped below this in config.
pub const SLOT_LIMIT: usize = 1 << 24;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        for kind in KINDS {
            for dir in Dir::ALL {
                let token = Token::new(kind, SLOT_LIMIT - 1, 0xbeef, dir).with_buf(0xffff);
                assert_eq!(Token::decode(token.encode()), token);
                let token = Token::new(kind, 0, 0, dir);
                assert_eq!(Token::decode(token.encode()), token);
            }
        }
    }
}
