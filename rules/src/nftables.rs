//! nftables: everything in one `inet origdst` table (both families), replaced in one `nft -f`
//! transaction: declare the table (so deleting it cannot fail), delete it, define it again. A
//! second apply therefore converges, and the rules are never half-installed.

use crate::spec::{Family, Inbound, Scope, Spec};
use crate::{Command, Mode};

const TABLE: &str = "inet origdst";

pub(crate) fn apply(spec: &Spec) -> Vec<Command> {
    let mut script = format!("table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n");
    if spec.scope == Scope::Node {
        node(spec, &mut script);
        script.push_str("}\n");
        return vec![Command::new(&["nft", "-f", "-"], Mode::Once).with_stdin(script)];
    }
    if spec.outbound {
        let mut rules = family_guard(spec);
        rules.push("meta l4proto != tcp return".into());
        if spec.inbound != Inbound::None {
            for family in spec.families() {
                let Some(source) = spec.inbound_source.host(family) else {
                    continue;
                };
                let ip = keyword(family);
                // The inbound passthrough's connection to the workload: never captured.
                rules.push(format!("{ip} saddr {source} oifname \"lo\" return"));
                if spec.inbound == Inbound::Redirect {
                    // The proxy's own connection to the pod's own address goes through the
                    // inbound listener (Istio's sidecar rule).
                    let to_inbound = format!("{ip} daddr != {} oifname \"lo\"", family.loopback());
                    let redirect = format!("meta l4proto tcp redirect to :{}", spec.inbound_port);
                    if !spec.proxy_uids.is_empty() {
                        rules.push(format!(
                            "{to_inbound} meta skuid {} {redirect}",
                            set(&spec.proxy_uids)
                        ));
                    }
                    if let Some(mark) = spec.proxy_mark {
                        rules.push(format!("{to_inbound} meta mark {mark} {redirect}"));
                    }
                }
            }
        }
        rules.push("oifname \"lo\" return".into());
        if let Some(mark) = spec.proxy_mark {
            rules.push(format!("meta mark {mark} return"));
        }
        if !spec.proxy_uids.is_empty() {
            rules.push(format!("meta skuid {} return", set(&spec.proxy_uids)));
        }
        if !spec.exclude_outbound_ports.is_empty() {
            rules.push(format!(
                "tcp dport {} return",
                set(&spec.exclude_outbound_ports)
            ));
        }
        for family in spec.families() {
            let excluded = nets(&spec.exclude_outbound_cidrs, family);
            if !excluded.is_empty() {
                rules.push(format!("{} daddr {} return", keyword(family), excluded));
            }
        }
        // nft wants the protocol match in the rule that maps the port.
        let redirect = format!("meta l4proto tcp redirect to :{}", spec.outbound_port);
        if spec.include_outbound_cidrs.is_empty() {
            rules.push(redirect);
        } else {
            for family in spec.families() {
                let included = nets(&spec.include_outbound_cidrs, family);
                if !included.is_empty() {
                    rules.push(format!("{} daddr {included} {redirect}", keyword(family)));
                }
            }
        }
        chain(
            &mut script,
            "output",
            "type nat hook output priority -100; policy accept;",
            &rules,
        );
    }
    let mut inbound = family_guard(spec);
    inbound.push("iifname \"lo\" return".into());
    inbound.push("meta l4proto != tcp return".into());
    inbound.push(format!(
        "tcp dport {} return",
        set(&spec.inbound_skip_ports())
    ));
    let ports = if spec.include_inbound_ports.is_empty() {
        String::new()
    } else {
        format!("tcp dport {} ", set(&spec.include_inbound_ports))
    };
    match spec.inbound {
        Inbound::None => {}
        Inbound::Redirect => {
            inbound.push(format!(
                "{ports}meta l4proto tcp redirect to :{}",
                spec.inbound_port
            ));
            chain(
                &mut script,
                "prerouting",
                "type nat hook prerouting priority dstnat; policy accept;",
                &inbound,
            );
        }
        Inbound::Tproxy => {
            let mark = spec.tproxy_mark;
            // Packets of connections already accepted by the transparent listener: deliver
            // locally (their destination is not a local address).
            inbound.insert(
                inbound.len() - 1,
                format!("socket transparent 1 meta mark set {mark} accept"),
            );
            for family in spec.families() {
                // Only connection openings: see the iptables side for why.
                inbound.push(format!(
                    "{ports}{} daddr != {} tcp flags & (fin|syn|rst|ack) == syn tproxy {} to :{} meta mark set {mark} accept",
                    keyword(family),
                    family.loopback(),
                    keyword(family),
                    spec.inbound_port
                ));
            }
            chain(
                &mut script,
                "prerouting_tproxy",
                "type filter hook prerouting priority mangle; policy accept;",
                &inbound,
            );
        }
    }
    script.push_str("}\n");
    vec![Command::new(&["nft", "-f", "-"], Mode::Once).with_stdin(script)]
}

/// `apply`'s table with every hooked chain returning first: nothing new is captured, and the
/// redirecting rules (and with them the kernel's translation of what they redirected) stay.
pub(crate) fn detach(spec: &Spec) -> Vec<Command> {
    apply(spec)
        .into_iter()
        .map(|mut command| {
            if let Some(script) = &command.stdin {
                let mut detached = String::with_capacity(script.len());
                for line in script.lines() {
                    detached.push_str(line);
                    detached.push('\n');
                    if line.trim_start().starts_with("type ") && line.contains(" hook ") {
                        detached.push_str("    return\n");
                    }
                }
                command.stdin = Some(detached);
            }
            command
        })
        .collect()
}

pub(crate) fn remove() -> Vec<Command> {
    vec![
        Command::new(&["nft", "-f", "-"], Mode::Once)
            .with_stdin(format!("table {TABLE}\ndelete table {TABLE}\n")),
    ]
}

/// The node scope (see the iptables side): one prerouting chain sorts what the node routes for
/// its pods into `pod_out` and `pod_in`.
fn node(spec: &Spec, script: &mut String) {
    let pods = &spec.pods;
    let mut rules = family_guard(spec);
    rules.push("meta l4proto != tcp return".into());
    if !pods.exclude_interfaces.is_empty() {
        rules.push(format!(
            "iifname {} return",
            interfaces(&pods.exclude_interfaces)
        ));
    }
    for family in spec.families() {
        let excluded = nets(&pods.exclude_cidrs, family);
        if !excluded.is_empty() {
            rules.push(format!("{} saddr {excluded} return", keyword(family)));
            rules.push(format!("{} daddr {excluded} return", keyword(family)));
        }
    }
    if spec.outbound {
        if !pods.interfaces.is_empty() {
            rules.push(format!(
                "iifname {} jump pod_out",
                interfaces(&pods.interfaces)
            ));
        }
        for family in spec.families() {
            let cidrs = nets(&pods.cidrs, family);
            if !cidrs.is_empty() {
                rules.push(format!("{} saddr {cidrs} jump pod_out", keyword(family)));
            }
        }
    }
    if spec.inbound == Inbound::Redirect {
        for family in spec.families() {
            let cidrs = nets(&pods.cidrs, family);
            if !cidrs.is_empty() {
                rules.push(format!("{} daddr {cidrs} jump pod_in", keyword(family)));
            }
        }
    }
    chain(
        script,
        "prerouting_node",
        "type nat hook prerouting priority dstnat; policy accept;",
        &rules,
    );
    if spec.outbound {
        let mut out = Vec::new();
        if !spec.exclude_outbound_ports.is_empty() {
            out.push(format!(
                "tcp dport {} return",
                set(&spec.exclude_outbound_ports)
            ));
        }
        for family in spec.families() {
            let excluded = nets(&spec.exclude_outbound_cidrs, family);
            if !excluded.is_empty() {
                out.push(format!("{} daddr {excluded} return", keyword(family)));
            }
        }
        let redirect = format!("meta l4proto tcp redirect to :{}", spec.outbound_port);
        if spec.include_outbound_cidrs.is_empty() {
            out.push(redirect);
        } else {
            for family in spec.families() {
                let included = nets(&spec.include_outbound_cidrs, family);
                if !included.is_empty() {
                    out.push(format!("{} daddr {included} {redirect}", keyword(family)));
                }
            }
        }
        plain_chain(script, "pod_out", &out);
    }
    if spec.inbound == Inbound::Redirect {
        let ports = if spec.include_inbound_ports.is_empty() {
            String::new()
        } else {
            format!("tcp dport {} ", set(&spec.include_inbound_ports))
        };
        let rules = vec![
            format!("tcp dport {} return", set(&spec.inbound_skip_ports())),
            format!("{ports}meta l4proto tcp redirect to :{}", spec.inbound_port),
        ];
        plain_chain(script, "pod_in", &rules);
    }
}

/// A chain without a hook (a jump target).
fn plain_chain(script: &mut String, name: &str, rules: &[String]) {
    script.push_str(&format!("  chain {name} {{\n"));
    for rule in rules {
        script.push_str(&format!("    {rule}\n"));
    }
    script.push_str("  }\n");
}

/// Interface names in nft's spelling (iptables' trailing `+` is nft's `*`), quoted, as a set
/// when there are several.
fn interfaces(names: &[String]) -> String {
    let quoted: Vec<String> = names
        .iter()
        .map(|name| match name.strip_suffix('+') {
            Some(stem) => format!("\"{stem}*\""),
            None => format!("\"{name}\""),
        })
        .collect();
    set(&quoted)
}

fn chain(script: &mut String, name: &str, hook: &str, rules: &[String]) {
    script.push_str(&format!("  chain {name} {{\n    {hook}\n"));
    for rule in rules {
        script.push_str(&format!("    {rule}\n"));
    }
    script.push_str("  }\n");
}

/// One family only: the other's packets leave the chain first.
fn family_guard(spec: &Spec) -> Vec<String> {
    match (spec.ipv4, spec.ipv6) {
        (true, false) => vec!["meta nfproto != ipv4 return".into()],
        (false, true) => vec!["meta nfproto != ipv6 return".into()],
        _ => Vec::new(),
    }
}

fn keyword(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn set<T: std::fmt::Display>(items: &[T]) -> String {
    if items.len() == 1 {
        return items[0].to_string();
    }
    let items: Vec<String> = items.iter().map(T::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

fn nets(all: &[ipnet::IpNet], family: Family) -> String {
    let mine: Vec<ipnet::IpNet> = all.iter().copied().filter(|n| family.matches(n)).collect();
    if mine.is_empty() {
        String::new()
    } else {
        set(&mine)
    }
}
