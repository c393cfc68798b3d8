//! The channel protocol inside the shards (`--app hub`, docs/PROTOCOL.md).
//!
//! **One ordering point per channel.** Every channel has an owner shard (a hash of its name
//! modulo the shard count). The owner alone assigns sequence numbers, keeps the channel's
//! history, and knows which shards have subscribers (`interested`). A publish on any shard goes
//! to the owner; the owner numbers it, encodes the delivery frame once, stores that frame in the
//! history, and sends the same bytes to every interested shard, which writes them to its local
//! subscribers as a sweep (`hub_sweep.rs`). So every subscriber sees one order, without gaps.
//!
//! **Subscribe without a gap or a duplicate.** A shard marks the connection *pending* and asks
//! the owner. The owner sets the shard's interest bit *before* answering, computes the replay
//! (for `since`) from its history, and answers on the same FIFO channel that carries its
//! deliveries to that shard. Deliveries that reach the shard before the answer are not given to
//! the pending connection (they are in the replay, or older than the subscription); everything
//! after the answer is live. Messages between the owner and itself go through `local`, which
//! keeps the same FIFO order.
//!
//! The per-shard index (channel → local subscribers, connection → channels; `hub_index.rs`) is
//! plain shard state; a connection's subscriptions are dropped with it.
//!
//! Presence (`hub_presence.rs`) rides beside subscriptions: every subscribe reports a join to
//! the owner just before the subscribe itself, and every way a subscription ends goes through
//! `drop_local`, which reports the leave. Direct messages and the user index are in
//! `hub_users.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::config::SlowPolicy;
use crate::hub::wire::{self, Command as Wire, ErrorCode};
use crate::metrics::CloseReason;
use crate::proto::{frame, CloseCode, OpCode};

use super::conn::Phase;
use super::event_loop::Shard;
use super::send_queue::SendStatus;
use super::Command;

/// A connection on some shard: (shard, slab index, generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAddr {
    /// Shard index.
    pub shard: u32,
    /// Slab index on that shard.
    pub idx: u32,
    /// Generation of that slot.
    pub gen: u32,
}

/// Hub traffic between shards (inside [`Command::Hub`]).
#[derive(Debug)]
pub enum HubCmd {
    /// To the owner: number and deliver this message. `from` gets the publish reply.
    Publish {
        /// Channel name (validated).
        channel: Arc<str>,
        /// The publisher's JSON value.
        data: Box<RawValue>,
        /// Who gets the assigned sequence number.
        from: Publisher,
        /// The publisher's conflation key (read only on `conflate` channels).
        key: Option<Arc<str>>,
    },
    /// To every shard: report local subscriber counts per channel.
    Channels {
        /// Where to send (channel, live local subscribers).
        reply: crossbeam_channel::Sender<Vec<(Arc<str>, usize)>>,
    },
    /// To the owner: `from` wants the channel (and what it missed since `since`).
    Subscribe {
        /// Channel name.
        channel: Arc<str>,
        /// Subscriber and request id.
        from: ConnAddr,
        /// Request id.
        id: Option<u64>,
        /// Resume position (epoch — `None` if unparseable — and last seen seq).
        since: Option<(Option<u32>, u64)>,
    },
    /// From the owner: the subscription is live after the replay.
    Subscribed(Subscribed),
    /// From the owner: a numbered delivery for the shard's subscribers.
    Deliver {
        /// Channel name.
        channel: Arc<str>,
        /// The delivery frame, shared.
        frame: Bytes,
        /// The publisher's conflation key, if any.
        key: Option<Arc<str>>,
    },
    /// From the owner to the publisher's shard: the publish got `seq`.
    Published {
        /// Publisher.
        to: ConnAddr,
        /// Request id.
        id: Option<u64>,
        /// Assigned sequence number.
        seq: u64,
    },
    /// To the owner: the shard has no subscribers left on the channel.
    Uninterested {
        /// Channel name.
        channel: Arc<str>,
        /// The shard.
        shard: u32,
    },
    /// Who is in a channel: joins, leaves, lists and events.
    Presence(super::hub_presence::PresenceCmd),
    /// Messages to users and their tallies.
    User(super::hub_users::UserCmd),
    /// From the bus thread (Redis bus only): deliveries and answers for an owned channel.
    Bus(crate::bus::BusEvent),
    /// From a relaying owner: the channel's numbering restarted; `frame` is the notice.
    Reset {
        /// Channel name.
        channel: Arc<str>,
        /// The `reset` notice, shared.
        frame: Bytes,
        /// The new epoch, and the seq deliveries continue after.
        epoch: u32,
        /// See `epoch`.
        seq: u64,
    },
    /// From the bus thread to the publisher's shard: the publish was dropped (Redis away and
    /// the outbox full).
    PublishFailed {
        /// Publisher.
        to: ConnAddr,
        /// Request id.
        id: Option<u64>,
    },
}

/// Who published, so the owner can tell them the sequence number it assigned.
#[derive(Debug)]
pub enum Publisher {
    /// A client connection and its request id: it gets a `published` reply.
    Conn(ConnAddr, Option<u64>),
    /// Another thread (the server API): the number goes down this channel.
    Caller(crossbeam_channel::Sender<u64>),
}

/// The owner's answer to a subscribe.
#[derive(Debug)]
pub struct Subscribed {
    /// Channel name.
    pub channel: Arc<str>,
    /// Subscriber.
    pub to: ConnAddr,
    /// Request id.
    pub id: Option<u64>,
    /// Channel epoch.
    pub epoch: u32,
    /// Last assigned sequence number.
    pub seq: u64,
    /// For a resume: true = `replay` holds what was missed; false = history is gone.
    pub recovered: Option<bool>,
    /// Frames to send before live ones.
    pub replay: Vec<Bytes>,
}

/// One shard's hub state.
#[derive(Default)]
pub(super) struct HubState {
    /// Channels this shard owns.
    pub(super) owned: HashMap<Arc<str>, super::hub_owner::Owned>,
    /// Local subscribers per channel: live ones and ones waiting for the owner's answer.
    pub(super) local: HashMap<Arc<str>, Local>,
    /// Channels of each local connection, by slab index.
    pub(super) by_conn: ConnChannels,
    /// Commands this shard sends to itself (it owns the channel), in FIFO order.
    pub(super) to_self: std::collections::VecDeque<HubCmd>,
    /// Seed for channel epochs.
    pub(super) epoch_seed: u64,
    /// Last token given to a relay (`hub_relay.rs`).
    pub(super) relay_token: u64,
    /// Subscriptions held by local connections (the sum of `by_conn` lengths, kept as it
    /// changes so the gauge never walks the slab).
    subscriptions: u64,
    /// Deliveries received this pass, per channel in arrival order, committed to the
    /// channel's sweep at the end of the pass (or earlier, before its subscriber set changes).
    pub(super) batch: HashMap<Arc<str>, Batch>,
    /// Channels whose sweep has subscribers still to write (`hub_sweep.rs`).
    pub(super) sweeping: Vec<Arc<str>>,
    /// Presence: the owner's counts, and local connections that asked for events.
    pub(super) presence: super::hub_presence::PresenceState,
    /// Local connections by user id, and direct messages waiting for their tallies.
    pub(super) users: super::hub_users::UserIndex,
    /// What subscribers refused deliveries were not given (`hub_position.rs`).
    pub(super) gaps: super::hub_position::Gaps,
}

/// One channel's deliveries of a pass, and the conflation keys of those that have one.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) frames: Vec<Bytes>,
    /// (index in `frames`, key); empty unless publishers give keys.
    pub(super) keys: Vec<(usize, Arc<str>)>,
}

pub(super) use super::hub_index::{ConnChannels, Local};

impl HubState {
    /// Whether the connection is waiting for the owner's answer to its subscribe to `channel`.
    pub(super) fn is_pending(&self, channel: &str, key: (u32, u32)) -> bool {
        self.local
            .get(channel)
            .is_some_and(|l| l.pending.contains(&key))
    }
}

/// The shard that owns `channel` among `shards` (the same on every node and shard).
///
/// FNV-1a: the channel's owner must be the same on every shard; no need for a keyed hash.
pub fn owner_of(channel: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in channel.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

impl Shard {
    pub(super) fn shard_count(&self) -> usize {
        self.peer_count() + 1
    }

    /// Sends hub traffic to shard `to` (itself included, through the FIFO `to_self`).
    pub(super) fn hub_send(&mut self, to: usize, cmd: HubCmd) {
        if to == self.id {
            self.hub.to_self.push_back(cmd);
        } else {
            self.send_to_peer(to, Command::Hub(cmd));
        }
    }

    pub(super) fn addr_of(&self, idx: usize) -> Option<ConnAddr> {
        self.conns.get(idx).map(|c| ConnAddr {
            shard: self.id as u32,
            idx: idx as u32,
            gen: c.generation,
        })
    }

    /// Queues a JSON reply (as a text frame) on a local connection.
    pub(super) fn hub_reply(&mut self, idx: usize, fill: impl FnOnce(&mut Vec<u8>)) {
        let mut json = Vec::with_capacity(96);
        fill(&mut json);
        let bound = self.cfg.max_backpressure;
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if !c.phase.sends_data() {
            return;
        }
        let st = c.queue.push_owned(&mut self.pool, bound, |v| {
            frame::encode_frame_into(v, OpCode::Text, &json, None)
        });
        self.counters.messages_out += 1;
        if st == SendStatus::Dropped {
            self.fail_slow(idx);
        } else {
            self.mark_dirty(idx);
        }
    }

    /// Answers request `id` with the error `code` (and its standard message).
    pub(super) fn hub_error(&mut self, idx: usize, id: Option<u64>, code: ErrorCode) {
        self.hub_reply(idx, |o| wire::reply_error(o, id, code, code.as_str()));
    }

    /// One text message from a local connection, in hub mode.
    pub(super) fn hub_message(&mut self, idx: usize, text: &[u8]) {
        if let Err(close) = self.admission.charge(idx, text.len(), self.now as u32) {
            if close {
                self.fail(
                    idx,
                    CloseCode::POLICY,
                    "rate limit exceeded",
                    CloseReason::RateLimited,
                );
            } else {
                let code = ErrorCode::RateLimited;
                self.hub_reply(idx, |o| wire::reply_error(o, None, code, "slow down"));
            }
            return;
        }
        if let Some((id, token)) = wire::parse_refresh(text) {
            let gen = self.conns.get(idx).map_or(0, |c| c.generation);
            return match self.admission.refresh(idx, gen, token) {
                Ok(_) => self.hub_reply(idx, |o| wire::reply_ok(o, id)),
                Err(why) => {
                    let code = ErrorCode::Forbidden;
                    self.hub_reply(idx, |o| wire::reply_error(o, id, code, why))
                }
            };
        }
        let cmd = match wire::parse(text) {
            Ok(cmd) => cmd,
            Err(e) => {
                if let Some(code) = e.close {
                    self.fail(idx, code, "not a JSON command", CloseReason::Protocol);
                } else {
                    self.hub_reply(idx, |o| wire::reply_error(o, e.id, e.code, e.code.as_str()));
                }
                return;
            }
        };
        match cmd {
            Wire::Subscribe {
                id,
                channel,
                since,
                presence,
            } => {
                // An epoch that does not parse was never issued here: `None` forces a resync.
                let since = since.map(|s| (wire::parse_epoch(s.epoch), s.seq));
                self.hub_subscribe(idx, id, channel, since, presence)
            }
            Wire::Presence { id, channel } => self.presence_query(idx, id, channel),
            Wire::Direct { id, data, .. } | Wire::Publish { id, data, .. }
                if data.get().len() > self.cfg.max_publish_size =>
            {
                self.hub_error(idx, id, ErrorCode::TooLarge)
            }
            Wire::Direct { id, user, data } => self.direct_send(idx, id, &user.get(), data),
            Wire::Unsubscribe { id, channel } => self.hub_unsubscribe(idx, id, channel),
            Wire::Publish { id, channel, data } => {
                if self
                    .admission
                    .grant(idx)
                    .is_some_and(|g| !g.may_publish(channel))
                {
                    return self.hub_error(idx, id, ErrorCode::Forbidden);
                }
                let Some(from) = self.addr_of(idx) else {
                    return;
                };
                // The key matters only where deliveries are conflated: read it only there.
                let key = match self.cfg.policy_for(channel) {
                    SlowPolicy::Conflate => crate::hub::conflate::publish_key(text).map(Arc::from),
                    _ => None,
                };
                let channel: Arc<str> = Arc::from(channel);
                let from = Publisher::Conn(from, id);
                if let Some(bus) = &self.bus {
                    let data = data.to_owned();
                    if !bus.send(crate::bus::Req::Publish {
                        channel,
                        data,
                        key,
                        from,
                    }) {
                        self.hub_error(idx, id, ErrorCode::Unavailable);
                    }
                    return;
                }
                let owner = owner_of(&channel, self.shard_count());
                self.hub_send(
                    owner,
                    HubCmd::Publish {
                        channel,
                        data: data.to_owned(),
                        from,
                        key,
                    },
                );
            }
        }
    }

    fn hub_subscribe(
        &mut self,
        idx: usize,
        id: Option<u64>,
        ch: &str,
        since: Option<(Option<u32>, u64)>,
        watch: bool,
    ) {
        if self
            .admission
            .grant(idx)
            .is_some_and(|g| !g.may_subscribe(ch))
        {
            return self.hub_error(idx, id, ErrorCode::Forbidden);
        }

        let (subs, already) = (
            self.hub.by_conn.len(idx),
            self.hub.by_conn.contains(idx, ch),
        );
        if already {
            return self.hub_error(idx, id, ErrorCode::AlreadySubscribed);
        }
        if subs >= self.cfg.max_channels_per_connection {
            return self.hub_error(idx, id, ErrorCode::TooManyChannels);
        }
        self.hub_join(idx, id, ch, since, watch);
    }

    /// Adds a local connection to a channel as pending and asks the owner for it (the checks
    /// are the caller's: a WebSocket subscribe or an event stream's request). `watch`: the
    /// connection wants presence events.
    pub(super) fn hub_join(
        &mut self,
        idx: usize,
        id: Option<u64>,
        ch: &str,
        since: Option<(Option<u32>, u64)>,
        watch: bool,
    ) {
        let Some(from) = self.addr_of(idx) else {
            return;
        };
        // Reuse the shard's Arc for this channel name when there is one.
        let channel: Arc<str> = match self.hub.local.get_key_value(ch) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(ch),
        };
        let policy = self.cfg.policy_for(&channel);
        self.hub
            .local
            .entry(Arc::clone(&channel))
            .or_insert_with(|| Local {
                policy,
                ..Local::default()
            })
            .pending
            .push((from.idx, from.gen));
        self.hub.by_conn.push(idx, Arc::clone(&channel));
        self.hub.subscriptions += 1;
        self.presence_join(from, &channel, watch);
        let owner = owner_of(&channel, self.shard_count());
        self.hub_send(
            owner,
            HubCmd::Subscribe {
                channel,
                from,
                id,
                since,
            },
        );
    }

    fn hub_unsubscribe(&mut self, idx: usize, id: Option<u64>, ch: &str) {
        let gen = self.conns.get(idx).map_or(0, |c| c.generation);
        let found = self.hub.by_conn.remove(idx, ch);
        if found.is_some() {
            self.hub.subscriptions -= 1;
        }
        match found {
            Some(channel) => {
                self.drop_local(idx, gen, &channel);
                self.hub_reply(idx, |o| wire::reply_ok(o, id));
            }
            None => {
                self.hub_error(idx, id, ErrorCode::NotSubscribed);
            }
        }
    }

    /// Removes a connection from a channel's local set; tells the owner when none are left.
    fn drop_local(&mut self, idx: usize, gen: u32, channel: &Arc<str>) {
        self.flush_channel(channel);
        self.unhold(idx, channel);
        self.hub.gaps.forget(idx as u32, channel);
        self.presence_leave(idx, gen, channel);
        let Some(l) = self.hub.local.get_mut(channel) else {
            return;
        };
        l.live.retain(|&(i, _)| i as usize != idx);
        l.pending.retain(|&(i, _)| i as usize != idx);
        if l.is_empty() {
            self.hub.local.remove(channel);
            self.sse.forget_channel(channel);
            let owner = owner_of(channel, self.shard_count());
            let shard = self.id as u32;
            self.hub_send(
                owner,
                HubCmd::Uninterested {
                    channel: Arc::clone(channel),
                    shard,
                },
            );
        }
    }

    /// A connection is leaving the slab: forget its subscriptions (and who it was).
    pub(super) fn hub_forget(&mut self, idx: usize, gen: u32) {
        let chans = self.hub.by_conn.take_all(idx);
        self.hub.subscriptions -= chans.len() as u64;
        for ch in chans {
            self.drop_local(idx, gen, &ch);
        }
        self.users_forget(idx, gen);
    }

    /// Copies the hub's sizes into the counters (before each publish of the snapshot).
    pub(super) fn hub_gauges(&mut self) {
        // Channels nobody listens to are kept only while their history can still serve a
        // resume; then they go.
        let now = self.now;
        self.hub.owned.retain(|_, o| {
            o.history.expire(now);
            o.interested != 0 || (o.relay.is_none() && !o.history.is_empty())
        });
        self.counters.hub_channels = self.hub.owned.len() as u64;
        self.counters.hub_subscriptions = self.hub.subscriptions;
    }

    /// Runs commands this shard sent to itself, until none are left.
    pub(super) fn hub_drain_self(&mut self) {
        while let Some(cmd) = self.hub.to_self.pop_front() {
            self.hub_command(cmd);
        }
    }

    /// Hub traffic from any shard (this one included).
    pub(super) fn hub_command(&mut self, cmd: HubCmd) {
        match cmd {
            HubCmd::Publish {
                channel,
                data,
                from,
                key,
            } => self.own_publish(channel, &data, from, key),
            HubCmd::Subscribe {
                channel,
                from,
                id,
                since,
            } => self.own_subscribe(channel, from, id, since),
            HubCmd::Uninterested { channel, shard } => {
                if let Some(o) = self.hub.owned.get_mut(&channel) {
                    o.interested &= !(1u64 << shard);
                    let relayed = o.relay.is_some();
                    // A relayed channel's history is in Redis: nothing is lost by forgetting it.
                    if o.interested == 0 && (relayed || o.history.is_empty()) {
                        self.hub.owned.remove(&channel);
                        if let (true, Some(bus)) = (relayed, &self.bus) {
                            bus.send(crate::bus::Req::Unsync { channel });
                        }
                    }
                }
            }
            HubCmd::Subscribed(answer) => self.on_subscribed(answer),
            HubCmd::Deliver {
                channel,
                frame,
                key,
            } => self.deliver_local(&channel, frame, key),
            HubCmd::Channels { reply } => {
                let list = self
                    .hub
                    .local
                    .iter()
                    .filter(|(_, l)| !l.live.is_empty())
                    .map(|(name, l)| (Arc::clone(name), l.live.len()))
                    .collect();
                let _ = reply.send(list);
            }
            HubCmd::Published { to, id, seq } => {
                if self.is_current(to) {
                    self.hub_reply(to.idx as usize, |o| wire::reply_published(o, id, seq));
                }
            }
            HubCmd::Presence(cmd) => self.presence_command(cmd),
            HubCmd::User(cmd) => self.user_command(cmd),
            HubCmd::Bus(ev) => self.relay_event(ev),
            HubCmd::Reset {
                channel,
                frame,
                epoch,
                seq,
            } => {
                self.reset_local(&channel, frame);
                self.reposition(&channel, epoch, seq);
            }
            HubCmd::PublishFailed { to, id } => {
                if self.is_current(to) {
                    self.hub_error(to.idx as usize, id, ErrorCode::Unavailable);
                }
            }
        }
    }

    pub(super) fn is_current(&self, a: ConnAddr) -> bool {
        self.conns
            .get(a.idx as usize)
            .is_some_and(|c| c.generation == a.gen)
    }

    fn on_subscribed(&mut self, answer: Subscribed) {
        let Subscribed {
            channel,
            to,
            id,
            epoch,
            seq,
            recovered,
            replay,
        } = answer;
        let key = (to.idx, to.gen);
        self.flush_channel(&channel);
        let pending = self
            .hub
            .local
            .get_mut(&channel)
            .and_then(|l| l.pending.iter().position(|&p| p == key).map(|i| (l, i)));
        let Some((l, pos)) = pending else {
            // Unsubscribed (or gone) while the owner was answering. The request still gets
            // its reply, without replay: the client has already left the channel.
            if self.is_current(to) {
                self.hub_reply(to.idx as usize, |o| {
                    wire::reply_subscribed(o, id, &channel, epoch, seq, recovered)
                });
            }
            return;
        };
        l.pending.swap_remove(pos);
        l.live.push(key);
        // Every live subscriber here now stands at the answer's seq (`hub_position.rs`).
        (l.epoch, l.seq) = (epoch, seq);
        let policy = l.policy;
        let idx = to.idx as usize;
        if self
            .conns
            .get(idx)
            .is_some_and(|c| c.phase == Phase::Stream)
        {
            return self.sse_subscribed(idx, &channel, epoch, seq, recovered, replay);
        }
        self.hub_reply(idx, |o| {
            wire::reply_subscribed(o, id, &channel, epoch, seq, recovered)
        });
        // A channel that keeps slow subscribers must let them recover their gap from history
        // even when it is larger than the queue bound (history bounds the replay instead).
        let bound = match policy {
            SlowPolicy::Disconnect => self.cfg.max_backpressure,
            SlowPolicy::Drop | SlowPolicy::Conflate => usize::MAX,
        };
        let mut slow = false;
        if let Some(c) = self.conns.get_mut(idx) {
            for f in replay {
                self.counters.messages_out += 1;
                if c.queue.push_shared(f, bound) == SendStatus::Dropped {
                    slow = true;
                    break;
                }
            }
        }
        if slow {
            self.fail_slow(idx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner_of;

    #[test]
    fn owner_is_stable_and_spread() {
        assert_eq!(owner_of("news", 1), 0);
        assert_eq!(owner_of("news", 4), owner_of("news", 4));
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[owner_of(&format!("ch{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
    }
}
