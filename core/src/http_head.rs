//! The HTTP/1 request head, for ORIGINAL_DST's `use_http_header`: find one header's value in a
//! bounded prefix of the client's bytes, without consuming them (the runtime peeks; the request is
//! forwarded unchanged). Parsing is httparse's; the bounds are ours.

/// What a prefix of the client's stream says so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// The head is complete; the header's first value, if present.
    Complete(Option<String>),
    /// More bytes are needed.
    Partial,
    /// Not an HTTP/1 request head (or more headers than origdst reads).
    Invalid,
}

/// Parses `bytes` as the start of an HTTP/1 request and looks for `header` (lower-case).
pub fn parse(bytes: &[u8], header: &str) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => Head::Complete(
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(header))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_string()),
        ),
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Invalid,
    }
}

/// Headers read per request; a head with more is refused (as most servers do past ~100).
pub const HEADERS_MAX: usize = 96;

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "x-envoy-original-dst-host";

    #[test]
    fn finds_the_header_case_insensitively_first_value_wins() {
        let head = b"GET /status/418 HTTP/1.1\r\nHost: a\r\nX-Envoy-Original-Dst-Host: 10.0.0.1:80 \r\nx-envoy-original-dst-host: 10.0.0.2:80\r\n\r\nbody";
        assert_eq!(
            parse(head, HEADER),
            Head::Complete(Some("10.0.0.1:80".into()))
        );
    }

    #[test]
    fn absent_header_is_complete_without_a_value() {
        assert_eq!(
            parse(b"GET / HTTP/1.0\r\n\r\n", HEADER),
            Head::Complete(None)
        );
    }

    #[test]
    fn every_prefix_of_a_head_is_partial() {
        let head = b"POST /x HTTP/1.1\r\nx-envoy-original-dst-host: [fd00::1]:8080\r\n\r\n";
        for end in 0..head.len() {
            assert_eq!(parse(&head[..end], HEADER), Head::Partial, "prefix {end}");
        }
        assert_eq!(
            parse(head, HEADER),
            Head::Complete(Some("[fd00::1]:8080".into()))
        );
    }

    #[test]
    fn binary_and_non_http_bytes_are_invalid() {
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00", HEADER),
            Head::Invalid,
            "TLS hello"
        );
        assert_eq!(parse(b"SSH-2.0-OpenSSH\r\n", HEADER), Head::Invalid);
        let many: String = (0..HEADERS_MAX + 1)
            .map(|i| format!("h{i}: v\r\n"))
            .collect();
        assert_eq!(
            parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(), HEADER),
            Head::Invalid
        );
    }
}
