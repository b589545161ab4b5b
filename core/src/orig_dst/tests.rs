use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn evidence(sockopt: SockOptAnswer) -> AcceptEvidence {
    AcceptEvidence {
        client: ClientAddr::new(sa("10.0.0.2:40000")),
        local: LocalAddr::new(sa("10.0.0.1:15001")),
        transparent: false,
        sockopt,
        mark: None,
        internal: None,
        own_upstream: false,
        redirect_record: RecordAnswer::None,
    }
}

fn me() -> SelfAddrs {
    SelfAddrs {
        listeners: vec![
            ListenerAddr::new(sa("0.0.0.0:15001")),
            ListenerAddr::new(sa("[::]:15001")),
            ListenerAddr::new(sa("10.9.9.9:15006")),
        ],
        local_ips: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        own_mark: Some(1337),
        admin: None,
    }
}

#[test]
fn sockopt_v4_wins_with_provenance() {
    let got = resolve(&evidence(SockOptAnswer::V4(sa("192.0.2.7:80"))), &me()).unwrap();
    assert_eq!(got.orig_dst.get(), sa("192.0.2.7:80"));
    assert_eq!(got.provenance, Provenance::SockOptV4);
}

#[test]
fn sockopt_v6_is_canonicalised_when_v4_mapped() {
    let got = resolve(
        &evidence(SockOptAnswer::V6(sa("[::ffff:192.0.2.7]:80"))),
        &me(),
    )
    .unwrap();
    assert_eq!(got.orig_dst.get(), sa("192.0.2.7:80"));
    assert_eq!(got.provenance, Provenance::SockOptV6);
}

#[test]
fn enoent_means_not_redirected() {
    let err = resolve(&evidence(SockOptAnswer::NotFound), &me()).unwrap_err();
    assert_eq!(err, RefuseReason::NoOriginalDst);
}

#[test]
fn unrestored_local_address_means_not_redirected() {
    // conntrack without NAT answers with the connection's own destination: our listener.
    let err = resolve(&evidence(SockOptAnswer::V4(sa("10.0.0.1:15001"))), &me()).unwrap_err();
    assert_eq!(err, RefuseReason::NoOriginalDst);
}

#[test]
fn other_errno_is_reported() {
    let err = resolve(&evidence(SockOptAnswer::Failed { errno: 92 }), &me()).unwrap_err();
    assert_eq!(err, RefuseReason::QueryFailed { errno: 92 });
    assert_eq!(err.name(), "orig_dst_query_failed");
}

#[test]
fn destination_equal_to_a_listener_is_a_loop() {
    for dst in [
        "127.0.0.1:15001",
        "[::1]:15001",
        "[fd00::1]:15001",
        "10.9.9.9:15006",
    ] {
        let err = resolve(&evidence(SockOptAnswer::V4(sa(dst))), &me()).unwrap_err();
        assert_eq!(err, RefuseReason::DestinationIsListener, "{dst}");
    }
    // Same port on a foreign host is a real destination; so is a specific listener's port elsewhere.
    for dst in ["192.0.2.1:15001", "10.0.0.1:15006"] {
        assert!(
            resolve(&evidence(SockOptAnswer::V4(sa(dst))), &me()).is_ok(),
            "{dst}"
        );
    }
}

#[test]
fn own_mark_is_refused_before_anything_else() {
    let mut ev = evidence(SockOptAnswer::V4(sa("192.0.2.7:80")));
    ev.mark = Some(1337);
    assert_eq!(
        resolve(&ev, &me()).unwrap_err(),
        RefuseReason::OwnMark { mark: 1337 }
    );
    ev.mark = Some(7);
    assert!(resolve(&ev, &me()).is_ok());
    let mut unmarked = me();
    unmarked.own_mark = None;
    ev.mark = Some(1337);
    assert!(
        resolve(&ev, &unmarked).is_ok(),
        "no own mark configured: nothing to match"
    );
}

#[test]
fn transparent_uses_local_address() {
    let mut ev = evidence(SockOptAnswer::NotQueried);
    ev.transparent = true;
    ev.local = LocalAddr::new(sa("192.0.2.9:443"));
    let got = resolve(&ev, &me()).unwrap();
    assert_eq!(got.orig_dst.get(), sa("192.0.2.9:443"));
    assert_eq!(got.provenance, Provenance::TransparentLocal);
    // Dialling the TPROXY listener itself is still a loop.
    ev.local = LocalAddr::new(sa("10.0.0.1:15001"));
    assert_eq!(
        resolve(&ev, &me()).unwrap_err(),
        RefuseReason::DestinationIsListener
    );
}

#[test]
fn internal_metadata_beats_filter_state() {
    let mut ev = evidence(SockOptAnswer::NotQueried);
    ev.internal = Some(InternalMetadata {
        dynamic_local: Some("192.0.2.1:9000".into()),
        filter_state_local: Some("192.0.2.2:9000".into()),
        filter_state_remote: None,
        ..Default::default()
    });
    let got = resolve(&ev, &me()).unwrap();
    assert_eq!(got.orig_dst.get(), sa("192.0.2.1:9000"));
    assert_eq!(got.provenance, Provenance::InternalMetadata);

    ev.internal.as_mut().unwrap().dynamic_local = None;
    let got = resolve(&ev, &me()).unwrap();
    assert_eq!(got.orig_dst.get(), sa("192.0.2.2:9000"));
    assert_eq!(got.provenance, Provenance::InternalFilterState);

    ev.internal.as_mut().unwrap().filter_state_local = Some("not-an-address".into());
    assert_eq!(
        resolve(&ev, &me()).unwrap_err(),
        RefuseReason::InvalidMetadata
    );

    ev.internal.as_mut().unwrap().filter_state_local = None;
    assert_eq!(
        resolve(&ev, &me()).unwrap_err(),
        RefuseReason::NoOriginalDst
    );
}

#[test]
fn own_upstream_connection_is_a_loop() {
    let mut ev = evidence(SockOptAnswer::V4(sa("192.0.2.7:80")));
    ev.own_upstream = true;
    assert_eq!(resolve(&ev, &me()).unwrap_err(), RefuseReason::OwnUpstream);
    assert_eq!(RefuseReason::OwnUpstream.name(), "own_upstream");
}
