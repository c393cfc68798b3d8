//! Conflation: what a subscriber over its send-queue bound is owed on `conflate` channels.
//!
//! While a connection's queue is over `max_backpressure` (or it still has held deliveries, so
//! that nothing newer overtakes them), a delivery with a publisher `key` is not queued: it goes
//! into this table, replacing the held delivery of the same (channel, key). When the queue is
//! back under its bound the shard takes the held deliveries out, oldest first, and queues them.
//! So the subscriber receives, per key, the latest value, in `seq` order per channel, and the
//! replaced ones show as a `seq` gap that `since` can fill from history.
//!
//! # Bounds
//!
//! Per connection at most [`MAX_HELD`] deliveries and `max_bytes` bytes (the shard passes its
//! queue bound, so a slow subscriber holds at most about twice that). A *new* key over either
//! bound is refused (the caller counts it dropped); a replacement is always taken, since it
//! frees the delivery it replaces. Only connections over their bound have an entry; everyone
//! else costs nothing here.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

/// Held deliveries one connection may have at most (distinct (channel, key) pairs).
pub const MAX_HELD: usize = 1024;

/// The longest key, in bytes (like a channel name).
pub const MAX_KEY_LEN: usize = 128;

/// What [`Conflation::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// A new (channel, key): held.
    Added,
    /// Held in place of an older delivery of the same (channel, key), which is now dropped.
    Replaced,
    /// Over the connection's bounds: not held (dropped).
    Refused,
}

#[derive(Debug)]
struct Held {
    channel: Arc<str>,
    key: Arc<str>,
    frame: Bytes,
}

#[derive(Debug, Default)]
struct Conn {
    bytes: usize,
    /// Oldest first: arrival order, which is `seq` order within each channel.
    held: VecDeque<Held>,
}

/// The held deliveries of one shard's connections, by slab index.
#[derive(Debug, Default)]
pub struct Conflation {
    conns: HashMap<usize, Conn>,
}

impl Conflation {
    /// Holds `frame` for connection `idx`, in place of its held delivery with the same
    /// `channel` and `key`, within `max_bytes` (see the module's bounds).
    pub fn put(
        &mut self,
        idx: usize,
        channel: &Arc<str>,
        key: &Arc<str>,
        frame: Bytes,
        max_bytes: usize,
    ) -> Put {
        let c = self.conns.entry(idx).or_default();
        let same = c
            .held
            .iter()
            .position(|h| h.key == *key && h.channel == *channel);
        if let Some(i) = same {
            if let Some(old) = c.held.remove(i) {
                c.bytes -= old.frame.len();
            }
        } else if c.held.len() >= MAX_HELD || c.bytes + frame.len() > max_bytes {
            if c.held.is_empty() {
                self.conns.remove(&idx);
            }
            return Put::Refused;
        }
        c.bytes += frame.len();
        c.held.push_back(Held {
            channel: Arc::clone(channel),
            key: Arc::clone(key),
            frame,
        });
        if same.is_some() {
            Put::Replaced
        } else {
            Put::Added
        }
    }

    /// Takes connection `idx`'s oldest held delivery: (channel, frame).
    pub fn pop(&mut self, idx: usize) -> Option<(Arc<str>, Bytes)> {
        let c = self.conns.get_mut(&idx)?;
        let h = c.held.pop_front();
        if let Some(h) = &h {
            c.bytes -= h.frame.len();
        }
        if c.held.is_empty() {
            self.conns.remove(&idx);
        }
        h.map(|h| (h.channel, h.frame))
    }

    /// Whether connection `idx` has held deliveries.
    pub fn holds(&self, idx: usize) -> bool {
        self.conns.contains_key(&idx)
    }

    /// Drops connection `idx`'s held deliveries of `channel` (it unsubscribed); returns how
    /// many.
    pub fn forget_channel(&mut self, idx: usize, channel: &str) -> usize {
        let Some(c) = self.conns.get_mut(&idx) else {
            return 0;
        };
        let before = c.held.len();
        c.held.retain(|h| &*h.channel != channel);
        c.bytes = c.held.iter().map(|h| h.frame.len()).sum();
        let gone = before - c.held.len();
        if c.held.is_empty() {
            self.conns.remove(&idx);
        }
        gone
    }

    /// Drops everything held for connection `idx` (it is gone); returns how many.
    pub fn forget(&mut self, idx: usize) -> usize {
        self.conns.remove(&idx).map_or(0, |c| c.held.len())
    }
}

/// The conflation key of a publish, `{"op":"publish",...,"key":"AAPL",...}`: a string of 1 to
/// [`MAX_KEY_LEN`] bytes written without escapes. `None` when absent or anything else (the
/// delivery is then unkeyed). Read only for channels whose policy is `conflate`.
pub fn publish_key(text: &[u8]) -> Option<&str> {
    #[derive(serde::Deserialize)]
    struct Key<'a> {
        #[serde(borrow, default)]
        key: Option<&'a serde_json::value::RawValue>,
    }
    let k: Key<'_> = serde_json::from_slice(text).ok()?;
    let raw = k.key?.get();
    let s = raw.strip_prefix('"')?.strip_suffix('"')?;
    let ok = (1..=MAX_KEY_LEN).contains(&s.len()) && !s.contains('\\');
    ok.then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn the_latest_value_per_key_is_kept_in_arrival_order() {
        let mut t = Conflation::default();
        let (ch, k1, k2) = (a("prices"), a("AAPL"), a("MSFT"));
        let f = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert_eq!(t.put(3, &ch, &k1, f("a1"), 100), Put::Added);
        assert_eq!(t.put(3, &ch, &k2, f("m1"), 100), Put::Added);
        assert_eq!(t.put(3, &ch, &k1, f("a2"), 100), Put::Replaced);
        assert!(t.holds(3) && !t.holds(4));
        assert_eq!(t.pop(3), Some((a("prices"), f("m1"))));
        assert_eq!(t.pop(3), Some((a("prices"), f("a2"))));
        assert_eq!(t.pop(3), None);
        assert!(!t.holds(3), "an empty entry is removed");
    }

    #[test]
    fn new_keys_are_refused_over_the_bounds_but_replacements_are_taken() {
        let mut t = Conflation::default();
        let ch = a("c");
        let big = Bytes::from(vec![0u8; 60]);
        assert_eq!(t.put(1, &ch, &a("x"), big.clone(), 100), Put::Added);
        assert_eq!(t.put(1, &ch, &a("y"), big.clone(), 100), Put::Refused);
        assert_eq!(t.put(1, &ch, &a("x"), big.clone(), 100), Put::Replaced);
        assert_eq!(t.put(2, &ch, &a("y"), big.clone(), 10), Put::Refused);
        assert!(!t.holds(2), "a refusal leaves no empty entry");
        for i in 0..MAX_HELD {
            let r = t.put(5, &ch, &a(&i.to_string()), Bytes::new(), usize::MAX);
            assert_eq!(r, Put::Added);
        }
        assert_eq!(
            t.put(5, &ch, &a("one more"), Bytes::new(), usize::MAX),
            Put::Refused
        );
        assert_eq!(t.forget(5), MAX_HELD);
    }

    #[test]
    fn unsubscribing_drops_only_that_channels_deliveries() {
        let mut t = Conflation::default();
        t.put(1, &a("a"), &a("k"), Bytes::from_static(b"1"), 100);
        t.put(1, &a("b"), &a("k"), Bytes::from_static(b"2"), 100);
        assert_eq!(t.forget_channel(1, "a"), 1);
        assert_eq!(t.pop(1), Some((a("b"), Bytes::from_static(b"2"))));
        assert_eq!(t.forget_channel(1, "b"), 0);
    }

    #[test]
    fn keys_are_short_plain_strings() {
        let k = |s: &str| publish_key(s.as_bytes()).map(str::to_owned);
        assert_eq!(
            k(r#"{"op":"publish","key":"AAPL","data":1}"#),
            Some("AAPL".into())
        );
        assert_eq!(k(r#"{"op":"publish","data":1}"#), None);
        assert_eq!(k(r#"{"key":1}"#), None);
        assert_eq!(k(r#"{"key":""}"#), None);
        assert_eq!(k(r#"{"key":"a\"b"}"#), None);
        assert_eq!(k(&format!(r#"{{"key":"{}"}}"#, "x".repeat(129))), None);
        assert_eq!(k("not json"), None);
    }
}
