//! `origdst iptables print|apply|remove`: the command-line face of `origdst-rules`, and the one
//! place that runs the generated commands.

use std::io::Write;
use std::process::{Command as Process, Stdio};

use clap::{Args, ValueEnum};
use ipnet::IpNet;
use origdst_core::config::{Config, Listener};
use origdst_rules::{Backend, Command, Inbound, InboundSource, Mode, Pods, Scope, Spec};

/// What to do with the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// Print them as a shell script (what `apply` runs).
    Print,
    /// Install them (idempotent: a second apply converges to the same rules).
    Apply,
    /// Remove every rule origdst installed with this backend. Connections they redirected
    /// break at once (the kernel stops translating them): `detach` first on a live node.
    Remove,
    /// Stop capturing new connections, keeping the rules that redirected the open ones (they
    /// finish through origdst); `remove` once origdst has drained.
    Detach,
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// iptables/ip6tables through iptables-restore.
    Iptables,
    /// One nftables table, `inet origdst`.
    Nftables,
}

impl BackendArg {
    /// The rules crate's backend.
    pub fn backend(self) -> Backend {
        match self {
            Self::Iptables => Backend::Iptables,
            Self::Nftables => Backend::Nftables,
        }
    }
}

/// `--inbound`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InboundArg {
    /// Follow the config: REDIRECT when it has a listener on --inbound-port (TPROXY when that
    /// listener is transparent), else no inbound capture.
    Auto,
    /// Inbound connections are not captured.
    None,
    /// nat PREROUTING REDIRECT.
    Redirect,
    /// mangle PREROUTING TPROXY with fwmark policy routing.
    Tproxy,
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// This namespace's own connections (a sidecar, or a host's processes): OUTPUT and
    /// PREROUTING to local addresses.
    Local,
    /// A node proxy in the host namespace: what the node's pods (--pod-cidr, --pod-interface)
    /// send and receive, captured where the node routes it.
    Node,
}

/// The interception to install. Defaults: Istio's sidecar conventions.
#[derive(Debug, Args)]
pub struct InterceptionArgs {
    /// print, apply or remove.
    #[arg(value_enum)]
    pub action: Action,
    /// Whose connections: this namespace's own (`local`), or the node's pods (`node`).
    #[arg(long, value_enum, default_value = "local")]
    pub mode: ModeArg,
    /// Node mode: the pods' address ranges, comma-separated CIDRs (what they send is outbound,
    /// what is routed to them from elsewhere inbound).
    #[arg(long, value_delimiter = ',')]
    pub pod_cidr: Vec<IpNet>,
    /// Node mode: host-side interfaces pods' traffic arrives on (`veth+`: any suffix).
    #[arg(long, value_delimiter = ',')]
    pub pod_interface: Vec<String>,
    /// Node mode: pods never captured, by address.
    #[arg(long, value_delimiter = ',')]
    pub exclude_pod_cidr: Vec<IpNet>,
    /// Node mode: pods never captured, by the host-side interface of their traffic.
    #[arg(long, value_delimiter = ',')]
    pub exclude_pod_interface: Vec<String>,
    /// iptables/ip6tables (iptables-restore) or one nftables table (`inet origdst`).
    #[arg(long, value_enum, default_value = "iptables")]
    pub backend: BackendArg,
    /// How inbound connections reach the proxy (TPROXY needs a transparent listener on
    /// --inbound-port). `auto` follows the config.
    #[arg(long, value_enum, default_value = "auto")]
    pub inbound: InboundArg,
    /// The config origdst runs with (default: the embedded one). `apply` refuses rules that
    /// redirect to a port on which it has no listener: they would black-hole every connection
    /// they capture (SSH included).
    #[arg(long, short)]
    pub config: Option<std::path::PathBuf>,
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
    /// Inbound destination ports never captured (origdst's own two never are). Default: SSH (a
    /// host's way in must not depend on origdst running) and Istio's admin, agent, health and
    /// Prometheus ports.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "22,15000,15020,15021,15090"
    )]
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
    /// The validated spec for `config`; the error names the flag.
    pub fn spec(&self, config: &Config) -> Result<Spec, String> {
        let spec = Spec {
            backend: self.backend.backend(),
            scope: match self.mode {
                ModeArg::Local => Scope::Local,
                ModeArg::Node => Scope::Node,
            },
            pods: Pods {
                cidrs: self.pod_cidr.clone(),
                interfaces: self.pod_interface.clone(),
                exclude_cidrs: self.exclude_pod_cidr.clone(),
                exclude_interfaces: self.exclude_pod_interface.clone(),
            },
            ipv4: !self.ipv6_only,
            ipv6: !self.ipv4_only,
            outbound: !self.no_outbound,
            outbound_port: self.outbound_port,
            inbound: match self.inbound {
                InboundArg::Auto => match listener_on(config, self.inbound_port) {
                    Some(listener) if listener.transparent => Inbound::Tproxy,
                    Some(_) => Inbound::Redirect,
                    None => Inbound::None,
                },
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
            inbound_source: inbound_source(config, self.inbound_port),
        };
        spec.validate().map_err(|err| format!("--{err}"))?;
        Ok(spec)
    }
}

/// The first bound listener of `config` on `port`.
/// Where the config's inbound listener (on `port`) connects to the workload from, per family:
/// the `upstream_bind_config` every one of its filter chains' clusters shares (Istio's
/// `InboundPassthroughCluster`: 127.0.0.6 and ::6), an IPv4 one only on loopback. `None` for a
/// family where they do not all agree: then no rule may tell the inbound relay's connections
/// from the workload's own, and the rules that need to are left out.
pub(crate) fn inbound_source(config: &Config, port: u16) -> InboundSource {
    let Some(listener) = listener_on(config, port) else {
        return InboundSource::default();
    };
    let binds: Vec<_> = listener
        .filter_chains
        .iter()
        .chain(&listener.default_filter_chain)
        .map(|chain| config.clusters[chain.tcp_proxy.cluster].bind_source)
        .collect();
    let agreed = |pick: &dyn Fn(&origdst_core::config::BindSource) -> Option<std::net::IpAddr>| {
        let first = pick(binds.first()?)?;
        binds
            .iter()
            .all(|b| pick(b) == Some(first))
            .then_some(first)
    };
    InboundSource {
        v4: agreed(&|b| b.v4.map(std::net::IpAddr::V4)).and_then(|ip| match ip {
            std::net::IpAddr::V4(v4) if v4.is_loopback() => Some(v4),
            _ => None,
        }),
        v6: agreed(&|b| b.v6.map(std::net::IpAddr::V6)).and_then(|ip| match ip {
            std::net::IpAddr::V6(v6) => Some(v6),
            std::net::IpAddr::V4(_) => None,
        }),
    }
}

pub(crate) fn listener_on(config: &Config, port: u16) -> Option<&Listener> {
    config
        .listeners
        .iter()
        .find(|l| l.is_bound() && l.socket_addresses().iter().any(|a| a.port() == port))
}

/// Every port the rules send connections to must have a listener of the right kind, for each
/// address family the rules capture: otherwise every captured connection is refused by the
/// kernel — on a host, SSH included.
pub fn check_ports(spec: &Spec, config: &Config, config_name: &str) -> Result<(), String> {
    let mut targets = Vec::new();
    if spec.outbound {
        targets.push(("--outbound-port", spec.outbound_port, false));
    }
    match spec.inbound {
        Inbound::None => {}
        Inbound::Redirect => targets.push(("--inbound-port", spec.inbound_port, false)),
        Inbound::Tproxy => targets.push(("--inbound-port", spec.inbound_port, true)),
    }
    for (flag, port, transparent) in targets {
        let addrs: Vec<std::net::SocketAddr> = config
            .listeners
            .iter()
            .filter(|l| l.is_bound() && (!transparent || l.transparent))
            .flat_map(|l| l.socket_addresses().iter().copied())
            .filter(|a| a.port() == port)
            .collect();
        let kind = if transparent {
            "transparent listener"
        } else {
            "listener"
        };
        for (family, wanted, serves) in [
            (
                "IPv4",
                spec.ipv4,
                addrs.iter().any(|a| a.is_ipv4() || a.ip().is_unspecified()),
            ),
            (
                "IPv6",
                spec.ipv6,
                addrs.iter().any(std::net::SocketAddr::is_ipv6),
            ),
        ] {
            if wanted && !serves {
                return Err(format!(
                    "{flag} {port}: {config_name} has no {family} {kind} on port {port}; \
                     rules redirecting there would black-hole every connection they capture \
                     (pass the config origdst runs with --config, or change {flag})"
                ));
            }
        }
    }
    Ok(())
}

/// Runs `origdst iptables …`; the error says which command failed and what it printed.
pub fn run(args: &InterceptionArgs) -> Result<(), String> {
    let (config, config_name) = match &args.config {
        None => (
            Config::default_config(),
            "the embedded default config".to_string(),
        ),
        Some(path) => {
            let text = crate::supervisor::read_config_file(path)?;
            let config =
                Config::from_yaml(&text).map_err(|err| format!("{}: {err}", path.display()))?;
            (config, format!("config {}", path.display()))
        }
    };
    let spec = args.spec(&config)?;
    let checked = check_ports(&spec, &config, &config_name);
    match args.action {
        Action::Apply => checked?,
        Action::Print | Action::Remove | Action::Detach => {
            if let (Action::Print, Err(why)) = (args.action, &checked) {
                eprintln!("origdst iptables: warning: `apply` would refuse these rules: {why}");
            }
        }
    }
    match args.action {
        Action::Print => {
            let title = format!(
                "origdst interception rules (mode={:?}, backend={:?}, inbound={:?}, outbound={}); `origdst iptables apply` runs the same",
                args.mode, args.backend, args.inbound, !args.no_outbound
            );
            print!(
                "{}",
                origdst_rules::script(&title, &origdst_rules::apply(&spec))
            );
            Ok(())
        }
        Action::Apply => execute(&origdst_rules::apply(&spec)),
        Action::Remove => execute(&origdst_rules::remove(&spec)),
        Action::Detach => execute(&origdst_rules::detach(&spec)),
    }
}

pub(crate) fn execute(commands: &[Command]) -> Result<(), String> {
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
        cli.args.spec(&Config::default_config())
    }

    /// The embedded default without its inbound listener (a gateway-style outbound-only config).
    fn outbound_only() -> Config {
        let mut config = Config::default_config();
        config.listeners.retain(|l| l.name != "virtualInbound");
        config
    }

    #[test]
    fn rules_never_redirect_to_a_port_without_a_listener() {
        // The defaults against the embedded default config agree: outbound to 15001, inbound
        // to 15006, both of which it serves; its inbound connects from 127.0.0.6 / ::6, which
        // the rules then know.
        let default = Config::default_config();
        let spec = parse(&["apply"]).unwrap();
        assert_eq!(spec.inbound, Inbound::Redirect);
        assert_eq!(spec.inbound_source, InboundSource::ISTIO);
        assert_eq!(spec.exclude_inbound_ports, [22, 15000, 15020, 15021, 15090]);
        check_ports(&spec, &default, "the default").unwrap();
        // Against a config without an inbound listener, auto captures no inbound, and asking
        // for it anyway is refused, naming the port.
        let outbound_only = outbound_only();
        let cli = Cli::try_parse_from(["origdst", "apply"]).unwrap();
        let spec = cli.args.spec(&outbound_only).unwrap();
        assert_eq!(spec.inbound, Inbound::None);
        assert_eq!(spec.inbound_source, InboundSource::default());
        check_ports(&spec, &outbound_only, "c").unwrap();
        let cli = Cli::try_parse_from(["origdst", "apply", "--inbound", "redirect"]).unwrap();
        let spec = cli.args.spec(&outbound_only).unwrap();
        let err = check_ports(&spec, &outbound_only, "c").unwrap_err();
        assert!(
            err.starts_with("--inbound-port 15006: c has no IPv4 listener on port 15006"),
            "{err}"
        );
        let spec = parse(&["apply", "--outbound-port", "15009"]).unwrap();
        let err = check_ports(&spec, &default, "the default").unwrap_err();
        assert!(err.starts_with("--outbound-port 15009"), "{err}");
        // TPROXY needs a transparent listener.
        let spec = parse(&["apply", "--inbound", "tproxy"]).unwrap();
        let err = check_ports(&spec, &default, "c").unwrap_err();
        assert!(
            err.contains("no IPv4 transparent listener on port 15006"),
            "{err}"
        );
        // An inbound listener whose cluster binds no loopback source: the rules cannot tell
        // its connections from the workload's, and leave out what needs to.
        let mut unbound = Config::default_config();
        let cluster = unbound.listeners[1].filter_chains[0].tcp_proxy.cluster;
        unbound.clusters[cluster].bind_source = Default::default();
        let cli = Cli::try_parse_from(["origdst", "apply"]).unwrap();
        let spec = cli.args.spec(&unbound).unwrap();
        assert_eq!(spec.inbound, Inbound::Redirect);
        assert_eq!(spec.inbound_source, InboundSource::default());
        let script = origdst_rules::script("t", &origdst_rules::apply(&spec));
        assert!(!script.contains("127.0.0.6"), "{script}");
        assert!(!script.contains("-o lo -m owner"), "{script}");
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
        // Istio's sidecar defaults, but for SSH never captured inbound.
        assert_eq!(
            parse(&["print", "--inbound", "redirect"]).unwrap(),
            Spec {
                exclude_inbound_ports: vec![22, 15000, 15020, 15021, 15090],
                ..Spec::default()
            }
        );
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
