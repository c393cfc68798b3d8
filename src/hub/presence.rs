//! Who is in a channel: each user id with the number of that user's connections subscribed to
//! it. One [`Presence`] per channel lives on the channel's owner shard, which is the single
//! point where every shard's joins and leaves meet (`shard/hub_presence.rs`); this file is the
//! pure counting, so its rules are tested without shards.
//!
//! # Bounded
//!
//! A channel lists at most `max` users (the `max_presence_members` setting). A connection of a
//! user who is not listed while the list is full is *unlisted*: it is counted, but the user
//! does not appear and no join or leave is reported for it. Once a connection is unlisted, new
//! users stay unlisted until every unlisted connection has left, even if listed users leave in
//! the meantime. That one rule keeps each user wholly listed or wholly unlisted, so a listed
//! user's count is always exact and a leave is never reported for a user who still has a
//! connection in the channel.
//!
//! # User ids
//!
//! A connection with a token is its `sub`. An anonymous connection has no user of its own and
//! is given `anon:<shard>.<slab index>.<generation>` ([`anon_id`]): unique among the server's
//! connections, never reused while the shard runs (the generation grows with every accept),
//! and enough for the shard to find the connection again ([`parse_anon`]). Tokens whose `sub`
//! starts with [`ANON_PREFIX`] are refused, so no user can pass for an anonymous connection.

use std::collections::HashMap;
use std::sync::Arc;

/// The prefix of every anonymous connection's user id.
pub const ANON_PREFIX: &str = "anon:";

/// The user id of an anonymous connection: `anon:<shard>.<idx>.<gen>`.
pub fn anon_id(shard: u32, idx: u32, gen: u32) -> String {
    format!("{ANON_PREFIX}{shard}.{idx}.{gen}")
}

/// Reads an [`anon_id`] back into (shard, slab index, generation); `None` for anything else,
/// including numbers with a sign, leading zeros or more than `u32` can hold.
pub fn parse_anon(user: &str) -> Option<(u32, u32, u32)> {
    let rest = user.strip_prefix(ANON_PREFIX)?;
    let mut parts = rest.split('.');
    let mut next = || -> Option<u32> {
        let p = parts.next()?;
        let canonical = p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0'));
        if !canonical || p.is_empty() {
            return None;
        }
        p.parse().ok()
    };
    let ids = (next()?, next()?, next()?);
    parts.next().is_none().then_some(ids)
}

/// One channel's members, as its owner counts them.
///
/// Anonymous members are kept as the three numbers of their [`anon_id`] rather than as the
/// string: a channel of anonymous subscribers would otherwise hold one string allocation and
/// a 24-byte entry per listed member (about 60 bytes per subscriber in all), where this
/// holds a 16-byte entry. Their ids are spelled out only when the list is read.
#[derive(Debug, Default)]
pub struct Presence {
    /// Listed users with a user id of their own and their subscribed connections (each count
    /// at least 1).
    members: HashMap<Arc<str>, u32>,
    /// Listed anonymous users, by [`parse_anon`]'s numbers, and their connections.
    anon: HashMap<(u32, u32, u32), u32>,
    /// Connections of users not listed because the list was full.
    unlisted: u64,
}

/// Where a user's count lives.
enum Slot<'a> {
    Named(&'a str),
    Anon((u32, u32, u32)),
}

fn slot(user: &str) -> Slot<'_> {
    match parse_anon(user) {
        Some(k) => Slot::Anon(k),
        None => Slot::Named(user),
    }
}

impl Presence {
    /// A connection of `user` joined. True when it is the user's first listed connection (a
    /// join to report). With `max` users already listed (or while any connection is unlisted),
    /// a new user's connection is counted as unlisted instead.
    pub fn join(&mut self, user: &Arc<str>, max: usize) -> bool {
        let key = slot(user);
        let listed = match key {
            Slot::Named(u) => self.members.get_mut(u),
            Slot::Anon(k) => self.anon.get_mut(&k),
        };
        if let Some(n) = listed {
            *n = n.saturating_add(1);
            return false;
        }
        if self.unlisted > 0 || self.len() >= max {
            self.unlisted += 1;
            return false;
        }
        match key {
            Slot::Named(_) => self.members.insert(Arc::clone(user), 1),
            Slot::Anon(k) => self.anon.insert(k, 1),
        };
        true
    }

    /// A connection of `user` left. True when it was the user's last listed connection (a
    /// leave to report). A leave the list never saw a join for is ignored.
    pub fn leave(&mut self, user: &str) -> bool {
        let key = slot(user);
        let listed = match key {
            Slot::Named(u) => self.members.get_mut(u),
            Slot::Anon(k) => self.anon.get_mut(&k),
        };
        match listed {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                match key {
                    Slot::Named(u) => self.members.remove(u),
                    Slot::Anon(k) => self.anon.remove(&k),
                };
                true
            }
            None => {
                self.unlisted = self.unlisted.saturating_sub(1);
                false
            }
        }
    }

    /// No connection is counted, listed or not.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.unlisted == 0
    }

    /// Listed users.
    pub fn len(&self) -> usize {
        self.members.len() + self.anon.len()
    }

    /// Connections counted but not listed; non-zero means the list is truncated.
    pub fn unlisted(&self) -> u64 {
        self.unlisted
    }

    /// The connections of `user` counted in the list (0 if not listed).
    pub fn connections(&self, user: &str) -> u32 {
        match slot(user) {
            Slot::Named(u) => self.members.get(u),
            Slot::Anon(k) => self.anon.get(&k),
        }
        .copied()
        .unwrap_or(0)
    }

    /// The listed users and their connection counts, by user id.
    pub fn sorted(&self) -> Vec<(Arc<str>, u32)> {
        let named = self.members.iter().map(|(u, &n)| (Arc::clone(u), n));
        let anon = self
            .anon
            .iter()
            .map(|(&(s, i, g), &n)| (Arc::from(anon_id(s, i, g)), n));
        let mut v: Vec<(Arc<str>, u32)> = named.chain(anon).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn user(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn first_join_and_last_leave_are_reported() {
        let mut p = Presence::default();
        let alice = user("alice");
        assert!(p.join(&alice, 10));
        assert!(!p.join(&alice, 10));
        assert!(p.join(&user("bob"), 10));
        assert_eq!(p.sorted(), [(user("alice"), 2), (user("bob"), 1)]);
        assert!(!p.leave("alice"));
        assert_eq!(p.connections("alice"), 1);
        assert!(p.leave("alice"));
        assert!(p.leave("bob"));
        assert!(p.is_empty());
        // A leave without a join changes nothing.
        assert!(!p.leave("carol"));
        assert!(p.is_empty());
    }

    #[test]
    fn beyond_the_limit_users_are_counted_but_not_listed() {
        let mut p = Presence::default();
        assert!(p.join(&user("a"), 2));
        assert!(p.join(&user("b"), 2));
        assert!(!p.join(&user("c"), 2));
        assert_eq!((p.len(), p.unlisted()), (2, 1));
        // A listed user's further connections still count exactly.
        assert!(!p.join(&user("a"), 2));
        assert_eq!(p.connections("a"), 2);
        // Room frees up, but a new user stays unlisted while anyone is unlisted: "c" must not
        // become listed with only some of its connections.
        assert!(p.leave("b"));
        assert!(!p.join(&user("d"), 2));
        assert!(!p.join(&user("c"), 2));
        assert_eq!((p.len(), p.unlisted()), (1, 3));
        for _ in 0..3 {
            assert!(!p.leave("c"));
        }
        assert_eq!(p.unlisted(), 0);
        assert!(p.join(&user("e"), 2));
        assert_eq!(p.sorted(), [(user("a"), 2), (user("e"), 1)]);
    }

    #[test]
    fn zero_members_keeps_counts_only() {
        let mut p = Presence::default();
        assert!(!p.join(&user("a"), 0));
        assert_eq!((p.len(), p.unlisted()), (0, 1));
        assert!(!p.leave("a"));
        assert!(p.is_empty());
    }

    #[test]
    fn anonymous_ids_round_trip_and_nothing_else_parses() {
        for (s, i, g) in [(0, 0, 0), (3, 17, 99), (u32::MAX, u32::MAX, u32::MAX)] {
            assert_eq!(parse_anon(&anon_id(s, i, g)), Some((s, i, g)));
        }
        for bad in [
            "anon:",
            "anon:1.2",
            "anon:1.2.3.4",
            "anon:1..3",
            "anon:+1.2.3",
            "anon:01.2.3",
            "anon:1.2.4294967296",
            "anon:1.2.3 ",
            "Anon:1.2.3",
            "alice",
        ] {
            assert_eq!(parse_anon(bad), None, "{bad}");
        }
    }

    proptest! {
    /// Any interleaving of joins and leaves (leaves only of connections that joined) keeps
    /// the counts exact: every listed count is the user's live connections, users are never
    /// partly listed, a report is made exactly when a user appears or disappears, and all
    /// counts return to zero. Half the users are anonymous (kept apart, by their numbers),
    /// and the list read back names exactly the listed users of both kinds.
    #[test]
    fn counts_match_a_model(ops in proptest::collection::vec((0u8..6, any::<bool>()), 0..200),
                            max in 0usize..4) {
        let mut p = Presence::default();
        let mut live: HashMap<String, u32> = HashMap::new();
        let mut listed_before: std::collections::HashSet<String> = Default::default();
        for (u, join) in ops {
            let name = if u % 2 == 0 { format!("u{u}") } else { anon_id(0, u32::from(u), 7) };
            if join {
                *live.entry(name.clone()).or_default() += 1;
                let reported = p.join(&Arc::from(name.as_str()), max);
                prop_assert_eq!(reported, !listed_before.contains(&name) && p.connections(&name) == 1);
            } else if live.get(&name).is_some_and(|&n| n > 0) {
                *live.get_mut(&name).unwrap() -= 1;
                let was = p.connections(&name);
                let reported = p.leave(&name);
                prop_assert_eq!(reported, was == 1);
            }
            prop_assert!(p.len() <= max);
            for (name, &n) in &live {
                let listed = p.connections(name);
                prop_assert!(listed == 0 || listed == n, "{} partly listed", name);
            }
            let listed: u64 = live.keys().map(|n| u64::from(p.connections(n))).sum();
            let total: u64 = live.values().map(|&n| u64::from(n)).sum();
            prop_assert_eq!(listed + p.unlisted(), total);
            listed_before = live.keys().filter(|n| p.connections(n) > 0).cloned().collect();
            let mut want: Vec<(String, u32)> =
                listed_before.iter().map(|n| (n.clone(), p.connections(n))).collect();
            want.sort_unstable();
            let got: Vec<(String, u32)> =
                p.sorted().into_iter().map(|(u, n)| (u.to_string(), n)).collect();
            prop_assert_eq!(got, want);
        }
        for (name, n) in live {
            for _ in 0..n {
                p.leave(&name);
            }
        }
        prop_assert!(p.is_empty());
    }
    }
}
