//! The channel protocol of `starling serve --app hub` (docs/PROTOCOL.md), client side, as
//! `fanout --mode hub` speaks it: the commands written by hand into the caller's buffer, and
//! the server's replies and deliveries read by a small scanner. Pure functions over byte
//! slices; the frames around them are the engine's (`starling::proto`).
//!
//! ```text
//! subscriber -> {"op":"subscribe","id":0,"channel":"bench.3"}
//!            <- {"id":0,"ok":true,"channel":"bench.3","epoch":"9f2c01ab","seq":41}
//! publisher  -> {"op":"publish","id":17,"channel":"bench.1","data":<stamp>}
//!            <- {"id":17,"ok":true,"seq":58}
//! subscriber <- {"ch":"bench.1","seq":58,"data":<stamp, byte for byte>}
//!
//! stamp:        {"p":0,"n":17,"t":5072118006431,"s":5072118009011,"pad":"xxxx"}
//! ```
//!
//! `p` is the global publisher id, `n` its own sequence number (from 0; also the request
//! id), `t` the intended send time and `s` the time it was queued, both `CLOCK_MONOTONIC`
//! nanoseconds; `pad` brings the stamp to `--size` bytes ([`data_len`]), or is empty when
//! the numbers alone are longer.
//!
//! Publisher `p` sends its `n`-th message to channel `(p + n) mod K` ([`channel_of`]), so
//! the publishers take turns over the channels and a subscriber of channel `c` sees from
//! publisher `p` exactly the `n` with `n mod K = (c - p) mod K`; `n / K` then counts 0, 1,
//! 2, ... ([`publisher_slot`]), which is what its per-publisher order check tracks.
//!
//! Reading a delivery costs no allocation: [`read`] first tries the exact layout the
//! server and our publishers write (member order, no whitespace) by matching prefixes, and
//! only when that fails walks the message with the general scanner ([`scan`]), which takes
//! members in any order. Both are tested against `serde_json` (the slow reference).

pub mod memo;
pub mod scan;
pub mod session;

use starling::hub::wire::{decimal_len, push_u64};

use crate::workload::Stamp;

/// Prefix of every channel name: `bench.0 .. bench.{K-1}`.
pub const CHANNEL_PREFIX: &str = "bench.";

/// The name of channel `c`.
pub fn channel_name(c: u32) -> String {
    format!("{CHANNEL_PREFIX}{c}")
}

/// The channel of publisher `publisher`'s `n`-th message, of `channels`.
pub fn channel_of(publisher: u32, n: u64, channels: u32) -> u32 {
    ((u64::from(publisher) + n) % u64::from(channels.max(1))) as u32
}

/// Where message `n` of `publisher` falls in the stream a subscriber of `channel` gets from
/// that publisher: `Some(0), Some(1), ...` in publishing order; `None` when that message
/// belongs to another channel (it was delivered to the wrong one).
pub fn publisher_slot(publisher: u32, n: u64, channel: u32, channels: u32) -> Option<u64> {
    // One channel, the common benchmark, skips the two divisions (tens of cycles each, per
    // delivery).
    if channels <= 1 {
        return (channel == 0).then_some(n);
    }
    let k = u64::from(channels);
    (channel_of(publisher, n, channels) == channel).then_some(n / k)
}

/// Fixed bytes of a stamp: `{"p":`, `,"n":`, `,"t":`, `,"s":`, `,"pad":""}`.
const STAMP_FIXED: usize = 5 + 5 + 5 + 5 + 10;

/// The length of the stamp `s` written for `--size` `size`: `size`, or the stamp without
/// padding when that is longer.
pub fn data_len(s: &Stamp, size: usize) -> usize {
    let bare = STAMP_FIXED
        + decimal_len(u64::from(s.publisher))
        + decimal_len(s.seq)
        + decimal_len(s.intended_ns)
        + decimal_len(s.sent_ns);
    bare.max(size)
}

/// Appends the stamp `s` padded to [`data_len`]`(s, size)` bytes.
pub fn write_stamp(out: &mut Vec<u8>, s: &Stamp, size: usize) {
    let start = out.len();
    out.extend_from_slice(b"{\"p\":");
    push_u64(out, u64::from(s.publisher));
    out.extend_from_slice(b",\"n\":");
    push_u64(out, s.seq);
    out.extend_from_slice(b",\"t\":");
    push_u64(out, s.intended_ns);
    out.extend_from_slice(b",\"s\":");
    push_u64(out, s.sent_ns);
    out.extend_from_slice(b",\"pad\":\"");
    let pad = data_len(s, size) - (out.len() - start) - 2;
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// Appends `{"op":"publish","id":<n>,"channel":"<channel>","data":<stamp>}`.
pub fn write_publish(out: &mut Vec<u8>, channel: &[u8], s: &Stamp, size: usize) {
    out.extend_from_slice(b"{\"op\":\"publish\",\"id\":");
    push_u64(out, s.seq);
    out.extend_from_slice(b",\"channel\":\"");
    out.extend_from_slice(channel);
    out.extend_from_slice(b"\",\"data\":");
    write_stamp(out, s, size);
    out.push(b'}');
}

/// Appends `{"op":"subscribe","id":<id>,"channel":"<channel>"}`.
pub fn write_subscribe(out: &mut Vec<u8>, id: u64, channel: &[u8]) {
    out.extend_from_slice(b"{\"op\":\"subscribe\",\"id\":");
    push_u64(out, id);
    out.extend_from_slice(b",\"channel\":\"");
    out.extend_from_slice(channel);
    out.extend_from_slice(b"\"}");
}

/// What one message from the server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// `{"ch":..,"seq":..,"data":..}`.
    Delivery {
        /// The channel name (a string without escapes: channel names need none).
        channel: &'a [u8],
        /// The server's sequence number on that channel.
        seq: u64,
        /// The data read as our stamp; `None` when it is not one.
        stamp: Option<Heard>,
        /// Bytes of the data as delivered.
        data_len: usize,
    },
    /// A reply: it has `"ok"`.
    Reply {
        /// The request id it answers.
        id: Option<u64>,
        /// Success.
        ok: bool,
        /// The channel's sequence number (subscribe: the last one assigned; publish: the one
        /// this message got).
        seq: Option<u64>,
    },
    /// Neither (not an object, or missing what a delivery or reply must have).
    Other,
}

/// A stamp as a subscriber reads it. The sent time `s` is checked to be a number but not
/// read: nothing on the receiving side uses it, and every number read costs time on each
/// delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    /// `p`.
    pub publisher: u32,
    /// `n`.
    pub n: u64,
    /// `t`.
    pub intended_ns: u64,
    /// Bytes of padding (the content of `pad`; 0 without one). With the data's length this
    /// tells whether the data is as long as it was written: `--size`, or unpadded when its
    /// numbers alone are longer ([`data_len`]).
    pub pad: usize,
}

impl Heard {
    /// Whether data of `data_len` bytes carrying this stamp is what a publisher writes for
    /// `--size` `size`: [`data_len`] bytes.
    pub fn sized(&self, data_len: usize, size: usize) -> bool {
        data_len == (data_len - self.pad.min(data_len)).max(size)
    }
}

/// Reads one message from the server.
pub fn read(msg: &[u8]) -> Inbound<'_> {
    fast_delivery(msg).unwrap_or_else(|| read_general(msg))
}

/// The layout the server writes, with a stamp laid out as [`write_stamp`] writes it; `None`
/// for anything else (then the general scanner decides).
#[inline(always)]
fn fast_delivery(msg: &[u8]) -> Option<Inbound<'_>> {
    let rest = msg.strip_prefix(b"{\"ch\":\"")?;
    let quote = rest.iter().position(|&b| b == b'"')?;
    let (channel, rest) = rest.split_at(quote);
    if !scan::plain_content(channel) {
        return None;
    }
    let rest = rest.strip_prefix(b"\",\"seq\":")?;
    let (seq, rest) = scan::leading_uint(rest)?;
    let data = rest.strip_prefix(b",\"data\":")?.strip_suffix(b"}")?;
    let stamp = fast_stamp(data)?;
    Some(Inbound::Delivery {
        channel,
        seq,
        stamp: Some(stamp),
        data_len: data.len(),
    })
}

/// A stamp exactly as [`write_stamp`] lays it out, padding included (the whole of `data`).
#[inline(always)]
fn fast_stamp(data: &[u8]) -> Option<Heard> {
    let rest = data.strip_prefix(b"{\"p\":")?;
    let (p, rest) = scan::leading_uint(rest)?;
    let rest = rest.strip_prefix(b",\"n\":")?;
    let (n, rest) = scan::leading_uint(rest)?;
    let rest = rest.strip_prefix(b",\"t\":")?;
    let (t, rest) = scan::leading_uint(rest)?;
    let rest = rest.strip_prefix(b",\"s\":")?;
    let rest = scan::skip_uint(rest)?;
    let pad = rest.strip_prefix(b",\"pad\":\"")?.strip_suffix(b"\"}")?;
    if !scan::plain_content(pad) {
        return None;
    }
    Some(Heard {
        publisher: u32::try_from(p).ok()?,
        n,
        intended_ns: t,
        pad: pad.len(),
    })
}

/// The `"t"` of a delivery's data: a fanout stamp's intended time, or what whoever publishes
/// to a `connect --subscribe` channel puts there (CLOCK_MONOTONIC ns, the clock this whole
/// machine shares). `None` unless `msg` is an object whose `data` is an object with an
/// unsigned integer `t`.
pub fn data_time(msg: &[u8]) -> Option<u64> {
    let mut data = None;
    if !scan::for_each_member(msg, |k, v| {
        if k == b"data" {
            data = Some(v);
        }
    }) {
        return None;
    }
    let mut t = None;
    if !scan::for_each_member(data?, |k, v| {
        if k == b"t" {
            t = Some(v);
        }
    }) {
        return None;
    }
    scan::uint(t?)
}

/// Any member order and whitespace.
fn read_general(msg: &[u8]) -> Inbound<'_> {
    let (mut ch, mut seq, mut data, mut id, mut ok) = (None, None, None, None, None);
    let whole = scan::for_each_member(msg, |k, v| match k {
        b"ch" => ch = Some(v),
        b"seq" => seq = Some(v),
        b"data" => data = Some(v),
        b"id" => id = Some(v),
        b"ok" => ok = Some(v),
        _ => {}
    });
    if !whole {
        return Inbound::Other;
    }
    if let (Some(ch), Some(seq), Some(data)) = (ch, seq, data) {
        if let (Some(channel), Some(seq)) = (scan::plain_str(ch), scan::uint(seq)) {
            return Inbound::Delivery {
                channel,
                seq,
                stamp: general_stamp(data),
                data_len: data.len(),
            };
        }
    }
    match ok.and_then(scan::boolean) {
        Some(ok) => Inbound::Reply {
            id: id.and_then(scan::uint),
            ok,
            seq: seq.and_then(scan::uint),
        },
        None => Inbound::Other,
    }
}

/// A stamp in any member order: `p`, `n` and `t` required; `s`, when there, a number;
/// `pad`, when there, a string without escapes.
fn general_stamp(data: &[u8]) -> Option<Heard> {
    let (mut p, mut n, mut t, mut s, mut pad) = (None, None, None, None, None);
    let whole = scan::for_each_member(data, |k, v| match k {
        b"p" => p = Some(v),
        b"n" => n = Some(v),
        b"t" => t = Some(v),
        b"s" => s = Some(v),
        b"pad" => pad = Some(v),
        _ => {}
    });
    if !whole || s.is_some_and(|s| scan::uint(s).is_none()) {
        return None;
    }
    Some(Heard {
        publisher: u32::try_from(scan::uint(p?)?).ok()?,
        n: scan::uint(n?)?,
        intended_ns: scan::uint(t?)?,
        pad: match pad {
            Some(v) => scan::plain_str(v)?.len(),
            None => 0,
        },
    })
}

#[cfg(test)]
mod tests;
