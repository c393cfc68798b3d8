//! One connection's outbound queue: frames waiting for the socket to take them.
//!
//! A queue holds two kinds of chunk. `Shared` is a reference-counted frame (`Bytes`) that many
//! queues may hold at once: a broadcast is encoded once and every recipient's queue gets a clone
//! of the handle, never a copy of the bytes. `Owned` is a buffer private to this connection
//! (an echo reply, a pong, the 101 response), taken from and returned to the shard's
//! [`BufPool`] so steady-state traffic allocates nothing.
//!
//! An empty queue holds no heap memory (an empty `VecDeque` does not allocate), so an idle
//! connection costs only the struct itself.
//!
//! Flushing gathers up to [`MAX_IOVECS`] chunks into one `writev`; a partial write leaves the
//! rest (including a partly written chunk, tracked by `head_off`) for the next writable event.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;

/// Chunks gathered into one `writev`. Linux's IOV_MAX is 1024; 64 already covers everything
/// queued in one loop pass in practice, and keeps the on-stack slice array small.
pub const MAX_IOVECS: usize = 64;

/// Owned chunks are appended to while under this size, so a burst of small echo replies
/// becomes one buffer and one slice in the `writev`.
const COALESCE_LIMIT: usize = 16 * 1024;

/// One queued piece of output.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes shared with other queues (a broadcast frame).
    Shared(Bytes),
    /// Bytes private to this connection, from the shard's pool.
    Owned(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared(b) => b,
            Chunk::Owned(v) => v,
        }
    }
}

/// What happened to a message handed to [`SendQueue`] (see `shard::conn` for the policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// Accepted; the queue is within its bound.
    Queued,
    /// Accepted, but the queue is now over its bound: the next message will be refused.
    Backpressure,
    /// Refused: the queue was already over its bound. The caller closes the connection (1008).
    Dropped,
}

/// The outbound queue of one connection. 48 bytes; no heap while empty.
#[derive(Debug, Default)]
pub struct SendQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head_off: usize,
    /// Unwritten bytes in the queue (sum of chunk lengths minus `head_off`).
    queued: usize,
}

/// Outcome of a flush attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Bytes written by this call.
    pub bytes: usize,
    /// `write`/`writev` calls made.
    pub calls: u32,
}

impl SendQueue {
    /// Unwritten bytes.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Nothing left to write.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    fn status_after_push(&self, before: usize, bound: usize) -> SendStatus {
        if before > bound {
            SendStatus::Dropped
        } else if self.queued > bound {
            SendStatus::Backpressure
        } else {
            SendStatus::Queued
        }
    }

    /// Queues a shared frame, unless the queue was already over `bound` before it.
    pub fn push_shared(&mut self, frame: Bytes, bound: usize) -> SendStatus {
        let before = self.queued;
        if before > bound {
            return SendStatus::Dropped;
        }
        if frame.is_empty() {
            return SendStatus::Queued;
        }
        self.queued += frame.len();
        self.chunks.push_back(Chunk::Shared(frame));
        self.status_after_push(before, bound)
    }

    /// Queues what is left of a shared frame of which the first `written` bytes already went
    /// out directly (the broadcast fast path, used only on an empty queue). The whole frame is
    /// kept with `head_off = written`, so the queue still knows the front chunk is mid-frame
    /// (see [`SendQueue::truncate_to_partial`]).
    pub fn push_shared_after_write(&mut self, frame: Bytes, written: usize) {
        debug_assert!(self.is_empty() && written < frame.len());
        self.queued += frame.len() - written;
        self.head_off = written;
        self.chunks.push_back(Chunk::Shared(frame));
    }

    /// Queues a private buffer filled elsewhere (a read's echo replies, encoded back to back).
    /// An empty one goes straight back to `pool`. While the last chunk is owned and the two
    /// together stay under the coalescing limit, the bytes are appended to it and `v` goes
    /// back to `pool`, as [`SendQueue::push_owned`] would have appended them: so a reader
    /// that takes nothing while small replies keep coming holds about its bound in heap, not
    /// a pool buffer per read. The caller checked the bound before filling `v`.
    pub fn push_vec(&mut self, v: Vec<u8>, pool: &mut BufPool) {
        if v.is_empty() {
            pool.give(v);
            return;
        }
        self.queued += v.len();
        if let Some(Chunk::Owned(tail)) = self.chunks.back_mut() {
            if tail.len() + v.len() <= COALESCE_LIMIT {
                tail.extend_from_slice(&v);
                pool.give(v);
                return;
            }
        }
        self.chunks.push_back(Chunk::Owned(v));
    }

    /// Appends bytes produced by `fill` to a private buffer (the last owned chunk when it has
    /// room, else a buffer from `pool`), unless the queue was already over `bound`.
    pub fn push_owned(
        &mut self,
        pool: &mut BufPool,
        bound: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> SendStatus {
        let before = self.queued;
        if before > bound {
            return SendStatus::Dropped;
        }
        // Append to the tail chunk only if it is owned, small, and not partly written (a partly
        // written front chunk is still fine to extend: head_off stays valid when appending).
        let reuse = matches!(self.chunks.back(), Some(Chunk::Owned(v)) if v.len() < COALESCE_LIMIT);
        if !reuse {
            self.chunks.push_back(Chunk::Owned(pool.take()));
        }
        let Some(Chunk::Owned(buf)) = self.chunks.back_mut() else {
            unreachable!("tail chunk is owned: pushed or checked just above")
        };
        let len_before = buf.len();
        fill(buf);
        self.queued += buf.len() - len_before;
        self.status_after_push(before, bound)
    }

    /// Keeps only what must still go out for the stream to stay well-formed — the rest of a
    /// partly written front chunk — and frees everything else. Used before queuing a close frame
    /// to a slow consumer: its backlog will never be read, so it must not pin memory.
    pub fn truncate_to_partial(&mut self, pool: &mut BufPool) {
        let keep = if self.head_off > 0 { 1 } else { 0 };
        while self.chunks.len() > keep {
            if let Some(Chunk::Owned(v)) = self.chunks.pop_back() {
                pool.give(v);
            }
        }
        self.queued = self
            .chunks
            .front()
            .map_or(0, |c| c.bytes().len() - self.head_off);
    }

    /// Writes as much as the socket takes: `writev` of up to [`MAX_IOVECS`] chunks at a time,
    /// until the queue is empty or the socket would block. `Interrupted` is retried; other
    /// errors are returned (the connection is then dropped).
    pub fn flush<W: Write>(&mut self, sock: &mut W, pool: &mut BufPool) -> io::Result<Flushed> {
        let mut out = Flushed { bytes: 0, calls: 0 };
        while self.queued > 0 {
            let n = {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for (i, c) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
                    let b = c.bytes();
                    slices[i] = IoSlice::new(if i == 0 { &b[self.head_off..] } else { b });
                    count += 1;
                }
                out.calls += 1;
                match sock.write_vectored(&slices[..count]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            out.bytes += n;
            self.consume(n, pool);
        }
        Ok(out)
    }

    /// Drops `n` written bytes from the front.
    fn consume(&mut self, mut n: usize, pool: &mut BufPool) {
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.head_off;
            if n < left {
                self.head_off += n;
                return;
            }
            n -= left;
            self.head_off = 0;
            if let Some(Chunk::Owned(v)) = self.chunks.pop_front() {
                pool.give(v);
            }
        }
        if self.chunks.is_empty() {
            // Release the ring's own allocation too: an idle connection holds no heap.
            self.chunks = VecDeque::new();
        }
    }
}

/// A shard's stock of reusable output buffers, so echo replies and control frames do not
/// allocate per message. Bounded in count and per-buffer capacity so one burst cannot pin
/// memory forever.
#[derive(Debug, Default)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
}

impl BufPool {
    /// Buffers kept at most.
    const MAX_FREE: usize = 1024;
    /// Buffers larger than this are freed instead of kept.
    const MAX_KEPT_CAPACITY: usize = 64 * 1024;
    /// Capacity of a fresh buffer.
    const FRESH_CAPACITY: usize = 4 * 1024;

    /// An empty buffer with some capacity.
    pub fn take(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(Self::FRESH_CAPACITY))
    }

    /// Returns a buffer for reuse (or frees it if the pool is full or it is too big).
    pub fn give(&mut self, mut v: Vec<u8>) {
        if self.free.len() < Self::MAX_FREE && v.capacity() <= Self::MAX_KEPT_CAPACITY {
            v.clear();
            self.free.push(v);
        }
    }

    /// Buffers currently held.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// No buffers held.
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `cap` bytes per call and then blocks after `calls` calls.
    struct Trickle {
        out: Vec<u8>,
        per_call: usize,
        calls_left: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls_left -= 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.per_call - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.per_call {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_in_order_at_every_split() {
        for per_call in 1..12 {
            let mut pool = BufPool::default();
            let mut q = SendQueue::default();
            let shared = Bytes::from_static(b"HELLO");
            q.push_owned(&mut pool, 1 << 20, |v| v.extend_from_slice(b"ab"));
            q.push_shared(shared.clone(), 1 << 20);
            q.push_owned(&mut pool, 1 << 20, |v| v.extend_from_slice(b"cd"));
            q.push_owned(&mut pool, 1 << 20, |v| v.extend_from_slice(b"ef"));
            q.push_shared(shared, 1 << 20);
            assert_eq!(q.len(), 16);
            let mut sock = Trickle {
                out: Vec::new(),
                per_call,
                calls_left: 1,
            };
            while !q.is_empty() {
                sock.calls_left = 1;
                q.flush(&mut sock, &mut pool).unwrap();
            }
            assert_eq!(sock.out, b"abHELLOcdefHELLO", "per_call={per_call}");
            assert_eq!(q.chunks.capacity(), 0, "an empty queue holds no heap");
            assert!(!pool.is_empty(), "owned buffers go back to the pool");
        }
    }

    #[test]
    fn bound_is_enforced_one_message_past_it() {
        let mut pool = BufPool::default();
        let mut q = SendQueue::default();
        let f = Bytes::from(vec![0u8; 60]);
        assert_eq!(q.push_shared(f.clone(), 100), SendStatus::Queued);
        assert_eq!(q.push_shared(f.clone(), 100), SendStatus::Backpressure);
        assert_eq!(q.push_shared(f.clone(), 100), SendStatus::Dropped);
        assert_eq!(q.push_owned(&mut pool, 100, |_| {}), SendStatus::Dropped);
        assert_eq!(q.len(), 120);
    }

    #[test]
    fn truncate_keeps_only_the_partly_written_front() {
        let mut pool = BufPool::default();
        let mut q = SendQueue::default();
        q.push_shared(Bytes::from_static(b"0123456789"), 1 << 20);
        q.push_shared(Bytes::from_static(b"abcdef"), 1 << 20);
        let mut sock = Trickle {
            out: Vec::new(),
            per_call: 4,
            calls_left: 1,
        };
        q.flush(&mut sock, &mut pool).unwrap();
        q.truncate_to_partial(&mut pool);
        assert_eq!(q.len(), 6);
        sock.calls_left = 10;
        sock.per_call = 100;
        q.flush(&mut sock, &mut pool).unwrap();
        assert_eq!(sock.out, b"0123456789");
        // Nothing written yet: everything goes.
        q.push_shared(Bytes::from_static(b"xyz"), 1 << 20);
        q.truncate_to_partial(&mut pool);
        assert!(q.is_empty());
    }

    #[test]
    fn a_frame_partly_written_by_the_fast_path_survives_truncation() {
        let mut pool = BufPool::default();
        let mut q = SendQueue::default();
        let frame = Bytes::from_static(b"0123456789");
        q.push_shared_after_write(frame, 3);
        q.push_shared(Bytes::from_static(b"next"), 1 << 20);
        q.truncate_to_partial(&mut pool);
        let mut sock = Trickle {
            out: Vec::new(),
            per_call: 100,
            calls_left: 10,
        };
        q.flush(&mut sock, &mut pool).unwrap();
        assert_eq!(
            sock.out, b"3456789",
            "the rest of the frame, and nothing after it"
        );
    }

    #[test]
    fn small_owned_writes_coalesce_into_one_chunk() {
        let mut pool = BufPool::default();
        let mut q = SendQueue::default();
        for _ in 0..100 {
            q.push_owned(&mut pool, 1 << 20, |v| v.extend_from_slice(&[1; 34]));
        }
        assert_eq!(q.chunks.len(), 1);
        assert_eq!(q.len(), 3400);
    }

    /// Echo queues one pool buffer per read. A reader that takes nothing while tiny replies
    /// keep coming, one per read, must hold about its queued bytes in heap, not a pool
    /// buffer's capacity per read: buffers join the owned tail, and the order is kept.
    #[test]
    fn per_read_buffers_join_the_owned_tail() {
        let mut pool = BufPool::default();
        let mut q = SendQueue::default();
        let mut expect = Vec::new();
        for i in 0..20_000u32 {
            let mut v = pool.take();
            v.extend_from_slice(&[0x82, 0x00]);
            v.push(i as u8);
            expect.extend_from_slice(&v);
            q.push_vec(v, &mut pool);
        }
        q.push_vec(pool.take(), &mut pool); // empty: nothing queued
        assert_eq!(q.len(), 60_000);
        // 60,000 bytes in chunks of at most COALESCE_LIMIT: four of them, not 20,000.
        assert_eq!(
            q.chunks.len(),
            60_000usize.div_ceil(COALESCE_LIMIT - COALESCE_LIMIT % 3)
        );
        let held: usize = q
            .chunks
            .iter()
            .map(|c| match c {
                Chunk::Owned(v) => v.capacity(),
                Chunk::Shared(_) => 0,
            })
            .sum();
        assert!(held < 4 * 60_000, "{held} bytes of heap for 60,000 queued");
        let mut sock = Trickle {
            out: Vec::new(),
            per_call: 1 << 20,
            calls_left: 100,
        };
        while !q.is_empty() {
            q.flush(&mut sock, &mut pool).unwrap();
        }
        assert_eq!(sock.out, expect);
    }
}
