//! The demo's node, built from network namespaces with `ip`: a node (where origdst runs, in the
//! host's place), pods behind a bridge on it, and a world beyond its uplink.
//!
//! ```text
//!   pod i                          node (origdst :15001, :15006)             world
//!   eth0 10.20.0.(10+i) ──veth── dp<i> ─ pods0 10.20.0.1 │ uplink 10.30.0.1 ──veth── w0 10.30.0.10
//! ```

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::thread::{self, JoinHandle};

use nix::sched::{CloneFlags, setns};

/// The pods' subnet, and the node's address on it (their gateway).
pub(crate) const POD_CIDR: &str = "10.20.0.0/24";
pub(crate) const NODE_POD_SIDE: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 1);
/// The node's uplink address: the source of origdst's connections to the world.
pub(crate) const NODE_UPLINK: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 1);
/// The world's servers.
pub(crate) const WORLD: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 10);

/// Pod `i`'s address.
pub(crate) fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 20, 0, 10 + i as u8)
}

/// A network namespace the demo made; deleted on drop.
pub(crate) struct Netns {
    pub(crate) name: String,
}

impl Netns {
    fn new(name: String) -> Result<Self, String> {
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> <args>`.
    pub(crate) fn ip(&self, args: &[&str]) -> Result<(), String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args)).map(drop)
    }

    /// A command run inside the namespace.
    pub(crate) fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `f` on a thread inside the namespace (sockets it makes live there).
    pub(crate) fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = match File::open(&path) {
                Ok(file) => file,
                // Ctrl-C removed the namespaces: the process is about to exit.
                Err(_) if super::interrupted() => loop {
                    thread::park();
                },
                Err(e) => panic!("open {path}: {e}"),
            };
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
    }

    /// Like `spawn`, waiting for the result.
    pub(crate) fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The demo's namespaces; dropped (deleted) together.
pub(crate) struct Topology {
    pub(crate) node: Netns,
    pub(crate) world: Netns,
    pub(crate) pods: Vec<Netns>,
}

impl Topology {
    /// Builds it; names start with `prefix`.
    pub(crate) fn build(prefix: &str, pods: usize) -> Result<Self, String> {
        let node = Netns::new(format!("{prefix}-node"))?;
        let world = Netns::new(format!("{prefix}-world"))?;
        veth(&world, "w0", &node, "uplink")?;
        node.ip(&["link", "add", "pods0", "type", "bridge"])?;
        node.ip(&["link", "set", "pods0", "up"])?;
        node.ip(&["addr", "add", "10.20.0.1/24", "dev", "pods0"])?;
        node.ip(&["addr", "add", "10.30.0.1/24", "dev", "uplink"])?;
        world.ip(&["addr", "add", "10.30.0.10/24", "dev", "w0"])?;
        world.ip(&["route", "add", POD_CIDR, "via", "10.30.0.1"])?;
        run(node
            .command("sysctl")
            .args(["-qw", "net.ipv4.ip_forward=1"]))?;
        let mut topology = Self {
            node,
            world,
            pods: Vec::new(),
        };
        for i in 0..pods {
            let pod = Netns::new(format!("{prefix}-pod{i}"))?;
            let host_side = format!("dp{i}");
            veth(&pod, "eth0", &topology.node, &host_side)?;
            topology
                .node
                .ip(&["link", "set", &host_side, "master", "pods0"])?;
            pod.ip(&["addr", "add", &format!("{}/24", pod_ip(i)), "dev", "eth0"])?;
            pod.ip(&["route", "add", "default", "via", "10.20.0.1"])?;
            topology.pods.push(pod);
        }
        Ok(topology)
    }
}

fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<(), String> {
    run(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]))?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])
}

/// Runs a command; the error says what it was and what it printed.
pub(crate) fn run(command: &mut Command) -> Result<Output, String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
