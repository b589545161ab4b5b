//! The interception rules origdst needs, as data: from a [`Spec`] (Istio's conventions by default)
//! to the [`Command`]s that install or remove them with iptables/ip6tables or nftables, and the
//! policy routing TPROXY needs. No I/O here: `origdst iptables print` writes the commands as a
//! shell script, `apply`/`remove` run them, and the golden tests pin them.
//!
//! Every rule lives in origdst's own chains (`ORIGDST_*`) or its own nftables table
//! (`inet origdst`), so applying twice converges to the same rules and removing leaves the rest of
//! the host's rule set alone.

mod iptables;
mod nftables;
mod spec;

pub use spec::{
    Backend, Family, ISTIO_EXCLUDED_INBOUND_PORTS, Inbound, InboundSource, Pods, Scope, Spec,
    SpecError,
};

/// How a command's exit status is treated; each has a shell spelling for `print`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Must succeed.
    Once,
    /// Run only if `check` fails (e.g. `iptables -C` before `-A`): idempotent inserts.
    Unless(Vec<String>),
    /// Run until it fails (e.g. delete a jump rule that may have been added more than once).
    WhileSucceeds,
    /// Failure is fine (removing what may not exist).
    IgnoreFailure,
}

/// One program invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub argv: Vec<String>,
    /// Fed to the program's standard input (iptables-restore, nft -f -).
    pub stdin: Option<String>,
    pub mode: Mode,
}

impl Command {
    fn new(argv: &[&str], mode: Mode) -> Self {
        Self {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin: None,
            mode,
        }
    }

    fn owned(argv: Vec<String>, mode: Mode) -> Self {
        Self {
            argv,
            stdin: None,
            mode,
        }
    }

    fn with_stdin(mut self, stdin: String) -> Self {
        self.stdin = Some(stdin);
        self
    }
}

/// The commands that install `spec`'s rules, converging from whatever origdst installed before
/// (chains of a mode no longer asked for are removed).
pub fn apply(spec: &Spec) -> Vec<Command> {
    let mut out = match spec.backend {
        Backend::Iptables => iptables::apply(spec),
        Backend::Nftables => nftables::apply(spec),
    };
    if spec.inbound == Inbound::Tproxy {
        out.extend(policy_routing_add(spec));
    } else {
        out.extend(policy_routing_remove(spec));
    }
    out.extend(inbound_source_address(spec));
    out
}

/// The inbound passthrough's IPv6 source (Istio's `::6`) is no address of the namespace until it
/// is added to `lo`, as istio-iptables does; without it every inbound IPv6 connection's upstream
/// bind fails. (IPv4's 127.0.0.6 is loopback already.) Left in place by `remove`: it may be
/// someone else's too, and an unused loopback address captures nothing.
fn inbound_source_address(spec: &Spec) -> Vec<Command> {
    match spec.inbound_source.v6 {
        Some(v6)
            if spec.scope == Scope::Local
                && spec.ipv6
                && spec.inbound != Inbound::None
                && !v6.is_loopback() =>
        {
            let address = format!("{v6}/128");
            // (Fails when it is there already: fine.)
            vec![Command::new(
                &["ip", "-6", "addr", "add", address.as_str(), "dev", "lo"],
                Mode::IgnoreFailure,
            )]
        }
        _ => Vec::new(),
    }
}

/// The commands that remove every rule origdst may have installed with this backend.
pub fn remove(spec: &Spec) -> Vec<Command> {
    let mut out = match spec.backend {
        Backend::Iptables => iptables::remove(spec),
        Backend::Nftables => nftables::remove(),
    };
    out.extend(policy_routing_remove(spec));
    out
}

/// `apply` for a namespace known to hold no rule of origdst's (a pod just created, checked by
/// the caller): the same rules, installed in one transaction per family (iptables: one
/// `iptables-restore` with the jumps inside it; nftables: `apply`'s one `nft -f`). Where origdst's
/// rules may already be, use [`apply`], which converges.
pub fn apply_fresh(spec: &Spec) -> Vec<Command> {
    let mut out = match spec.backend {
        Backend::Iptables => iptables::apply_fresh(spec),
        Backend::Nftables => nftables::apply(spec),
    };
    out.extend(inbound_source_address(spec));
    out
}

/// The commands that stop `spec`'s rules capturing new connections while the connections they
/// already redirected keep working: the kernel translates those (REDIRECT's NAT) only while a
/// NAT rule still exists in the namespace, so removing the rules outright breaks them mid-stream.
/// iptables: the jumps into origdst's chains go, the chains stay. nftables: each chain returns
/// before its rules, which stay. [`remove`] takes the rest out once those connections are done.
pub fn detach(spec: &Spec) -> Vec<Command> {
    match spec.backend {
        Backend::Iptables => iptables::detach(spec),
        Backend::Nftables => nftables::detach(spec),
    }
}

/// After [`detach`], once the connections the rules redirected are done: takes out what `spec`
/// installed, in one transaction per family (fails if something else changed them meanwhile:
/// then [`remove`] takes out everything origdst may have made).
pub fn drop_detached(spec: &Spec) -> Vec<Command> {
    let mut out = match spec.backend {
        Backend::Iptables => iptables::drop_detached(spec),
        Backend::Nftables => nftables::remove(),
    };
    out.extend(policy_routing_remove(spec));
    out
}

/// A shell script equivalent to running `commands` (what `origdst iptables print` shows).
pub fn script(title: &str, commands: &[Command]) -> String {
    let mut out = format!("#!/bin/sh\n# {title}\nset -e\n");
    for command in commands {
        let line = shell_words(&command.argv);
        let line = match &command.mode {
            Mode::Once => line,
            Mode::Unless(check) => format!("{} 2>/dev/null || {line}", shell_words(check)),
            Mode::WhileSucceeds => format!("while {line} 2>/dev/null; do :; done"),
            Mode::IgnoreFailure => format!("{line} 2>/dev/null || true"),
        };
        match &command.stdin {
            None => out.push_str(&line),
            Some(stdin) => {
                out.push_str(&format!("{line} <<'ORIGDST_EOF'\n{stdin}ORIGDST_EOF"));
            }
        }
        out.push('\n');
    }
    out
}

fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|word| {
            if !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,+@%".contains(&b))
            {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// TPROXY's local delivery: packets carrying the divert mark are routed to the local stack
/// (`ip rule fwmark … lookup T` + `local default dev lo table T`), per family.
fn policy_routing_add(spec: &Spec) -> Vec<Command> {
    let mark = spec.tproxy_mark.to_string();
    let table = spec.route_table.to_string();
    let mut out = Vec::new();
    for family in spec.families() {
        let flag = family.ip_flag();
        let rule = [
            "ip",
            flag,
            "rule",
            "add",
            "fwmark",
            mark.as_str(),
            "lookup",
            table.as_str(),
        ];
        let check = vec![
            "sh".to_string(),
            "-c".to_string(),
            format!("ip {flag} rule list fwmark {mark} lookup {table} | grep -q ."),
        ];
        out.push(Command::new(&rule, Mode::Unless(check)));
        out.push(Command::new(
            &[
                "ip",
                flag,
                "route",
                "replace",
                "local",
                family.any(),
                "dev",
                "lo",
                "table",
                table.as_str(),
            ],
            Mode::Once,
        ));
    }
    out
}

fn policy_routing_remove(spec: &Spec) -> Vec<Command> {
    let mark = spec.tproxy_mark.to_string();
    let table = spec.route_table.to_string();
    let mut out = Vec::new();
    for family in spec.families() {
        let flag = family.ip_flag();
        out.push(Command::new(
            &[
                "ip",
                flag,
                "rule",
                "del",
                "fwmark",
                mark.as_str(),
                "lookup",
                table.as_str(),
            ],
            Mode::WhileSucceeds,
        ));
        out.push(Command::new(
            &["ip", flag, "route", "flush", "table", table.as_str()],
            Mode::IgnoreFailure,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_quote_only_what_needs_it() {
        let argv = ["iptables", "-m", "comment", "--comment", "it's here", ""].map(String::from);
        assert_eq!(
            shell_words(&argv),
            r"iptables -m comment --comment 'it'\''s here' ''"
        );
    }

    #[test]
    fn detaching_stops_capture_but_keeps_the_redirecting_rules() {
        let spec = Spec {
            proxy_uids: Vec::new(),
            ..Spec::default()
        };
        // iptables: only the jumps go (no chain is flushed or deleted).
        let detached = detach(&spec);
        assert!(!detached.is_empty());
        for command in &detached {
            assert!(command.argv.contains(&"-D".to_string()), "{command:?}");
            assert!(
                !command.argv.iter().any(|a| a == "-F" || a == "-X"),
                "{command:?}"
            );
        }
        // nftables: the same table, each hooked chain returning before its rules.
        let spec = Spec {
            backend: Backend::Nftables,
            ..spec
        };
        let applied = apply(&spec)[0].stdin.clone().expect("a script");
        let detached = detach(&spec)[0].stdin.clone().expect("a script");
        let hooks = applied.matches(" hook ").count();
        assert_eq!(hooks, 2, "output and prerouting: {applied}");
        assert_eq!(
            detached.matches("    return\n").count(),
            hooks,
            "{detached}"
        );
        assert_eq!(
            detached.replace("    return\n", ""),
            applied,
            "nothing else changes"
        );
        assert!(detached.contains("redirect to :15001"), "{detached}");
        // A fresh namespace's apply (iptables): one restore per family, jumps included, the
        // same rules as `apply`'s restore.
        let iptables = Spec {
            backend: Backend::Iptables,
            ..spec.clone()
        };
        let fresh = apply_fresh(&iptables);
        let restores: Vec<&Command> = fresh
            .iter()
            .filter(|c| c.argv[0].ends_with("-restore"))
            .collect();
        assert_eq!(restores.len(), 2, "{fresh:?}");
        let script = restores[0].stdin.clone().expect("a script");
        assert!(
            script.contains("-A OUTPUT -p tcp -j ORIGDST_OUTPUT\n"),
            "{script}"
        );
        assert!(
            script.contains("-A PREROUTING -p tcp -j ORIGDST_INBOUND\n"),
            "{script}"
        );
        let converging = apply(&iptables)[0].stdin.clone().expect("a script");
        for line in converging.lines().filter(|l| l.starts_with("-A ORIGDST")) {
            assert!(script.contains(line), "{line} missing from {script}");
        }
        // Dropping what was detached: iptables in one restore per family, each chain flushed
        // then deleted.
        let spec = Spec {
            backend: Backend::Iptables,
            ..spec
        };
        let dropped = drop_detached(&spec);
        let restores: Vec<&Command> = dropped
            .iter()
            .filter(|c| c.argv[0].ends_with("-restore"))
            .collect();
        assert_eq!(restores.len(), 2, "{dropped:?}");
        let script = restores[0].stdin.clone().expect("a script");
        assert_eq!(
            script,
            "*nat\n-F ORIGDST_OUTPUT\n-F ORIGDST_REDIRECT\n-F ORIGDST_INBOUND\n\
             -F ORIGDST_IN_REDIRECT\n-X ORIGDST_OUTPUT\n-X ORIGDST_REDIRECT\n\
             -X ORIGDST_INBOUND\n-X ORIGDST_IN_REDIRECT\nCOMMIT\n"
        );
    }
}
