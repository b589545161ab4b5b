//! The `origdst` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use origdst_core::config::{Config, ConfigError, DEFAULT_YAML, DataPath, KnobOverrides};
use origdst_runtime_uring::interception::{self, InterceptionArgs};
use origdst_runtime_uring::supervisor::{self, BackendChoice, ConfigSource, EngineSettings};

/// origdst — a transparent TCP proxy for traffic that iptables/nftables redirects.
///
/// Every connection redirected to origdst (REDIRECT, or TPROXY on a transparent listener) is
/// relayed to the destination the client originally dialled, byte for byte, with half-close and
/// resets carried through. One io_uring shard per CPU does the work.
#[derive(Parser)]
#[command(name = "origdst", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start-up: the size of the largest variant (the interception flags) is no cost.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the proxy. Without --config it runs the embedded default, Istio's sidecar shape: an
    /// outbound capture listener on 15001 and an inbound one on 15006 (IPv4 and IPv6 each)
    /// relaying to each original destination, inbound ones from 127.0.0.6 / ::6.
    /// SIGTERM/SIGINT drain (no new connections; open ones finish until origdst.drain_timeout),
    /// a second signal resets what is left; SIGUSR1 logs the counters.
    Run {
        /// Config file (Envoy v3 static bootstrap YAML, plus an `origdst:` section).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override origdst.data_path.
        #[arg(long, value_enum)]
        data_path: Option<DataPathArg>,
        /// Override origdst.shards (0: one per CPU).
        #[arg(long)]
        shards: Option<u32>,
        /// Event source: io_uring, falling back to epoll when io_uring is refused (auto); or
        /// one of them, forced.
        #[arg(long, value_enum, default_value = "auto")]
        backend: BackendArg,
        /// Log level: error, warn, info, debug, trace.
        #[arg(long, default_value = "info")]
        log_level: tracing::Level,
        /// Override origdst.admin: the admin endpoint's ip:port, or `off`.
        #[arg(long, value_parser = parse_admin)]
        admin: Option<AdminArg>,
        /// In-pod mode: serve pods from inside their network namespaces. Pods are added and
        /// removed through this Unix socket (`origdst pod add|remove|list`, or a node agent
        /// speaking the protocol in README); the config's listeners open in each pod, not here.
        #[arg(long)]
        in_pod_socket: Option<PathBuf>,
        /// In-pod mode: pods served at most at once.
        #[arg(long, default_value_t = origdst_runtime_uring::pods::PODS_MAX_DEFAULT,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
                  .range(1..=origdst_runtime_uring::pods::PODS_MAX_LIMIT as u64))]
        pods_max: usize,
        /// In-pod mode: how each pod's capture rules are installed.
        #[arg(long, value_enum, default_value = "iptables")]
        pod_rules: interception::BackendArg,
    },
    /// Add, remove or list the pods an in-pod origdst serves (the pod interface's client).
    Pod {
        /// What to do.
        #[command(subcommand)]
        action: PodAction,
        /// origdst's pod socket (`run --in-pod-socket`).
        #[arg(long, global = true, default_value = "/var/run/origdst/pods.sock")]
        socket: PathBuf,
    },
    /// Validate a config file and exit: 0 if valid, 2 with the offending field if not.
    Check {
        /// Config file to validate.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the embedded default config (a starting point for your own).
    DefaultConfig,
    /// Print, apply or remove the interception rules (iptables/ip6tables or nftables, REDIRECT
    /// or TPROXY). Istio's conventions by default: outbound to 15001, inbound to 15006, uid and
    /// mark 1337 excluded. Idempotent; everything lives in ORIGDST_* chains or `inet origdst`.
    Iptables(InterceptionArgs),
    /// A node proxy at work, in one command (root): builds a node with pods and a world in
    /// network namespaces, runs origdst there with node-mode rules, sends bulk,
    /// request/response, a refused destination, a loop attempt and inbound traffic, prints what
    /// origdst saw per pod, checks every connection went where it should, and removes everything.
    /// Exit 0 only if every check held; Ctrl-C cleans up.
    Demo {
        /// Pods on the node (1–20).
        #[arg(long, default_value_t = 3)]
        pods: usize,
        /// Bytes each pod sends to the world and receives back.
        #[arg(long, default_value_t = 4 << 20)]
        bulk_bytes: u64,
        /// Where origdst captures: in the node (node-mode rules), or inside each pod (in-pod
        /// mode: listeners and rules in the pod's namespace, handed over `origdst pod add`).
        #[arg(long, value_enum, default_value = "node")]
        mode: DemoModeArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DemoModeArg {
    /// origdst in the node's namespace, node-mode rules.
    Node,
    /// origdst opens its listeners inside each pod (ztunnel's in-pod design).
    InPod,
}

#[derive(Subcommand)]
enum PodAction {
    /// Serve a pod: its network namespace is handed over (SCM_RIGHTS).
    Add {
        /// The pod's name (`namespace/name`).
        name: String,
        /// Its network namespace: a file such as /var/run/netns/<name> or /proc/<pid>/ns/net.
        #[arg(long)]
        netns: PathBuf,
    },
    /// Stop serving a pod: its listeners stop at once, its connections drain.
    Remove {
        /// The pod's name.
        name: String,
    },
    /// The pods served.
    List,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    /// io_uring; epoll when io_uring_setup is refused (EPERM/ENOSYS) or lacks an opcode.
    Auto,
    /// io_uring, or fail.
    IoUring,
    /// epoll with non-blocking splice (uring-splice) or copy (uring-copy).
    Epoll,
}

#[derive(Clone, Copy, ValueEnum)]
#[allow(clippy::enum_variant_names)] // the names are the config spellings
enum DataPathArg {
    /// io_uring readiness + inline splice(2) through pooled pipes.
    UringSplice,
    /// io_uring multishot recv into provided buffers + send.
    UringCopy,
    /// IORING_OP_SPLICE after POLL_ADD readiness (kept to measure: an io-wq hand-off per op).
    #[value(name = "uring-opsplice")]
    UringOpSplice,
    /// The kernel relays (BPF sockmap stream verdict); needs CAP_BPF, falls back to uring-splice.
    KernelSockmap,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            data_path,
            shards,
            backend,
            log_level,
            admin,
            in_pod_socket,
            pods_max,
            pod_rules,
        } => {
            init_logging(log_level);
            let config_path = config;
            // Command-line overrides go through the config's own validator: `--shards 300` is
            // refused exactly as `shards: 300` in the file is.
            let overrides = KnobOverrides {
                shards,
                data_path: data_path.map(|arg| match arg {
                    DataPathArg::UringSplice => DataPath::UringSplice,
                    DataPathArg::UringCopy => DataPath::UringCopy,
                    DataPathArg::UringOpSplice => DataPath::UringOpSplice,
                    DataPathArg::KernelSockmap => DataPath::KernelSockmap,
                }),
                admin: admin.map(|AdminArg(admin)| admin),
            };
            let (config, yaml) = match load(config_path.as_ref(), &overrides) {
                Ok(loaded) => loaded,
                Err(message) => {
                    tracing::error!("{message}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let data_path = config.knobs.data_path;
            let shards = match config.knobs.shards {
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
                Some(n) => n.get() as usize,
            };
            let backend = match backend {
                BackendArg::Auto => BackendChoice::Auto,
                BackendArg::IoUring => BackendChoice::IoUring,
                BackendArg::Epoll => BackendChoice::Epoll,
            };
            match supervisor::run(EngineSettings {
                config,
                shards,
                data_path,
                backend,
                source: ConfigSource {
                    path: config_path,
                    yaml,
                    overrides,
                },
                in_pod: in_pod_socket.map(|socket| origdst_runtime_uring::pods::InPodSettings {
                    socket,
                    pods_max,
                    rules_backend: pod_rules.backend(),
                }),
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => match load(Some(&config), &KnobOverrides::default()) {
            Ok((config, _)) => {
                println!(
                    "{}: valid ({} listeners, {} bound addresses, {} clusters)",
                    config_name(&config),
                    config.listeners.len(),
                    config.listen_addrs().count(),
                    config.clusters.len(),
                );
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("{message}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::DefaultConfig => {
            print!("{DEFAULT_YAML}");
            ExitCode::SUCCESS
        }
        Command::Demo {
            pods,
            bulk_bytes,
            mode,
        } => {
            match origdst_runtime_uring::demo::run(&origdst_runtime_uring::demo::DemoArgs {
                pods,
                bulk_bytes,
                mode: match mode {
                    DemoModeArg::Node => origdst_runtime_uring::demo::DemoMode::Node,
                    DemoModeArg::InPod => origdst_runtime_uring::demo::DemoMode::InPod,
                },
            }) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(message) => {
                    eprintln!("origdst demo: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Pod { action, socket } => match pod(&socket, action) {
            Ok(text) => {
                if !text.is_empty() {
                    println!("{text}");
                }
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("origdst pod: {message}");
                ExitCode::FAILURE
            }
        },
        Command::Iptables(args) => match interception::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("origdst iptables: {message}");
                ExitCode::FAILURE
            }
        },
    }
}

fn pod(socket: &std::path::Path, action: PodAction) -> Result<String, String> {
    use origdst_runtime_uring::pods::protocol::Client;
    let client = Client::connect(socket).map_err(|err| err.to_string())?;
    match action {
        PodAction::Add { name, netns } => {
            let file =
                std::fs::File::open(&netns).map_err(|err| format!("{}: {err}", netns.display()))?;
            client.add(&name, &file)
        }
        PodAction::Remove { name } => client.remove(&name),
        PodAction::List => client.list(),
    }
    .map_err(|err| err.to_string())
}

fn config_name(config: &Config) -> String {
    config.listeners.first().map_or_else(
        || "config".into(),
        |l| format!("config (first listener {:?})", l.name),
    )
}

/// The config (with command-line overrides applied and validated) and the YAML it came from.
fn load(path: Option<&PathBuf>, overrides: &KnobOverrides) -> Result<(Config, String), String> {
    let (text, name) = match path {
        None => (
            DEFAULT_YAML.to_string(),
            "embedded default config".to_string(),
        ),
        Some(path) => (
            supervisor::read_config_file(path)?,
            path.display().to_string(),
        ),
    };
    let config = Config::from_yaml_with(&text, overrides)
        .map_err(|err: ConfigError| format!("{name}: {err}"))?;
    Ok((config, text))
}

/// `--admin`: an address, or `off`.
#[derive(Clone, Copy)]
struct AdminArg(Option<std::net::SocketAddr>);

fn parse_admin(text: &str) -> Result<AdminArg, String> {
    if text == "off" {
        return Ok(AdminArg(None));
    }
    text.parse()
        .map(|addr| AdminArg(Some(addr)))
        .map_err(|_| format!("{text:?} is not an ip:port or `off`"))
}

fn init_logging(level: tracing::Level) {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Exit status for an invalid config (distinct from runtime failure, 1).
const EXIT_CONFIG: u8 = 2;
