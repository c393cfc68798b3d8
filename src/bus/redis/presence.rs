//! Presence across nodes (the bus thread's side, docs/CLUSTER.md "Presence"): this node's
//! mirror of its own counts, their writes to the channel's presence hash, and lists summed
//! over the live nodes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{keys, shard_of, Link, Result, Worker, BATCH};
use crate::bus::Req;
use crate::hub::wire;
use crate::shard::{Asker, Command, HubCmd, Members, PresenceCmd};

impl Worker {
    /// Writes the presence counts at the front of `waiting` (up to [`BATCH`]) in one pipeline.
    /// (In `waiting`, a presence request's `delta` is the user's new count on this node.)
    pub(super) async fn write_presence(&mut self, link: &mut Link) -> Result<()> {
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            match self.waiting.front() {
                Some(Req::Presence { .. }) => {}
                _ => break,
            }
            if let Some(Req::Presence {
                channel,
                user,
                delta,
            }) = self.waiting.pop_front()
            {
                batch.push((channel, user, delta.max(0) as u32));
            }
        }
        let mut p = redis::pipe();
        for (channel, user, count) in &batch {
            let key = keys::key(channel, "presence");
            let field = keys::presence_field(&self.state.node_id, user);
            if *count == 0 {
                p.cmd("HDEL").arg(&key).arg(field).ignore();
            } else {
                p.cmd("HSET").arg(&key).arg(field).arg(*count).ignore();
            }
            p.cmd("PEXPIRE").arg(&key).arg(self.key_ttl_ms).ignore();
        }
        if let Err(e) = p.query_async::<()>(&mut link.conn).await {
            // Not written: back to the front, in order, for the next connection.
            for (channel, user, count) in batch.into_iter().rev() {
                let delta = count as i32;
                self.waiting.push_front(Req::Presence {
                    channel,
                    user,
                    delta,
                });
            }
            return Err(e);
        }
        for (channel, user, count) in batch {
            if count == 0 {
                self.forget_zero(&channel, &user);
            }
        }
        Ok(())
    }

    pub(super) fn mirror_change(&mut self, channel: &Arc<str>, user: &Arc<str>, delta: i32) -> u32 {
        let users = self.mirror.entry(Arc::clone(channel)).or_default();
        let n = users.entry(Arc::clone(user)).or_insert(0);
        *n = n.saturating_add_signed(delta);
        *n
    }

    /// Drops a zero count from the mirror once Redis knows.
    pub(super) fn forget_zero(&mut self, channel: &Arc<str>, user: &Arc<str>) {
        if let Some(users) = self.mirror.get_mut(channel) {
            if users.get(user) == Some(&0) {
                users.remove(user);
            }
            if users.is_empty() {
                self.mirror.remove(channel);
            }
        }
    }

    /// After a (re)connect: this node's counts, all of them, and the deletions Redis missed.
    pub(super) async fn rewrite_presence(&mut self, link: &mut Link) -> Result<()> {
        let node = self.state.node_id.clone();
        let mut pipe = redis::pipe();
        let mut n = 0;
        for (ch, users) in &self.mirror {
            let key = keys::key(ch, "presence");
            for (user, &count) in users {
                let field = keys::presence_field(&node, user);
                if count == 0 {
                    pipe.cmd("HDEL").arg(&key).arg(field).ignore();
                } else {
                    pipe.cmd("HSET").arg(&key).arg(field).arg(count).ignore();
                }
                n += 1;
            }
            pipe.cmd("PEXPIRE").arg(&key).arg(self.key_ttl_ms).ignore();
        }
        for (ch, user) in &self.gone {
            let field = keys::presence_field(&node, user);
            pipe.cmd("HDEL")
                .arg(keys::key(ch, "presence"))
                .arg(field)
                .ignore();
            n += 1;
        }
        if n > 0 {
            pipe.query_async::<()>(&mut link.conn).await?;
        }
        self.gone.clear();
        for users in self.mirror.values_mut() {
            users.retain(|_, c| *c > 0);
        }
        self.mirror.retain(|_, u| !u.is_empty());
        Ok(())
    }

    /// The channel's members over every live node (fields of dead nodes are deleted).
    pub(super) async fn cluster_members(
        &mut self,
        link: &mut Link,
        channel: &str,
    ) -> Result<Members> {
        self.refresh_nodes(link).await?;
        let live: HashSet<String> = self.state.nodes().into_iter().map(|n| n.id).collect();
        let key = keys::key(channel, "presence");
        let fields: Vec<(String, u32)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut link.conn)
            .await?;
        let mut counts: HashMap<String, u32> = HashMap::new();
        let mut dead = Vec::new();
        for (field, n) in fields {
            let Some((node, user)) = keys::split_field(&field) else {
                continue;
            };
            if node != self.state.node_id && !live.contains(node) {
                dead.push(field.clone());
                continue;
            }
            *counts.entry(cluster_user(node, user)).or_default() += n;
        }
        if !dead.is_empty() {
            redis::cmd("HDEL")
                .arg(&key)
                .arg(&dead)
                .query_async::<()>(&mut link.conn)
                .await?;
        }
        Ok(bounded(counts, self.cfg.max_presence_members))
    }

    /// This node's own members of `channel` (when Redis is away).
    pub(super) fn local_members(&self, channel: &str) -> Members {
        let counts = self.mirror.get(channel).map(|users| {
            users
                .iter()
                .filter(|(_, &c)| c > 0)
                .map(|(u, &c)| (cluster_user(&self.state.node_id, u), c))
                .collect()
        });
        bounded(counts.unwrap_or_default(), self.cfg.max_presence_members)
    }

    pub(super) fn answer_list(&self, channel: &str, to: Asker, list: Members) {
        match to {
            Asker::Conn(addr, id) => {
                let mut reply = Vec::with_capacity(64 + list.members.len() * 32);
                let members = list.members.iter().map(|(u, n)| (&**u, *n));
                wire::reply_presence(&mut reply, id, channel, members, list.unlisted);
                let listed = PresenceCmd::Listed {
                    channel: Arc::from(channel),
                    to: addr,
                    reply,
                };
                self.shards[shard_of(&addr)].send(Command::Hub(HubCmd::Presence(listed)));
            }
            Asker::Caller(tx) => {
                let _ = tx.send(list);
            }
        }
    }
}

/// A presence user id as the cluster lists it: anonymous ids are per node, so they carry it.
fn cluster_user(node: &str, user: &str) -> String {
    if user.starts_with(crate::hub::presence::ANON_PREFIX) {
        format!("{user}@{node}")
    } else {
        user.to_owned()
    }
}

/// Members sorted by user id, at most `max` listed; the rest counted as unlisted.
fn bounded(counts: HashMap<String, u32>, max: usize) -> Members {
    let mut all: Vec<(Arc<str>, u32)> = counts
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|(u, n)| (Arc::from(u), n))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let unlisted = all.iter().skip(max).map(|(_, n)| u64::from(*n)).sum();
    all.truncate(max);
    Members {
        members: all,
        unlisted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn members_are_sorted_bounded_and_anonymous_ids_carry_their_node() {
        let mut counts = HashMap::new();
        counts.insert("carol".to_string(), 1);
        counts.insert("alice".to_string(), 2);
        counts.insert("bob".to_string(), 3);
        counts.insert("zero".to_string(), 0);
        let m = bounded(counts, 2);
        let names: Vec<&str> = m.members.iter().map(|(u, _)| &**u).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(m.unlisted, 1);
        assert_eq!(cluster_user("n1", "anon:0.1.2"), "anon:0.1.2@n1");
        assert_eq!(cluster_user("n1", "alice"), "alice");
    }
}
