//! Property tests: the resolver against a reference model of its precedence, the config validator
//! against its documented ranges, and the connection state machine under arbitrary (legal) event
//! sequences against its invariants.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use proptest::prelude::*;

use crate::addr::{ClientAddr, ListenerAddr, LocalAddr};
use crate::config::ConnParams;
use crate::config::{Config, ConfigError};
use crate::connection::{Action, Connection};
use crate::orig_dst::{
    AcceptEvidence, InternalMetadata, Provenance, RecordAnswer, RefuseReason, SelfAddrs,
    SockOptAnswer, resolve,
};
use crate::outcome::{IoErrorKind, Outcome};
use crate::relay::{Dir, HalfState, Side};
use crate::stats::{Counter, Counters};
use crate::time::Instant;

const LISTENER: &str = "10.0.0.1:15001";

fn me() -> SelfAddrs {
    SelfAddrs {
        listeners: vec![ListenerAddr::new(LISTENER.parse().unwrap())],
        local_ips: vec!["10.0.0.1".parse().unwrap()],
        own_mark: Some(1337),
        admin: None,
    }
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        Just("192.0.2.7:80".parse().unwrap()),
        Just("[2001:db8::7]:443".parse().unwrap()),
        Just("[::ffff:192.0.2.9]:8080".parse().unwrap()),
        Just(LISTENER.parse().unwrap()),
        Just("127.0.0.1:15001".parse().unwrap()),
        (any::<[u8; 4]>(), 1..u16::MAX)
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
    ]
}

fn text_addr() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        addr().prop_map(|a| Some(a.to_string())),
        Just(Some("not an address".to_string())),
        Just(Some(String::new())),
    ]
}

fn evidence() -> impl Strategy<Value = AcceptEvidence> {
    let sockopt = prop_oneof![
        addr().prop_map(SockOptAnswer::V4),
        addr().prop_map(SockOptAnswer::V6),
        Just(SockOptAnswer::NotFound),
        Just(SockOptAnswer::NotQueried),
        (1..200i32).prop_map(|errno| SockOptAnswer::Failed { errno }),
    ];
    let internal = prop_oneof![
        Just(None),
        (text_addr(), text_addr()).prop_map(|(dynamic_local, filter_state_local)| Some(
            InternalMetadata {
                dynamic_local,
                filter_state_local,
                filter_state_remote: None,
                ..Default::default()
            }
        )),
    ];
    let mark = prop_oneof![Just(None), Just(Some(1337u32)), any::<u32>().prop_map(Some)];
    let own_upstream = prop_oneof![9 => Just(false), 1 => Just(true)];
    (addr(), any::<bool>(), sockopt, mark, internal, own_upstream).prop_map(
        |(local, transparent, sockopt, mark, internal, own_upstream)| AcceptEvidence {
            client: ClientAddr::new("10.0.0.2:40000".parse().unwrap()),
            local: LocalAddr::new(local),
            transparent,
            sockopt,
            mark,
            internal,
            own_upstream,
            redirect_record: RecordAnswer::None,
        },
    )
}

/// The documented precedence, written independently of the implementation.
fn model(ev: &AcceptEvidence, me: &SelfAddrs) -> Result<(SocketAddr, Provenance), RefuseReason> {
    if let Some(mark) = ev.mark.filter(|&m| Some(m) == me.own_mark) {
        return Err(RefuseReason::OwnMark { mark });
    }
    if ev.own_upstream {
        return Err(RefuseReason::OwnUpstream);
    }
    let (dst, provenance) = if let Some(meta) = &ev.internal {
        let (text, provenance) = if let Some(text) = &meta.dynamic_local {
            (text, Provenance::InternalMetadata)
        } else if let Some(text) = &meta.filter_state_local {
            (text, Provenance::InternalFilterState)
        } else {
            return Err(RefuseReason::NoOriginalDst);
        };
        (
            text.parse::<SocketAddr>()
                .map_err(|_| RefuseReason::InvalidMetadata)?,
            provenance,
        )
    } else if ev.transparent {
        (ev.local.get(), Provenance::TransparentLocal)
    } else {
        match ev.sockopt {
            SockOptAnswer::V4(a)
                if a == ev.local.get() || crate::addr::canonical(a) == ev.local.get() =>
            {
                return Err(RefuseReason::NoOriginalDst);
            }
            SockOptAnswer::V6(a) if crate::addr::canonical(a) == ev.local.get() => {
                return Err(RefuseReason::NoOriginalDst);
            }
            SockOptAnswer::V4(a) => (a, Provenance::SockOptV4),
            SockOptAnswer::V6(a) => (a, Provenance::SockOptV6),
            SockOptAnswer::Failed { errno } => return Err(RefuseReason::QueryFailed { errno }),
            _ => return Err(RefuseReason::NoOriginalDst),
        }
    };
    let dst = crate::addr::canonical(dst);
    if me.is_listener(dst) {
        return Err(RefuseReason::DestinationIsListener);
    }
    Ok((dst, provenance))
}

proptest! {
    #[test]
    fn resolver_follows_the_documented_precedence(ev in evidence()) {
        let me = me();
        let got = resolve(&ev, &me).map(|r| (r.orig_dst.get(), r.provenance));
        prop_assert_eq!(got, model(&ev, &me));
    }

    #[test]
    fn config_never_panics_and_errors_name_a_field(text in "\\PC{0,200}") {
        if let Err(ConfigError { reason, .. }) = Config::from_yaml(&text) {
            prop_assert!(!reason.is_empty());
        }
    }

    #[test]
    fn knob_ranges_are_enforced(shards in 0u32..400, pipe in 0u32..(4 << 20), count in 0u32..70000) {
        let yaml = format!(
            "origdst: {{ shards: {shards}, pipe_size_bytes: {pipe}, buffer_count: {count} }}\n{}",
            crate::config::DEFAULT_YAML.split_once("static_resources:").map(|(_, rest)| format!("static_resources:{rest}")).unwrap()
        );
        let valid = shards <= 256
            && pipe.is_power_of_two() && (4096..=1 << 20).contains(&pipe)
            && count.is_power_of_two() && (1..=32768).contains(&count);
        let result = Config::from_yaml(&yaml);
        prop_assert_eq!(result.is_ok(), valid, "{:?}", result.err());
        if let Err(err) = result {
            prop_assert!(err.path.starts_with("origdst."), "{}", err);
        }
    }

    #[test]
    fn relay_invariants_hold_for_any_event_order(ops in proptest::collection::vec(op(), 0..40)) {
        check_ops(&ops);
    }
}

/// One thing a runtime may report.
#[derive(Debug, Clone)]
enum Op {
    Connected,
    ConnectFailed,
    Transferred(Dir, u16),
    Eof(Dir),
    Error(Side),
    Tick(u16),
    Drain,
}

fn op() -> impl Strategy<Value = Op> {
    let dir = prop_oneof![Just(Dir::ClientToUpstream), Just(Dir::UpstreamToClient)];
    let side = prop_oneof![Just(Side::Client), Just(Side::Upstream)];
    prop_oneof![
        Just(Op::Connected),
        Just(Op::ConnectFailed),
        (dir.clone(), any::<u16>()).prop_map(|(d, n)| Op::Transferred(d, n)),
        dir.prop_map(Op::Eof),
        side.prop_map(Op::Error),
        any::<u16>().prop_map(Op::Tick),
        Just(Op::Drain),
    ]
}

/// Applies the ops a real runtime could report at each point (others are skipped, as a runtime
/// never produces them), executing actions, and checks the invariants after every step.
fn check_ops(ops: &[Op]) {
    let params = ConnParams {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Some(Duration::from_secs(60)),
        upstream_mark: Some(1337),
        original_src: None,
        bind_source: crate::config::BindSource::default(),
    };
    let ev = AcceptEvidence {
        client: ClientAddr::new("10.0.0.2:1".parse().unwrap()),
        local: LocalAddr::new(LISTENER.parse().unwrap()),
        transparent: false,
        sockopt: SockOptAnswer::V4("192.0.2.7:80".parse().unwrap()),
        mark: None,
        internal: None,
        own_upstream: false,
        redirect_record: RecordAnswer::None,
    };
    let mut stats = Counters::default();
    let mut now = Instant::ZERO;
    let mut conn = Connection::accept(now, &ev, &me(), &params, &mut stats);
    let mut seen = Seen::default();
    let mut connected = false;
    let mut moved = [0u64; 2];
    seen.drain(&mut conn);
    for op in ops {
        if seen.closed {
            break;
        }
        match op {
            Op::Connected if !connected => {
                connected = true;
                conn.handle_connected(now);
            }
            Op::ConnectFailed if !connected => {
                conn.handle_connect_failed(now, IoErrorKind::Refused, &mut stats)
            }
            Op::Transferred(dir, n) if connected && conn.half_state(*dir) == HalfState::Open => {
                moved[dir.index()] += u64::from(*n);
                conn.handle_transferred(now, *dir, u64::from(*n), &mut stats);
            }
            Op::Eof(dir) if connected && conn.half_state(*dir) == HalfState::Open => {
                conn.handle_eof(now, *dir, &mut stats)
            }
            Op::Error(side) => conn.handle_error(now, *side, IoErrorKind::Reset, &mut stats),
            Op::Tick(ms) => {
                now = now + Duration::from_millis(u64::from(*ms) * 100);
                if conn.next_timeout().is_some_and(|t| t <= now) {
                    conn.handle_timeout(now, &mut stats);
                }
            }
            Op::Drain => conn.abort_for_drain(now, &mut stats),
            _ => continue,
        }
        seen.drain(&mut conn);
        let (closed, reset) = (seen.closed, seen.reset);
        // Exactly one outcome, recorded exactly once, and only together with Close.
        assert_eq!(conn.is_closed(), closed);
        assert_eq!(stats.get(Counter::DownstreamCxDestroy), u64::from(closed));
        assert_eq!(conn.bytes(Dir::ClientToUpstream), moved[0]);
        assert_eq!(conn.bytes(Dir::UpstreamToClient), moved[1]);
        assert_eq!(stats.get(Counter::DownstreamCxRxBytesTotal), moved[0]);
        assert_eq!(stats.get(Counter::DownstreamCxTxBytesTotal), moved[1]);
        if let Some(outcome) = conn.outcome() {
            // A failure always tells the other side with a reset; a completion never resets.
            match outcome {
                Outcome::Completed => assert_eq!(reset, [false, false]),
                Outcome::UpstreamFailed(_)
                | Outcome::ConnectFailed(_)
                | Outcome::ConnectTimeout => assert!(reset[0]),
                Outcome::ClientFailed(_) => assert!(reset[1] || !connected),
                Outcome::IdleTimeout => assert_eq!(reset, [true, true]),
                _ => {}
            }
            assert_eq!(conn.next_timeout(), None, "no timer after close");
        } else {
            assert!(
                conn.next_timeout().is_some(),
                "an open connection always has a timer (connect or idle)"
            );
        }
    }
}

/// What the runtime side of the property test has executed so far.
#[derive(Default)]
struct Seen {
    closed: bool,
    shut: [bool; 2],
    reset: [bool; 2],
}

impl Seen {
    fn drain(&mut self, conn: &mut Connection) {
        while let Some(action) = conn.poll_action() {
            assert!(!self.closed, "action {action:?} after Close");
            match action {
                Action::ShutdownWrite { side } => {
                    let i = side as usize;
                    assert!(!self.shut[i], "{side:?} shut twice");
                    assert!(!self.reset[i], "{side:?} shut after a reset");
                    self.shut[i] = true;
                }
                Action::Reset { side } => self.reset[side as usize] = true,
                Action::Close => self.closed = true,
                _ => {}
            }
        }
    }
}
