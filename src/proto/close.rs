//! Close frames (RFC 6455 §5.5.1) and status codes (§7.4).
//!
//! A close payload is empty, or a 2-byte big-endian status code followed by a UTF-8 reason:
//! "If there is a body, the first two bytes of the body MUST be a 2-byte unsigned integer (in
//! network byte order) representing a status code ... Following the 2-byte integer, the body
//! MAY contain UTF-8-encoded data" (§5.5.1). This file owns which codes may travel on the wire,
//! parsing a received payload, and building the payload and frame we send.

use super::{frame, OpCode, ProtoError, MAX_CONTROL_PAYLOAD};

/// A close status code (RFC 6455 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000 normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001 going away (server shutting down, drain).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002 protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003 unsupported data.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1007 invalid frame payload data (e.g. bad UTF-8).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008 policy violation (slow consumer, rate limit).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009 message too big.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011 internal error.
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// 1012 service restart.
    pub const RESTART: CloseCode = CloseCode(1012);

    /// Whether this code may appear in a Close frame, sent or received.
    ///
    /// - 1000-1003 and 1007-1011 are defined by §7.4.1.
    /// - 1012 (service restart), 1013 (try again later) and 1014 (bad gateway) were registered
    ///   with IANA after the RFC. The Autobahn testsuite first listed them among the invalid
    ///   codes, then removed them from case 7.9.x (issues #52 and #88 of
    ///   crossbario/autobahn-testsuite); its current 7.9.x invalid list is 0, 999, 1004, 1005,
    ///   1006, 1016, 1100, 2000, 2999, so accepting 1012-1014 passes it, and we send 1012
    ///   ourselves on restart.
    /// - 1004 is reserved, and 1005, 1006 and 1015 "MUST NOT be set as a status code in a Close
    ///   control frame by an endpoint" (§7.4.1): they only exist to report a missing code, an
    ///   abnormal drop and a TLS failure to the application.
    /// - 1016-2999 are reserved for future RFCs and IANA (§7.4.2); a peer using one is speaking
    ///   a protocol we do not know.
    /// - 3000-4999 are for libraries, frameworks and applications (§7.4.2).
    /// - Anything below 1000 or from 5000 up is not a status code at all.
    pub fn is_allowed_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// Parses a received close payload.
///
/// - empty: `Ok(None)`, "no status code" (1005 to the application);
/// - one byte: [`ProtoError::BadClosePayload`], a code needs two;
/// - a code outside [`CloseCode::is_allowed_on_wire`]: [`ProtoError::BadCloseCode`];
/// - a reason that is not UTF-8: [`ProtoError::InvalidUtf8`];
/// - over 125 bytes: [`ProtoError::ControlTooLong`] (the frame parser already rejects such a
///   frame; the check keeps this function total for direct callers).
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, ProtoError> {
    if payload.len() > MAX_CONTROL_PAYLOAD {
        return Err(ProtoError::ControlTooLong);
    }
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(ProtoError::BadClosePayload),
        [hi, lo, reason @ ..] => (CloseCode(u16::from_be_bytes([*hi, *lo])), reason),
    };
    if !code.is_allowed_on_wire() {
        return Err(ProtoError::BadCloseCode);
    }
    // "the body MAY contain UTF-8-encoded data with value /reason/" (§5.5.1); §8.1 applies.
    let reason = simdutf8::basic::from_utf8(reason).map_err(|_| ProtoError::InvalidUtf8)?;
    Ok(Some((code, reason)))
}

/// Builds a close payload into `out` and returns its length: the code, then `reason` cut at a
/// character boundary so the whole fits the 125 bytes a control frame may carry.
///
/// The caller chooses the code; only codes for which [`CloseCode::is_allowed_on_wire`] holds
/// should be sent (every [`ProtoError::close_code`] is one).
pub fn close_payload(out: &mut [u8; MAX_CONTROL_PAYLOAD], code: CloseCode, reason: &str) -> usize {
    out[..2].copy_from_slice(&code.0.to_be_bytes());
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    // Index 0 is always a boundary, so this stops.
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    2 + end
}

/// A whole server-role (unmasked) close frame, ready to queue.
pub fn close_frame(code: CloseCode, reason: &str) -> bytes::Bytes {
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    let n = close_payload(&mut payload, code, reason);
    frame::encode_frame(OpCode::Close, &payload[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_follow_the_registry() {
        let allowed: Vec<u16> = (0..=u16::MAX)
            .filter(|&c| CloseCode(c).is_allowed_on_wire())
            .collect();
        let mut expect: Vec<u16> = (1000..=1003).chain(1007..=1014).collect();
        expect.extend(3000..=4999);
        assert_eq!(allowed, expect);
    }

    #[test]
    fn autobahn_valid_codes_parse() {
        // Case 7.7.x.
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            let p = code.to_be_bytes();
            assert_eq!(parse_close_payload(&p), Ok(Some((CloseCode(code), ""))));
        }
    }

    #[test]
    fn bad_codes_are_rejected() {
        // Case 7.9.x plus the edges of every forbidden range.
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let p = code.to_be_bytes();
            assert_eq!(
                parse_close_payload(&p),
                Err(ProtoError::BadCloseCode),
                "{code}"
            );
        }
    }

    #[test]
    fn payload_shapes() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
        assert_eq!(
            parse_close_payload(&[0x03]),
            Err(ProtoError::BadClosePayload)
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe8bye"),
            Ok(Some((CloseCode::NORMAL, "bye")))
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xce\xba\xed\xa0\x80"),
            Err(ProtoError::InvalidUtf8)
        );
        let long = [b'a'; 126];
        assert_eq!(parse_close_payload(&long), Err(ProtoError::ControlTooLong));
    }

    #[test]
    fn long_reason_is_cut_at_a_char_boundary() {
        let mut out = [0u8; MAX_CONTROL_PAYLOAD];
        // 122 ASCII bytes then a 2-byte char: 124 bytes of reason, only 123 fit.
        let reason = format!("{}é", "a".repeat(122));
        let n = close_payload(&mut out, CloseCode::GOING_AWAY, &reason);
        assert_eq!(n, 2 + 122);
        let (code, got) = parse_close_payload(&out[..n]).unwrap().unwrap();
        assert_eq!(code, CloseCode::GOING_AWAY);
        assert_eq!(got, "a".repeat(122));

        let n = close_payload(&mut out, CloseCode::NORMAL, &"€".repeat(60));
        assert_eq!(n, 2 + 123);
        assert_eq!(
            parse_close_payload(&out[..n]).unwrap().unwrap().1,
            "€".repeat(41)
        );
    }

    #[test]
    fn close_frame_is_unmasked_and_round_trips() {
        let f = close_frame(CloseCode::TOO_BIG, "too big");
        assert_eq!(&f[..4], &[0x88, 9, 0x03, 0xf1]);
        assert_eq!(&f[4..], b"too big");
    }
}
