//! What a pump reports back to the shard, which turns it into core events.

use origdst_core::outcome::IoErrorKind;
use origdst_core::relay::Side;

/// How a direction ended, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirEnd {
    /// The source hit EOF and every byte read was written.
    Eof,
    /// I/O on `side` failed.
    Failed(Side, IoErrorKind),
}

/// Bytes written to the sink during one pump call, and whether the direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Progress {
    pub(crate) bytes: u64,
    pub(crate) end: Option<DirEnd>,
}

impl Progress {
    pub(crate) fn bytes(bytes: u64) -> Self {
        Self { bytes, end: None }
    }

    pub(crate) fn ended(bytes: u64, end: DirEnd) -> Self {
        Self {
            bytes,
            end: Some(end),
        }
    }
}
