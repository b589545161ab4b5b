//! Connection state machine tests through a harness with virtual time. The harness plays the
//! runtime: it feeds events, drains actions into a log, and jumps time to `next_timeout`.

use std::net::SocketAddr;

use super::*;
use crate::addr::{ListenerAddr, LocalAddr};
use crate::config::{BindSource, DenyRule, DestinationPolicy, OriginalSrc};
use crate::orig_dst::{RecordAnswer, SockOptAnswer};
use crate::route::{ChainId, HeadPlan, Route, Target, UpstreamPlan};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const C2U: Dir = Dir::ClientToUpstream;
const U2C: Dir = Dir::UpstreamToClient;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn params() -> ConnParams {
    ConnParams {
        connect_timeout: CONNECT_TIMEOUT,
        idle_timeout: Some(IDLE_TIMEOUT),
        upstream_mark: Some(1337),
        original_src: None,
        bind_source: BindSource::default(),
    }
}

fn me() -> SelfAddrs {
    SelfAddrs {
        listeners: vec![ListenerAddr::new(sa("0.0.0.0:15001"))],
        local_ips: vec!["10.0.0.1".parse().unwrap()],
        own_mark: Some(1337),
        admin: Some(sa("127.0.0.1:15000")),
    }
}

fn evidence(dst: &str) -> AcceptEvidence {
    AcceptEvidence {
        client: ClientAddr::new(sa("10.0.0.2:40000")),
        local: LocalAddr::new(sa("10.0.0.1:15001")),
        transparent: false,
        sockopt: SockOptAnswer::V4(sa(dst)),
        mark: None,
        internal: None,
        own_upstream: false,
        redirect_record: RecordAnswer::None,
    }
}

struct Harness {
    now: Instant,
    conn: Connection,
    stats: Counters,
}

impl Harness {
    fn accept(evidence: &AcceptEvidence) -> Self {
        let mut stats = Counters::default();
        let now = Instant::from_nanos(1_000);
        let conn = Connection::accept(now, evidence, &me(), &params(), &mut stats);
        Self { now, conn, stats }
    }

    /// Accepted, connected, both directions transferring; the actions so far are checked.
    fn relaying() -> Self {
        let mut h = Self::accept(&evidence("192.0.2.7:80"));
        assert_eq!(
            h.actions(),
            vec![Action::Connect {
                upstream: UpstreamAddr::new(sa("192.0.2.7:80")),
                mark: Some(1337),
                source: None,
                record: None,
            }]
        );
        h.conn.handle_connected(h.now);
        assert_eq!(
            h.actions(),
            vec![Action::Transfer { dir: C2U }, Action::Transfer { dir: U2C }]
        );
        h
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.conn.poll_action()).collect()
    }

    fn advance(&mut self, by: Duration) {
        self.now = self.now + by;
        self.conn.handle_timeout(self.now, &mut self.stats);
    }

    /// Jumps to the next deadline, as a runtime's timer would.
    fn fire_next_timeout(&mut self) {
        let deadline = self.conn.next_timeout().expect("a timer is armed");
        assert!(deadline >= self.now);
        self.now = deadline;
        self.conn.handle_timeout(self.now, &mut self.stats);
    }

    fn send(&mut self, dir: Dir, n: u64) {
        self.conn
            .handle_transferred(self.now, dir, n, &mut self.stats);
    }

    fn eof(&mut self, dir: Dir) {
        self.conn.handle_eof(self.now, dir, &mut self.stats);
    }

    fn error(&mut self, side: Side, kind: IoErrorKind) {
        self.conn
            .handle_error(self.now, side, kind, &mut self.stats);
    }
}

#[test]
fn half_close_client_first_keeps_upstream_flowing() {
    let mut h = Harness::relaying();
    h.send(C2U, 100);
    h.eof(C2U);
    assert_eq!(
        h.actions(),
        vec![Action::ShutdownWrite {
            side: Side::Upstream
        }]
    );
    assert_eq!(h.conn.half_state(C2U), HalfState::WriteShut);
    assert!(!h.conn.is_closed(), "the other direction is still open");
    // The response keeps flowing after the client's FIN.
    h.send(U2C, 5_000);
    h.send(U2C, 7);
    h.eof(U2C);
    assert_eq!(
        h.actions(),
        vec![Action::ShutdownWrite { side: Side::Client }, Action::Close]
    );
    assert_eq!(h.conn.outcome(), Some(Outcome::Completed));
    assert_eq!(h.conn.bytes(C2U), 100);
    assert_eq!(h.conn.bytes(U2C), 5_007);
    assert_eq!(h.stats.get(Counter::HalfCloseFromClient), 1);
    assert_eq!(h.stats.get(Counter::Completed), 1);
    assert_eq!(h.stats.get(Counter::DownstreamCxRxBytesTotal), 100);
    assert_eq!(h.stats.get(Counter::DownstreamCxTxBytesTotal), 5_007);
    assert_eq!(h.stats.active(), 0);
    assert_eq!(h.conn.next_timeout(), None);
    assert_eq!(
        h.conn.history().to_string(),
        "accept(sockopt_v4) connected eof(client_to_upstream) eof(upstream_to_client) close(completed)"
    );
}

#[test]
fn half_close_upstream_first_keeps_client_flowing() {
    let mut h = Harness::relaying();
    h.send(U2C, 10);
    h.eof(U2C);
    assert_eq!(
        h.actions(),
        vec![Action::ShutdownWrite { side: Side::Client }]
    );
    h.send(C2U, 4096);
    assert!(!h.conn.is_closed());
    h.eof(C2U);
    assert_eq!(
        h.actions(),
        vec![
            Action::ShutdownWrite {
                side: Side::Upstream
            },
            Action::Close
        ]
    );
    assert_eq!(h.conn.outcome(), Some(Outcome::Completed));
    assert_eq!(h.stats.get(Counter::HalfCloseFromUpstream), 1);
}

#[test]
fn upstream_reset_mid_stream_resets_the_client() {
    let mut h = Harness::relaying();
    h.send(U2C, 1000);
    h.error(Side::Upstream, IoErrorKind::Reset);
    assert_eq!(
        h.actions(),
        vec![Action::Reset { side: Side::Client }, Action::Close]
    );
    assert_eq!(
        h.conn.outcome(),
        Some(Outcome::UpstreamFailed(IoErrorKind::Reset))
    );
    assert_eq!(h.stats.get(Counter::UpstreamCxReset), 1);
    assert_eq!(
        h.conn.history().to_string(),
        "accept(sockopt_v4) connected error(upstream) close(upstream_failed)"
    );
    // A late completion after the close changes nothing.
    h.error(Side::Client, IoErrorKind::BrokenPipe);
    assert_eq!(h.actions(), vec![]);
    assert_eq!(h.stats.get(Counter::DownstreamCxDestroy), 1);
}

#[test]
fn upstream_reset_after_client_half_close_still_resets_the_client() {
    // The client finished sending and waits for the reply: a reset must reach it as a reset,
    // never as the clean EOF it would otherwise take for a complete (truncated) reply.
    let mut h = Harness::relaying();
    h.eof(C2U);
    assert_eq!(
        h.actions(),
        vec![Action::ShutdownWrite {
            side: Side::Upstream
        }]
    );
    h.error(Side::Upstream, IoErrorKind::Reset);
    assert_eq!(
        h.actions(),
        vec![Action::Reset { side: Side::Client }, Action::Close]
    );
}

#[test]
fn client_reset_mid_upload_resets_the_upstream() {
    let mut h = Harness::relaying();
    h.send(C2U, 1 << 20);
    h.error(Side::Client, IoErrorKind::Reset);
    assert_eq!(
        h.actions(),
        vec![
            Action::Reset {
                side: Side::Upstream
            },
            Action::Close
        ]
    );
    assert_eq!(
        h.conn.outcome(),
        Some(Outcome::ClientFailed(IoErrorKind::Reset))
    );
    assert_eq!(h.stats.get(Counter::DownstreamCxReset), 1);
}

#[test]
fn client_reset_while_connecting_abandons_the_connect() {
    let mut h = Harness::accept(&evidence("192.0.2.7:80"));
    let _connect = h.actions();
    h.error(Side::Client, IoErrorKind::Reset);
    assert_eq!(
        h.actions(),
        vec![
            Action::Reset {
                side: Side::Upstream
            },
            Action::Close
        ]
    );
    assert_eq!(h.conn.next_timeout(), None, "no connect timer left behind");
}

#[test]
fn connect_refused_resets_the_client() {
    let mut h = Harness::accept(&evidence("192.0.2.7:80"));
    let _connect = h.actions();
    h.conn
        .handle_connect_failed(h.now, IoErrorKind::Refused, &mut h.stats);
    assert_eq!(
        h.actions(),
        vec![Action::Reset { side: Side::Client }, Action::Close]
    );
    assert_eq!(
        h.conn.outcome(),
        Some(Outcome::ConnectFailed(IoErrorKind::Refused))
    );
    assert_eq!(
        h.conn.outcome().and_then(Outcome::error),
        Some(IoErrorKind::Refused)
    );
    assert_eq!(h.stats.get(Counter::UpstreamCxConnectFail), 1);
}

#[test]
fn connect_timeout_resets_the_client_at_the_deadline() {
    let mut h = Harness::accept(&evidence("192.0.2.7:80"));
    let start = h.now;
    let _connect = h.actions();
    assert_eq!(h.conn.next_timeout(), Some(start + CONNECT_TIMEOUT));
    h.advance(CONNECT_TIMEOUT - Duration::from_nanos(1));
    assert_eq!(h.actions(), vec![], "one nanosecond early: nothing happens");
    h.fire_next_timeout();
    assert_eq!(h.now, start + CONNECT_TIMEOUT);
    assert_eq!(
        h.conn.age(h.now),
        CONNECT_TIMEOUT,
        "age counts from the accept"
    );
    assert_eq!(
        h.actions(),
        vec![Action::Reset { side: Side::Client }, Action::Close]
    );
    assert_eq!(h.conn.outcome(), Some(Outcome::ConnectTimeout));
    assert_eq!(h.stats.get(Counter::UpstreamCxConnectTimeout), 1);
}

#[test]
fn idle_timeout_resets_both_sides_and_traffic_postpones_it() {
    let mut h = Harness::relaying();
    let connected_at = h.now;
    assert_eq!(h.conn.next_timeout(), Some(connected_at + IDLE_TIMEOUT));
    h.advance(Duration::from_secs(50));
    h.send(C2U, 1);
    assert_eq!(
        h.conn.next_timeout(),
        Some(h.now + IDLE_TIMEOUT),
        "activity pushes it back"
    );
    h.advance(Duration::from_secs(59));
    assert_eq!(h.actions(), vec![]);
    h.fire_next_timeout();
    assert_eq!(
        h.actions(),
        vec![
            Action::Reset { side: Side::Client },
            Action::Reset {
                side: Side::Upstream
            },
            Action::Close
        ]
    );
    assert_eq!(h.conn.outcome(), Some(Outcome::IdleTimeout));
    assert_eq!(h.stats.get(Counter::IdleTimeout), 1);
}

#[test]
fn idle_timeout_covers_a_half_closed_connection() {
    // One direction finished, the other went silent: without the idle timer this is the
    // FIN_WAIT_2 / CLOSE_WAIT leak Envoy and ztunnel users hit.
    let mut h = Harness::relaying();
    h.eof(C2U);
    let _shutdown = h.actions();
    h.fire_next_timeout();
    assert_eq!(h.conn.outcome(), Some(Outcome::IdleTimeout));
}

#[test]
fn no_idle_timeout_means_no_timer() {
    let mut stats = Counters::default();
    let mut p = params();
    p.idle_timeout = None;
    let mut conn = Connection::accept(
        Instant::ZERO,
        &evidence("192.0.2.7:80"),
        &me(),
        &p,
        &mut stats,
    );
    conn.handle_connected(Instant::ZERO);
    assert_eq!(conn.next_timeout(), None);
}

#[test]
fn drain_abort_resets_what_is_open() {
    let mut h = Harness::relaying();
    h.conn.abort_for_drain(h.now, &mut h.stats);
    assert_eq!(
        h.actions(),
        vec![
            Action::Reset { side: Side::Client },
            Action::Reset {
                side: Side::Upstream
            },
            Action::Close
        ]
    );
    assert_eq!(h.stats.get(Counter::DrainAborted), 1);
}

#[test]
fn refused_connections_reset_the_client_and_count_their_reason() {
    let cases: [(AcceptEvidence, RefuseReason, Counter); 4] = [
        (
            AcceptEvidence {
                sockopt: SockOptAnswer::NotFound,
                ..evidence("192.0.2.7:80")
            },
            RefuseReason::NoOriginalDst,
            Counter::RefusedNoOriginalDst,
        ),
        (
            evidence("10.0.0.1:15001"),
            RefuseReason::NoOriginalDst,
            Counter::RefusedNoOriginalDst,
        ),
        (
            evidence("127.0.0.1:15001"),
            RefuseReason::DestinationIsListener,
            Counter::RefusedDestinationIsListener,
        ),
        (
            AcceptEvidence {
                mark: Some(1337),
                ..evidence("192.0.2.7:80")
            },
            RefuseReason::OwnMark { mark: 1337 },
            Counter::RefusedOwnMark,
        ),
    ];
    for (ev, reason, counter) in cases {
        let mut h = Harness::accept(&ev);
        assert_eq!(
            h.actions(),
            vec![Action::Reset { side: Side::Client }, Action::Close],
            "{reason:?}"
        );
        assert_eq!(h.conn.outcome(), Some(Outcome::Refused(reason)));
        assert_eq!(h.stats.get(counter), 1, "{reason:?}");
        assert_eq!(
            h.stats.get(Counter::UpstreamCxTotal),
            0,
            "no upstream attempt for {reason:?}"
        );
        assert_eq!(h.stats.active(), 0);
        assert_eq!(h.conn.next_timeout(), None);
    }
}

#[test]
fn overflow_is_counted_and_reset() {
    let mut stats = Counters::default();
    let mut conn =
        Connection::overflow(Instant::ZERO, ClientAddr::new(sa("10.0.0.2:1")), &mut stats);
    assert_eq!(
        conn.poll_action(),
        Some(Action::Reset { side: Side::Client })
    );
    assert_eq!(conn.poll_action(), Some(Action::Close));
    assert_eq!(conn.poll_action(), None);
    assert_eq!(stats.get(Counter::RefusedOverflow), 1);
    assert_eq!(stats.active(), 0);
}

#[test]
fn provenance_is_recorded_and_counted() {
    let h = Harness::accept(&evidence("192.0.2.7:80"));
    assert_eq!(h.conn.provenance(), Some(Provenance::SockOptV4));
    assert_eq!(h.conn.orig_dst().unwrap().get(), sa("192.0.2.7:80"));
    assert_eq!(h.stats.get(Counter::OrigDstSockOptV4), 1);
    assert_eq!(h.stats.get(Counter::UpstreamCxTotal), 1);
}

#[test]
#[should_panic(expected = "bytes moved on a finished direction")]
fn bytes_after_eof_are_a_bug() {
    let mut h = Harness::relaying();
    h.eof(C2U);
    h.send(C2U, 1);
}

#[test]
fn log_names_are_distinct_and_stable() {
    // Operators grep logs and alert on these: they are part of the interface.
    let kinds = [
        IoErrorKind::Refused,
        IoErrorKind::Reset,
        IoErrorKind::TimedOut,
        IoErrorKind::Unreachable,
        IoErrorKind::BrokenPipe,
        IoErrorKind::Other { errno: 5 },
    ];
    let names: Vec<_> = kinds.iter().map(|k| k.name()).collect();
    assert_eq!(
        names,
        [
            "refused",
            "reset",
            "timed_out",
            "unreachable",
            "broken_pipe",
            "other"
        ]
    );
    let outcomes = [
        Outcome::Completed,
        Outcome::Refused(RefuseReason::OwnMark { mark: 1 }),
        Outcome::ConnectFailed(IoErrorKind::Refused),
        Outcome::ConnectTimeout,
        Outcome::UpstreamFailed(IoErrorKind::Reset),
        Outcome::ClientFailed(IoErrorKind::Reset),
        Outcome::IdleTimeout,
        Outcome::DrainAborted,
        Outcome::Overflow,
    ];
    let names: Vec<_> = outcomes.iter().map(|o| o.name()).collect();
    assert_eq!(
        names,
        [
            "completed",
            "own_mark",
            "upstream_connect_failed",
            "upstream_connect_timeout",
            "upstream_failed",
            "client_failed",
            "idle_timeout",
            "drain_aborted",
            "overflow"
        ]
    );
    for outcome in outcomes {
        let has_error = matches!(
            outcome,
            Outcome::ConnectFailed(_) | Outcome::UpstreamFailed(_) | Outcome::ClientFailed(_)
        );
        assert_eq!(outcome.error().is_some(), has_error, "{outcome:?}");
    }
}

fn accept_with_original_src(dst: SockOptAnswer, bind_port: bool) -> (Vec<Action>, Counters) {
    let mut stats = Counters::default();
    let params = ConnParams {
        original_src: Some(OriginalSrc { bind_port }),
        ..params()
    };
    let mut ev = evidence("192.0.2.7:80");
    ev.sockopt = dst;
    let mut conn = Connection::accept(Instant::from_nanos(1), &ev, &me(), &params, &mut stats);
    (std::iter::from_fn(|| conn.poll_action()).collect(), stats)
}

#[test]
fn original_src_binds_the_client_ip_with_a_kernel_chosen_port_by_default() {
    let (actions, stats) = accept_with_original_src(SockOptAnswer::V4(sa("192.0.2.7:80")), false);
    let [Action::Connect { source, .. }] = actions.as_slice() else {
        panic!("expected one connect, got {actions:?}");
    };
    assert_eq!(
        *source,
        Some(Source {
            addr: sa("10.0.0.2:0"),
            transparent: true
        })
    );
    assert_eq!(stats.get(Counter::OriginalSrcBound), 1);
}

#[test]
fn original_src_bind_port_keeps_the_client_port() {
    let (actions, _) = accept_with_original_src(SockOptAnswer::V4(sa("192.0.2.7:80")), true);
    let [Action::Connect { source, .. }] = actions.as_slice() else {
        panic!("expected one connect, got {actions:?}");
    };
    assert_eq!(
        *source,
        Some(Source {
            addr: sa("10.0.0.2:40000"),
            transparent: true
        })
    );
}

#[test]
fn original_src_across_families_lets_the_kernel_choose_and_counts_it() {
    let (actions, stats) =
        accept_with_original_src(SockOptAnswer::V6(sa("[2001:db8::7]:80")), false);
    let [
        Action::Connect {
            source, upstream, ..
        },
    ] = actions.as_slice()
    else {
        panic!("expected one connect, got {actions:?}");
    };
    assert_eq!(upstream.get(), sa("[2001:db8::7]:80"));
    assert_eq!(*source, None);
    assert_eq!(stats.get(Counter::OriginalSrcFamilyMismatch), 1);
    assert_eq!(stats.get(Counter::OriginalSrcBound), 0);
}

fn head_route(fallback: Option<&str>, port_override: Option<u16>) -> Route {
    Route {
        listener: 0,
        chain: ChainId::Default,
        params: params(),
        max_connect_attempts: 1,
        resolution: None,
        upstream: UpstreamPlan::ReadHead(HeadPlan {
            header: "x-envoy-original-dst-host".into(),
            fallback: fallback.map(|a| OrigDstAddr::new(sa(a))),
            port_override,
            max_bytes: 64,
            timeout: Duration::from_secs(5),
        }),
    }
}

/// Header mode with room for a few headers.
fn roomy_head_route() -> Route {
    let mut route = head_route(None, None);
    if let UpstreamPlan::ReadHead(head) = &mut route.upstream {
        head.max_bytes = 1024;
    }
    route
}

fn start(route: Route) -> Harness {
    let mut stats = Counters::default();
    let now = Instant::from_nanos(1_000);
    let conn = Connection::start(now, &evidence("192.0.2.7:80"), Ok(route), &mut stats);
    Harness { now, conn, stats }
}

#[test]
fn header_mode_peeks_until_the_head_is_complete_then_connects_to_the_header() {
    let mut h = start(head_route(None, None));
    assert_eq!(h.actions(), vec![Action::PeekHead { have: 0, max: 64 }]);
    let head = b"GET / HTTP/1.1\r\nx-envoy-original-dst-host: 192.0.2.9:8080\r\n\r\n";
    h.conn.handle_peeked(
        h.now,
        &head[..20],
        false,
        &me(),
        &DestinationPolicy::default(),
        &mut h.stats,
    );
    assert_eq!(h.actions(), vec![Action::PeekHead { have: 20, max: 64 }]);
    h.conn.handle_peeked(
        h.now,
        &head[20..],
        false,
        &me(),
        &DestinationPolicy::default(),
        &mut h.stats,
    );
    assert_eq!(
        h.actions(),
        vec![Action::Connect {
            upstream: UpstreamAddr::new(sa("192.0.2.9:8080")),
            mark: Some(1337),
            source: None,
            record: None,
        }]
    );
    assert_eq!(h.stats.get(Counter::UpstreamCxTotal), 1);
}

#[test]
fn header_mode_without_the_header_uses_the_restored_destination_and_port_override() {
    let mut h = start(head_route(Some("192.0.2.7:80"), Some(8443)));
    let _ = h.actions();
    h.conn.handle_peeked(
        h.now,
        b"GET / HTTP/1.0\r\n\r\n",
        false,
        &me(),
        &DestinationPolicy::default(),
        &mut h.stats,
    );
    let actions = h.actions();
    let [Action::Connect { upstream, .. }] = actions.as_slice() else {
        panic!("expected a connect, got {actions:?}");
    };
    assert_eq!(upstream.get(), sa("192.0.2.7:8443"));
}

#[test]
fn header_mode_refusals_are_counted_and_reset_the_client() {
    let cases: [(&[u8], bool, RefuseReason, Counter); 4] = [
        (
            b"GET / HTTP/1.1\r\nx-envoy-original-dst-host: nowhere\r\n\r\n",
            false,
            RefuseReason::InvalidOriginalDstHost,
            Counter::OriginalDstHostInvalid,
        ),
        (
            b"GET / HTTP/1.1\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            false,
            RefuseReason::HttpHeadTooLarge,
            Counter::HttpHeadTooLarge,
        ),
        (
            b"GET / HTTP/1.1\r\n",
            true,
            RefuseReason::HttpHeadInvalid,
            Counter::HttpHeadInvalid,
        ),
        (
            b"\x16\x03\x01\x00",
            false,
            RefuseReason::HttpHeadInvalid,
            Counter::HttpHeadInvalid,
        ),
    ];
    for (bytes, ended, reason, counter) in cases {
        let mut h = start(head_route(None, None));
        let _ = h.actions();
        h.conn.handle_peeked(
            h.now,
            bytes,
            ended,
            &me(),
            &DestinationPolicy::default(),
            &mut h.stats,
        );
        assert_eq!(
            h.actions(),
            vec![Action::Reset { side: Side::Client }, Action::Close],
            "{reason:?}"
        );
        assert_eq!(h.conn.outcome(), Some(Outcome::Refused(reason)));
        assert_eq!(h.stats.get(counter), 1, "{reason:?}");
        assert_eq!(h.stats.get(Counter::UpstreamCxTotal), 0);
    }
    // A header naming our own listener is a loop.
    let mut h = start(head_route(None, None));
    let _ = h.actions();
    let head = b"GET / HTTP/1.1\r\nx-envoy-original-dst-host: 127.0.0.1:15001\r\n\r\n";
    h.conn.handle_peeked(
        h.now,
        head,
        false,
        &me(),
        &DestinationPolicy::default(),
        &mut h.stats,
    );
    assert_eq!(
        h.conn.outcome(),
        Some(Outcome::Refused(RefuseReason::DestinationIsListener))
    );
}

#[test]
fn header_destinations_pass_the_destination_policy() {
    // The admin endpoint in any spelling, the cloud metadata service, loopback, a repeated
    // header (whichever copy is dangerous): refused with their own reasons and counters.
    let cases: [(&str, RefuseReason, Counter); 6] = [
        (
            "x-envoy-original-dst-host: 127.0.0.1:15000\r\n",
            RefuseReason::DestinationDenied {
                rule: DenyRule::OwnAddress,
            },
            Counter::RefusedDestinationDenied,
        ),
        (
            "x-envoy-original-dst-host: [::ffff:127.0.0.1]:15000\r\n",
            RefuseReason::DestinationDenied {
                rule: DenyRule::OwnAddress,
            },
            Counter::RefusedDestinationDenied,
        ),
        (
            "x-envoy-original-dst-host: 127.0.0.1:8080\r\n",
            RefuseReason::DestinationDenied {
                rule: DenyRule::Loopback,
            },
            Counter::RefusedDestinationDenied,
        ),
        (
            "x-envoy-original-dst-host: 169.254.169.254:80\r\n",
            RefuseReason::DestinationDenied {
                rule: DenyRule::LinkLocal,
            },
            Counter::RefusedDestinationDenied,
        ),
        (
            "x-envoy-original-dst-host: 127.0.0.1:15000\r\nx-envoy-original-dst-host: 192.0.2.9:80\r\n",
            RefuseReason::DuplicateOriginalDstHost,
            Counter::OriginalDstHostDuplicate,
        ),
        (
            "x-envoy-original-dst-host: 192.0.2.9:80\r\nX-Envoy-Original-Dst-Host: 127.0.0.1:15000\r\n",
            RefuseReason::DuplicateOriginalDstHost,
            Counter::OriginalDstHostDuplicate,
        ),
    ];
    for (header, reason, counter) in cases {
        let mut h = start(roomy_head_route());
        let _ = h.actions();
        let head = format!("GET / HTTP/1.1\r\n{header}\r\n");
        h.conn.handle_peeked(
            h.now,
            head.as_bytes(),
            false,
            &me(),
            &DestinationPolicy::default(),
            &mut h.stats,
        );
        assert_eq!(h.conn.outcome(), Some(Outcome::Refused(reason)), "{header}");
        assert_eq!(h.stats.get(counter), 1, "{header}");
        assert_eq!(h.stats.get(Counter::UpstreamCxTotal), 0);
    }
    // Loopback explicitly allowed: a loopback service is reachable, the admin endpoint still not.
    let allow = DestinationPolicy {
        allow_loopback: true,
        ..DestinationPolicy::default()
    };
    for (dst, connects) in [("127.0.0.1:8080", true), ("127.0.0.1:15000", false)] {
        let mut h = start(roomy_head_route());
        let _ = h.actions();
        let head = format!("GET / HTTP/1.1\r\nx-envoy-original-dst-host: {dst}\r\n\r\n");
        h.conn
            .handle_peeked(h.now, head.as_bytes(), false, &me(), &allow, &mut h.stats);
        assert_eq!(h.conn.is_closed(), !connects, "{dst}");
    }
}

#[test]
fn a_head_in_one_byte_pieces_decides_like_a_whole_one() {
    let mut h = start(roomy_head_route());
    let _ = h.actions();
    let head = b"GET / HTTP/1.1\r\nx-envoy-original-dst-host: 192.0.2.9:8080\r\n\r\n";
    for (i, byte) in head.iter().enumerate() {
        assert!(!h.conn.is_closed());
        h.conn.handle_peeked(
            h.now,
            std::slice::from_ref(byte),
            false,
            &me(),
            &DestinationPolicy::default(),
            &mut h.stats,
        );
        let actions = h.actions();
        if i + 1 < head.len() {
            assert_eq!(
                actions,
                vec![Action::PeekHead {
                    have: i as u32 + 1,
                    max: 1024
                }],
                "byte {i}"
            );
        } else {
            assert!(
                matches!(actions.as_slice(), [Action::Connect { .. }]),
                "{actions:?}"
            );
        }
    }
}

#[test]
fn a_slow_head_is_refused_at_its_deadline() {
    let mut h = start(head_route(None, None));
    let _ = h.actions();
    assert_eq!(h.conn.next_timeout(), Some(h.now + Duration::from_secs(5)));
    h.advance(Duration::from_secs(5));
    assert_eq!(
        h.conn.outcome(),
        Some(Outcome::Refused(RefuseReason::HttpHeadTimeout))
    );
    assert_eq!(h.stats.get(Counter::HttpHeadTimeout), 1);
}

#[test]
fn connect_attempts_retry_failures_and_timeouts_then_give_up() {
    let mut route = head_route(None, None);
    route.upstream = UpstreamPlan::Connect(Target::Socket(UpstreamAddr::new(sa("192.0.2.7:80"))));
    route.max_connect_attempts = 3;
    let mut h = start(route);
    let connect = h.actions();
    assert!(matches!(connect.as_slice(), [Action::Connect { .. }]));
    h.conn
        .handle_connect_failed(h.now, IoErrorKind::Refused, &mut h.stats);
    assert_eq!(h.actions(), connect, "second attempt to the same upstream");
    h.advance(CONNECT_TIMEOUT);
    assert_eq!(h.actions(), connect, "a timed-out attempt is retried too");
    h.conn
        .handle_connect_failed(h.now, IoErrorKind::Refused, &mut h.stats);
    assert_eq!(
        h.actions(),
        vec![Action::Reset { side: Side::Client }, Action::Close]
    );
    assert_eq!(
        h.conn.outcome(),
        Some(Outcome::ConnectFailed(IoErrorKind::Refused))
    );
    assert_eq!(
        h.stats.get(Counter::UpstreamCxTotal),
        1,
        "one upstream connection, three attempts"
    );
    assert_eq!(h.stats.get(Counter::UpstreamCxConnectRetry), 2);
    assert_eq!(h.stats.get(Counter::UpstreamCxConnectAttemptsExceeded), 1);
}

#[test]
fn a_retry_that_connects_relays_normally() {
    let mut route = head_route(None, None);
    route.upstream = UpstreamPlan::Connect(Target::Socket(UpstreamAddr::new(sa("192.0.2.7:80"))));
    route.max_connect_attempts = 2;
    let mut h = start(route);
    let _ = h.actions();
    h.conn
        .handle_connect_failed(h.now, IoErrorKind::Refused, &mut h.stats);
    let _ = h.actions();
    h.conn.handle_connected(h.now);
    assert_eq!(
        h.actions(),
        vec![Action::Transfer { dir: C2U }, Action::Transfer { dir: U2C }]
    );
    assert_eq!(h.stats.get(Counter::UpstreamCxConnectAttemptsExceeded), 0);
}

#[test]
fn a_failed_record_query_is_refused_and_a_record_is_applied() {
    let mut stats = Counters::default();
    let mut ev = evidence("192.0.2.7:80");
    ev.redirect_record = RecordAnswer::Failed { errno: 5 };
    let mut conn = Connection::accept(Instant::from_nanos(1), &ev, &me(), &params(), &mut stats);
    assert_eq!(
        conn.outcome(),
        Some(Outcome::Refused(RefuseReason::RecordQueryFailed {
            errno: 5
        }))
    );
    assert_eq!(stats.get(Counter::RefusedRecordQueryFailed), 1);
    assert_eq!(
        conn.poll_action(),
        Some(Action::Reset { side: Side::Client })
    );

    let record = RedirectRecord(vec![1, 2, 3]);
    ev.redirect_record = RecordAnswer::Record(record.clone());
    let mut conn = Connection::accept(Instant::from_nanos(1), &ev, &me(), &params(), &mut stats);
    let Some(Action::Connect {
        record: applied, ..
    }) = conn.poll_action()
    else {
        panic!("expected a connect");
    };
    assert_eq!(applied, Some(record));
}

#[test]
fn an_error_that_is_not_the_sockets_own_resets_that_side_too() {
    const ENOSPC: i32 = 28;
    // A poll the kernel refused (ENOSPC) says nothing about the client's socket, which is still
    // healthy: closing it without a reset would hand the client a clean EOF.
    let mut h = Harness::relaying();
    h.send(U2C, 1000);
    h.error(Side::Client, IoErrorKind::Other { errno: ENOSPC });
    assert_eq!(
        h.actions(),
        vec![
            Action::Reset {
                side: Side::Upstream
            },
            Action::Reset { side: Side::Client },
            Action::Close
        ]
    );
    assert_eq!(
        h.conn.outcome(),
        Some(Outcome::ClientFailed(IoErrorKind::Other { errno: ENOSPC }))
    );
}

/// A cluster's `upstream_bind_config` (Istio's InboundPassthroughCluster): the host's own
/// address per family, no IP_TRANSPARENT; `original_src` wins over it.
#[test]
fn a_clusters_bind_address_is_the_source_per_family_and_original_src_wins() {
    let bind = BindSource {
        v4: Some("127.0.0.6".parse().unwrap()),
        v6: None,
    };
    let connect_source = |params: &ConnParams, dst: SockOptAnswer| {
        let mut stats = Counters::default();
        let mut ev = evidence("192.0.2.7:80");
        ev.sockopt = dst;
        let mut conn = Connection::accept(Instant::from_nanos(1), &ev, &me(), params, &mut stats);
        let actions: Vec<Action> = std::iter::from_fn(|| conn.poll_action()).collect();
        match actions.as_slice() {
            [Action::Connect { source, .. }] => *source,
            other => panic!("expected one connect, got {other:?}"),
        }
    };
    let params = ConnParams {
        bind_source: bind,
        ..params()
    };
    assert_eq!(
        connect_source(&params, SockOptAnswer::V4(sa("192.0.2.7:80"))),
        Some(Source {
            addr: sa("127.0.0.6:0"),
            transparent: false
        })
    );
    // No IPv6 address configured: an IPv6 upstream gets the kernel's choice.
    assert_eq!(
        connect_source(&params, SockOptAnswer::V6(sa("[2001:db8::7]:80"))),
        None
    );
    let both = ConnParams {
        original_src: Some(OriginalSrc { bind_port: false }),
        ..params
    };
    assert_eq!(
        connect_source(&both, SockOptAnswer::V4(sa("192.0.2.7:80"))),
        Some(Source {
            addr: sa("10.0.0.2:0"),
            transparent: true
        })
    );
}
