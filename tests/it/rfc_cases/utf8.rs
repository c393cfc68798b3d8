//! Category 6 of the Autobahn cases: UTF-8 in text messages, whole and fragmented.

use super::*;

/// "When an endpoint is to interpret a byte stream as UTF-8 but finds that the byte stream is
/// not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail the WebSocket Connection_."
/// (§8.1), with 1007: "the endpoint is terminating the connection because it has received data
/// within a message that was not consistent with the type of the message (e.g., non-UTF-8
/// [RFC3629] data within a text message)" (§7.4.1). Cases 6.1-6.4: empty fragments, fragments
/// cut inside code points, and failing at the fragment (or the part of a frame) that makes the
/// text invalid, before the rest is sent.
#[test]
fn autobahn_6_1_to_6_4_fragmented_text_and_fail_fast_on_invalid_utf8() {
    // 6.3.x: valid, then a UTF-16 surrogate (invalid from its second byte), then valid.
    let surrogate = [KOSME, b"\xed\xa0\x80", b"edited"].concat();
    // 6.4.x: valid, then 0x110000 in the UTF-8 integer encoding (invalid from its second byte,
    // 0x90, the 13th of the message), then valid. Never sent past the byte that proves it.
    let above_max = [KOSME, b"\xf4\x90\x80\x80", b"edited"].concat();
    let whole = text(&above_max);
    let head = whole.len() - above_max.len();
    check_all([
        case(
            "6.1.2",
            "text in 3 empty fragments",
            then_clean_close(vec![
                send(cat(&[
                    fragment(false, op::TEXT, b""),
                    fragment(false, op::CONT, b""),
                    fragment(true, op::CONT, b""),
                ])),
                expect(op::TEXT, b""),
            ]),
        ),
        case(
            "6.1.3",
            "text in 3 fragments, the first and last empty",
            then_clean_close(vec![
                send(cat(&[
                    fragment(false, op::TEXT, b""),
                    fragment(false, op::CONT, b"middle frame payload"),
                    fragment(true, op::CONT, b""),
                ])),
                expect(op::TEXT, b"middle frame payload"),
            ]),
        ),
        case(
            "6.2.3",
            "valid multi-byte text in fragments of 1 byte",
            then_clean_close(vec![
                send(one_byte_fragments(op::TEXT, HELLO_UTF8.as_bytes())),
                expect(op::TEXT, HELLO_UTF8),
            ]),
        ),
        case(
            "6.2.4",
            "κόσμε in fragments of 1 byte",
            then_clean_close(vec![
                send(one_byte_fragments(op::TEXT, KOSME)),
                expect(op::TEXT, KOSME),
            ]),
        ),
        case(
            "6.3.1",
            "valid text, a surrogate, valid text, in one frame",
            vec![send(text(&surrogate)), fails(INVALID_PAYLOAD)],
        ),
        case(
            "6.3.2",
            "the same in fragments of 1 byte",
            vec![
                send(one_byte_fragments(op::TEXT, &surrogate)),
                fails(INVALID_PAYLOAD),
            ],
        ),
        case(
            "6.4.1",
            "3 fragments: valid (accepted), then the invalid code point: fail before the third",
            vec![
                send(fragment(false, op::TEXT, KOSME)),
                send(ping(b"A")),
                expect(op::PONG, b"A"),
                send(fragment(false, op::CONT, &above_max[11..15])),
                fails(INVALID_PAYLOAD),
            ],
        ),
        case(
            "6.4.2",
            "the same, the second fragment only the byte that makes the text invalid",
            vec![
                send(fragment(false, op::TEXT, &above_max[..12])),
                send(ping(b"A")),
                expect(op::PONG, b"A"),
                send(fragment(false, op::CONT, &above_max[12..13])),
                fails(INVALID_PAYLOAD),
            ],
        ),
        case(
            "6.4.3",
            "one frame in chops: fail at the second, the third never sent",
            vec![
                send(whole[..head + 11].to_vec()),
                send(whole[head + 11..head + 15].to_vec()),
                fails(INVALID_PAYLOAD),
            ],
        ),
        case(
            "6.4.4",
            "the same, the second chop only the byte that makes the text invalid",
            vec![
                send(whole[..head + 12].to_vec()),
                send(whole[head + 12..head + 13].to_vec()),
                fails(INVALID_PAYLOAD),
            ],
        ),
    ]);
}

/// A subcategory of Autobahn's UTF-8 cases: its name and its sequences, each with whether it is
/// valid UTF-8.
type Utf8Group = (&'static str, Vec<(bool, Vec<u8>)>);

/// Autobahn's UTF-8 sequences, cases 6.5.x-6.23.x (taken from Markus Kuhn's UTF-8-test.txt),
/// one group per subcategory in case order (the first is 6.5).
#[rustfmt::skip]
fn utf8_groups() -> Vec<Utf8Group> {
    let v = |s: &[u8]| (true, s.to_vec());
    let x = |s: &[u8]| (false, s.to_vec());
    let prefixes = (1..=KOSME.len())
        .map(|n| (matches!(n, 2 | 5 | 7 | 9 | 11), KOSME[..n].to_vec()))
        .collect();
    let lonely = [(0xc0u8, 0xdfu8), (0xe0, 0xef), (0xf0, 0xf7), (0xf8, 0xfb), (0xfc, 0xfd)]
        .iter()
        .map(|&(lo, hi)| (false, (lo..hi).flat_map(|b| [b, b' ']).collect()))
        .collect();
    let missing_last: [&[u8]; 10] = [b"\xc0", b"\xe0\x80", b"\xf0\x80\x80", b"\xf8\x80\x80\x80",
        b"\xfc\x80\x80\x80\x80", b"\xdf", b"\xef\xbf", b"\xf7\xbf\xbf", b"\xfb\xbf\xbf\xbf",
        b"\xfd\xbf\xbf\xbf\xbf"];
    let mut nonchars = vec![v(b"\xef\xbf\xbe"), v(b"\xef\xbf\xbf")];
    for z1 in [0xf0u8, 0xf1, 0xf2, 0xf3, 0xf4] {
        for z2 in [0x8fu8, 0x9f, 0xaf, 0xbf] {
            // F4 9F.. and up are above U+10FFFF; F0 8F.. is overlong: Autobahn skips both.
            if (z1 == 0xf4 && z2 != 0x8f) || (z1 == 0xf0 && z2 == 0x8f) {
                continue;
            }
            for z3 in [0xbeu8, 0xbf] {
                nonchars.push((true, vec![z1, z2, 0xbf, z3]));
            }
        }
    }
    vec![
        ("valid sequences", vec![v(b"hello\x24world"), v(b"hello\xc2\xa2world"),
            v(b"hello\xe2\x82\xacworld"), v(b"hello\xf0\xa4\xad\xa2world"), v(KOSME)]),
        ("every prefix of a valid string with multi-byte code points", prefixes),
        ("first possible sequence of each length", vec![v(b"\x00"), v(b"\xc2\x80"),
            v(b"\xe0\xa0\x80"), v(b"\xf0\x90\x80\x80")]),
        ("first possible 5- and 6-byte sequences", vec![x(b"\xf8\x88\x80\x80\x80"),
            x(b"\xfc\x84\x80\x80\x80\x80")]),
        ("last possible sequence of each length", vec![v(b"\x7f"), v(b"\xdf\xbf"),
            v(b"\xef\xbf\xbf"), v(b"\xf4\x8f\xbf\xbf")]),
        ("last possible 4-, 5- and 6-byte sequences", vec![x(b"\xf7\xbf\xbf\xbf"),
            x(b"\xfb\xbf\xbf\xbf\xbf"), x(b"\xfd\xbf\xbf\xbf\xbf\xbf")]),
        ("other boundary conditions", vec![v(b"\xed\x9f\xbf"), v(b"\xee\x80\x80"),
            v(b"\xef\xbf\xbd"), v(b"\xf4\x8f\xbf\xbf"), x(b"\xf4\x90\x80\x80")]),
        ("unexpected continuation bytes", vec![x(b"\x80"), x(b"\xbf"), x(b"\x80\xbf"),
            x(b"\x80\xbf\x80"), x(b"\x80\xbf\x80\xbf"), x(b"\x80\xbf\x80\xbf\x80"),
            x(b"\x80\xbf\x80\xbf\x80\xbf"), (false, (0x80..0xbf).collect())]),
        ("lonely start bytes, each followed by a space", lonely),
        ("sequences with the last continuation byte missing",
            missing_last.iter().map(|s| x(s)).collect()),
        ("concatenation of incomplete sequences", vec![(false, missing_last.concat())]),
        ("impossible bytes", vec![x(b"\xfe"), x(b"\xff"), x(b"\xfe\xfe\xff\xff")]),
        ("overlong encodings of '/'", vec![x(b"\xc0\xaf"), x(b"\xe0\x80\xaf"),
            x(b"\xf0\x80\x80\xaf"), x(b"\xf8\x80\x80\x80\xaf"), x(b"\xfc\x80\x80\x80\x80\xaf")]),
        ("maximum overlong sequences", vec![x(b"\xc1\xbf"), x(b"\xe0\x9f\xbf"),
            x(b"\xf0\x8f\xbf\xbf"), x(b"\xf8\x87\xbf\xbf\xbf"), x(b"\xfc\x83\xbf\xbf\xbf\xbf")]),
        ("overlong encodings of NUL", vec![x(b"\xc0\x80"), x(b"\xe0\x80\x80"),
            x(b"\xf0\x80\x80\x80"), x(b"\xf8\x80\x80\x80\x80"), x(b"\xfc\x80\x80\x80\x80\x80")]),
        ("single UTF-16 surrogates", vec![x(b"\xed\xa0\x80"), x(b"\xed\xad\xbf"),
            x(b"\xed\xae\x80"), x(b"\xed\xaf\xbf"), x(b"\xed\xb0\x80"), x(b"\xed\xbe\x80"),
            x(b"\xed\xbf\xbf")]),
        ("paired UTF-16 surrogates", vec![x(b"\xed\xa0\x80\xed\xb0\x80"),
            x(b"\xed\xa0\x80\xed\xbf\xbf"), x(b"\xed\xad\xbf\xed\xb0\x80"),
            x(b"\xed\xad\xbf\xed\xbf\xbf"), x(b"\xed\xae\x80\xed\xb0\x80"),
            x(b"\xed\xae\x80\xed\xbf\xbf"), x(b"\xed\xaf\xbf\xed\xb0\x80"),
            x(b"\xed\xaf\xbf\xed\xbf\xbf")]),
        ("non-character code points (valid UTF-8)", nonchars),
        ("Unicode specials", vec![v(b"\xef\xbf\xb9"), v(b"\xef\xbf\xba"), v(b"\xef\xbf\xbb"),
            v(b"\xef\xbf\xbc"), v(b"\xef\xbf\xbd"), v(b"\xef\xbf\xbe"), v(b"\xef\xbf\xbf")]),
    ]
}

/// Cases 6.5.x-6.23.x: each sequence as a text message, which is echoed if it is valid UTF-8
/// and fails the connection with 1007 if not. Autobahn sends each in one frame; here each is
/// also written octet by octet, sent as fragments of one byte, and both, so the validator meets
/// every sequence cut at every point, within a frame, across frames, and across reads.
#[test]
fn autobahn_6_5_to_6_23_utf8_sequences_are_echoed_or_fail_with_1007() {
    let mut cases = Vec::new();
    for (g, (group, seqs)) in utf8_groups().into_iter().enumerate() {
        for (j, (valid, s)) in seqs.into_iter().enumerate() {
            let id = format!("6.{}.{}", g + 5, j + 1);
            // The table is transcribed by hand: std's validator checks the transcription.
            assert_eq!(std::str::from_utf8(&s).is_ok(), valid, "{id} {s:02x?}");
            let ending = |delivery: Step| {
                if valid {
                    then_clean_close(vec![delivery, expect(op::TEXT, &s)])
                } else {
                    vec![delivery, fails(INVALID_PAYLOAD)]
                }
            };
            let what = format!("{group}: {s:02x?}");
            cases.push(case(
                format!("{id} (one frame)"),
                what.clone(),
                ending(send(text(&s))),
            ));
            cases.push(case(
                format!("{id} (one frame, octet by octet)"),
                what.clone(),
                ending(octets(text(&s))),
            ));
            cases.push(case(
                format!("{id} (fragments of one byte)"),
                what.clone(),
                ending(send(one_byte_fragments(op::TEXT, &s))),
            ));
            cases.push(case(
                format!("{id} (fragments of one byte, octet by octet)"),
                what,
                ending(octets(one_byte_fragments(op::TEXT, &s))),
            ));
        }
    }
    check_all(cases);
}
