//! `origdst.destination_policy`: where a destination that arrived as text may go. Header,
//! metadata and filter-state destinations are chosen by whoever wrote them — for the HTTP header,
//! the client. Without a policy a client could send `x-envoy-original-dst-host: 127.0.0.1:15000`
//! and read origdst's own admin endpoint, or reach the cloud metadata service. Destinations the
//! kernel restored (SO_ORIGINAL_DST, TPROXY) are what the client dialled anyway and are not
//! subject to it.
//!
//! Order: origdst's own listeners and admin endpoint (always refused, see
//! [`crate::orig_dst::SelfAddrs::is_own`]); unroutable addresses (unspecified, multicast,
//! broadcast, `0.0.0.0/8`); `deny_ports`, `deny_cidrs`; `allow_ports` and `allow_cidrs` when
//! given; then loopback and link-local (incl. 169.254.169.254 and `fe80::/10`) unless allowed.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use super::{Cidr, ConfigError};

/// Which rule refused a destination (logged; one counter for all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyRule {
    /// One of origdst's own listeners or its admin endpoint.
    OwnAddress,
    /// Unspecified, multicast, broadcast or `0.0.0.0/8`.
    Unroutable,
    /// Loopback (`127.0.0.0/8`, `::1`) without `allow_loopback`.
    Loopback,
    /// Link-local (`169.254.0.0/16`, `fe80::/10`) without `allow_link_local`.
    LinkLocal,
    /// Inside one of `deny_cidrs`.
    DeniedCidr,
    /// Outside every `allow_cidrs`.
    NotInAllowedCidrs,
    /// One of `deny_ports`.
    DeniedPort,
    /// Not one of `allow_ports`.
    NotInAllowedPorts,
}

impl DenyRule {
    /// Stable name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::OwnAddress => "own_address",
            Self::Unroutable => "unroutable",
            Self::Loopback => "loopback",
            Self::LinkLocal => "link_local",
            Self::DeniedCidr => "deny_cidrs",
            Self::NotInAllowedCidrs => "allow_cidrs",
            Self::DeniedPort => "deny_ports",
            Self::NotInAllowedPorts => "allow_ports",
        }
    }
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

impl PortRange {
    fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// The validated policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DestinationPolicy {
    /// Let text destinations reach loopback addresses (origdst's own still refused).
    pub allow_loopback: bool,
    /// Let text destinations reach link-local addresses (the cloud metadata service among them).
    pub allow_link_local: bool,
    /// When non-empty, text destinations must be inside one of these.
    pub allow_cidrs: Vec<Cidr>,
    /// Text destinations inside these are refused.
    pub deny_cidrs: Vec<Cidr>,
    /// When non-empty, text destinations must use one of these ports.
    pub allow_ports: Vec<PortRange>,
    /// Text destinations on these ports are refused.
    pub deny_ports: Vec<PortRange>,
}

impl DestinationPolicy {
    /// Whether a destination that arrived as text may be dialled; `own` says whether it is one
    /// of origdst's own addresses. `dst` must already be canonical (v4-mapped → IPv4).
    pub fn check(&self, dst: SocketAddr, own: bool) -> Result<(), DenyRule> {
        let ip = crate::addr::canonical_ip(dst.ip());
        if own {
            return Err(DenyRule::OwnAddress);
        }
        if unroutable(ip) {
            return Err(DenyRule::Unroutable);
        }
        if self.deny_ports.iter().any(|r| r.contains(dst.port())) {
            return Err(DenyRule::DeniedPort);
        }
        if self.deny_cidrs.iter().any(|c| c.contains(ip)) {
            return Err(DenyRule::DeniedCidr);
        }
        if !self.allow_ports.is_empty() && !self.allow_ports.iter().any(|r| r.contains(dst.port()))
        {
            return Err(DenyRule::NotInAllowedPorts);
        }
        if !self.allow_cidrs.is_empty() && !self.allow_cidrs.iter().any(|c| c.contains(ip)) {
            return Err(DenyRule::NotInAllowedCidrs);
        }
        if ip.is_loopback() && !self.allow_loopback {
            return Err(DenyRule::Loopback);
        }
        if link_local(ip) && !self.allow_link_local {
            return Err(DenyRule::LinkLocal);
        }
        Ok(())
    }
}

fn unroutable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    }
}

fn link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// The raw `origdst.destination_policy` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    #[serde(default)]
    allow_loopback: bool,
    #[serde(default)]
    allow_link_local: bool,
    #[serde(default)]
    allow_cidrs: Vec<String>,
    #[serde(default)]
    deny_cidrs: Vec<String>,
    #[serde(default)]
    allow_ports: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    deny_ports: Vec<serde_yaml_ng::Value>,
}

/// Entries per list: a policy is a handful of rules, checked for every text destination.
const POLICY_ENTRIES_MAX: usize = 256;

impl RawPolicy {
    pub(crate) fn validate(self) -> Result<DestinationPolicy, ConfigError> {
        const PATH: &str = "origdst.destination_policy";
        let cidrs = |field: &str, list: &[String]| -> Result<Vec<Cidr>, ConfigError> {
            bounded(&format!("{PATH}.{field}"), list.len())?;
            list.iter()
                .enumerate()
                .map(|(index, text)| parse_cidr(&format!("{PATH}.{field}[{index}]"), text))
                .collect()
        };
        let ports = |field: &str, list: &[serde_yaml_ng::Value]| {
            bounded(&format!("{PATH}.{field}"), list.len())?;
            list.iter()
                .enumerate()
                .map(|(index, value)| parse_ports(&format!("{PATH}.{field}[{index}]"), value))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(DestinationPolicy {
            allow_loopback: self.allow_loopback,
            allow_link_local: self.allow_link_local,
            allow_cidrs: cidrs("allow_cidrs", &self.allow_cidrs)?,
            deny_cidrs: cidrs("deny_cidrs", &self.deny_cidrs)?,
            allow_ports: ports("allow_ports", &self.allow_ports)?,
            deny_ports: ports("deny_ports", &self.deny_ports)?,
        })
    }
}

fn bounded(path: &str, len: usize) -> Result<(), ConfigError> {
    if len > POLICY_ENTRIES_MAX {
        return Err(ConfigError::new(
            path,
            format!("{len} entries, more than the limit of {POLICY_ENTRIES_MAX}"),
        ));
    }
    Ok(())
}

/// `"10.0.0.0/8"`, `"fd00::/8"`, or a bare address (a /32 or /128).
fn parse_cidr(path: &str, text: &str) -> Result<Cidr, ConfigError> {
    let invalid = || {
        ConfigError::new(
            path,
            format!("{text:?} is not a CIDR like \"10.0.0.0/8\" or \"fd00::/8\""),
        )
    };
    let (ip, len) = match text.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (text, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| invalid())?;
    let ip = crate::addr::canonical_ip(ip);
    let bits: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => bits,
        Some(len) => len
            .parse::<u8>()
            .ok()
            .filter(|&len| len <= bits)
            .ok_or_else(invalid)?,
    };
    let network = match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    };
    Ok(Cidr { ip: network, len })
}

/// A port (`22`) or an inclusive range (`"8000-8999"`).
fn parse_ports(path: &str, value: &serde_yaml_ng::Value) -> Result<PortRange, ConfigError> {
    let invalid = || {
        ConfigError::new(
            path,
            format!("{value:?} is not a port in 1..=65535 or a range like \"8000-8999\""),
        )
    };
    let port = |text: &str| {
        text.trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(invalid)
    };
    let (first, last) = match value {
        serde_yaml_ng::Value::Number(n) => {
            let p = n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&p| p != 0)
                .ok_or_else(invalid)?;
            (p, p)
        }
        serde_yaml_ng::Value::String(text) => match text.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(text)?, port(text)?),
        },
        _ => return Err(invalid()),
    };
    if first > last {
        return Err(invalid());
    }
    Ok(PortRange { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> DestinationPolicy {
        serde_yaml_ng::from_str::<RawPolicy>(yaml)
            .unwrap()
            .validate()
            .unwrap()
    }

    fn addr(text: &str) -> SocketAddr {
        crate::addr::canonical(text.parse().unwrap())
    }

    #[test]
    fn default_refuses_loopback_link_local_metadata_and_unroutable() {
        let p = DestinationPolicy::default();
        for (dst, rule) in [
            ("127.0.0.1:15000", DenyRule::Loopback),
            ("127.9.9.9:80", DenyRule::Loopback),
            ("[::1]:80", DenyRule::Loopback),
            ("[::ffff:127.0.0.1]:15000", DenyRule::Loopback),
            ("169.254.169.254:80", DenyRule::LinkLocal),
            ("[fe80::1]:80", DenyRule::LinkLocal),
            ("[febf::1]:80", DenyRule::LinkLocal),
            ("0.1.2.3:80", DenyRule::Unroutable),
            ("224.0.0.1:80", DenyRule::Unroutable),
            ("255.255.255.255:80", DenyRule::Unroutable),
            ("[ff02::1]:80", DenyRule::Unroutable),
        ] {
            assert_eq!(p.check(addr(dst), false), Err(rule), "{dst}");
        }
        assert_eq!(p.check(addr("10.0.0.1:80"), false), Ok(()));
        assert_eq!(p.check(addr("[fec0::1]:80"), false), Ok(()));
        assert_eq!(
            p.check(addr("10.0.0.1:80"), true),
            Err(DenyRule::OwnAddress)
        );
    }

    #[test]
    fn allow_and_deny_lists_in_order() {
        let p = policy(
            "allow_loopback: true\nallow_cidrs: [\"10.0.0.0/8\", \"127.0.0.1\"]\ndeny_cidrs: [\"10.9.0.0/16\"]\nallow_ports: [80, \"8000-8999\"]\ndeny_ports: [8080]\n",
        );
        assert_eq!(p.check(addr("10.1.2.3:80"), false), Ok(()));
        assert_eq!(p.check(addr("10.1.2.3:8443"), false), Ok(()));
        assert_eq!(p.check(addr("127.0.0.1:80"), false), Ok(()));
        assert_eq!(
            p.check(addr("127.0.0.2:80"), false),
            Err(DenyRule::NotInAllowedCidrs)
        );
        assert_eq!(
            p.check(addr("10.9.1.1:80"), false),
            Err(DenyRule::DeniedCidr)
        );
        assert_eq!(
            p.check(addr("10.1.2.3:8080"), false),
            Err(DenyRule::DeniedPort)
        );
        assert_eq!(
            p.check(addr("10.1.2.3:22"), false),
            Err(DenyRule::NotInAllowedPorts)
        );
        assert_eq!(
            p.check(addr("127.0.0.1:80"), true),
            Err(DenyRule::OwnAddress),
            "own addresses stay refused whatever is allowed"
        );
    }

    #[test]
    fn malformed_entries_name_their_field() {
        for (yaml, path) in [
            ("allow_cidrs: [\"10.0.0.0/33\"]", "allow_cidrs[0]"),
            ("deny_cidrs: [\"x\"]", "deny_cidrs[0]"),
            ("deny_ports: [0]", "deny_ports[0]"),
            ("allow_ports: [\"9-1\"]", "allow_ports[0]"),
            ("allow_ports: [70000]", "allow_ports[0]"),
        ] {
            let err = serde_yaml_ng::from_str::<RawPolicy>(yaml)
                .unwrap()
                .validate()
                .unwrap_err();
            assert_eq!(
                err.path,
                format!("origdst.destination_policy.{path}"),
                "{yaml}"
            );
        }
        let many = format!("deny_ports: [{}]", vec!["1"; 300].join(","));
        let err = serde_yaml_ng::from_str::<RawPolicy>(&many)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.reason.contains("limit of 256"), "{err}");
    }
}
