//! Server-sent event streams on the main port (`GET /sse?channel=NAME`, `--app hub`): the
//! shard's side of `hub/sse.rs`.
//!
//! A stream is a connection in the slab like any other, in [`Phase::Stream`]. It passes the
//! same admission as a WebSocket upgrade (origin, token, and the token's subscribe grant for
//! the channel) before its `200`, then joins the channel's local subscriber set exactly as a
//! WebSocket `subscribe` does, with its `Last-Event-ID` as `since`. So it gets the same
//! guarantees: replay then live with no gap and no duplicate, or an explicit `resync` event.
//!
//! Deliveries reach it through the hub's ordinary fan-out (`hub.rs`, `flush_channel`): the
//! first stream among a channel's recipients in a pass has the pass's frames turned into
//! events once, and every stream shares those bytes. Its queue has the same bound as any
//! connection's. It has no close handshake: when it must end (drain, slow consumer, token
//! expiry) its queued bytes go out and the connection closes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{App, SlowPolicy};
use crate::hub::sse;
use crate::metrics::CloseReason;
use crate::proto::handshake::EventStream;

use super::conn::{Phase, TimerKind};
use super::event_loop::{concat, Shard};
use super::send_queue::SendStatus;

/// What a shard knows about the channels its event streams follow.
#[derive(Default)]
pub(super) struct SseState {
    /// Epoch of each channel with a live stream here, from the owner's subscribe answer (the
    /// epoch cannot change while this shard has subscribers: the owner keeps the channel).
    epochs: HashMap<Arc<str>, u32>,
}

impl SseState {
    /// The channel has no local subscribers left.
    pub(super) fn forget_channel(&mut self, channel: &str) {
        self.epochs.remove(channel);
    }

    /// `frames` (one or more delivery frames of `channel`) as events, shared by every stream.
    pub(super) fn events(&self, channel: &str, frames: &[u8]) -> Bytes {
        let epoch = self.epochs.get(channel).copied().unwrap_or_default();
        sse::events(frames, epoch)
    }
}

impl Shard {
    /// A complete `GET /sse` request: refuse it (404, 400, 401, 403) or start the stream.
    pub(super) fn sse_open(&mut self, idx: usize, req: EventStream) {
        if self.cfg.app != App::Hub {
            return self.sse_refuse(idx, sse::NOT_FOUND_RESPONSE.to_vec());
        }
        let q = match sse::parse_query(&req.path) {
            Ok(q) => q,
            Err(e) => return self.sse_refuse(idx, e.response()),
        };
        let (origin, auth) = (req.origin.as_deref(), req.authorization.as_deref());
        let session = match self
            .admission
            .admit(origin, auth, &req.path, self.now as u32)
        {
            Ok(s) => s,
            Err(refusal) => return self.sse_refuse(idx, refusal),
        };
        let grant = session.as_ref().and_then(|s| s.grant.as_ref());
        if grant.is_some_and(|g| !g.may_subscribe(&q.channel)) {
            return self.sse_refuse(idx, sse::FORBIDDEN_CHANNEL_RESPONSE.to_vec());
        }
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if let Some(s) = session {
            self.admission.insert(idx, c.generation, s);
        }
        c.queue.push_owned(&mut self.pool, usize::MAX, |v| {
            v.extend_from_slice(sse::RESPONSE_HEAD)
        });
        c.phase = Phase::Stream;
        self.counters.sse_streams += 1;
        self.set_timer(idx, TimerKind::KeepAlive, self.ms.keepalive);
        self.mark_dirty(idx);
        // The header is what an `EventSource` sends; the query parameter is for other clients.
        let last = req
            .last_event_id
            .or(q.last_event_id)
            .filter(|s| !s.is_empty());
        // An id this server never issued gets the resync answer, as a bad epoch does.
        let since = last.map(|id| match sse::parse_event_id(&id) {
            Some((epoch, seq)) => (Some(epoch), seq),
            None => (None, 0),
        });
        self.hub_join(idx, None, &q.channel, since, false);
    }

    fn sse_refuse(&mut self, idx: usize, response: Vec<u8>) {
        self.finish_with(idx, CloseReason::BadHandshake, false, |v| {
            v.extend_from_slice(&response)
        });
    }

    /// The owner's answer for a stream: the opening event (`subscribed`, or `resync` when the
    /// resume cannot be honoured), then the replay as events; live deliveries follow.
    pub(super) fn sse_subscribed(
        &mut self,
        idx: usize,
        channel: &Arc<str>,
        epoch: u32,
        seq: u64,
        recovered: Option<bool>,
        replay: Vec<Bytes>,
    ) {
        self.sse.epochs.insert(Arc::clone(channel), epoch);
        // The opening event's id is what the client already has, so that a stream cut before
        // the replay is over resumes from there rather than past what it missed.
        let from = replay
            .first()
            .and_then(|f| sse::delivery_seq(f))
            .map_or(seq, |first| first.saturating_sub(1));
        let opening = sse::opening_event(channel, epoch, seq, recovered, from);
        // As for a WebSocket resume: channels that keep slow subscribers let the replay through
        // whole (history bounds it), so that a gap can always be recovered.
        let bound = match self.cfg.policy_for(channel) {
            SlowPolicy::Disconnect => self.cfg.max_backpressure,
            SlowPolicy::Drop | SlowPolicy::Conflate => usize::MAX,
        };
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        let mut st = c
            .queue
            .push_owned(&mut self.pool, bound, |v| v.extend_from_slice(&opening));
        if !replay.is_empty() && st != SendStatus::Dropped {
            self.counters.messages_out += replay.len() as u64;
            st = c
                .queue
                .push_shared(sse::events(&concat(replay), epoch), bound);
        }
        if st == SendStatus::Dropped {
            self.fail_slow(idx);
        } else {
            self.mark_dirty(idx);
        }
    }

    /// The keep-alive timer of a stream: a comment, and the next one scheduled.
    pub(super) fn sse_keepalive(&mut self, idx: usize) {
        let bound = self.cfg.max_backpressure;
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if c.phase != Phase::Stream {
            return;
        }
        let st = c.queue.push_owned(&mut self.pool, bound, |v| {
            v.extend_from_slice(sse::KEEPALIVE)
        });
        if st == SendStatus::Dropped {
            return self.fail_slow(idx);
        }
        self.set_timer(idx, TimerKind::KeepAlive, self.ms.keepalive);
        self.mark_dirty(idx);
    }
}
