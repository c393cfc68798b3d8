// Oracles for the frame_header, decoder and close_payload fuzz targets.
//
// This file is `include!`d twice: by each fuzz target (with `use starling::proto;`) and by the
// seed-replay unit test in `src/proto/decoder/tests.rs` (with `use crate::proto;`), so the
// stable test suite replays the committed seeds through exactly the checks the fuzzer runs.
// Every function panics when a property is violated; that is what the fuzzer looks for.

/// An event with owned bytes, so runs of the decoder can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

impl Owned {
    pub fn of(ev: &proto::Event<'_>) -> Owned {
        match *ev {
            proto::Event::Text(p) => Owned::Text(p.to_vec()),
            proto::Event::Binary(p) => Owned::Binary(p.to_vec()),
            proto::Event::Ping(p) => Owned::Ping(p.to_vec()),
            proto::Event::Pong(p) => Owned::Pong(p.to_vec()),
            proto::Event::Close(c) => Owned::Close(c.map(|(code, why)| (code.0, why.to_string()))),
        }
    }
}

/// What a decoder made of a stream: its events, and the error that stopped it, if any.
pub type Outcome = (Vec<Owned>, Option<proto::ProtoError>);

/// Feeds `stream` to a fresh decoder in pieces whose sizes cycle through `sizes` (each clamped
/// to 1..=rest; empty `sizes` means one piece). With `stop`, the callback answers `Flow::Stop`
/// to every event and the rest of the piece is fed again, as a caller that pauses would.
/// Checks the feed contract on the way: consumed counts, poisoning, nothing after Close.
pub fn decode_pieces(
    role: proto::Role,
    max_message: usize,
    stream: &[u8],
    sizes: &[usize],
    stop: bool,
) -> Outcome {
    let mut dec = proto::Decoder::new(role, max_message);
    let mut buf = stream.to_vec();
    let mut events: Vec<Owned> = Vec::new();
    let (mut at, mut turn) = (0, 0);
    while at < buf.len() {
        let size = sizes
            .get(turn % sizes.len().max(1))
            .copied()
            .unwrap_or(usize::MAX);
        let end = at + size.clamp(1, buf.len() - at);
        turn += 1;
        while at < end {
            let before = events.len();
            let res = dec.feed(&mut buf[at..end], |ev| {
                assert!(
                    !matches!(events.last(), Some(Owned::Close(_))),
                    "event after Close"
                );
                events.push(Owned::of(&ev));
                if stop {
                    proto::Flow::Stop
                } else {
                    proto::Flow::Continue
                }
            });
            match res {
                Ok(n) => {
                    assert!(n <= end - at, "consumed {n} of {}", end - at);
                    if n < end - at {
                        // Only a Stop ends a feed early, and only after a frame (n > 0).
                        assert!(stop && n > 0 && events.len() > before, "short feed {n}");
                    }
                    at += n;
                }
                Err(e) => {
                    // Poisoned: the same error again, and no events.
                    let again = dec.feed(&mut [0x81, 0x00], |_| panic!("event after error"));
                    assert_eq!(again, Err(e));
                    assert_eq!(dec.heap_bytes(), 0, "heap kept after error");
                    return (events, Some(e));
                }
            }
        }
    }
    let closed = matches!(events.last(), Some(Owned::Close(_)));
    assert_eq!(dec.is_closed(), closed);
    if closed {
        assert_eq!(dec.heap_bytes(), 0, "heap kept after Close");
    }
    if dec.is_idle() {
        assert_eq!(dec.heap_bytes(), 0, "heap kept while idle");
    }
    (events, None)
}

/// Decoder target. Input: flags byte, split seed byte, then the stream.
/// Flags: bit 0 client role; bits 1-2 pick `max_message`; bit 3 large pieces.
/// The stream decoded whole, split into pieces, and split with a Stop after every event, must
/// give the same events and the same error.
pub fn check_decoder(data: &[u8]) -> Outcome {
    let (flags, seed, stream) = match data {
        [f, s, rest @ ..] => (*f, *s, rest),
        _ => return (Vec::new(), None),
    };
    let role = if flags & 1 == 0 {
        proto::Role::Server
    } else {
        proto::Role::Client
    };
    let max = [1 << 20, 125, 0, 70_000][usize::from((flags >> 1) & 3)];
    let span = if flags & 8 == 0 { 16 } else { 4096 };
    // A small xorshift turns the seed into piece sizes, so every seed byte is a different split.
    let mut x = u32::from(seed) | 0x100;
    let sizes: Vec<usize> = (0..16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            1 + x as usize % span
        })
        .collect();
    let whole = decode_pieces(role, max, stream, &[], false);
    let split = decode_pieces(role, max, stream, &sizes, false);
    assert_eq!(whole, split, "split {sizes:?}");
    let paused = decode_pieces(role, max, stream, &sizes, true);
    assert_eq!(whole, paused, "split {sizes:?} with stops");
    whole
}

/// Frame header target: any prefix of a header is "need more" or the same error; a parsed
/// header re-encodes (in minimal form) to one that parses back the same.
pub fn check_frame_header(
    data: &[u8],
) -> Result<Option<(proto::FrameHeader, usize)>, proto::ProtoError> {
    let parse = proto::FrameHeader::parse;
    let whole = parse(data);
    let upto = match whole {
        Ok(Some((_, n))) => n,
        _ => data.len().min(proto::MAX_HEADER_LEN),
    };
    for cut in 0..upto {
        let part = parse(&data[..cut]);
        assert!(
            part == Ok(None) || part == whole,
            "cut {cut}: {part:?} vs {whole:?}"
        );
    }
    match whole {
        Ok(Some((h, n))) => {
            assert!((2..=proto::MAX_HEADER_LEN).contains(&n) && n <= data.len());
            assert!(h.payload_len >> 63 == 0);
            if h.opcode.is_control() {
                assert!(h.fin && h.payload_len <= proto::MAX_CONTROL_PAYLOAD as u64);
            }
            let mut out = [0u8; proto::MAX_HEADER_LEN];
            let m = proto::encode_header(&mut out, h.fin, h.opcode, h.payload_len, h.mask);
            assert!(m <= n);
            assert_eq!(parse(&out[..m]), Ok(Some((h, m))));
        }
        Ok(None) => assert!(data.len() < proto::MAX_HEADER_LEN),
        Err(_) => {}
    }
    whole
}

/// Close payload target: a parsed payload rebuilds to the same bytes and decodes the same way
/// when it arrives in a frame; any string as a reason builds a payload that fits and parses.
pub fn check_close_payload(
    data: &[u8],
) -> Result<Option<(proto::CloseCode, String)>, proto::ProtoError> {
    let parsed = proto::close::parse_close_payload(data);
    let mut out = [0u8; proto::MAX_CONTROL_PAYLOAD];
    if let Ok(Some((code, reason))) = parsed {
        assert!(code.is_allowed_on_wire());
        let n = proto::close::close_payload(&mut out, code, reason);
        assert_eq!(&out[..n], data);
    }
    if data.len() <= proto::MAX_CONTROL_PAYLOAD {
        let mut frame = Vec::new();
        proto::frame::encode_frame_into(&mut frame, proto::OpCode::Close, data, None);
        let (events, err) = decode_pieces(proto::Role::Client, 0, &frame, &[], false);
        match parsed {
            Ok(c) => {
                let expect = c.map(|(code, why)| (code.0, why.to_string()));
                assert_eq!((events, err), (vec![Owned::Close(expect)], None));
            }
            Err(e) => assert_eq!((events, err), (vec![], Some(e))),
        }
    }
    let text = String::from_utf8_lossy(data);
    let n = proto::close::close_payload(&mut out, proto::CloseCode::GOING_AWAY, &text);
    match proto::close::parse_close_payload(&out[..n]) {
        Ok(Some((code, reason))) => {
            assert_eq!(code, proto::CloseCode::GOING_AWAY);
            assert!(text.starts_with(reason));
            // Cut only when the next character would not have fitted.
            if let Some(next) = text[reason.len()..].chars().next() {
                assert!(reason.len() + next.len_utf8() > proto::MAX_CONTROL_PAYLOAD - 2);
            }
        }
        other => panic!("built payload did not parse: {other:?}"),
    }
    parsed.map(|c| c.map(|(code, why)| (code, why.to_string())))
}
