//! The owner's side of a channel with the Redis bus: a relay between Redis and the shards.
//!
//! With `--bus redis://…` no shard numbers messages: Redis does (src/bus). A channel's owner
//! shard still is the node's single point for the channel, but it *relays*: it receives the
//! numbered deliveries from the bus thread in Redis's order, keeps the last of them as a cache
//! of the history, and fans them out to the node's interested shards exactly as a local
//! owner does (`owner_deliver`). Subscribers therefore see the same numbers, in the same
//! order, on every node.
//!
//! **States.** A relay starts *unsynced*: it has asked the bus to subscribe to the channel's
//! topic and then report the channel's position (epoch, last seq). Deliveries that arrive
//! before the position are *held*; those at or below the position are dropped (they happened
//! before this node listened), the rest are delivered. Subscribe requests wait until then.
//!
//! **Gaps.** A delivery that is not `last + 1` means pub/sub lost something (a reconnect): the
//! relay holds it and *fetches* what it missed from the history in Redis; the fetched
//! messages and then the held ones are delivered in order. Whatever history no longer has is
//! delivered as a visible gap (counted) rather than waited for. After a reconnect the bus
//! asks every relay to fetch, so messages published while this node was cut off arrive too.
//!
//! **Resume.** A `since` the local cache cannot serve is served from a fetch: the replay is
//! the fetched messages up to the relay's `last` plus the cache, and the subscription goes
//! live after `last`, so replay and live neither overlap nor leave a hole.
//!
//! **Epoch change.** If the channel's state in Redis was lost (a restart without
//! persistence), Redis starts a new epoch. The relay sends every subscriber a
//! `{"type":"reset"}` notice with the new epoch and continues with the new numbering.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::bus::{BusEvent, Entry, Req};
use crate::hub::history::{History, Recovery};
use crate::hub::wire;

use crate::metrics::CloseReason;

use super::conn::Phase;
use super::event_loop::Shard;
use super::hub::{ConnAddr, HubCmd, Subscribed};
use super::send_queue::SendStatus;

/// Deliveries one relay holds at most while it waits for a position; beyond, the oldest go
/// (and show as a gap).
const MAX_HELD: usize = 65_536;

/// A relay's state beside the owner's (`Owned`).
pub(super) struct Relay {
    /// Names this incarnation of the relay in bus answers; stale answers are ignored.
    token: u64,
    /// The channel's position has been received.
    synced: bool,
    /// A fetch is out; deliveries are held until it is answered.
    fetching: bool,
    held: VecDeque<(u32, Entry)>,
    waiting: Vec<Waiting>,
}

/// A subscribe waiting for the relay.
struct Waiting {
    from: ConnAddr,
    id: Option<u64>,
    since: Option<(Option<u32>, u64)>,
}

/// What to tell one waiting subscriber.
enum Verdict {
    /// Answer now: `recovered` and the frames to replay.
    Answer(Option<bool>, Vec<Bytes>),
    /// Needs what the channel said after this seq.
    Fetch(u64),
}

impl Shard {
    /// A subscribe reaching the owner of a relayed channel.
    pub(super) fn relay_subscribe(
        &mut self,
        channel: Arc<str>,
        from: ConnAddr,
        id: Option<u64>,
        since: Option<(Option<u32>, u64)>,
    ) {
        self.hub.relay_token += 1;
        let token = self.hub.relay_token;
        let o = self.owned_entry(&channel);
        o.interested |= 1u64 << from.shard;
        let fresh = o.relay.is_none();
        let r = o.relay.get_or_insert_with(|| Relay {
            token,
            synced: false,
            fetching: false,
            held: VecDeque::new(),
            waiting: Vec::new(),
        });
        r.waiting.push(Waiting { from, id, since });
        let ready = r.synced && !r.fetching;
        if fresh {
            self.bus_send(Req::Sync { channel, token });
        } else if ready {
            self.relay_answer(&channel, &[], false);
        }
    }

    fn bus_send(&self, req: Req) {
        if let Some(bus) = &self.bus {
            bus.send(req);
        }
    }

    /// Something from the bus thread about a channel this shard owns.
    pub(super) fn relay_event(&mut self, ev: BusEvent) {
        match ev {
            BusEvent::Others { channel, users } => self.presence_others(&channel, users),
            BusEvent::Canary => {
                if let Some(bus) = &self.bus {
                    bus.state.canary_seen();
                }
            }
            BusEvent::Message {
                channel,
                epoch,
                entry,
            } => self.relay_message(&channel, epoch, entry),
            BusEvent::Position {
                channel,
                token,
                epoch,
                last,
                entries,
            } => self.relay_position(&channel, token, epoch, last, entries),
            BusEvent::Resync { channel } => {
                let Some(o) = self.hub.owned.get_mut(&channel) else {
                    return;
                };
                let after = o.last_seq;
                let Some(r) = o.relay.as_mut() else {
                    return;
                };
                // An unsynced relay's Sync is still queued in the bus; it answers after.
                if r.synced && !r.fetching {
                    r.fetching = true;
                    let token = r.token;
                    self.bus_send(Req::Fetch {
                        channel,
                        token,
                        after,
                    });
                }
            }
        }
    }

    fn relay_message(&mut self, channel: &Arc<str>, epoch: u32, entry: Entry) {
        let Some(o) = self.hub.owned.get_mut(channel) else {
            return;
        };
        let (last, current) = (o.last_seq, o.history.epoch());
        let Some(r) = o.relay.as_mut() else {
            return;
        };
        if !r.synced || r.fetching {
            return hold(r, epoch, entry);
        }
        if epoch != current {
            self.relay_reset(channel, epoch, entry.seq.saturating_sub(1));
            return self.relay_deliver(channel, entry, None);
        }
        if entry.seq <= last {
            return;
        }
        if entry.seq == last + 1 {
            return self.relay_deliver(channel, entry, None);
        }
        hold(r, epoch, entry);
        r.fetching = true;
        let token = r.token;
        self.bus_send(Req::Fetch {
            channel: Arc::clone(channel),
            token,
            after: last,
        });
    }

    fn relay_position(
        &mut self,
        channel: &Arc<str>,
        token: u64,
        epoch: u32,
        last: u64,
        entries: Vec<Entry>,
    ) {
        let (cap, ttl) = (
            self.cfg.history_size,
            self.cfg.history_ttl.as_millis() as u64,
        );
        let Some(o) = self.hub.owned.get_mut(channel) else {
            return;
        };
        let current = o.history.epoch();
        let Some(r) = o.relay.as_mut() else {
            return;
        };
        if r.token != token {
            return;
        }
        let was_synced = r.synced;
        r.synced = true;
        r.fetching = false;
        let held: Vec<(u32, Entry)> = r.held.drain(..).collect();
        let mut fetched: Vec<(u64, Bytes)> = Vec::with_capacity(entries.len());
        if !was_synced {
            o.history = History::new(epoch, cap, ttl);
            o.last_seq = last;
        } else if epoch != current {
            // What the new epoch said before `last` cannot be ordered against what the
            // subscribers hold; they continue after it (and may fetch it with `since`).
            self.relay_reset(channel, epoch, last);
        } else {
            let before = self.owned_last(channel);
            for e in entries {
                let frame = wire::delivery_frame_raw(channel, e.seq, &e.data);
                if e.seq > self.owned_last(channel) {
                    self.relay_deliver(channel, e.clone(), Some(frame.clone()));
                }
                fetched.push((e.seq, frame));
            }
            let filled = self.owned_last(channel).saturating_sub(before);
            self.bus_count(|c| &c.gaps_filled, filled);
        }
        let mut held = held;
        held.sort_by_key(|(_, e)| e.seq);
        for (ep, e) in held {
            let (last, current) = match self.hub.owned.get(channel) {
                Some(o) => (o.last_seq, o.history.epoch()),
                None => return,
            };
            if ep != current {
                continue;
            }
            if e.seq > last {
                self.relay_deliver(channel, e, None);
            }
        }
        self.relay_answer(channel, &fetched, was_synced);
    }

    fn owned_last(&self, channel: &str) -> u64 {
        self.hub.owned.get(channel).map_or(0, |o| o.last_seq)
    }

    fn bus_count(
        &self,
        which: impl Fn(&crate::bus::BusCounters) -> &std::sync::atomic::AtomicU64,
        n: u64,
    ) {
        if let (Some(bus), true) = (&self.bus, n > 0) {
            which(&bus.state.counters).fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Delivers the channel's next message (a hole before it is counted as lost).
    fn relay_deliver(&mut self, channel: &Arc<str>, e: Entry, frame: Option<Bytes>) {
        let last = self.owned_last(channel);
        if e.seq > last + 1 {
            self.bus_count(|c| &c.gaps_lost, e.seq - last - 1);
        }
        let frame = frame.unwrap_or_else(|| wire::delivery_frame_raw(channel, e.seq, &e.data));
        self.owner_deliver(channel, e.seq, frame, e.key);
    }

    /// The channel's numbering restarted in Redis: tell every subscriber, start over.
    fn relay_reset(&mut self, channel: &Arc<str>, epoch: u32, base: u64) {
        let (cap, ttl) = (
            self.cfg.history_size,
            self.cfg.history_ttl.as_millis() as u64,
        );
        let Some(o) = self.hub.owned.get_mut(channel) else {
            return;
        };
        tracing::warn!(%channel, epoch = format_args!("{epoch:08x}"), "bus: channel epoch changed");
        o.history = History::new(epoch, cap, ttl);
        o.last_seq = base;
        let interested = o.interested;
        let frame = wire::reset_frame(channel, epoch, base);
        for shard in 0..self.shard_count() {
            if interested & (1u64 << shard) != 0 {
                let channel = Arc::clone(channel);
                let frame = frame.clone();
                let reset = HubCmd::Reset {
                    channel,
                    frame,
                    epoch,
                    seq: base,
                };
                self.hub_send(shard, reset);
            }
        }
    }

    /// A channel's numbering restarted: its live WebSocket subscribers get the notice after
    /// the deliveries already here; its event streams end (their `Last-Event-ID` names the old
    /// epoch, so their reconnect gets a `resync` event).
    pub(super) fn reset_local(&mut self, channel: &Arc<str>, frame: Bytes) {
        self.flush_channel(channel);
        let Some(l) = self.hub.local.get(channel) else {
            return;
        };
        let live = l.live.clone();
        let bound = self.cfg.max_backpressure;
        let mut slow = Vec::new();
        let mut streams = Vec::new();
        for (i, g) in live {
            let idx = i as usize;
            let Some(c) = self.conns.get_mut(idx) else {
                continue;
            };
            if c.generation != g || !c.phase.sends_data() {
                continue;
            }
            if c.phase == Phase::Stream {
                streams.push(idx);
                continue;
            }
            self.counters.messages_out += 1;
            if c.queue.push_shared(frame.clone(), bound) == SendStatus::Dropped {
                slow.push(idx);
            } else {
                self.mark_dirty(idx);
            }
        }
        for idx in slow {
            self.fail_slow(idx);
        }
        for idx in streams {
            self.finish_with(idx, CloseReason::Disconnected, false, |_| {});
        }
    }

    /// Answers every waiting subscribe that can be answered; asks for one fetch for the rest.
    /// `fetched`: frames just fetched (by seq); `after_fetch`: a fetch was just answered, so
    /// what still cannot be served is gone.
    fn relay_answer(&mut self, channel: &Arc<str>, fetched: &[(u64, Bytes)], after_fetch: bool) {
        let now = self.now;
        let Some(o) = self.hub.owned.get_mut(channel) else {
            return;
        };
        let Some(r) = o.relay.as_mut() else {
            return;
        };
        let waiting = std::mem::take(&mut r.waiting);
        let (epoch, last) = (o.history.epoch(), o.last_seq);
        let mut answers = Vec::new();
        let mut fetch_after: Option<u64> = None;
        let mut still = Vec::new();
        for w in waiting {
            match verdict(&o.history, last, w.since, fetched, after_fetch, now) {
                Verdict::Answer(recovered, replay) => answers.push((w, recovered, replay)),
                Verdict::Fetch(after) => {
                    fetch_after = Some(fetch_after.map_or(after, |a| a.min(after)));
                    still.push(w);
                }
            }
        }
        if let Some(r) = o.relay.as_mut() {
            r.waiting = still;
            if let Some(after) = fetch_after {
                r.fetching = true;
                let token = r.token;
                self.bus_send(Req::Fetch {
                    channel: Arc::clone(channel),
                    token,
                    after,
                });
            }
        }
        for (w, recovered, replay) in answers {
            let answer = Subscribed {
                channel: Arc::clone(channel),
                to: w.from,
                id: w.id,
                epoch,
                seq: last,
                recovered,
                replay,
            };
            self.hub_send(w.from.shard as usize, HubCmd::Subscribed(answer));
        }
    }
}

fn hold(r: &mut Relay, epoch: u32, entry: Entry) {
    if r.held.len() >= MAX_HELD {
        r.held.pop_front();
    }
    r.held.push_back((epoch, entry));
}

/// What one waiting subscriber gets, given the cache, the relay's `last` and what was just
/// fetched.
fn verdict(
    cache: &History,
    last: u64,
    since: Option<(Option<u32>, u64)>,
    fetched: &[(u64, Bytes)],
    after_fetch: bool,
    now: u64,
) -> Verdict {
    let (e, s) = match since {
        None => return Verdict::Answer(None, Vec::new()),
        Some((None, _)) => return Verdict::Answer(Some(false), Vec::new()),
        Some((Some(e), s)) => (e, s),
    };
    if e != cache.epoch() {
        return Verdict::Answer(Some(false), Vec::new());
    }
    if s == last {
        return Verdict::Answer(Some(true), Vec::new());
    }
    if s > last {
        // Ahead of this node: either this node is behind (a fetch brings it up to date) or
        // the position was never issued.
        return if after_fetch {
            Verdict::Answer(Some(false), Vec::new())
        } else {
            Verdict::Fetch(last)
        };
    }
    if let Recovery::Replay(frames) = cache.since(e, s, last, now) {
        return Verdict::Answer(Some(true), frames.cloned().collect());
    }
    // The older part from the fetch, the rest from the cache.
    let cache_from = cache.range().map_or(last + 1, |(first, _)| first);
    let mut replay = Vec::new();
    let mut want = s + 1;
    for (seq, f) in fetched {
        if *seq == want && want < cache_from {
            replay.push(f.clone());
            want += 1;
        }
    }
    if want >= cache_from {
        if want <= last {
            if let Recovery::Replay(frames) = cache.since(e, want - 1, last, now) {
                replay.extend(frames.cloned());
                return Verdict::Answer(Some(true), replay);
            }
        } else {
            return Verdict::Answer(Some(true), replay);
        }
    }
    if after_fetch {
        Verdict::Answer(Some(false), Vec::new())
    } else {
        Verdict::Fetch(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Bytes {
        Bytes::from(format!("f{seq}"))
    }

    fn cache(epoch: u32, seqs: std::ops::RangeInclusive<u64>) -> History {
        let mut h = History::new(epoch, 100, 0);
        for s in seqs {
            h.push(s, 0, frame(s));
        }
        h
    }

    fn answered(v: Verdict) -> (Option<bool>, Vec<Bytes>) {
        match v {
            Verdict::Answer(r, f) => (r, f),
            Verdict::Fetch(a) => panic!("fetch after {a}"),
        }
    }

    #[test]
    fn served_from_cache_or_asks_for_a_fetch() {
        let h = cache(7, 5..=9);
        assert_eq!(answered(verdict(&h, 9, None, &[], false, 0)).0, None);
        assert_eq!(
            answered(verdict(&h, 9, Some((Some(7), 9)), &[], false, 0)).0,
            Some(true)
        );
        let (r, f) = answered(verdict(&h, 9, Some((Some(7), 6)), &[], false, 0));
        assert_eq!((r, f), (Some(true), vec![frame(7), frame(8), frame(9)]));
        assert!(matches!(
            verdict(&h, 9, Some((Some(7), 2)), &[], false, 0),
            Verdict::Fetch(2)
        ));
        assert!(matches!(
            verdict(&h, 9, Some((Some(7), 12)), &[], false, 0),
            Verdict::Fetch(9)
        ));
        assert_eq!(
            answered(verdict(&h, 9, Some((Some(8), 6)), &[], false, 0)).0,
            Some(false)
        );
        assert_eq!(
            answered(verdict(&h, 9, Some((None, 6)), &[], false, 0)).0,
            Some(false)
        );
    }

    #[test]
    fn fetched_and_cached_join_without_gap_or_overlap() {
        let h = cache(7, 5..=9);
        let fetched: Vec<(u64, Bytes)> = (3..=9).map(|s| (s, frame(s))).collect();
        let (r, f) = answered(verdict(&h, 9, Some((Some(7), 2)), &fetched, true, 0));
        assert_eq!(r, Some(true));
        assert_eq!(f, (3..=9).map(frame).collect::<Vec<_>>());
        // A hole in what was fetched: gone, not a silent gap.
        let holed: Vec<(u64, Bytes)> = [3, 4].iter().map(|&s| (s, frame(s))).collect();
        let (r, f) = answered(verdict(&h, 9, Some((Some(7), 1)), &holed, true, 0));
        assert_eq!((r, f.len()), (Some(false), 0));
        // An empty cache: everything from the fetch.
        let empty = History::new(7, 100, 0);
        let (r, f) = answered(verdict(&empty, 9, Some((Some(7), 6)), &fetched, true, 0));
        assert_eq!((r, f), (Some(true), vec![frame(7), frame(8), frame(9)]));
        // Still ahead after a fetch: never issued.
        assert_eq!(
            answered(verdict(&h, 9, Some((Some(7), 50)), &[], true, 0)).0,
            Some(false)
        );
    }
}
