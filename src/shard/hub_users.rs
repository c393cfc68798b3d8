//! Users inside the shards (`--app hub`): which local connections belong to which user id,
//! and direct messages to a user on every shard.
//!
//! **The index.** Each shard keeps user id → its local connections with a token, filled when a
//! connection is admitted and emptied when it leaves the slab. Anonymous connections are not
//! in it: their id (`anon:<shard>.<idx>.<gen>`, see `hub::presence`) already says where they
//! are, so they cost the index nothing.
//!
//! **A direct message is a fan-out and a gather.** The sender's shard encodes the delivery
//! frame once and sends it, with a tally token, to every shard (only the named shard for an
//! anonymous id). Each queues it on the user's open connections and answers how many; the
//! sender's shard adds the answers up and replies to the sender once every shard has
//! answered. Shards never stop answering while they run, so each tally completes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::hub::presence::parse_anon;
use crate::hub::wire::{self, ErrorCode};

use super::conn::Phase;
use super::event_loop::Shard;
use super::hub::{ConnAddr, HubCmd};
use super::send_queue::SendStatus;

/// Direct-message traffic between shards (inside [`HubCmd::User`]).
#[derive(Debug)]
pub enum UserCmd {
    /// To a shard: give `frame` to every local connection of `user`, then tell `tally` how
    /// many got it.
    Direct {
        /// The recipient's user id.
        user: Arc<str>,
        /// The delivery frame, shared.
        frame: Bytes,
        /// Where the count goes.
        tally: Tally,
    },
    /// To a shard: close every local connection of `user` with `DISCONNECTED`, then tell
    /// `tally` how many.
    Disconnect {
        /// The user id.
        user: Arc<str>,
        /// Where the count goes.
        tally: Tally,
    },
    /// To the sender's shard: one shard's count for direct message `token`.
    Delivered {
        /// The sender's tally token.
        token: u64,
        /// Connections that got the message on the answering shard.
        count: u64,
    },
}

/// Where a shard reports how many connections got a direct message.
#[derive(Debug)]
pub enum Tally {
    /// The sender's shard, which adds the counts up under `token`.
    Shard {
        /// The sender's shard.
        shard: u32,
        /// Its tally token.
        token: u64,
    },
    /// Another thread (the admin API), which adds the counts up itself.
    Caller(crossbeam_channel::Sender<u64>),
    /// The bus thread (Redis bus), gathering this node's count for token `token`.
    Bus {
        /// The bus thread's token.
        token: u64,
    },
}

/// One shard's user state.
#[derive(Default)]
pub(super) struct UserIndex {
    /// Local connections with a token, by user id: (slab index, generation).
    by_user: HashMap<Arc<str>, Vec<(u32, u32)>>,
    /// Direct messages sent from this shard still waiting for some shard's count.
    tallies: HashMap<u64, Gather>,
    next_token: u64,
}

/// A direct message's counts so far.
struct Gather {
    to: ConnAddr,
    id: Option<u64>,
    waiting: usize,
    delivered: u64,
}

impl UserIndex {
    /// The index's own `Arc` for `user` when it has one (no allocation), else a new one.
    pub(super) fn shared(&self, user: &str) -> Arc<str> {
        match self.by_user.get_key_value(user) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(user),
        }
    }

    fn add(&mut self, user: &str, key: (u32, u32)) {
        match self.by_user.get_mut(user) {
            Some(v) => v.push(key),
            None => {
                self.by_user.insert(Arc::from(user), vec![key]);
            }
        }
    }

    fn remove(&mut self, user: &str, key: (u32, u32)) {
        if let Some(v) = self.by_user.get_mut(user) {
            v.retain(|&k| k != key);
            if v.is_empty() {
                self.by_user.remove(user);
            }
        }
    }
}

impl Shard {
    /// A connection was admitted: index it under its token's user, if it has one.
    pub(super) fn users_admitted(&mut self, idx: usize, gen: u32) {
        if let Some(g) = self.admission.grant(idx) {
            self.hub.users.add(&g.user, (idx as u32, gen));
            if let Some(bus) = &self.bus {
                let user = self.hub.users.shared(&g.user);
                bus.send(crate::bus::Req::User { user, delta: 1 });
            }
        }
    }

    /// A connection is leaving the slab: take it out of the index.
    pub(super) fn users_forget(&mut self, idx: usize, gen: u32) {
        if let Some(g) = self.admission.grant(idx) {
            if let Some(bus) = &self.bus {
                let user = self.hub.users.shared(&g.user);
                bus.send(crate::bus::Req::User { user, delta: -1 });
            }
            self.hub.users.remove(&g.user, (idx as u32, gen));
        }
    }

    /// `{"op":"direct"}` from a local connection. Allowed for connections with a token, and
    /// for anonymous ones when the server has no tokens at all: with a secret configured, an
    /// anonymous sender could not be told apart from any other.
    pub(super) fn direct_send(&mut self, idx: usize, id: Option<u64>, to: &str, data: &RawValue) {
        let Some(from) = self.addr_of(idx) else {
            return;
        };
        if self.admission.grant(idx).is_none() && self.cfg.jwt_secret.is_some() {
            return self.hub_error(idx, id, ErrorCode::Forbidden);
        }
        let sender = self.user_of(idx, from.gen);
        let frame = wire::direct_frame(Some(&sender), data);
        // With the Redis bus a user with a token may be on any node: the bus finds them.
        let across = self.bus.is_some() && parse_anon(to).is_none();
        let shards = if across {
            vec![self.id]
        } else {
            self.shards_of(to)
        };
        if shards.is_empty() {
            return self.hub_reply(idx, |o| wire::reply_delivered(o, id, 0));
        }
        let token = self.hub.users.next_token;
        self.hub.users.next_token += 1;
        let gather = Gather {
            to: from,
            id,
            waiting: shards.len(),
            delivered: 0,
        };
        self.hub.users.tallies.insert(token, gather);
        let user: Arc<str> = Arc::from(to);
        if let (true, Some(bus)) = (across, &self.bus) {
            let tally = Tally::Shard {
                shard: self.id as u32,
                token,
            };
            let what = crate::bus::ToUser::Frame(frame);
            bus.send(crate::bus::Req::Direct { user, what, tally });
            return;
        }
        for shard in shards {
            let tally = Tally::Shard {
                shard: self.id as u32,
                token,
            };
            let cmd = UserCmd::Direct {
                user: Arc::clone(&user),
                frame: frame.clone(),
                tally,
            };
            self.hub_send(shard, HubCmd::User(cmd));
        }
    }

    /// The shards that may hold connections of `user`: the one an anonymous id names (none if
    /// it names no shard), or all.
    pub(super) fn shards_of(&self, user: &str) -> Vec<usize> {
        let n = self.shard_count();
        match parse_anon(user) {
            Some((s, _, _)) if (s as usize) < n => vec![s as usize],
            Some(_) => Vec::new(),
            None => (0..n).collect(),
        }
    }

    /// Direct-message traffic from any shard (this one included).
    pub(super) fn user_command(&mut self, cmd: UserCmd) {
        match cmd {
            UserCmd::Direct { user, frame, tally } => {
                let count = self.direct_deliver(&user, frame);
                self.report(tally, count);
            }
            UserCmd::Disconnect { user, tally } => {
                let count = self.disconnect_user(&user) as u64;
                self.report(tally, count);
            }
            UserCmd::Delivered { token, count } => {
                let Some(g) = self.hub.users.tallies.get_mut(&token) else {
                    return;
                };
                g.delivered += count;
                g.waiting = g.waiting.saturating_sub(1);
                if g.waiting > 0 {
                    return;
                }
                let Some(g) = self.hub.users.tallies.remove(&token) else {
                    return;
                };
                if self.is_current(g.to) {
                    let (id, n) = (g.id, g.delivered);
                    self.hub_reply(g.to.idx as usize, |o| wire::reply_delivered(o, id, n));
                }
            }
        }
    }

    /// Sends one shard's count (connections reached) where `tally` says.
    fn report(&mut self, tally: Tally, count: u64) {
        match tally {
            Tally::Shard { shard, token } => {
                let cmd = UserCmd::Delivered { token, count };
                self.hub_send(shard as usize, HubCmd::User(cmd));
            }
            // The caller may have given up waiting.
            Tally::Caller(tx) => {
                let _ = tx.send(count);
            }
            Tally::Bus { token } => {
                if let Some(bus) = &self.bus {
                    bus.send(crate::bus::Req::DirectCount { token, count });
                }
            }
        }
    }

    /// Local open connections of `user`: the indexed ones, or the one an anonymous id names.
    pub(super) fn local_conns_of(&self, user: &str) -> Vec<(u32, u32)> {
        match parse_anon(user) {
            Some((s, i, g)) => {
                let anonymous = s as usize == self.id
                    && self.admission.grant(i as usize).is_none()
                    && self
                        .conns
                        .get(i as usize)
                        .is_some_and(|c| c.generation == g);
                if anonymous {
                    vec![(i, g)]
                } else {
                    Vec::new()
                }
            }
            None => self
                .hub
                .users
                .by_user
                .get(user)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// Queues `frame` on every open local connection of `user`; how many got it.
    fn direct_deliver(&mut self, user: &str, frame: Bytes) -> u64 {
        let bound = self.cfg.max_backpressure;
        let mut count = 0;
        let mut slow = Vec::new();
        for (i, g) in self.local_conns_of(user) {
            let idx = i as usize;
            let Some(c) = self.conns.get_mut(idx) else {
                continue;
            };
            if c.generation != g || c.phase != Phase::Open {
                continue;
            }
            self.counters.messages_out += 1;
            if c.queue.push_shared(frame.clone(), bound) == SendStatus::Dropped {
                slow.push(idx);
            } else {
                count += 1;
                self.mark_dirty(idx);
            }
        }
        for idx in slow {
            self.fail_slow(idx);
        }
        count
    }
}
