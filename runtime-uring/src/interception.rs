//! `origdst iptables print|apply|remove`: the command-line face of `origdst-rules`, and the one
//! place that runs the generated commands.

use std::io::Write;
use std::process::{Command as Process, Stdio};

use clap::{Args, ValueEnum};
use ipnet::IpNet;
use origdst_core::config::{Config, Listener};
use origdst_rules::{Backend, Command, Inbound, Mode, Pods, Scope, Spec};

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
    /// Inbound destination ports never captured (origdst's own two never are). Default: Istio's
    /// admin, agent, health and Prometheus ports.
    #[arg(long, value_delimiter = ',', default_value = "15000,15020,15021,15090")]
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
        };
        spec.validate().map_err(|err| format!("--{err}"))?;
        Ok(spec)
    }
}

/// The first bound listener of `config` on `port`.
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

    #[test]
    fn rules_never_redirect_to_a_port_without_a_listener() {
        // The defaults against the embedded default config: outbound to 15001 (which it
        // serves), inbound follows the config — it has no 15006 listener, so none.
        let default = Config::default_config();
        let spec = parse(&["apply"]).unwrap();
        assert_eq!(spec.inbound, Inbound::None);
        check_ports(&spec, &default, "the default").unwrap();
        // Asking for inbound REDIRECT to 15006 anyway is refused, naming the port.
        let spec = parse(&["apply", "--inbound", "redirect"]).unwrap();
        let err = check_ports(&spec, &default, "the default").unwrap_err();
        assert!(
            err.starts_with("--inbound-port 15006: the default has no IPv4 listener on port 15006"),
            "{err}"
        );
        let spec = parse(&["apply", "--outbound-port", "15009"]).unwrap();
        let err = check_ports(&spec, &default, "the default").unwrap_err();
        assert!(err.starts_with("--outbound-port 15009"), "{err}");
        // TPROXY needs a transparent listener; an inbound listener in the config turns auto on.
        let with_inbound = origdst_core::config::DEFAULT_YAML.replacen(
            "static_resources:\n  listeners:\n",
            "static_resources:\n  listeners:\n  - name: in\n    address: { socket_address: { address: \"::\", port_value: 15006 } }\n    additional_addresses: [ { address: { socket_address: { address: 0.0.0.0, port_value: 15006 } } } ]\n    listener_filters: [ { name: envoy.filters.listener.original_dst } ]\n    filter_chains: [ { filters: [ { name: envoy.filters.network.tcp_proxy, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: in, cluster: PassthroughCluster } } ] } ]\n",
            1,
        );
        let config = Config::from_yaml(&with_inbound).unwrap();
        let cli = Cli::try_parse_from(["origdst", "apply"]).unwrap();
        let spec = cli.args.spec(&config).unwrap();
        assert_eq!(spec.inbound, Inbound::Redirect);
        check_ports(&spec, &config, "c").unwrap();
        let cli = Cli::try_parse_from(["origdst", "apply", "--inbound", "tproxy"]).unwrap();
        let err = check_ports(&cli.args.spec(&config).unwrap(), &config, "c").unwrap_err();
        assert!(
            err.contains("no IPv4 transparent listener on port 15006"),
            "{err}"
        );
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
        assert_eq!(
            parse(&["print", "--inbound", "redirect"]).unwrap(),
            Spec::default()
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
