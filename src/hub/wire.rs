//! The client-facing channel protocol: JSON commands in, JSON replies and deliveries out.
//!
//! `docs/PROTOCOL.md` is the reference a client author reads; this module is its one
//! implementation. Everything here is pure: bytes in, bytes out, no sockets, no clocks.
//!
//! # Contract
//!
//! - [`parse`] takes the payload of one whole text message and borrows from it: the channel,
//!   the `since` epoch, the direct message's `user` and the `data` are slices of the caller's
//!   bytes, never copies.
//!   The price of that is one rule: a channel name (or epoch) written with JSON escapes is
//!   refused (`bad_channel`, or `bad_request` for the epoch), since no valid name needs one.
//! - Every [`WireError`] knows its wire consequence. `close: Some(1007)` means the message is
//!   not JSON at all, so the connection is failed with that code. `close: None` means it is
//!   JSON but not a command we accept: the caller sends the [`reply_error`] and keeps the
//!   connection. Binary messages (1003) and oversized messages (1009) never reach this module;
//!   the connection code and the decoder deal with them.
//! - Limits that depend on configuration or on the connection (message size, channels per
//!   connection, permissions, rate) are the caller's checks; their codes are here so that every
//!   error the client can see is listed in one enum.
//! - The writers append JSON text to a caller's `Vec` (replies, framed by the caller), or build
//!   one whole WebSocket frame ([`delivery_frame`]) that every recipient's queue shares. They
//!   write by hand rather than through `serde`: a delivery is built once per publish, but it is
//!   on the hot path, and its size is known before the one allocation.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::proto::CloseCode;

mod write;
pub use write::{
    decimal_len, delivery_frame, delivery_frame_raw, direct_frame, presence_event_frame, push_u64,
    reply_delivered, reply_error, reply_ok, reply_presence, reply_published, reply_subscribed,
    reset_frame, write_command, PresenceEvent,
};

/// The longest channel name, in bytes. Long enough for `org/project:room@region` style names,
/// short enough that a name costs little in every subscription index and delivery.
pub const MAX_CHANNEL_LEN: usize = 128;

/// The longest user id, in bytes: the bound on a token's `sub` and a direct message's `user`.
pub const MAX_USER_LEN: usize = 128;

/// One client command, borrowing from the message it was parsed from.
#[derive(Debug, Clone, Copy)]
pub enum Command<'a> {
    /// Start receiving a channel's deliveries, optionally resuming after `since`.
    Subscribe {
        /// The client's request id, echoed in the reply.
        id: Option<u64>,
        /// A name for which [`valid_channel`] holds.
        channel: &'a str,
        /// The last delivery the client saw, if it is resuming.
        since: Option<Since<'a>>,
        /// Whether the client wants the channel's join and leave events (`"presence": true`).
        presence: bool,
    },
    /// Stop receiving a channel's deliveries.
    Unsubscribe {
        /// The client's request id, echoed in the reply.
        id: Option<u64>,
        /// A name for which [`valid_channel`] holds.
        channel: &'a str,
    },
    /// Send `data` to every subscriber of `channel`.
    Publish {
        /// The client's request id, echoed in the reply.
        id: Option<u64>,
        /// A name for which [`valid_channel`] holds.
        channel: &'a str,
        /// Any JSON value, exactly as the client wrote it (delivered byte for byte).
        data: &'a RawValue,
    },
    /// List who is in `channel`.
    Presence {
        /// The client's request id, echoed in the reply.
        id: Option<u64>,
        /// A name for which [`valid_channel`] holds.
        channel: &'a str,
    },
    /// Send `data` to every connection of `user`.
    Direct {
        /// The client's request id, echoed in the reply.
        id: Option<u64>,
        /// The recipient; [`valid_user`] holds for its content.
        user: User<'a>,
        /// Any JSON value, exactly as the client wrote it (delivered byte for byte).
        data: &'a RawValue,
    },
}

impl<'a> Command<'a> {
    /// The request id, if the client sent one.
    pub fn id(&self) -> Option<u64> {
        match *self {
            Command::Subscribe { id, .. }
            | Command::Unsubscribe { id, .. }
            | Command::Publish { id, .. }
            | Command::Presence { id, .. }
            | Command::Direct { id, .. } => id,
        }
    }

    /// The channel the command is about (`None` for a direct message, which names a user).
    pub fn channel(&self) -> Option<&'a str> {
        match *self {
            Command::Subscribe { channel, .. }
            | Command::Unsubscribe { channel, .. }
            | Command::Publish { channel, .. }
            | Command::Presence { channel, .. } => Some(channel),
            Command::Direct { .. } => None,
        }
    }
}

/// Equal when every field is, with `data` compared as the exact text the client sent.
impl PartialEq for Command<'_> {
    fn eq(&self, other: &Self) -> bool {
        use Command::*;
        match (self, other) {
            (
                Subscribe {
                    id,
                    channel,
                    since,
                    presence,
                },
                Subscribe {
                    id: i,
                    channel: c,
                    since: s,
                    presence: p,
                },
            ) => (id, channel, since, presence) == (i, c, s, p),
            (Unsubscribe { id, channel }, Unsubscribe { id: i, channel: c }) => {
                (id, channel) == (i, c)
            }
            (
                Publish { id, channel, data },
                Publish {
                    id: i,
                    channel: c,
                    data: d,
                },
            ) => (id, channel, data.get()) == (i, c, d.get()),
            (Presence { id, channel }, Presence { id: i, channel: c }) => (id, channel) == (i, c),
            (
                Direct { id, user, data },
                Direct {
                    id: i,
                    user: u,
                    data: d,
                },
            ) => (id, user, data.get()) == (i, u, d.get()),
            _ => false,
        }
    }
}

impl Eq for Command<'_> {}

/// Where a resuming subscriber left off: the channel's epoch and the last sequence number it
/// received. `epoch` is the text the server sent; [`parse_epoch`] turns it into the number the
/// history compares. One that does not parse was never issued by this server, so it can match
/// no history and the subscriber must resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since<'a> {
    /// The epoch as the client sent it (8 hex digits when it came from this server).
    pub epoch: &'a str,
    /// The last sequence number the client received in that epoch.
    pub seq: u64,
}

/// A user id as the client wrote it: one JSON string token, borrowed. Its content, decoded
/// from any escapes, satisfies [`valid_user`]; two are equal when their contents are.
#[derive(Debug, Clone, Copy)]
pub struct User<'a> {
    /// The string token, quotes included.
    raw: &'a str,
}

impl<'a> User<'a> {
    /// The user id: borrowed when it was written without escapes (the usual case).
    pub fn get(&self) -> Cow<'a, str> {
        let inner = &self.raw[1..self.raw.len() - 1];
        if !inner.contains('\\') {
            return Cow::Borrowed(inner);
        }
        // Checked to decode when the command was parsed.
        Cow::Owned(serde_json::from_str(self.raw).unwrap_or_default())
    }

    /// The string token as the client wrote it, quotes included.
    pub fn raw(&self) -> &'a str {
        self.raw
    }
}

impl PartialEq for User<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for User<'_> {}

/// The error codes a client can receive, as the `error.code` string of an error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// JSON, but not a well-formed command (not an object, a missing or mistyped field).
    BadRequest,
    /// `op` names no command this server knows.
    UnknownOp,
    /// The channel name breaks the rules of [`valid_channel`].
    BadChannel,
    /// Unsubscribe from a channel the connection is not subscribed to.
    NotSubscribed,
    /// Subscribe to a channel the connection is already subscribed to.
    AlreadySubscribed,
    /// The connection is at its configured limit of channels.
    TooManyChannels,
    /// The published data is over the configured size limit.
    TooLarge,
    /// The connection's credentials do not allow this command on this channel.
    Forbidden,
    /// The connection is over its message or byte rate.
    RateLimited,
    /// A direct message's `user` is not a user id ([`valid_user`]).
    BadUser,
    /// The bus (Redis) could not take the message: it was unreachable for longer than the
    /// outbox holds. Nothing was published; the client may retry.
    Unavailable,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::BadChannel,
        ErrorCode::NotSubscribed,
        ErrorCode::AlreadySubscribed,
        ErrorCode::TooManyChannels,
        ErrorCode::TooLarge,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::BadUser,
        ErrorCode::Unavailable,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::TooManyChannels => "too_many_channels",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BadUser => "bad_user",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// A default human-readable `error.message` for this code.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "not a well-formed command",
            ErrorCode::UnknownOp => "unknown op",
            ErrorCode::BadChannel => "channel names are 1 to 128 bytes of A-Z a-z 0-9 _ . : / @ -",
            ErrorCode::NotSubscribed => "not subscribed to this channel",
            ErrorCode::AlreadySubscribed => "already subscribed to this channel",
            ErrorCode::TooManyChannels => "too many channels on this connection",
            ErrorCode::TooLarge => "data over the size limit",
            ErrorCode::Forbidden => "not allowed on this channel",
            ErrorCode::RateLimited => "over the rate limit",
            ErrorCode::BadUser => "user ids are 1 to 128 bytes without control characters",
            ErrorCode::Unavailable => "the bus is unavailable; nothing was published",
        }
    }
}

/// Why a message is not a command, and what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError {
    /// The request id, when the message was an object with a valid `id`.
    pub id: Option<u64>,
    /// The code for the error reply.
    pub code: ErrorCode,
    /// `Some(1007)` when the message is not JSON: fail the connection with that code and send
    /// no reply. `None`: send the error reply and keep the connection.
    pub close: Option<CloseCode>,
}

impl WireError {
    /// Not JSON at all (or not UTF-8): RFC 6455 §7.4.1, 1007 "received data within a message
    /// that was not consistent with the type of the message".
    const GARBAGE: WireError = WireError {
        id: None,
        code: ErrorCode::BadRequest,
        close: Some(CloseCode::INVALID_PAYLOAD),
    };

    fn reply(id: Option<u64>, code: ErrorCode) -> WireError {
        WireError {
            id,
            code,
            close: None,
        }
    }
}

/// The top-level fields we read, each kept as raw JSON so that a mistyped field becomes our
/// own error (with the id already known) rather than serde's. Unknown fields are ignored, so a
/// newer client can talk to an older server; a repeated known field is an error.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    op: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    presence: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    user: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RefreshFields<'a> {
    op: &'a str,
    #[serde(default)]
    id: Option<u64>,
    token: &'a str,
}

/// A token refresh on an open connection, `{"op":"refresh","id":1,"token":"<jwt>"}`: `None`
/// when the message is anything else (it then goes through [`parse`]). Kept apart from
/// [`Command`] because it is about the connection, not a channel.
pub fn parse_refresh(text: &[u8]) -> Option<(Option<u64>, &str)> {
    // Cheap filter first: almost every message is not a refresh.
    if !text.windows(9).any(|w| w == b"\"refresh\"") {
        return None;
    }
    let f: RefreshFields<'_> = serde_json::from_slice(text).ok()?;
    (f.op == "refresh").then_some((f.id, f.token))
}

#[derive(Deserialize)]
struct SinceFields<'a> {
    #[serde(borrow)]
    epoch: &'a RawValue,
    seq: u64,
}

/// A field that is present is `Some`, even when its value is `null` (`"data": null` is a
/// value to publish; serde's own `Option` would turn it into "absent").
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// What a raw JSON value is, as far as string fields care.
enum Str<'a> {
    /// A string without escapes: its content, borrowed.
    Plain(&'a str),
    /// A string with at least one escape sequence.
    Escaped,
    /// Not a string.
    Other,
}

fn string(raw: &RawValue) -> Str<'_> {
    // `raw` is already validated JSON, so a value that starts with a quote is one string token;
    // without a backslash, the text between the quotes is exactly its content.
    match raw
        .get()
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
    {
        Some(s) if !s.contains('\\') => Str::Plain(s),
        Some(_) => Str::Escaped,
        None => Str::Other,
    }
}

/// Insignificant whitespace (RFC 8259 §2).
const JSON_WS: [char; 4] = [' ', '\t', '\n', '\r'];

/// For a message that is not a command object: is it JSON at all? Reading the fields stops
/// at the first problem (a repeated field), and is stricter than JSON's grammar about object
/// keys (it decodes them, so a key with a lone surrogate escape such as `"\ud800"` fails), so
/// the whole text is checked again, as a raw value is, before deciding to close.
fn not_a_command(text: &str) -> WireError {
    match serde_json::from_str::<serde::de::IgnoredAny>(text) {
        Ok(_) => WireError::reply(None, ErrorCode::BadRequest),
        Err(_) => WireError::GARBAGE,
    }
}

/// `"field": null` read as an absent field.
fn non_null(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

/// Parses one text message from a client.
///
/// Not UTF-8 or not JSON is garbage: [`WireError`] with `close: Some(1007)`. Nesting depth is
/// not limited: values are validated without recursion (on the heap, bounded by the message
/// size), and `data` is never parsed further, only forwarded. Anything else that is wrong gets an error reply that
/// echoes the `id` when the message is an object whose `id` is a non-negative integer;
/// `"id": null`, `"since": null` and `"presence": null` mean absent.
pub fn parse(text: &[u8]) -> Result<Command<'_>, WireError> {
    use ErrorCode::*;
    let text = simdutf8::basic::from_utf8(text).map_err(|_| WireError::GARBAGE)?;
    // serde would also read a struct from a JSON array, by position; a command is an object.
    if !text.trim_start_matches(JSON_WS).starts_with('{') {
        return Err(not_a_command(text));
    }
    // One pass: the fields are slices of `text`, and only the error path looks again.
    let f: Fields<'_> = serde_json::from_str(text).map_err(|_| not_a_command(text))?;
    let id = match non_null(f.id) {
        Some(raw) => Some(
            serde_json::from_str::<u64>(raw.get())
                .map_err(|_| WireError::reply(None, BadRequest))?,
        ),
        None => None,
    };
    let err = |code| WireError::reply(id, code);
    let op = match f.op.map(string) {
        Some(Str::Plain(op)) => Op::from_name(op),
        // A rare spelling like "\u0070ublish": decode it rather than call it unknown.
        Some(Str::Escaped) => {
            f.op.and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
                .and_then(|op| Op::from_name(&op))
        }
        _ => return Err(err(BadRequest)),
    };
    let op = op.ok_or(err(UnknownOp))?;
    let channel = || match f.channel.map(string) {
        Some(Str::Plain(name)) if valid_channel(name) => Ok(name),
        Some(Str::Plain(_) | Str::Escaped) => Err(err(BadChannel)),
        Some(Str::Other) | None => Err(err(BadRequest)),
    };
    Ok(match op {
        Op::Subscribe => Command::Subscribe {
            id,
            channel: channel()?,
            since: match non_null(f.since) {
                Some(raw) => Some(parse_since(raw).ok_or(err(BadRequest))?),
                None => None,
            },
            presence: match non_null(f.presence).map(RawValue::get) {
                Some("true") => true,
                Some("false") | None => false,
                Some(_) => return Err(err(BadRequest)),
            },
        },
        Op::Unsubscribe => Command::Unsubscribe {
            id,
            channel: channel()?,
        },
        Op::Publish => Command::Publish {
            id,
            channel: channel()?,
            data: f.data.ok_or(err(BadRequest))?,
        },
        Op::Presence => Command::Presence {
            id,
            channel: channel()?,
        },
        // A direct message names a user instead of a channel.
        Op::Direct => Command::Direct {
            id,
            user: match f.user {
                Some(raw) if raw.get().starts_with('"') => user_of(raw).ok_or(err(BadUser))?,
                _ => return Err(err(BadRequest)),
            },
            data: f.data.ok_or(err(BadRequest))?,
        },
    })
}

/// A JSON string token as a [`User`], if its content is a user id.
fn user_of(raw: &RawValue) -> Option<User<'_>> {
    let user = User { raw: raw.get() };
    let ok = match string(raw) {
        Str::Plain(s) => valid_user(s),
        Str::Escaped => serde_json::from_str::<String>(raw.get()).is_ok_and(|s| valid_user(&s)),
        Str::Other => false,
    };
    ok.then_some(user)
}

#[derive(Clone, Copy)]
enum Op {
    Subscribe,
    Unsubscribe,
    Publish,
    Presence,
    Direct,
}

impl Op {
    fn from_name(name: &str) -> Option<Op> {
        match name {
            "subscribe" => Some(Op::Subscribe),
            "unsubscribe" => Some(Op::Unsubscribe),
            "publish" => Some(Op::Publish),
            "presence" => Some(Op::Presence),
            "direct" => Some(Op::Direct),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::Subscribe => "subscribe",
            Op::Unsubscribe => "unsubscribe",
            Op::Publish => "publish",
            Op::Presence => "presence",
            Op::Direct => "direct",
        }
    }
}

/// `{"epoch": "<string>", "seq": <u64>}`; other fields are ignored.
fn parse_since(raw: &RawValue) -> Option<Since<'_>> {
    if !raw.get().starts_with('{') {
        return None;
    }
    let s: SinceFields<'_> = serde_json::from_str(raw.get()).ok()?;
    match string(s.epoch) {
        Str::Plain(epoch) => Some(Since { epoch, seq: s.seq }),
        Str::Escaped | Str::Other => None,
    }
}

/// Whether `name` is a channel name: 1 to [`MAX_CHANNEL_LEN`] bytes, each one of
/// `A-Z a-z 0-9 _ . : / @ -`. The set needs no escaping in JSON, URLs' paths or Prometheus
/// label values, and leaves room for namespaced names (`chat:room/42`, `user@host`).
pub fn valid_channel(name: &str) -> bool {
    (1..=MAX_CHANNEL_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/@-".contains(&b))
}

/// Whether `user` is a user id: 1 to [`MAX_USER_LEN`] bytes without control characters. The
/// rule for a token's `sub` and for the recipient of a direct message.
pub fn valid_user(user: &str) -> bool {
    (1..=MAX_USER_LEN).contains(&user.len()) && !user.chars().any(char::is_control)
}

/// Reads an epoch as the server renders it: exactly 8 hex digits (either case).
pub fn parse_epoch(s: &str) -> Option<u32> {
    // `from_str_radix` alone would also take a sign and shorter strings.
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod presence_tests;
#[cfg(test)]
mod tests;
