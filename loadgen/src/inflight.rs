//! Messages in flight on one connection and the latency of each reply.
//!
//! Echo replies come back in the order the messages were sent, so the send times form a FIFO.
//! It is run-length encoded (one entry per batch written together: a closed loop of depth 64
//! costs one entry per write, not 64), and replies taken from the same batch are recorded
//! into the histogram with one `record_n`.

use std::collections::VecDeque;

use hdrhistogram::Histogram;

use crate::stats::record;

/// Message send times in flight, oldest first, run-length encoded: one entry per batch
/// written together, so a closed loop of depth 64 costs one entry per write, not 64.
#[derive(Debug, Default)]
pub struct Fifo {
    q: VecDeque<(u64, u32)>,
    /// Messages taken since the last record: (send time, count).
    run: (u64, u64),
    /// Messages in flight.
    pub len: u64,
}

impl Fifo {
    /// `n` messages sent (or intended) at `t`.
    pub fn push(&mut self, t: u64, n: u32) {
        if n == 0 {
            return;
        }
        self.len += u64::from(n);
        match self.q.back_mut() {
            Some(back) if back.0 == t => back.1 += n,
            _ => self.q.push_back((t, n)),
        }
    }

    /// One reply arrived at `now`; `false` if none was in flight.
    pub fn take(&mut self, now: u64, h: &mut Histogram<u64>) -> bool {
        let Some(front) = self.q.front_mut() else {
            return false;
        };
        let t = front.0;
        front.1 -= 1;
        if front.1 == 0 {
            self.q.pop_front();
        }
        self.len -= 1;
        if self.run.1 > 0 && self.run.0 != t {
            record(h, now.saturating_sub(self.run.0), self.run.1);
            self.run.1 = 0;
        }
        self.run.0 = t;
        self.run.1 += 1;
        true
    }

    /// `n` replies arrived at `now`; returns how many were in flight (at most `n`).
    pub fn take_n(&mut self, now: u64, n: u64, h: &mut Histogram<u64>) -> u64 {
        let mut left = n;
        while left > 0 {
            let Some(front) = self.q.front_mut() else {
                break;
            };
            let t = front.0;
            let c = left.min(u64::from(front.1));
            // `c <= front.1`, a u32.
            front.1 -= c as u32;
            if front.1 == 0 {
                self.q.pop_front();
            }
            self.len -= c;
            left -= c;
            if self.run.1 > 0 && self.run.0 != t {
                record(h, now.saturating_sub(self.run.0), self.run.1);
                self.run.1 = 0;
            }
            self.run.0 = t;
            self.run.1 += c;
        }
        n - left
    }

    /// Records the replies taken so far (one histogram update per batch).
    pub fn settle(&mut self, now: u64, h: &mut Histogram<u64>) {
        if self.run.1 > 0 {
            record(h, now.saturating_sub(self.run.0), self.run.1);
            self.run.1 = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn fifo_records_each_reply_against_its_batch() {
        let mut f = Fifo::default();
        let mut h = new_histogram();
        f.push(1_000, 2);
        f.push(1_000, 1); // same send time: joins the batch
        f.push(5_000, 2);
        f.push(6_000, 0); // nothing sent: no entry
        assert_eq!(f.len, 5);
        for _ in 0..4 {
            assert!(f.take(11_000, &mut h));
        }
        f.settle(11_000, &mut h);
        assert_eq!(h.len(), 4);
        assert_eq!(h.count_at(10_000), 3);
        assert_eq!(h.count_at(6_000), 1);
        assert!(f.take(12_000, &mut h));
        assert!(!f.take(12_000, &mut h), "nothing left in flight");
        f.settle(12_000, &mut h);
        assert_eq!((h.len(), f.len), (5, 0));
        assert_eq!(h.count_at(7_000), 1);
    }

    /// `take_n` is `n` calls of `take`: same histogram, same queue, same count.
    #[test]
    fn take_n_is_n_takes() {
        for n in 0..12u64 {
            let (mut a, mut b) = (Fifo::default(), Fifo::default());
            let (mut ha, mut hb) = (new_histogram(), new_histogram());
            for f in [&mut a, &mut b] {
                f.push(1_000, 3);
                f.push(2_000, 1);
                f.push(4_000, 4);
            }
            let mut taken = 0;
            for _ in 0..n {
                taken += u64::from(a.take(9_000, &mut ha));
            }
            a.settle(9_000, &mut ha);
            assert_eq!(b.take_n(9_000, n, &mut hb), taken, "n = {n}");
            b.settle(9_000, &mut hb);
            assert_eq!((a.len, a.q.clone()), (b.len, b.q.clone()), "n = {n}");
            assert_eq!(ha, hb, "n = {n}");
        }
    }
}
