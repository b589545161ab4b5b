//! Harness for origdst's real-kernel tests: network namespaces, veth links, iptables rules, the
//! real binary as a child process, and byte-exact traffic checks.
//!
//! Every test builds its own namespaces (named after the test and the process id) and removes them
//! when it ends, pass or fail. A test that cannot build them **fails** with the reason — it never
//! passes silently. Root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) and `ip`, `iptables`, `ip6tables` are
//! required; `.ci/run` installs them.

#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod control_plane;
pub mod echo_holder;
pub mod netns;
pub mod node;
pub mod pattern;
pub mod proxy;
pub mod server;
pub mod topology;
