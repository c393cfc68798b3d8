//! Server-sent events (HTML Living Standard, "Server-sent events"): the pure part of
//! `GET /sse?channel=NAME` — reading the query and the resume position, and writing the event
//! stream's bytes. No sockets, no clocks; the shard side is `shard/sse.rs`.
//!
//! # Contract
//!
//! - One channel per stream. An event's `id` is the resume position of the stream, and every
//!   recipient of a delivery must get the same bytes; with several channels the position would
//!   differ from recipient to recipient (it would have to name where each one is in every other
//!   channel), so each recipient would need its own copy. A page wanting several channels opens
//!   one `EventSource` per channel.
//! - An event id is `<epoch>:<seq>` (8 hex digits, a colon, a decimal sequence number): the
//!   same pair a WebSocket client passes as `since`. [`parse_event_id`] reads it back; anything
//!   else is a position this server never issued, so the stream starts with a resync.
//! - [`events`] turns the owner's WebSocket delivery frames (`{"ch","seq","data"}`, as built by
//!   `wire::delivery_frame`) into events without looking at `data` beyond its line breaks: the
//!   same delivery has the same bytes for every stream that receives it.
//! - Nothing here panics on network input; a frame that is not a delivery frame is skipped.

use bytes::Bytes;

use super::auth::percent_decode;
use super::wire::{push_u64, valid_channel};

/// The head of the `200` that opens a stream. No `Content-Length`: the body is the stream and
/// ends when the connection does (RFC 9112 §6.3), which `Connection: close` says.
/// `X-Accel-Buffering: no` keeps nginx from buffering events.
pub const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: text/event-stream\r\n\
Cache-Control: no-cache\r\n\
Connection: close\r\n\
X-Accel-Buffering: no\r\n\
\r\n";

/// A comment line: ignored by clients, it keeps proxies and NAT mappings from timing the
/// stream out.
pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// The answer to `/sse` on a server that does not run the channel protocol.
pub const NOT_FOUND_RESPONSE: &[u8] = b"HTTP/1.1 404 Not Found\r\n\
Content-Type: text/plain\r\n\
Content-Length: 10\r\n\
Connection: close\r\n\
\r\n\
not found\n";

/// The answer to a stream of a channel the token does not allow.
pub const FORBIDDEN_CHANNEL_RESPONSE: &[u8] = b"HTTP/1.1 403 Forbidden\r\n\
Content-Type: text/plain\r\n\
Content-Length: 28\r\n\
Connection: close\r\n\
\r\n\
not allowed on this channel\n";

/// What a stream asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The channel (valid by [`valid_channel`]).
    pub channel: String,
    /// The `lastEventId` query parameter, percent-decoded (for clients that cannot set the
    /// `Last-Event-ID` header; the header wins when both are present).
    pub last_event_id: Option<String>,
}

/// Why a stream request is refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// No `channel` parameter.
    #[error("a channel parameter is required: /sse?channel=NAME")]
    NoChannel,
    /// More than one `channel` parameter.
    #[error("one channel per stream")]
    SeveralChannels,
    /// The channel name breaks the naming rules.
    #[error("channel names are 1 to 128 bytes of A-Z a-z 0-9 _ . : / @ -")]
    BadChannel,
}

impl QueryError {
    /// The complete `400 Bad Request` response naming the problem.
    pub fn response(self) -> Vec<u8> {
        let body = format!("{self}\n");
        format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Reads the query of a `/sse` request target: exactly one `channel`, an optional
/// `lastEventId`; other parameters (`token`) are someone else's.
pub fn parse_query(path: &str) -> Result<Query, QueryError> {
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or_default();
    let mut channel = None;
    let mut last_event_id = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match &*percent_decode(key) {
            "channel" => {
                if channel.is_some() {
                    return Err(QueryError::SeveralChannels);
                }
                let name = percent_decode(value);
                if !valid_channel(&name) {
                    return Err(QueryError::BadChannel);
                }
                channel = Some(name.into_owned());
            }
            "lastEventId" => last_event_id = Some(percent_decode(value).into_owned()),
            _ => {}
        }
    }
    Ok(Query {
        channel: channel.ok_or(QueryError::NoChannel)?,
        last_event_id,
    })
}

/// Reads an event id as [`events`] writes it: `<8 hex digits>:<decimal seq>`. `None` for
/// anything else.
pub fn parse_event_id(id: &str) -> Option<(u32, u64)> {
    let (epoch, seq) = id.trim().split_once(':')?;
    let epoch = super::wire::parse_epoch(epoch)?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((epoch, seq.parse().ok()?))
}

/// One delivery frame taken apart: its sequence number, its `data` and the frame's length.
fn delivery(buf: &[u8]) -> Option<(u64, &[u8], usize)> {
    // A server frame: FIN + text, unmasked, 7/16/64-bit length.
    if *buf.first()? != 0x81 {
        return None;
    }
    let (&b1, rest) = buf.get(1..)?.split_first()?;
    let (len, at): (u64, usize) = match b1 {
        126 => (
            u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as u64,
            4,
        ),
        127 => (u64::from_be_bytes(rest.get(..8)?.try_into().ok()?), 10),
        n if n < 126 => (u64::from(n), 2),
        _ => return None,
    };
    let end = at.checked_add(usize::try_from(len).ok()?)?;
    let payload = buf.get(at..end)?;
    // {"ch":"<channel>","seq":<n>,"data":<data>}
    let p = payload.strip_prefix(b"{\"ch\":\"")?.strip_suffix(b"}")?;
    let quote = p.iter().position(|&b| b == b'"')?;
    let p = p.get(quote..)?.strip_prefix(b"\",\"seq\":")?;
    let digits = p.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = std::str::from_utf8(&p[..digits]).ok()?.parse().ok()?;
    let data = p[digits..].strip_prefix(b",\"data\":")?;
    Some((seq, data, end))
}

/// The sequence number of a delivery frame (the first, if several are joined).
pub fn delivery_seq(frame: &[u8]) -> Option<u64> {
    delivery(frame).map(|(seq, _, _)| seq)
}

/// The events for one or more delivery frames joined back to back, in order:
/// `id: <epoch>:<seq>`, `event: message` and the data, one `data:` line per line of it (the
/// client joins them with LF; JSON allows a line break only as whitespace, so the value is
/// unchanged).
pub fn events(frames: &[u8], epoch: u32) -> Bytes {
    let mut out = Vec::with_capacity(frames.len() + 48);
    let mut rest = frames;
    while let Some((seq, data, used)) = delivery(rest) {
        push_id(&mut out, epoch, seq);
        out.extend_from_slice(b"event: message\n");
        push_data(&mut out, data);
        out.push(b'\n');
        rest = &rest[used..];
    }
    Bytes::from(out)
}

/// The first event of a stream, the stream's answer to its subscribe: `event: subscribed`
/// (`resync` when a resume cannot be honoured) with the subscribe reply's JSON as data and the
/// id to resume from: `from` (what the client already has, replayed deliveries follow) or the
/// channel's last `seq`.
pub fn opening_event(
    channel: &str,
    epoch: u32,
    seq: u64,
    recovered: Option<bool>,
    from: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    push_id(&mut out, epoch, from);
    out.extend_from_slice(match recovered {
        Some(false) => b"event: resync\n".as_slice(),
        _ => b"event: subscribed\n",
    });
    let mut data = Vec::with_capacity(96);
    super::wire::reply_subscribed(&mut data, None, channel, epoch, seq, recovered);
    push_data(&mut out, &data);
    out.push(b'\n');
    out
}

fn push_id(out: &mut Vec<u8>, epoch: u32, seq: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"id: ");
    for shift in (0..8).rev() {
        out.push(HEX[(epoch >> (shift * 4)) as usize & 0xf]);
    }
    out.push(b':');
    push_u64(out, seq);
    out.push(b'\n');
}

/// `data: ` lines: one per line of `data`, split at CRLF, LF or CR (the stream's line ends).
fn push_data(out: &mut Vec<u8>, data: &[u8]) {
    let mut rest = data;
    loop {
        let cut = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..cut.unwrap_or(rest.len())]);
        out.push(b'\n');
        let Some(i) = cut else {
            return;
        };
        let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[i + skip..];
    }
}

#[cfg(test)]
mod tests;
