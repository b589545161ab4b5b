//! The model of the kernel's (and the platform's) redirect machinery, shared by every host of one
//! simulation. turmoil runs all hosts on one thread, so `Rc<RefCell<_>>` is sound here.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use origdst_core::addr::{ClientAddr, LocalAddr};
use origdst_core::orig_dst::{
    AcceptEvidence, InternalMetadata, RecordAnswer, RedirectRecord, SockOptAnswer,
};

/// What the modelled record query fails with (EIO).
const RECORD_QUERY_ERRNO: i32 = 5;
use turmoil::net::TcpStream;

/// How a client's connection reaches the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// NAT REDIRECT to the capture port; conntrack remembers the original destination.
    Redirect,
    /// REDIRECT, and the platform attaches this redirect record (Windows HNS/WFP style).
    RedirectWithRecord(Vec<u8>),
    /// REDIRECT, but the platform's redirect-record query fails for this connection.
    RedirectRecordQueryFails,
    /// TPROXY to the transparent listener: the accepted socket's local address is the destination.
    Tproxy,
    /// To the internal listener, carrying this metadata.
    Internal(InternalMetadata),
    /// Straight to the capture port, no rule matched: conntrack has no NAT entry. With `unrestored`,
    /// the query answers the socket's own address (conntrack loaded, nothing rewritten); without,
    /// it answers ENOENT.
    Direct {
        /// Which of the two kernel answers to give.
        unrestored: bool,
    },
    /// REDIRECT, but the conntrack entry is gone (expired, flushed) by the time the proxy asks.
    StaleConntrack,
}

/// Which kind of proxy listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// REDIRECT target (`SO_ORIGINAL_DST`).
    Redirect,
    /// TPROXY target (transparent).
    Transparent,
    /// Internal listener (metadata).
    Internal,
}

/// Rules on the proxy's own host, for its outbound connections (sidecar-style OUTPUT rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyHostRules {
    /// A REDIRECT rule captures the proxy's own outbound connections...
    pub redirect_outbound: bool,
    /// ...unless they carry this mark (Istio's `-m mark --mark 1337 -j RETURN`). `None`: the rule
    /// set forgot the exclusion.
    pub exclude_mark: Option<u32>,
    /// A Windows-style redirect policy re-redirects any proxy connection without its flow's record.
    pub require_records: bool,
}

impl ProxyHostRules {
    /// Whether these rules send a proxy connection carrying `mark` (and, if `record_live`, its
    /// flow's live redirect record) back to the proxy.
    pub fn redirects(self, mark: Option<u32>, record_live: bool) -> bool {
        let by_mark =
            self.redirect_outbound && (self.exclude_mark.is_none() || self.exclude_mark != mark);
        let by_record = self.require_records && !record_live;
        by_mark || by_record
    }
}

/// Ports on the proxy host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyPorts {
    /// REDIRECT capture listener.
    pub capture: u16,
    /// Transparent (TPROXY) listener.
    pub transparent: u16,
    /// Internal listener.
    pub internal: u16,
}

#[derive(Debug, Clone)]
struct CtEntry {
    orig_dst: SocketAddr,
    record: Option<Vec<u8>>,
    /// The record query fails (the platform's ioctl errors out).
    record_fails: bool,
    /// The SYN's mark, reflected on the accepted socket (as with `net.ipv4.tcp_fwmark_accept=1`).
    mark: Option<u32>,
}

#[derive(Debug, Default)]
struct State {
    proxy_ip: Option<IpAddr>,
    ports: Option<ProxyPorts>,
    rules: ProxyHostRules,
    conntrack: BTreeMap<SocketAddr, CtEntry>,
    metadata: BTreeMap<SocketAddr, InternalMetadata>,
    aborted: BTreeSet<(SocketAddr, SocketAddr)>,
    /// Wakes writers blocked on flow control when a reset is recorded (turmoil does not).
    aborts: Rc<tokio::sync::Notify>,
    /// Every original-destination answer given, per accepted peer: the oracle checks "exactly once".
    queries: BTreeMap<SocketAddr, u32>,
    /// Records handed out to client flows and still live.
    live_records: BTreeSet<Vec<u8>>,
    /// The proxy's own connections that were redirected back to it.
    self_redirects: u32,
    /// Upstream connects the proxy made, with the record it applied: (destination, record).
    upstream_connects: Vec<(SocketAddr, Option<Vec<u8>>)>,
}

/// Handle to the shared model.
#[derive(Debug, Clone, Default)]
pub struct SimNet(Rc<RefCell<State>>);

impl SimNet {
    /// A model for a proxy at `proxy_ip` with these ports and host rules.
    pub fn new(proxy_ip: IpAddr, ports: ProxyPorts, rules: ProxyHostRules) -> Self {
        let net = Self::default();
        {
            let mut state = net.0.borrow_mut();
            state.proxy_ip = Some(proxy_ip);
            state.ports = Some(ports);
            state.rules = rules;
        }
        net
    }

    fn proxy(&self, port: impl Fn(ProxyPorts) -> u16) -> SocketAddr {
        let state = self.0.borrow();
        let ports = state.ports.expect("model initialised");
        SocketAddr::new(state.proxy_ip.expect("model initialised"), port(ports))
    }

    /// A client dials `orig_dst`; the route says what the kernel does with it.
    pub async fn dial(&self, route: &Route, orig_dst: SocketAddr) -> io::Result<TcpStream> {
        let target = match route {
            Route::Tproxy => self.proxy(|p| p.transparent),
            Route::Internal(_) => self.proxy(|p| p.internal),
            _ => self.proxy(|p| p.capture),
        };
        let stream = TcpStream::connect(target).await?;
        let local = stream.local_addr()?;
        let mut state = self.0.borrow_mut();
        match route {
            Route::Redirect | Route::Tproxy => {
                state.conntrack.insert(
                    local,
                    CtEntry {
                        orig_dst,
                        record: None,
                        record_fails: false,
                        mark: None,
                    },
                );
            }
            Route::RedirectWithRecord(record) => {
                state.live_records.insert(record.clone());
                state.conntrack.insert(
                    local,
                    CtEntry {
                        orig_dst,
                        record: Some(record.clone()),
                        record_fails: false,
                        mark: None,
                    },
                );
            }
            Route::RedirectRecordQueryFails => {
                state.conntrack.insert(
                    local,
                    CtEntry {
                        orig_dst,
                        record: None,
                        record_fails: true,
                        mark: None,
                    },
                );
            }
            Route::Internal(metadata) => {
                state.metadata.insert(local, metadata.clone());
            }
            Route::Direct { unrestored: true } => {
                state.conntrack.insert(
                    local,
                    CtEntry {
                        orig_dst: target,
                        record: None,
                        record_fails: false,
                        mark: None,
                    },
                );
            }
            Route::Direct { unrestored: false } | Route::StaleConntrack => {}
        }
        Ok(stream)
    }

    /// What the proxy's accept adapter reads from an accepted socket — once. Waits (bounded,
    /// virtual time) for the dialer to register its conntrack entry, because turmoil completes a
    /// connect only inside `accept`.
    pub async fn accept_evidence(
        &self,
        kind: ListenerKind,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> AcceptEvidence {
        for _ in 0..EVIDENCE_WAIT_TICKS {
            let ready = {
                let state = self.0.borrow();
                match kind {
                    ListenerKind::Internal => state.metadata.contains_key(&peer),
                    _ => state.conntrack.contains_key(&peer),
                }
            };
            if ready {
                break;
            }
            tokio::time::sleep(EVIDENCE_WAIT_TICK).await;
        }
        let mut state = self.0.borrow_mut();
        *state.queries.entry(peer).or_default() += 1;
        let entry = state.conntrack.get(&peer).cloned();
        let mut evidence = AcceptEvidence {
            client: ClientAddr::new(peer),
            local: LocalAddr::new(local),
            transparent: false,
            sockopt: SockOptAnswer::NotQueried,
            mark: entry.as_ref().and_then(|e| e.mark),
            internal: None,
            own_upstream: false,
            redirect_record: match entry.as_ref() {
                Some(e) if e.record_fails => RecordAnswer::Failed {
                    errno: RECORD_QUERY_ERRNO,
                },
                Some(CtEntry {
                    record: Some(record),
                    ..
                }) => RecordAnswer::Record(RedirectRecord(record.clone())),
                _ => RecordAnswer::None,
            },
        };
        match kind {
            ListenerKind::Redirect => {
                evidence.sockopt = match entry {
                    Some(entry) if entry.orig_dst.is_ipv4() => SockOptAnswer::V4(entry.orig_dst),
                    Some(entry) => SockOptAnswer::V6(entry.orig_dst),
                    None => SockOptAnswer::NotFound,
                };
            }
            ListenerKind::Transparent => {
                evidence.transparent = true;
                if let Some(entry) = entry {
                    evidence.local = LocalAddr::new(entry.orig_dst);
                }
            }
            ListenerKind::Internal => {
                evidence.internal = Some(state.metadata.get(&peer).cloned().unwrap_or_default());
            }
        }
        evidence
    }

    /// The proxy connects upstream. The proxy host's rules may redirect the connection back to the
    /// proxy: when it lacks the excluded mark, or lacks a live redirect record under a record policy.
    pub async fn proxy_connect(
        &self,
        dst: SocketAddr,
        mark: Option<u32>,
        record: Option<&RedirectRecord>,
    ) -> io::Result<TcpStream> {
        let redirected = {
            let mut state = self.0.borrow_mut();
            state
                .upstream_connects
                .push((dst, record.map(|r| r.0.clone())));
            let live = record.is_some_and(|r| state.live_records.contains(&r.0));
            let redirected = state.rules.redirects(mark, live);
            if redirected {
                state.self_redirects += 1;
            }
            redirected
        };
        if !redirected {
            return TcpStream::connect(dst).await;
        }
        let capture = self.proxy(|p| p.capture);
        let stream = TcpStream::connect(capture).await?;
        let local = stream.local_addr()?;
        // The looped connection carries the proxy's mark, visible on the accepted socket.
        self.0.borrow_mut().conntrack.insert(
            local,
            CtEntry {
                orig_dst: dst,
                record: None,
                record_fails: false,
                mark,
            },
        );
        Ok(stream)
    }

    /// Records that the socket (`local`, `peer`) was closed with a reset.
    pub fn record_abort(&self, local: SocketAddr, peer: SocketAddr) {
        let mut state = self.0.borrow_mut();
        state.aborted.insert((local, peer));
        state.aborts.notify_waiters();
    }

    /// Notified whenever a reset is recorded.
    pub fn aborts(&self) -> Rc<tokio::sync::Notify> {
        Rc::clone(&self.0.borrow().aborts)
    }

    /// Whether the peer of the socket (`local`, `peer`) reset the connection.
    pub fn peer_aborted(&self, local: SocketAddr, peer: SocketAddr) -> bool {
        self.0.borrow().aborted.contains(&(peer, local))
    }

    /// Every original-destination query, per peer.
    pub fn all_queries(&self) -> Vec<(SocketAddr, u32)> {
        self.0
            .borrow()
            .queries
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// How many of the proxy's own connections were redirected back to it.
    pub fn self_redirects(&self) -> u32 {
        self.0.borrow().self_redirects
    }

    /// Upstream connects the proxy made: (destination, applied record).
    pub fn upstream_connects(&self) -> Vec<(SocketAddr, Option<Vec<u8>>)> {
        self.0.borrow().upstream_connects.clone()
    }
}

/// How long the accept adapter waits for a dialer's conntrack entry: generous against latency, so
/// only a real missing entry answers ENOENT.
const EVIDENCE_WAIT_TICKS: u32 = 200;
const EVIDENCE_WAIT_TICK: Duration = Duration::from_millis(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_redirect_only_what_they_should() {
        let istio = ProxyHostRules {
            redirect_outbound: true,
            exclude_mark: Some(1337),
            require_records: false,
        };
        assert!(
            !istio.redirects(Some(1337), false),
            "marked traffic bypasses the capture"
        );
        assert!(
            istio.redirects(None, false),
            "unmarked proxy traffic is captured again"
        );
        assert!(istio.redirects(Some(7), false));
        let forgot = ProxyHostRules {
            exclude_mark: None,
            ..istio
        };
        assert!(
            forgot.redirects(Some(1337), false),
            "a rule set without the exclusion loops"
        );
        let windows = ProxyHostRules {
            redirect_outbound: false,
            exclude_mark: None,
            require_records: true,
        };
        assert!(
            !windows.redirects(None, true),
            "a live record lets the connection out"
        );
        assert!(windows.redirects(None, false));
        assert!(
            !ProxyHostRules::default().redirects(None, false),
            "no rules, no redirect"
        );
    }

    #[test]
    fn a_reset_is_seen_by_the_peer_only() {
        let net = SimNet::default();
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.0.0.1:1000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        net.record_abort(a, b);
        assert!(net.peer_aborted(b, a), "b's peer (a) reset");
        assert!(
            !net.peer_aborted(a, b),
            "a did the reset; it does not see one"
        );
    }
}
