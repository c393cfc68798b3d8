// Oracle for the client_wire fuzz target.
//
// This file is `include!`d twice: by `fuzz_targets/client_wire.rs` (with
// `use starling::{hub::wire, proto};`) and by the seed-replay unit test in
// `src/hub/wire/tests.rs` (with `use crate::{hub::wire, proto};`), so the stable test suite runs
// the committed seeds through exactly the checks the fuzzer runs. Every function panics when a
// property is violated.

/// Parses `data` as one client message and checks what the answer promises:
/// - a command has a valid channel (a direct message: a valid user id instead), borrows its
///   strings and data from `data`, and re-encodes (`write_command`) to text that parses to the
///   same command;
/// - a published value makes a delivery frame that decodes to exactly
///   `{"ch":..,"seq":..,"data":<the value's bytes>}`;
/// - it is garbage (close 1007) exactly when serde_json does not take it as JSON;
/// - the error reply for any error is JSON of the documented shape, echoing the id.
pub fn check_client_wire(data: &[u8]) -> Result<wire::Command<'_>, wire::WireError> {
    let parsed = wire::parse(data);
    // What serde_json accepts as JSON, without (`RawValue`) and with (`Value`: 128 levels,
    // no lone surrogates) its limits on nesting and escapes.
    let is_json = serde_json::from_slice::<Box<serde_json::value::RawValue>>(data).is_ok();
    let is_value = serde_json::from_slice::<serde_json::Value>(data).is_ok();
    assert!(is_json || !is_value);
    match parsed {
        Ok(cmd) => {
            assert!(is_json, "a command from text that is not JSON");
            let channel = cmd.channel();
            if let Some(channel) = channel {
                assert!(wire::valid_channel(channel), "{channel:?}");
            }
            let mut again = Vec::new();
            wire::write_command(&mut again, &cmd);
            assert_eq!(
                wire::parse(&again),
                Ok(cmd),
                "{}",
                String::from_utf8_lossy(&again)
            );
            let inside = |s: &str| {
                let (start, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
                start <= s.as_ptr() as usize && s.as_ptr() as usize + s.len() <= end
            };
            assert!(channel.is_none_or(inside), "channel copied");
            match cmd {
                wire::Command::Publish {
                    data: value,
                    channel,
                    ..
                } => {
                    assert!(inside(value.get()), "data copied");
                    // Any number of digits, from the input's length.
                    let seq = (data.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        >> (data.len() % 64);
                    check_delivery(channel, seq, value);
                }
                wire::Command::Direct {
                    user, data: value, ..
                } => {
                    assert!(inside(user.raw()), "user copied");
                    assert!(inside(value.get()), "data copied");
                    assert!(wire::valid_user(&user.get()), "{user:?}");
                }
                wire::Command::Subscribe { since: Some(s), .. } => assert!(inside(s.epoch)),
                _ => {}
            }
        }
        Err(e) => {
            // Garbage (close 1007) exactly when the text is not JSON.
            assert_eq!(e.close.is_some(), !is_json, "{e:?}");
            if e.close.is_some() {
                assert_eq!(e.close, Some(proto::CloseCode::INVALID_PAYLOAD));
                assert_eq!((e.id, e.code), (None, wire::ErrorCode::BadRequest));
            }
            let mut out = Vec::new();
            wire::reply_error(&mut out, e.id, e.code, e.code.message());
            let reply: serde_json::Value = serde_json::from_slice(&out).expect("reply is JSON");
            assert_eq!(reply["ok"], false);
            assert_eq!(reply["error"]["code"], e.code.as_str());
            assert_eq!(reply["error"]["message"], e.code.message());
            match e.id {
                Some(id) => assert_eq!(reply["id"], id),
                None => assert!(reply.get("id").is_none()),
            }
        }
    }
    parsed
}

/// The delivery frame for `value` decodes (client role) to one text message whose payload is
/// the documented object with `data` spliced in byte for byte.
pub fn check_delivery(channel: &str, seq: u64, value: &serde_json::value::RawValue) {
    let frame = wire::delivery_frame(channel, seq, value);
    let mut buf = frame.to_vec();
    let mut dec = proto::Decoder::new(proto::Role::Client, usize::MAX);
    let mut texts = Vec::new();
    let used = dec
        .feed(&mut buf, |ev| {
            match ev {
                proto::Event::Text(p) => texts.push(p.to_vec()),
                other => panic!("not a text message: {other:?}"),
            }
            proto::Flow::Continue
        })
        .expect("delivery frame decodes");
    assert_eq!(used, frame.len());
    let expect = format!(r#"{{"ch":"{channel}","seq":{seq},"data":{}}}"#, value.get());
    assert_eq!(texts, [expect.into_bytes()]);
}
