//! How a connection ends and the I/O failures that end it: a leaf module, so that counters
//! ([`crate::stats`]) and the state machine ([`crate::connection`]) both depend on it and not on
//! each other.

use crate::orig_dst::RefuseReason;

/// An I/O failure as core needs to know it (the runtime maps errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoErrorKind {
    /// ECONNREFUSED.
    Refused,
    /// ECONNRESET / ECONNABORTED.
    Reset,
    /// ETIMEDOUT (the kernel's own timeout).
    TimedOut,
    /// EHOSTUNREACH / ENETUNREACH.
    Unreachable,
    /// EPIPE.
    BrokenPipe,
    /// Anything else, with its errno.
    Other {
        /// The raw errno.
        errno: i32,
    },
}

impl IoErrorKind {
    /// Stable name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::TimedOut => "timed_out",
            Self::Unreachable => "unreachable",
            Self::BrokenPipe => "broken_pipe",
            Self::Other { .. } => "other",
        }
    }
}

/// How a connection ended. Exactly one per accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both directions finished with EOF and were half-closed through.
    Completed,
    /// Refused at accept.
    Refused(RefuseReason),
    /// The upstream connect failed; the client was reset.
    ConnectFailed(IoErrorKind),
    /// The upstream connect timed out; the client was reset.
    ConnectTimeout,
    /// The upstream failed mid-stream; the client was reset.
    UpstreamFailed(IoErrorKind),
    /// The client failed mid-stream; the upstream was reset.
    ClientFailed(IoErrorKind),
    /// Nothing moved for the idle timeout; both sides were reset.
    IdleTimeout,
    /// Still open at the drain deadline; both sides were reset.
    DrainAborted,
    /// The shard was at its connection limit; the client was reset.
    Overflow,
}

impl Outcome {
    /// The I/O error behind the outcome, where there is one.
    pub const fn error(self) -> Option<IoErrorKind> {
        match self {
            Self::ConnectFailed(kind) | Self::UpstreamFailed(kind) | Self::ClientFailed(kind) => {
                Some(kind)
            }
            _ => None,
        }
    }

    /// Stable name for logs (the termination reason).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Refused(reason) => reason.name(),
            Self::ConnectFailed(_) => "upstream_connect_failed",
            Self::ConnectTimeout => "upstream_connect_timeout",
            Self::UpstreamFailed(_) => "upstream_failed",
            Self::ClientFailed(_) => "client_failed",
            Self::IdleTimeout => "idle_timeout",
            Self::DrainAborted => "drain_aborted",
            Self::Overflow => "overflow",
        }
    }
}
