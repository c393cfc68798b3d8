//! The shard's subscription index, by channel and by connection (`hub.rs` owns it): who is
//! subscribed to what on this shard, kept small because every subscribed connection has an
//! entry.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::SlowPolicy;

/// The channels of each local connection, by slab index (`HubState::by_conn`). Every slab
/// slot has an entry, so the common case, one channel, costs one 16-byte slot and nothing
/// else: the first channel lives in the slot, any further ones in a side table keyed by the
/// slab index (connections with several channels are few).
#[derive(Default)]
pub(super) struct ConnChannels {
    first: Vec<Option<Arc<str>>>,
    rest: HashMap<usize, Vec<Arc<str>>>,
}

impl ConnChannels {
    pub(super) fn len(&self, idx: usize) -> usize {
        match self.first.get(idx) {
            Some(Some(_)) => 1 + self.rest.get(&idx).map_or(0, Vec::len),
            _ => 0,
        }
    }

    /// Whether connection `idx` is on more than one channel (one hash lookup, and none at
    /// all while no connection is).
    pub(super) fn several(&self, idx: usize) -> bool {
        !self.rest.is_empty() && self.rest.contains_key(&idx)
    }

    pub(super) fn contains(&self, idx: usize, ch: &str) -> bool {
        self.iter(idx).any(|c| &**c == ch)
    }

    pub(super) fn push(&mut self, idx: usize, ch: Arc<str>) {
        if self.first.len() <= idx {
            self.first.resize_with(idx + 1, || None);
        }
        match &self.first[idx] {
            None => self.first[idx] = Some(ch),
            Some(_) => self.rest.entry(idx).or_default().push(ch),
        }
    }

    /// Removes `ch` from connection `idx`'s channels; the channel if it was one of them.
    pub(super) fn remove(&mut self, idx: usize, ch: &str) -> Option<Arc<str>> {
        let slot = self.first.get_mut(idx)?;
        if slot.as_deref() == Some(ch) {
            let removed = slot.take();
            // Keep the first slot filled while the connection has channels.
            if let Some(v) = self.rest.get_mut(&idx) {
                *slot = v.pop();
                if v.is_empty() {
                    self.rest.remove(&idx);
                }
            }
            return removed;
        }
        let v = self.rest.get_mut(&idx)?;
        let i = v.iter().position(|c| &**c == ch)?;
        let removed = v.swap_remove(i);
        if v.is_empty() {
            self.rest.remove(&idx);
        }
        Some(removed)
    }

    pub(super) fn iter(&self, idx: usize) -> impl Iterator<Item = &Arc<str>> {
        let first = self.first.get(idx).and_then(Option::as_ref);
        let rest = self.rest.get(&idx).map_or(&[][..], Vec::as_slice);
        first.into_iter().chain(rest)
    }

    /// Empties connection `idx`'s channels, returning them.
    pub(super) fn take_all(&mut self, idx: usize) -> Vec<Arc<str>> {
        let Some(first) = self.first.get_mut(idx).and_then(Option::take) else {
            return Vec::new();
        };
        let mut all = self.rest.remove(&idx).unwrap_or_default();
        all.push(first);
        all
    }
}

/// A channel's local subscribers.
#[derive(Default)]
pub(super) struct Local {
    /// Live subscribers (slab index, generation), in the order the sweep writes them.
    pub(super) live: Vec<(u32, u32)>,
    /// Waiting for the owner's answer.
    pub(super) pending: Vec<(u32, u32)>,
    /// The channel's deliveries and how far each block of `live` has been written.
    pub(super) sweep: super::sweep::Sweep,
    /// What this channel does with subscribers over their bound (resolved once, here).
    pub(super) policy: SlowPolicy,
    /// The channel's epoch, from the owner's last subscribe answer (it cannot change while
    /// this shard has subscribers: the owner keeps the channel).
    pub(super) epoch: u32,
    /// The `seq` every live subscriber has been given up to once the sweep is complete: the
    /// last delivery committed, or the last subscribe answer's (`hub_position.rs`).
    pub(super) seq: u64,
}

impl Local {
    pub(super) fn is_empty(&self) -> bool {
        self.live.is_empty() && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain list per connection: every operation, in any order, on a few
    /// connections and channels, agrees (as sets; order is not part of the contract).
    #[test]
    fn conn_channels_match_a_list_per_connection() {
        let names: Vec<Arc<str>> = ["a", "b", "c", "d"].iter().map(|&n| Arc::from(n)).collect();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n) as usize
        };
        let mut c = ConnChannels::default();
        let mut model: Vec<Vec<Arc<str>>> = vec![Vec::new(); 5];
        for _ in 0..5_000 {
            let idx = next(5);
            let ch = &names[next(4)];
            match next(4) {
                0 | 1 if !model[idx].contains(ch) => {
                    c.push(idx, Arc::clone(ch));
                    model[idx].push(Arc::clone(ch));
                }
                2 => {
                    let got = c.remove(idx, ch);
                    let pos = model[idx].iter().position(|m| m == ch);
                    let want = pos.map(|i| model[idx].remove(i));
                    assert_eq!(got, want);
                }
                3 if next(8) == 0 => {
                    let mut got = c.take_all(idx);
                    got.sort_unstable();
                    let mut want = std::mem::take(&mut model[idx]);
                    want.sort_unstable();
                    assert_eq!(got, want);
                }
                _ => {}
            }
            for (i, m) in model.iter().enumerate() {
                assert_eq!(c.len(i), m.len());
                let mut got: Vec<_> = c.iter(i).cloned().collect();
                got.sort_unstable();
                let mut want = m.clone();
                want.sort_unstable();
                assert_eq!(got, want);
                for n in &names {
                    assert_eq!(c.contains(i, n), m.contains(n));
                }
            }
        }
        assert_eq!(c.len(99), 0);
        assert!(c.remove(99, "a").is_none());
        assert_eq!(std::mem::size_of::<Option<Arc<str>>>(), 16);
    }
}
