//! Payload masking (RFC 6455 §5.3).
//!
//! "Octet i of the transformed data ("transformed-octet-i") is the XOR of octet i of the
//! original data ("original-octet-i") with octet at index i modulo 4 of the masking key
//! ("masking-key-octet-j")". Masking and unmasking are the same operation.
//!
//! Contract: a frame's payload may be unmasked in several calls (it arrives in several reads).
//! `offset` is the number of payload bytes of this frame already processed before `buf`, so the
//! key is rotated by `offset % 4`; calling `apply_mask` on consecutive pieces with their running
//! offsets gives the same bytes as one call on the whole payload.
//!
//! Two versions live here: [`apply_mask_reference`], the byte loop that is obviously right, and
//! [`apply_mask`], which XORs a machine word per step and is tested against the reference over every
//! length, offset and start alignment that matters.

/// The masking key rotated so that index 0 applies to the byte `offset` bytes into the
/// payload. Done on a `u32` (a byte rotation of the little-endian word) rather than with
/// `<[u8]>::rotate_left`, which is a general out-of-line routine and dominated short frames.
pub(crate) fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let bits = (offset % 4) as u32 * 8;
    u32::from_le_bytes(key).rotate_right(bits).to_le_bytes()
}

/// Unmasks (or masks) `buf` in place, `offset` bytes into the frame's payload.
///
/// XORs a `u64` (the key twice) per 8 bytes over `chunks_exact_mut(8)`; the compiler unrolls
/// and vectorises this loop, it needs no `unsafe`, and unaligned loads cost nothing measurable.
/// Measured against a 32-byte-chunk byte zip and an `align_to_mut::<u64>` version (which needs
/// `unsafe`), it was as fast or faster at every size (see `benches/mask.rs`), so they were
/// dropped. The tail of fewer than 8 bytes takes the byte loop.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let k = rotate_key(key, offset);
    let word = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    // 8 is a multiple of 4, so the tail starts at key index 0 again.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
}

/// The byte-at-a-time definition from §5.3, kept as the oracle for [`apply_mask`].
pub fn apply_mask_reference(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic, varied bytes without a PRNG dependency.
    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
            .collect()
    }

    #[test]
    fn fast_matches_reference_over_lengths_offsets_alignments() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in 0..=80 {
            for offset in 0..=7 {
                for align in 0..=7 {
                    let mut backing = vec![0u8; len + 8];
                    backing[align..align + len].copy_from_slice(&sample(len));
                    let mut expect = backing.clone();
                    apply_mask(&mut backing[align..align + len], key, offset);
                    apply_mask_reference(&mut expect[align..align + len], key, offset);
                    assert_eq!(backing, expect, "len {len} offset {offset} align {align}");
                }
            }
        }
    }

    #[test]
    fn pieces_with_running_offset_equal_one_call() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let data = sample(300);
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        for cut in [0, 1, 3, 5, 31, 33, 150, 299, 300] {
            let mut split = data.clone();
            let (a, b) = split.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
            assert_eq!(split, whole, "cut {cut}");
        }
    }

    #[test]
    fn rotate_key_matches_slice_rotation() {
        let key = [1, 2, 3, 4];
        for offset in 0..12 {
            let mut expect = key;
            expect.rotate_left(offset % 4);
            assert_eq!(rotate_key(key, offset), expect);
        }
    }

    #[test]
    fn masking_twice_restores_the_input() {
        let data = sample(1000);
        let mut buf = data.clone();
        apply_mask(&mut buf, [1, 2, 3, 4], 2);
        assert_ne!(buf, data);
        apply_mask(&mut buf, [1, 2, 3, 4], 2);
        assert_eq!(buf, data);
    }
}
