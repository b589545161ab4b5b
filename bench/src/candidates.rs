//! The proxies under test, started in the router namespace behind iptables REDIRECT: every origdst
//! backend, HAProxy with and without splice (the Debian package; `server s 0.0.0.0:0` forwards to
//! the original destination), socat (one fixed target per port), and `direct` (no proxy: the
//! router only forwards — the physical limit).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use origdst_netns_tests::netns::Netns;

/// How a candidate relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// No proxy.
    Direct,
    /// origdst with `--backend` and `--data-path`; `uid`: run unprivileged as that uid (no
    /// capabilities, `upstream_mark: null`, its pipes under the per-user pipe limit).
    Origdst {
        backend: &'static str,
        data_path: &'static str,
        uid: Option<u32>,
        /// Lines added to the default config's `origdst:` section (each indented two spaces and
        /// ending in a newline); empty: the default config.
        knobs: &'static str,
    },
    /// HAProxy, forced splice or none; `busy_poll`: its global `busy-polling` (never sleeps).
    Haproxy { splice: bool, busy_poll: bool },
    /// socat, one process per connection, a fixed target per capture port.
    Socat,
    /// The in-kernel anchor: a BPF sockmap relay (`src/sockmap.rs`).
    Sockmap,
}

/// Where the proxy sits, and so which chain captures the load's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topology {
    /// client ns → router ns (proxy, `PREROUTING -i rc … REDIRECT`) → server ns.
    Gateway,
    /// The client runs in the proxy's own namespace (a pod with a sidecar): `OUTPUT … REDIRECT`
    /// for connections to the server subnet, excluding the proxy's own by mark 1337 (origdst as
    /// root) or uid 1337 (HAProxy, socat and the unprivileged origdst run as that uid), Istio's
    /// conventions.
    Sidecar,
    /// A node proxy: [`crate::POD_COUNT`] pod namespaces behind a bridge on the router (the
    /// node), what they send captured where the node routes it (`PREROUTING -i pods0 …
    /// REDIRECT`, node mode's shape); the load spread over the pods.
    Node,
}

impl Topology {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Sidecar => "sidecar",
            Self::Node => "node",
        }
    }

    /// The prefix of this topology's metric keys ("" for the gateway: the headline numbers).
    pub(crate) const fn metric_prefix(self) -> &'static str {
        match self {
            Self::Gateway => "",
            Self::Sidecar => "sidecar_",
            Self::Node => "node_",
        }
    }

    /// The start of each capture rule.
    fn rule_head(self) -> &'static [&'static str] {
        match self {
            Self::Gateway => &["-t", "nat", "-A", "PREROUTING", "-i", "rc"],
            Self::Node => &["-t", "nat", "-A", "PREROUTING", "-i", crate::POD_BRIDGE],
            Self::Sidecar => &[
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-d",
                "10.11.2.0/24",
                "-m",
                "mark",
                "!",
                "--mark",
                "1337",
                "-m",
                "owner",
                "!",
                "--uid-owner",
                "1337",
            ],
        }
    }
}

/// The uid the sidecar topology's rules exclude (Istio's proxy uid).
const PROXY_UID: &str = "1337";

/// A named candidate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
}

/// Every candidate, in table order.
pub(crate) const ALL: &[Candidate] = &[
    Candidate {
        name: "direct",
        kind: Kind::Direct,
    },
    Candidate {
        name: "origdst-uring-splice",
        kind: Kind::Origdst {
            backend: "io-uring",
            data_path: "uring-splice",
            uid: None,
            knobs: "",
        },
    },
    Candidate {
        name: "origdst-uring-splice-nopoll",
        kind: Kind::Origdst {
            backend: "io-uring",
            data_path: "uring-splice",
            uid: None,
            knobs: "  busy_poll: 0s\n",
        },
    },
    Candidate {
        name: "origdst-uring-splice-pinned",
        kind: Kind::Origdst {
            backend: "io-uring",
            data_path: "uring-splice",
            uid: None,
            knobs: "  pin_shards: true\n",
        },
    },
    Candidate {
        name: "origdst-uring-copy",
        kind: Kind::Origdst {
            backend: "io-uring",
            data_path: "uring-copy",
            uid: None,
            knobs: "",
        },
    },
    Candidate {
        name: "origdst-uring-opsplice",
        kind: Kind::Origdst {
            backend: "io-uring",
            data_path: "uring-opsplice",
            uid: None,
            knobs: "",
        },
    },
    Candidate {
        name: "origdst-kernel-sockmap",
        kind: Kind::Origdst {
            backend: "io-uring",
            data_path: "kernel-sockmap",
            uid: None,
            knobs: "",
        },
    },
    Candidate {
        name: "origdst-epoll-splice",
        kind: Kind::Origdst {
            backend: "epoll",
            data_path: "uring-splice",
            uid: None,
            knobs: "",
        },
    },
    Candidate {
        name: "origdst-epoll-copy",
        kind: Kind::Origdst {
            backend: "epoll",
            data_path: "uring-copy",
            uid: None,
            knobs: "",
        },
    },
    Candidate {
        name: "origdst-uring-splice-uid1337",
        kind: Kind::Origdst {
            backend: "io-uring",
            data_path: "uring-splice",
            uid: Some(1337),
            knobs: "",
        },
    },
    Candidate {
        name: "haproxy-splice",
        kind: Kind::Haproxy {
            splice: true,
            busy_poll: false,
        },
    },
    Candidate {
        name: "haproxy-splice-busypoll",
        kind: Kind::Haproxy {
            splice: true,
            busy_poll: true,
        },
    },
    Candidate {
        name: "haproxy-nosplice",
        kind: Kind::Haproxy {
            splice: false,
            busy_poll: false,
        },
    },
    Candidate {
        name: "socat",
        kind: Kind::Socat,
    },
    Candidate {
        name: "kernel-sockmap",
        kind: Kind::Sockmap,
    },
];

/// Whether a candidate's program exists here (HAProxy and socat are optional).
pub(crate) fn available(candidate: &Candidate) -> bool {
    let program = match candidate.kind {
        Kind::Direct | Kind::Origdst { .. } => return true,
        Kind::Sockmap => return crate::sockmap::available(),
        Kind::Haproxy { .. } => "haproxy",
        Kind::Socat => "socat",
    };
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The capture port every proxy listens on (socat: one per server port, see `SOCAT_PORTS`).
pub(crate) const CAPTURE_PORT: u16 = 15001;

/// A running candidate; stopped (by PID, SIGTERM then wait) on drop.
pub(crate) struct Running {
    child: Option<Child>,
    socat: Vec<Child>,
    rules: Vec<Vec<String>>,
    router: String,
    topology: Topology,
    _config: Option<TempFile>,
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Running {
    /// Starts `candidate` in `router` with `threads` shards/threads; `server_ports` map to their
    /// targets (socat needs them, the others read the original destination).
    pub(crate) fn start(
        candidate: &Candidate,
        router: &Netns,
        origdst: &Path,
        threads: usize,
        targets: &[std::net::SocketAddr],
        topology: Topology,
    ) -> Result<Self, String> {
        let mut running = Self {
            child: None,
            socat: Vec::new(),
            rules: Vec::new(),
            router: router.name().to_string(),
            topology,
            _config: None,
        };
        match candidate.kind {
            Kind::Direct => return Ok(running),
            Kind::Origdst {
                backend,
                data_path,
                uid,
                knobs,
            } => {
                let binary = origdst.to_str().ok_or("origdst path is not UTF-8")?;
                // Confined as HAProxy and socat are: one thread on CPU 0, two on both CPUs.
                let mut command = router.command("taskset");
                command.args(["-c", cpus(threads)]);
                if let Some(uid) = uid {
                    // Istio's sidecar convention: uid 1337 without capabilities, so no SO_MARK
                    // (`upstream_mark: null`), its pipes under the per-user limit.
                    let id = uid.to_string();
                    command
                        .args(["setpriv", "--reuid", &id, "--regid", &id, "--clear-groups"])
                        .args(["--inh-caps=-all", "--bounding-set=-all"]);
                }
                command.arg(binary).arg("run");
                if uid.is_some() || !knobs.is_empty() {
                    let path = std::env::temp_dir()
                        .join(format!("bench-origdst-{}.yaml", std::process::id()));
                    let mut yaml = origdst_core::config::DEFAULT_YAML.to_string();
                    if uid.is_some() {
                        yaml = yaml.replacen("upstream_mark: 1337", "upstream_mark: null", 1);
                    }
                    yaml = yaml.replacen("origdst:\n", &format!("origdst:\n{knobs}"), 1);
                    assert!(
                        yaml != origdst_core::config::DEFAULT_YAML,
                        "config unchanged"
                    );
                    std::fs::write(&path, yaml).map_err(|e| format!("write config: {e}"))?;
                    command.arg("--config").arg(&path);
                    running._config = Some(TempFile(path));
                }
                let log = log_file(candidate, topology, threads)?;
                let child = command
                    .args(["--shards", &threads.to_string(), "--backend", backend])
                    .args(["--data-path", data_path, "--log-level", "info"])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .map_err(|e| format!("start origdst: {e}"))?;
                running.child = Some(child);
            }
            Kind::Haproxy { splice, busy_poll } => {
                let path =
                    std::env::temp_dir().join(format!("bench-haproxy-{}.cfg", std::process::id()));
                // One thread: on CPU 0, like origdst's single shard.
                let cpu_map = if threads == 1 {
                    "  cpu-map 1/1 0\n"
                } else {
                    ""
                };
                let splice = if splice {
                    "  option splice-request\n  option splice-response\n"
                } else {
                    ""
                };
                // As a sidecar it runs as the excluded uid (it binds first, then drops root).
                let busy_poll = if busy_poll { "  busy-polling\n" } else { "" };
                let user = match topology {
                    Topology::Gateway | Topology::Node => String::new(),
                    Topology::Sidecar => format!("  uid {PROXY_UID}\n  gid {PROXY_UID}\n"),
                };
                std::fs::write(
                    &path,
                    format!(
                        "global\n  nbthread {threads}\n{cpu_map}{user}{busy_poll}defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n{splice}frontend capture\n  bind 0.0.0.0:{CAPTURE_PORT}\n  default_backend original_destination\nbackend original_destination\n  server s 0.0.0.0:0\n"
                    ),
                )
                .map_err(|e| format!("write haproxy config: {e}"))?;
                let child = router
                    .command("haproxy")
                    .args(["-f", path.to_str().ok_or("temp path is not UTF-8")?, "-db"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("start haproxy: {e}"))?;
                running.child = Some(child);
                running._config = Some(TempFile(path));
            }
            Kind::Sockmap => {
                let object = sockmap_object()?;
                let me = std::env::current_exe().map_err(|e| e.to_string())?;
                let mut command = router.command("taskset");
                command
                    .args(["-c", cpus(threads)])
                    .arg(me)
                    .arg("--sockmap-relay")
                    .arg(format!("0.0.0.0:{CAPTURE_PORT}"))
                    .arg(object);
                let log = log_file(candidate, topology, threads)?;
                let child = command
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .map_err(|e| format!("start the sockmap relay: {e}"))?;
                running.child = Some(child);
            }
            Kind::Socat => {
                for (index, target) in targets.iter().enumerate() {
                    let port = CAPTURE_PORT + 100 + index as u16;
                    // socat forks per connection; with one "thread" it is confined to CPU 0. Its
                    // own process group, so stopping it stops the forked children too (they
                    // inherit the listening socket).
                    let mut command = router.command("taskset");
                    command.process_group(0).args(["-c", cpus(threads)]);
                    if topology == Topology::Sidecar {
                        // Its upstream connections must not be captured again.
                        command.args(["setpriv", "--reuid", PROXY_UID, "--regid", PROXY_UID]);
                        command.arg("--clear-groups");
                    }
                    let child = command
                        .arg("socat")
                        .arg(format!("TCP-LISTEN:{port},fork,reuseaddr,backlog=4096"))
                        .arg(format!("TCP:{target}"))
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .map_err(|e| format!("start socat: {e}"))?;
                    running.socat.push(child);
                    running.add_rule(&[
                        "-p",
                        "tcp",
                        "--dport",
                        &target.port().to_string(),
                        "-j",
                        "REDIRECT",
                        "--to-ports",
                        &port.to_string(),
                    ]);
                    wait_listening(&running.router, port)?;
                }
                return Ok(running);
            }
        }
        running.add_rule(&[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &CAPTURE_PORT.to_string(),
        ]);
        wait_listening(&running.router, CAPTURE_PORT)?;
        Ok(running)
    }

    fn add_rule(&mut self, tail: &[&str]) {
        let mut rule: Vec<String> = self
            .topology
            .rule_head()
            .iter()
            .map(|s| s.to_string())
            .collect();
        rule.extend(tail.iter().map(|s| s.to_string()));
        iptables(&self.router, &rule);
        self.rules.push(rule);
    }

    /// The proxy's PID (the first socat for socat; `None` for direct).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().or(self.socat.first()).map(Child::id)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for mut rule in self.rules.drain(..) {
            rule[2] = "-D".into();
            iptables(&self.router, &rule);
        }
        let groups = self.socat.len();
        for (index, mut child) in self.socat.drain(..).chain(self.child.take()).enumerate() {
            // socat: the whole process group (its per-connection children); others: the PID.
            let pid = child.id() as i32;
            let target = if index < groups { -pid } else { pid };
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(target),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(25);
            loop {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn iptables(router: &str, rule: &[String]) {
    let status = Command::new("ip")
        .args(["netns", "exec", router, "iptables"])
        .args(rule)
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "iptables {rule:?} failed"
    );
}

/// Waits (bounded) until something listens on `port` in the namespace.
fn wait_listening(router: &str, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                router,
                "ss",
                "-Hltn",
                &format!("sport = :{port}"),
            ])
            .output()
            .map_err(|e| format!("ss: {e}"))?;
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listens on port {port} after 10 s"))
}

/// The anchor's BPF object, compiled once per harness run.
fn sockmap_object() -> Result<PathBuf, String> {
    static OBJECT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    OBJECT.get_or_init(crate::sockmap::compile).clone()
}

/// Where a proxy of `threads` threads may run: one thread on CPU 0 (the load is on CPU 1), more
/// on both CPUs.
fn cpus(threads: usize) -> &'static str {
    if threads == 1 { "0" } else { "0-1" }
}

/// A candidate's log (warnings, and origdst's final counters at exit) for when a number needs
/// explaining; overwritten by the next start of the same candidate.
fn log_file(
    candidate: &Candidate,
    topology: Topology,
    threads: usize,
) -> Result<std::fs::File, String> {
    let path = std::env::temp_dir().join(format!(
        "bench-{}-{}-{threads}.log",
        candidate.name,
        topology.name()
    ));
    std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))
}
