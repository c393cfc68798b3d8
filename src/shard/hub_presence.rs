//! Presence inside the shards (`--app hub`): who is in each channel, counted at one point.
//!
//! **The owner aggregates.** A channel's owner shard (the one that numbers its messages) keeps
//! its [`Presence`]: user id → connections subscribed. Every shard reports each local
//! subscribe as a [`PresenceCmd::Join`] sent just before the subscribe itself, and each end
//! of a subscription (unsubscribe, close, heartbeat failure, reset: every path goes through
//! `drop_local`) as a [`PresenceCmd::Leave`]. Both travel on the FIFO from that shard to the
//! owner, so a connection's leave never overtakes its join.
//!
//! **Events go only where someone asked.** A subscribe with `"presence": true` makes its
//! connection a *watcher*; the join carries `watch`, and the owner keeps one bit per shard
//! with watchers. When a user's first connection joins or last one leaves, the owner encodes
//! the event frame once and sends it to the watching shards; each queues it on its live
//! watchers. A leave that takes a shard's last watcher carries `unwatch`. A watcher still
//! waiting for its subscribe answer gets no event (the owner handles its join before its
//! subscribe, so it never sees its own join), and a presence reply travels the same path as
//! the events: it reflects every event delivered before it and none after.
//!
//! **Other nodes (Redis bus).** While a channel has watchers here, the owner tells the bus
//! ([`crate::bus::Req::Watch`]), which reads the channel's members on the other live nodes
//! every [`crate::bus::PRESENCE_POLL`] and hands the owner the list
//! ([`crate::bus::BusEvent::Others`]). A user counts as present when it has a connection here
//! or is on that list; the owner sends a join or leave when that changes, whichever side
//! changed it. So a watcher hears of users on other nodes within about a poll (plus the
//! node TTL when a node dies), and hears of a user on two nodes once.
//!
//! Plain deliveries do not pass through here: presence costs one message per subscribe and
//! per unsubscribe, and nothing per published message.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use crate::hub::presence::{anon_id, Presence};
use crate::hub::wire::{self, ErrorCode, PresenceEvent};

use super::event_loop::Shard;
use super::hub::{owner_of, ConnAddr, HubCmd};
use super::send_queue::SendStatus;

/// Presence traffic between shards (inside [`HubCmd::Presence`]).
#[derive(Debug)]
pub enum PresenceCmd {
    /// To the owner: a connection of `user` on `shard` subscribed to `channel`.
    Join {
        /// Channel name.
        channel: Arc<str>,
        /// The connection's user id.
        user: Arc<str>,
        /// The connection's shard.
        shard: u32,
        /// The connection asked for join and leave events.
        watch: bool,
    },
    /// To the owner: a connection of `user` on `shard` is no longer subscribed.
    Leave {
        /// Channel name.
        channel: Arc<str>,
        /// The connection's user id.
        user: Arc<str>,
        /// The connection's shard.
        shard: u32,
        /// The shard has no watchers of the channel left.
        unwatch: bool,
    },
    /// To the owner: list the channel's members.
    List {
        /// Channel name.
        channel: Arc<str>,
        /// Who gets the list.
        to: Asker,
    },
    /// From the owner: the reply to a connection's presence command, already written.
    Listed {
        /// Channel name.
        channel: Arc<str>,
        /// The connection that asked.
        to: ConnAddr,
        /// The reply's JSON text.
        reply: Vec<u8>,
    },
    /// From the owner: a join or leave event for the shard's watchers of `channel`.
    Event {
        /// Channel name.
        channel: Arc<str>,
        /// The event frame, shared.
        frame: Bytes,
    },
}

/// Who asked for a presence list.
#[derive(Debug)]
pub enum Asker {
    /// A client connection and its request id.
    Conn(ConnAddr, Option<u64>),
    /// Another thread (the admin API): the list goes down this channel.
    Caller(crossbeam_channel::Sender<Members>),
}

/// A channel's presence list, as the admin API receives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Listed users and their subscribed connections, by user id.
    pub members: Vec<(Arc<str>, u32)>,
    /// Connections counted but not listed (the list is truncated when non-zero).
    pub unlisted: u64,
}

/// One shard's presence state: the owner side and the local watchers.
#[derive(Default)]
pub(super) struct PresenceState {
    /// Channels this shard owns with someone present or watching.
    owned: HashMap<Arc<str>, OwnedPresence>,
    /// Local connections that asked for events, per channel, pending ones included.
    watchers: HashMap<Arc<str>, Vec<(u32, u32)>>,
}

/// The owner's presence state for one channel.
#[derive(Default)]
struct OwnedPresence {
    set: Presence,
    /// Bit i = shard i has watchers.
    watching: u64,
    /// Users present on other nodes, as the bus last said (kept only while watched).
    remote: HashSet<Arc<str>>,
}

impl Shard {
    /// The user id of a local connection: its token's `sub`, or its anonymous id.
    pub(super) fn user_of(&self, idx: usize, gen: u32) -> Arc<str> {
        match self.admission.grant(idx) {
            Some(g) => self.hub.users.shared(&g.user),
            None => Arc::from(anon_id(self.id as u32, idx as u32, gen)),
        }
    }

    /// A local connection subscribes to `channel`: report the join (before the subscribe).
    pub(super) fn presence_join(&mut self, from: ConnAddr, channel: &Arc<str>, watch: bool) {
        if watch {
            let w = self.hub.presence.watchers.entry(Arc::clone(channel));
            w.or_default().push((from.idx, from.gen));
        }
        let user = self.user_of(from.idx as usize, from.gen);
        let owner = owner_of(channel, self.shard_count());
        let channel = Arc::clone(channel);
        let shard = from.shard;
        let join = PresenceCmd::Join {
            channel,
            user,
            shard,
            watch,
        };
        self.hub_send(owner, HubCmd::Presence(join));
    }

    /// A local connection's subscription to `channel` ended: report the leave.
    pub(super) fn presence_leave(&mut self, idx: usize, gen: u32, channel: &Arc<str>) {
        let mut unwatch = false;
        if let Some(w) = self.hub.presence.watchers.get_mut(channel) {
            if let Some(i) = w.iter().position(|&k| k == (idx as u32, gen)) {
                w.swap_remove(i);
                if w.is_empty() {
                    self.hub.presence.watchers.remove(channel);
                    unwatch = true;
                }
            }
        }
        let user = self.user_of(idx, gen);
        let owner = owner_of(channel, self.shard_count());
        let leave = PresenceCmd::Leave {
            channel: Arc::clone(channel),
            user,
            shard: self.id as u32,
            unwatch,
        };
        self.hub_send(owner, HubCmd::Presence(leave));
    }

    /// `{"op":"presence"}` from a local connection: allowed where it may subscribe.
    pub(super) fn presence_query(&mut self, idx: usize, id: Option<u64>, channel: &str) {
        if self
            .admission
            .grant(idx)
            .is_some_and(|g| !g.may_subscribe(channel))
        {
            return self.hub_error(idx, id, ErrorCode::Forbidden);
        }
        let Some(from) = self.addr_of(idx) else {
            return;
        };
        let channel: Arc<str> = Arc::from(channel);
        let to = Asker::Conn(from, id);
        if let Some(bus) = &self.bus {
            // Members on every node: the bus thread asks Redis and answers with `Listed`.
            bus.send(crate::bus::Req::List { channel, to });
            return;
        }
        let owner = owner_of(&channel, self.shard_count());
        self.hub_send(owner, HubCmd::Presence(PresenceCmd::List { channel, to }));
    }

    /// Presence traffic from any shard (this one included).
    pub(super) fn presence_command(&mut self, cmd: PresenceCmd) {
        match cmd {
            PresenceCmd::Join {
                channel,
                user,
                shard,
                watch,
            } => {
                let max = self.cfg.max_presence_members;
                if let Some(bus) = &self.bus {
                    let (channel, user) = (Arc::clone(&channel), Arc::clone(&user));
                    bus.send(crate::bus::Req::Presence {
                        channel,
                        user,
                        delta: 1,
                    });
                }
                let o = self.hub.presence.owned.entry(Arc::clone(&channel));
                let o = o.or_default();
                let watched = o.watching != 0;
                if watch {
                    o.watching |= 1u64 << shard;
                }
                let now_watched = !watched && o.watching != 0;
                let first = o.set.join(&user, max) && !o.remote.contains(&user);
                if now_watched {
                    self.bus_watch(&channel, true);
                }
                if first {
                    self.presence_emit(&channel, PresenceEvent::Join, &user);
                }
            }
            PresenceCmd::Leave {
                channel,
                user,
                shard,
                unwatch,
            } => {
                let Some(o) = self.hub.presence.owned.get_mut(&channel) else {
                    return;
                };
                if let Some(bus) = &self.bus {
                    let (channel, user) = (Arc::clone(&channel), Arc::clone(&user));
                    bus.send(crate::bus::Req::Presence {
                        channel,
                        user,
                        delta: -1,
                    });
                }
                let watched = o.watching != 0;
                if unwatch {
                    o.watching &= !(1u64 << shard);
                }
                let unwatched = watched && o.watching == 0;
                if unwatched {
                    o.remote.clear();
                }
                let last = o.set.leave(&user) && !o.remote.contains(&user);
                if o.set.is_empty() && o.watching == 0 {
                    self.hub.presence.owned.remove(&channel);
                }
                if unwatched {
                    self.bus_watch(&channel, false);
                }
                if last {
                    self.presence_emit(&channel, PresenceEvent::Leave, &user);
                }
            }
            PresenceCmd::List { channel, to } => self.presence_list(channel, to),
            PresenceCmd::Listed { channel, to, reply } => {
                if self.is_current(to) {
                    // Behind the channel's deliveries already received, as the owner sent them.
                    self.flush_channel(&channel);
                    self.hub_reply(to.idx as usize, |o| o.extend_from_slice(&reply));
                }
            }
            PresenceCmd::Event { channel, frame } => self.presence_deliver(&channel, frame),
        }
    }

    /// The owner tells the bus that `channel` has watchers here, or none left.
    fn bus_watch(&self, channel: &Arc<str>, on: bool) {
        if let Some(bus) = &self.bus {
            let channel = Arc::clone(channel);
            bus.send(crate::bus::Req::Watch { channel, on });
        }
    }

    /// The owner hears who is in `channel` on the other nodes: a join for each user who
    /// was present nowhere, a leave for each who now is present nowhere.
    pub(super) fn presence_others(&mut self, channel: &Arc<str>, users: Vec<Arc<str>>) {
        let Some(o) = self.hub.presence.owned.get_mut(channel) else {
            return;
        };
        if o.watching == 0 {
            return;
        }
        let now: HashSet<Arc<str>> = users.into_iter().collect();
        let here = |u: &Arc<str>| o.set.connections(u) > 0;
        let mut joins: Vec<Arc<str>> = now
            .iter()
            .filter(|u| !o.remote.contains(*u) && !here(u))
            .cloned()
            .collect();
        let mut leaves: Vec<Arc<str>> = o
            .remote
            .iter()
            .filter(|u| !now.contains(*u) && !here(u))
            .cloned()
            .collect();
        o.remote = now;
        joins.sort_unstable();
        leaves.sort_unstable();
        for user in leaves {
            self.presence_emit(channel, PresenceEvent::Leave, &user);
        }
        for user in joins {
            self.presence_emit(channel, PresenceEvent::Join, &user);
        }
    }

    /// The owner answers a presence list.
    fn presence_list(&mut self, channel: Arc<str>, to: Asker) {
        let list = match self.hub.presence.owned.get(&channel) {
            Some(o) => Members {
                members: o.set.sorted(),
                unlisted: o.set.unlisted(),
            },
            None => Members::default(),
        };
        match to {
            Asker::Conn(addr, id) => {
                let mut reply = Vec::with_capacity(64 + list.members.len() * 32);
                let members = list.members.iter().map(|(u, n)| (&**u, *n));
                wire::reply_presence(&mut reply, id, &channel, members, list.unlisted);
                let listed = PresenceCmd::Listed {
                    channel,
                    to: addr,
                    reply,
                };
                self.hub_send(addr.shard as usize, HubCmd::Presence(listed));
            }
            // The caller may have given up waiting.
            Asker::Caller(tx) => {
                let _ = tx.send(list);
            }
        }
    }

    /// The owner sends a join or leave to every shard with watchers.
    fn presence_emit(&mut self, channel: &Arc<str>, event: PresenceEvent, user: &str) {
        let Some(watching) = self.hub.presence.owned.get(channel).map(|o| o.watching) else {
            return;
        };
        if watching == 0 {
            return;
        }
        let frame = wire::presence_event_frame(channel, event, user);
        for shard in 0..self.shard_count() {
            if watching & (1u64 << shard) != 0 {
                let ev = PresenceCmd::Event {
                    channel: Arc::clone(channel),
                    frame: frame.clone(),
                };
                self.hub_send(shard, HubCmd::Presence(ev));
            }
        }
    }

    /// Queues an event on the local watchers of `channel` whose subscription is live.
    fn presence_deliver(&mut self, channel: &Arc<str>, frame: Bytes) {
        let Some(watchers) = self.hub.presence.watchers.get(channel) else {
            return;
        };
        let watchers: Vec<(u32, u32)> = watchers
            .iter()
            .copied()
            .filter(|&k| !self.hub.is_pending(channel, k))
            .collect();
        // After the deliveries already held for this pass, in the owner's order.
        self.flush_channel(channel);
        let bound = self.cfg.max_backpressure;
        let mut slow = Vec::new();
        for (i, g) in watchers {
            let idx = i as usize;
            let Some(c) = self.conns.get_mut(idx) else {
                continue;
            };
            if c.generation != g || !c.phase.sends_data() {
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
    }
}
