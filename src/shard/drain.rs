//! The drain on one shard (SIGTERM/SIGINT, `Server::drain`, `POST /drain`): stop accepting,
//! then close the connections a share at a time (`config/drain.rs` says why), while the shard
//! keeps serving the ones still open: their reads, deliveries and timers go on as before.
//!
//! 1. **Start.** The listener is closed (new connections are refused once every shard has
//!    closed its own), upgrades still in progress are dropped (their clients were promised
//!    nothing), and the open connections are listed in slab order.
//! 2. **Steps**, from the loop's timer phase, the first one in the pass the drain starts and
//!    then one per interval (a deadline the poll timeout includes, never a sleep): the next
//!    share of listed connections still open is closed. Everything committed for them goes out
//!    first — the broadcast sweep and their channels' sweeps are completed — then a hub
//!    connection gets the drain message with its resume positions (`hub_position.rs`), then
//!    every one gets the close frame with the plan's code. A connection whose close has begun
//!    is no longer `Open`, so nothing is queued after its close frame, and the positions it
//!    was told are exactly what it was given.
//! 3. **Last call.** From `timeout - min(close_timeout, timeout / 2)` on, everything left is
//!    closed in one step, so that a pace too slow for the timeout still gives every
//!    connection its close frame and time for the handshake.
//! 4. **End.** A shard whose connections are all gone says so (`busy`) but keeps running: it
//!    may own channels whose subscribers on other shards are still being served. The last
//!    shard to empty stops the others; the timeout stops everyone, dropping what is left.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use crate::config::{App, DrainPlan};
use crate::hub::wire;
use crate::metrics::CloseReason;
use crate::proto::{frame, CloseCode, OpCode};

use super::conn::Phase;
use super::event_loop::Shard;
use super::Command;

/// One shard's drain under way.
pub(super) struct Drain {
    code: CloseCode,
    /// Close reason when no resume position fits in one.
    reason: &'static str,
    /// Connections closed per step here; `usize::MAX` = all.
    share: usize,
    /// Milliseconds between steps.
    interval: u64,
    next_step: u64,
    last_call: u64,
    deadline: u64,
    /// Connections still to close, in order: (slab index, generation).
    todo: VecDeque<(usize, u32)>,
    /// This shard has told the others it has no connection left.
    reported: bool,
}

impl Drain {
    /// `plan` as it runs on one of `shards` shards, starting at `now` (ms), with
    /// `close_ms` allowed for a close handshake.
    fn new(plan: &DrainPlan, shards: usize, now: u64, close_ms: u64) -> Drain {
        let timeout = plan.timeout.as_millis().min(u64::MAX as u128 / 4) as u64;
        let share = match plan.per_shard(shards) {
            0 => usize::MAX,
            n => n,
        };
        Drain {
            code: CloseCode(plan.code),
            reason: plan.reason(),
            share,
            interval: plan.interval.as_millis().min(u64::MAX as u128 / 4) as u64,
            next_step: now,
            last_call: now + timeout - close_ms.min(timeout / 2),
            deadline: now + timeout,
            todo: VecDeque::new(),
            reported: false,
        }
    }

    /// When the shard must look at the drain again.
    pub(super) fn next_wake(&self) -> u64 {
        if self.todo.is_empty() {
            self.deadline
        } else {
            self.next_step.min(self.deadline)
        }
    }

    /// How many connections to close at `now`, if a step is due (and then schedules the next).
    fn due(&mut self, now: u64) -> Option<usize> {
        if self.todo.is_empty() || now < self.next_step {
            return None;
        }
        self.next_step = now + self.interval;
        Some(if now >= self.last_call {
            usize::MAX
        } else {
            self.share
        })
    }

    /// Whether closing `n` connections at this pace takes longer than the time before the
    /// last call.
    fn too_slow_for(&self, n: usize) -> bool {
        let steps = n.div_ceil(self.share.max(1)) as u64;
        let start = self.next_step;
        steps.saturating_sub(1).saturating_mul(self.interval) > self.last_call - start
    }
}

impl Shard {
    /// Starts the drain (once; a second command is ignored).
    pub(super) fn start_drain(&mut self, plan: DrainPlan) {
        if self.drain.is_some() {
            return;
        }
        // Stop accepting: closing our listener takes us out of the SO_REUSEPORT group.
        self.listener = None;
        let mut d = Drain::new(&plan, self.shard_count(), self.now, self.ms.close.into());
        let idxs: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        for idx in idxs {
            let c = &self.conns[idx];
            match c.phase {
                Phase::Handshaking => self.remove(idx, CloseReason::Drain),
                Phase::Open | Phase::Stream => d.todo.push_back((idx, c.generation)),
                _ => {}
            }
        }
        let n = d.todo.len();
        let per_step = (d.share != usize::MAX).then_some(d.share);
        tracing::info!(
            shard = self.id,
            connections = n,
            per_step,
            interval_ms = d.interval,
            code = plan.code,
            "draining"
        );
        if d.too_slow_for(n) {
            tracing::warn!(
                shard = self.id,
                connections = n,
                "the drain pace does not fit the drain timeout; what is left at the last call \
                 is closed at once"
            );
        }
        self.drain = Some(d);
    }

    /// The timer phase's part of the drain: closes the next share when a step is due.
    pub(super) fn drain_step(&mut self) {
        let now = self.now;
        let Some(d) = self.drain.as_mut() else {
            return;
        };
        let Some(mut left) = d.due(now) else {
            return;
        };
        let (code, reason) = (d.code, d.reason);
        let mut batch = Vec::new();
        while left > 0 {
            let Some((idx, gen)) = d.todo.pop_front() else {
                break;
            };
            let open = self.conns.get(idx).is_some_and(|c| {
                c.generation == gen && matches!(c.phase, Phase::Open | Phase::Stream)
            });
            if open {
                batch.push(idx);
                left -= 1;
            }
        }
        // Broadcasts and deliveries already committed go out before the close frames.
        self.sweep_finish();
        if self.cfg.app == App::Hub {
            self.flush_channels_of(&batch);
        }
        for idx in batch {
            self.drain_close(idx, code, reason);
        }
    }

    /// Completes the sweep of every channel the connections in `batch` are subscribed to, so
    /// that each has been given everything committed before its position is taken.
    fn flush_channels_of(&mut self, batch: &[usize]) {
        let mut channels: Vec<_> = batch
            .iter()
            .flat_map(|&idx| self.hub.by_conn.iter(idx).cloned())
            .collect();
        channels.sort_unstable();
        channels.dedup();
        for ch in &channels {
            self.flush_channel(ch);
        }
    }

    /// Ends one connection of the drain: a hub connection first gets its resume positions.
    fn drain_close(&mut self, idx: usize, code: CloseCode, reason: &str) {
        let hub =
            self.cfg.app == App::Hub && self.conns.get(idx).is_some_and(|c| c.phase == Phase::Open);
        if !hub {
            return self.start_close(idx, code, reason, CloseReason::Drain);
        }
        let positions = self.positions(idx);
        let listed = || positions.iter().map(|p| (&*p.channel, p.epoch, p.seq));
        let mut json = Vec::with_capacity(48 + 48 * positions.len());
        wire::drain_message(&mut json, listed());
        let compact = wire::drain_reason(listed());
        if let Some(c) = self.conns.get_mut(idx) {
            // Like the close frame behind it, the last message is not subject to the bound.
            c.queue.push_owned(&mut self.pool, usize::MAX, |v| {
                frame::encode_frame_into(v, OpCode::Text, &json, None)
            });
            self.counters.messages_out += 1;
        }
        let why = compact.as_deref().unwrap_or(reason);
        self.start_close(idx, code, why, CloseReason::Drain);
    }

    /// Whether the shard's loop ends: the drain timeout passed, or every shard has closed
    /// all its connections. The last shard to get there stops the others, which wait for it.
    pub(super) fn drain_over(&mut self) -> bool {
        let Some(d) = self.drain.as_mut() else {
            return false;
        };
        if self.now >= d.deadline {
            return true;
        }
        if !self.conns.is_empty() {
            return false;
        }
        if !d.reported {
            d.reported = true;
            if self.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
                for to in (0..self.shard_count()).filter(|&s| s != self.id) {
                    self.send_to_peer(to, Command::Shutdown);
                }
                return true;
            }
        }
        self.busy.load(Ordering::SeqCst) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn plan(batch: usize, interval_ms: u64, timeout_s: u64) -> DrainPlan {
        DrainPlan {
            batch,
            interval: Duration::from_millis(interval_ms),
            code: 1012,
            timeout: Duration::from_secs(timeout_s),
        }
    }

    fn with_todo(mut d: Drain, n: usize) -> Drain {
        d.todo = (0..n).map(|i| (i, 1)).collect();
        d
    }

    #[test]
    fn steps_come_one_interval_apart_with_the_shards_share() {
        // 50 per step over 2 shards: 25 here, every 200 ms, the first at once.
        let mut d = with_todo(Drain::new(&plan(50, 200, 30), 2, 1000, 5000), 100);
        assert_eq!(d.due(1000), Some(25));
        assert_eq!(d.next_wake(), 1200);
        assert_eq!(d.due(1100), None);
        assert_eq!(d.due(1250), Some(25));
        // The next is one interval after the late one, not on the original grid.
        assert_eq!(d.due(1400), None);
        assert_eq!(d.due(1450), Some(25));
        assert!(!d.too_slow_for(100));
        d.todo.clear();
        assert_eq!(d.due(5000), None);
        assert_eq!(d.next_wake(), 31_000);
    }

    #[test]
    fn batch_zero_is_everything_at_once() {
        let mut d = with_todo(Drain::new(&plan(0, 100, 30), 4, 0, 5000), 10);
        assert_eq!(d.due(0), Some(usize::MAX));
        assert!(!d.too_slow_for(1_000_000));
    }

    #[test]
    fn the_last_call_closes_what_is_left_in_time_for_the_handshakes() {
        // 1 per second cannot close 100 in 30 s: from 25 s (30 s less the 5 s close timeout)
        // on, everything left goes in one step.
        let mut d = with_todo(Drain::new(&plan(1, 1000, 30), 1, 0, 5000), 100);
        assert!(d.too_slow_for(100));
        assert_eq!(d.due(0), Some(1));
        assert_eq!(d.due(24_999), Some(1));
        assert_eq!(d.due(25_999), Some(usize::MAX));
        // A close timeout longer than the drain leaves half of the drain for the handshakes.
        let d = Drain::new(&plan(1, 1000, 4), 1, 0, 5000);
        assert_eq!((d.last_call, d.deadline), (2000, 4000));
    }
}
