//! A channel's recent past, for subscribers that resume after a drop.
//!
//! The channel's owner keeps one [`History`]: the delivery frames of the last `cap` messages,
//! each with its sequence number and the time it was published, minus those older than
//! `ttl_ms`. The frames are the same shared `Bytes` the live deliveries used, so a replay is
//! byte-identical to what the subscriber would have received and costs no encoding.
//!
//! # Contract
//!
//! - The ring holds one run of *consecutive* sequence numbers. A push that does not continue
//!   the run (a skipped number, or one not above the last) starts a new run: the old entries
//!   could no longer be replayed without a hole, so they are dropped. This is what lets
//!   [`History::since`] promise that a replay never has a silent gap.
//! - Time is the caller's `now_ms` (milliseconds on any monotonic clock). An entry published at
//!   `at` is expired from `at + ttl_ms` on; `ttl_ms == 0` means entries never expire. A push
//!   with a `now_ms` earlier than the newest entry's is recorded at the newest entry's time, so
//!   the ring stays in time order and expiry only ever removes from the front.
//! - `cap` bounds the ring whatever the TTL; `cap == 0` keeps nothing (history off).
//! - The epoch names this history's lifetime. A subscriber's `since` from another epoch (an
//!   earlier incarnation of the channel, another server) cannot be trusted, whatever its seq.

use std::collections::vec_deque;
use std::collections::VecDeque;

use bytes::Bytes;

/// One retained delivery.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    at_ms: u64,
    frame: Bytes,
}

/// A bounded, time-limited ring of one channel's delivery frames.
#[derive(Debug)]
pub struct History {
    epoch: u32,
    cap: usize,
    ttl_ms: u64,
    /// Oldest first; consecutive `seq`s; `at_ms` non-decreasing.
    entries: VecDeque<Entry>,
}

/// What a resuming subscriber missed.
#[derive(Debug)]
pub enum Recovery<'a> {
    /// Nothing: it saw the channel's last message.
    UpToDate,
    /// Exactly the frames it missed, oldest first, from its `seq + 1` up to the channel's last
    /// sequence number, with no gap.
    Replay(Frames<'a>),
    /// The history cannot say: another epoch, a `seq` from the future, or messages it missed
    /// are no longer (or were never) retained. The subscriber must resync.
    Gone,
}

/// The frames of a [`Recovery::Replay`], oldest first: an iterator of `&Bytes` (clone each one
/// to queue it; a clone shares the bytes). [`Frames::first_seq`] says where it starts.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    first_seq: u64,
    inner: vec_deque::Iter<'a, Entry>,
}

impl Frames<'_> {
    /// The sequence number of the first frame (the subscriber's `seq + 1`).
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a Bytes;

    fn next(&mut self) -> Option<&'a Bytes> {
        self.inner.next().map(|e| &e.frame)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for Frames<'_> {}

impl History {
    /// An empty history for a channel in `epoch`, keeping at most `cap` messages, each for
    /// at most `ttl_ms` (0: no time limit). Nothing is allocated until the first push.
    pub fn new(epoch: u32, cap: usize, ttl_ms: u64) -> History {
        History {
            epoch,
            cap,
            ttl_ms,
            entries: VecDeque::new(),
        }
    }

    /// The epoch this history belongs to.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Records the delivery `frame` of message `seq`, published at `now_ms`, dropping what
    /// is expired or over the cap. See the module contract for a `seq` that does not follow
    /// the last one.
    pub fn push(&mut self, seq: u64, now_ms: u64, frame: Bytes) {
        if self.cap == 0 {
            return;
        }
        let at_ms = match self.entries.back() {
            Some(last) if last.seq.checked_add(1) == Some(seq) => now_ms.max(last.at_ms),
            Some(_) => {
                self.entries.clear();
                now_ms
            }
            None => now_ms,
        };
        self.expire(now_ms);
        while self.entries.len() >= self.cap {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry { seq, at_ms, frame });
    }

    /// Drops the entries expired at `now_ms`. Memory is returned when the ring empties, so a
    /// quiet channel holds nothing.
    pub fn expire(&mut self, now_ms: u64) {
        if self.ttl_ms == 0 {
            return;
        }
        while self
            .entries
            .front()
            .is_some_and(|e| self.expired(e, now_ms))
        {
            self.entries.pop_front();
        }
        if self.entries.is_empty() && self.entries.capacity() > 0 {
            self.entries = VecDeque::new();
        }
    }

    fn expired(&self, e: &Entry, now_ms: u64) -> bool {
        self.ttl_ms != 0 && now_ms >= e.at_ms.saturating_add(self.ttl_ms)
    }

    /// What a subscriber that last saw `seq` in `epoch` missed, when the channel's last
    /// sequence number is `last_seq` and the time is `now_ms` (entries expired by then are not
    /// replayed, even if [`expire`](History::expire) has not run).
    ///
    /// - another epoch, or `seq > last_seq`: [`Recovery::Gone`];
    /// - `seq == last_seq`: [`Recovery::UpToDate`];
    /// - otherwise [`Recovery::Replay`] of `seq + 1 ..= last_seq` if every one of them is
    ///   retained and live, else [`Recovery::Gone`] — never a replay with a hole at either end.
    pub fn since(&self, epoch: u32, seq: u64, last_seq: u64, now_ms: u64) -> Recovery<'_> {
        if epoch != self.epoch || seq > last_seq {
            return Recovery::Gone;
        }
        if seq == last_seq {
            return Recovery::UpToDate;
        }
        // seq < last_seq, so seq + 1 does not overflow.
        let first = seq + 1;
        let (Some(oldest), Some(newest)) = (self.entries.front(), self.entries.back()) else {
            return Recovery::Gone;
        };
        // The run must reach the channel's end (a newer message that was never recorded
        // would be a gap after the replay) and start at or before `first`.
        if newest.seq != last_seq || oldest.seq > first {
            return Recovery::Gone;
        }
        // Consecutive seqs: the entry for `first` is at a known index.
        let Ok(at) = usize::try_from(first - oldest.seq) else {
            return Recovery::Gone;
        };
        // Time-ordered: if the first needed entry is live, so are all after it.
        match self.entries.get(at) {
            Some(e) if !self.expired(e, now_ms) => Recovery::Replay(Frames {
                first_seq: first,
                inner: self.entries.range(at..),
            }),
            _ => Recovery::Gone,
        }
    }

    /// Retained entries (expired ones count until [`expire`](History::expire) runs).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The oldest and newest retained sequence numbers.
    pub fn range(&self) -> Option<(u64, u64)> {
        Some((self.entries.front()?.seq, self.entries.back()?.seq))
    }

    /// Heap this history keeps alive: the ring's slots plus the retained frames. The frames
    /// are shared with send queues, so this is an upper bound on what dropping it frees.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.entries.iter().map(|e| e.frame.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Bytes {
        Bytes::from(format!("frame {seq}"))
    }

    /// A history holding `seqs`, each pushed at time `seq * 10`.
    fn with(cap: usize, ttl_ms: u64, seqs: std::ops::RangeInclusive<u64>) -> History {
        let mut h = History::new(7, cap, ttl_ms);
        for s in seqs {
            h.push(s, s * 10, frame(s));
        }
        h
    }

    /// The replayed seqs, or None for UpToDate, panicking on Gone.
    fn replay(r: Recovery<'_>) -> Vec<u64> {
        match r {
            Recovery::Replay(f) => {
                let first = f.first_seq();
                let n = f.len();
                let got: Vec<u64> = f
                    .map(|b| std::str::from_utf8(&b[6..]).unwrap().parse().unwrap())
                    .collect();
                assert_eq!(got.len(), n, "ExactSizeIterator");
                assert_eq!(got.first(), Some(&first));
                assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");
                got
            }
            other => panic!("expected a replay, got {other:?}"),
        }
    }

    fn gone(r: Recovery<'_>) -> bool {
        matches!(r, Recovery::Gone)
    }

    #[test]
    fn cap_keeps_the_last_messages() {
        let h = with(3, 0, 1..=10);
        assert_eq!((h.len(), h.range()), (3, Some((8, 10))));
        // Resuming from 7 needs 8..=10: exactly what is kept.
        assert_eq!(replay(h.since(7, 7, 10, 0)), [8, 9, 10]);
        // seq + 1 == oldest is the boundary; one earlier is a gap.
        assert!(gone(h.since(7, 6, 10, 0)));
        assert_eq!(replay(h.since(7, 8, 10, 0)), [9, 10]);
        assert_eq!(replay(h.since(7, 9, 10, 0)), [10]);
        assert!(matches!(h.since(7, 10, 10, 0), Recovery::UpToDate));
        assert!(gone(h.since(7, 0, 10, 0)));
    }

    #[test]
    fn cap_one_and_cap_zero() {
        let h = with(1, 0, 1..=5);
        assert_eq!(h.range(), Some((5, 5)));
        assert_eq!(replay(h.since(7, 4, 5, 0)), [5]);
        assert!(gone(h.since(7, 3, 5, 0)));
        let h = with(0, 0, 1..=5);
        assert!(h.is_empty());
        assert_eq!(h.heap_bytes(), 0);
        // History off: only an up-to-date subscriber recovers.
        assert!(matches!(h.since(7, 5, 5, 0), Recovery::UpToDate));
        assert!(gone(h.since(7, 4, 5, 0)));
    }

    #[test]
    fn from_the_future_or_another_epoch_is_gone() {
        let h = with(10, 0, 1..=5);
        assert!(gone(h.since(7, 6, 5, 0)));
        assert!(gone(h.since(7, u64::MAX, 5, 0)));
        assert!(gone(h.since(8, 5, 5, 0)), "even up to date, another epoch");
        assert!(gone(h.since(6, 4, 5, 0)));
        assert_eq!(replay(h.since(7, 4, 5, 0)), [5]);
    }

    #[test]
    fn a_channel_with_no_messages_yet() {
        let h = History::new(7, 10, 0);
        assert!(matches!(h.since(7, 0, 0, 0), Recovery::UpToDate));
        assert!(gone(h.since(7, 1, 0, 0)));
        assert_eq!(h.range(), None);
    }

    #[test]
    fn ring_must_reach_the_channels_last_seq() {
        let h = with(10, 0, 1..=5);
        // The caller says the channel is at 6 but 6 was never recorded: replaying 3..=5 and
        // then going live at 7 would hide 6.
        assert!(gone(h.since(7, 2, 6, 0)));
        // And a ring ahead of the caller's last_seq is no basis for a replay either.
        assert!(gone(h.since(7, 2, 4, 0)));
    }

    #[test]
    fn a_skipped_or_repeated_seq_starts_a_new_run() {
        let mut h = with(10, 0, 1..=5);
        h.push(7, 70, frame(7));
        assert_eq!(h.range(), Some((7, 7)));
        assert!(gone(h.since(7, 5, 7, 70)), "6 is missing");
        assert_eq!(replay(h.since(7, 6, 7, 70)), [7]);
        h.push(7, 80, frame(7));
        assert_eq!(h.range(), Some((7, 7)));
        h.push(3, 90, frame(3));
        assert_eq!((h.len(), h.range()), (1, Some((3, 3))));
        h.push(u64::MAX, 90, frame(u64::MAX));
        assert_eq!(h.range(), Some((u64::MAX, u64::MAX)));
        // Nothing follows u64::MAX; a push after it restarts rather than overflowing.
        h.push(0, 90, frame(0));
        assert_eq!(h.range(), Some((0, 0)));
        assert!(matches!(
            h.since(7, u64::MAX, u64::MAX, 90),
            Recovery::UpToDate
        ));
    }

    #[test]
    fn ttl_boundaries() {
        // Pushed at 10, 20, 30, 40, 50; ttl 25: an entry lives for [at, at + 25).
        let h = with(100, 25, 1..=5);
        // At 50: seq 1 (10 + 25 = 35) and 2 (45) are expired, 3 (55) lives. The push at 50
        // already dropped them.
        assert_eq!(h.range(), Some((3, 5)));
        assert!(gone(h.since(7, 1, 5, 50)));
        assert_eq!(replay(h.since(7, 2, 5, 50)), [3, 4, 5]);
        // At 54 seq 3 still lives; at 55 it is gone.
        assert_eq!(replay(h.since(7, 2, 5, 54)), [3, 4, 5]);
        assert!(gone(h.since(7, 2, 5, 55)));
        assert_eq!(replay(h.since(7, 3, 5, 55)), [4, 5]);
        // Everything expired: only up to date recovers.
        assert!(gone(h.since(7, 4, 5, 75)));
        assert!(matches!(h.since(7, 5, 5, 75), Recovery::UpToDate));
    }

    #[test]
    fn push_and_expire_drop_expired_entries() {
        let mut h = with(100, 25, 1..=5);
        assert_eq!(h.range(), Some((3, 5)));
        h.expire(54);
        assert_eq!(h.range(), Some((3, 5)));
        h.expire(55);
        assert_eq!(h.range(), Some((4, 5)));
        h.expire(75);
        assert!(h.is_empty());
        assert_eq!(h.heap_bytes(), 0, "memory returned when empty");
        // The channel goes on; the next push starts a run that continues from 6.
        h.push(6, 80, frame(6));
        assert_eq!(replay(h.since(7, 5, 6, 80)), [6]);
    }

    #[test]
    fn no_ttl_never_expires() {
        let mut h = with(10, 0, 1..=3);
        h.expire(u64::MAX);
        assert_eq!(replay(h.since(7, 0, 3, u64::MAX)), [1, 2, 3]);
    }

    #[test]
    fn ttl_near_u64_max_does_not_overflow() {
        // at + ttl saturates at u64::MAX instead of wrapping to the past.
        let mut h = History::new(7, 10, u64::MAX);
        h.push(1, 5, frame(1));
        h.expire(u64::MAX - 1);
        assert_eq!(replay(h.since(7, 0, 1, u64::MAX - 1)), [1]);
        h.expire(u64::MAX);
        assert!(h.is_empty());
    }

    #[test]
    fn a_clock_going_back_keeps_time_order() {
        let mut h = History::new(7, 10, 100);
        h.push(1, 500, frame(1));
        h.push(2, 400, frame(2)); // recorded at 500
        assert_eq!(replay(h.since(7, 0, 2, 599)), [1, 2]);
        assert!(gone(h.since(7, 1, 2, 600)), "seq 2 expires with seq 1");
    }

    #[test]
    fn cap_and_ttl_together() {
        let mut h = History::new(7, 3, 100);
        for s in 1..=5 {
            h.push(s, s * 10, frame(s));
        }
        assert_eq!(h.range(), Some((3, 5)));
        // The cap binds first; from 130 on, seq 3 (30 + 100) has expired too.
        assert_eq!(replay(h.since(7, 2, 5, 129)), [3, 4, 5]);
        assert!(gone(h.since(7, 2, 5, 130)));
        assert_eq!(replay(h.since(7, 3, 5, 130)), [4, 5]);
    }

    #[test]
    fn frames_are_shared_not_copied() {
        let f = frame(1);
        let mut h = History::new(7, 4, 0);
        h.push(1, 0, f.clone());
        let Recovery::Replay(mut frames) = h.since(7, 0, 1, 0) else {
            panic!("expected a replay");
        };
        assert_eq!(frames.next().unwrap().as_ptr(), f.as_ptr());
        assert!(h.heap_bytes() >= f.len());
    }

    #[test]
    fn heap_is_bounded_by_cap() {
        let mut h = History::new(7, 8, 0);
        for s in 0..10_000 {
            h.push(s, s, frame(s));
        }
        assert_eq!(h.len(), 8);
        assert!(h.entries.capacity() <= 16, "{}", h.entries.capacity());
    }
}
