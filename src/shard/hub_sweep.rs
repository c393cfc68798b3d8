//! A channel's deliveries on one shard, written to its local subscribers as a sweep
//! (`sweep.rs` explains why): each channel keeps a stream of its delivery frames and, per
//! block of its `live` subscriber list, how far that block has been written. At the end of a
//! pass the pass's deliveries join their channel's stream, then the shard writes the next
//! blocks that are behind, across channels, a bounded number of subscribers per pass. A
//! subscriber is written everything it lacks in one `write`, so new deliveries join the writes
//! still ahead of the sweep instead of waiting for a whole pass over the channel.
//!
//! **The subscriber set changes only when its channel is up to date.** Before a subscriber
//! joins `live` (its replay is queued first) or leaves it, `flush_channel` completes the
//! channel's revolution. So every position in `live` always belongs to the block it was in
//! when the deliveries it lacks were committed: no subscriber ever gets a delivery twice, or
//! one from before its subscription, or misses one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::SlowPolicy;
use crate::hub::sse::delivery_seq;

use super::conn::{flags, Phase};
use super::event_loop::{concat, queue_shared, send_shared, Outcome, SendCtx, Shard};
use super::hub::Batch;
use super::sweep::{Next, BLOCK, CONNS_PER_PASS, MAX_PENDING_BYTES};

/// What one step of a channel's sweep did.
enum Step {
    /// Wrote one block: to this many subscribers.
    Wrote(usize),
    /// Paced: the channel's next block may be written from then on.
    Wait(std::time::Instant),
    /// The channel is up to date.
    Done,
}

impl Shard {
    /// Holds a delivery until the end of the pass (or the next change of the channel's
    /// subscriber set), when it joins the channel's stream. `key` is the publisher's
    /// conflation key, given only on conflating channels.
    pub(super) fn deliver_local(
        &mut self,
        channel: &Arc<str>,
        frame: Bytes,
        key: Option<Arc<str>>,
    ) {
        if !self.hub.local.contains_key(channel) {
            return;
        }
        let b = self.hub.batch.entry(Arc::clone(channel)).or_default();
        if let Some(k) = key {
            b.keys.push((b.frames.len(), k));
        }
        b.frames.push(frame);
    }

    /// Whether some channel still has subscribers to write (the loop then polls without
    /// waiting, or, when every such channel is paced by `sweep_interval`, until the
    /// earliest of them is due).
    pub(super) fn hub_sweeping(&self) -> bool {
        !self.hub.sweeping.is_empty()
    }

    /// End of a pass: commit every channel's held deliveries, then write up to
    /// [`CONNS_PER_PASS`] subscribers of the channels that are behind.
    pub(super) fn hub_flush_all(&mut self) {
        let held: Vec<Arc<str>> = self.hub.batch.keys().cloned().collect();
        for ch in held {
            self.commit_channel(&ch);
        }
        self.hub_sweep(CONNS_PER_PASS);
    }

    /// Brings a channel's subscribers up to date now: called before its subscriber set
    /// changes.
    pub(super) fn flush_channel(&mut self, channel: &Arc<str>) {
        self.commit_channel(channel);
        while let Step::Wrote(_) = self.sweep_channel_block(channel, Duration::ZERO) {}
    }

    /// Moves a channel's held deliveries into its stream. A conflating channel is not swept:
    /// its deliveries go to every subscriber at once, keys in hand, so that a subscriber over
    /// its bound can have them conflated (`slow.rs`).
    fn commit_channel(&mut self, channel: &Arc<str>) {
        let Some(Batch { frames, keys }) = self.hub.batch.remove(channel) else {
            return;
        };
        let Some(l) = self.hub.local.get_mut(channel) else {
            return;
        };
        if l.live.is_empty() {
            return;
        }
        // Where every live subscriber stands once these are written (`hub_position.rs`).
        if let Some(seq) = frames.last().and_then(|f| delivery_seq(f)) {
            l.seq = seq;
        }
        if l.policy == SlowPolicy::Conflate {
            return self.deliver_direct(channel, frames, &keys);
        }
        // Every position of `live` has a block (new ones start at the head).
        l.sweep.ensure_blocks(l.live.len().div_ceil(BLOCK));
        let was_idle = l.sweep.is_idle();
        let msgs = frames.len() as u64;
        l.sweep.commit(frames, msgs);
        if was_idle && !l.sweep.is_idle() {
            self.hub.sweeping.push(Arc::clone(channel));
        }
    }

    /// A conflating channel's deliveries of a pass, to every live subscriber now.
    fn deliver_direct(
        &mut self,
        channel: &Arc<str>,
        frames: Vec<Bytes>,
        keys: &[(usize, Arc<str>)],
    ) {
        let Some(l) = self.hub.local.get_mut(channel) else {
            return;
        };
        let msgs = frames.len() as u64;
        let frame = concat(frames);
        let live = std::mem::take(&mut l.live);
        let mut out = Outcome::default();
        let mut cx = SendCtx {
            bound: self.cfg.max_backpressure,
            policy: SlowPolicy::Conflate,
            counters: &mut self.counters,
            dirty: &mut self.dirty,
            pool: &mut self.pool,
        };
        let mut events: Option<Bytes> = None;
        for &(i, g) in &live {
            let idx = i as usize;
            let Some(c) = self.conns.get_mut(idx).filter(|c| c.generation == g) else {
                continue;
            };
            // Deliveries are held for it already: newer ones must not overtake them.
            if c.has(flags::HELD) {
                out.over.push(idx);
                continue;
            }
            match c.phase {
                Phase::Open => send_shared(c, idx, &frame, msgs, &mut cx, &mut out),
                Phase::Stream => {
                    let ev = events.get_or_insert_with(|| self.sse.events(channel, &frame));
                    send_shared(c, idx, ev, msgs, &mut cx, &mut out);
                }
                _ => {}
            }
        }
        if let Some(l) = self.hub.local.get_mut(channel) {
            l.live = live;
        }
        if !out.over.is_empty() {
            let over = std::mem::take(&mut out.over);
            self.hold(channel, SlowPolicy::Conflate, msgs, &frame, keys, over);
        }
        self.settle(out);
    }

    /// Writes blocks of the channels that are behind until `budget` subscribers have been
    /// written or every channel is up to date. A channel whose stream is over
    /// [`MAX_PENDING_BYTES`] is completed regardless of the budget.
    ///
    /// The other channels go a block each in turn, round after round, so that channels whose
    /// subscribers are the same connections (clients on several channels, which subscribed
    /// in the same order) reach those connections in the same pass, where they cost one write
    /// for all of them (`queue_shared`). A round once begun is finished up to twice the
    /// budget, so a channel one block behind the others does not stay behind.
    fn hub_sweep(&mut self, budget: usize) {
        let mut spent = 0;
        for i in 0..self.hub.sweeping.len() {
            let ch = Arc::clone(&self.hub.sweeping[i]);
            let full = self
                .hub
                .local
                .get(&ch)
                .is_some_and(|l| l.sweep.pending_bytes() > MAX_PENDING_BYTES);
            if full {
                while let Step::Wrote(n) = self.sweep_channel_block(&ch, Duration::ZERO) {
                    spent += n;
                }
            }
        }
        let interval = self.cfg.sweep_interval;
        while spent < budget {
            let mut wrote = false;
            let mut i = 0;
            while i < self.hub.sweeping.len() && spent < 2 * budget {
                let ch = Arc::clone(&self.hub.sweeping[i]);
                match self.sweep_channel_block(&ch, interval) {
                    Step::Wrote(n) => {
                        spent += n;
                        wrote = true;
                    }
                    Step::Wait(t) => self.sweep_wait_until(t),
                    Step::Done => {}
                }
                if self.hub.local.get(&ch).is_none_or(|l| l.sweep.is_idle()) {
                    self.hub.sweeping.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            if !wrote {
                return;
            }
        }
        if !self.hub.sweeping.is_empty() {
            self.sweep_ready = true;
        }
    }

    /// Writes the channel's next block that is behind, unless `interval` (pacing) says to wait
    /// for it.
    fn sweep_channel_block(&mut self, channel: &Arc<str>, interval: Duration) -> Step {
        let Some(l) = self.hub.local.get_mut(channel) else {
            return Step::Done;
        };
        let (block, bytes, msgs) = match l.sweep.next_block_paced(interval) {
            Next::Block(block, bytes, msgs) => (block, bytes, msgs),
            Next::Wait(t) => return Step::Wait(t),
            Next::Done => return Step::Done,
        };
        let policy = l.policy;
        let start = (block * BLOCK).min(l.live.len());
        let end = ((block + 1) * BLOCK).min(l.live.len());
        let mut out = Outcome::default();
        let mut cx = SendCtx {
            bound: self.cfg.max_backpressure,
            policy,
            counters: &mut self.counters,
            dirty: &mut self.dirty,
            pool: &mut self.pool,
        };
        // Event streams get the same deliveries as events, encoded once per block, and only
        // if one is there.
        let mut events: Option<Bytes> = None;
        let mut written = 0;
        for &(i, g) in &l.live[start..end] {
            let idx = i as usize;
            let Some(c) = self.conns.get_mut(idx).filter(|c| c.generation == g) else {
                continue;
            };
            match c.phase {
                Phase::Open if self.hub.by_conn.several(idx) => {
                    // A connection on several channels: held for one write at the end of the
                    // pass, counted once however many channels it hears from.
                    if !queue_shared(c, idx, &bytes, msgs, &mut cx, &mut out) {
                        continue;
                    }
                }
                Phase::Open => send_shared(c, idx, &bytes, msgs, &mut cx, &mut out),
                Phase::Stream => {
                    let ev = events.get_or_insert_with(|| self.sse.events(channel, &bytes));
                    send_shared(c, idx, ev, msgs, &mut cx, &mut out);
                }
                _ => continue,
            }
            written += 1;
        }
        if !out.over.is_empty() {
            // Drop policy: what did not fit is counted, and seen by the client as a gap.
            let over = std::mem::take(&mut out.over);
            self.hold(channel, policy, msgs, &bytes, &[], over);
        }
        self.settle(out);
        Step::Wrote(written)
    }
}
