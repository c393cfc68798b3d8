//! Fuzz target: both handshake parsers on arbitrary bytes.
//!
//! Beyond "never panics", it checks the contract callers rely on: a complete parse consumes no
//! more than the buffer and the limit, and the answer does not depend on how the bytes were
//! split — any prefix gives either "need more" or the whole buffer's answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starling::proto::handshake::{parse_request, parse_response, HandshakeError, ServerLimits};

/// The RFC 6455 §1.3 example key, so seeds can hold a matching Sec-WebSocket-Accept.
const KEY: &[u8; 24] = b"dGhlIHNhbXBsZSBub25jZQ==";

type Parsed<T> = Result<Option<(T, usize)>, HandshakeError>;

/// Checks one parser on `data` and on three of its prefixes.
fn check<T: PartialEq + std::fmt::Debug>(
    data: &[u8],
    limit: usize,
    parse: impl Fn(&[u8]) -> Parsed<T>,
) {
    let whole = parse(data);
    if let Ok(Some((_, n))) = &whole {
        assert!(*n <= data.len() && *n <= limit);
    }
    let len = data.len();
    for cut in [len / 2, len * 3 / 4, len.saturating_sub(1)] {
        let part = parse(&data[..cut]);
        assert!(
            part == Ok(None) || part == whole,
            "cut at {cut}: {part:?} vs {whole:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let protocols = ["chat".to_string(), "superchat".to_string()];
    // A generous limit, and a small one that depends on the input so the 431 path is reached.
    for limit in [8192, 64 + data.len() % 509] {
        let limits = ServerLimits {
            max_header_bytes: limit,
            protocols: &protocols,
        };
        check(data, limit, |buf| parse_request(buf, &limits));
        check(data, limit, |buf| parse_response(buf, KEY, limit));
    }
});
