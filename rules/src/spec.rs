//! What to capture. The defaults are Istio's sidecar conventions: outbound to 15001, inbound to
//! 15006, the proxy's own traffic (uid 1337, mark 1337) never captured. In the node scope the
//! same two ports take what the node's pods send and receive.

use ipnet::IpNet;

/// Which tool installs the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-restore`/`ip6tables-restore` into `ORIGDST_*` chains (iptables-nft or legacy).
    Iptables,
    /// One `nft -f` transaction: the `inet origdst` table.
    Nftables,
}

/// How inbound connections reach the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// Not captured.
    None,
    /// nat PREROUTING REDIRECT to `inbound_port` (the local address becomes the proxy's).
    Redirect,
    /// mangle PREROUTING TPROXY to `inbound_port` (needs a `transparent: true` listener there)
    /// plus fwmark policy routing.
    Tproxy,
}

/// Whose connections are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This network namespace's own (a sidecar, or a host's processes): outbound in `OUTPUT`,
    /// inbound to local addresses in `PREROUTING`.
    Local,
    /// The pods of a node, from the host namespace (a node proxy): what arrives from a pod
    /// interface or a pod CIDR is its outbound, what is routed to a pod CIDR from elsewhere its
    /// inbound, both in `PREROUTING`. The node's own traffic (and so origdst's upstream
    /// connections, which leave the host's own stack) never passes there.
    Node,
}

/// The pods a node-scope capture serves, and those opted out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pods {
    /// The pods' address ranges (their traffic out, and to them).
    pub cidrs: Vec<IpNet>,
    /// Host-side interfaces pods' traffic arrives on (`+` at the end: any suffix, as iptables
    /// spells it).
    pub interfaces: Vec<String>,
    /// Pods never captured, by address (neither what they send nor what they receive).
    pub exclude_cidrs: Vec<IpNet>,
    /// Pods never captured, by the host-side interface their traffic arrives on.
    pub exclude_interfaces: Vec<String>,
}

/// IP families to write rules for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) const fn ip_flag(self) -> &'static str {
        match self {
            Self::V4 => "-4",
            Self::V6 => "-6",
        }
    }

    pub(crate) const fn any(self) -> &'static str {
        match self {
            Self::V4 => "0.0.0.0/0",
            Self::V6 => "::/0",
        }
    }

    pub(crate) const fn loopback(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.0/8",
            Self::V6 => "::1/128",
        }
    }

    pub(crate) const fn iptables(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }

    pub(crate) fn matches(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Self::V4, IpNet::V4(_)) | (Self::V6, IpNet::V6(_))
        )
    }
}

/// The interception to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub backend: Backend,
    pub scope: Scope,
    /// The node scope's pods (unused in the local scope).
    pub pods: Pods,
    pub ipv4: bool,
    pub ipv6: bool,
    /// Capture outbound connections (OUTPUT) to `outbound_port`.
    pub outbound: bool,
    pub outbound_port: u16,
    pub inbound: Inbound,
    pub inbound_port: u16,
    /// Connections from these uids are never captured (the proxy's own).
    pub proxy_uids: Vec<u32>,
    /// Connections carrying this mark are never captured (origdst's `upstream_mark`).
    pub proxy_mark: Option<u32>,
    /// TPROXY's divert mark and the routing table that delivers it locally.
    pub tproxy_mark: u32,
    pub route_table: u32,
    /// Outbound destinations to capture; empty: all.
    pub include_outbound_cidrs: Vec<IpNet>,
    pub exclude_outbound_cidrs: Vec<IpNet>,
    pub exclude_outbound_ports: Vec<u16>,
    /// Inbound destination ports to capture; empty: all.
    pub include_inbound_ports: Vec<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    /// Where the proxy's inbound passthrough connects to the workload from (Istio's
    /// `InboundPassthroughCluster` binds 127.0.0.6 and ::6), per family; `None`: from the
    /// workload's own address (no rule can tell those apart).
    pub inbound_source: InboundSource,
}

/// The loopback addresses the proxy's inbound passthrough connects from (Istio: 127.0.0.6, ::6).
/// Knowing them, the local scope's rules (1) never capture those connections
/// (`-s 127.0.0.6 -o lo -j RETURN`), and (2) send the proxy's own connections to the pod's own
/// (non-loopback) address through the inbound listener, as Istio's sidecar does — safe only
/// because of (1): without it that inbound relay's connection would be captured again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InboundSource {
    pub v4: Option<std::net::Ipv4Addr>,
    pub v6: Option<std::net::Ipv6Addr>,
}

impl InboundSource {
    /// Istio's: 127.0.0.6 and ::6.
    pub const ISTIO: Self = Self {
        v4: Some(std::net::Ipv4Addr::new(127, 0, 0, 6)),
        v6: Some(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6)),
    };

    /// The family's source, as a host prefix (`127.0.0.6/32`).
    pub fn host(&self, family: Family) -> Option<String> {
        match family {
            Family::V4 => self.v4.map(|a| format!("{a}/32")),
            Family::V6 => self.v6.map(|a| format!("{a}/128")),
        }
    }
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            backend: Backend::Iptables,
            scope: Scope::Local,
            pods: Pods::default(),
            ipv4: true,
            ipv6: true,
            outbound: true,
            outbound_port: 15001,
            inbound: Inbound::Redirect,
            inbound_port: 15006,
            proxy_uids: vec![1337],
            proxy_mark: Some(1337),
            tproxy_mark: 1338,
            route_table: 133,
            include_outbound_cidrs: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            include_inbound_ports: Vec::new(),
            exclude_inbound_ports: ISTIO_EXCLUDED_INBOUND_PORTS.to_vec(),
            inbound_source: InboundSource::ISTIO,
        }
    }
}

/// Inbound ports Istio never captures: the proxy's admin (15000), the agent (15020), health
/// (15021) and Prometheus (15090) endpoints.
pub const ISTIO_EXCLUDED_INBOUND_PORTS: [u16; 4] = [15000, 15020, 15021, 15090];

/// A spec that would install rules that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: &'static str,
    pub reason: String,
}

impl Spec {
    /// Rejects specs whose rules would loop or capture nothing useful.
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |field, reason: &str| {
            Err(SpecError {
                field,
                reason: reason.to_string(),
            })
        };
        if !self.ipv4 && !self.ipv6 {
            return err("family", "neither IPv4 nor IPv6 selected");
        }
        if !self.outbound && self.inbound == Inbound::None {
            return err(
                "inbound",
                "nothing to capture: outbound is off and inbound is none",
            );
        }
        if self.scope == Scope::Node {
            return self.validate_node();
        }
        if self.outbound && self.proxy_uids.is_empty() && self.proxy_mark.is_none() {
            return err(
                "proxy-uid",
                "outbound capture needs the proxy's uid or mark excluded, or its own upstream \
                 connections would be captured again (a loop)",
            );
        }
        for (field, port) in [
            ("outbound-port", self.outbound_port),
            ("inbound-port", self.inbound_port),
        ] {
            if port == 0 {
                return err(field, "port 0");
            }
        }
        if self.outbound && self.inbound != Inbound::None && self.outbound_port == self.inbound_port
        {
            return err("inbound-port", "the same as outbound-port");
        }
        if self.inbound == Inbound::Tproxy && Some(self.tproxy_mark) == self.proxy_mark {
            return err(
                "tproxy-mark",
                "the same as the proxy mark: the proxy's upstream connections would be routed \
                 to the local table",
            );
        }
        if self.tproxy_mark == 0 {
            return err("tproxy-mark", "mark 0 matches unmarked packets");
        }
        if let Some(port) = self
            .include_inbound_ports
            .iter()
            .find(|p| self.exclude_inbound_ports.contains(p))
        {
            return err(
                "include-inbound-ports",
                &format!("port {port} is also excluded"),
            );
        }
        Ok(())
    }

    /// The node scope's own checks (after the common ones).
    fn validate_node(&self) -> Result<(), SpecError> {
        let err = |field, reason: String| Err(SpecError { field, reason });
        if self.pods.cidrs.is_empty() && self.pods.interfaces.is_empty() {
            return err(
                "pod-cidr",
                "the node scope needs the pods' CIDRs or interfaces (--pod-cidr, --pod-interface)"
                    .into(),
            );
        }
        if self.inbound == Inbound::Tproxy {
            return err(
                "inbound",
                "tproxy is not available in the node scope yet; use redirect".into(),
            );
        }
        for name in self
            .pods
            .interfaces
            .iter()
            .chain(&self.pods.exclude_interfaces)
        {
            if let Err(why) = interface_name(name) {
                return err("pod-interface", format!("{name:?}: {why}"));
            }
        }
        let families: Vec<Family> = self.families();
        if !self.pods.cidrs.is_empty()
            && self.pods.interfaces.is_empty()
            && !self
                .pods
                .cidrs
                .iter()
                .any(|n| families.iter().any(|f| f.matches(n)))
        {
            return err(
                "pod-cidr",
                "no pod CIDR of a family the rules are written for".into(),
            );
        }
        Ok(())
    }

    pub(crate) fn families(&self) -> Vec<Family> {
        let mut out = Vec::new();
        if self.ipv4 {
            out.push(Family::V4);
        }
        if self.ipv6 {
            out.push(Family::V6);
        }
        out
    }

    /// Inbound ports never captured: origdst's own, then the user's exclusions.
    pub(crate) fn inbound_skip_ports(&self) -> Vec<u16> {
        let mut ports = vec![self.outbound_port, self.inbound_port];
        for &port in &self.exclude_inbound_ports {
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        ports
    }
}

/// An interface name as iptables and nft take it: 1–15 bytes of letters, digits, `_`, `-`, `.`,
/// `@`, optionally ending in `+` (any suffix).
fn interface_name(name: &str) -> Result<(), &'static str> {
    let stem = name.strip_suffix('+').unwrap_or(name);
    if stem.is_empty() && name != "+" {
        return Err("empty");
    }
    if name.len() > 15 {
        return Err("longer than 15 bytes (IFNAMSIZ)");
    }
    if !stem
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b))
    {
        return Err("only letters, digits, `_`, `-`, `.`, `@` and a final `+`");
    }
    Ok(())
}
