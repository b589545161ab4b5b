//! Network namespaces the process works in besides its own: a pod's namespace is entered by one
//! thread, a socket (or a rule set) is made there, and the thread comes back. A socket keeps the
//! namespace it was made in, so a pod's listening sockets and upstream sockets live in the pod
//! while the shards that drive them live in the host.
//!
//! `setns(2)` moves only the calling thread, so the shard's own thread may enter a pod to make one
//! upstream socket and the other shards are not affected. Every entry is paired with a return
//! ([`enter`] returns a guard); failing to return is fatal to the thread's correctness, so it
//! aborts the process rather than let a shard go on in the wrong namespace.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, RwLock};

use nix::sched::{CloneFlags, setns};
use origdst_engine::listeners::NetnsId;

/// The namespaces pods' connections are made in, by the number the engine carries.
#[derive(Debug)]
pub(crate) struct NetnsRegistry {
    /// The process's own namespace (where every thread returns).
    home: OwnedFd,
    pods: RwLock<HashMap<NetnsId, Arc<OwnedFd>>>,
}

impl NetnsRegistry {
    /// A registry whose home is the calling thread's namespace now.
    pub(crate) fn new() -> io::Result<Self> {
        let home = std::fs::File::open("/proc/thread-self/ns/net")?;
        Ok(Self {
            home: home.into(),
            pods: RwLock::new(HashMap::new()),
        })
    }

    /// The process's own namespace.
    pub(crate) fn home(&self) -> &OwnedFd {
        &self.home
    }

    pub(crate) fn insert(&self, id: NetnsId, netns: Arc<OwnedFd>) {
        self.pods
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, netns);
    }

    pub(crate) fn remove(&self, id: NetnsId) {
        self.pods
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub(crate) fn get(&self, id: NetnsId) -> Option<Arc<OwnedFd>> {
        self.pods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Runs `f` with the calling thread in `netns`, then brings it home.
    pub(crate) fn run_in<T>(&self, netns: &OwnedFd, f: impl FnOnce() -> T) -> io::Result<T> {
        let _inside = self.enter(netns)?;
        Ok(f())
    }

    /// Runs `f` in the namespace the engine numbered `id` (an error if it is gone: the pod was
    /// removed).
    pub(crate) fn run_in_id<T>(&self, id: NetnsId, f: impl FnOnce() -> T) -> io::Result<T> {
        let netns = self.get(id).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the pod's namespace is gone")
        })?;
        self.run_in(&netns, f)
    }

    fn enter(&self, netns: &OwnedFd) -> io::Result<Inside<'_>> {
        setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        Ok(Inside { home: &self.home })
    }
}

/// The calling thread is in another namespace until this is dropped.
struct Inside<'a> {
    home: &'a OwnedFd,
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        if let Err(err) = setns(self.home.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A shard left in a pod's namespace would make every later socket there: wrong
            // routes, wrong capture, silently. Nothing can make that right.
            eprintln!("origdst: cannot return to the host network namespace: {err}");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_in_the_home_namespace_comes_back_to_it() {
        let registry = NetnsRegistry::new().expect("own namespace");
        let before = std::fs::read_link("/proc/thread-self/ns/net").expect("ns link");
        let home = std::fs::File::open("/proc/thread-self/ns/net").expect("open");
        let inside = registry
            .run_in(&OwnedFd::from(home), || {
                std::fs::read_link("/proc/thread-self/ns/net").expect("ns link")
            })
            .expect("setns into our own namespace");
        assert_eq!(inside, before);
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").expect("ns link"),
            before
        );
        assert!(registry.run_in_id(NetnsId(7), || ()).is_err());
    }
}
