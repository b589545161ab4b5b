//! `origdst iptables print|apply|remove`: the command-line face of `origdst-rules`, and the one
//! place that runs the generated commands.

use std::io::Write;
use std::process::{Command as Process, Stdio};

use clap::{Args, ValueEnum};
use ipnet::IpNet;
use origdst_rules::{Backend, Command, Inbound, Mode, Spec};

/// What to do with the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// Print them as a shell script (what `apply` runs).
    Print,
    /// Install them (idempotent: a second apply converges to the same rules).
    Apply,
    /// Remove every rule origdst installed with this backend.
    Remove,
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// iptables/ip6tables through iptables-restore.
    Iptables,
    /// One nftables table, `inet origdst`.
    Nftables,
}

/// `--inbound`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InboundArg {
    /// Inbound connections are not captured.
    None,
    /// nat PREROUTING REDIRECT.
    Redirect,
    /// mangle PREROUTING TPROXY with fwmark policy routing.
    Tproxy,
}

/// The interception to install. Defaults: Istio's sidecar conventions.
#[derive(Debug, Args)]
pub struct InterceptionArgs {
    /// print, apply or remove.
    #[arg(value_enum)]
    pub action: Action,
    /// iptables/ip6tables (iptables-restore) or one nftables table (`inet origdst`).
    #[arg(long, value_enum, default_value = "iptables")]
    pub backend: BackendArg,
    /// How inbound connections reach the proxy (TPROXY needs a transparent listener on
    /// --inbound-port).
    #[arg(long, value_enum, default_value = "redirect")]
    pub inbound: InboundArg,
    /// Do not capture outbound connections.
    #[arg(long)]
    pub no_outbound: bool,
    /// IPv4 only.
    #[arg(long, conflicts_with = "ipv6_only")]
    pub ipv4_only: bool,
    /// IPv6 only.
    #[arg(long)]
    pub ipv6_only: bool,
    /// The port outbound connections are redirected to (origdst's outbound listener).
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// The port inbound connections are redirected to (origdst's inbound listener).
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// Users whose connections are never captured (the proxy's own): uids or names,
    /// comma-separated; `none` to exclude by mark only.
    #[arg(long, value_delimiter = ',', default_value = "1337")]
    pub proxy_uid: Vec<String>,
    /// The mark on the proxy's upstream connections (origdst's `upstream_mark`); `none` to not
    /// exclude by mark.
    #[arg(long, default_value = "1337", value_parser = parse_mark)]
    pub proxy_mark: MarkArg,
    /// TPROXY's divert mark (exact match), never the proxy mark.
    #[arg(long, default_value_t = 1338)]
    pub tproxy_mark: u32,
    /// The routing table that delivers TPROXY-marked packets locally.
    #[arg(long, default_value_t = 133)]
    pub route_table: u32,
    /// Outbound destinations to capture (default: all), comma-separated CIDRs.
    #[arg(long, value_delimiter = ',')]
    pub include_outbound_cidrs: Vec<IpNet>,
    /// Outbound destinations never captured, comma-separated CIDRs.
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// Outbound destination ports never captured.
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Inbound destination ports to capture (default: all but the excluded).
    #[arg(long, value_delimiter = ',')]
    pub include_inbound_ports: Vec<u16>,
    /// Inbound destination ports never captured (origdst's own two always are not).
    #[arg(long, value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,
}

/// uids from numbers or user names (`none`: no uid).
fn uids(users: &[String]) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for user in users {
        if user == "none" {
            continue;
        }
        let uid = match user.parse::<u32>() {
            Ok(uid) => uid,
            Err(_) => nix::unistd::User::from_name(user)
                .map_err(|err| format!("--proxy-uid: looking up {user:?}: {err}"))?
                .ok_or_else(|| format!("--proxy-uid: no user {user:?}"))?
                .uid
                .as_raw(),
        };
        out.push(uid);
    }
    Ok(out)
}

/// `--proxy-mark`: a mark, or `none`.
#[derive(Debug, Clone, Copy)]
pub struct MarkArg(pub Option<u32>);

fn parse_mark(text: &str) -> Result<MarkArg, String> {
    if text == "none" {
        return Ok(MarkArg(None));
    }
    text.parse()
        .map(|mark| MarkArg(Some(mark)))
        .map_err(|_| format!("{text:?} is not a mark (a number or `none`)"))
}

impl InterceptionArgs {
    /// The validated spec; the error names the flag.
    pub fn spec(&self) -> Result<Spec, String> {
        let spec = Spec {
            backend: match self.backend {
                BackendArg::Iptables => Backend::Iptables,
                BackendArg::Nftables => Backend::Nftables,
            },
            ipv4: !self.ipv6_only,
            ipv6: !self.ipv4_only,
            outbound: !self.no_outbound,
            outbound_port: self.outbound_port,
            inbound: match self.inbound {
                InboundArg::None => Inbound::None,
                InboundArg::Redirect => Inbound::Redirect,
                InboundArg::Tproxy => Inbound::Tproxy,
            },
            inbound_port: self.inbound_port,
            proxy_uids: uids(&self.proxy_uid)?,
            proxy_mark: self.proxy_mark.0,
            tproxy_mark: self.tproxy_mark,
            route_table: self.route_table,
            include_outbound_cidrs: self.include_outbound_cidrs.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.clone(),
            include_inbound_ports: self.include_inbound_ports.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.clone(),
        };
        spec.validate().map_err(|err| format!("--{err}"))?;
        Ok(spec)
    }
}

/// Runs `origdst iptables …`; the error says which command failed and what it printed.
pub fn run(args: &InterceptionArgs) -> Result<(), String> {
    let spec = args.spec()?;
    match args.action {
        Action::Print => {
            let title = format!(
                "origdst interception rules (backend={:?}, inbound={:?}, outbound={}); `origdst iptables apply` runs the same",
                args.backend, args.inbound, !args.no_outbound
            );
            print!(
                "{}",
                origdst_rules::script(&title, &origdst_rules::apply(&spec))
            );
            Ok(())
        }
        Action::Apply => execute(&origdst_rules::apply(&spec)),
        Action::Remove => execute(&origdst_rules::remove(&spec)),
    }
}

fn execute(commands: &[Command]) -> Result<(), String> {
    for command in commands {
        let stdin = command.stdin.as_deref();
        match &command.mode {
            Mode::Once => run_one(&command.argv, stdin, true).map(drop)?,
            Mode::Unless(check) => {
                if !run_one(check, None, false)? {
                    run_one(&command.argv, stdin, true)?;
                }
            }
            Mode::WhileSucceeds => {
                // Bounded: a rule added a thousand times is someone else's loop.
                for _ in 0..1000 {
                    if !run_one(&command.argv, stdin, false)? {
                        break;
                    }
                }
            }
            Mode::IgnoreFailure => {
                run_one(&command.argv, stdin, false)?;
            }
        }
    }
    Ok(())
}

/// Runs `argv` with `stdin` as its input; whether it succeeded. `must`: a failure is an error
/// carrying the program's own message.
fn run_one(argv: &[String], stdin: Option<&str>, must: bool) -> Result<bool, String> {
    let mut child = Process::new(&argv[0])
        .args(&argv[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("{}: cannot run: {err}", argv[0]))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped above");
        pipe.write_all(text.as_bytes())
            .map_err(|err| format!("{}: writing its input: {err}", argv[0]))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|err| format!("{}: {err}", argv[0]))?;
    if output.status.success() {
        return Ok(true);
    }
    if must {
        return Err(format!(
            "`{}` failed ({}): {}{}",
            argv.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            stdin.map_or(String::new(), |s| format!("\ninput was:\n{s}"))
        ));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: InterceptionArgs,
    }

    fn parse(args: &[&str]) -> Result<Spec, String> {
        let cli = Cli::try_parse_from(std::iter::once("origdst").chain(args.iter().copied()))
            .map_err(|err| err.to_string())?;
        cli.args.spec()
    }

    #[test]
    fn flags_become_the_spec() {
        let spec = parse(&[
            "apply",
            "--backend",
            "nftables",
            "--inbound",
            "tproxy",
            "--proxy-uid",
            "1337,root",
            "--proxy-mark",
            "none",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12,fd00::/8",
            "--ipv4-only",
        ])
        .unwrap();
        assert_eq!(spec.backend, Backend::Nftables);
        assert_eq!(spec.inbound, Inbound::Tproxy);
        assert_eq!(spec.proxy_uids, vec![1337, 0]);
        assert_eq!(spec.proxy_mark, None);
        assert_eq!(spec.exclude_outbound_cidrs.len(), 2);
        assert!(spec.ipv4 && !spec.ipv6);
        assert_eq!(parse(&["print"]).unwrap(), Spec::default());
    }

    #[test]
    fn bad_flags_are_refused_by_name() {
        let err = parse(&["apply", "--proxy-uid", "none", "--proxy-mark", "none"]).unwrap_err();
        assert!(err.starts_with("--proxy-uid"), "{err}");
        let err = parse(&["apply", "--proxy-mark", "lots"]).unwrap_err();
        assert!(err.contains("--proxy-mark"), "{err}");
        let err = parse(&["apply", "--proxy-uid", "no-such-user-here"]).unwrap_err();
        assert!(err.contains("no user"), "{err}");
    }
}
