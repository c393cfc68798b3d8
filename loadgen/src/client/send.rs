//! The write side of a connection: what is queued into the thread's cork buffer
//! (`io.scratch`: echo frames, fanout publishes, the hub subscribe, our Close) and the one
//! `write` that flushes it, keeping only what the socket did not take.

use std::io::{self, Write};

use rand::RngCore;
use starling::proto::frame::encode_frame_into;
use starling::proto::{CloseCode, OpCode};

use super::{Conn, Io, Outcome, State};

impl Conn {
    /// Writes what is queued: `io.scratch` after any older unwritten bytes. One `write` when
    /// nothing is pending (the common case); what the socket does not take is kept and
    /// written on the next writable event.
    pub fn flush(&mut self, io: &mut Io) -> Outcome {
        if self.out.is_empty() {
            if io.scratch.is_empty() {
                return Outcome::Keep;
            }
            let written = match self.write_some(io, true) {
                Ok(n) => n,
                Err(o) => return o,
            };
            if written < io.scratch.len() {
                self.out.extend_from_slice(&io.scratch[written..]);
            }
            io.scratch.clear();
            return Outcome::Keep;
        }
        self.out.extend_from_slice(&io.scratch);
        io.scratch.clear();
        match self.write_some(io, false) {
            Ok(n) => {
                self.out.drain(..n);
                if self.out.is_empty() {
                    // Give back the overflow buffer: a backlog is the exception.
                    self.out = Vec::new();
                }
                Outcome::Keep
            }
            Err(o) => o,
        }
    }

    /// One write of `io.scratch` (`from_scratch`) or `self.out`.
    fn write_some(&mut self, io: &mut Io, from_scratch: bool) -> Result<usize, Outcome> {
        let bytes = if from_scratch { &io.scratch } else { &self.out };
        loop {
            io.stats.c.writes += 1;
            match self.stream.write(bytes) {
                Ok(n) => {
                    io.stats.c.bytes_sent += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.on_error(io, &e)),
            }
        }
    }

    /// Bytes waiting for the socket.
    pub fn backlog(&self) -> usize {
        self.out.len()
    }

    /// Queues `n` echo messages into `io.scratch`, each masked with a fresh key, and notes
    /// them in flight as sent at `t`.
    pub fn queue_echo(&mut self, io: &mut Io, n: u32, t: u64) {
        io.frames.push(&mut io.scratch, n as usize, &mut io.rng);
        io.stats.c.messages_sent += u64::from(n);
        self.inflight.push(t, n);
    }

    /// Queues one fanout message stamped `(publisher, seq, intended, now)` into
    /// `io.scratch`: raw, the binary stamp written into the padded `io.payload`; hub, a
    /// publish command to the publisher's next channel in turn, whose index is returned.
    pub fn queue_publish(&mut self, io: &mut Io, publisher: u32, intended_ns: u64) -> Option<u32> {
        let stamp = crate::workload::Stamp {
            publisher,
            seq: self.seq,
            intended_ns,
            sent_ns: io.now,
        };
        let key = io.rng.next_u32().to_ne_bytes();
        let channel = match &mut io.hub {
            None => {
                crate::workload::write_stamp(&mut io.payload, stamp);
                encode_frame_into(&mut io.scratch, OpCode::Binary, &io.payload, Some(key));
                None
            }
            Some(hub) => {
                let c = crate::hub::channel_of(publisher, self.seq, hub.channels());
                hub.cmd.clear();
                crate::hub::write_publish(&mut hub.cmd, &hub.names[c as usize], &stamp, hub.size);
                encode_frame_into(&mut io.scratch, OpCode::Text, &hub.cmd, Some(key));
                if let Some(n) = io.stats.channels.published.get_mut(c as usize) {
                    *n += 1;
                }
                Some(c)
            }
        };
        self.seq += 1;
        io.stats.c.messages_sent += 1;
        io.stats.c.published += 1;
        channel
    }

    /// Hub subscriber or listener, just upgraded: queues the subscribe to its channel and
    /// waits for the reply in `Subscribing`. Nothing in raw mode.
    pub(super) fn queue_subscribe(&mut self, io: &mut Io) {
        let Some(hub) = &mut io.hub else {
            return;
        };
        hub.cmd.clear();
        crate::hub::write_subscribe(&mut hub.cmd, 0, &hub.names[self.sub.channel as usize]);
        let key = io.rng.next_u32().to_ne_bytes();
        encode_frame_into(&mut io.scratch, OpCode::Text, &hub.cmd, Some(key));
        self.state = State::Subscribing;
    }

    /// connect, churn `--first-message`, just upgraded: queues the text, `{n}` replaced by
    /// this connection's global index. Nothing without the flag.
    pub(super) fn queue_first_message(&mut self, io: &mut Io) {
        let Io {
            first_message,
            scratch,
            rng,
            stats,
            ..
        } = io;
        let Some(text) = first_message else {
            return;
        };
        let key = rng.next_u32().to_ne_bytes();
        if text.contains("{n}") {
            let body = text.replace("{n}", &self.global.to_string());
            encode_frame_into(scratch, OpCode::Text, body.as_bytes(), Some(key));
        } else {
            encode_frame_into(scratch, OpCode::Text, text.as_bytes(), Some(key));
        }
        stats.c.messages_sent += 1;
    }

    /// Queues our Close (1000) and enters `Closing`.
    pub fn queue_close(&mut self, io: &mut Io) {
        let code = CloseCode::NORMAL.0.to_be_bytes();
        encode_frame_into(
            &mut io.scratch,
            OpCode::Close,
            &code,
            Some(io.rng.next_u32().to_ne_bytes()),
        );
        self.state = State::Closing;
        self.close_ns = io.now;
    }
}
