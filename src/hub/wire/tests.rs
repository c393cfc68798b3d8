//! Parsing tests: every command and error path, round trips through `write_command`, the
//! delivery frame through two decoders and against a serde reference, the transcripts in
//! docs/PROTOCOL.md, properties over arbitrary bytes, and the replay of the committed fuzz
//! seeds. The writers' own tests (reply shapes, escaping, numbers) are in `write.rs`.

use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};

/// The fuzz target's oracle, compiled here too so the seeds replay on stable.
pub(super) mod checks {
    use crate::{hub::wire, proto};
    include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/client_wire_checks.rs"
    ));
}

fn ok(text: &str) -> Command<'_> {
    match checks::check_client_wire(text.as_bytes()) {
        Ok(cmd) => cmd,
        Err(e) => panic!("{text}: {e:?}"),
    }
}

fn err(text: &[u8]) -> WireError {
    match checks::check_client_wire(text) {
        Ok(cmd) => panic!("{}: parsed as {cmd:?}", String::from_utf8_lossy(text)),
        Err(e) => e,
    }
}

fn raw(s: &str) -> &RawValue {
    serde_json::from_str(s).unwrap()
}

fn value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{e}: {bytes:?}"))
}

const GARBAGE: WireError = WireError::GARBAGE;

fn reply(id: Option<u64>, code: ErrorCode) -> WireError {
    WireError {
        id,
        code,
        close: None,
    }
}

#[test]
fn the_documented_commands() {
    let text =
        r#"{"op":"subscribe","id":1,"channel":"news","since":{"epoch":"9f2c01ab","seq":41}}"#;
    let since = Since {
        epoch: "9f2c01ab",
        seq: 41,
    };
    assert_eq!(
        ok(text),
        Command::Subscribe {
            id: Some(1),
            channel: "news",
            since: Some(since),
            presence: false,
        }
    );
    assert_eq!(
        ok(r#"{"op":"unsubscribe","id":2,"channel":"news"}"#),
        Command::Unsubscribe {
            id: Some(2),
            channel: "news"
        }
    );
    let cmd = ok(r#"{"op":"publish","id":3,"channel":"news","data":{"title":"hi"}}"#);
    assert_eq!(
        cmd,
        Command::Publish {
            id: Some(3),
            channel: "news",
            data: raw(r#"{"title":"hi"}"#)
        }
    );
    assert_eq!((cmd.id(), cmd.channel()), (Some(3), Some("news")));
}

#[test]
fn optional_fields_and_nulls() {
    let sub = |id, since| Command::Subscribe {
        id,
        channel: "a",
        since,
        presence: false,
    };
    assert_eq!(ok(r#"{"op":"subscribe","channel":"a"}"#), sub(None, None));
    assert_eq!(
        ok(r#"{"op":"subscribe","channel":"a","id":null,"since":null}"#),
        sub(None, None)
    );
    assert_eq!(
        ok(r#"{"id":18446744073709551615,"channel":"a","op":"subscribe"}"#),
        sub(Some(u64::MAX), None)
    );
    assert_eq!(
        ok(r#"{"op":"subscribe","channel":"a","id":0}"#),
        sub(Some(0), None)
    );
    // Unknown fields are ignored, fields of other commands too.
    assert_eq!(
        ok(r#"{"op":"subscribe","channel":"a","v":2,"data":[1],"x":{"y":[]}}"#),
        sub(None, None)
    );
    // A since's own unknown fields too, and any epoch text (parse_epoch judges it later).
    let since = Since {
        epoch: "zz",
        seq: 0,
    };
    assert_eq!(
        ok(r#"{"op":"subscribe","channel":"a","since":{"seq":0,"epoch":"zz","n":1}}"#),
        sub(None, Some(since))
    );
}

#[test]
fn publish_data_is_borrowed_byte_for_byte() {
    for data in [
        "null",
        "0",
        "-1.5e+300",
        "1.0",
        r#""text with \"escapes\" \u00e9 and é""#,
        r#"{ "b" : 1 ,"a":[ true , false ] }"#,
        "[[[[[]]]]]",
        "{}",
    ] {
        let text =
            format!("  {{ \"op\" : \"publish\" , \"channel\":\"c\", \"data\" :  {data}  }}\n");
        match ok(&text) {
            Command::Publish { data: got, .. } => {
                assert_eq!(got.get(), data);
                let at = got.get().as_ptr() as usize - text.as_ptr() as usize;
                assert_eq!(
                    &text[at..at + data.len()],
                    data,
                    "not a slice of the message"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn an_escaped_op_is_still_an_op() {
    assert_eq!(
        ok(r#"{"op":"\u0070ublish","channel":"c","data":1}"#),
        Command::Publish {
            id: None,
            channel: "c",
            data: raw("1")
        }
    );
}

#[test]
fn garbage_closes_with_1007() {
    let cases: &[&[u8]] = &[
        b"",
        b"   ",
        b"{",
        b"hello",
        b"{\"op\":\"subscribe\",\"channel\":\"a\"",
        b"{\"op\":\"subscribe\",\"channel\":\"a\"} x",
        b"{}{}",
        b"{'op':'subscribe'}",
        b"{\"op\":\"subscribe\",}",
        b"{\"op\":\"subscribe\",\"channel\":\"a\x01\"}",
        b"\xff",
        b"{\"op\":\"publish\",\"channel\":\"a\",\"data\":\"\xc3\"}",
        b"NaN",
        b"[1,]",
        // A repeated field stops serde early; the rest is still checked.
        b"{\"op\":1,\"op\":2,",
        b"{\"op\":1,\"op\":2} x",
        b"[\"subscribe\",",
    ];
    for &text in cases {
        assert_eq!(err(text), GARBAGE, "{}", String::from_utf8_lossy(text));
    }
    assert_eq!(GARBAGE.close, Some(CloseCode(1007)));
}

#[test]
fn deep_nesting_is_still_json() {
    // serde_json skips a raw value without recursion or a depth limit (its `Value` stops at
    // 128 levels): a deep value costs heap bounded by the message size, never stack.
    let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert_eq!(
        err(nest(100_000).as_bytes()),
        reply(None, ErrorCode::BadRequest)
    );
    let deep = nest(100_000);
    let text = format!(r#"{{"op":"publish","id":1,"channel":"a","data":{deep},"x":{deep}}}"#);
    match ok(&text) {
        Command::Publish { data, .. } => assert_eq!(data.get(), deep),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_requests() {
    use ErrorCode::BadRequest;
    let none: &[&str] = &[
        "[]",
        r#"["subscribe",1,"news"]"#,
        "42",
        r#""subscribe""#,
        "null",
        "{}",
        r#"{"id":"1","op":"subscribe","channel":"a"}"#,
        r#"{"id":-1,"op":"subscribe","channel":"a"}"#,
        r#"{"id":1.5,"op":"subscribe","channel":"a"}"#,
        r#"{"id":1e3,"op":"subscribe","channel":"a"}"#,
        r#"{"id":18446744073709551616,"op":"subscribe","channel":"a"}"#,
        r#"{"id":[1],"op":"x"}"#,
        // A repeated field is ambiguous, so even the id is not trusted.
        r#"{"id":1,"op":"subscribe","op":"publish","channel":"a"}"#,
        r#"{"id":1,"id":2,"op":"subscribe","channel":"a"}"#,
    ];
    for &text in none {
        assert_eq!(err(text.as_bytes()), reply(None, BadRequest), "{text}");
    }
    let with_id: &[&str] = &[
        r#"{"id":7}"#,
        r#"{"id":7,"op":null,"channel":"a"}"#,
        r#"{"id":7,"op":1,"channel":"a"}"#,
        r#"{"id":7,"op":["subscribe"],"channel":"a"}"#,
        r#"{"id":7,"op":"subscribe"}"#,
        r#"{"id":7,"op":"subscribe","channel":null}"#,
        r#"{"id":7,"op":"subscribe","channel":5}"#,
        r#"{"id":7,"op":"subscribe","channel":["a"]}"#,
        r#"{"id":7,"op":"publish","channel":"a"}"#,
        r#"{"id":7,"op":"subscribe","channel":"a","since":5}"#,
        r#"{"id":7,"op":"subscribe","channel":"a","since":"9f2c01ab"}"#,
        r#"{"id":7,"op":"subscribe","channel":"a","since":{}}"#,
        r#"{"id":7,"op":"subscribe","channel":"a","since":["9f2c01ab",1]}"#,
        r#"{"id":7,"op":"subscribe","channel":"a","since":{"epoch":"9f2c01ab"}}"#,
        r#"{"id":7,"op":"subscribe","channel":"a","since":{"seq":1}}"#,
        r#"{"id":7,"op":"subscribe","channel":"a","since":{"epoch":1,"seq":1}}"#,
        r#"{"id":7,"op":"subscribe","channel":"a","since":{"epoch":"9f2c01ab","seq":-1}}"#,
        r#"{"id":7,"op":"subscribe","channel":"a","since":{"epoch":"9f2c01ab","seq":"1"}}"#,
        r#"{"id":7,"op":"subscribe","channel":"a","since":{"epoch":"\u0039f2c01ab","seq":1}}"#,
    ];
    for &text in with_id {
        assert_eq!(err(text.as_bytes()), reply(Some(7), BadRequest), "{text}");
    }
}

#[test]
fn unknown_ops() {
    for op in ["SUBSCRIBE", "history", "", " publish", "subscribe\\u0000"] {
        let text = format!(r#"{{"id":9,"op":"{op}","channel":"a"}}"#);
        assert_eq!(err(text.as_bytes()), reply(Some(9), ErrorCode::UnknownOp));
    }
    // The op is judged before the channel.
    assert_eq!(
        err(br#"{"op":"nope","channel":5}"#),
        reply(None, ErrorCode::UnknownOp)
    );
}

#[test]
fn bad_channels() {
    let long = "x".repeat(MAX_CHANNEL_LEN + 1);
    for name in [
        "",
        "a b",
        "é",
        "a\\u0062",
        "a\\/b",
        "\\\"",
        "#",
        "a,b",
        long.as_str(),
    ] {
        for op in ["subscribe", "unsubscribe", "publish"] {
            let text = format!(r#"{{"id":3,"op":"{op}","channel":"{name}","data":1}}"#);
            assert_eq!(err(text.as_bytes()), reply(Some(3), ErrorCode::BadChannel));
        }
    }
    ok(&format!(
        r#"{{"op":"subscribe","channel":"{}"}}"#,
        "x".repeat(MAX_CHANNEL_LEN)
    ));
}

#[test]
fn channel_name_rules() {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_.:/@-".contains(&b);
    for b in 0..=255u8 {
        let s = [b'a', b, b'z'];
        let name = std::str::from_utf8(&s);
        assert_eq!(name.is_ok_and(valid_channel), allowed(b), "byte {b:#x}");
    }
    assert!(valid_channel("chat:room/42@eu-west.1_x"));
    assert!(!valid_channel(""));
    assert!(valid_channel(&"a".repeat(128)));
    assert!(!valid_channel(&"a".repeat(129)));
    assert!(!valid_channel("ÿ"));
}

#[test]
fn epochs() {
    assert_eq!(parse_epoch("9f2c01ab"), Some(0x9f2c_01ab));
    assert_eq!(parse_epoch("9F2C01AB"), Some(0x9f2c_01ab));
    assert_eq!(parse_epoch("00000000"), Some(0));
    assert_eq!(parse_epoch("ffffffff"), Some(u32::MAX));
    for bad in [
        "",
        "9f2c01a",
        "9f2c01abc",
        "+f2c01ab",
        "-f2c01ab",
        "9f2c01ag",
        " 9f2c01a",
        "9f2c01é",
        "0x9f2c01",
    ] {
        assert_eq!(parse_epoch(bad), None, "{bad}");
    }
    for e in [0, 1, 0x9f2c_01ab, u32::MAX, 0x0000_ff00] {
        let mut out = Vec::new();
        write::push_epoch(&mut out, e);
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(text, format!("{e:08x}"));
        assert_eq!(parse_epoch(text), Some(e));
    }
}

fn build(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    f(&mut out);
    out
}

/// The slow, obvious delivery: serde's own serializer over the same fields.
fn reference_delivery(channel: &str, seq: u64, data: &RawValue) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Delivery<'a> {
        ch: &'a str,
        seq: u64,
        data: &'a RawValue,
    }
    serde_json::to_vec(&Delivery {
        ch: channel,
        seq,
        data,
    })
    .unwrap()
}

#[test]
fn delivery_frame_decodes_to_the_publishers_bytes() {
    let sizes = [
        0usize, 1, 80, 96, 97, 98, 200, 65_400, 65_500, 65_600, 70_000,
    ];
    for (i, pad) in sizes.into_iter().enumerate() {
        // A string value of varying length crosses the 7-bit, 16-bit and 64-bit length forms.
        let data = format!("{{ \"k\" : \"{}\" ,\"n\":1.50}}", "z".repeat(pad));
        let data = raw(&data);
        let seq = [0, 9, 10, 99, 12_345, u64::MAX][i % 6];
        let frame = delivery_frame("chat:room/42", seq, data);
        let reference = reference_delivery("chat:room/42", seq, data);
        checks::check_delivery("chat:room/42", seq, data);
        // tungstenite's reading of the header agrees.
        let mut cursor = std::io::Cursor::new(&frame[..]);
        let (header, len) = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor)
            .unwrap()
            .unwrap();
        let at = cursor.position() as usize;
        assert!(header.is_final && header.mask.is_none());
        assert_eq!(
            header.opcode,
            tungstenite::protocol::frame::coding::OpCode::Data(
                tungstenite::protocol::frame::coding::Data::Text
            )
        );
        assert_eq!(
            (len as usize, at + len as usize),
            (reference.len(), frame.len())
        );
        assert_eq!(&frame[at..], &reference[..], "against serde's serializer");
        assert_eq!(value(&frame[at..])["data"], value(data.get().as_bytes()));
    }
}

#[test]
fn commands_round_trip_through_write_command() {
    let data = raw(r#"{"a":[1,2,{"b":null}]}"#);
    let since = Since {
        epoch: "0badf00d",
        seq: u64::MAX,
    };
    for cmd in [
        Command::Subscribe {
            id: None,
            channel: "a",
            since: None,
            presence: true,
        },
        Command::Subscribe {
            id: Some(u64::MAX),
            channel: "a.b:c/d@e-f_g",
            since: Some(since),
            presence: false,
        },
        Command::Unsubscribe {
            id: Some(0),
            channel: "a",
        },
        Command::Publish {
            id: Some(5),
            channel: "x",
            data,
        },
    ] {
        let text = build(|o| write_command(o, &cmd));
        assert_eq!(checks::check_client_wire(&text), Ok(cmd));
    }
    // An odd epoch is escaped, so the text stays JSON (and a since we cannot borrow is refused).
    let odd = Command::Subscribe {
        id: Some(1),
        channel: "a",
        since: Some(Since {
            epoch: "\"\n",
            seq: 1,
        }),
        presence: false,
    };
    let text = build(|o| write_command(o, &odd));
    assert_eq!(value(&text)["since"]["epoch"], "\"\n");
    assert_eq!(err(&text), reply(Some(1), ErrorCode::BadRequest));
}

/// The committed seeds still mean what their names say: `ok-*` parse, `garbage-*` close with
/// 1007, `<code>-*` get an error reply with that code; all pass the fuzz oracle.
#[test]
fn fuzz_seeds_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/client_wire");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(entry.path()).unwrap();
        let got = checks::check_client_wire(&bytes);
        let kind = name.split('-').next().unwrap_or_default();
        let good = match got {
            Ok(_) => kind == "ok",
            Err(e) if e.close.is_some() => kind == "garbage",
            Err(e) => kind == e.code.as_str(),
        };
        assert!(good, "{name}: {got:?}");
        seen += 1;
    }
    assert!(seen >= 20, "only {seen} seeds in {}", dir.display());
}

/// The transcripts in docs/PROTOCOL.md (`→` / `←` lines) are what this module produces: each
/// command parses as the following reply implies, and every reply and delivery is byte for byte
/// what the writers here build from its fields.
#[test]
fn protocol_doc_transcripts_hold() {
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        id: Option<u64>,
        ok: Option<bool>,
        channel: Option<&'a str>,
        epoch: Option<&'a str>,
        seq: Option<u64>,
        recovered: Option<bool>,
        ch: Option<&'a str>,
        #[serde(borrow)]
        data: Option<&'a RawValue>,
        error: Option<ErrorLine<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorLine<'a> {
        code: &'a str,
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let (mut last, mut checked) = (None, 0);
    for line in doc.lines() {
        let line = line.trim_start_matches(['A', 'B', ' ']);
        if let Some(cmd) = line.strip_prefix("→ ") {
            let json = cmd.starts_with(['{', '[']) && !cmd.contains("  (");
            last = json.then(|| parse(cmd.as_bytes()));
            if let Some(Err(e)) = last {
                assert_eq!(e.close, None, "{cmd}");
            }
            continue;
        }
        let Some(reply) = line.strip_prefix("← ").filter(|r| r.starts_with('{')) else {
            continue;
        };
        let l: Line<'_> = serde_json::from_str(reply).unwrap_or_else(|e| panic!("{e}: {reply}"));
        let id = match last {
            Some(Ok(cmd)) => cmd.id(),
            Some(Err(e)) => e.id,
            None => None,
        };
        let rebuilt = match (l.ok, l.error, l.ch) {
            (None, None, Some(ch)) => {
                let frame = delivery_frame(ch, l.seq.unwrap(), l.data.unwrap());
                frame[2..].to_vec() // short: a 2-byte header
            }
            (Some(false), Some(error), None) => {
                let code = *ErrorCode::ALL
                    .iter()
                    .find(|c| c.as_str() == error.code)
                    .unwrap();
                if let Some(Err(e)) = last {
                    assert_eq!(e.code, code, "{reply}");
                }
                build(|o| reply_error(o, id, code, code.message()))
            }
            (Some(true), None, None) => {
                assert!(matches!(last, Some(Ok(_))), "{reply}");
                match (l.channel, l.epoch) {
                    (Some(channel), Some(epoch)) => {
                        let epoch = parse_epoch(epoch).unwrap();
                        let seq = l.seq.unwrap();
                        build(|o| reply_subscribed(o, id, channel, epoch, seq, l.recovered))
                    }
                    _ => match l.seq {
                        Some(seq) => build(|o| reply_published(o, id, seq)),
                        None => build(|o| reply_ok(o, id)),
                    },
                }
            }
            _ => panic!("not a reply or delivery: {reply}"),
        };
        assert_eq!(std::str::from_utf8(&rebuilt).unwrap(), reply);
        assert_eq!(l.id, if l.ch.is_some() { None } else { id }, "{reply}");
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} transcript lines");
}

/// A channel from the allowed alphabet (sometimes invalid: empty or one byte too long).
fn channel_strategy() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:/@-]{0,129}"
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = checks::check_client_wire(&bytes);
    }

    #[test]
    fn json_shaped_text_never_panics(text in r#"[{}\[\]":,0-9a-z\\ .-]{0,80}"#) {
        let _ = checks::check_client_wire(text.as_bytes());
    }

    #[test]
    fn generated_commands_parse(
        op in 0..4u8,
        id in proptest::option::of(any::<u64>()),
        channel in channel_strategy(),
        since in proptest::option::of((any::<u32>(), any::<u64>())),
        number in any::<i64>(),
        text in ".{0,40}",
    ) {
        let epoch = since.map(|(e, _)| format!("{e:08x}"));
        let data = serde_json::to_string(&json!({"n": number, "t": text})).unwrap();
        let data = raw(&data);
        let cmd = match op {
            0 => Command::Subscribe {
                id,
                channel: &channel,
                since: since.zip(epoch.as_deref()).map(|((_, seq), epoch)| Since { epoch, seq }),
                presence: number % 2 == 0,
            },
            1 => Command::Unsubscribe { id, channel: &channel },
            2 => Command::Presence { id, channel: &channel },
            _ => Command::Publish { id, channel: &channel, data },
        };
        let text = build(|o| write_command(o, &cmd));
        let got = checks::check_client_wire(&text);
        if valid_channel(&channel) {
            prop_assert_eq!(got, Ok(cmd));
        } else {
            prop_assert_eq!(got, Err(reply(id, ErrorCode::BadChannel)));
        }
    }
}

#[test]
fn refresh_is_recognised_apart_from_channel_commands() {
    assert_eq!(
        parse_refresh(br#"{"op":"refresh","id":7,"token":"a.b.c"}"#),
        Some((Some(7), "a.b.c"))
    );
    assert_eq!(
        parse_refresh(br#"{"op":"refresh","token":"t"}"#),
        Some((None, "t"))
    );
    assert_eq!(
        parse_refresh(br#"{"op":"publish","channel":"refresh","data":1}"#),
        None
    );
    assert_eq!(
        parse_refresh(br#"{"op":"refresh"}"#),
        None,
        "no token: not a refresh"
    );
    assert_eq!(parse_refresh(b"garbage \"refresh\""), None);
}
