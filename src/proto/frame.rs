//! Base framing (RFC 6455 §5.2): parsing and encoding frame headers, encoding whole frames.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! [`FrameHeader::parse`] is a pure function over the bytes received so far: it answers "need
//! more bytes", "here is a header of n bytes", or the protocol error, and it checks everything
//! the header alone can prove wrong as soon as the byte that proves it has arrived. Whether the
//! mask matches the role, and whether the frame fits the message in progress, are the
//! decoder's business (`decoder.rs`), because they depend on connection state.

use super::{mask, OpCode, ProtoError, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: this is the final fragment of a message.
    pub fin: bool,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The masking key, when the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Declared payload length (always below 2^63).
    pub payload_len: u64,
}

impl FrameHeader {
    /// Parses a header from the start of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed, `Ok(Some((header, header_len)))` with
    /// `header_len` in 2..=14, or the error proven by the bytes present. Never reads past the
    /// end of `buf`. Rejects RSV bits ([`ProtoError::ReservedBits`]: no extension is ever
    /// negotiated), reserved opcodes, a 64-bit length with its most significant bit set
    /// ([`ProtoError::BadLength`]), and control frames that are fragmented or longer than 125.
    /// A length not in minimal form is accepted: the minimality rule binds the sender, and
    /// refusing it would buy nothing. Masking versus role is not checked here.
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtoError> {
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        // "RSV1, RSV2, RSV3: 1 bit each. MUST be 0 unless an extension is negotiated that
        // defines meanings for non-zero values" (§5.2).
        if b0 & 0x70 != 0 {
            return Err(ProtoError::ReservedBits);
        }
        let fin = b0 & 0x80 != 0;
        let opcode = OpCode::from_nibble(b0 & 0x0F)?;
        // "All control frames ... MUST NOT be fragmented" (§5.5).
        if opcode.is_control() && !fin {
            return Err(ProtoError::FragmentedControl);
        }
        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        // "All control frames MUST have a payload length of 125 bytes or less" (§5.5): a 7-bit
        // length of 126 or 127 announces an extended length, already too long.
        if opcode.is_control() && usize::from(len7) > MAX_CONTROL_PAYLOAD {
            return Err(ProtoError::ControlTooLong);
        }
        let (payload_len, mut at) = match len7 {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(b);
                    // "the most significant bit MUST be 0" (§5.2).
                    let len = u64::from_be_bytes(be);
                    if len >> 63 != 0 {
                        return Err(ProtoError::BadLength);
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            match buf.get(at..at + 4) {
                Some(k) => {
                    at += 4;
                    Some([k[0], k[1], k[2], k[3]])
                }
                None => return Ok(None),
            }
        } else {
            None
        };
        let header = FrameHeader {
            fin,
            opcode,
            mask,
            payload_len,
        };
        Ok(Some((header, at)))
    }
}

/// Writes a frame header into `out` and returns its length (2..=14), using the minimal length
/// encoding §5.2 requires of senders. `len` must be below 2^63 (no slice is that long).
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    opcode: OpCode,
    len: u64,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = (u8::from(fin) << 7) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= u64::from(u16::MAX) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    n
}

/// A whole unmasked (server-role) final frame, header and payload in one contiguous `Bytes`:
/// the unit a broadcast encodes once and every recipient's queue shares.
///
/// The `Vec` is sized exactly (header first): `Bytes::from` a `Vec` whose length equals its
/// capacity keeps the one allocation, while spare capacity costs a second one.
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> bytes::Bytes {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut header, true, opcode, payload.len() as u64, None);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
    bytes::Bytes::from(out)
}

/// Appends a whole final frame (FIN set) to `out`. With `Some(key)` the header carries the key
/// and the appended copy of the payload is masked (client role); `payload` itself is untouched.
pub fn encode_frame_into(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
    if mask.is_none() && payload.len() < 126 {
        // The echo path's common case: a two-byte header of constant size, which the compiler
        // writes inline instead of calling `memcpy` for a variable-length header copy.
        out.reserve(2 + payload.len());
        out.extend_from_slice(&[0x80 | opcode as u8, payload.len() as u8]);
        out.extend_from_slice(payload);
        return;
    }
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut header, true, opcode, payload.len() as u64, mask);
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        mask::apply_mask(&mut out[start..], key, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtoError> {
        FrameHeader::parse(b)
    }

    #[test]
    fn needs_more_bytes_for_every_short_prefix() {
        let mut h = [0u8; MAX_HEADER_LEN];
        for len in [0u64, 125, 126, 65535, 65536, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let n = encode_header(&mut h, true, OpCode::Binary, len, mask);
                for cut in 0..n {
                    assert_eq!(parse(&h[..cut]), Ok(None), "len {len} cut {cut}");
                }
                let expect = FrameHeader {
                    fin: true,
                    opcode: OpCode::Binary,
                    mask,
                    payload_len: len,
                };
                assert_eq!(parse(&h[..n]), Ok(Some((expect, n))));
            }
        }
    }

    #[test]
    fn minimal_length_encoding() {
        let mut h = [0u8; MAX_HEADER_LEN];
        let cases = [
            (0u64, 2),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
            (u64::MAX >> 1, 10),
        ];
        for (len, n) in cases {
            assert_eq!(
                encode_header(&mut h, true, OpCode::Text, len, None),
                n,
                "len {len}"
            );
            let masked = encode_header(&mut h, false, OpCode::Text, len, Some([9; 4]));
            assert_eq!(masked, n + 4);
            assert_eq!(&h[n..n + 4], &[9; 4]);
        }
    }

    #[test]
    fn non_minimal_length_is_accepted() {
        // 5 encoded in the 16-bit form.
        assert_eq!(parse(&[0x82, 126, 0, 5]).unwrap().unwrap().0.payload_len, 5);
    }

    #[test]
    fn each_rsv_bit_is_rejected() {
        for bit in [0x40u8, 0x20, 0x10] {
            assert_eq!(parse(&[0x81 | bit]), Err(ProtoError::ReservedBits));
        }
    }

    #[test]
    fn each_reserved_opcode_is_rejected() {
        for op in (0x3u8..=0x7).chain(0xB..=0xF) {
            assert_eq!(
                parse(&[0x80 | op]),
                Err(ProtoError::ReservedOpcode),
                "{op:#x}"
            );
        }
    }

    #[test]
    fn control_frame_rules() {
        for op in [0x8u8, 0x9, 0xA] {
            assert_eq!(parse(&[op]), Err(ProtoError::FragmentedControl));
            assert_eq!(parse(&[0x80 | op, 126]), Err(ProtoError::ControlTooLong));
            assert_eq!(parse(&[0x80 | op, 127]), Err(ProtoError::ControlTooLong));
            assert!(parse(&[0x80 | op, 125]).unwrap().is_some());
        }
    }

    #[test]
    fn length_with_msb_set_is_rejected() {
        let mut b = [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse(&b), Err(ProtoError::BadLength));
        b[2] = 0x7F;
        assert!(parse(&b).unwrap().is_some());
    }

    #[test]
    fn encode_frame_variants() {
        let f = encode_frame(OpCode::Text, b"hi");
        assert_eq!(&f[..], &[0x81, 2, b'h', b'i']);

        let mut out = vec![0xAA];
        encode_frame_into(&mut out, OpCode::Binary, b"abcd", Some([1, 2, 3, 4]));
        assert_eq!(&out[..7], &[0xAA, 0x82, 0x84, 1, 2, 3, 4]);
        assert_eq!(&out[7..], &[b'a' ^ 1, b'b' ^ 2, b'c' ^ 3, b'd' ^ 4]);

        let big = vec![7u8; 70_000];
        let f = encode_frame(OpCode::Binary, &big);
        let (h, n) = parse(&f).unwrap().unwrap();
        assert_eq!((h.payload_len, n, f.len()), (70_000, 10, 70_010));
    }
}
