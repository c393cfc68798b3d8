//! Direct messages across nodes (the bus thread's side, docs/CLUSTER.md "Direct messages").
//!
//! The sender's node publishes the frame on the user's topic; `PUBLISH` answers how many
//! nodes listen (have a connection of the user). Each of them, the sender's own included,
//! runs a *round*: every local shard queues the frame and reports its count; the round's total
//! goes back to the sender's node on its reply topic. The sender is answered once every node
//! has reported, or after [`DIRECT_WAIT`] with what came.
//!
//! A disconnect of the user takes the same path with an empty frame (a real frame is never
//! empty: it has at least its two header bytes); each node closes the user's connections and
//! reports how many.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::{keys, Link, Result, Worker, DIRECT_WAIT};
use crate::bus::ToUser;
use crate::shard::{Command, HubCmd, Tally, UserCmd};

/// A direct message sent from this node, waiting for the counts of the nodes that have the
/// user.
pub(super) struct Outstanding {
    tally: Tally,
    waiting: usize,
    sum: u64,
    deadline: tokio::time::Instant,
}

/// Where a round of local delivery (every shard of this node) reports its total.
pub(super) enum RoundFor {
    /// A direct message sent from another node: its reply topic and token.
    Remote(String, u64),
    /// One sent from this node (its `directs` token).
    Local(u64),
    /// Straight to the sender (Redis away: this node only).
    Sender(Tally),
}

/// One round of local delivery.
pub(super) struct Round {
    for_: RoundFor,
    waiting: usize,
    sum: u64,
}

impl Worker {
    /// A direct message from this node: to every node with the user (`PUBLISH` says how
    /// many), each of which answers with its count.
    pub(super) async fn send_direct(
        &mut self,
        link: &mut Link,
        user: Arc<str>,
        what: ToUser,
        tally: Tally,
    ) -> Result<()> {
        self.next_token += 1;
        let token = self.next_token;
        let mut payload = format!("{} {token} ", self.state.node_id).into_bytes();
        if let ToUser::Frame(frame) = &what {
            payload.extend_from_slice(frame);
        }
        let sent: Result<usize> = redis::cmd("PUBLISH")
            .arg(keys::user_topic(&user))
            .arg(payload)
            .query_async(&mut link.conn)
            .await;
        match sent {
            Ok(0) => self.answer(tally, 0),
            Ok(nodes) => {
                let deadline = tokio::time::Instant::now() + DIRECT_WAIT;
                let o = Outstanding {
                    tally,
                    waiting: nodes,
                    sum: 0,
                    deadline,
                };
                self.directs.insert(token, o);
            }
            Err(e) => {
                // Redis went away under it: this node's connections still get it.
                self.local_round(&user, what, RoundFor::Sender(tally));
                return Err(e);
            }
        }
        Ok(())
    }

    /// `<node> <token> <frame>` on a user's topic: deliver here (or disconnect, for an empty
    /// frame), then report the count.
    pub(super) fn on_direct(&mut self, user: &str, payload: &[u8]) {
        let parsed = keys::split_word(payload).and_then(|(node, rest)| {
            let (token, frame) = keys::split_word(rest)?;
            Some((node.to_owned(), token.parse::<u64>().ok()?, frame))
        });
        let Some((node, token, frame)) = parsed else {
            self.state
                .counters
                .malformed
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let what = if frame.is_empty() {
            ToUser::Disconnect
        } else {
            ToUser::Frame(Bytes::copy_from_slice(frame))
        };
        let for_ = if node == self.state.node_id {
            RoundFor::Local(token)
        } else {
            RoundFor::Remote(node, token)
        };
        self.local_round(&Arc::from(user), what, for_);
    }

    /// `<token> <count>` on our reply topic: one node's count for our direct message.
    pub(super) fn on_reply(&mut self, payload: &[u8]) {
        let parsed = keys::split_word(payload).and_then(|(token, count)| {
            let count = std::str::from_utf8(count).ok()?.parse::<u64>().ok()?;
            Some((token.parse::<u64>().ok()?, count))
        });
        match parsed {
            Some((token, count)) => self.direct_count(token, count),
            None => {
                self.state
                    .counters
                    .malformed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Asks every shard of this node to do `what` to `user`'s connections.
    pub(super) fn local_round(&mut self, user: &Arc<str>, what: ToUser, for_: RoundFor) {
        self.next_token += 1;
        let token = self.next_token;
        let mut asked = 0;
        for h in &self.shards {
            let (user, tally) = (Arc::clone(user), Tally::Bus { token });
            let cmd = match &what {
                ToUser::Frame(frame) => UserCmd::Direct {
                    user,
                    frame: frame.clone(),
                    tally,
                },
                ToUser::Disconnect => UserCmd::Disconnect { user, tally },
            };
            if h.send(Command::Hub(HubCmd::User(cmd))) {
                asked += 1;
            }
        }
        let round = Round {
            for_,
            waiting: asked,
            sum: 0,
        };
        if asked == 0 {
            return self.round_done(round);
        }
        self.rounds.insert(token, round);
    }

    pub(super) fn round_count(&mut self, token: u64, count: u64) {
        let Some(r) = self.rounds.get_mut(&token) else {
            return;
        };
        r.sum += count;
        r.waiting -= 1;
        if r.waiting == 0 {
            if let Some(r) = self.rounds.remove(&token) {
                self.round_done(r);
            }
        }
    }

    pub(super) fn round_done(&mut self, r: Round) {
        match r.for_ {
            RoundFor::Remote(node, token) => self.replies.push_back((node, token, r.sum)),
            RoundFor::Local(token) => self.direct_count(token, r.sum),
            RoundFor::Sender(tally) => self.answer(tally, r.sum),
        }
    }

    /// One node's count for a direct message from this node.
    pub(super) fn direct_count(&mut self, token: u64, count: u64) {
        let Some(o) = self.directs.get_mut(&token) else {
            return;
        };
        o.sum += count;
        o.waiting = o.waiting.saturating_sub(1);
        if o.waiting == 0 {
            if let Some(o) = self.directs.remove(&token) {
                self.answer(o.tally, o.sum);
            }
        }
    }

    /// Answers direct messages whose nodes did not all answer in time, with what came.
    pub(super) fn expire_directs(&mut self) {
        let now = tokio::time::Instant::now();
        let late: Vec<u64> = self
            .directs
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for t in late {
            if let Some(o) = self.directs.remove(&t) {
                self.answer(o.tally, o.sum);
            }
        }
    }

    pub(super) fn answer(&self, tally: Tally, count: u64) {
        match tally {
            Tally::Shard { shard, token } => {
                let cmd = UserCmd::Delivered { token, count };
                if let Some(h) = self.shards.get(shard as usize) {
                    h.send(Command::Hub(HubCmd::User(cmd)));
                }
            }
            Tally::Caller(tx) => {
                let _ = tx.send(count);
            }
            Tally::Bus { .. } => {}
        }
    }

    /// Answers every direct message still waiting, with the counts so far.
    pub(super) fn answer_all_directs(&mut self) {
        for (_, o) in std::mem::take(&mut self.directs) {
            self.answer(o.tally, o.sum);
        }
    }
}
