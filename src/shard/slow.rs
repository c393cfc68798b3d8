//! Slow subscribers on channels that keep them (`--channel-policy`, docs/PROTOCOL.md): what
//! becomes of a delivery that a subscriber over its queue bound could not take.
//!
//! The fan-out (`hub.rs`, `flush_channel`) is unchanged for a subscriber under its bound: the
//! policy is looked at only when the queue refuses a delivery, and the channel's policy was
//! resolved when its first local subscriber arrived. A refused delivery on a `disconnect`
//! channel closes the subscriber (1008) as before; on a `drop` channel it is counted and
//! forgotten; on a `conflate` channel each keyed delivery goes into the shard's conflation
//! table (`hub/conflate.rs`), replacing the held one of the same key, and the connection is
//! flagged [`flags::HELD`]. While the flag is set, its deliveries of conflating channels go to
//! the table too (even once its queue is under the bound), so nothing overtakes what is held. Each time the connection's queue is written and is
//! back under its bound, the held deliveries are queued, oldest first, and written. For an
//! event stream a held delivery becomes its event when it is released: an encoding per
//! recipient, but only on this path, for subscribers that fell behind.
//!
//! `hold` parses the pass's joined frame buffer back into one slice per delivery, on this
//! path only, so a conflating channel costs nothing more than any other while its
//! subscribers keep up.

use std::sync::Arc;

use bytes::Bytes;

use crate::config::SlowPolicy;
use crate::hub::conflate::Put;
use crate::proto::frame::FrameHeader;

use super::conn::{flags, Phase};
use super::event_loop::{io_reason, write_queue, Shard};

impl Shard {
    /// The deliveries of `channel` this pass (`msgs` frames joined in `frames`, with the keys
    /// of those that have one) that the connections in `over` did not take.
    pub(super) fn hold(
        &mut self,
        channel: &Arc<str>,
        policy: SlowPolicy,
        msgs: u64,
        frames: &Bytes,
        keys: &[(usize, Arc<str>)],
        over: Vec<usize>,
    ) {
        self.note_missed(channel, frames, &over);
        if policy != SlowPolicy::Conflate {
            self.counters.deliveries_dropped += msgs * over.len() as u64;
            return;
        }
        // Each delivery on its own, as slices of the shared buffer (no copy).
        let parts = split_frames(frames);
        let bound = self.cfg.max_backpressure;
        for idx in over {
            if !self
                .conns
                .get(idx)
                .is_some_and(|c| matches!(c.phase, Phase::Open | Phase::Stream))
            {
                continue;
            }
            // `keys` is in frame order: walk both together.
            let mut keys = keys.iter().peekable();
            for (i, frame) in parts.iter().enumerate() {
                let key = keys.next_if(|(at, _)| *at == i).map(|(_, k)| k);
                let put = match key {
                    Some(k) => self.held.put(idx, channel, k, frame.clone(), bound),
                    None => Put::Refused,
                };
                match put {
                    Put::Added => {}
                    Put::Replaced => self.counters.deliveries_conflated += 1,
                    Put::Refused => self.counters.deliveries_dropped += 1,
                }
            }
            if self.held.holds(idx) {
                if let Some(c) = self.conns.get_mut(idx) {
                    c.flags |= flags::HELD;
                }
                // Its queue may be under the bound by the end of the pass.
                self.mark_dirty(idx);
            }
        }
    }

    /// A connection left `channel`: what was held for it there is not owed any more.
    pub(super) fn unhold(&mut self, idx: usize, channel: &str) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if c.has(flags::HELD) {
            self.held.forget_channel(idx, channel);
            if !self.held.holds(idx) {
                c.flags &= !flags::HELD;
            }
        }
    }

    /// After a write: while the queue is under its bound, queue what is held and write it.
    /// Stops when nothing is held any more or the socket is full again (its next writable
    /// event brings us back here).
    pub(super) fn release_held(&mut self, idx: usize) {
        let bound = self.cfg.max_backpressure;
        loop {
            let Some(c) = self.conns.get_mut(idx) else {
                return;
            };
            if !matches!(c.phase, Phase::Open | Phase::Stream) {
                self.held.forget(idx);
                c.flags &= !flags::HELD;
                return;
            }
            if c.queue.len() > bound {
                return;
            }
            while c.queue.len() <= bound {
                let Some((channel, frame)) = self.held.pop(idx) else {
                    break;
                };
                let frame = match c.phase {
                    Phase::Stream => self.sse.events(&channel, &frame),
                    _ => {
                        self.hub.gaps.released(idx, &channel, &frame);
                        frame
                    }
                };
                self.counters.messages_out += 1;
                c.queue.push_shared(frame, usize::MAX);
            }
            let done = !self.held.holds(idx);
            if done {
                c.flags &= !flags::HELD;
            }
            if let Err(e) = write_queue(c, &mut self.pool, &mut self.counters) {
                return self.remove(idx, io_reason(&e));
            }
            if done {
                return;
            }
        }
    }
}

/// The frames joined back to back in `buf` (the shard's own delivery frames), each a slice of
/// it. Stops at anything that is not a whole frame.
fn split_frames(buf: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(Some((h, n))) = FrameHeader::parse(&buf[at..]) {
        let end = usize::try_from(h.payload_len)
            .ok()
            .and_then(|len| (at + n).checked_add(len))
            .filter(|&end| end <= buf.len());
        let Some(end) = end else {
            break;
        };
        out.push(buf.slice(at..end));
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::split_frames;
    use bytes::Bytes;

    #[test]
    fn joined_frames_split_back_into_slices() {
        let mut joined = Vec::new();
        for payload in [&b"a"[..], &[7u8; 300][..], b""] {
            crate::proto::frame::encode_frame_into(
                &mut joined,
                crate::proto::OpCode::Text,
                payload,
                None,
            );
        }
        let buf = Bytes::from(joined);
        let parts = split_frames(&buf);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.iter().map(Bytes::len).sum::<usize>(), buf.len());
        assert_eq!(&parts[0][..], b"\x81\x01a");
        assert_eq!(split_frames(&buf.slice(..buf.len() - 1)).len(), 2);
        assert_eq!(split_frames(&buf.slice(..4)).len(), 1);
    }
}
