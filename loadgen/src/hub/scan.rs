//! A small JSON scanner: the members of one object, each value as the raw bytes it was
//! written as, and unsigned integers read from those bytes. It allocates nothing and
//! decodes only what the caller asks for.
//!
//! It is not a validator. It checks structure exactly as far as it must to find where a value
//! ends (strings with their escapes, nested objects and arrays, scalars up to the next
//! delimiter), so it never reads past the end and never panics, but a scalar such as `tru`
//! is returned as raw bytes and rejected only when the caller reads it. Keys are compared
//! as written: an escaped key (`"s\u0065q"`) does not match `seq`. A server that escapes
//! its member names is legal JSON but none does; the reference tests state the difference.

/// Insignificant whitespace (RFC 8259 §2): space, tab, line feed, carriage return.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The first index at or after `i` that is not whitespace.
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

/// The end (exclusive) of the string whose opening quote is at `b[i]`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'"' => return Some(j + 1),
            // The escaped character is skipped whatever it is, so `\"` does not end the string.
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
    None
}

/// The end (exclusive) of the value starting at `b[i]`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            // Depth counts both brackets alike: matching kinds is the validator's job, and a
            // mismatch can only shift where this value is taken to end, never out of bounds.
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        b',' | b'}' | b']' | b':' => None,
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !is_ws(b[j]) {
                j += 1;
            }
            Some(j)
        }
    }
}

/// Calls `f(key, value)` for each member of the object `obj` (whitespace around it
/// allowed), in order, with the key's bytes between its quotes and the value's raw bytes.
/// Returns whether `obj` is one whole object; members seen before a problem were still
/// passed to `f`, so a caller that cares must look at the result.
pub fn for_each_member<'a>(obj: &'a [u8], mut f: impl FnMut(&'a [u8], &'a [u8])) -> bool {
    let b = obj;
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return false;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return skip_ws(b, i + 1) == b.len();
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return false;
        }
        let Some(key_end) = string_end(b, i) else {
            return false;
        };
        let key = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return false;
        }
        i = skip_ws(b, i + 1);
        let Some(end) = value_end(b, i) else {
            return false;
        };
        f(key, &b[i..end]);
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return skip_ws(b, i + 1) == b.len(),
            _ => return false,
        }
    }
}

/// A JSON number that is a whole number in `u64`, written without sign, fraction or
/// exponent (RFC 8259 §6 forbids leading zeros, so `01` is not one).
pub fn uint(v: &[u8]) -> Option<u64> {
    match leading_uint(v) {
        Some((n, [])) => Some(n),
        _ => None,
    }
}

/// The unsigned integer at the start of `v` and the bytes after it. `None` without a digit,
/// for a leading zero followed by a digit, or past `u64::MAX`.
///
/// Sixteen digits at a time: a delivery carries four numbers of up to 16 digits, and a digit
/// at a time (a multiply-add chain of one digit per step) cost more than everything else a
/// subscriber does per message. Both 8-byte words are loaded and parsed independently, so
/// the end of the number (which the next field's position waits for) is known after one
/// load and one digit test, not after a chain of them. Longer numbers take
/// [`leading_uint_slow`], the reference this is tested against.
#[inline(always)]
pub fn leading_uint(v: &[u8]) -> Option<(u64, &[u8])> {
    let (lo, hi) = (load8(v), load8(v.get(8..).unwrap_or(&[])));
    let (k1, k2) = (digit_run(lo), digit_run(hi));
    let n = if k1 < 8 {
        if k1 == 0 {
            return None;
        }
        parse_short(lo, k1)
    } else if k2 < 8 || !v.get(16).is_some_and(u8::is_ascii_digit) {
        // Both words parse at once; the high one is scaled by its digit count afterwards.
        parse8(lo) * POW10[k2] + parse_short(hi, k2)
    } else {
        return leading_uint_slow(v);
    };
    let at = if k1 < 8 { k1 } else { 8 + k2 };
    if at > 1 && v[0] == b'0' {
        return None;
    }
    // "1.5" or "1e3" are numbers, but not whole ones written plainly.
    let rest = &v[at..];
    if matches!(rest.first(), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    Some((n, rest))
}

/// The first `k` (0..8) digits of `w` as a number: shifted to the top bytes with the bottom
/// filled with '0's, then [`parse8`]. 0 for `k == 0`, the whole word for `k == 8`.
#[inline(always)]
fn parse_short(w: u64, k: usize) -> u64 {
    if k == 0 {
        return 0;
    }
    if k == 8 {
        return parse8(w);
    }
    let shift = 8 * (8 - k as u32);
    parse8((w << shift) | (ZEROS >> (64 - shift)))
}

/// The bytes after the unsigned integer at the start of `v`, for a number that must be
/// there but whose value nobody needs: [`leading_uint`]'s checks without the arithmetic.
#[inline(always)]
pub fn skip_uint(v: &[u8]) -> Option<&[u8]> {
    let (lo, hi) = (load8(v), load8(v.get(8..).unwrap_or(&[])));
    let (k1, k2) = (digit_run(lo), digit_run(hi));
    let at = match (k1, k2) {
        (0, _) => return None,
        (8, 8) if v.get(16).is_some_and(u8::is_ascii_digit) => {
            return leading_uint(v).map(|(_, rest)| rest)
        }
        (8, k) => 8 + k,
        (k, _) => k,
    };
    if at > 1 && v[0] == b'0' {
        return None;
    }
    let rest = &v[at..];
    if matches!(rest.first(), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    Some(rest)
}

/// [`leading_uint`] a digit at a time: the reference.
pub fn leading_uint_slow(v: &[u8]) -> Option<(u64, &[u8])> {
    let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || (digits > 1 && v[0] == b'0') {
        return None;
    }
    let mut n: u64 = 0;
    for &d in &v[..digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    let rest = &v[digits..];
    if matches!(rest.first(), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    Some((n, rest))
}

/// `'0'` in every byte.
const ZEROS: u64 = 0x3030_3030_3030_3030;
const POW10: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// Up to 8 bytes of `v` as a little-endian word (first byte lowest), zeros past the end (a
/// zero byte is not a digit, so a number never runs on past the slice).
#[inline(always)]
fn load8(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    match v.first_chunk::<8>() {
        // The common case, one unaligned load: numbers in a delivery are followed by more.
        Some(whole) => b = *whole,
        None => b[..v.len()].copy_from_slice(v),
    }
    u64::from_le_bytes(b)
}

/// How many of the word's bytes, from the lowest, are ASCII digits before the first that
/// is not.
#[inline(always)]
fn digit_run(w: u64) -> usize {
    // A byte is a digit when its high nibble is 3 and adding 6 keeps it so (0x30..=0x39).
    // A carry out of a byte at 0xFA or above only disturbs bytes after it, and that byte is
    // already flagged by the first test.
    let high = (w & 0xF0F0_F0F0_F0F0_F0F0) ^ ZEROS;
    let plus6 = (w.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0) ^ ZEROS;
    let not_digit = high | plus6;
    (not_digit.trailing_zeros() / 8) as usize
}

/// Eight ASCII digits (first digit in the lowest byte) to their value: pairs, then
/// quads, then the whole, with one multiply each.
#[inline(always)]
fn parse8(w: u64) -> u64 {
    let d = w.wrapping_sub(ZEROS);
    let pairs = (d.wrapping_mul(10) + (d >> 8)) & 0x00FF_00FF_00FF_00FF;
    let quads = (pairs.wrapping_mul(100) + (pairs >> 16)) & 0x0000_FFFF_0000_FFFF;
    (quads.wrapping_mul(10_000) + (quads >> 32)) & 0xFFFF_FFFF
}

/// The index of the first `"` in `s`, eight bytes at a time.
#[inline(always)]
pub fn find_quote(s: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(w) = s.get(at..).and_then(|r| r.first_chunk::<8>()) {
        let hit = has_zero(u64::from_le_bytes(*w) ^ QUOTES);
        if hit != 0 {
            return Some(at + (hit.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    s[at..].iter().position(|&b| b == b'"').map(|i| at + i)
}

/// The content of a JSON string value without escapes (`None` for another kind of value,
/// or for a string that has an escape or a control character and would need decoding).
pub fn plain_str(v: &[u8]) -> Option<&[u8]> {
    let inner = v.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    plain_content(inner).then_some(inner)
}

/// Whether `s` can stand between quotes as is: no quote, no backslash, no control
/// character. Eight bytes at a time: the channel name and the padding of every delivery go
/// through here, and a byte loop (the compiler did not vectorise the fold this replaced)
/// was the largest single cost of reading a delivery.
#[inline(always)]
pub fn plain_content(s: &[u8]) -> bool {
    let mut words = s.chunks_exact(8);
    let mut bad = 0u64;
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        bad |= has_zero(w ^ QUOTES) | has_zero(w ^ BACKSLASHES) | has_below_space(w);
    }
    bad == 0
        && words
            .remainder()
            .iter()
            .all(|&b| b != b'"' && b != b'\\' && b >= 0x20)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const QUOTES: u64 = ONES * b'"' as u64;
const BACKSLASHES: u64 = ONES * b'\\' as u64;

/// Non-zero exactly when some byte of `w` is zero (a borrow out of a zero byte sets its
/// high bit, and `!w` keeps only bytes that had it clear).
#[inline(always)]
fn has_zero(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & HIGHS
}

/// Non-zero exactly when some byte of `w` is below 0x20 (the same trick with 0x20 for 1;
/// bytes of 0x80 and above never count).
#[inline(always)]
fn has_below_space(w: u64) -> u64 {
    w.wrapping_sub(ONES * 0x20) & !w & HIGHS
}

/// `true` or `false`.
pub fn boolean(v: &[u8]) -> Option<bool> {
    match v {
        b"true" => Some(true),
        b"false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(s: &str) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        let whole = for_each_member(s.as_bytes(), |k, v| {
            out.push((
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        });
        whole.then_some(out)
    }

    #[test]
    fn members_with_raw_values() {
        let m =
            members(r#" { "a" : 1 , "b":"x\"}y", "c":{"d":[1,{"e":"]"}]},"f":true,"g":null } "#)
                .unwrap();
        let want = [
            ("a", "1"),
            ("b", r#""x\"}y""#),
            ("c", r#"{"d":[1,{"e":"]"}]}"#),
            ("f", "true"),
            ("g", "null"),
        ];
        assert_eq!(m.len(), want.len());
        for ((k, v), (wk, wv)) in m.iter().zip(want) {
            assert_eq!((k.as_str(), v.as_str()), (wk, wv));
        }
        assert_eq!(members("{}"), Some(vec![]));
    }

    #[test]
    fn not_one_whole_object() {
        for bad in [
            "",
            "[]",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1",
            "{\"a\":1,}",
            "{\"a\":1}x",
            "{\"a\":\"x}",
            "{\"a\":{\"b\":1}",
            "{a:1}",
            "{\"a\":1 \"b\":2}",
        ] {
            assert_eq!(members(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_prefix_of_a_message_is_refused_without_panic() {
        let m = br#"{"ch":"bench.0","seq":17,"data":{"p":0,"n":3,"t":99,"s":100,"pad":"x\\y"}}"#;
        for cut in 0..m.len() {
            assert!(!for_each_member(&m[..cut], |_, _| {}), "cut {cut}");
        }
        assert!(for_each_member(m, |_, _| {}));
    }

    #[test]
    fn unsigned_integers() {
        assert_eq!(uint(b"0"), Some(0));
        assert_eq!(uint(b"58"), Some(58));
        assert_eq!(uint(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b"18446744073709551616"[..],
            b"",
            b"-1",
            b"01",
            b"1.0",
            b"1e3",
            b"\"1\"",
            b"1x",
        ] {
            assert_eq!(uint(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(leading_uint(b"12,\"n\""), Some((12, &b",\"n\""[..])));
    }

    #[test]
    fn eight_at_a_time_matches_one_at_a_time() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let tails: [&[u8]; 6] = [b"", b",", b"}", b".5", b"x12345678", b"\x00"];
        let check = |s: &[u8]| {
            assert_eq!(
                leading_uint(s),
                leading_uint_slow(s),
                "{:?}",
                String::from_utf8_lossy(s)
            );
        };
        for len in 0..=21 {
            for _ in 0..300 {
                let mut s: Vec<u8> = (0..len).map(|_| b'0' + rng.gen_range(0..10)).collect();
                if rng.gen_bool(0.3) && len > 0 {
                    s[0] = b'1' + rng.gen_range(0..9);
                }
                for tail in tails {
                    let mut t = s.clone();
                    t.extend_from_slice(tail);
                    check(&t);
                }
            }
            for edge in [b'/', b':', 0xFA, 0xFF, 0x00, b'0', b'9'] {
                for at in 0..len {
                    let mut s = vec![b'7'; len];
                    s[at] = edge;
                    check(&s);
                }
            }
        }
        for n in [
            0,
            9,
            10,
            99_999_999,
            100_000_000,
            u64::MAX / 10,
            u64::MAX - 1,
            u64::MAX,
        ] {
            check(n.to_string().as_bytes());
        }
        check(b"18446744073709551616");
        check(b"99999999999999999999");
    }

    #[test]
    fn skipping_agrees_with_reading() {
        for s in [
            &b"0,"[..],
            b"7",
            b"01",
            b"",
            b"x",
            b"12345678901234,",
            b"1234567890123456789012",
            b"18446744073709551615}",
            b"18446744073709551616}",
            b"1.5",
            b"12e3",
            b"123456789",
        ] {
            assert_eq!(
                skip_uint(s),
                leading_uint(s).map(|(_, rest)| rest),
                "{:?}",
                String::from_utf8_lossy(s)
            );
        }
        // Every length around the one-, two- and three-word boundaries, with each tail.
        for len in 0..=22 {
            for first in [b'0', b'1', b'9'] {
                for tail in [&b""[..], b",", b".5", b"e1", b"x"] {
                    let mut s: Vec<u8> = (0..len).map(|i| b'0' + (i % 10) as u8).collect();
                    if let Some(d) = s.first_mut() {
                        *d = first;
                    }
                    s.extend_from_slice(tail);
                    assert_eq!(
                        skip_uint(&s),
                        leading_uint_slow(&s).map(|(_, rest)| rest),
                        "{:?}",
                        String::from_utf8_lossy(&s)
                    );
                }
            }
        }
    }

    #[test]
    fn quotes_are_found_where_position_finds_them() {
        for len in 0..=24 {
            for at in 0..=len {
                let mut s = vec![b'a'; len];
                if at < len {
                    s[at] = b'"';
                }
                // A second quote later must not be the answer.
                s.extend_from_slice(b"x\"");
                for (i, b) in [0x22u8 ^ 0x80, 0x02, 0xA2].into_iter().enumerate() {
                    if at > i {
                        s[i] = b;
                    }
                }
                assert_eq!(find_quote(&s), s.iter().position(|&b| b == b'"'), "{s:?}");
            }
        }
        assert_eq!(find_quote(b""), None);
        assert_eq!(find_quote(b"abcdefghijk"), None);
    }

    #[test]
    fn plain_strings() {
        assert_eq!(plain_str(b"\"bench.0\""), Some(&b"bench.0"[..]));
        assert_eq!(plain_str(b"\"a\\nb\""), None);
        assert_eq!(plain_str(b"\"a\x01b\""), None);
        assert_eq!(plain_str(b"12"), None);
        assert!(plain_content(&[b'x'; 100]));
        for at in 0..40 {
            let mut s = vec![b'x'; 40];
            s[at] = b'"';
            assert!(!plain_content(&s));
        }
    }

    #[test]
    fn a_word_at_a_time_agrees_with_a_byte_at_a_time() {
        let reference = |s: &[u8]| s.iter().all(|&b| b != b'"' && b != b'\\' && b >= 0x20);
        // Every byte value at every place of strings that fill whole words and leave a
        // remainder, among neighbours that sit next to each boundary (0x1f/0x20, 0x21..0x23,
        // 0x5b..0x5d, 0x7f/0x80, 0xff).
        for len in [1usize, 7, 8, 9, 16, 23] {
            for fill in [b'x', 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xff] {
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut s = vec![fill; len];
                        s[at] = b;
                        assert_eq!(plain_content(&s), reference(&s), "{s:?}");
                    }
                }
            }
        }
        assert!(plain_content(b""));
    }
}
