//! The connection state machine under arbitrary runtime reports: core's own assertions (no EOF
//! twice, no shutdown twice, one outcome) are the oracle, plus "nothing after Close".
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use origdst_core::addr::{ClientAddr, LocalAddr};
use origdst_core::config::ConnParams;
use origdst_core::connection::{Action, Connection};
use origdst_core::outcome::IoErrorKind;
use origdst_core::orig_dst::{AcceptEvidence, SelfAddrs, SockOptAnswer};
use origdst_core::relay::{Dir, HalfState, Side};
use origdst_core::stats::Counters;
use origdst_core::time::Instant;

#[derive(Debug, Arbitrary)]
enum Op {
    Connected,
    ConnectFailed,
    Transferred(bool, u16),
    Eof(bool),
    Error(bool),
    Tick(u16),
    Drain,
}

fuzz_target!(|ops: Vec<Op>| {
    let params = ConnParams { connect_timeout: Duration::from_secs(5), idle_timeout: Some(Duration::from_secs(60)), upstream_mark: None, original_src: None };
    let evidence = AcceptEvidence {
        client: ClientAddr::new("10.0.0.2:1".parse().unwrap()),
        local: LocalAddr::new("10.0.0.1:15001".parse().unwrap()),
        transparent: false,
        sockopt: SockOptAnswer::V4("192.0.2.7:80".parse().unwrap()),
        mark: None,
        internal: None,
        own_upstream: false,
        redirect_record: origdst_core::orig_dst::RecordAnswer::None,
    };
    let mut stats = Counters::default();
    let mut now = Instant::ZERO;
    let mut conn = Connection::accept(now, &evidence, &SelfAddrs::default(), &params, &mut stats);
    let mut closed = false;
    let mut connected = false;
    let dir = |b: bool| if b { Dir::ClientToUpstream } else { Dir::UpstreamToClient };
    let side = |b: bool| if b { Side::Client } else { Side::Upstream };
    for op in ops {
        while let Some(action) = conn.poll_action() {
            assert!(!closed, "action after Close");
            closed |= action == Action::Close;
        }
        if closed {
            return;
        }
        match op {
            Op::Connected if !connected => {
                connected = true;
                conn.handle_connected(now);
            }
            Op::ConnectFailed if !connected => conn.handle_connect_failed(now, IoErrorKind::Refused, &mut stats),
            Op::Transferred(d, n) if connected && conn.half_state(dir(d)) == HalfState::Open => {
                conn.handle_transferred(now, dir(d), u64::from(n), &mut stats)
            }
            Op::Eof(d) if connected && conn.half_state(dir(d)) == HalfState::Open => conn.handle_eof(now, dir(d), &mut stats),
            Op::Error(s) => conn.handle_error(now, side(s), IoErrorKind::Reset, &mut stats),
            Op::Tick(ms) => {
                now = now + Duration::from_millis(u64::from(ms));
                conn.handle_timeout(now, &mut stats);
            }
            Op::Drain => conn.abort_for_drain(now, &mut stats),
            _ => {}
        }
    }
});
