//! Address decoding: canonicalisation is idempotent and only ever strips the v4-mapped prefix;
//! internal-listener metadata strings resolve or are refused, never panic.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use origdst_core::addr::{ClientAddr, LocalAddr, OrigDstAddr, canonical};
use origdst_core::orig_dst::{AcceptEvidence, InternalMetadata, SelfAddrs, SockOptAnswer, resolve};

fuzz_target!(|input: ([u8; 16], u16, &str, &str)| {
    let (octets, port, dynamic, state) = input;
    let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port);
    let once = canonical(addr);
    assert_eq!(canonical(once), once);
    assert_eq!(once.port(), port);
    if once.is_ipv4() {
        assert!(Ipv6Addr::from(octets).to_ipv4_mapped().is_some());
    }
    assert_eq!(OrigDstAddr::new(addr).get(), once);
    let evidence = AcceptEvidence {
        client: ClientAddr::new(addr),
        local: LocalAddr::new(addr),
        transparent: false,
        sockopt: SockOptAnswer::NotQueried,
        mark: None,
        internal: Some(InternalMetadata {
            dynamic_local: Some(dynamic.to_string()),
            filter_state_local: Some(state.to_string()),
            filter_state_remote: None,
            ..InternalMetadata::default()
        }),
        own_upstream: false,
        redirect_record: origdst_core::orig_dst::RecordAnswer::None,
    };
    if let Ok(resolution) = resolve(&evidence, &SelfAddrs::default()) {
        assert_eq!(resolution.orig_dst.get(), canonical(dynamic.parse().expect("resolved from dynamic metadata")));
    }
});
