//! What a pump reports back to the shard, which turns it into core events.

use origdst_core::outcome::IoErrorKind;
use origdst_core::relay::Side;

/// How a direction ended, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirEnd {
    /// The source hit EOF and every byte read was written.
    Eof,
    /// I/O on `side` failed.
    Failed(Side, IoErrorKind),
}

/// Bytes written to the sink during one pump call, and whether the direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Bytes written to the sink.
    pub bytes: u64,
    /// How the direction ended, if it did.
    pub end: Option<DirEnd>,
}

impl Progress {
    /// Bytes moved, the direction goes on.
    pub fn bytes(bytes: u64) -> Self {
        Self { bytes, end: None }
    }

    /// Bytes moved, then the direction ended.
    pub fn ended(bytes: u64, end: DirEnd) -> Self {
        Self {
            bytes,
            end: Some(end),
        }
    }
}
