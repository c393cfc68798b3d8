//! The shard's poll loop. One pass, in this order:
//!
//! 1. **poll** with a timeout from the timer wheel (0 when reads or deliveries are pending);
//! 2. **accept** until `WouldBlock` (edge-triggered readiness will not repeat);
//! 3. **I/O**: read every readable connection (up to a per-pass budget, so one busy peer
//!    cannot starve the rest), parse frames in the shard's one read buffer, queue replies and
//!    write them right after that connection's reads (one `writev`), so the peer works on
//!    them while we read the next socket; writable connections are only marked dirty;
//! 4. **inbox**: commands from other threads (broadcasts, drain), after clearing the wake flag;
//! 5. **timers**: handshake, heartbeat, pong, close deadlines that are due, then the drain's
//!    next step of closes when it is due (`drain.rs`);
//! 6. **flush**: hub deliveries of the pass go to each channel's subscribers; the pass's
//!    broadcast frames join the broadcast stream and the sweep writes the next blocks of
//!    connections that are behind (`sweep.rs`: one `write` per connection of everything it
//!    lacks, a bounded number of connections per pass, the poll timeout 0 until it is done);
//!    then every connection still dirty (replies, timers, inbox, writable events) goes out in
//!    one `writev`.
//!
//! Events whose token names a connection that is gone (slot free or generation different) are
//! ignored: mio may report readiness for a socket we already closed in the same pass.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll};
use slab::Slab;

use crate::config::{App, Config, SlowPolicy};
use crate::metrics::{CloseReason, Counters, Published};
use crate::proto::{Decoder, Role};
use crate::timer::TimerWheel;

use super::conn::{self, flags, Conn, Phase};
use super::drain::Drain;
use super::listener::{self, Accepted};
use super::send_queue::{BufPool, SendStatus};
use super::{Command, Handle, LISTENER, WAKER};

/// Reads per connection per pass before yielding to the others.
pub(super) const READS_PER_PASS: usize = 4;
/// Commands waiting in a peer shard's inbox above which we stop reading publishers, so a slow
/// shard pushes back on them through TCP instead of buffering without bound.
const PEER_BACKLOG_HIGH: usize = 64;
/// How long accepting pauses after EMFILE.
const ACCEPT_BACKOFF_MS: u64 = 100;
/// How often counters are published for other threads.
const PUBLISH_EVERY_MS: u64 = 250;

/// Timeouts in milliseconds, precomputed from the config.
pub(super) struct Millis {
    pub handshake: u32,
    pub ping: u32,
    pub pong: u32,
    pub idle: u32,
    pub close: u32,
    pub keepalive: u32,
}

/// One shard's whole state. Only its own thread touches it.
pub(crate) struct Shard {
    pub(super) id: usize,
    pub(super) cfg: Arc<Config>,
    pub(super) ms: Millis,
    poll: Poll,
    pub(super) listener: Option<TcpListener>,
    pub(super) conns: Slab<Conn>,
    pub(super) wheel: TimerWheel,
    /// The shard's one read buffer.
    pub(super) read_buf: Vec<u8>,
    pub(super) pool: BufPool,
    /// Connections with output queued this pass.
    pub(super) dirty: Vec<usize>,
    /// Connections whose reads were cut short (budget or backpressure).
    pub(super) pending_reads: Vec<usize>,
    /// Broadcast frames that arrived this pass, committed to `sweep` at its end.
    pub(super) batch: Vec<Bytes>,
    pub(super) batch_msgs: u64,
    /// The broadcast stream and how far each block of connections has been written.
    pub(super) sweep: super::sweep::Sweep,
    /// Frames that came from this shard's own connections this pass, encoded back to back
    /// (to deliver locally and forward to peers as one buffer).
    pub(super) outgoing: BytesMut,
    pub(super) outgoing_msgs: u32,
    /// Partial upgrade requests, by slab index. Rare, so kept out of `Conn`.
    pub(super) partial_hs: HashMap<usize, Vec<u8>>,
    inbox: Receiver<Command>,
    notified: Arc<AtomicBool>,
    peers: Vec<Handle>,
    /// Shards whose drain is not over yet (shared by all): an empty shard keeps serving its
    /// channels' ownership to the others until every shard is done.
    pub(super) busy: Arc<AtomicUsize>,
    generation: u32,
    pub(super) counters: Counters,
    published: Published,
    start: Instant,
    /// This pass's sweeps: one stopped for its budget (the poll must not wait), and the
    /// earliest time a paced sweep may go on.
    pub(super) sweep_ready: bool,
    pub(super) sweep_wake: Option<Instant>,
    /// Milliseconds since `start`, read once per pass.
    pub(super) now: u64,
    accept_paused_until: Option<u64>,
    /// The drain under way, if any (`drain.rs`).
    pub(super) drain: Option<Drain>,
    next_publish: u64,
    pub(super) fired: Vec<usize>,
    /// Channel-protocol state (`--app hub`).
    pub(super) hub: super::hub::HubState,
    /// Hub text messages read this pass, handled once the decoder lets go of the connection.
    pub(super) hub_in: Vec<(usize, Vec<u8>)>,
    /// Origin and token checks, per-connection grants, rate limits, expiries.
    pub(super) admission: super::admission::Admission,
    /// Event streams' channel epochs (`GET /sse`).
    pub(super) sse: super::sse::SseState,
    /// Deliveries held for connections over their bound on `conflate` channels.
    pub(super) held: crate::hub::conflate::Conflation,
    /// The Redis bus, when there is one (`None`: this node numbers its own channels).
    pub(super) bus: Option<crate::bus::BusHandle>,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        id: usize,
        cfg: Arc<Config>,
        poll: Poll,
        mut listener: TcpListener,
        inbox: Receiver<Command>,
        notified: Arc<AtomicBool>,
        peers: Vec<Handle>,
        busy: Arc<AtomicUsize>,
        published: Published,
    ) -> io::Result<Shard> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let ms32 = |d: Duration| d.as_millis().min(u32::MAX as u128 / 4) as u32;
        let ms = Millis {
            handshake: ms32(cfg.handshake_timeout),
            ping: ms32(cfg.ping_interval),
            pong: ms32(cfg.pong_timeout),
            idle: ms32(cfg.idle_timeout),
            close: ms32(cfg.close_timeout),
            keepalive: ms32(cfg.sse_keepalive),
        };
        let admission = super::admission::Admission::new(&cfg);
        Ok(Shard {
            id,
            read_buf: vec![0; cfg.read_buffer_size],
            cfg,
            ms,
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            wheel: TimerWheel::new(),
            pool: BufPool::default(),
            dirty: Vec::new(),
            pending_reads: Vec::new(),
            batch: Vec::new(),
            batch_msgs: 0,
            sweep: Default::default(),
            outgoing: BytesMut::new(),
            outgoing_msgs: 0,
            partial_hs: HashMap::new(),
            inbox,
            notified,
            peers,
            busy,
            generation: 0,
            counters: Counters::default(),
            published,
            start: Instant::now(),
            sweep_ready: false,
            sweep_wake: None,
            now: 0,
            accept_paused_until: None,
            drain: None,
            next_publish: PUBLISH_EVERY_MS,
            fired: Vec::new(),
            hub: Default::default(),
            hub_in: Vec::new(),
            admission,
            sse: Default::default(),
            held: Default::default(),
            bus: None,
        })
    }

    /// Runs until drained or shut down.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        tracing::debug!(shard = self.id, "shard running");
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(shard = self.id, error = %e, "poll failed; shard exits");
                    break;
                }
            }
            let woke = Instant::now();
            self.now = woke.duration_since(self.start).as_millis() as u64;
            self.counters.loop_iterations += 1;

            // 1-2. Accept first: a new connection's first bytes are often already waiting.
            let mut accept_ready = false;
            for ev in events.iter() {
                if ev.token() == LISTENER {
                    accept_ready = true;
                }
            }
            if self.accept_paused_until.is_some_and(|t| self.now >= t) {
                self.accept_paused_until = None;
                accept_ready = true;
            }
            if accept_ready && self.accept_paused_until.is_none() {
                self.accept_all();
            }

            // 3. I/O. Reads are held back while a peer shard is congested (broadcast only).
            let reads_allowed = !self.peers_congested();
            let pending = std::mem::take(&mut self.pending_reads);
            for idx in pending {
                if let Some(c) = self.conns.get_mut(idx) {
                    c.flags &= !flags::READ_PENDING;
                    self.on_readable(idx, reads_allowed, true);
                }
            }
            for ev in events.iter() {
                let token = ev.token();
                if token == LISTENER || token == WAKER {
                    continue;
                }
                let (idx, gen) = conn::split(token);
                // Spurious or stale event: the connection is gone or the slot was reused.
                if self.conns.get(idx).is_none_or(|c| c.generation != gen) {
                    continue;
                }
                if ev.is_writable() {
                    self.mark_dirty(idx);
                }
                let to_end = ev.is_read_closed() || ev.is_error();
                if ev.is_readable() || to_end {
                    self.on_readable(idx, reads_allowed, to_end);
                    // Replies go out now, overlapping the peer's work with ours; a connection
                    // is read once per pass, so this is still one write per pass.
                    self.flush_one(idx);
                }
            }
            self.forward_outgoing();

            // 4. Inbox: clear the flag first so a command sent while we drain wakes us again.
            self.notified.store(false, Ordering::SeqCst);
            let mut exit = false;
            while let Ok(cmd) = self.inbox.try_recv() {
                match cmd {
                    Command::Broadcast { frames, count } => {
                        self.batch.push(frames);
                        self.batch_msgs += count as u64;
                    }
                    Command::Drain(plan) => self.start_drain(plan),
                    Command::Shutdown => exit = true,
                    Command::Hub(c) => self.hub_command(c),
                    Command::Disconnect { user, reply } => {
                        let _ = reply.send(self.disconnect_user(&user));
                    }
                }
                self.hub_drain_self();
            }
            self.hub_drain_self();

            // 5. Timers.
            self.expire_timers();
            self.expire_tokens();
            self.drain_step();

            // 6. Flush.
            self.sweep_ready = false;
            self.sweep_wake = None;
            self.hub_flush_all();
            self.sweep_step();
            self.flush_dirty();

            self.counters.loop_busy_us += woke.elapsed().as_micros() as u64;
            if self.now >= self.next_publish {
                self.next_publish = self.now + PUBLISH_EVERY_MS;
                self.hub_gauges();
                self.published.store(&self.counters);
            }
            if exit || self.drain_over() {
                break;
            }
        }
        let left: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        for idx in left {
            self.remove(idx, CloseReason::Drain);
        }
        self.published.store(&self.counters);
        tracing::info!(shard = self.id, counters = %self.counters, "shard stopped");
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let sweeping = !self.sweep.is_idle() || self.hub_sweeping();
        // A paced sweep that only waits lets the poll sleep until its time comes.
        let paced = sweeping && !self.sweep_ready && self.sweep_wake.is_some();
        if !self.pending_reads.is_empty() || (sweeping && !paced) {
            return Some(Duration::ZERO);
        }
        let mut next = self.now + 1000;
        if let Some(d) = self.wheel.next_deadline() {
            next = next.min(d);
        }
        if let Some(t) = self.accept_paused_until {
            next = next.min(t);
        }
        if let Some(t) = self.drain.as_ref().map(Drain::next_wake) {
            next = next.min(t);
        }
        next = next.min(self.next_publish);
        let timeout = Duration::from_millis(next.saturating_sub(self.now));
        match self.sweep_wake.filter(|_| paced) {
            Some(w) => Some(timeout.min(w.saturating_duration_since(Instant::now()))),
            None => Some(timeout),
        }
    }

    fn peers_congested(&self) -> bool {
        self.cfg.app != App::Echo && self.peers.iter().any(|p| p.backlog() > PEER_BACKLOG_HIGH)
    }

    /// Number of other shards.
    pub(super) fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Sends a command to shard `to` (not this one).
    pub(super) fn send_to_peer(&self, to: usize, cmd: Command) {
        if let Some(p) = self.peers.iter().find(|p| p.id() == to) {
            p.send(cmd);
        }
    }

    fn accept_all(&mut self) {
        let max = self.cfg.max_connections_per_shard;
        loop {
            if self.drain.is_some() {
                return;
            }
            if max != 0 && self.conns.len() >= max {
                // Leave the rest in the kernel's queue; retry after a pause.
                self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF_MS);
                return;
            }
            let Some(l) = self.listener.as_ref() else {
                return;
            };
            match listener::accept(l) {
                Accepted::Conn(stream, _peer) => self.admit(stream),
                Accepted::Drained => return,
                Accepted::Skip => continue,
                Accepted::OutOfFiles => {
                    self.counters.accept_emfile += 1;
                    if self.counters.accept_emfile.is_power_of_two() {
                        tracing::warn!(
                            shard = self.id,
                            open = self.conns.len(),
                            hint = crate::sys::LIMITS_HINT,
                            "out of file descriptors; pausing accept"
                        );
                    }
                    self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF_MS);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: mio::net::TcpStream) {
        self.generation = self.generation.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let idx = entry.key();
        let token = conn::token(idx, self.generation);
        // Edge-triggered, both directions, registered once for the connection's lifetime.
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(shard = self.id, error = %e, "cannot register connection");
            return;
        }
        let decoder = Decoder::new(Role::Server, self.cfg.max_message_size);
        let now = self.now as u32;
        entry.insert(Conn::new(stream, self.generation, decoder, now));
        self.counters.accepted += 1;
        self.counters.open += 1;
        self.wheel.insert(idx, self.now + self.ms.handshake as u64);
    }

    /// Drops a connection now. Closing the fd removes it from epoll, so no deregister call.
    /// `reason` is counted unless the close was already decided (and counted) earlier.
    pub(super) fn remove(&mut self, idx: usize, reason: CloseReason) {
        if let Some(c) = self.conns.try_remove(idx) {
            if self.cfg.app == App::Hub {
                self.hub_forget(idx, c.generation);
            }
            self.admission.remove(idx, c.generation);
            if c.has(flags::HELD) {
                self.held.forget(idx);
            }
            self.wheel.cancel(idx);
            self.partial_hs.remove(&idx);
            if !c.has(flags::COUNTED) {
                self.counters.closed[reason as usize] += 1;
            }
            self.counters.open = self.counters.open.saturating_sub(1);
        }
    }

    pub(super) fn mark_dirty(&mut self, idx: usize) {
        if let Some(c) = self.conns.get_mut(idx) {
            if !c.has(flags::DIRTY) {
                c.flags |= flags::DIRTY;
                self.dirty.push(idx);
            }
        }
    }

    /// Sends this shard's own connections' messages of this pass to every other shard, as one
    /// command per peer (the bytes are shared, not copied).
    fn forward_outgoing(&mut self) {
        if self.outgoing.is_empty() {
            return;
        }
        let frames = self.outgoing.split().freeze();
        let count = std::mem::take(&mut self.outgoing_msgs);
        for p in &self.peers {
            p.send(Command::Broadcast {
                frames: frames.clone(),
                count,
            });
        }
        self.batch.push(frames);
        self.batch_msgs += count as u64;
    }

    /// Closes the connections a delivery found broken or too slow.
    pub(super) fn settle(&mut self, out: Outcome) {
        for idx in out.broken {
            self.remove(idx, CloseReason::PeerGone);
        }
        for idx in out.slow {
            self.fail_slow(idx);
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &idx in &dirty {
            self.flush_one(idx);
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Writes everything queued for one connection (one `writev` unless the socket fills),
    /// if it is marked dirty. Called right after a connection's reads, so a reply leaves while
    /// the shard moves on to the next socket, and again for whatever is left at the end of the
    /// pass.
    pub(super) fn flush_one(&mut self, idx: usize) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if !c.has(flags::DIRTY) {
            return;
        }
        c.flags &= !flags::DIRTY;
        if let Err(e) = write_queue(c, &mut self.pool, &mut self.counters) {
            return self.remove(idx, io_reason(&e));
        }
        let held = c.has(flags::HELD);
        if c.queue.is_empty() && c.has(flags::PEER_EOF) {
            // The peer's EOF came while these bytes waited (`on_eof`): nothing to linger for.
            let r = reason_from(c.reason);
            return self.remove(idx, r);
        }
        if c.queue.is_empty() && c.phase == Phase::Flushing {
            // Our last bytes are out: shut our side and read until the peer's EOF.
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            c.phase = Phase::Lingering;
        }
        if held {
            self.release_held(idx);
        }
    }
}

/// Shard parts a shared delivery touches.
pub(super) struct SendCtx<'a> {
    pub bound: usize,
    /// What to do with a recipient over `bound`.
    pub policy: SlowPolicy,
    pub counters: &'a mut Counters,
    pub dirty: &'a mut Vec<usize>,
    /// For writing out what [`queue_shared`] held back, when it would hold too much.
    pub pool: &'a mut BufPool,
}

/// Connections a delivery could not reach: socket errors, and slow consumers over the bound.
#[derive(Default)]
pub(super) struct Outcome {
    pub broken: Vec<usize>,
    pub slow: Vec<usize>,
    /// Over the bound on a channel that keeps them (drop, conflate): the delivery was not
    /// queued; the channel's policy decides what becomes of it.
    pub over: Vec<usize>,
}

/// Gives one connection a shared frame (carrying `msgs` messages): written straight from the
/// shared buffer when nothing is queued ahead of it (one `write`, no queue entry), else queued
/// by reference behind what is waiting, subject to the queue bound.
pub(super) fn send_shared(
    c: &mut Conn,
    idx: usize,
    frame: &Bytes,
    msgs: u64,
    cx: &mut SendCtx<'_>,
    out: &mut Outcome,
) {
    cx.counters.messages_out += msgs;
    if c.queue.is_empty() {
        match write_direct(&mut c.stream, frame) {
            Ok((n, calls)) => {
                cx.counters.bytes_out += n as u64;
                cx.counters.write_calls += calls;
                if n < frame.len() {
                    c.queue.push_shared_after_write(frame.clone(), n);
                }
            }
            Err(_) => out.broken.push(idx),
        }
    } else if c.queue.push_shared(frame.clone(), cx.bound) == SendStatus::Dropped {
        // Only here, past the bound, does the channel's policy cost anything.
        if cx.policy == SlowPolicy::Disconnect {
            out.slow.push(idx);
        } else {
            cx.counters.messages_out -= msgs;
            out.over.push(idx);
        }
    } else if !c.has(flags::DIRTY) {
        c.flags |= flags::DIRTY;
        cx.dirty.push(idx);
    }
}

/// Most bytes [`queue_shared`] holds back for the end of the pass, and at most a quarter of
/// the backpressure bound: past either, a delivery takes [`send_shared`]'s path.
const DEFER_BYTES: usize = 64 << 10;

/// Like [`send_shared`], but the write waits for the end of the pass (`flush_dirty`): for a
/// connection on several hub channels, whose deliveries from each channel's sweep in one
/// pass then leave in one `writev` instead of one `write` per channel. Same order, same
/// pass, no copy (the queue holds the shared bytes). Returns whether this delivery costs a
/// write of its own (written now, or the first held back for this connection in this pass):
/// what the sweep counts against its per-pass budget.
pub(super) fn queue_shared(
    c: &mut Conn,
    idx: usize,
    frame: &Bytes,
    msgs: u64,
    cx: &mut SendCtx<'_>,
    out: &mut Outcome,
) -> bool {
    let held = c.queue.len();
    let limit = DEFER_BYTES.min(cx.bound / 4);
    let deferring = held > 0 && c.has(flags::DIRTY);
    if frame.is_empty() || held + frame.len() > limit || (held > 0 && !deferring) {
        if deferring {
            // What this pass held back leaves now, so that this delivery meets the socket
            // as it would have without the hold, instead of piling up behind it towards the
            // bound (a client that keeps up must not look slow).
            if write_queue(c, cx.pool, cx.counters).is_err() {
                out.broken.push(idx);
                return true;
            }
        }
        send_shared(c, idx, frame, msgs, cx, out);
        return true;
    }
    cx.counters.messages_out += msgs;
    if held == 0 {
        // What a direct write would have left queued: accepted whatever the bound.
        c.queue.push_shared_after_write(frame.clone(), 0);
    } else {
        // Under the limit above, a quarter of the bound: always queued.
        let status = c.queue.push_shared(frame.clone(), cx.bound);
        debug_assert_eq!(status, SendStatus::Queued);
    }
    if c.has(flags::DIRTY) {
        return false;
    }
    c.flags |= flags::DIRTY;
    cx.dirty.push(idx);
    true
}

/// Joins frames into one buffer (no copy when there is only one).
pub(super) fn concat(mut frames: Vec<Bytes>) -> Bytes {
    if frames.len() == 1 {
        return frames.pop().unwrap_or_default();
    }
    let len = frames.iter().map(Bytes::len).sum();
    let mut out = BytesMut::with_capacity(len);
    for f in &frames {
        out.extend_from_slice(f);
    }
    out.freeze()
}

/// Writes what the connection has queued (one `writev` unless the socket fills), counting
/// the bytes and calls.
pub(super) fn write_queue(
    c: &mut Conn,
    pool: &mut BufPool,
    counters: &mut Counters,
) -> io::Result<()> {
    let f = c.queue.flush(&mut c.stream, pool)?;
    counters.bytes_out += f.bytes as u64;
    counters.write_calls += f.calls as u64;
    Ok(())
}

/// Writes as much of `buf` as the socket takes. Returns (bytes, calls).
fn write_direct<W: Write>(w: &mut W, buf: &[u8]) -> io::Result<(usize, u64)> {
    let mut off = 0;
    let mut calls = 0;
    while off < buf.len() {
        calls += 1;
        match w.write(&buf[off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok((off, calls))
}

/// Maps a socket error to the counter it belongs in.
pub(super) fn io_reason(e: &io::Error) -> CloseReason {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => CloseReason::PeerGone,
        _ => CloseReason::IoError,
    }
}

/// The reason stored in `Conn::reason`.
pub(super) fn reason_from(v: u8) -> CloseReason {
    CloseReason::ALL
        .get(v as usize)
        .copied()
        .unwrap_or(CloseReason::IoError)
}
