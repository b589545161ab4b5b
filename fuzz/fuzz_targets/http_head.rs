//! Any client bytes as a request head (use_http_header): a verdict, never a panic; a complete
//! head stays complete when more bytes follow it (the peek may see more than the head); a head
//! that arrives in pieces (the first byte picks their size) ends with the verdict of the whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use origdst_core::http_head::{Head, HeadBuffer, parse};

const HEADER: &str = "x-envoy-original-dst-host";

fuzz_target!(|data: &[u8]| {
    let verdict = parse(data, HEADER);
    if let Head::Complete(value) = &verdict {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"trailing body bytes");
        assert_eq!(&parse(&longer, HEADER), &Head::Complete(value.clone()));
        if let Some(value) = value {
            assert!(!value.contains('\r') && !value.contains('\n'));
        }
    }
    let size = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut buffer = HeadBuffer::default();
    let mut last = Head::Partial;
    for piece in data.chunks(size) {
        last = buffer.push(piece, 1 << 20, HEADER, false);
        if last != Head::Partial {
            break;
        }
    }
    if last == Head::Partial {
        last = buffer.push(&[], 1 << 20, HEADER, true);
    }
    // A decision taken on a prefix is the decision of that prefix; once everything is in, the
    // buffer says what the whole says.
    if buffer.len() == data.len() {
        assert_eq!(last, verdict);
    } else {
        assert_eq!(last, parse(&data[..buffer.len()], HEADER));
    }
});
