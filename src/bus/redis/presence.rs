//! Presence across nodes (the bus thread's side, docs/CLUSTER.md "Presence"): this node's
//! mirror of its own counts, their writes to the channel's presence hash, and lists summed
//! over the live nodes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{keys, shard_of, Link, Result, Worker};
use crate::bus::BusEvent;
use crate::hub::wire;
use crate::shard::{Asker, Command, HubCmd, Members, PresenceCmd};

/// Presence fields per pipeline: one `HSET` of a few thousand fields costs Redis far less
/// than as many commands.
pub(super) const PRESENCE_BATCH: usize = 4096;

/// One channel's writes in a batch: fields to set with their counts, fields to delete.
type ChannelWrites = (Vec<(String, u32)>, Vec<String>);

impl Worker {
    /// Writes the counts of up to [`PRESENCE_BATCH`] changed (channel, user) pairs, oldest
    /// first, in one pipeline: per channel one `HSET` of every positive count, one `HDEL` of
    /// every zero, one `PEXPIRE`. The count written is the mirror's at this moment, so a pair
    /// that changed many times since is written once. On an error nothing is put back: the
    /// whole mirror is written on reconnect.
    pub(super) async fn write_presence(&mut self, link: &mut Link) -> Result<()> {
        let n = self.dirty.len().min(PRESENCE_BATCH);
        let mut by_channel: HashMap<Arc<str>, ChannelWrites> = HashMap::new();
        let mut zeros = Vec::new();
        for (channel, user) in self.dirty.drain(..n) {
            self.dirty_set
                .remove(&(Arc::clone(&channel), Arc::clone(&user)));
            let count = self
                .mirror
                .get(&channel)
                .and_then(|users| users.get(&user))
                .copied()
                .unwrap_or(0);
            let field = keys::presence_field(&self.state.node_id, &user);
            let (sets, dels) = by_channel.entry(Arc::clone(&channel)).or_default();
            if count == 0 {
                dels.push(field);
                zeros.push((channel, user));
            } else {
                sets.push((field, count));
            }
        }
        let mut p = redis::pipe();
        for (channel, (sets, dels)) in &by_channel {
            presence_writes(&mut p, channel, sets, dels, self.key_ttl_ms);
        }
        p.query_async::<()>(&mut link.conn).await?;
        for (channel, user) in zeros {
            self.forget_zero(&channel, &user);
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

    /// After a (re)connect: this node's counts, all of them, and the deletions Redis missed,
    /// in pipelines of about [`PRESENCE_BATCH`] fields.
    pub(super) async fn rewrite_presence(&mut self, link: &mut Link) -> Result<()> {
        let node = self.state.node_id.clone();
        let mut gone: HashMap<&Arc<str>, Vec<String>> = HashMap::new();
        for (ch, user) in &self.gone {
            gone.entry(ch)
                .or_default()
                .push(keys::presence_field(&node, user));
        }
        let mut channels: Vec<&Arc<str>> = self.mirror.keys().chain(gone.keys().copied()).collect();
        channels.sort_unstable();
        channels.dedup();
        let mut pipe = redis::pipe();
        let mut fields = 0;
        for ch in channels {
            let mut sets = Vec::new();
            let mut dels = gone.remove(ch).unwrap_or_default();
            for (user, &count) in self.mirror.get(ch).into_iter().flatten() {
                let field = keys::presence_field(&node, user);
                if count == 0 {
                    dels.push(field);
                } else {
                    sets.push((field, count));
                }
            }
            fields += sets.len() + dels.len();
            presence_writes(&mut pipe, ch, &sets, &dels, self.key_ttl_ms);
            if fields >= PRESENCE_BATCH {
                pipe.query_async::<()>(&mut link.conn).await?;
                pipe = redis::pipe();
                fields = 0;
            }
        }
        if fields > 0 {
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
        let mut counts = self.others(link, channel, &live).await?;
        for (user, &n) in self.mirror.get(channel).into_iter().flatten() {
            if n > 0 {
                *counts
                    .entry(cluster_user(&self.state.node_id, user))
                    .or_default() += n;
            }
        }
        Ok(bounded(counts, self.cfg.max_presence_members))
    }

    /// Every watched channel's members on the other live nodes, to its owner (which turns
    /// the differences into join and leave events).
    pub(super) async fn poll_watched(&mut self, link: &mut Link) -> Result<()> {
        self.refresh_nodes(link).await?;
        let live: HashSet<String> = self.state.nodes().into_iter().map(|n| n.id).collect();
        let channels: Vec<Arc<str>> = self.watched.iter().cloned().collect();
        for channel in channels {
            let counts = self.others(link, &channel, &live).await?;
            let users = bounded(counts, self.cfg.max_presence_members)
                .members
                .into_iter()
                .map(|(user, _)| user)
                .collect();
            self.tell_owner(
                &channel,
                BusEvent::Others {
                    channel: Arc::clone(&channel),
                    users,
                },
            );
        }
        Ok(())
    }

    /// The channel's members on the live nodes other than this one, by cluster name; fields
    /// of dead nodes are deleted.
    async fn others(
        &mut self,
        link: &mut Link,
        channel: &str,
        live: &HashSet<String>,
    ) -> Result<HashMap<String, u32>> {
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
            if node == self.state.node_id {
                // Our own counts come from the mirror, which may be ahead of Redis.
                continue;
            }
            if !live.contains(node) {
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
        Ok(counts)
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

/// Queues on `p` the writes of one channel's presence fields: `sets` to their counts, `dels`
/// removed, and the hash's expiry renewed.
fn presence_writes(
    p: &mut redis::Pipeline,
    channel: &str,
    sets: &[(String, u32)],
    dels: &[String],
    ttl_ms: u64,
) {
    let key = keys::key(channel, "presence");
    if !sets.is_empty() {
        let hset = p.cmd("HSET").arg(&key);
        for (field, count) in sets {
            hset.arg(field).arg(*count);
        }
        hset.ignore();
    }
    if !dels.is_empty() {
        p.cmd("HDEL").arg(&key).arg(dels).ignore();
    }
    p.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
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
