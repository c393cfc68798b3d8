//! The server's (and a client's) side of the wire: replies, deliveries and commands written
//! by hand into byte buffers. See the parent module for the contract.

use bytes::Bytes;
use serde_json::value::RawValue;

use super::{valid_channel, Command, ErrorCode, Op};
use crate::proto::{frame::encode_header, OpCode, MAX_HEADER_LEN};

const DELIVERY_CH: &[u8] = b"{\"ch\":\"";
const DELIVERY_SEQ: &[u8] = b"\",\"seq\":";
const DELIVERY_DATA: &[u8] = b",\"data\":";

/// A whole server-role WebSocket text frame (header and payload) carrying
/// `{"ch":<channel>,"seq":<seq>,"data":<data>}`, built once per publish and shared by every
/// recipient. `data` is copied byte for byte as the publisher wrote it.
///
/// `channel` must satisfy [`valid_channel`] (it came through [`parse`](super::parse) or was
/// checked by the caller), so it is written without escaping. The buffer is sized exactly
/// before writing, so the `Bytes` keeps the one allocation.
pub fn delivery_frame(channel: &str, seq: u64, data: &RawValue) -> Bytes {
    delivery_frame_raw(channel, seq, data.get().as_bytes())
}

/// [`delivery_frame`] for a value already known to be one JSON value (checked where it came
/// in, e.g. by the bus thread for deliveries from Redis).
pub fn delivery_frame_raw(channel: &str, seq: u64, data: &[u8]) -> Bytes {
    debug_assert!(valid_channel(channel), "unchecked channel {channel:?}");
    let len = DELIVERY_CH.len()
        + channel.len()
        + DELIVERY_SEQ.len()
        + decimal_len(seq)
        + DELIVERY_DATA.len()
        + data.len()
        + 1;
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut header, true, OpCode::Text, len as u64, None);
    let mut out = Vec::with_capacity(n + len);
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(DELIVERY_CH);
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(DELIVERY_SEQ);
    push_u64(&mut out, seq);
    out.extend_from_slice(DELIVERY_DATA);
    out.extend_from_slice(data);
    out.push(b'}');
    debug_assert_eq!(out.len(), n + len);
    Bytes::from(out)
}

/// A whole server-role text frame carrying
/// `{"ch":<channel>,"reset":{"epoch":<epoch>,"seq":<seq>}}`: the channel's numbering
/// restarted (its state in the bus was lost); deliveries continue after `seq` in `epoch`.
pub fn reset_frame(channel: &str, epoch: u32, seq: u64) -> Bytes {
    let mut json = Vec::with_capacity(48 + channel.len());
    json.extend_from_slice(DELIVERY_CH);
    json.extend_from_slice(channel.as_bytes());
    json.extend_from_slice(b"\",\"reset\":{\"epoch\":\"");
    push_epoch(&mut json, epoch);
    json.extend_from_slice(b"\",\"seq\":");
    push_u64(&mut json, seq);
    json.extend_from_slice(b"}}");
    text_frame(&json)
}

/// A presence change on a channel, as its owner reports it to subscribers who asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceEvent {
    /// The user's first connection subscribed.
    Join,
    /// The user's last connection left.
    Leave,
}

/// A whole server-role text frame carrying `{"ch":<channel>,"join":{"user":<user>}}` (or
/// `"leave"`), built once by the channel's owner and shared by every watching subscriber.
pub fn presence_event_frame(channel: &str, event: PresenceEvent, user: &str) -> Bytes {
    let mut json = Vec::with_capacity(32 + channel.len() + user.len());
    json.extend_from_slice(DELIVERY_CH);
    json.extend_from_slice(channel.as_bytes());
    json.extend_from_slice(match event {
        PresenceEvent::Join => b"\",\"join\":{\"user\":",
        PresenceEvent::Leave => b"\",\"leave\":{\"user\":",
    });
    push_json_str(&mut json, user);
    json.extend_from_slice(b"}}");
    text_frame(&json)
}

/// A whole server-role text frame carrying `{"from":<sender>,"direct":<data>}`, built once per
/// direct message and shared by every connection of the recipient. `from` is `None` for a
/// message sent through the admin API; the field is then left out. `data` is copied byte for
/// byte as the sender wrote it.
pub fn direct_frame(from: Option<&str>, data: &RawValue) -> Bytes {
    let data = data.get().as_bytes();
    let mut json = Vec::with_capacity(24 + from.map_or(0, str::len) + data.len());
    json.push(b'{');
    if let Some(from) = from {
        json.extend_from_slice(b"\"from\":");
        push_json_str(&mut json, from);
        json.push(b',');
    }
    json.extend_from_slice(b"\"direct\":");
    json.extend_from_slice(data);
    json.push(b'}');
    text_frame(&json)
}

/// One unmasked, unfragmented text frame around `payload`.
fn text_frame(payload: &[u8]) -> Bytes {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut header, true, OpCode::Text, payload.len() as u64, None);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Appends the reply to a presence command: `{"id":..,"ok":true,"channel":..,"members":
/// [{"user":..,"connections":..},...],"truncated":false}`, members in the order given. When
/// `unlisted` connections are left out of the list, `"truncated":true,"unlisted":<n>`.
pub fn reply_presence<'u>(
    out: &mut Vec<u8>,
    id: Option<u64>,
    channel: &str,
    members: impl IntoIterator<Item = (&'u str, u32)>,
    unlisted: u64,
) {
    open_reply(out, id, true);
    out.extend_from_slice(b",\"channel\":");
    push_json_str(out, channel);
    out.extend_from_slice(b",\"members\":[");
    for (i, (user, n)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"user\":");
        push_json_str(out, user);
        out.extend_from_slice(b",\"connections\":");
        push_u64(out, u64::from(n));
        out.push(b'}');
    }
    out.push(b']');
    if unlisted > 0 {
        out.extend_from_slice(b",\"truncated\":true,\"unlisted\":");
        push_u64(out, unlisted);
    } else {
        out.extend_from_slice(b",\"truncated\":false");
    }
    out.push(b'}');
}

/// Appends the reply to a direct message: `{"id":..,"ok":true,"delivered":<connections>}`.
pub fn reply_delivered(out: &mut Vec<u8>, id: Option<u64>, delivered: u64) {
    open_reply(out, id, true);
    out.extend_from_slice(b",\"delivered\":");
    push_u64(out, delivered);
    out.push(b'}');
}

/// Appends the reply to a subscribe: `{"id":..,"ok":true,"channel":..,"epoch":"9f2c01ab",
/// "seq":..}` plus, when the client asked to resume, `"recovered":true` (`Some(true)`: the
/// missed deliveries follow this reply) or `"recovered":false,"resync":true` (`Some(false)`:
/// nothing is replayed, the client must resync). `seq` is the channel's last sequence number,
/// the one the client's next `since` starts from if no delivery follows.
pub fn reply_subscribed(
    out: &mut Vec<u8>,
    id: Option<u64>,
    channel: &str,
    epoch: u32,
    seq: u64,
    recovery: Option<bool>,
) {
    open_reply(out, id, true);
    out.extend_from_slice(b",\"channel\":");
    push_json_str(out, channel);
    out.extend_from_slice(b",\"epoch\":\"");
    push_epoch(out, epoch);
    out.extend_from_slice(b"\",\"seq\":");
    push_u64(out, seq);
    match recovery {
        Some(true) => out.extend_from_slice(b",\"recovered\":true"),
        Some(false) => out.extend_from_slice(b",\"recovered\":false,\"resync\":true"),
        None => {}
    }
    out.push(b'}');
}

/// Appends the reply to a publish: `{"id":..,"ok":true,"seq":<the sequence number assigned>}`.
pub fn reply_published(out: &mut Vec<u8>, id: Option<u64>, seq: u64) {
    open_reply(out, id, true);
    out.extend_from_slice(b",\"seq\":");
    push_u64(out, seq);
    out.push(b'}');
}

/// Appends a bare success reply: `{"id":..,"ok":true}` (unsubscribe).
pub fn reply_ok(out: &mut Vec<u8>, id: Option<u64>) {
    open_reply(out, id, true);
    out.push(b'}');
}

/// Appends an error reply: `{"id":..,"ok":false,"error":{"code":..,"message":..}}`, with
/// `message` JSON-escaped. `id` is left out when `None`.
pub fn reply_error(out: &mut Vec<u8>, id: Option<u64>, code: ErrorCode, message: &str) {
    open_reply(out, id, false);
    out.extend_from_slice(b",\"error\":{\"code\":\"");
    out.extend_from_slice(code.as_str().as_bytes());
    out.extend_from_slice(b"\",\"message\":");
    push_json_str(out, message);
    out.extend_from_slice(b"}}");
}

/// Appends a command as a client sends it (the load generator's side of the protocol). Strings
/// are escaped, so any command round-trips through [`parse`](super::parse) when its channel is
/// valid.
pub fn write_command(out: &mut Vec<u8>, cmd: &Command<'_>) {
    let op = match *cmd {
        Command::Subscribe { .. } => Op::Subscribe,
        Command::Unsubscribe { .. } => Op::Unsubscribe,
        Command::Publish { .. } => Op::Publish,
        Command::Presence { .. } => Op::Presence,
        Command::Direct { .. } => Op::Direct,
    };
    out.extend_from_slice(b"{\"op\":\"");
    out.extend_from_slice(op.name().as_bytes());
    out.push(b'"');
    if let Some(id) = cmd.id() {
        out.extend_from_slice(b",\"id\":");
        push_u64(out, id);
    }
    if let Some(channel) = cmd.channel() {
        out.extend_from_slice(b",\"channel\":");
        push_json_str(out, channel);
    }
    if let Command::Subscribe { presence: true, .. } = *cmd {
        out.extend_from_slice(b",\"presence\":true");
    }
    match *cmd {
        Command::Subscribe {
            since: Some(since), ..
        } => {
            out.extend_from_slice(b",\"since\":{\"epoch\":");
            push_json_str(out, since.epoch);
            out.extend_from_slice(b",\"seq\":");
            push_u64(out, since.seq);
            out.push(b'}');
        }
        Command::Publish { data, .. } => {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(data.get().as_bytes());
        }
        Command::Direct { user, data, .. } => {
            out.extend_from_slice(b",\"user\":");
            push_json_str(out, &user.get());
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(data.get().as_bytes());
        }
        _ => {}
    }
    out.push(b'}');
}

/// `{"id":N,"ok":<ok>` or `{"ok":<ok>`; the caller continues the object.
fn open_reply(out: &mut Vec<u8>, id: Option<u64>, ok: bool) {
    out.push(b'{');
    if let Some(id) = id {
        out.extend_from_slice(b"\"id\":");
        push_u64(out, id);
        out.push(b',');
    }
    out.extend_from_slice(if ok { b"\"ok\":true" } else { b"\"ok\":false" });
}

/// How many decimal digits `n` takes (to size a buffer before writing it).
pub fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |l| l as usize + 1)
}

/// Appends `n` in decimal (itoa: no `fmt` machinery on the delivery path).
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `epoch` as 8 lowercase hex digits.
pub(super) fn push_epoch(out: &mut Vec<u8>, epoch: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..8).rev() {
        out.push(HEX[(epoch >> (shift * 4)) as usize & 0xf]);
    }
}

/// Appends `s` as a JSON string: quotes, backslashes and control characters escaped
/// (RFC 8259 §7), everything else as is.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x00..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn value(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{e}: {bytes:?}"))
    }

    fn build(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out);
        out
    }

    #[test]
    fn reply_shapes() {
        let mut out = Vec::new();
        reply_subscribed(&mut out, Some(1), "news", 0x9f2c_01ab, 57, Some(true));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"id":1,"ok":true,"channel":"news","epoch":"9f2c01ab","seq":57,"recovered":true}"#
        );
        let cases: Vec<(Vec<u8>, Value)> = vec![
            (
                build(|o| reply_subscribed(o, None, "a", 1, 0, None)),
                json!({"ok": true, "channel": "a", "epoch": "00000001", "seq": 0}),
            ),
            (
                build(|o| {
                    reply_subscribed(o, Some(u64::MAX), "a/b", u32::MAX, u64::MAX, Some(false))
                }),
                json!({"id": u64::MAX, "ok": true, "channel": "a/b", "epoch": "ffffffff",
                   "seq": u64::MAX, "recovered": false, "resync": true}),
            ),
            (
                build(|o| reply_published(o, Some(3), 58)),
                json!({"id": 3, "ok": true, "seq": 58}),
            ),
            (
                build(|o| reply_published(o, None, 0)),
                json!({"ok": true, "seq": 0}),
            ),
            (
                build(|o| reply_ok(o, Some(2))),
                json!({"id": 2, "ok": true}),
            ),
            (build(|o| reply_ok(o, None)), json!({"ok": true})),
            (
                build(|o| reply_error(o, Some(4), ErrorCode::TooLarge, "over 64 KiB")),
                json!({"id": 4, "ok": false,
                   "error": {"code": "too_large", "message": "over 64 KiB"}}),
            ),
        ];
        for (bytes, expect) in cases {
            assert_eq!(value(&bytes), expect, "{}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn every_error_code_replies() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {}", code.as_str());
            let v = value(&build(|o| reply_error(o, None, code, code.message())));
            assert_eq!(
                v,
                json!({"ok": false, "error": {"code": code.as_str(), "message": code.message()}})
            );
        }
        let names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "bad_request",
                "unknown_op",
                "bad_channel",
                "not_subscribed",
                "already_subscribed",
                "too_many_channels",
                "too_large",
                "forbidden",
                "rate_limited",
                "bad_user",
                "unavailable"
            ]
        );
    }

    #[test]
    fn replies_append() {
        let mut out = b"[".to_vec();
        reply_ok(&mut out, Some(1));
        out.push(b',');
        reply_ok(&mut out, None);
        out.push(b']');
        assert_eq!(value(&out), json!([{"id": 1, "ok": true}, {"ok": true}]));
    }

    #[test]
    fn error_messages_are_escaped() {
        for message in [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "new\nline\r\ttab",
            "\u{0}\u{1}\u{8}\u{c}\u{1f}\u{7f}",
            "é ✓ 🦀",
            "\u{2028}\u{2029}",
        ] {
            let v = value(&build(|o| {
                reply_error(o, Some(1), ErrorCode::Forbidden, message)
            }));
            assert_eq!(v["error"]["message"], message);
        }
    }

    #[test]
    fn number_writer_matches_fmt() {
        let mut cases = vec![0u64, u64::MAX, u64::MAX - 1];
        let mut p = 1u64;
        while let Some(next) = p.checked_mul(10) {
            cases.extend([p - 1, p, p + 1]);
            p = next;
        }
        cases.extend([p - 1, p, p + 1]);
        for n in cases {
            let out = build(|o| push_u64(o, n));
            assert_eq!(out, n.to_string().into_bytes());
            assert_eq!(decimal_len(n), out.len(), "{n}");
        }
    }

    proptest! {
    #[test]
    fn any_message_escapes(message in any::<String>(), id in proptest::option::of(any::<u64>())) {
        let v = value(&build(|o| reply_error(o, id, ErrorCode::RateLimited, &message)));
        prop_assert_eq!(&v["error"]["message"], &Value::from(message));
    }
    }
}
