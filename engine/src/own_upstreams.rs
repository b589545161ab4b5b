//! Loop detection without marks or sysctls: every upstream socket origdst opens is recorded by its
//! local port (with its source IP and destination); a redirected connection whose peer is one of
//! those sockets, going to the same destination, is origdst's own connection come back.
//!
//! One atomic per port, shared by all shards: a store on connect, a compare-and-clear on close, a
//! load on accept — no lock on the data path. Two live upstream sockets sharing a local port
//! (different destinations) overwrite each other's slot; the loser is then not recognised (a missed
//! loop).
//!
//! A false refusal is possible, rarely: when the client shares the proxy's address (a sidecar) and
//! two of its connections to different destinations leave from the same source port, REDIRECT
//! gives one of them a new source port (both now go to the same `127.0.0.1:15001`), and that new
//! port can be one a live upstream socket of ours uses towards the same destination. The accepted
//! connection then looks exactly like our own come back. Measured in the benchmark's sidecar at
//! 20 000–35 000 new connections/s to four destinations: about 1 in 100 000 connections reset
//! (counted as `refused_own_upstream`). What would tell them apart (the connection's original
//! source port) only ctnetlink knows. Rules that exclude origdst's mark or uid make loops
//! impossible; with such rules `origdst.detect_own_upstream: false` turns this check off.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

/// Every shard's live upstream sockets by local port (one atomic each).
pub struct OwnUpstreams(Box<[AtomicU64]>);

impl OwnUpstreams {
    /// An empty registry (one slot per port).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self((0..=u16::MAX).map(|_| AtomicU64::new(0)).collect())
    }

    /// Records an upstream socket bound to `local` and connecting to `dst`; returns its key.
    pub fn insert(&self, local: SocketAddr, dst: SocketAddr) -> u64 {
        let key = key(local.ip(), dst);
        self.0[usize::from(local.port())].store(key, Ordering::Release);
        key
    }

    /// Forgets the socket recorded under `port` with `key` (if nobody overwrote it since).
    pub fn remove(&self, port: u16, key: u64) {
        let _ =
            self.0[usize::from(port)].compare_exchange(key, 0, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Sockets recorded and not forgotten (a scan of the table: for the end of a drain and tests).
    pub fn recorded(&self) -> usize {
        self.0
            .iter()
            .filter(|k| k.load(Ordering::Acquire) != 0)
            .count()
    }

    /// Whether `peer` is one of our upstream sockets connecting to `dst`.
    pub fn contains(&self, peer: SocketAddr, dst: SocketAddr) -> bool {
        self.0[usize::from(peer.port())].load(Ordering::Acquire) == key(peer.ip(), dst)
    }
}

/// A hash of source IP and destination (v4 as v4-mapped v6, so both families compare alike);
/// never 0 (0 marks an empty slot). std's SipHash with its fixed keys: the same in every shard.
fn key(source: IpAddr, dst: SocketAddr) -> u64 {
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut hasher = DefaultHasher::new();
    (v6(source), v6(dst.ip()), dst.port()).hash(&mut hasher);
    hasher.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_the_same_socket_and_destination() {
        let own = OwnUpstreams::new();
        let local: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let dst: SocketAddr = "192.0.2.7:80".parse().unwrap();
        let key = own.insert(local, dst);
        assert!(own.contains(local, dst));
        assert!(
            !own.contains(local, "192.0.2.7:81".parse().unwrap()),
            "another destination"
        );
        assert!(
            !own.contains("10.0.0.3:40000".parse().unwrap(), dst),
            "another source address"
        );
        assert!(
            !own.contains("10.0.0.2:40001".parse().unwrap(), dst),
            "another port"
        );
        own.remove(40000, key ^ 2);
        assert!(
            own.contains(local, dst),
            "a stale key does not clear a newer entry"
        );
        own.remove(40000, key);
        assert!(!own.contains(local, dst));
    }
}
