//! The HTTP/1 request head, for ORIGINAL_DST's `use_http_header`: find one header's value in a
//! bounded prefix of the client's bytes, without consuming them (the runtime peeks; the request is
//! forwarded unchanged). Parsing is httparse's; the bounds are ours.

/// What a prefix of the client's stream says so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// The head is complete; the header's value, if present.
    Complete(Option<String>),
    /// The head is complete and carries the header more than once: refused, never first-wins
    /// (a server behind may read the other one).
    Duplicate,
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
        Ok(httparse::Status::Complete(_)) => {
            let mut found = request
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(header));
            match (found.next(), found.next()) {
                (None, _) => Head::Complete(None),
                (Some(h), None) => {
                    Head::Complete(Some(String::from_utf8_lossy(h.value).trim().to_string()))
                }
                (Some(_), Some(_)) => Head::Duplicate,
            }
        }
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(_) => Head::Invalid,
    }
}

/// A request head arriving in pieces. The work per piece is proportional to the piece: new bytes
/// are appended and scanned for the end of the head (a blank line) from where the last scan
/// stopped, and the whole head is parsed only when it ended — or at sizes that double, so that a
/// stream that is not HTTP is still refused early at a total parsing cost linear in its length.
/// A slow client sending one byte per segment costs O(1) per segment, not O(head).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadBuffer {
    bytes: Vec<u8>,
    /// Where the next scan for the blank line starts.
    scanned: usize,
    /// Parse again once this many bytes are here (0: on the next piece).
    parse_at: usize,
}

impl HeadBuffer {
    /// Bytes held so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends `piece` (at most `max` bytes are kept) and says what the head is now. `ended`: the
    /// client closed its stream (no more bytes will come).
    pub fn push(&mut self, piece: &[u8], max: usize, header: &str, ended: bool) -> Head {
        let room = max.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&piece[..piece.len().min(room)]);
        // The blank line may straddle pieces: rescan the last three bytes seen.
        let from = self.scanned.saturating_sub(3);
        let ended_head = head_end(&self.bytes[from..]).is_some();
        self.scanned = self.bytes.len();
        let full = self.bytes.len() >= max;
        if !(ended_head || ended || full || self.bytes.len() >= self.parse_at) {
            return Head::Partial;
        }
        self.parse_at = self.bytes.len().saturating_mul(2).max(PARSE_AT_MIN);
        parse(&self.bytes, header)
    }
}

/// Where a blank line (`\r\n\r\n`, or the bare `\n\n` httparse also accepts) ends, if any.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).enumerate().find_map(|(i, w)| {
        (w == b"\n\n" || (w == b"\n\r" && bytes.get(i + 2) == Some(&b'\n'))).then_some(i)
    })
}

/// The first re-parse of a partial head waits for this many bytes.
const PARSE_AT_MIN: usize = 64;

/// Headers read per request; a head with more is refused (as most servers do past ~100).
pub const HEADERS_MAX: usize = 96;

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "x-envoy-original-dst-host";

    #[test]
    fn finds_the_header_case_insensitively() {
        let head = b"GET /status/418 HTTP/1.1\r\nHost: a\r\nX-Envoy-Original-Dst-Host: 10.0.0.1:80 \r\n\r\nbody";
        assert_eq!(
            parse(head, HEADER),
            Head::Complete(Some("10.0.0.1:80".into()))
        );
    }

    #[test]
    fn a_repeated_destination_header_is_refused_not_first_wins() {
        let head = b"GET / HTTP/1.1\r\nX-Envoy-Original-Dst-Host: 10.0.0.1:80\r\nx-envoy-original-dst-host: 127.0.0.1:15000\r\n\r\n";
        assert_eq!(parse(head, HEADER), Head::Duplicate);
    }

    #[test]
    fn pieces_of_any_size_give_the_answer_of_the_whole() {
        let head =
            b"POST /x HTTP/1.1\r\nHost: h\r\nx-envoy-original-dst-host: [fd00::1]:8080\r\n\r\nbody";
        for size in [1, 2, 3, 5, 64, head.len()] {
            let mut buffer = HeadBuffer::default();
            let mut answer = Head::Partial;
            for piece in head.chunks(size) {
                answer = buffer.push(piece, 8192, HEADER, false);
                if answer != Head::Partial {
                    break;
                }
            }
            assert_eq!(
                answer,
                Head::Complete(Some("[fd00::1]:8080".into())),
                "pieces of {size}"
            );
        }
    }

    #[test]
    fn a_slow_head_is_parsed_a_logarithmic_number_of_times() {
        // 60 kB, one byte per piece: the blank line never comes; parses happen at doubling sizes.
        let mut buffer = HeadBuffer::default();
        let line = b"GET / HTTP/1.1\r\n";
        let mut parses = 0;
        let mut last_parse_at = buffer.parse_at;
        for i in 0..60_000 {
            let byte = if i < line.len() {
                line[i]
            } else {
                b'a' + (i % 26) as u8
            };
            assert_eq!(buffer.push(&[byte], 65536, HEADER, false), Head::Partial);
            if buffer.parse_at != last_parse_at {
                parses += 1;
                last_parse_at = buffer.parse_at;
            }
        }
        assert!(parses <= 12, "{parses} parses");
        // Not HTTP at all: refused on the first piece.
        let mut buffer = HeadBuffer::default();
        assert_eq!(
            buffer.push(b"\x16\x03\x01", 8192, HEADER, false),
            Head::Invalid
        );
    }

    #[test]
    fn the_limit_and_the_end_of_stream_force_an_answer() {
        let mut buffer = HeadBuffer::default();
        assert_eq!(
            buffer.push(b"GET / HTTP/1.1\r\nA: b", 8192, HEADER, false),
            Head::Partial
        );
        assert_eq!(
            buffer.push(b"", 8192, HEADER, true),
            Head::Partial,
            "caller decides on end"
        );
        let mut buffer = HeadBuffer::default();
        let long = [b'a'; 300];
        assert_eq!(
            buffer.push(b"GET / HTTP/1.1\r\nA: ", 256, HEADER, false),
            Head::Partial
        );
        assert_eq!(buffer.push(&long, 256, HEADER, false), Head::Partial);
        assert_eq!(buffer.len(), 256, "bytes past the limit are not kept");
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
