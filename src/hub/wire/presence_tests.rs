//! Presence and direct messages on the wire: the `presence` and `direct` commands and the
//! subscribe's `presence` flag, their errors, and the replies and frames the server writes
//! for them.

use super::tests::checks;
use super::*;
use serde_json::{json, Value};

fn ok(text: &str) -> Command<'_> {
    checks::check_client_wire(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e:?}"))
}

fn err(text: &str) -> (Option<u64>, ErrorCode) {
    match checks::check_client_wire(text.as_bytes()) {
        Ok(cmd) => panic!("{text}: parsed as {cmd:?}"),
        Err(e) => {
            assert_eq!(e.close, None, "{text}");
            (e.id, e.code)
        }
    }
}

fn value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{e}: {bytes:?}"))
}

fn build(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    f(&mut out);
    out
}

/// The payload of an unmasked server frame with a short (< 126 bytes) or 16-bit length.
fn payload(frame: &[u8]) -> &[u8] {
    assert_eq!(frame[0], 0x81, "FIN + text");
    match frame[1] {
        126 => &frame[4..],
        n => {
            assert!(n < 126);
            &frame[2..]
        }
    }
}

#[test]
fn presence_and_the_subscribe_flag() {
    assert_eq!(
        ok(r#"{"op":"presence","id":4,"channel":"room/1"}"#),
        Command::Presence {
            id: Some(4),
            channel: "room/1"
        }
    );
    for (flag, want) in [("true", true), ("false", false), ("null", false)] {
        let text = format!(r#"{{"op":"subscribe","id":1,"channel":"c","presence":{flag}}}"#);
        match ok(&text) {
            Command::Subscribe { presence, .. } => assert_eq!(presence, want, "{text}"),
            other => panic!("{other:?}"),
        }
    }
    for bad in ["1", "\"true\"", "{}", "[]"] {
        let text = format!(r#"{{"op":"subscribe","id":1,"channel":"c","presence":{bad}}}"#);
        assert_eq!(err(&text), (Some(1), ErrorCode::BadRequest), "{text}");
    }
    assert_eq!(
        err(r#"{"op":"presence","id":2}"#),
        (Some(2), ErrorCode::BadRequest)
    );
    assert_eq!(
        err(r#"{"op":"presence","id":2,"channel":"no spaces"}"#),
        (Some(2), ErrorCode::BadChannel)
    );
    // Presence ignores fields that belong to other commands.
    assert_eq!(
        ok(r#"{"op":"presence","channel":"c","data":1,"user":"x"}"#),
        Command::Presence {
            id: None,
            channel: "c"
        }
    );
}

#[test]
fn direct_names_a_user_and_carries_data() {
    let cmd = ok(r#"{"op":"direct","id":5,"user":"bob","data":{"hi": 1}}"#);
    let Command::Direct { id, user, data } = cmd else {
        panic!("{cmd:?}")
    };
    assert_eq!(
        (id, &*user.get(), data.get()),
        (Some(5), "bob", r#"{"hi": 1}"#)
    );
    assert_eq!(cmd.channel(), None);
    // Escapes are decoded (a token's `sub` may hold any printable character).
    let cmd = ok(r#"{"op":"direct","user":"a\"b\u00e9 c","data":null}"#);
    let Command::Direct { user, .. } = cmd else {
        panic!("{cmd:?}")
    };
    assert_eq!(user.get(), "a\"bé c");
    // A channel field is ignored: the recipient is a user.
    assert!(matches!(
        ok(r#"{"op":"direct","user":"anon:0.1.2","channel":"bad name","data":1}"#),
        Command::Direct { .. }
    ));
    let long = "u".repeat(MAX_USER_LEN + 1);
    for (text, want) in [
        (
            r#"{"op":"direct","id":1,"data":1}"#.to_owned(),
            ErrorCode::BadRequest,
        ),
        (
            r#"{"op":"direct","id":1,"user":"bob"}"#.to_owned(),
            ErrorCode::BadRequest,
        ),
        (
            r#"{"op":"direct","id":1,"user":7,"data":1}"#.to_owned(),
            ErrorCode::BadRequest,
        ),
        (
            r#"{"op":"direct","id":1,"user":null,"data":1}"#.to_owned(),
            ErrorCode::BadRequest,
        ),
        (
            r#"{"op":"direct","id":1,"user":"","data":1}"#.to_owned(),
            ErrorCode::BadUser,
        ),
        (
            r#"{"op":"direct","id":1,"user":"a\nb","data":1}"#.to_owned(),
            ErrorCode::BadUser,
        ),
        (
            r#"{"op":"direct","id":1,"user":"\ud800","data":1}"#.to_owned(),
            ErrorCode::BadUser,
        ),
        (
            format!(r#"{{"op":"direct","id":1,"user":"{long}","data":1}}"#),
            ErrorCode::BadUser,
        ),
    ] {
        assert_eq!(err(&text), (Some(1), want), "{text}");
    }
    let max = "u".repeat(MAX_USER_LEN);
    assert!(matches!(
        ok(&format!(r#"{{"op":"direct","user":"{max}","data":1}}"#)),
        Command::Direct { .. }
    ));
}

#[test]
fn new_commands_round_trip_through_write_command() {
    let escaped = ok(r#"{"op":"direct","user":"q\"\\ \u00e9","data":2}"#);
    for cmd in [
        Command::Presence {
            id: Some(9),
            channel: "a:b",
        },
        Command::Presence {
            id: None,
            channel: "a",
        },
        ok(r#"{"op":"direct","id":3,"user":"bob","data":[1, {"x": "y"}]}"#),
        escaped,
        Command::Subscribe {
            id: Some(1),
            channel: "c",
            since: None,
            presence: true,
        },
    ] {
        let text = build(|o| write_command(o, &cmd));
        assert_eq!(checks::check_client_wire(&text), Ok(cmd));
    }
}

#[test]
fn presence_reply_shapes() {
    let list = [("alice", 2), ("b\"ob", 1)];
    let v = value(&build(|o| reply_presence(o, Some(7), "room", list, 0)));
    assert_eq!(
        v,
        json!({"id": 7, "ok": true, "channel": "room", "truncated": false, "members": [
            {"user": "alice", "connections": 2}, {"user": "b\"ob", "connections": 1}]})
    );
    let v = value(&build(|o| reply_presence(o, None, "room", [], 3)));
    assert_eq!(
        v,
        json!({"ok": true, "channel": "room", "members": [], "truncated": true, "unlisted": 3})
    );
    let v = value(&build(|o| reply_delivered(o, Some(1), 2)));
    assert_eq!(v, json!({"id": 1, "ok": true, "delivered": 2}));
}

#[test]
fn event_and_direct_frames() {
    let f = presence_event_frame("room/1", PresenceEvent::Join, "alice");
    assert_eq!(
        payload(&f),
        br#"{"ch":"room/1","join":{"user":"alice"}}"#.as_slice()
    );
    let f = presence_event_frame("r", PresenceEvent::Leave, "a\"b");
    assert_eq!(
        value(payload(&f)),
        json!({"ch": "r", "leave": {"user": "a\"b"}})
    );
    let data: &RawValue = serde_json::from_str(r#"{"text":  "hi"}"#).unwrap();
    let f = direct_frame(Some("alice"), data);
    assert_eq!(
        payload(&f),
        br#"{"from":"alice","direct":{"text":  "hi"}}"#.as_slice()
    );
    let f = direct_frame(None, data);
    assert_eq!(payload(&f), br#"{"direct":{"text":  "hi"}}"#.as_slice());
    // A payload over 125 bytes gets the 16-bit length form.
    let big = format!("\"{}\"", "x".repeat(300));
    let big: &RawValue = serde_json::from_str(&big).unwrap();
    let f = direct_frame(Some("a"), big);
    assert_eq!(value(payload(&f))["direct"].as_str().unwrap().len(), 300);
}

#[test]
fn user_ids() {
    assert!(valid_user("alice"));
    assert!(valid_user("é ✓ with spaces \"quotes\""));
    assert!(!valid_user(""));
    assert!(!valid_user("tab\there"));
    assert!(!valid_user("\u{7f}"));
    assert!(valid_user(&"a".repeat(MAX_USER_LEN)));
    assert!(!valid_user(&"a".repeat(MAX_USER_LEN + 1)));
}
