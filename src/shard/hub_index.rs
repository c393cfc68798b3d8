//! The shard's subscription index, by channel and by connection (`hub.rs` owns it): who is
//! subscribed to what on this shard, kept small because every subscribed connection has an
//! entry.

use std::sync::Arc;

use crate::config::SlowPolicy;

/// The channels of one connection, indexed by slab index in `HubState::by_conn`. The common
/// case — one channel — needs no allocation of its own: 24 bytes per slab slot in all.
#[derive(Default)]
pub(super) enum Subs {
    #[default]
    None,
    One(Arc<str>),
    Many(Vec<Arc<str>>),
}

impl Subs {
    pub(super) fn len(&self) -> usize {
        match self {
            Subs::None => 0,
            Subs::One(_) => 1,
            Subs::Many(v) => v.len(),
        }
    }

    pub(super) fn contains(&self, ch: &str) -> bool {
        match self {
            Subs::None => false,
            Subs::One(c) => &**c == ch,
            Subs::Many(v) => v.iter().any(|c| &**c == ch),
        }
    }

    pub(super) fn push(&mut self, ch: Arc<str>) {
        *self = match std::mem::take(self) {
            Subs::None => Subs::One(ch),
            Subs::One(first) => Subs::Many(vec![first, ch]),
            Subs::Many(mut v) => {
                v.push(ch);
                Subs::Many(v)
            }
        };
    }

    pub(super) fn remove(&mut self, ch: &str) -> Option<Arc<str>> {
        match self {
            Subs::One(c) if &**c == ch => match std::mem::take(self) {
                Subs::One(c) => Some(c),
                _ => None,
            },
            Subs::Many(v) => {
                let i = v.iter().position(|c| &**c == ch)?;
                let c = v.swap_remove(i);
                if v.is_empty() {
                    *self = Subs::None;
                }
                Some(c)
            }
            _ => None,
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        let (one, many) = match self {
            Subs::None => (None, &[][..]),
            Subs::One(c) => (Some(c), &[][..]),
            Subs::Many(v) => (None, &v[..]),
        };
        one.into_iter().chain(many)
    }

    pub(super) fn take_all(&mut self) -> Vec<Arc<str>> {
        match std::mem::take(self) {
            Subs::None => Vec::new(),
            Subs::One(c) => vec![c],
            Subs::Many(v) => v,
        }
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
