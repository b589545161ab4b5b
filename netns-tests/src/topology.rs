//! The gateway topology: client → router (origdst, REDIRECT on the client-facing interface) →
//! server with two addresses per family, so a wrong destination cannot pass unnoticed.
//!
//! ```text
//!   client ns                 router ns (origdst :15001)                 server ns
//!   c0 10.11.1.2 ──veth── rc 10.11.1.1 │ rs 10.11.2.1 ──veth── s0 10.11.2.10, 10.11.2.11
//!      fd11:1::2                fd11:1::1 │ fd11:2::1              fd11:2::10, fd11:2::11
//!                 nat PREROUTING -i rc -p tcp (not to the router itself) → REDIRECT :15001
//! ```

use std::net::SocketAddr;

use crate::netns::{Netns, veth};

/// The three namespaces; dropped (and deleted) together.
pub struct Gateway {
    /// Where test clients run.
    pub client: Netns,
    /// Where origdst runs.
    pub router: Netns,
    /// Where upstream servers run.
    pub server: Netns,
}

/// The client's addresses.
pub const CLIENT_V4: &str = "10.11.1.2";
/// The client's IPv6 address.
pub const CLIENT_V6: &str = "fd11:1::2";
/// Server addresses by family: two each.
pub const SERVER_V4: [&str; 2] = ["10.11.2.10", "10.11.2.11"];
/// IPv6 server addresses.
pub const SERVER_V6: [&str; 2] = ["fd11:2::10", "fd11:2::11"];
/// The router's address facing the client (where origdst's port is reachable directly).
pub const ROUTER_CLIENT_SIDE_V4: &str = "10.11.1.1";
/// The router's address facing the server (the source of origdst's upstream connections).
pub const ROUTER_SERVER_SIDE_V4: &str = "10.11.2.1";
/// IPv6 counterpart of `ROUTER_SERVER_SIDE_V4`.
pub const ROUTER_SERVER_SIDE_V6: &str = "fd11:2::1";
/// origdst's capture port (the embedded default's).
pub const PROXY_PORT: u16 = 15001;

impl Gateway {
    /// Builds the topology and the REDIRECT rules (iptables and ip6tables).
    pub fn new(tag: &str) -> Self {
        let client = Netns::new(&format!("{tag}-c"));
        let router = Netns::new(&format!("{tag}-r"));
        let server = Netns::new(&format!("{tag}-s"));
        veth(&client, "c0", &router, "rc");
        veth(&server, "s0", &router, "rs");
        client.ip(&["addr", "add", &format!("{CLIENT_V4}/24"), "dev", "c0"]);
        client.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{CLIENT_V6}/64"),
            "dev",
            "c0",
            "nodad",
        ]);
        router.ip(&["addr", "add", "10.11.1.1/24", "dev", "rc"]);
        router.ip(&["-6", "addr", "add", "fd11:1::1/64", "dev", "rc", "nodad"]);
        router.ip(&["addr", "add", "10.11.2.1/24", "dev", "rs"]);
        router.ip(&["-6", "addr", "add", "fd11:2::1/64", "dev", "rs", "nodad"]);
        for addr in SERVER_V4 {
            server.ip(&["addr", "add", &format!("{addr}/24"), "dev", "s0"]);
        }
        for addr in SERVER_V6 {
            server.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                "s0",
                "nodad",
            ]);
        }
        client.ip(&["route", "add", "default", "via", "10.11.1.1"]);
        client.ip(&["-6", "route", "add", "default", "via", "fd11:1::1"]);
        server.ip(&["route", "add", "default", "via", "10.11.2.1"]);
        server.ip(&["-6", "route", "add", "default", "via", "fd11:2::1"]);
        router.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        router.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
        let gateway = Self {
            client,
            router,
            server,
        };
        gateway.install(Interception::IptablesRedirect);
        gateway
    }

    /// Builds the topology with another interception rule set instead of iptables REDIRECT.
    pub fn with(tag: &str, interception: Interception) -> Self {
        let gateway = Self::new(tag);
        for tables in ["iptables", "ip6tables"] {
            rule(&gateway.router, tables, "-t nat -F PREROUTING");
        }
        gateway.install(interception);
        gateway
    }

    fn install(&self, interception: Interception) {
        let router = &self.router;
        match interception {
            Interception::IptablesRedirect => {
                for tables in ["iptables", "ip6tables"] {
                    // A gateway does not hijack connections to its own addresses: those reach
                    // origdst's port un-redirected, which origdst must refuse.
                    let local =
                        "-t nat -A PREROUTING -i rc -p tcp -m addrtype --dst-type LOCAL -j RETURN";
                    rule(router, tables, local);
                    let redirect = format!(
                        "-t nat -A PREROUTING -i rc -p tcp -j REDIRECT --to-ports {PROXY_PORT}"
                    );
                    rule(router, tables, &redirect);
                }
            }
            Interception::NftablesRedirect => {
                let rules = format!(
                    "table inet origdst_test {{
                       chain prerouting {{
                         type nat hook prerouting priority dstnat; policy accept;
                         iifname \"rc\" fib daddr type local return
                         iifname \"rc\" meta l4proto tcp redirect to :{PROXY_PORT}
                       }}
                     }}
                    "
                );
                router.load_nft(&rules);
            }
            Interception::NftablesTproxy => {
                let rules = format!(
                    "table inet origdst_test {{
                       chain prerouting {{
                         type filter hook prerouting priority mangle; policy accept;
                         iifname \"rc\" fib daddr type local return
                         iifname \"rc\" meta l4proto tcp tproxy to :{TPROXY_PORT} meta mark set 0x1000 accept
                       }}
                     }}
                    "
                );
                router.load_nft(&rules);
                local_delivery(router);
            }
            Interception::IptablesTproxy => {
                // Istio's TPROXY shape: mangle PREROUTING marks and diverts to the transparent
                // listener; policy routing delivers marked packets locally (table 133). The divert
                // mark must not overlap origdst's upstream mark (1337 = 0x539): a shared bit would
                // route origdst's own upstream SYNs into the local table (EHOSTUNREACH).
                for tables in ["iptables", "ip6tables"] {
                    let local = "-t mangle -A PREROUTING -i rc -p tcp -m addrtype --dst-type LOCAL -j RETURN";
                    rule(router, tables, local);
                    let divert = format!(
                        "-t mangle -A PREROUTING -i rc -p tcp -j TPROXY --on-port {TPROXY_PORT} --tproxy-mark 0x1000/0x1000"
                    );
                    rule(router, tables, &divert);
                }
                local_delivery(router);
            }
        }
    }
}

impl Gateway {
    /// Captures the client side's connections to port `dport` to the router's port `to`
    /// instead (IPv4, ahead of the gateway's own REDIRECT rules).
    pub fn redirect_port(&self, dport: u16, to: u16) {
        let rule = format!(
            "-t nat -I PREROUTING 1 -i rc -p tcp --dport {dport} -j REDIRECT --to-ports {to}"
        );
        self.router
            .exec("iptables", &rule.split(' ').collect::<Vec<_>>());
    }

    /// Source preservation's return path: the server answers the *client's* address, so the
    /// router must deliver those replies to origdst's transparent upstream socket instead of
    /// forwarding them to the client. `-m socket --transparent` finds that socket; the mark sends
    /// the packet through the local-delivery table (the kernel's TPROXY recipe).
    pub fn route_replies_to_transparent_sockets(&self) {
        for tables in ["iptables", "ip6tables"] {
            rule(
                &self.router,
                tables,
                "-t mangle -A PREROUTING -i rs -p tcp -m socket --transparent -j MARK --set-xmark 0x1000/0x1000",
            );
        }
        local_delivery(&self.router);
    }
}

/// How the router diverts client traffic to origdst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interception {
    /// `iptables`/`ip6tables -t nat … -j REDIRECT --to-ports 15001`.
    IptablesRedirect,
    /// The same with an `nft` ruleset (inet family: one rule set for both).
    NftablesRedirect,
    /// `-t mangle … -j TPROXY --on-port 15006` with fwmark policy routing.
    IptablesTproxy,
    /// The same with an `nft` ruleset (`tproxy to :15006`).
    NftablesTproxy,
}

/// The port of the transparent (TPROXY) listener in tests.
pub const TPROXY_PORT: u16 = 15006;

/// Policy routing for TPROXY: packets carrying the divert mark are delivered locally (table 133).
fn local_delivery(ns: &Netns) {
    for (family, any) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
        ns.ip(&[
            family,
            "rule",
            "add",
            "fwmark",
            "0x1000/0x1000",
            "lookup",
            "133",
        ]);
        ns.ip(&[
            family, "route", "add", "local", any, "dev", "lo", "table", "133",
        ]);
    }
}

/// Runs one iptables rule written as a line.
fn rule(ns: &Netns, tables: &str, line: &str) {
    let args: Vec<&str> = line.split_whitespace().collect();
    ns.exec(tables, &args);
}

/// `ip:port` for either family.
pub fn addr(ip: &str, port: u16) -> SocketAddr {
    let ip: std::net::IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
    SocketAddr::new(ip, port)
}
