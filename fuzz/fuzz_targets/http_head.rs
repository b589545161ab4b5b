//! Any client bytes as a request head (use_http_header): a verdict, never a panic; a complete
//! head stays complete when more bytes follow it (the peek may see more than the head).
#![no_main]

use libfuzzer_sys::fuzz_target;
use origdst_core::http_head::{Head, parse};

fuzz_target!(|data: &[u8]| {
    let verdict = parse(data, "x-envoy-original-dst-host");
    if let Head::Complete(value) = &verdict {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"trailing body bytes");
        assert_eq!(&parse(&longer, "x-envoy-original-dst-host"), &Head::Complete(value.clone()));
        if let Some(value) = value {
            assert!(!value.contains('\r') && !value.contains('\n'));
        }
    }
});
