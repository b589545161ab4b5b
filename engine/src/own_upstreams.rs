//! Loop detection without marks or sysctls: every upstream socket origdst opens is recorded by its
//! local port (with its source IP and destination); a redirected connection whose peer is one of
//! those sockets, going to the same destination, is origdst's own connection come back.
//!
//! One atomic per port, shared by all shards: a store on connect, a compare-and-clear on close, a
//! load on accept — no lock on the data path. Two live upstream sockets sharing a local port
//! (different destinations) overwrite each other's slot; the loser is then not recognised (a missed
//! loop).
//!
//! A connect and its record are not one step: the kernel completes a looped connection inside
//! `connect(2)` (the SYN goes through the rules and back to our listener in the same call), so
//! another shard can accept it before the connecting shard has learnt its local port and recorded
//! it. Measured in the netns loop test with two unpinned, polling shards: one attempt in four
//! looped twice. So a shard counts its connects in flight per destination (`begin_connect`,
//! dropped once the socket is recorded), and the accepting side, finding no record while a connect
//! to that destination is in flight, waits for it to settle (a bounded spin: the other shard is
//! between two syscalls) before it decides.
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
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Every shard's live upstream sockets by local port (one atomic each), and the connects in
/// flight by destination.
pub struct OwnUpstreams {
    ports: Box<[AtomicU64]>,
    connecting: Box<[AtomicU32]>,
}

/// Slots for connects in flight (destinations hashed into them; a collision only makes an
/// accepting shard wait for an unrelated connect to settle).
const CONNECTING_SLOTS: usize = 1024;
/// How long an accepting shard waits for a connect in flight to settle: a few rounds of spinning
/// (the other shard is between two syscalls), then rounds that yield the CPU (the other shard may
/// be waiting for this very CPU: shards are not pinned); past the last, it decides on what it sees.
const SETTLE_SPINS: u32 = 64;
const SETTLE_ROUNDS_MAX: u32 = 4096;

/// A connect in flight to one destination, until dropped (after its socket is recorded, or it
/// failed).
pub struct Connecting<'a> {
    slot: &'a AtomicU32,
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        let before = self.slot.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a connect ended that never began");
    }
}

impl OwnUpstreams {
    /// An empty registry (one slot per port).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self {
            ports: (0..=u16::MAX).map(|_| AtomicU64::new(0)).collect(),
            connecting: (0..CONNECTING_SLOTS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// A connect to `dst` begins: accepting shards that see no record wait for it to settle.
    pub fn begin_connect(&self, dst: SocketAddr) -> Connecting<'_> {
        let slot = &self.connecting[connecting_slot(dst)];
        slot.fetch_add(1, Ordering::AcqRel);
        Connecting { slot }
    }

    /// `contains`, once no connect to `dst` is in flight on another shard (or the wait ran out):
    /// the answer for a connection just accepted, which may be a connect still being recorded.
    pub fn contains_settled(&self, peer: SocketAddr, dst: SocketAddr) -> bool {
        let slot = &self.connecting[connecting_slot(dst)];
        let (port, key) = (usize::from(peer.port()), key(peer.ip(), dst));
        let recorded = || self.ports[port].load(Ordering::Acquire) == key;
        for round in 0..SETTLE_ROUNDS_MAX {
            if recorded() {
                return true;
            }
            if slot.load(Ordering::Acquire) == 0 {
                break;
            }
            if round < SETTLE_SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        recorded()
    }

    /// Records an upstream socket bound to `local` and connecting to `dst`; returns its key.
    pub fn insert(&self, local: SocketAddr, dst: SocketAddr) -> u64 {
        let key = key(local.ip(), dst);
        self.ports[usize::from(local.port())].store(key, Ordering::Release);
        key
    }

    /// Forgets the socket recorded under `port` with `key` (if nobody overwrote it since).
    pub fn remove(&self, port: u16, key: u64) {
        let _ = self.ports[usize::from(port)].compare_exchange(
            key,
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Sockets recorded and not forgotten (a scan of the table: for the end of a drain and tests).
    pub fn recorded(&self) -> usize {
        self.ports
            .iter()
            .filter(|k| k.load(Ordering::Acquire) != 0)
            .count()
    }

    /// Whether `peer` is one of our upstream sockets connecting to `dst`.
    pub fn contains(&self, peer: SocketAddr, dst: SocketAddr) -> bool {
        self.ports[usize::from(peer.port())].load(Ordering::Acquire) == key(peer.ip(), dst)
    }
}

fn connecting_slot(dst: SocketAddr) -> usize {
    // The same hash as the records' (with an unspecified source): stable across shards.
    (key(IpAddr::from([0u8; 4]), dst) as usize) % CONNECTING_SLOTS
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

    #[test]
    fn a_connect_in_flight_is_waited_for_and_the_wait_is_bounded() {
        let own = OwnUpstreams::new();
        let local: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let dst: SocketAddr = "192.0.2.7:80".parse().unwrap();
        assert!(!own.contains_settled(local, dst), "nothing in flight: no");
        let connecting = own.begin_connect(dst);
        // In flight and never recorded (its shard stalled): the wait ends, and the answer is no.
        assert!(!own.contains_settled(local, dst));
        own.insert(local, dst);
        assert!(own.contains_settled(local, dst), "recorded while in flight");
        drop(connecting);
        assert_eq!(
            own.connecting[connecting_slot(dst)].load(Ordering::Acquire),
            0,
            "the connect is over"
        );
        assert!(own.contains_settled(local, dst));
    }
}
