//! The node topology: a node namespace (where origdst runs, in the host's place) with pods behind
//! a bridge, and a "world" namespace beyond its uplink (servers outside the node, or another
//! node's clients).
//!
//! ```text
//!   pod i ns                       node ns (origdst :15001, :15006)          world ns
//!   eth0 10.20.0.(10+i) ──veth── vp<i> ─ pods0 10.20.0.1 │ uplink 10.30.0.1 ──veth── w0 10.30.0.10
//!        fd20::(10+i)                       fd20::1       │ fd30::1              fd30::10
//! ```
//!
//! The node routes between the pods' subnet and the world; nothing is captured until a test
//! installs rules (`origdst iptables apply --mode node`).

use crate::netns::{Netns, veth};

/// The pods' bridge on the node (the interface their traffic arrives on).
pub const POD_BRIDGE: &str = "pods0";
/// The pods' subnets.
pub const POD_CIDR_V4: &str = "10.20.0.0/24";
/// IPv6 counterpart of `POD_CIDR_V4`.
pub const POD_CIDR_V6: &str = "fd20::/64";
/// The node's address on the pods' bridge (their gateway).
pub const NODE_POD_SIDE_V4: &str = "10.20.0.1";
/// The node's uplink address (the source of origdst's connections to the world).
pub const NODE_UPLINK_V4: &str = "10.30.0.1";
/// IPv6 counterpart of `NODE_UPLINK_V4`.
pub const NODE_UPLINK_V6: &str = "fd30::1";
/// The world's server address.
pub const WORLD_V4: &str = "10.30.0.10";
/// IPv6 counterpart of `WORLD_V4`.
pub const WORLD_V6: &str = "fd30::10";

/// Pod `i`'s IPv4 address.
pub fn pod_v4(i: usize) -> String {
    format!("10.20.0.{}", 10 + i)
}

/// Pod `i`'s IPv6 address.
pub fn pod_v6(i: usize) -> String {
    format!("fd20::{:x}", 10 + i)
}

/// The namespaces; dropped (and deleted) together.
pub struct Node {
    /// Where origdst runs.
    pub node: Netns,
    /// Outside the node.
    pub world: Netns,
    /// The pods, in order.
    pub pods: Vec<Netns>,
}

impl Node {
    /// A node with `pods` pods (at most 200).
    pub fn new(tag: &str, pods: usize) -> Self {
        assert!(pods <= 200, "the pods' /24 holds 200 from .10");
        let node = Netns::new(&format!("{tag}-n"));
        let world = Netns::new(&format!("{tag}-w"));
        veth(&world, "w0", &node, "uplink");
        node.ip(&["link", "add", POD_BRIDGE, "type", "bridge"]);
        node.ip(&["link", "set", POD_BRIDGE, "up"]);
        node.ip(&["addr", "add", "10.20.0.1/24", "dev", POD_BRIDGE]);
        node.ip(&[
            "-6",
            "addr",
            "add",
            "fd20::1/64",
            "dev",
            POD_BRIDGE,
            "nodad",
        ]);
        node.ip(&["addr", "add", "10.30.0.1/24", "dev", "uplink"]);
        node.ip(&["-6", "addr", "add", "fd30::1/64", "dev", "uplink", "nodad"]);
        world.ip(&["addr", "add", "10.30.0.10/24", "dev", "w0"]);
        world.ip(&["-6", "addr", "add", "fd30::10/64", "dev", "w0", "nodad"]);
        world.ip(&["route", "add", POD_CIDR_V4, "via", NODE_UPLINK_V4]);
        world.ip(&["-6", "route", "add", POD_CIDR_V6, "via", NODE_UPLINK_V6]);
        node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        node.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
        let pods = (0..pods)
            .map(|i| {
                let pod = Netns::new(&format!("{tag}-p{i}"));
                let host_side = format!("vp{i}");
                veth(&pod, "eth0", &node, &host_side);
                node.ip(&["link", "set", &host_side, "master", POD_BRIDGE]);
                pod.ip(&["addr", "add", &format!("{}/24", pod_v4(i)), "dev", "eth0"]);
                pod.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{}/64", pod_v6(i)),
                    "dev",
                    "eth0",
                    "nodad",
                ]);
                pod.ip(&["route", "add", "default", "via", NODE_POD_SIDE_V4]);
                pod.ip(&["-6", "route", "add", "default", "via", "fd20::1"]);
                pod
            })
            .collect();
        Self { node, world, pods }
    }
}
