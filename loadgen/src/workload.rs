//! What goes inside the frames: the echo payload, the fanout stamp, and the per-subscriber
//! sequence tracker that turns stamps into gaps, duplicates and reorderings. Pure functions;
//! framing and masking are the engine's (`starling::proto`).
//!
//! The fanout stamp (little-endian, then padding up to `--size`):
//!
//! ```text
//!  0      4          8                 16                     24                 32
//!  | SLG1 | publisher | sequence number | intended send time ns | actual send time ns | pad...
//! ```
//!
//! Latency is measured from the *intended* send time (the publisher's schedule), so a
//! publisher that falls behind does not hide the delay (coordinated omission). The clock is
//! `CLOCK_MONOTONIC`, one clock for every process on the machine.

use rand::RngCore;
use starling::proto::frame::encode_header;
use starling::proto::{OpCode, MAX_HEADER_LEN};

use crate::plan::STAMP_LEN;

const MAGIC: [u8; 4] = *b"SLG1";

/// The echo payload: `size` bytes of a fixed pattern, ASCII (valid as text too).
pub fn echo_payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// The echo frames of a run, pre-encoded: `n` frames are one copy out of a block of
/// unmasked frames, then a fresh key written and the payload masked in place per frame.
///
/// §5.3: "The masking key needs to be unpredictable", so every frame gets its own key; what
/// is saved is the header encoding and the per-frame appends. `starling::proto::frame::encode_frame_into` is the
/// reference this is tested against.
///
/// It also holds the reply a correct echo server sends back for each frame (the same
/// opcode and payload, unmasked, §5.1), so a read full of replies can be recognised by one
/// comparison against a block of them ([`FrameBatch::leading_replies`]) instead of being
/// decoded frame by frame.
pub struct FrameBatch {
    /// `MAX_BATCH` copies of the frame with a zero key and the payload unmasked.
    block: Vec<u8>,
    /// Bytes of one frame.
    frame_len: usize,
    /// Offset of the key in a frame (the payload follows it).
    key_at: usize,
    /// `MAX_BATCH` copies of the expected reply frame.
    replies: Vec<u8>,
    /// Bytes of one reply frame.
    reply_len: usize,
}

/// Frames one copy can produce; larger batches take several copies.
const MAX_BATCH: usize = 64;

impl FrameBatch {
    /// Frames of `opcode` carrying `payload`, masked (client role).
    pub fn new(opcode: OpCode, payload: &[u8]) -> FrameBatch {
        let mut head = [0u8; MAX_HEADER_LEN];
        let head_len = encode_header(&mut head, true, opcode, payload.len() as u64, Some([0; 4]));
        let frame_len = head_len + payload.len();
        let mut block = Vec::with_capacity(frame_len * MAX_BATCH);
        for _ in 0..MAX_BATCH {
            block.extend_from_slice(&head[..head_len]);
            block.extend_from_slice(payload);
        }
        let reply_head_len = encode_header(&mut head, true, opcode, payload.len() as u64, None);
        let reply_len = reply_head_len + payload.len();
        let mut replies = Vec::with_capacity(reply_len * MAX_BATCH);
        for _ in 0..MAX_BATCH {
            replies.extend_from_slice(&head[..reply_head_len]);
            replies.extend_from_slice(payload);
        }
        FrameBatch {
            block,
            frame_len,
            key_at: head_len - 4,
            replies,
            reply_len,
        }
    }

    /// Bytes of one expected reply frame.
    pub fn reply_len(&self) -> usize {
        self.reply_len
    }

    /// How many whole frames at the start of `buf` are byte for byte the expected reply.
    /// Such a frame decodes, from a decoder waiting for a frame header, to exactly one
    /// data message equal to the payload (final, no RSV bits, unmasked, the payload's
    /// length, and valid UTF-8 for text since the payload is), so the caller may count it
    /// without decoding it. Whole blocks are compared at once; within the first block that
    /// differs, frame by frame. A partial frame at the end is not counted.
    pub fn leading_replies(&self, buf: &[u8]) -> usize {
        let whole = buf.len() / self.reply_len;
        let mut done = 0;
        while done < whole {
            let k = (whole - done).min(MAX_BATCH);
            let at = done * self.reply_len;
            let span = k * self.reply_len;
            if buf[at..at + span] == self.replies[..span] {
                done += k;
                continue;
            }
            let one = &self.replies[..self.reply_len];
            let same = buf[at..at + span]
                .chunks_exact(self.reply_len)
                .take_while(|f| f == &one)
                .count();
            return done + same;
        }
        done
    }

    /// Appends `n` frames to `out`, each masked with its own key from `rng`.
    pub fn push(&self, out: &mut Vec<u8>, n: usize, rng: &mut impl RngCore) {
        let mut left = n;
        while left > 0 {
            let k = left.min(MAX_BATCH);
            let start = out.len();
            out.extend_from_slice(&self.block[..k * self.frame_len]);
            let frames = out[start..].chunks_exact_mut(self.frame_len);
            for frame in frames {
                let key = rng.next_u32();
                let (head, payload) = frame.split_at_mut(self.key_at + 4);
                head[self.key_at..].copy_from_slice(&key.to_ne_bytes());
                mask_with(payload, key);
            }
            left -= k;
        }
    }
}

/// `apply_mask(buf, key.to_ne_bytes(), 0)`, for the start of a payload: the 8-byte word
/// is two copies of the key as it is (no rotation to work out).
fn mask_with(buf: &mut [u8], key: u32) {
    let word = u64::from(key) | (u64::from(key) << 32);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    let k = key.to_ne_bytes();
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
}

/// `a == b`, without a libc call for the short payloads echo compares per message.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        u64::from_ne_bytes(w)
    };
    let n = a.len();
    if n < 8 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    // The last eight bytes as one word (overlapping the chunks when the length is not a
    // multiple of 8), then the whole words, OR-ing differences so there is one branch.
    let mut diff = word(&a[n - 8..]) ^ word(&b[n - 8..]);
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        diff |= word(x) ^ word(y);
    }
    diff == 0
}

/// One fanout message's identity and timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Global publisher index.
    pub publisher: u32,
    /// Per-publisher sequence number, from 0.
    pub seq: u64,
    /// When the schedule wanted it sent.
    pub intended_ns: u64,
    /// When it was queued for writing.
    pub sent_ns: u64,
}

/// Writes `stamp` into the first [`STAMP_LEN`] bytes of `payload` (the rest is padding the
/// caller filled once).
pub fn write_stamp(payload: &mut [u8], s: Stamp) {
    payload[0..4].copy_from_slice(&MAGIC);
    payload[4..8].copy_from_slice(&s.publisher.to_le_bytes());
    payload[8..16].copy_from_slice(&s.seq.to_le_bytes());
    payload[16..24].copy_from_slice(&s.intended_ns.to_le_bytes());
    payload[24..32].copy_from_slice(&s.sent_ns.to_le_bytes());
}

/// Reads a stamp; `None` for a message that is not ours (a server's greeting, say).
pub fn read_stamp(payload: &[u8]) -> Option<Stamp> {
    let head = payload.get(..STAMP_LEN)?;
    if head[0..4] != MAGIC {
        return None;
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let mut p = [0u8; 4];
    p.copy_from_slice(&head[4..8]);
    Some(Stamp {
        publisher: u32::from_le_bytes(p),
        seq: u64_at(8),
        intended_ns: u64_at(16),
        sent_ns: u64_at(24),
    })
}

/// How a received sequence number relates to what came before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next one expected.
    InOrder,
    /// Ahead of the next expected: this many were skipped (so far).
    Gap(u64),
    /// A skipped one arriving late: it was counted as a gap, now it is a reordering.
    Late,
    /// Seen before.
    Duplicate,
    /// Older than the window remembers: late or duplicate, counted as reordered.
    TooOld,
}

/// One subscriber's view of one publisher: the next sequence number expected and which of
/// the 64 before it arrived. 16 bytes, so 10,000 subscribers x 1 publisher cost 160 KB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqTrack {
    next: u64,
    /// Bit i set: sequence `next - 1 - i` has been received.
    seen: u64,
}

/// Gaps, duplicates and reorderings of one kind of sequence, as [`Tally::count`] adds
/// them up.
#[derive(Debug)]
pub struct Tally<'a> {
    /// Numbers skipped and (so far) never received late.
    pub gaps: &'a mut u64,
    /// Numbers received twice.
    pub duplicates: &'a mut u64,
    /// Numbers received after a later one.
    pub reordered: &'a mut u64,
}

impl Tally<'_> {
    /// Adds one arrival: a late one turns a gap into a reordering.
    pub fn count(&mut self, a: Arrival) {
        match a {
            Arrival::InOrder => {}
            Arrival::Gap(k) => *self.gaps += k,
            Arrival::Late => {
                *self.gaps -= 1;
                *self.reordered += 1;
            }
            Arrival::Duplicate => *self.duplicates += 1,
            Arrival::TooOld => *self.reordered += 1,
        }
    }
}

impl SeqTrack {
    /// A stream whose first number is `next` (a hub channel starts after the sequence number
    /// the subscribe reply gave). What came before counts as already received, so the
    /// server sending it again reads as a duplicate.
    pub fn starting_at(next: u64) -> SeqTrack {
        SeqTrack {
            next,
            seen: u64::MAX,
        }
    }

    /// Classifies `seq` and remembers it. Every subscriber is open before the first publish,
    /// so the stream must start at 0: a first `seq` above 0 is a gap too.
    pub fn arrive(&mut self, seq: u64) -> Arrival {
        if seq == self.next {
            self.seen = (self.seen << 1) | 1;
            self.next += 1;
            return Arrival::InOrder;
        }
        if seq > self.next {
            let skipped = seq - self.next;
            self.seen = if skipped + 1 >= 64 {
                1
            } else {
                (self.seen << (skipped + 1)) | 1
            };
            self.next = seq + 1;
            return Arrival::Gap(skipped);
        }
        let back = self.next - 1 - seq;
        if back >= 64 {
            return Arrival::TooOld;
        }
        let bit = 1u64 << back;
        if self.seen & bit != 0 {
            return Arrival::Duplicate;
        }
        self.seen |= bit;
        Arrival::Late
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling::proto::mask::apply_mask;

    #[test]
    fn stamp_round_trip_and_foreign_messages() {
        let mut p = vec![b'x'; 64];
        let s = Stamp {
            publisher: 3,
            seq: 1 << 40,
            intended_ns: 5,
            sent_ns: 6,
        };
        write_stamp(&mut p, s);
        assert_eq!(read_stamp(&p), Some(s));
        assert_eq!(read_stamp(b"hello"), None);
        assert_eq!(read_stamp(&[0u8; 64]), None);
    }

    #[test]
    fn in_order_stream_has_no_anomalies() {
        let mut t = SeqTrack::default();
        assert!((0..1000).all(|s| t.arrive(s) == Arrival::InOrder));
    }

    #[test]
    fn gaps_late_arrivals_and_duplicates() {
        let mut t = SeqTrack::default();
        assert_eq!(t.arrive(0), Arrival::InOrder);
        assert_eq!(t.arrive(3), Arrival::Gap(2));
        assert_eq!(t.arrive(1), Arrival::Late);
        assert_eq!(t.arrive(1), Arrival::Duplicate);
        assert_eq!(t.arrive(3), Arrival::Duplicate);
        assert_eq!(t.arrive(2), Arrival::Late);
        assert_eq!(t.arrive(4), Arrival::InOrder);
        assert_eq!(t.arrive(200), Arrival::Gap(195));
        assert_eq!(t.arrive(100), Arrival::TooOld);
        assert_eq!(t.arrive(199), Arrival::Late);
        let mut first = SeqTrack::default();
        assert_eq!(first.arrive(5), Arrival::Gap(5));
        let mut after = SeqTrack::starting_at(42);
        assert_eq!(after.arrive(42), Arrival::InOrder);
        assert_eq!(after.arrive(44), Arrival::Gap(1));
        assert_eq!(after.arrive(43), Arrival::Late);
        assert_eq!(after.arrive(41), Arrival::Duplicate);
    }

    #[test]
    fn tally_turns_late_gaps_into_reorderings() {
        let (mut g, mut d, mut r) = (0, 0, 0);
        let mut t = Tally {
            gaps: &mut g,
            duplicates: &mut d,
            reordered: &mut r,
        };
        let mut s = SeqTrack::default();
        for n in [0, 3, 1, 1, 5] {
            t.count(s.arrive(n));
        }
        assert_eq!((g, d, r), (2, 1, 1));
    }

    #[test]
    fn batch_frames_match_the_codec_frame_by_frame() {
        use rand::SeedableRng;
        use starling::proto::frame::encode_frame_into;
        for size in [0usize, 1, 7, 32, 125, 126, 1000, 70_000] {
            let payload = echo_payload(size);
            let batch = FrameBatch::new(OpCode::Binary, &payload);
            for n in [1usize, 3, 64, 65, 130] {
                let mut fast = vec![9u8; 3];
                batch.push(&mut fast, n, &mut rand::rngs::StdRng::seed_from_u64(7));
                let mut slow = vec![9u8; 3];
                let mut rng = rand::rngs::StdRng::seed_from_u64(7);
                for _ in 0..n {
                    let key = rng.next_u32().to_ne_bytes();
                    encode_frame_into(&mut slow, OpCode::Binary, &payload, Some(key));
                }
                assert!(fast == slow, "size {size} n {n}");
            }
        }
    }

    /// Every reply `leading_replies` counts decodes, as the server's frame, to one message
    /// of the same kind with the payload; the count stops at the first frame that differs in
    /// any byte, and never includes a partial frame.
    #[test]
    fn leading_replies_counts_exactly_the_frames_that_decode_to_the_echo() {
        use starling::proto::Role;
        use starling::proto::{Decoder, Event, Flow};
        for opcode in [OpCode::Binary, OpCode::Text] {
            for size in [0usize, 1, 32, 125, 126, 300] {
                let payload = echo_payload(size);
                let batch = FrameBatch::new(opcode, &payload);
                let len = batch.reply_len();
                for n in [0usize, 1, 63, 64, 65, 130] {
                    let mut buf = Vec::new();
                    for _ in 0..n {
                        encode_frame_into_plain(&mut buf, opcode, &payload);
                    }
                    assert_eq!(len * n, buf.len());
                    let mut d = Decoder::new(Role::Client, 1 << 20);
                    let mut seen = 0;
                    d.feed(&mut buf.clone(), |ev| {
                        let p = match (opcode, ev) {
                            (OpCode::Binary, Event::Binary(p)) | (OpCode::Text, Event::Text(p)) => {
                                p
                            }
                            _ => panic!("not the echo"),
                        };
                        assert_eq!(p, &payload[..]);
                        seen += 1;
                        Flow::Continue
                    })
                    .unwrap();
                    assert_eq!(seen, n);
                    assert_eq!(
                        batch.leading_replies(&buf),
                        n,
                        "{opcode:?} size {size} n {n}"
                    );
                    // A cut frame at the end is not counted.
                    if n > 0 {
                        assert_eq!(batch.leading_replies(&buf[..buf.len() - 1]), n - 1);
                    }
                    // One changed byte anywhere: only the frames before it count.
                    for at in (0..buf.len()).step_by(7) {
                        let mut bad = buf.clone();
                        bad[at] ^= 0x40;
                        assert_eq!(batch.leading_replies(&bad), at / len, "byte {at}");
                    }
                }
            }
        }
    }

    fn encode_frame_into_plain(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
        starling::proto::frame::encode_frame_into(out, opcode, payload, None);
    }

    #[test]
    fn mask_with_is_apply_mask_at_offset_zero() {
        let key = 0x1234_5678u32;
        for len in 0..40 {
            let data = echo_payload(len);
            let (mut a, mut b) = (data.clone(), data);
            mask_with(&mut a, key);
            apply_mask(&mut b, key.to_ne_bytes(), 0);
            assert_eq!(a, b, "len {len}");
        }
    }

    #[test]
    fn same_is_equality() {
        let a = echo_payload(40);
        for len in 0..40 {
            assert!(same(&a[..len], &a[..len]));
            for i in 0..len {
                let mut b = a[..len].to_vec();
                b[i] ^= 1;
                assert!(!same(&a[..len], &b));
            }
            assert!(!same(&a[..len], &a[..len + 1]));
        }
    }

    #[test]
    fn echo_payload_is_text_safe() {
        let p = echo_payload(100);
        assert_eq!(p.len(), 100);
        assert!(std::str::from_utf8(&p).is_ok());
    }
}
