//! Deliveries read once per message, not once per subscriber.
//!
//! Every subscriber of a channel receives the same bytes for a message, so a thread holding
//! 10,000 subscribers would read the same JSON 10,000 times; reading it was most of what a
//! subscriber cost per delivery. [`Memo`] keeps the last deliveries read, each with the
//! bytes it was read from, in a small direct-mapped table. A message whose bytes are
//! exactly those of an entry gets that entry's reading (reading is a pure function of the
//! bytes); anything else is read in full and takes the slot. Every per-delivery check the
//! subscriber makes (channel, sequence, stamp, size, latency) still runs on every delivery.
//!
//! The slot comes from the delivery's channel and sequence number: a poor pick only costs a
//! miss, never a wrong answer.

use super::{Heard, Inbound};

/// Slots: deliveries of up to this many messages of a channel can be in flight across a
/// thread's subscribers before the table thrashes (a subscriber that lags by seconds reads
/// thousands of messages behind the others).
const SLOTS: usize = 8192;
/// Messages longer than this are not kept (their reading is not worth the copy).
const MAX_LEN: usize = 512;

/// A delivery's reading, with the channel kept as its place in the bytes.
#[derive(Debug, Clone, Copy)]
struct Reading {
    channel: (u32, u32),
    seq: u64,
    stamp: Option<Heard>,
    data_len: usize,
}

#[derive(Debug, Default)]
struct Entry {
    bytes: Vec<u8>,
    reading: Option<Reading>,
}

/// The table; one per worker thread.
#[derive(Debug)]
pub struct Memo {
    slots: Vec<Entry>,
    /// Messages answered from the table, and read in full.
    pub hits: u64,
    pub misses: u64,
}

impl Default for Memo {
    fn default() -> Memo {
        Memo {
            slots: (0..SLOTS).map(|_| Entry::default()).collect(),
            hits: 0,
            misses: 0,
        }
    }
}

impl Memo {
    /// [`super::read`], from the table when these exact bytes were read before.
    #[inline]
    pub fn read<'m>(&mut self, msg: &'m [u8]) -> Inbound<'m> {
        if msg.len() > MAX_LEN {
            return super::read(msg);
        }
        let e = &mut self.slots[slot(msg)];
        if let Some(r) = e.reading {
            if crate::workload::same(&e.bytes, msg) {
                self.hits += 1;
                let (at, len) = (r.channel.0 as usize, r.channel.1 as usize);
                return Inbound::Delivery {
                    channel: &msg[at..at + len],
                    seq: r.seq,
                    stamp: r.stamp,
                    data_len: r.data_len,
                };
            }
        }
        self.misses += 1;
        let inbound = super::read(msg);
        e.reading = match inbound {
            Inbound::Delivery {
                channel,
                seq,
                stamp,
                data_len,
            } => {
                e.bytes.clear();
                e.bytes.extend_from_slice(msg);
                // The channel is a sub-slice of `msg`: its offset is where it lies.
                let at = channel.as_ptr() as usize - msg.as_ptr() as usize;
                Some(Reading {
                    channel: (at as u32, channel.len() as u32),
                    seq,
                    stamp,
                    data_len,
                })
            }
            _ => None,
        };
        inbound
    }
}

/// The slot for `msg`: its channel's and sequence number's, read from the layout the server
/// writes (`{"ch":"<channel>","seq":<seq>,`), so that the messages of one channel in flight
/// take different slots; anything else shares slot 0.
#[inline(always)]
fn slot(msg: &[u8]) -> usize {
    let key = || {
        let rest = msg.strip_prefix(b"{\"ch\":\"")?;
        let quote = super::scan::find_quote(rest)?;
        let (channel, rest) = rest.split_at(quote);
        let rest = rest.strip_prefix(b"\",\"seq\":")?;
        let (seq, _) = super::scan::leading_uint(rest)?;
        // Channels of one thread differ in their last bytes (`bench.0`, `bench.1`, ...).
        // One 8-byte load when the name is that long (a byte copy into a word would cost a
        // store-forwarding stall on every delivery); shorter names a byte at a time.
        let tail = match channel.last_chunk::<8>() {
            Some(w) => u64::from_le_bytes(*w),
            None => channel.iter().fold(0u64, |w, &b| (w << 8) | u64::from(b)),
        };
        let ch = (tail ^ channel.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Some(seq.wrapping_add(ch >> 40))
    };
    key().unwrap_or(0) as usize % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Stamp;

    fn delivery(channel: &str, seq: u64, n: u64, t: u64) -> Vec<u8> {
        sized_delivery(channel, seq, n, t, 64)
    }

    fn sized_delivery(channel: &str, seq: u64, n: u64, t: u64, size: usize) -> Vec<u8> {
        let s = Stamp {
            publisher: 0,
            seq: n,
            intended_ns: t,
            sent_ns: t + 5,
        };
        let mut data = Vec::new();
        super::super::write_stamp(&mut data, &s, size);
        let mut m = format!("{{\"ch\":\"{channel}\",\"seq\":{seq},\"data\":").into_bytes();
        m.extend_from_slice(&data);
        m.push(b'}');
        m
    }

    /// Whatever the order and repetition of messages, the table answers as a fresh read
    /// would, and repeated bytes are answered from it.
    #[test]
    fn answers_as_a_fresh_read_would() {
        let mut memo = Memo::default();
        let mut msgs = Vec::new();
        for i in 0..600u64 {
            msgs.push(delivery(
                &format!("bench.{}", i % 3),
                i,
                i / 3,
                1_000_000 + i * 7,
            ));
        }
        // Near-misses of a kept message: one byte changed anywhere.
        let base = delivery("bench.0", 7, 2, 1_000_049);
        for at in 0..base.len() {
            let mut m = base.clone();
            m[at] ^= 0x01;
            msgs.push(m);
        }
        // Longer than a slot keeps, and right at the limit.
        msgs.push(sized_delivery("bench.1", 9, 3, 1_000_063, MAX_LEN + 100));
        let at_limit = MAX_LEN - delivery("bench.1", 10, 3, 1_000_070).len() + 64;
        msgs.push(sized_delivery("bench.1", 10, 3, 1_000_070, at_limit));
        assert_eq!(msgs.last().map(Vec::len), Some(MAX_LEN));
        msgs.push(b"{\"id\":1,\"ok\":true,\"seq\":3}".to_vec());
        msgs.push(b"not json at all, but long enough".to_vec());
        for round in 0..3 {
            for (i, m) in msgs.iter().enumerate() {
                // Each message several times in a row, as a sweep delivers them.
                for _ in 0..=(i % 3) {
                    assert_eq!(memo.read(m), super::super::read(m), "round {round} msg {i}");
                }
            }
        }
        assert!(
            memo.hits > memo.misses,
            "{} hits, {} misses",
            memo.hits,
            memo.misses
        );
    }
}
