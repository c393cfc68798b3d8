//! Broadcast delivery as a continuous sweep over the shard's connections (`--app broadcast`).
//!
//! Writing one small message to each of 10,000 loopback sockets takes ~50 ms of a core, and
//! every `write` costs about the same whatever it carries, so messages are batched per socket.
//! Delivering a pass's whole batch to every connection before reading again makes a message
//! that arrives during such a pass wait for the pass to end and then for its own pass to reach
//! each recipient: up to two pass lengths. The sweep instead keeps one stream of broadcast
//! bytes and visits the connections a block at a time, a bounded number per loop pass; each
//! block is written everything that arrived since the sweep last visited it, in one `write` per
//! connection. A message then waits at most one sweep (one revolution) for any recipient, and
//! new messages join the writes still ahead in the current revolution.
//!
//! **State per block, not per connection.** Slab indices are grouped in blocks of [`BLOCK`];
//! a block remembers the stream offset it has been given ([`Mark`]). All connections of a block
//! are written together, so they are always at the same offset. A connection that opens in a
//! block that is behind first brings that block up to date ([`Sweep::take_block`]), so a new
//! connection never receives a message committed before it opened.
//!
//! **Paced (`sweep_interval`).** Each block remembers when it was last written; with an
//! interval set, the sweep does not write a block again before that much time has passed,
//! and the shard's poll sleeps until then. Every write then carries what arrived during at
//! least the interval: fewer, larger writes, and a message waits at most the longer of the
//! interval and one revolution. On loopback the receiving side runs on the same box, and a
//! client that is handed 10,000 small writes per revolution as fast as one core can issue
//! them falls behind reading them; see the README's fan-out figures.
//!
//! **Bounded.** The stream keeps only the bytes some block still lacks (at most one
//! revolution); when that exceeds [`MAX_PENDING_BYTES`] the shard completes the revolution in
//! one pass, as a fully synchronous delivery would, which also pushes back on publishers.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::config::SlowPolicy;

use super::event_loop::{send_shared, Outcome, SendCtx, Shard};

/// Slab indices per block.
pub(super) const BLOCK: usize = 128;
/// Connections written per loop pass before the shard polls again (about 1-3 ms of writes).
pub(super) const CONNS_PER_PASS: usize = 512;
/// Pending stream bytes above which a revolution is completed at once.
pub(super) const MAX_PENDING_BYTES: u64 = 4 << 20;

/// How far into the stream a block has been written: a byte offset and a message count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Mark {
    off: u64,
    msgs: u64,
}

/// The broadcast stream and each block's position in it.
#[derive(Debug, Default)]
pub(super) struct Sweep {
    /// Stream bytes `[base, head)`.
    data: Bytes,
    base: u64,
    head: Mark,
    blocks: Vec<Mark>,
    /// The next block to visit.
    cursor: usize,
    /// Blocks whose mark is below `head`.
    behind: usize,
    /// When each block was last written (None: not yet).
    written: Vec<Option<Instant>>,
}

/// What a paced sweep does next.
#[derive(Debug)]
pub(super) enum Next {
    /// Write this block these bytes (carrying this many messages).
    Block(usize, Bytes, u64),
    /// The next block that is behind may be written from then on.
    Wait(Instant),
    /// Every block is up to date.
    Done,
}

impl Sweep {
    /// Appends frames carrying `msgs` messages to the stream. Blocks created later start
    /// after them; every existing block now has them to receive.
    pub fn commit(&mut self, frames: Vec<Bytes>, msgs: u64) {
        let len: usize = frames.iter().map(Bytes::len).sum();
        if len == 0 {
            return;
        }
        if self.blocks.is_empty() {
            // No connection was ever open here: nobody to give them to.
            self.base += len as u64;
            self.head.off += len as u64;
            self.head.msgs += msgs;
            return;
        }
        // Keep only what some block still lacks, then append.
        let low = self
            .blocks
            .iter()
            .map(|m| m.off)
            .min()
            .unwrap_or(self.head.off);
        let keep = self.data.slice((low - self.base) as usize..);
        self.base = low;
        self.data = if keep.is_empty() && frames.len() == 1 {
            frames.into_iter().next().unwrap_or_default()
        } else {
            let mut b = BytesMut::with_capacity(keep.len() + len);
            b.extend_from_slice(&keep);
            for f in &frames {
                b.extend_from_slice(f);
            }
            b.freeze()
        };
        self.head.off += len as u64;
        self.head.msgs += msgs;
        self.behind = self.blocks.len();
    }

    /// Whether some block still has stream bytes to receive.
    pub fn is_idle(&self) -> bool {
        self.behind == 0
    }

    /// Stream bytes kept for blocks that are behind.
    pub fn pending_bytes(&self) -> u64 {
        if self.behind == 0 {
            0
        } else {
            self.head.off - self.base
        }
    }

    /// The next block that is behind, from the cursor on, with what it must be written (one
    /// shared buffer and its message count); the block is then up to date.
    pub fn next_block(&mut self) -> Option<(usize, Bytes, u64)> {
        if self.behind == 0 {
            return None;
        }
        let n = self.blocks.len();
        for step in 0..n {
            let b = (self.cursor + step) % n;
            if self.blocks[b] != self.head {
                self.cursor = (b + 1) % n;
                self.written[b] = Some(Instant::now());
                let (bytes, msgs) = self.catch_up(b);
                return Some((b, bytes, msgs));
            }
        }
        self.behind = 0;
        None
    }

    /// [`next_block`](Self::next_block), except that a block written less than `interval`
    /// ago is not written again yet: the sweep then waits for it. Only the sweep's own
    /// writes, which visit blocks in cursor order, set a block's time (a connection that
    /// opens brings its block up to date without it), so the first block behind from the
    /// cursor is the one the sweep wrote longest ago.
    pub fn next_block_paced(&mut self, interval: Duration) -> Next {
        if interval.is_zero() {
            return match self.next_block() {
                Some((b, bytes, msgs)) => Next::Block(b, bytes, msgs),
                None => Next::Done,
            };
        }
        if self.behind == 0 {
            return Next::Done;
        }
        let n = self.blocks.len();
        let Some(b) = (0..n)
            .map(|step| (self.cursor + step) % n)
            .find(|&b| self.blocks[b] != self.head)
        else {
            self.behind = 0;
            return Next::Done;
        };
        if let Some(due) = self.written[b].map(|t| t + interval) {
            if due > Instant::now() {
                return Next::Wait(due);
            }
        }
        self.cursor = (b + 1) % n;
        self.written[b] = Some(Instant::now());
        let (bytes, msgs) = self.catch_up(b);
        Next::Block(b, bytes, msgs)
    }

    /// Creates blocks `0..n` that do not exist yet, at the head: positions in them receive
    /// only what is committed from now on.
    pub fn ensure_blocks(&mut self, n: usize) {
        if n > self.blocks.len() {
            self.blocks.resize(n, self.head);
            self.written.resize(n, None);
        }
    }

    /// Brings `block` up to date (creating it, and any before it, at the head). Returns what
    /// it lacked, if anything.
    pub fn take_block(&mut self, block: usize) -> Option<(Bytes, u64)> {
        if block >= self.blocks.len() {
            self.ensure_blocks(block + 1);
            return None;
        }
        if self.blocks[block] == self.head {
            return None;
        }
        Some(self.catch_up(block))
    }

    fn catch_up(&mut self, b: usize) -> (Bytes, u64) {
        let m = self.blocks[b];
        self.blocks[b] = self.head;
        self.behind -= 1;
        let bytes = self.data.slice((m.off - self.base) as usize..);
        if self.behind == 0 {
            self.base = self.head.off;
            self.data = Bytes::new();
        }
        (bytes, self.head.msgs - m.msgs)
    }
}

impl Shard {
    /// Step 6 for broadcasts: commit this pass's frames to the stream, then write up to
    /// [`CONNS_PER_PASS`] connections of the blocks that are behind (all of them when the
    /// stream is over [`MAX_PENDING_BYTES`]).
    pub(super) fn sweep_step(&mut self) {
        let frames = std::mem::take(&mut self.batch);
        let msgs = std::mem::take(&mut self.batch_msgs);
        self.sweep.commit(frames, msgs);
        let all = self.sweep.pending_bytes() > MAX_PENDING_BYTES;
        let interval = if all {
            Duration::ZERO
        } else {
            self.cfg.sweep_interval
        };
        let mut budget = CONNS_PER_PASS;
        while all || budget > 0 {
            match self.sweep.next_block_paced(interval) {
                Next::Block(block, bytes, msgs) => {
                    budget = budget.saturating_sub(self.write_block(block, &bytes, msgs));
                }
                Next::Wait(t) => {
                    self.sweep_wait_until(t);
                    return;
                }
                Next::Done => return,
            }
        }
        if !self.sweep.is_idle() {
            self.sweep_ready = true;
        }
    }

    /// A paced sweep may go on at `t`: the poll sleeps at most until the earliest such time.
    pub(super) fn sweep_wait_until(&mut self, t: Instant) {
        self.sweep_wake = Some(self.sweep_wake.map_or(t, |w| w.min(t)));
    }

    /// Completes the revolution: every open connection gets everything committed so far.
    /// Before anything that must follow the broadcasts on the wire (drain's close frames).
    pub(super) fn sweep_finish(&mut self) {
        let frames = std::mem::take(&mut self.batch);
        let msgs = std::mem::take(&mut self.batch_msgs);
        self.sweep.commit(frames, msgs);
        while let Some((block, bytes, msgs)) = self.sweep.next_block() {
            self.write_block(block, &bytes, msgs);
        }
    }

    /// Called just before connection `idx` opens: its block is brought up to date first, so
    /// the new connection starts at the stream's head.
    pub(super) fn sweep_join(&mut self, idx: usize) {
        let block = idx / BLOCK;
        if let Some((bytes, msgs)) = self.sweep.take_block(block) {
            self.write_block(block, &bytes, msgs);
        }
    }

    /// Writes `bytes` to every open connection of `block`. Returns how many it wrote to.
    fn write_block(&mut self, block: usize, bytes: &Bytes, msgs: u64) -> usize {
        let mut out = Outcome::default();
        let mut cx = SendCtx {
            bound: self.cfg.max_backpressure,
            policy: SlowPolicy::Disconnect,
            counters: &mut self.counters,
            dirty: &mut self.dirty,
            pool: &mut self.pool,
        };
        let mut written = 0;
        for idx in block * BLOCK..(block + 1) * BLOCK {
            if let Some(c) = self.conns.get_mut(idx) {
                if c.phase.sends_data() {
                    send_shared(c, idx, bytes, msgs, &mut cx, &mut out);
                    written += 1;
                }
            }
        }
        self.settle(out);
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn drain(s: &mut Sweep) -> Vec<(usize, String, u64)> {
        std::iter::from_fn(|| s.next_block())
            .map(|(blk, bytes, n)| (blk, String::from_utf8(bytes.to_vec()).unwrap(), n))
            .collect()
    }

    #[test]
    fn every_block_gets_each_message_once_in_order() {
        let mut s = Sweep::default();
        for blk in 0..3 {
            assert!(s.take_block(blk).is_none());
        }
        s.commit(vec![b("a"), b("b")], 2);
        assert!(!s.is_idle());
        // Visit one block, then more messages arrive: the others get all three in one go.
        let (blk, first, n) = s.next_block().unwrap();
        assert_eq!((blk, &first[..], n), (0, &b"ab"[..], 2));
        s.commit(vec![b("c")], 1);
        assert_eq!(
            drain(&mut s),
            vec![
                (1, "abc".into(), 3),
                (2, "abc".into(), 3),
                (0, "c".into(), 1)
            ]
        );
        assert!(s.is_idle());
        assert_eq!(s.pending_bytes(), 0);
        assert!(s.next_block().is_none());
    }

    #[test]
    fn a_block_created_later_starts_at_the_head() {
        let mut s = Sweep::default();
        s.take_block(0);
        s.commit(vec![b("old")], 1);
        // Block 3 (and 1, 2) appear after "old": they must not receive it.
        assert!(s.take_block(3).is_none());
        s.commit(vec![b("new")], 1);
        let got = drain(&mut s);
        assert_eq!(got[0], (0, "oldnew".into(), 2));
        assert!(got[1..]
            .iter()
            .all(|(_, bytes, n)| bytes == "new" && *n == 1));
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn a_block_brought_up_to_date_is_skipped_by_the_sweep() {
        let mut s = Sweep::default();
        s.take_block(1);
        s.commit(vec![b("x")], 1);
        let (bytes, n) = s.take_block(1).unwrap();
        assert_eq!((&bytes[..], n), (&b"x"[..], 1));
        assert_eq!(drain(&mut s), vec![(0, "x".into(), 1)]);
        assert!(s.take_block(1).is_none());
    }

    #[test]
    fn only_what_some_block_lacks_is_kept() {
        let mut s = Sweep::default();
        s.take_block(1);
        s.commit(vec![b("1234")], 1);
        s.next_block().unwrap();
        assert_eq!(s.pending_bytes(), 4);
        s.commit(vec![b("56")], 1);
        // Block 0 got "1234" already; block 1 lacks all six.
        assert_eq!(s.pending_bytes(), 6);
        s.next_block().unwrap();
        s.next_block().unwrap();
        assert!(s.is_idle());
        s.commit(vec![b("7")], 1);
        assert_eq!(s.pending_bytes(), 1);
    }

    #[test]
    fn ensuring_blocks_leaves_existing_ones_behind() {
        let mut s = Sweep::default();
        s.ensure_blocks(2);
        s.commit(vec![b("a")], 1);
        s.next_block().unwrap();
        s.commit(vec![b("b")], 1);
        // Block 1 still lacks both; making room for block 2 must not skip it.
        s.ensure_blocks(3);
        s.ensure_blocks(1);
        assert_eq!(drain(&mut s), vec![(1, "ab".into(), 2), (0, "b".into(), 1)]);
        s.commit(vec![b("c")], 1);
        assert_eq!(drain(&mut s).len(), 3);
    }

    #[test]
    fn a_paced_sweep_waits_for_the_block_written_last_and_loses_nothing() {
        let mut s = Sweep::default();
        s.ensure_blocks(2);
        let long = Duration::from_secs(3600);
        s.commit(vec![b("a")], 1);
        // Never written: both go at once.
        assert!(matches!(s.next_block_paced(long), Next::Block(0, _, 1)));
        assert!(matches!(s.next_block_paced(long), Next::Block(1, _, 1)));
        assert!(matches!(s.next_block_paced(long), Next::Done));
        s.commit(vec![b("b")], 1);
        s.commit(vec![b("c")], 1);
        // Written just now: wait about an hour, and nothing moves meanwhile.
        let Next::Wait(t) = s.next_block_paced(long) else {
            panic!("expected a wait");
        };
        assert!(t > Instant::now() + Duration::from_secs(3500));
        assert!(matches!(s.next_block_paced(long), Next::Wait(_)));
        assert_eq!(s.pending_bytes(), 2);
        // Unpaced (a revolution completed before the subscriber set changes, or the stream
        // over its bound): everything pending, in order, once.
        assert_eq!(
            drain(&mut s),
            vec![(0, "bc".into(), 2), (1, "bc".into(), 2)]
        );
        // A short interval that has passed lets the next revolution go.
        s.commit(vec![b("d")], 1);
        std::thread::sleep(Duration::from_millis(5));
        let short = Duration::from_millis(1);
        assert!(matches!(s.next_block_paced(short), Next::Block(0, _, 1)));
        assert!(matches!(s.next_block_paced(short), Next::Block(1, _, 1)));
        assert!(s.is_idle());
    }

    #[test]
    fn a_block_brought_up_to_date_by_a_join_does_not_hold_the_paced_sweep() {
        // The sweep wrote every block, then the interval passed. A connection opening in
        // block 0 (at the cursor) catches that block up, and more is committed: the sweep
        // must write all three now. Were the join to count as the sweep's write, block 0
        // would look freshly written and the sweep would wait on it while 1 and 2 are due;
        // a client reconnecting into block 0 faster than the interval would hold them back
        // indefinitely.
        let mut s = Sweep::default();
        s.ensure_blocks(3);
        let interval = Duration::from_millis(30);
        s.commit(vec![b("a")], 1);
        assert_eq!(drain(&mut s).len(), 3);
        std::thread::sleep(Duration::from_millis(40));
        s.commit(vec![b("b")], 1);
        assert_eq!(s.take_block(0), Some((b("b"), 1)));
        s.commit(vec![b("c")], 1);
        let mut written = Vec::new();
        while let Next::Block(blk, bytes, n) = s.next_block_paced(interval) {
            written.push((blk, String::from_utf8(bytes.to_vec()).unwrap(), n));
        }
        assert_eq!(
            written,
            vec![(0, "c".into(), 1), (1, "bc".into(), 2), (2, "bc".into(), 2)]
        );
        assert!(s.is_idle());
    }

    #[test]
    fn with_no_blocks_nothing_is_kept() {
        let mut s = Sweep::default();
        s.commit(vec![b("lost")], 1);
        assert!(s.is_idle());
        assert!(s.take_block(0).is_none());
        s.commit(vec![b("kept")], 1);
        assert_eq!(drain(&mut s), vec![(0, "kept".into(), 1)]);
    }
}
