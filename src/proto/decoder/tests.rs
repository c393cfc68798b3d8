//! Decoder tests: every rejection, fragmentation with interleaved control frames, memory
//! behaviour, a round-trip property over arbitrary read splits in both roles, and the replay
//! of the committed fuzz seeds.

use super::*;
use crate::proto::frame::encode_header;
use checks::{decode_pieces, Owned};
use proptest::prelude::*;

/// The fuzz targets' oracles, compiled here too so the seeds replay on stable.
#[allow(dead_code)]
mod checks {
    use crate::proto;
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/checks.rs"));
}

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const MAX: usize = 1 << 20;

/// One frame: header via `encode_header`, payload masked with `mask` if any.
fn frame(fin: bool, op: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut h, fin, op, payload.len() as u64, mask);
    let mut out = h[..n].to_vec();
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
    out
}

/// A masked frame as a client sends it.
fn cf(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    frame(fin, op, payload, Some(KEY))
}

/// A masked final frame with its first header byte replaced (for bad bits and opcodes).
fn raw(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = cf(true, OpCode::Binary, payload);
    f[0] = b0;
    f
}

/// Decodes `stream` in one piece with a server-role decoder.
fn server(stream: &[u8]) -> checks::Outcome {
    decode_pieces(Role::Server, MAX, stream, &[], false)
}

/// Decodes `stream` fed one byte at a time.
fn server_bytewise(stream: &[u8], max: usize) -> checks::Outcome {
    decode_pieces(Role::Server, max, stream, &[1], false)
}

fn fails(stream: &[u8], e: ProtoError) {
    assert_eq!(server(stream), (vec![], Some(e)));
    assert_eq!(server_bytewise(stream, MAX), (vec![], Some(e)));
}

#[test]
fn decoder_fits_its_byte_budget() {
    use std::mem::size_of;
    // The table on `Decoder`: 56 bytes on 64-bit targets, the promise to callers is <= 64.
    assert!(size_of::<Decoder>() <= 64, "{}", size_of::<Decoder>());
    if cfg!(target_pointer_width = "64") {
        assert_eq!(size_of::<Decoder>(), 56);
        assert_eq!(size_of::<Stage>(), 16);
        assert_eq!(size_of::<Frame>(), 16);
    }
}

#[test]
fn rfc_5_7_examples() {
    let hello = Owned::Text(b"Hello".to_vec());
    // Unmasked, to a client; masked with the RFC's key, to a server.
    let unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    let masked = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let client = decode_pieces(Role::Client, MAX, &unmasked, &[], false);
    assert_eq!(client, (vec![hello.clone()], None));
    assert_eq!(server(&masked), (vec![hello.clone()], None));
    // Fragmented "Hel" + "lo", and an unmasked ping.
    let frags = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
    let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    let out = decode_pieces(
        Role::Client,
        MAX,
        &[&frags[..], &ping].concat(),
        &[1],
        false,
    );
    assert_eq!(out, (vec![hello, Owned::Ping(b"Hello".to_vec())], None));
}

#[test]
fn masking_must_match_the_role() {
    fails(&frame(true, OpCode::Text, b"hi", None), ProtoError::BadMask);
    let to_client = decode_pieces(
        Role::Client,
        MAX,
        &cf(true, OpCode::Text, b"hi"),
        &[],
        false,
    );
    assert_eq!(to_client, (vec![], Some(ProtoError::BadMask)));
    assert_eq!(ProtoError::BadMask.close_code(), CloseCode::PROTOCOL_ERROR);
}

#[test]
fn header_rejections() {
    for bit in [0x40u8, 0x20, 0x10] {
        fails(&raw(0x82 | bit, b"x"), ProtoError::ReservedBits);
    }
    for op in (0x3u8..=0x7).chain(0xB..=0xF) {
        fails(&raw(0x80 | op, b"x"), ProtoError::ReservedOpcode);
    }
    fails(
        &cf(true, OpCode::Ping, &[0; 126]),
        ProtoError::ControlTooLong,
    );
    fails(
        &cf(false, OpCode::Ping, b"x"),
        ProtoError::FragmentedControl,
    );
    fails(
        &cf(false, OpCode::Close, b""),
        ProtoError::FragmentedControl,
    );
    let mut msb = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1];
    msb.extend_from_slice(&KEY);
    fails(&msb, ProtoError::BadLength);
}

#[test]
fn continuation_rules() {
    fails(
        &cf(true, OpCode::Continuation, b"x"),
        ProtoError::UnexpectedContinuation,
    );
    for second in [OpCode::Text, OpCode::Binary] {
        let s = [cf(false, OpCode::Text, b"a"), cf(true, second, b"b")].concat();
        fails(&s, ProtoError::ExpectedContinuation);
    }
    // A finished message closes the fragment sequence: a continuation after it is unexpected.
    let s = [
        cf(false, OpCode::Binary, b"a"),
        cf(true, OpCode::Continuation, b"b"),
    ]
    .concat();
    let s = [s, cf(true, OpCode::Continuation, b"c")].concat();
    let out = server(&s);
    assert_eq!(out.0, vec![Owned::Binary(b"ab".to_vec())]);
    assert_eq!(out.1, Some(ProtoError::UnexpectedContinuation));
}

#[test]
fn invalid_utf8_fails_at_the_fragment_that_makes_it_invalid() {
    let first = cf(false, OpCode::Text, &["aκ".as_bytes(), &[0xED]].concat());
    let second = cf(false, OpCode::Continuation, &[0xA0, 0x80]); // ED A0 80: a surrogate
    let mut dec = Decoder::new(Role::Server, MAX);
    let mut f = first.clone();
    assert_eq!(dec.feed(&mut f, |_| Flow::Continue), Ok(first.len()));
    let mut s = second.clone();
    assert_eq!(
        dec.feed(&mut s, |_| Flow::Continue),
        Err(ProtoError::InvalidUtf8)
    );
    assert_eq!(
        ProtoError::InvalidUtf8.close_code(),
        CloseCode::INVALID_PAYLOAD
    );

    // Inside one frame split across reads: fails at the bad byte, 90 bytes before the end.
    let mut payload = vec![b'a'; 100];
    payload[10] = 0xFF;
    let mut stream = cf(true, OpCode::Text, &payload);
    let mut dec = Decoder::new(Role::Server, MAX);
    let (head, tail) = stream.split_at_mut(6 + 10);
    assert_eq!(dec.feed(head, |_| Flow::Continue), Ok(16));
    assert_eq!(
        dec.feed(&mut tail[..1], |_| Flow::Continue),
        Err(ProtoError::InvalidUtf8)
    );

    // A message ending inside a code point fails at its end.
    let s = [
        cf(false, OpCode::Text, b"ok"),
        cf(true, OpCode::Continuation, &[0xE2, 0x82]),
    ];
    fails(&s.concat(), ProtoError::InvalidUtf8);
}

#[test]
fn close_frames() {
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        fails(
            &cf(true, OpCode::Close, &code.to_be_bytes()),
            ProtoError::BadCloseCode,
        );
    }
    fails(
        &cf(true, OpCode::Close, &[0x03]),
        ProtoError::BadClosePayload,
    );
    fails(
        &cf(true, OpCode::Close, b"\x03\xe8\xff"),
        ProtoError::InvalidUtf8,
    );

    // A valid close ends decoding: the garbage after it is consumed and ignored.
    let close = cf(true, OpCode::Close, b"\x03\xe8bye");
    let s = [close.clone(), vec![0xFF; 20]].concat();
    let expect = (vec![Owned::Close(Some((1000, "bye".into())))], None);
    assert_eq!(server(&s), expect);
    assert_eq!(server_bytewise(&s, MAX), expect);
    let empty = server(&cf(true, OpCode::Close, b""));
    assert_eq!(empty, (vec![Owned::Close(None)], None));

    let mut dec = Decoder::new(Role::Server, MAX);
    let mut buf = s.clone();
    assert_eq!(dec.feed(&mut buf, |_| Flow::Continue), Ok(s.len()));
    assert!(dec.is_closed() && dec.is_idle());
    let mut more = cf(true, OpCode::Text, b"late");
    assert_eq!(
        dec.feed(&mut more, |_| panic!("event after close")),
        Ok(more.len())
    );
}

/// Whole small frames take the decoder's fast path; the same bytes fed one at a time never
/// can. Over every first byte, both mask bits, lengths around the 7-bit limit and a size
/// limit of 40 bytes, in both roles, with valid and invalid UTF-8 payloads, the two agree on
/// every event and every error, and a frame following the first is decoded the same too.
#[test]
fn small_frame_fast_path_agrees_with_the_general_path() {
    let mut cases = 0;
    for role in [Role::Server, Role::Client] {
        for b0 in 0..=255u8 {
            for masked in [false, true] {
                for len in [0usize, 1, 5, 40, 41, 125] {
                    for payload_byte in [b'a', 0xFF] {
                        let payload = vec![payload_byte; len];
                        let mask = masked.then_some(KEY);
                        let mut stream = frame(true, OpCode::Binary, &payload, mask);
                        stream[0] = b0;
                        stream.extend(frame(true, OpCode::Text, b"next", mask));
                        let whole = decode_pieces(role, 40, &stream, &[], false);
                        let bytewise = decode_pieces(role, 40, &stream, &[1], false);
                        assert_eq!(
                            whole, bytewise,
                            "{role:?} b0 {b0:#x} masked {masked} len {len}"
                        );
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 2 * 256 * 2 * 6 * 2);
}

#[test]
fn oversized_single_frame_fails_from_the_header() {
    let mut dec = Decoder::new(Role::Server, 1000);
    let mut header = cf(true, OpCode::Binary, &[0; 1001]);
    header.truncate(8); // 2 + 2 (length 1001) + 4 (key): no payload byte yet
    assert_eq!(
        dec.feed(&mut header, |_| Flow::Continue),
        Err(ProtoError::MessageTooBig)
    );
    assert_eq!(dec.heap_bytes(), 0);
    assert_eq!(ProtoError::MessageTooBig.close_code(), CloseCode::TOO_BIG);
    // Exactly the limit is fine.
    let ok = decode_pieces(
        Role::Server,
        1000,
        &cf(true, OpCode::Binary, &[7; 1000]),
        &[],
        false,
    );
    assert_eq!(ok, (vec![Owned::Binary(vec![7; 1000])], None));
}

#[test]
fn oversized_by_accumulated_fragments() {
    let s = [
        cf(false, OpCode::Text, b"123456"),
        cf(true, OpCode::Ping, b"p"),
        cf(true, OpCode::Continuation, b"78901"),
    ]
    .concat();
    let expect = (
        vec![Owned::Ping(b"p".to_vec())],
        Some(ProtoError::MessageTooBig),
    );
    assert_eq!(decode_pieces(Role::Server, 10, &s, &[], false), expect);
    assert_eq!(server_bytewise(&s, 10), expect);
    assert_eq!(server_bytewise(&s, 11).1, None);
}

#[test]
fn control_frames_between_fragments() {
    let s = [
        cf(false, OpCode::Text, "frag".as_bytes()),
        cf(true, OpCode::Ping, b"ping 1"),
        cf(false, OpCode::Continuation, "mé".as_bytes()),
        cf(true, OpCode::Pong, b""),
        cf(true, OpCode::Ping, &[9; 125]),
        cf(true, OpCode::Continuation, "nté".as_bytes()),
        cf(true, OpCode::Binary, b"next"),
    ]
    .concat();
    let expect = vec![
        Owned::Ping(b"ping 1".to_vec()),
        Owned::Pong(vec![]),
        Owned::Ping(vec![9; 125]),
        Owned::Text("fragménté".as_bytes().to_vec()),
        Owned::Binary(b"next".to_vec()),
    ];
    for sizes in [&[][..], &[1], &[2, 3], &[7, 1, 30]] {
        let out = decode_pieces(Role::Server, MAX, &s, sizes, false);
        assert_eq!(out, (expect.clone(), None), "sizes {sizes:?}");
    }
}

#[test]
fn error_poisons_the_decoder() {
    let mut dec = Decoder::new(Role::Server, MAX);
    let mut bad = raw(0xC1, b"x");
    assert_eq!(
        dec.feed(&mut bad, |_| Flow::Continue),
        Err(ProtoError::ReservedBits)
    );
    let mut good = cf(true, OpCode::Text, b"fine");
    assert_eq!(
        dec.feed(&mut good, |_| panic!("event")),
        Err(ProtoError::ReservedBits)
    );
    assert_eq!(
        dec.feed(&mut [], |_| panic!("event")),
        Err(ProtoError::ReservedBits)
    );
}

#[test]
fn stop_returns_the_index_after_the_frame() {
    let a = cf(true, OpCode::Text, b"one");
    let b = cf(true, OpCode::Binary, b"two");
    let mut buf = [a.clone(), b.clone()].concat();
    let original = buf.clone();
    let mut dec = Decoder::new(Role::Server, MAX);
    let mut seen = 0;
    let n = dec.feed(&mut buf, |_| {
        seen += 1;
        Flow::Stop
    });
    assert_eq!((n, seen), (Ok(a.len()), 1));
    assert_eq!(
        &buf[a.len()..],
        &original[a.len()..],
        "bytes after the stop are untouched"
    );
    let mut got = Vec::new();
    let rest = dec.feed(&mut buf[a.len()..], |ev| {
        got.push(Owned::of(&ev));
        Flow::Continue
    });
    assert_eq!(rest, Ok(b.len()));
    assert_eq!(got, vec![Owned::Binary(b"two".to_vec())]);
}

#[test]
fn whole_message_in_the_buffer_is_zero_copy() {
    let mut buf = cf(true, OpCode::Text, &[b'z'; 300]);
    let range = buf.as_ptr_range();
    let mut dec = Decoder::new(Role::Server, MAX);
    let mut inside = false;
    dec.feed(&mut buf, |ev| {
        if let Event::Text(p) = ev {
            inside = range.contains(&p.as_ptr()) && p.len() == 300;
        }
        Flow::Continue
    })
    .unwrap();
    assert!(inside, "the event borrows the read buffer");
    assert_eq!(dec.heap_bytes(), 0);
    assert!(dec.is_idle());
}

#[test]
fn spanning_message_releases_its_heap() {
    let stream = cf(true, OpCode::Binary, &[5; 1000]);
    let mut buf = stream.clone();
    let mut dec = Decoder::new(Role::Server, MAX);
    let (a, b) = buf.split_at_mut(500);
    assert_eq!(dec.feed(a, |_| panic!("early event")), Ok(500));
    assert!(dec.heap_bytes() > 0 && !dec.is_idle());
    let mut len = 0;
    dec.feed(b, |ev| {
        if let Event::Binary(p) = ev {
            len = p.len();
        }
        Flow::Continue
    })
    .unwrap();
    assert_eq!((len, dec.heap_bytes()), (1000, 0));
    assert!(dec.is_idle());

    // A ping split across reads, not inside a message, leaves no heap either.
    let ping = cf(true, OpCode::Ping, b"split ping");
    let mut dec = Decoder::new(Role::Server, MAX);
    for &b in &ping {
        dec.feed(&mut [b], |_| Flow::Continue).unwrap();
    }
    assert_eq!(dec.heap_bytes(), 0);
    assert!(dec.is_idle());
}

/// One message as the property test sends it.
#[derive(Debug, Clone)]
struct Msg {
    text: bool,
    payload: Vec<u8>,
    /// Fragment boundaries (sorted, may repeat: empty fragments).
    cuts: Vec<usize>,
    /// Control frames before fragment i: a payload length; even is a ping, odd a pong.
    controls: Vec<Option<usize>>,
}

/// Deterministic bytes from a seed (xorshift), so large payloads are cheap to generate.
fn bytes_from(mut x: u64, len: usize) -> Vec<u8> {
    x |= 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Exactly `len` bytes of UTF-8 mixing 1- to 4-byte characters.
fn text_from(seed: u64, len: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len);
    for b in bytes_from(seed, len) {
        let c = ['a', 'é', '€', '😀', ' '][usize::from(b) % 5];
        s.push(if s.len() + c.len_utf8() <= len {
            c
        } else {
            'a'
        });
        if s.len() == len {
            break;
        }
    }
    s.into_bytes()
}

fn message() -> impl Strategy<Value = Msg> {
    let size = prop_oneof![
        8 => 0usize..300,
        1 => Just(0usize),
        1 => Just(125usize),
        1 => Just(126usize),
        1 => Just(65_535usize),
        1 => Just(65_536usize),
    ];
    let cuts = prop::collection::vec(any::<prop::sample::Index>(), 0..4);
    let controls = prop::collection::vec(prop::option::weighted(0.3, 0usize..=125), 5);
    (any::<bool>(), size, any::<u64>(), cuts, controls).prop_map(
        |(text, len, seed, cuts, controls)| {
            let payload = if text {
                text_from(seed, len)
            } else {
                bytes_from(seed, len)
            };
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(len + 1)).collect();
            cuts.sort_unstable();
            Msg {
                text,
                payload,
                cuts,
                controls,
            }
        },
    )
}

/// Encodes the messages (masked with per-frame keys from `key_seed` when `mask`), then a
/// close and trailing garbage; returns the stream and the events a receiver must see.
fn encode(msgs: &[Msg], mask: bool, key_seed: u64) -> (Vec<u8>, Vec<Owned>) {
    let keys = bytes_from(key_seed, 4 * 64);
    let mut nth = 0;
    let mut key = || {
        nth = (nth + 1) % 64;
        mask.then(|| {
            [
                keys[4 * nth],
                keys[4 * nth + 1],
                keys[4 * nth + 2],
                keys[4 * nth + 3],
            ]
        })
    };
    let (mut stream, mut events) = (Vec::new(), Vec::new());
    for m in msgs {
        let bounds: Vec<usize> = std::iter::once(0)
            .chain(m.cuts.iter().copied())
            .chain(std::iter::once(m.payload.len()))
            .collect();
        let frags = bounds.len() - 1;
        for i in 0..frags {
            if let Some(n) = m.controls[i % m.controls.len()] {
                let p = bytes_from(n as u64, n);
                let op = if n % 2 == 0 {
                    OpCode::Ping
                } else {
                    OpCode::Pong
                };
                stream.extend(frame(true, op, &p, key()));
                events.push(if n % 2 == 0 {
                    Owned::Ping(p)
                } else {
                    Owned::Pong(p)
                });
            }
            let op = match (i, m.text) {
                (0, true) => OpCode::Text,
                (0, false) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            let piece = &m.payload[bounds[i]..bounds[i + 1]];
            stream.extend(frame(i + 1 == frags, op, piece, key()));
        }
        let p = m.payload.clone();
        events.push(if m.text {
            Owned::Text(p)
        } else {
            Owned::Binary(p)
        });
    }
    stream.extend(frame(true, OpCode::Close, b"\x0f\xa0done", key()));
    events.push(Owned::Close(Some((4000, "done".into()))));
    stream.extend([0xFF; 9]);
    (stream, events)
}

fn piece_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![1]),
        Just(vec![]),
        prop::collection::vec(1usize..20, 1..8),
        prop::collection::vec(1usize..70_000, 1..8),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Client frames (masked, random keys) fed to a server decoder in arbitrary read splits,
    /// with or without a Stop after each event, yield exactly the messages sent.
    #[test]
    fn client_to_server_round_trip(
        msgs in prop::collection::vec(message(), 0..5),
        key_seed in any::<u64>(),
        sizes in piece_sizes(),
        stop in any::<bool>(),
    ) {
        let (stream, expect) = encode(&msgs, true, key_seed);
        let out = decode_pieces(Role::Server, MAX, &stream, &sizes, stop);
        prop_assert_eq!(out, (expect, None));
    }

    /// The same from server to client: unmasked frames, client-role decoder.
    #[test]
    fn server_to_client_round_trip(
        msgs in prop::collection::vec(message(), 0..5),
        sizes in piece_sizes(),
        stop in any::<bool>(),
    ) {
        let (stream, expect) = encode(&msgs, false, 0);
        let out = decode_pieces(Role::Client, MAX, &stream, &sizes, stop);
        prop_assert_eq!(out, (expect, None));
    }

    /// Arbitrary bytes never panic, and any split agrees with the whole (the fuzz oracle).
    #[test]
    fn arbitrary_streams_agree_across_splits(data in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = checks::check_decoder(&data);
        let _ = checks::check_frame_header(&data);
        let _ = checks::check_close_payload(&data);
    }
}

/// The committed fuzz seeds still mean what their names say (`reject_*` fail, the rest decode
/// with at least one event), and pass every property the fuzz targets check.
#[test]
fn fuzz_seeds_replay() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut seen = 0;
    for target in ["frame_header", "decoder", "close_payload"] {
        let dir = root.join(target);
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let data = std::fs::read(entry.path()).unwrap();
            let rejected = match target {
                "frame_header" => checks::check_frame_header(&data).is_err(),
                "decoder" => {
                    let (events, err) = checks::check_decoder(&data);
                    assert!(
                        err.is_some() || !events.is_empty(),
                        "{target}/{name}: no events"
                    );
                    err.is_some()
                }
                _ => checks::check_close_payload(&data).is_err(),
            };
            assert_eq!(rejected, name.starts_with("reject"), "{target}/{name}");
            seen += 1;
        }
    }
    assert!(seen >= 30, "only {seen} seeds under {}", root.display());
}
