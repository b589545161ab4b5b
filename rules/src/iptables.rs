//! iptables/ip6tables: origdst's chains are written with one `iptables-restore --noflush` per
//! family (a declared chain is created or flushed, so a second apply replaces, never duplicates),
//! then the jumps from the built-in chains are added only where `iptables -C` does not find them.

use crate::spec::{Family, Inbound, Scope, Spec};
use crate::{Command, Mode};

/// (table, built-in chain, our chain it jumps to). Every jump origdst ever installs.
const JUMPS: [(&str, &str, &str); 4] = [
    ("nat", "OUTPUT", "ORIGDST_OUTPUT"),
    ("nat", "PREROUTING", "ORIGDST_INBOUND"),
    ("mangle", "PREROUTING", "ORIGDST_INBOUND"),
    ("nat", "PREROUTING", "ORIGDST_NODE"),
];

/// Every chain origdst ever creates, by table.
const CHAINS: [(&str, &str); 10] = [
    ("nat", "ORIGDST_NODE"),
    ("nat", "ORIGDST_POD_OUT"),
    ("nat", "ORIGDST_POD_IN"),
    ("nat", "ORIGDST_OUTPUT"),
    ("nat", "ORIGDST_REDIRECT"),
    ("nat", "ORIGDST_INBOUND"),
    ("nat", "ORIGDST_IN_REDIRECT"),
    ("mangle", "ORIGDST_INBOUND"),
    ("mangle", "ORIGDST_DIVERT"),
    ("mangle", "ORIGDST_TPROXY"),
];

pub(crate) fn apply(spec: &Spec) -> Vec<Command> {
    let mut out = Vec::new();
    for family in spec.families() {
        let tables = tables(spec, family);
        let script: String = tables.iter().map(Table::restore).collect();
        let restore = format!("{}-restore", family.iptables());
        out.push(Command::new(&[restore.as_str(), "--noflush"], Mode::Once).with_stdin(script));
        let wanted = wanted_jumps(spec);
        for (table, builtin, chain) in wanted.iter().copied() {
            let check = jump(family, "-C", table, builtin, chain);
            out.push(Command::owned(
                jump(family, "-A", table, builtin, chain),
                Mode::Unless(check),
            ));
        }
        // What an earlier apply with another mode left behind.
        for (table, builtin, chain) in JUMPS {
            if !wanted.contains(&(table, builtin, chain)) {
                out.push(Command::owned(
                    jump(family, "-D", table, builtin, chain),
                    Mode::WhileSucceeds,
                ));
            }
        }
        let stale: Vec<(&str, &str)> = CHAINS
            .into_iter()
            .filter(|(table, chain)| {
                !tables
                    .iter()
                    .any(|t| t.name == *table && t.chains.iter().any(|(c, _)| c == chain))
            })
            .collect();
        out.extend(drop_chains(family, &stale));
    }
    out
}

pub(crate) fn remove(spec: &Spec) -> Vec<Command> {
    let mut out = Vec::new();
    for family in spec.families() {
        for (table, builtin, chain) in JUMPS {
            out.push(Command::owned(
                jump(family, "-D", table, builtin, chain),
                Mode::WhileSucceeds,
            ));
        }
        out.extend(drop_chains(family, &CHAINS));
    }
    out
}

/// `apply` for a namespace that holds no rule of origdst's (a pod just created): one
/// `iptables-restore` per family, the jumps inside it — one process each, not two dozen.
pub(crate) fn apply_fresh(spec: &Spec) -> Vec<Command> {
    let mut out = Vec::new();
    for family in spec.families() {
        let mut tables = tables(spec, family);
        let wanted = wanted_jumps(spec);
        let mut script = String::new();
        for table in &mut tables {
            let mut text = table.restore();
            let jumps: String = wanted
                .iter()
                .filter(|(t, _, _)| *t == table.name)
                .map(|(_, builtin, chain)| format!("-A {builtin} -p tcp -j {chain}\n"))
                .collect();
            text = text.replacen("COMMIT\n", &format!("{jumps}COMMIT\n"), 1);
            script.push_str(&text);
        }
        let restore = format!("{}-restore", family.iptables());
        out.push(Command::new(&[restore.as_str(), "--noflush"], Mode::Once).with_stdin(script));
    }
    out
}

pub(crate) fn detach(spec: &Spec) -> Vec<Command> {
    let mut out = Vec::new();
    for family in spec.families() {
        for (table, builtin, chain) in JUMPS {
            out.push(Command::owned(
                jump(family, "-D", table, builtin, chain),
                Mode::WhileSucceeds,
            ));
        }
    }
    out
}

pub(crate) fn drop_detached(spec: &Spec) -> Vec<Command> {
    let mut out = Vec::new();
    for family in spec.families() {
        let mut script = String::new();
        for table in tables(spec, family) {
            script.push_str(&format!("*{}\n", table.name));
            for op in ["-F", "-X"] {
                for (chain, _) in &table.chains {
                    script.push_str(&format!("{op} {chain}\n"));
                }
            }
            script.push_str("COMMIT\n");
        }
        let restore = format!("{}-restore", family.iptables());
        out.push(Command::new(&[restore.as_str(), "--noflush"], Mode::Once).with_stdin(script));
    }
    out
}

/// Flushes every chain first (they jump to each other), then deletes them.
fn drop_chains(family: Family, chains: &[(&str, &str)]) -> Vec<Command> {
    let mut out = Vec::new();
    for op in ["-F", "-X"] {
        for (table, chain) in chains {
            out.push(Command::new(
                &[family.iptables(), "-t", *table, op, *chain],
                Mode::IgnoreFailure,
            ));
        }
    }
    out
}

fn jump(family: Family, op: &str, table: &str, builtin: &str, chain: &str) -> Vec<String> {
    [
        family.iptables(),
        "-t",
        table,
        op,
        builtin,
        "-p",
        "tcp",
        "-j",
        chain,
    ]
    .map(str::to_string)
    .to_vec()
}

/// The jumps `spec` needs.
fn wanted_jumps(spec: &Spec) -> Vec<(&'static str, &'static str, &'static str)> {
    JUMPS
        .into_iter()
        .filter(|jump| match (spec.scope, *jump) {
            (Scope::Node, (_, _, chain)) => chain == "ORIGDST_NODE",
            (Scope::Local, (_, _, "ORIGDST_NODE")) => false,
            (Scope::Local, ("nat", "OUTPUT", _)) => spec.outbound,
            (Scope::Local, ("nat", "PREROUTING", _)) => spec.inbound == Inbound::Redirect,
            (Scope::Local, ("mangle", "PREROUTING", _)) => spec.inbound == Inbound::Tproxy,
            _ => unreachable!("every jump is listed"),
        })
        .collect()
}

/// One table's share of the restore script.
struct Table {
    name: &'static str,
    /// (chain, its rules after `-A CHAIN`).
    chains: Vec<(&'static str, Vec<String>)>,
}

impl Table {
    fn restore(&self) -> String {
        let mut out = format!("*{}\n", self.name);
        for (chain, _) in &self.chains {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for (chain, rules) in &self.chains {
            for rule in rules {
                out.push_str(&format!("-A {chain} {rule}\n"));
            }
        }
        out.push_str("COMMIT\n");
        out
    }
}

fn tables(spec: &Spec, family: Family) -> Vec<Table> {
    if spec.scope == Scope::Node {
        return vec![node_table(spec, family)];
    }
    let mut nat = Table {
        name: "nat",
        chains: Vec::new(),
    };
    let mut out = Vec::new();
    if spec.outbound {
        let mut rules = Vec::new();
        if spec.inbound != Inbound::None
            && let Some(source) = spec.inbound_source.host(family)
        {
            // The inbound passthrough's connection to the workload: never captured.
            rules.push(format!("-s {source} -o lo -j RETURN"));
            if spec.inbound == Inbound::Redirect {
                // The proxy's own connection to the pod's own address goes through the inbound
                // listener (Istio's sidecar rule).
                let loopback = family.loopback();
                for uid in &spec.proxy_uids {
                    rules.push(format!(
                        "! -d {loopback} -o lo -m owner --uid-owner {uid} -j ORIGDST_IN_REDIRECT"
                    ));
                }
                if let Some(mark) = spec.proxy_mark {
                    rules.push(format!(
                        "! -d {loopback} -o lo -m mark --mark {mark} -j ORIGDST_IN_REDIRECT"
                    ));
                }
            }
        }
        rules.push("-o lo -j RETURN".to_string());
        if let Some(mark) = spec.proxy_mark {
            rules.push(format!("-m mark --mark {mark} -j RETURN"));
        }
        for uid in &spec.proxy_uids {
            rules.push(format!("-m owner --uid-owner {uid} -j RETURN"));
        }
        for port in &spec.exclude_outbound_ports {
            rules.push(format!("-p tcp --dport {port} -j RETURN"));
        }
        for net in spec
            .exclude_outbound_cidrs
            .iter()
            .filter(|n| family.matches(n))
        {
            rules.push(format!("-d {net} -j RETURN"));
        }
        if spec.include_outbound_cidrs.is_empty() {
            rules.push("-j ORIGDST_REDIRECT".into());
        }
        for net in spec
            .include_outbound_cidrs
            .iter()
            .filter(|n| family.matches(n))
        {
            rules.push(format!("-d {net} -j ORIGDST_REDIRECT"));
        }
        nat.chains.push(("ORIGDST_OUTPUT", rules));
        nat.chains.push((
            "ORIGDST_REDIRECT",
            vec![format!(
                "-p tcp -j REDIRECT --to-ports {}",
                spec.outbound_port
            )],
        ));
    }
    let skip: Vec<String> = spec
        .inbound_skip_ports()
        .iter()
        .map(|port| format!("-p tcp --dport {port} -j RETURN"))
        .collect();
    // `syn`: TPROXY only opens connections; the rest of an accepted one finds its transparent
    // socket, and packets of every other connection (replies to origdst's own upstream sockets
    // among them) must not meet TPROXY, which drops what belongs to a non-transparent socket.
    let capture = |syn: &str, target: &str| -> Vec<String> {
        if spec.include_inbound_ports.is_empty() {
            vec![format!("-p tcp{syn} -j {target}")]
        } else {
            spec.include_inbound_ports
                .iter()
                .map(|port| format!("-p tcp --dport {port}{syn} -j {target}"))
                .collect()
        }
    };
    match spec.inbound {
        Inbound::None => {}
        Inbound::Redirect => {
            let mut rules = vec!["-i lo -j RETURN".to_string()];
            rules.extend(skip);
            rules.extend(capture("", "ORIGDST_IN_REDIRECT"));
            nat.chains.push(("ORIGDST_INBOUND", rules));
            nat.chains.push((
                "ORIGDST_IN_REDIRECT",
                vec![format!(
                    "-p tcp -j REDIRECT --to-ports {}",
                    spec.inbound_port
                )],
            ));
        }
        Inbound::Tproxy => {
            let mark = spec.tproxy_mark;
            let mut rules = vec![
                "-i lo -j RETURN".to_string(),
                "-p tcp -m socket --transparent -j ORIGDST_DIVERT".to_string(),
            ];
            rules.extend(skip);
            rules.extend(capture(" --syn", "ORIGDST_TPROXY"));
            out.push(Table {
                name: "mangle",
                chains: vec![
                    ("ORIGDST_INBOUND", rules),
                    (
                        "ORIGDST_DIVERT",
                        vec![
                            format!("-j MARK --set-xmark {mark}/0xffffffff"),
                            "-j ACCEPT".into(),
                        ],
                    ),
                    (
                        "ORIGDST_TPROXY",
                        vec![format!(
                            "! -d {} -p tcp -j TPROXY --on-port {} --tproxy-mark {mark}/0xffffffff",
                            family.loopback(),
                            spec.inbound_port
                        )],
                    ),
                ],
            });
        }
    }
    if !nat.chains.is_empty() {
        out.insert(0, nat);
    }
    out
}

/// The node scope: one `nat PREROUTING` entry that sorts what the node routes for its pods —
/// opted-out pods first, then what pods send (`ORIGDST_POD_OUT`, to the outbound port), then what
/// is sent to them from elsewhere (`ORIGDST_POD_IN`, to the inbound port). A pod talking to a pod
/// is the sender's outbound only: origdst's connection to the receiver leaves the host's own
/// stack, which `PREROUTING` never sees, so nothing is captured twice and origdst's upstream
/// connections need no mark to pass.
fn node_table(spec: &Spec, family: Family) -> Table {
    let pods = &spec.pods;
    let mine = |nets: &[ipnet::IpNet]| -> Vec<ipnet::IpNet> {
        nets.iter().copied().filter(|n| family.matches(n)).collect()
    };
    let mut node = Vec::new();
    for name in &pods.exclude_interfaces {
        node.push(format!("-i {name} -j RETURN"));
    }
    for net in mine(&pods.exclude_cidrs) {
        node.push(format!("-s {net} -j RETURN"));
        node.push(format!("-d {net} -j RETURN"));
    }
    if spec.outbound {
        for name in &pods.interfaces {
            node.push(format!("-i {name} -j ORIGDST_POD_OUT"));
        }
        for net in mine(&pods.cidrs) {
            node.push(format!("-s {net} -j ORIGDST_POD_OUT"));
        }
    }
    if spec.inbound == Inbound::Redirect {
        for net in mine(&pods.cidrs) {
            node.push(format!("-d {net} -j ORIGDST_POD_IN"));
        }
    }
    let mut chains = vec![("ORIGDST_NODE", node)];
    if spec.outbound {
        let mut out: Vec<String> = spec
            .exclude_outbound_ports
            .iter()
            .map(|port| format!("-p tcp --dport {port} -j RETURN"))
            .collect();
        for net in mine(&spec.exclude_outbound_cidrs) {
            out.push(format!("-d {net} -j RETURN"));
        }
        if spec.include_outbound_cidrs.is_empty() {
            out.push("-j ORIGDST_REDIRECT".into());
        }
        for net in mine(&spec.include_outbound_cidrs) {
            out.push(format!("-d {net} -j ORIGDST_REDIRECT"));
        }
        chains.push(("ORIGDST_POD_OUT", out));
        chains.push((
            "ORIGDST_REDIRECT",
            vec![format!(
                "-p tcp -j REDIRECT --to-ports {}",
                spec.outbound_port
            )],
        ));
    }
    if spec.inbound == Inbound::Redirect {
        let mut rules: Vec<String> = spec
            .inbound_skip_ports()
            .iter()
            .map(|port| format!("-p tcp --dport {port} -j RETURN"))
            .collect();
        if spec.include_inbound_ports.is_empty() {
            rules.push("-j ORIGDST_IN_REDIRECT".into());
        }
        for port in &spec.include_inbound_ports {
            rules.push(format!("-p tcp --dport {port} -j ORIGDST_IN_REDIRECT"));
        }
        chains.push(("ORIGDST_POD_IN", rules));
        chains.push((
            "ORIGDST_IN_REDIRECT",
            vec![format!(
                "-p tcp -j REDIRECT --to-ports {}",
                spec.inbound_port
            )],
        ));
    }
    Table {
        name: "nat",
        chains,
    }
}
