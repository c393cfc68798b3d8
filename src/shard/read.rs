//! The read path of a shard: socket bytes into the shard's one read buffer, then either the
//! upgrade request (handshake phase) or frames (open/closing), and the application's reaction
//! (echo or broadcast) queued for the flush at the end of the pass.
//!
//! Reads stop at a short read. On Linux an edge-triggered socket reports readiness again for
//! every new segment, so a read that did not fill the buffer proves the queue was empty at that
//! moment, and the extra read that would only return `WouldBlock` is skipped: one syscall per
//! message saved on the echo path. The exception is an event that already carries read-closed
//! (FIN) or an error: no further edge will come, so those are read to the end.

use std::io::{self, Read};

use crate::config::App;
use crate::metrics::CloseReason;
use crate::proto::handshake::{self, Request, ServerLimits};
use crate::proto::{frame, CloseCode, Event, Flow, OpCode, MAX_HEADER_LEN};

use super::conn::{flags, Phase, TimerKind};
use super::event_loop::{io_reason, reason_from, Shard, READS_PER_PASS};
use super::send_queue::SendStatus;

/// Where the bytes to parse are.
enum Src {
    /// `read_buf[..n]`.
    ReadBuf(usize),
    /// Left over after an upgrade request that arrived in pieces.
    Owned(Vec<u8>),
}

/// What the frames of one read asked for, applied after the decoder lets go of the connection.
#[derive(Default)]
struct After {
    close: Option<Option<(CloseCode, String)>>,
    slow: bool,
    binary: bool,
}

impl Shard {
    /// Reads what the socket has (up to the per-pass budget) and acts on it.
    /// `to_end`: read until `WouldBlock`/EOF even after a short read.
    pub(super) fn on_readable(&mut self, idx: usize, reads_allowed: bool, to_end: bool) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if c.phase == Phase::Open && !reads_allowed {
            // A peer shard is congested: leave the bytes in the kernel so TCP pushes back on
            // the sender; retry next pass.
            self.defer_read(idx);
            return;
        }
        for _ in 0..READS_PER_PASS {
            let Some(c) = self.conns.get_mut(idx) else {
                return;
            };
            self.counters.read_calls += 1;
            let n = match c.stream.read(&mut self.read_buf) {
                Ok(0) => {
                    self.on_eof(idx);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let r = io_reason(&e);
                    self.remove(idx, r);
                    return;
                }
            };
            self.counters.bytes_in += n as u64;
            c.last_seen = self.now as u32;
            c.flags |= flags::SEEN;
            match c.phase {
                Phase::Handshaking => self.on_handshake_bytes(idx, n),
                Phase::Open | Phase::Closing => self.on_frames(idx, Src::ReadBuf(n)),
                // Our last bytes are queued or sent, or this is an event stream, which takes
                // no input: read only to reach EOF.
                Phase::Flushing | Phase::Lingering | Phase::Stream => {}
            }
            if n < self.read_buf.len() && !to_end {
                return;
            }
        }
        self.defer_read(idx);
    }

    fn defer_read(&mut self, idx: usize) {
        if let Some(c) = self.conns.get_mut(idx) {
            if !c.has(flags::READ_PENDING) {
                c.flags |= flags::READ_PENDING;
                self.pending_reads.push(idx);
            }
        }
    }

    fn on_eof(&mut self, idx: usize) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if matches!(c.phase, Phase::Flushing | Phase::Closing) && !c.queue.is_empty() {
            // A peer that shut its sending side may still read, and it is owed what is queued
            // (our close frame, §5.5.1; an HTTP error). It goes out first, now or as the
            // socket takes it; the close timer bounds the wait.
            c.flags |= flags::PEER_EOF;
            self.mark_dirty(idx);
            self.flush_one(idx);
            return;
        }
        let r = match c.phase {
            // EOF after our last bytes: the clean end of a close or an HTTP error.
            Phase::Lingering | Phase::Flushing | Phase::Closing => reason_from(c.reason),
            Phase::Handshaking | Phase::Open => CloseReason::PeerGone,
            // Closing the connection is how an event stream's client says it is done.
            Phase::Stream => CloseReason::Normal,
        };
        self.remove(idx, r);
    }

    fn on_handshake_bytes(&mut self, idx: usize, n: usize) {
        let limits = ServerLimits {
            max_header_bytes: self.cfg.max_header_bytes,
            protocols: &self.cfg.protocols,
        };
        let mut owned = self.partial_hs.remove(&idx);
        let parsed = match owned.as_mut() {
            Some(buf) => {
                buf.extend_from_slice(&self.read_buf[..n]);
                handshake::parse_request(buf, &limits)
            }
            None => handshake::parse_request(&self.read_buf[..n], &limits),
        };
        match parsed {
            Ok(None) => {
                let buf = owned.unwrap_or_else(|| self.read_buf[..n].to_vec());
                self.partial_hs.insert(idx, buf);
            }
            Ok(Some((Request::Health, _))) => {
                self.finish_with(idx, CloseReason::Normal, false, |v| {
                    v.extend_from_slice(handshake::HEALTH_RESPONSE)
                });
            }
            Ok(Some((Request::EventStream(req), _))) => self.sse_open(idx, req),
            Ok(Some((Request::Upgrade(up), consumed))) => {
                // Origin and token are checked before any 101 goes out.
                let (origin, auth) = (up.origin.as_deref(), up.authorization.as_deref());
                match self
                    .admission
                    .admit(origin, auth, &up.path, self.now as u32)
                {
                    Ok(None) => {}
                    Ok(Some(session)) => {
                        let gen = self.conns[idx].generation;
                        self.admission.insert(idx, gen, session);
                        if self.cfg.app == App::Hub {
                            self.users_admitted(idx, gen);
                        }
                    }
                    Err(refusal) => {
                        self.finish_with(idx, CloseReason::BadHandshake, false, |v| {
                            v.extend_from_slice(&refusal)
                        });
                        return;
                    }
                }
                // Broadcasts committed before this connection opened are not its own.
                self.sweep_join(idx);
                let protocols = &self.cfg.protocols;
                let c = &mut self.conns[idx];
                c.queue.push_owned(&mut self.pool, usize::MAX, |v| {
                    handshake::write_response(v, &up, protocols)
                });
                c.phase = Phase::Open;
                c.last_data = self.now as u32;
                self.counters.upgraded += 1;
                let first = match self.ms.idle {
                    0 => self.ms.ping,
                    idle => self.ms.ping.min(idle),
                };
                self.set_timer(idx, TimerKind::Heartbeat, first);
                self.mark_dirty(idx);
                // Frames sent right behind the request belong to the WebSocket stream.
                match owned {
                    Some(mut buf) if buf.len() > consumed => {
                        let rest = buf.split_off(consumed);
                        self.on_frames(idx, Src::Owned(rest));
                    }
                    None if n > consumed => {
                        self.read_buf.copy_within(consumed..n, 0);
                        self.on_frames(idx, Src::ReadBuf(n - consumed));
                    }
                    _ => {}
                }
            }
            Err(e) => {
                tracing::debug!(shard = self.id, error = %e, "bad upgrade request");
                self.finish_with(idx, CloseReason::BadHandshake, false, |v| {
                    v.extend_from_slice(&e.response())
                });
            }
        }
    }

    fn on_frames(&mut self, idx: usize, src: Src) {
        let Shard {
            conns,
            read_buf,
            pool,
            counters,
            outgoing,
            outgoing_msgs,
            hub_in,
            cfg,
            now,
            ..
        } = self;
        let Some(c) = conns.get_mut(idx) else {
            return;
        };
        let mut owned;
        let data: &mut [u8] = match src {
            Src::ReadBuf(n) => &mut read_buf[..n],
            Src::Owned(v) => {
                owned = v;
                &mut owned[..]
            }
        };
        let phase = c.phase;
        let app = cfg.app;
        let bound = cfg.max_backpressure;
        let tick = *now as u32;
        let queue = &mut c.queue;
        let last_data = &mut c.last_data;
        let mut after = After::default();
        // Echo: the replies of this whole read are encoded back to back into one buffer and
        // queued once, the bound checked once before (a read adds what it completes: about
        // its own bytes, or one message gathered over earlier reads). A queue already over its
        // bound refuses the first message, as a push would.
        let mut echo_out =
            (app == App::Echo && phase.sends_data() && queue.len() <= bound).then(|| pool.take());
        let res = c.decoder.feed(data, |ev| {
            match ev {
                Event::Text(p) | Event::Binary(p) => {
                    let op = if matches!(ev, Event::Text(_)) {
                        OpCode::Text
                    } else {
                        OpCode::Binary
                    };
                    counters.messages_in += 1;
                    *last_data = tick;
                    // Data received after we sent Close is read and discarded (§5.5.1).
                    if !phase.sends_data() {
                        return Flow::Continue;
                    }
                    match app {
                        App::Echo => {
                            let Some(out) = echo_out.as_mut() else {
                                after.slow = true;
                                return Flow::Stop;
                            };
                            frame::encode_frame_into(out, op, p, None);
                            counters.messages_out += 1;
                        }
                        App::Hub if op == OpCode::Binary => {
                            // The channel protocol is JSON text (docs/PROTOCOL.md).
                            after.binary = true;
                            return Flow::Stop;
                        }
                        App::Hub => hub_in.push((idx, p.to_vec())),
                        App::Broadcast => {
                            let mut h = [0u8; MAX_HEADER_LEN];
                            let hl = frame::encode_header(&mut h, true, op, p.len() as u64, None);
                            outgoing.extend_from_slice(&h[..hl]);
                            outgoing.extend_from_slice(p);
                            *outgoing_msgs += 1;
                        }
                    }
                }
                Event::Ping(p) => {
                    // "Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in
                    // response ... unless it already received a Close frame" (§5.5.2).
                    if let Some(out) = echo_out.as_mut() {
                        // Behind the echo replies read before it, in order.
                        frame::encode_frame_into(out, OpCode::Pong, p, None);
                    } else if phase.sends_data() {
                        let st = queue.push_owned(pool, bound, |v| {
                            frame::encode_frame_into(v, OpCode::Pong, p, None)
                        });
                        if st == SendStatus::Dropped {
                            after.slow = true;
                            return Flow::Stop;
                        }
                    }
                }
                Event::Pong(_) => {}
                Event::Close(code) => {
                    after.close = Some(code.map(|(c, r)| (c, r.to_string())));
                    return Flow::Stop;
                }
            }
            Flow::Continue
        });
        if let Some(out) = echo_out {
            c.queue.push_vec(out, pool);
        }
        let queued = !c.queue.is_empty();
        if queued {
            self.mark_dirty(idx);
        }
        for (i, text) in std::mem::take(&mut self.hub_in) {
            self.hub_message(i, &text);
        }
        if let Err(e) = res {
            tracing::debug!(shard = self.id, error = %e, "protocol error");
            self.fail(idx, e.close_code(), &e.to_string(), CloseReason::Protocol);
        } else if after.slow {
            self.fail_slow(idx);
        } else if after.binary {
            self.fail(
                idx,
                CloseCode::UNSUPPORTED,
                "the channel protocol is JSON text",
                CloseReason::Protocol,
            );
        } else if let Some(code) = after.close {
            self.on_peer_close(idx, code.map(|(c, _)| c));
        }
    }

    /// The peer sent Close. If we had not, answer with the same code (§5.5.1: "the endpoint
    /// typically echos the status code it received"); either way the handshake is complete, so
    /// end the connection once our bytes are out — the server closes TCP first (§7.1.1).
    fn on_peer_close(&mut self, idx: usize, code: Option<CloseCode>) {
        let Some(c) = self.conns.get(idx) else {
            return;
        };
        match c.phase {
            Phase::Open => self.finish_with(idx, CloseReason::Normal, false, |v| {
                let mut p = [0u8; 2];
                // The reply echoes the code (§5.5.1), except 1010, which "is not used by the
                // server" (§7.4.1): a client leaving over extensions gets 1000 back.
                let n = match code {
                    Some(code) => {
                        let code = if code.0 == 1010 {
                            CloseCode::NORMAL
                        } else {
                            code
                        };
                        p = code.0.to_be_bytes();
                        2
                    }
                    None => 0,
                };
                frame::encode_frame_into(v, OpCode::Close, &p[..n], None)
            }),
            Phase::Closing => {
                let r = reason_from(c.reason);
                self.finish_with(idx, r, false, |_| {});
            }
            _ => {}
        }
    }
}
