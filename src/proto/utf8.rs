//! UTF-8 validation of text messages (RFC 6455 §5.6, §8.1), whole or streamed.
//!
//! "When an endpoint is to interpret a byte stream as UTF-8 but finds that the byte stream is
//! not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail the WebSocket Connection_"
//! (§8.1). A text message may arrive split across fragments and reads, with a code point cut
//! anywhere; [`Utf8Stream`] validates it as it arrives and fails as soon as the bytes seen so
//! far cannot begin any valid UTF-8 text, so a peer cannot make us buffer a large message whose
//! first bytes were already wrong.
//!
//! The bulk of each piece goes through `simdutf8` (the `compat` flavour where we need to know
//! where a trailing, incomplete sequence starts); only the at most 3 bytes of a code point cut
//! at a piece boundary are carried between calls.

use super::ProtoError;

/// Streaming validator state: the first bytes (at most 3) of a code point cut at the end of
/// the previous piece. 4 bytes in all.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Stream {
    /// Bytes of the incomplete sequence carried from the previous piece.
    carry: [u8; 3],
    /// How many bytes of `carry` are in use (0..=3).
    len: u8,
}

/// The total length of the sequence a carried lead byte starts. Only called on bytes that
/// `simdutf8` accepted as the start of an incomplete sequence, so 2..=4.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        _ => 2,
    }
}

impl Utf8Stream {
    /// Validates the next bytes of a message. Fails with [`ProtoError::InvalidUtf8`] as soon as
    /// the bytes seen so far cannot be a prefix of valid UTF-8 (a stray `0xF5`, or `ED A0`, the
    /// start of a surrogate, fail here, not at the end of the message). A trailing
    /// incomplete-but-possibly-valid sequence is carried to the next call.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ProtoError> {
        let mut rest = bytes;
        if self.len > 0 {
            // Complete the carried code point with the first bytes of this piece.
            let have = self.len as usize;
            let need = sequence_len(self.carry[0]) - have;
            let take = need.min(rest.len());
            let mut seq = [0u8; 4];
            seq[..have].copy_from_slice(&self.carry[..have]);
            seq[have..have + take].copy_from_slice(&rest[..take]);
            match simdutf8::compat::from_utf8(&seq[..have + take]) {
                Ok(_) => {}
                // Still incomplete (this piece was too short) but every byte fits: keep it.
                Err(e) if e.error_len().is_none() => {}
                Err(_) => return Err(ProtoError::InvalidUtf8),
            }
            if take < need {
                self.carry[have..have + take].copy_from_slice(&rest[..take]);
                self.len += take as u8;
                return Ok(());
            }
            self.len = 0;
            rest = &rest[take..];
        }
        match simdutf8::compat::from_utf8(rest) {
            Ok(_) => Ok(()),
            // `error_len() == None`: "the end of the input was reached unexpectedly" — the tail
            // is a valid start of a code point, at most 3 bytes long.
            Err(e) if e.error_len().is_none() => {
                let tail = &rest[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(ProtoError::InvalidUtf8),
        }
    }

    /// End of the message: fails if a code point is still incomplete. Always leaves the
    /// validator empty, ready for the next message.
    pub fn finish(&mut self) -> Result<(), ProtoError> {
        let incomplete = self.len != 0;
        *self = Utf8Stream::default();
        if incomplete {
            Err(ProtoError::InvalidUtf8)
        } else {
            Ok(())
        }
    }

    /// True when no partial code point is carried.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Messages up to this long are first checked for being plain ASCII a word at a time.
const SHORT_ASCII: usize = 256;

/// Validates a whole message at once: the fast path for a text message that arrived in one
/// piece (`simdutf8::basic`, which only says yes or no). A short message that is all ASCII,
/// as most JSON commands and deliveries are, is settled by OR-ing its 8-byte words and
/// testing the high bits, which costs a fraction of the SIMD validator's set-up on 100 bytes.
pub fn validate(bytes: &[u8]) -> Result<(), ProtoError> {
    if bytes.len() <= SHORT_ASCII && is_ascii_words(bytes) {
        return Ok(());
    }
    simdutf8::basic::from_utf8(bytes)
        .map(|_| ())
        .map_err(|_| ProtoError::InvalidUtf8)
}

/// Whether every byte of `bytes` is below 0x80.
#[inline(always)]
fn is_ascii_words(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    let mut high = 0u64;
    for w in &mut words {
        high |= u64::from_le_bytes(w.try_into().unwrap_or([0xFF; 8]));
    }
    for &b in words.remainder() {
        high |= u64::from(b);
    }
    high & 0x8080_8080_8080_8080 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ascii_words_find_any_high_byte() {
        for len in 0..=40 {
            let ascii = vec![b'a'; len];
            assert!(is_ascii_words(&ascii));
            assert_eq!(validate(&ascii), Ok(()));
            for at in 0..len {
                for high in [0x80u8, 0xC3, 0xFF] {
                    let mut b = ascii.clone();
                    b[at] = high;
                    assert!(!is_ascii_words(&b), "len {len} at {at}");
                    assert_eq!(validate(&b).is_ok(), std::str::from_utf8(&b).is_ok());
                }
            }
        }
        // Longer than the short path: the SIMD validator alone decides.
        let mut long = vec![b'a'; SHORT_ASCII + 1];
        assert_eq!(validate(&long), Ok(()));
        long[SHORT_ASCII] = 0xFF;
        assert_eq!(validate(&long), Err(ProtoError::InvalidUtf8));
    }

    /// True when `bytes` can be extended to valid UTF-8 (the oracle is std's decoder).
    fn is_valid_prefix(bytes: &[u8]) -> bool {
        match std::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(e) => e.error_len().is_none(),
        }
    }

    /// Feeds `bytes` cut at `cuts`; returns the index of the first failing piece, or None.
    fn feed_pieces(stream: &mut Utf8Stream, bytes: &[u8], cuts: &[usize]) -> Option<usize> {
        let mut start = 0;
        for (i, &end) in cuts.iter().chain(std::iter::once(&bytes.len())).enumerate() {
            if stream.feed(&bytes[start..end]).is_err() {
                return Some(i);
            }
            start = end;
        }
        None
    }

    #[test]
    fn fails_fast_on_impossible_bytes() {
        for bad in [
            &[0xF5][..],
            &[0xFF],
            &[0x80],
            &[0xC0],
            &[0xC1],
            &[0xED, 0xA0],
        ] {
            let mut s = Utf8Stream::default();
            assert_eq!(s.feed(bad), Err(ProtoError::InvalidUtf8), "{bad:02x?}");
        }
        // The same, with the bad byte arriving alone after a valid lead byte.
        for (lead, bad) in [
            (0xED, 0xA0),
            (0xE0, 0x80),
            (0xF0, 0x80),
            (0xF4, 0x90),
            (0xC3, 0x41),
        ] {
            let mut s = Utf8Stream::default();
            s.feed(&[lead]).unwrap();
            assert!(!s.is_empty());
            assert_eq!(
                s.feed(&[bad]),
                Err(ProtoError::InvalidUtf8),
                "{lead:02x} {bad:02x}"
            );
        }
    }

    #[test]
    fn carries_a_code_point_cut_byte_by_byte() {
        let text = "κόσμε 😀 €";
        let mut s = Utf8Stream::default();
        for b in text.as_bytes() {
            s.feed(std::slice::from_ref(b)).unwrap();
        }
        assert!(s.is_empty());
        s.finish().unwrap();
    }

    #[test]
    fn finish_rejects_an_incomplete_tail_and_resets() {
        let mut s = Utf8Stream::default();
        s.feed(&[b'a', 0xF0, 0x9F]).unwrap();
        assert_eq!(s.finish(), Err(ProtoError::InvalidUtf8));
        assert!(s.is_empty());
        s.feed(b"ok").unwrap();
        s.finish().unwrap();
    }

    #[test]
    fn validate_is_whole_message() {
        assert_eq!(validate("héllo".as_bytes()), Ok(()));
        assert_eq!(validate(&[0xCE, 0xBA, 0xE1]), Err(ProtoError::InvalidUtf8));
    }

    /// Byte strings that are often valid, often almost valid: text interleaved with the bytes
    /// that make UTF-8 decoders go wrong.
    fn tricky_bytes() -> impl Strategy<Value = Vec<u8>> {
        let tricky = prop::sample::select(vec![
            0x00u8, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xED,
            0xEF, 0xF0, 0xF4, 0xF5, 0xFF,
        ]);
        let piece = prop_oneof![
            4 => any::<String>().prop_map(String::into_bytes),
            1 => prop::collection::vec(tricky, 1..4),
            1 => prop::collection::vec(any::<u8>(), 1..3),
        ];
        prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Split anywhere, the stream agrees with std about the whole message, and fails at
        /// exactly the first piece after which the prefix can no longer become valid.
        #[test]
        fn stream_agrees_with_std(bytes in tricky_bytes(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut s = Utf8Stream::default();
            let failed_at = feed_pieces(&mut s, &bytes, &cuts);
            let ends: Vec<usize> = cuts.iter().copied().chain(std::iter::once(bytes.len())).collect();
            let first_bad = ends.iter().position(|&end| !is_valid_prefix(&bytes[..end]));
            prop_assert_eq!(failed_at, first_bad);
            if failed_at.is_none() {
                prop_assert_eq!(s.finish().is_ok(), std::str::from_utf8(&bytes).is_ok());
                prop_assert_eq!(validate(&bytes).is_ok(), std::str::from_utf8(&bytes).is_ok());
            }
        }
    }
}
