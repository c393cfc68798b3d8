//! The owner's side of a channel (see `hub.rs`): the one place its messages are numbered,
//! its history kept, and the shards with subscribers known. Every publish and subscribe for
//! the channel reaches this shard, in FIFO order from each shard, and leaves as shared bytes.

use std::sync::Arc;

use bytes::Bytes;

use serde_json::value::RawValue;

use crate::hub::history::{History, Recovery};
use crate::hub::wire;

use super::event_loop::Shard;
use super::hub::{ConnAddr, HubCmd, Publisher, Subscribed};

/// The owner's state for one channel.
pub(super) struct Owned {
    pub last_seq: u64,
    pub history: History,
    /// Bit i = shard i has (or is getting) subscribers.
    pub interested: u64,
    /// With the Redis bus: the relay's state (`hub_relay.rs`); `None` with the local bus.
    pub relay: Option<super::hub_relay::Relay>,
}

impl Shard {
    pub(super) fn owned_entry(&mut self, channel: &Arc<str>) -> &mut Owned {
        let (cap, ttl) = (
            self.cfg.history_size,
            self.cfg.history_ttl.as_millis() as u64,
        );
        let seed = &mut self.hub.epoch_seed;
        self.hub
            .owned
            .entry(Arc::clone(channel))
            .or_insert_with(|| {
                // A fresh epoch whenever the channel's state is (re)created, so a resume against
                // history that no longer exists is detected instead of silently matching.
                *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                let epoch = ((t ^ *seed).wrapping_mul(0xff51_afd7_ed55_8ccd) >> 32) as u32;
                Owned {
                    last_seq: 0,
                    history: History::new(epoch, cap, ttl),
                    interested: 0,
                    relay: None,
                }
            })
    }

    pub(super) fn own_publish(
        &mut self,
        channel: Arc<str>,
        data: &RawValue,
        from: Publisher,
        key: Option<Arc<str>>,
    ) {
        if let Some(bus) = &self.bus {
            let data = data.to_owned();
            let req = crate::bus::Req::Publish {
                channel,
                data,
                key,
                from,
            };
            bus.send(req);
            return;
        }
        let seq = self.owned_entry(&channel).last_seq + 1;
        let frame = wire::delivery_frame(&channel, seq, data);
        self.owner_deliver(&channel, seq, frame, key);
        match from {
            Publisher::Conn(to, id) => {
                self.hub_send(to.shard as usize, HubCmd::Published { to, id, seq })
            }
            // The caller may have given up waiting; nothing to undo then.
            Publisher::Caller(tx) => {
                let _ = tx.send(seq);
            }
        }
    }

    /// Records `frame` as the channel's message `seq` (the next one) in its history and
    /// sends it to every shard with subscribers.
    pub(super) fn owner_deliver(
        &mut self,
        channel: &Arc<str>,
        seq: u64,
        frame: Bytes,
        key: Option<Arc<str>>,
    ) {
        let now = self.now;
        let keep = self.cfg.history_size > 0;
        let o = self.owned_entry(channel);
        o.last_seq = seq;
        if keep {
            o.history.expire(now);
            o.history.push(seq, now, frame.clone());
        }
        let interested = o.interested;
        self.owner_send_all(channel, interested, frame, key);
    }

    /// Sends a frame to every shard in `interested`, as a delivery of `channel`.
    pub(super) fn owner_send_all(
        &mut self,
        channel: &Arc<str>,
        interested: u64,
        frame: Bytes,
        key: Option<Arc<str>>,
    ) {
        for shard in 0..self.shard_count() {
            if interested & (1u64 << shard) != 0 {
                self.hub_send(
                    shard,
                    HubCmd::Deliver {
                        channel: Arc::clone(channel),
                        frame: frame.clone(),
                        key: key.clone(),
                    },
                );
            }
        }
    }

    pub(super) fn own_subscribe(
        &mut self,
        channel: Arc<str>,
        from: ConnAddr,
        id: Option<u64>,
        since: Option<(Option<u32>, u64)>,
    ) {
        if self.bus.is_some() {
            return self.relay_subscribe(channel, from, id, since);
        }
        let now = self.now;
        let o = self.owned_entry(&channel);
        o.interested |= 1u64 << from.shard;
        o.history.expire(now);
        let (epoch, seq) = (o.history.epoch(), o.last_seq);
        let (recovered, replay) = match since {
            None => (None, Vec::new()),
            Some((None, _)) => (Some(false), Vec::new()),
            Some((Some(e), s)) => match o.history.since(e, s, seq, now) {
                Recovery::UpToDate => (Some(true), Vec::new()),
                Recovery::Replay(frames) => (Some(true), frames.cloned().collect()),
                Recovery::Gone => (Some(false), Vec::new()),
            },
        };
        let answer = Subscribed {
            channel,
            to: from,
            id,
            epoch,
            seq,
            recovered,
            replay,
        };
        self.hub_send(from.shard as usize, HubCmd::Subscribed(answer));
    }
}
