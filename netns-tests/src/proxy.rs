//! The real origdst binary as a child process inside a namespace.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::netns::Netns;

/// Path of the binary under test (runtime-uring's main.rs, built by this package). A macro
/// because cargo defines the variable only when compiling the integration tests.
#[macro_export]
macro_rules! origdst_bin {
    () => {
        env!("CARGO_BIN_EXE_origdst-under-test")
    };
}

/// A running origdst. Killed (SIGKILL) on drop if the test did not stop it.
pub struct Proxy {
    binary: String,
    child: Option<Child>,
    log: PathBuf,
}

/// What origdst left behind when it exited.
#[derive(Debug)]
pub struct ProxyExit {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it logged.
    pub log: String,
    /// The counters from its "final stats" line.
    pub stats: HashMap<String, u64>,
}

impl Proxy {
    /// Starts `<binary> run <args>` inside `ns` as root and waits for its start-up line.
    pub fn start(binary: &str, ns: &Netns, args: &[&str]) -> Self {
        Self::spawn(binary, ns, Wrapper::None, args)
    }

    /// Like `start`, with the descriptor limit (soft and hard) set to `nofile`, so origdst cannot
    /// raise it.
    pub fn start_with_nofile(binary: &str, ns: &Netns, nofile: u32, args: &[&str]) -> Self {
        Self::spawn(binary, ns, Wrapper::Nofile(nofile), args)
    }

    /// Like `start`, through `wrapper` (a program that takes the command to exec as arguments).
    pub fn start_wrapped(binary: &str, ns: &Netns, wrapper: &str, args: &[&str]) -> Self {
        Self::spawn(binary, ns, Wrapper::Program(wrapper.to_string()), args)
    }

    /// Like `start`, as an unprivileged `uid` (gid the same, no supplementary groups, no
    /// capabilities) — how a sidecar runs.
    pub fn start_as(binary: &str, ns: &Netns, uid: u32, args: &[&str]) -> Self {
        Self::spawn(binary, ns, Wrapper::User(uid), args)
    }

    /// Like `start_as`, keeping CAP_NET_ADMIN (as an ambient capability, as systemd's
    /// `AmbientCapabilities=` gives it): the least privilege for marks and transparent sockets.
    pub fn start_as_net_admin(binary: &str, ns: &Netns, uid: u32, args: &[&str]) -> Self {
        Self::spawn(binary, ns, Wrapper::NetAdmin(uid), args)
    }

    /// The argv that runs `binary` as `uid` with no capability at all, for a test that expects
    /// start-up to fail.
    pub fn unprivileged_command(binary: &str, ns: &Netns, uid: u32) -> std::process::Command {
        setpriv(ns, uid, &["--inh-caps=-all"], binary)
    }

    /// Like `start`, with the runtime's test-only fault injection on (BUGGIFY: short I/O,
    /// spurious EAGAIN, small pipes, reordered completions), seeded from the namespace's name.
    pub fn start_buggified(binary: &str, ns: &Netns, args: &[&str]) -> Self {
        let seed = ns
            .name()
            .bytes()
            .fold(17u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
        Self::spawn_env(binary, ns, Wrapper::None, args, Some(seed))
    }

    fn spawn(binary: &str, ns: &Netns, wrapper: Wrapper, args: &[&str]) -> Self {
        Self::spawn_env(binary, ns, wrapper, args, None)
    }

    fn spawn_env(
        binary: &str,
        ns: &Netns,
        wrapper: Wrapper,
        args: &[&str],
        buggify: Option<u64>,
    ) -> Self {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("{}-origdst-{n}.log", ns.name()));
        let file = fs::File::create(&log).expect("create proxy log");
        let mut command = match wrapper {
            Wrapper::None => ns.command(binary),
            Wrapper::User(uid) => Self::unprivileged_command(binary, ns, uid),
            Wrapper::NetAdmin(uid) => setpriv(
                ns,
                uid,
                &["--inh-caps=-all,+net_admin", "--ambient-caps=+net_admin"],
                binary,
            ),
            Wrapper::Nofile(limit) => {
                let mut command = ns.command("prlimit");
                command.arg(format!("--nofile={limit}:{limit}")).arg(binary);
                command
            }
            Wrapper::Program(wrapper) => {
                let mut command = ns.command(&wrapper);
                command.arg(binary);
                command
            }
        };
        if let Some(seed) = buggify {
            command.env("ORIGDST_BUGGIFY", seed.to_string());
        }
        let child = command
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let mut proxy = Self {
            binary: binary.to_string(),
            child: Some(child),
            log,
        };
        proxy.wait_for_log("started:", Duration::from_secs(20));
        if buggify.is_some() {
            assert!(
                proxy.log().contains("ORIGDST_BUGGIFY is set"),
                "the fault switch did not engage:\n{}",
                proxy.log()
            );
        }
        proxy
    }

    /// The process id (the same process after `ip netns exec` execs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log if the process exits or the
    /// time runs out.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.log().contains(needle) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited ({status}) before logging {needle:?}:\n{}",
                    self.binary,
                    self.log()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "origdst did not log {needle:?} within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `iou-wrk` kernel threads currently attached to the process.
    pub fn iou_worker_threads(&self) -> usize {
        let tasks = format!("/proc/{}/task", self.pid());
        fs::read_dir(&tasks)
            .unwrap_or_else(|e| panic!("{tasks}: {e}"))
            .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.starts_with("iou-wrk"))
            .count()
    }

    /// The process's real uid.
    pub fn uid(&self) -> u32 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("Uid in /proc/PID/status")
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Asks for the counters (SIGUSR1) and returns the line origdst logs in answer.
    pub fn live_stats(&mut self) -> String {
        let before = self.log().matches(" stats: ").count();
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGUSR1).expect("SIGUSR1 origdst");
        let start = Instant::now();
        while self.log().matches(" stats: ").count() == before
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.log()
            .lines()
            .rev()
            .find(|l| l.contains(" stats: "))
            .unwrap_or("no stats line")
            .to_string()
    }

    /// One counter from a fresh live stats line (SIGUSR1).
    pub fn live_stat(&mut self, name: &str) -> u64 {
        let line = self.live_stats();
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no counter {name:?} in {line}"))
    }

    /// Descriptors the process holds.
    pub fn open_fds(&self) -> usize {
        let dir = format!("/proc/{}/fd", self.pid());
        fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .count()
    }

    /// Descriptors the process holds, by kind (`socket`, `pipe`, `net` for a network namespace,
    /// `anon_inode:[eventfd]`, a file's path, ...), counted.
    pub fn fds_by_kind(&self) -> std::collections::BTreeMap<String, usize> {
        let dir = format!("/proc/{}/fd", self.pid());
        let mut kinds = std::collections::BTreeMap::new();
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
            let Ok(target) = entry.and_then(|e| fs::read_link(e.path())) else {
                continue;
            };
            let target = target.display().to_string();
            let kind = target
                .split_once(":[")
                .map_or(target.as_str(), |(kind, _)| kind)
                .to_string();
            *kinds.entry(kind).or_insert(0) += 1;
        }
        kinds
    }

    /// Stops origdst (SIGTERM) and asserts it exited 0, showing its log otherwise.
    pub fn stop_clean(self) -> ProxyExit {
        let exit = self.stop();
        assert!(
            exit.status.success(),
            "origdst exited with {}:\n{}",
            exit.status,
            exit.log
        );
        exit
    }

    /// Sends `signal` to origdst.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal origdst");
    }

    /// Sends SIGTERM (starts the drain) without waiting.
    pub fn signal_term(&self) {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM).expect("SIGTERM origdst");
    }

    /// SIGTERM, then waits for exit (drain) and parses the final counters.
    pub fn stop(self) -> ProxyExit {
        self.signal_term();
        self.wait_exit(STOP_TIMEOUT)
    }

    /// Waits for the process to exit by itself (after a signal) and parses the final counters.
    pub fn wait_exit(mut self, timeout: Duration) -> ProxyExit {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait origdst") {
                break status;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "origdst did not exit within {timeout:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = self.log();
        let stats = parse_stats(&log);
        ProxyExit { status, log, stats }
    }
}

/// `setpriv` to `uid` (gid the same, no supplementary groups) with `caps` flags, then `binary`.
fn setpriv(ns: &Netns, uid: u32, caps: &[&str], binary: &str) -> std::process::Command {
    let mut command = ns.command("setpriv");
    let id = uid.to_string();
    command.args(["--reuid", &id, "--regid", &id, "--clear-groups"]);
    command.args(caps).arg(binary);
    command
}

/// How the binary is started (each wrapper execs it, so the pid stays origdst's).
enum Wrapper {
    None,
    User(u32),
    NetAdmin(u32),
    Nofile(u32),
    Program(String),
}

impl ProxyExit {
    /// A counter from the final stats; panics (with the log) if it is missing.
    pub fn stat(&self, name: &str) -> u64 {
        *self
            .stats
            .get(name)
            .unwrap_or_else(|| panic!("no counter {name:?} in final stats:\n{}", self.log))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: show what origdst said, the last lines first to matter.
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_LINES).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "--- last {LOG_TAIL_LINES} lines of the origdst log ---\n{}",
                tail.join("\n")
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(&self.log);
    }
}

fn parse_stats(log: &str) -> HashMap<String, u64> {
    let Some(line) = log.lines().rev().find(|l| l.contains("final stats:")) else {
        return HashMap::new();
    };
    let tail = &line[line.find("final stats:").expect("found above") + "final stats:".len()..];
    tail.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

const STOP_TIMEOUT: Duration = Duration::from_secs(40);
const LOG_TAIL_LINES: usize = 40;
