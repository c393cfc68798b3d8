//! Where each local subscriber stands in its channels: the resume position a drained
//! connection is told (`drain.rs`; docs/PROTOCOL.md, "Drain"), exactly the `since` that makes
//! a resume neither repeat nor skip a delivery this connection was given.
//!
//! **One position per channel, not per subscriber.** A channel's deliveries reach its live
//! subscribers on a shard as one stream (`hub_sweep.rs`), so once the channel's sweep is
//! complete every live subscriber has been given everything committed to it: its position is
//! the channel's, the epoch of the owner's subscribe answer and the `seq` of the last delivery
//! committed here (`Local::epoch`, `Local::seq`). A subscriber that was given none yet stands
//! at its subscribe reply's `seq`, which is what the answer sets `Local::seq` to (the owner
//! answers after every earlier delivery on the same FIFO path, and before every later one).
//! With the Redis bus a channel's numbering may restart; the `reset` notice then moves every
//! live subscriber to the new epoch and its starting seq ([`Shard::reposition`]).
//!
//! **The exceptions are recorded on the slow path only.** A subscriber over its bound on a
//! `drop` or `conflate` channel is refused deliveries, or has them held (`slow.rs`); only
//! then is a [`Gap`] kept for it, saying which run of deliveries it was not given, and a held
//! delivery that is queued later moves it on. A subscriber that keeps up costs nothing here.

use std::collections::HashMap;
use std::sync::Arc;

use crate::hub::sse::delivery_seq;

use super::event_loop::Shard;

/// The deliveries a subscriber of one channel was not given: after `queued` (the last it
/// was), up to `through`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gap {
    queued: u64,
    through: u64,
}

/// The gaps of the subscribers that were refused deliveries, by slab index and channel.
#[derive(Default)]
pub(super) struct Gaps {
    by_conn: HashMap<u32, Vec<(Arc<str>, Gap)>>,
}

impl Gaps {
    /// Deliveries `first..=last` of `channel` were not queued for connection `idx`.
    fn missed(&mut self, idx: u32, channel: &Arc<str>, first: u64, last: u64) {
        if first == 0 || last < first {
            return;
        }
        let list = self.by_conn.entry(idx).or_default();
        match list.iter_mut().find(|(c, _)| c == channel) {
            // The run it was already missing goes on.
            Some((_, g)) if g.through + 1 == first => g.through = last,
            // Everything between the last run and this one was queued.
            Some((_, g)) => {
                *g = Gap {
                    queued: first - 1,
                    through: last,
                }
            }
            None => list.push((
                Arc::clone(channel),
                Gap {
                    queued: first - 1,
                    through: last,
                },
            )),
        }
    }

    /// The delivery `frame` of `channel`, held for connection `idx` earlier, was queued now.
    pub(super) fn released(&mut self, idx: usize, channel: &str, frame: &[u8]) {
        if !self.by_conn.contains_key(&(idx as u32)) {
            return;
        }
        if let Some(seq) = delivery_seq(frame) {
            self.released_seq(idx as u32, channel, seq);
        }
    }

    fn released_seq(&mut self, idx: u32, channel: &str, seq: u64) {
        let gap = self.by_conn.get_mut(&idx).and_then(|list| {
            list.iter_mut()
                .find(|(c, _)| &**c == channel)
                .map(|(_, g)| g)
        });
        if let Some(g) = gap.filter(|g| seq <= g.through) {
            g.queued = g.queued.max(seq);
        }
    }

    /// The last delivery of `channel` queued for `idx`, when the last committed one is `head`.
    fn last_queued(&self, idx: u32, channel: &str, head: u64) -> u64 {
        let gap = self
            .by_conn
            .get(&idx)
            .and_then(|list| list.iter().find(|(c, _)| &**c == channel));
        match gap {
            // Everything after the run was queued.
            Some((_, g)) if g.through >= head => g.queued,
            _ => head,
        }
    }

    /// The channel's numbering restarted: what was missed in the old one is not comparable.
    fn forget_channel(&mut self, channel: &str) {
        self.by_conn.retain(|_, list| {
            list.retain(|(c, _)| &**c != channel);
            !list.is_empty()
        });
    }

    /// The connection left `channel` (or went): nothing to remember.
    pub(super) fn forget(&mut self, idx: u32, channel: &str) {
        if let Some(list) = self.by_conn.get_mut(&idx) {
            list.retain(|(c, _)| &**c != channel);
            if list.is_empty() {
                self.by_conn.remove(&idx);
            }
        }
    }
}

/// A connection's resume position in one channel.
pub(super) struct Position {
    pub channel: Arc<str>,
    pub epoch: u32,
    pub seq: u64,
}

impl Shard {
    /// The positions of connection `idx` in every channel it is live in. A subscribe still
    /// waiting for the owner's answer is left out: the client was never told an epoch for it.
    /// Exact once the channels' sweeps are complete (`flush_channel`).
    pub(super) fn positions(&self, idx: usize) -> Vec<Position> {
        let Some(c) = self.conns.get(idx) else {
            return Vec::new();
        };
        let key = (idx as u32, c.generation);
        self.hub
            .by_conn
            .iter(idx)
            .filter_map(|ch| {
                // Subscribed (live or pending) and not pending: live. `pending` is short.
                let l = self
                    .hub
                    .local
                    .get(ch)
                    .filter(|l| !l.pending.contains(&key))?;
                Some(Position {
                    channel: Arc::clone(ch),
                    epoch: l.epoch,
                    seq: self.hub.gaps.last_queued(key.0, ch, l.seq),
                })
            })
            .collect()
    }

    /// The channel's numbering restarted (Redis bus, `hub_relay.rs`): once the `reset` notice
    /// is queued, every live subscriber stands at `seq` in `epoch`.
    pub(super) fn reposition(&mut self, channel: &str, epoch: u32, seq: u64) {
        if let Some(l) = self.hub.local.get_mut(channel) {
            (l.epoch, l.seq) = (epoch, seq);
        }
        self.hub.gaps.forget_channel(channel);
    }

    /// The deliveries in `frames` (joined, the last being the channel's last committed) were
    /// not queued for the connections in `over`.
    pub(super) fn note_missed(&mut self, channel: &Arc<str>, frames: &[u8], over: &[usize]) {
        let Some(first) = delivery_seq(frames) else {
            return;
        };
        let last = self.hub.local.get(channel).map_or(0, |l| l.seq);
        for &idx in over {
            self.hub.gaps.missed(idx as u32, channel, first, last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gap_the_position_is_the_channels() {
        let g = Gaps::default();
        assert_eq!(g.last_queued(3, "news", 41), 41);
    }

    #[test]
    fn a_refused_run_holds_the_position_until_something_newer_is_queued() {
        let ch: Arc<str> = Arc::from("log");
        let mut g = Gaps::default();
        // 11..=12 refused, then 13 refused too: one run after 10.
        g.missed(1, &ch, 11, 12);
        g.missed(1, &ch, 13, 13);
        assert_eq!(g.last_queued(1, "log", 13), 10);
        // 14 was queued (no record for it): the position moves on.
        assert_eq!(g.last_queued(1, "log", 14), 14);
        // A new run after 14 and 15 were queued.
        g.missed(1, &ch, 16, 17);
        assert_eq!(g.last_queued(1, "log", 17), 15);
        // Other connections and channels are not affected.
        assert_eq!(g.last_queued(2, "log", 17), 17);
        assert_eq!(g.last_queued(1, "news", 5), 5);
        g.forget(1, "log");
        assert!(!g.by_conn.contains_key(&1));
        g.missed(1, &ch, 20, 21);
        g.missed(2, &ch, 20, 21);
        g.forget_channel("log");
        assert!(g.by_conn.is_empty());
        assert_eq!(g.last_queued(1, "log", 17), 17);
    }

    #[test]
    fn held_deliveries_queued_later_move_the_position() {
        let ch: Arc<str> = Arc::from("prices");
        let mut g = Gaps::default();
        // 21..=23 held or refused; 21 and 22 are released, 23 was dropped.
        g.missed(4, &ch, 21, 23);
        g.released_seq(4, "prices", 21);
        g.released_seq(4, "prices", 22);
        assert_eq!(g.last_queued(4, "prices", 23), 22);
        // A release of something outside the run changes nothing.
        g.released_seq(4, "prices", 30);
        assert_eq!(g.last_queued(4, "prices", 23), 22);
        // Nonsense ranges are ignored.
        g.missed(5, &ch, 0, 3);
        g.missed(5, &ch, 9, 8);
        assert!(!g.by_conn.contains_key(&5));
    }
}
