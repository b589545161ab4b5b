//! Config errors: every one names the field (as a YAML path) and says why.

use std::fmt;

/// A config that origdst refuses to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Where: a YAML path such as `static_resources.listeners[0].address.socket_address.port_value`.
    pub path: String,
    /// Why, for a person.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "config: {}", self.reason)
        } else {
            write!(f, "config field `{}`: {}", self.path, self.reason)
        }
    }
}
