//! One client connection: its socket, its phase, and what it does with what it reads.
//!
//! Lifecycle: `Connecting` (non-blocking connect in progress; the upgrade request is written
//! as soon as the socket is writable) -> `Handshaking` (request sent, reading the 101) ->
//! [`Subscribing`](State::Subscribing) (hub subscribers only: subscribe sent, waiting for
//! the reply) -> `Open` (frames parsed in place by the engine's [`Decoder`] in client role;
//! our frames are masked with a fresh key each) -> `Closing` (we sent Close, waiting for
//! the server's) ->
//! `AwaitEof` (close handshake done, waiting for the server to close TCP first, so the
//! TIME_WAIT lands on its side as RFC 6455 §7.1.1 intends) -> dropped.
//!
//! Buffers: the read buffer and the write (cork) buffer belong to the thread ([`Io`]), not
//! the connection. A connection keeps bytes of its own only for what the socket did not take
//! (`out`, empty almost always) and a handshake response cut between reads (`hs`). So each
//! readiness event costs one `read` and at most one `write`, and an idle connection holds no
//! buffer at all.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use rand::rngs::StdRng;
use rand::RngCore;
use socket2::{Domain, Protocol, Socket, Type};
use starling::proto::frame::encode_frame_into;
use starling::proto::handshake::{self, HandshakeError};
use starling::proto::{CloseCode, Decoder, Event, Flow, OpCode, Role};
use starling::sys::set_int_sockopt;

mod send;

use crate::hub::session::{on_publisher_message, HubIo, Rx, Subscription};
use crate::inflight::Fifo;
use crate::stats::{record, Stats};
use crate::workload::{read_stamp, same, Arrival, SeqTrack};

/// `IP_LOCAL_PORT_RANGE` (linux/in.h, Linux 6.3): a per-socket narrowing of the ephemeral
/// range, `(high << 16) | low`; the libc crate does not name it yet.
const IP_LOCAL_PORT_RANGE: libc::c_int = 51;

/// How a new connection's local port is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalPort {
    /// The kernel's choice at connect() time.
    Kernel,
    /// This port, bound before connect() (`addr::explicit_ports`).
    Own(u16),
    /// The kernel's choice, among `[first, last]` only (IP_LOCAL_PORT_RANGE, Linux 6.3 and
    /// later; the whole range where the kernel lacks it).
    Within(u16, u16),
}

/// Largest upgrade response we wait for before calling it malformed.
const MAX_RESPONSE: usize = 16 * 1024;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// connect() in progress; the request is not written yet.
    Connecting,
    /// Request written; waiting for the 101.
    Handshaking,
    /// Hub subscriber: upgraded, subscribe sent, waiting for the reply. Still pending: it
    /// counts against the handshake timeout, and the ramp is not over until it is answered.
    Subscribing,
    /// Upgraded; data flows.
    Open,
    /// We sent Close; waiting for the server's Close.
    Closing,
    /// Close handshake done; waiting for the server's FIN.
    AwaitEof,
}

impl State {
    /// Still establishing: counts against the handshake concurrency and the timeout.
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            State::Connecting | State::Handshaking | State::Subscribing
        )
    }
}

/// What the connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Sends payloads and expects them back, in order.
    Echo,
    /// Receives stamped broadcasts and checks their sequence.
    Subscriber,
    /// Sends stamped messages for fanout, with this global publisher id.
    Publisher(u32),
    /// Just holds the connection (connect) or runs one cycle (churn).
    Hold,
    /// connect --subscribe: holds the connection subscribed to the one hub channel and
    /// counts what is published to it.
    Listener,
}

/// Per-thread state a connection borrows while it handles an event.
pub struct Io {
    /// The thread's one read buffer.
    pub buf: Vec<u8>,
    /// The thread's cork buffer: frames for one connection are gathered here, then written
    /// with one `write`.
    pub scratch: Vec<u8>,
    /// Counters and whole-run histograms.
    pub stats: Stats,
    /// Message latency since the last progress tick (merged into `stats` at each tick).
    pub interval: Histogram<u64>,
    /// Source of masking keys and handshake nonces. ChaCha12, seeded from the OS once per
    /// thread: unpredictable keys as §5.3 asks, at a few ns per key and no syscall.
    pub rng: StdRng,
    /// The time this event is handled at (one clock read per readiness event).
    pub now: u64,
    /// Echo payload (the bytes every echo must return); fanout: the padded message the
    /// stamp is written into.
    pub payload: Vec<u8>,
    /// The echo frames, pre-encoded.
    pub frames: crate::workload::FrameBatch,
    /// Global publisher count (fanout): sizes each subscriber's sequence table.
    pub publishers: u32,
    /// `fanout --mode hub`: the channel protocol's per-thread state.
    pub hub: Option<HubIo>,
    /// connect, churn `--first-message`.
    pub first_message: Option<String>,
    /// Largest message accepted.
    pub max_message: usize,
    /// Set TCP_NODELAY (anything that sends more than the request).
    pub nodelay: bool,
    /// Set TCP_FASTOPEN_CONNECT (`--fastopen`).
    pub fastopen: bool,
    /// Whether data messages received now count towards the measured rate.
    pub measuring: bool,
}

/// What the caller must do with the connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Keep it.
    Keep,
    /// Remove and close it (its fate is already counted).
    Drop,
}

/// One connection.
pub struct Conn {
    stream: TcpStream,
    /// Phase.
    pub state: State,
    /// Purpose.
    pub part: Part,
    /// Global index (decides the address pair; identifies the connection in timeouts).
    pub global: u64,
    /// Index of the target (for the Host header).
    pub target: usize,
    key: [u8; 24],
    /// When the schedule wanted this connection started.
    pub intended_ns: u64,
    /// When connect() was called.
    pub started_ns: u64,
    decoder: Decoder,
    /// A handshake response cut between reads.
    hs: Vec<u8>,
    /// Bytes the socket has not taken yet.
    out: Vec<u8>,
    /// Echo: messages in flight.
    pub inflight: Fifo,
    /// Subscriber: per-publisher sequence state.
    seqs: Vec<SeqTrack>,
    /// Hub subscriber: its channel and the server's sequence on it.
    pub sub: Subscription,
    /// Rate-driven sender: next sequence number (publisher) / messages sent. Listener:
    /// deliveries heard.
    pub seq: u64,
    /// Rate-driven sender: intended time of the next message.
    pub next_ns: u64,
    /// When we sent Close.
    pub close_ns: u64,
}

impl Conn {
    /// Opens a non-blocking socket and starts connecting. With [`LocalPort::Own`], the
    /// socket is bound to that port first (on `source`, or on the unspecified address), with
    /// SO_REUSEADDR so that this run's connections to other targets may share it; a port in
    /// use towards the same target fails with EADDRINUSE or EADDRNOTAVAIL. Otherwise, with a
    /// source address the socket is bound first with IP_BIND_ADDRESS_NO_PORT, so the kernel
    /// picks the port at connect time per 4-tuple instead of reserving one per source
    /// address at bind time.
    pub fn connect(
        source: Option<IpAddr>,
        port: LocalPort,
        target: SocketAddr,
        nodelay: bool,
        fastopen: bool,
    ) -> io::Result<TcpStream> {
        let socket = Socket::new(
            Domain::for_address(target),
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        let fd = socket.as_raw_fd();
        if let LocalPort::Own(port) = port {
            let ip = source.unwrap_or(match target {
                SocketAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            });
            socket.set_reuse_address(true)?;
            socket.bind(&SocketAddr::new(ip, port).into())?;
        } else {
            if let LocalPort::Within(lo, hi) = port {
                let range = (u32::from(hi) << 16) | u32::from(lo);
                let _ = set_int_sockopt(fd, libc::IPPROTO_IP, IP_LOCAL_PORT_RANGE, range as i32);
            }
            if let Some(ip) = source {
                // The port is then chosen at connect() time, per 4-tuple, not per source
                // address.
                set_int_sockopt(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
                socket.bind(&SocketAddr::new(ip, 0).into())?;
            }
        }
        if nodelay {
            socket.set_nodelay(true)?;
        }
        if fastopen {
            // connect() then returns at once without a SYN; the first write sends SYN + data.
            set_int_sockopt(fd, libc::IPPROTO_TCP, libc::TCP_FASTOPEN_CONNECT, 1)?;
        }
        match socket.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(socket.into()))
    }

    /// A connection whose connect() is in progress.
    pub fn new(stream: TcpStream, part: Part, global: u64, target: usize, io: &mut Io) -> Conn {
        let mut nonce = [0u8; 16];
        io.rng.fill_bytes(&mut nonce);
        Conn {
            stream,
            state: State::Connecting,
            part,
            global,
            target,
            key: handshake::client_key(nonce),
            intended_ns: io.now,
            started_ns: io.now,
            decoder: Decoder::new(Role::Client, io.max_message),
            hs: Vec::new(),
            out: Vec::new(),
            inflight: Fifo::default(),
            seqs: match part {
                Part::Subscriber => vec![SeqTrack::default(); io.publishers as usize],
                _ => Vec::new(),
            },
            // Subscribers take turns over the channels by global index.
            sub: Subscription::new(
                io.hub
                    .as_ref()
                    .map_or(0, |h| (global % u64::from(h.channels())) as u32),
            ),
            seq: 0,
            next_ns: 0,
            close_ns: 0,
        }
    }

    /// Writes the upgrade request, if the socket takes it. `request` is built by the caller
    /// (it knows the host, path and headers); the key is ours.
    pub fn send_request(
        &mut self,
        io: &mut Io,
        request: impl Fn(&mut Vec<u8>, &[u8; 24]),
    ) -> Outcome {
        io.scratch.clear();
        request(&mut io.scratch, &self.key);
        let written = self.stream.write(&io.scratch);
        // The request must not stay in the cork buffer: the caller flushes it next.
        let request_len = io.scratch.len();
        match written {
            Ok(n) => {
                io.stats.c.writes += 1;
                io.stats.c.bytes_sent += n as u64;
                if n < request_len {
                    self.out.extend_from_slice(&io.scratch[n..]);
                }
                io.scratch.clear();
                self.state = State::Handshaking;
                Outcome::Keep
            }
            // Still connecting: the writable event will bring us back.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                io.stats.c.writes += 1;
                io.scratch.clear();
                Outcome::Keep
            }
            Err(e) => {
                io.stats.c.writes += 1;
                io.scratch.clear();
                io.stats.failures.count_io(&e);
                Outcome::Drop
            }
        }
    }

    /// Handles readability: read until the socket is drained, decode, react. Leaves any
    /// frames to send in `io.scratch` (the caller flushes them with [`Conn::flush`]).
    /// Returns the outcome and, for echo, how many replies arrived.
    ///
    /// `peer_closed`: the readiness event reported the peer's FIN (EPOLLRDHUP). Then a short
    /// read does not mean "drained": the EOF is already queued behind the data and no new
    /// edge will announce it, so reading goes on until it is seen.
    pub fn on_readable(&mut self, io: &mut Io, peer_closed: bool) -> (Outcome, u32) {
        let mut replies = 0u32;
        loop {
            let n = match self.stream.read(&mut io.buf) {
                Ok(0) => {
                    io.stats.c.reads += 1;
                    return (self.on_eof(io), replies);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    io.stats.c.reads += 1;
                    return (Outcome::Keep, replies);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    io.stats.c.reads += 1;
                    return (self.on_error(io, &e), replies);
                }
            };
            io.stats.c.reads += 1;
            io.stats.c.bytes_received += n as u64;
            let outcome = match self.state {
                State::Connecting | State::Handshaking => self.on_response(io, n, &mut replies),
                _ => self.on_frames(io, 0, n, &mut replies),
            };
            if outcome == Outcome::Drop {
                return (outcome, replies);
            }
            // A short read means the receive queue was empty when read returned; any byte
            // arriving later raises a new edge, so one read per readiness event suffices.
            if n < io.buf.len() && !peer_closed {
                return (Outcome::Keep, replies);
            }
        }
    }

    /// The bytes `io.buf[..n]` while waiting for the 101.
    fn on_response(&mut self, io: &mut Io, n: usize, replies: &mut u32) -> Outcome {
        let parsed = if self.hs.is_empty() {
            handshake::parse_response(&io.buf[..n], &self.key, MAX_RESPONSE)
        } else {
            self.hs.extend_from_slice(&io.buf[..n]);
            handshake::parse_response(&self.hs, &self.key, MAX_RESPONSE)
        };
        match parsed {
            Ok(None) => {
                if self.hs.is_empty() {
                    self.hs.extend_from_slice(&io.buf[..n]);
                }
                Outcome::Keep
            }
            Ok(Some((_resp, consumed))) => {
                self.state = State::Open;
                if matches!(self.part, Part::Subscriber | Part::Listener) {
                    self.queue_subscribe(io);
                } else if self.part == Part::Hold {
                    self.queue_first_message(io);
                }
                let s = &mut io.stats;
                s.c.handshakes += 1;
                record(&mut s.handshake, io.now.saturating_sub(self.started_ns), 1);
                record(
                    &mut s.handshake_corrected,
                    io.now.saturating_sub(self.intended_ns),
                    1,
                );
                if self.hs.is_empty() {
                    self.on_frames(io, consumed, n, replies)
                } else {
                    // Rare: the response came in pieces. Frames after it are in `hs`.
                    let mut rest = std::mem::take(&mut self.hs);
                    let len = rest.len();
                    io.buf[..len - consumed].copy_from_slice(&rest[consumed..]);
                    rest.clear();
                    self.on_frames(io, 0, len - consumed, replies)
                }
            }
            Err(HandshakeError::Status(code)) => {
                *io.stats.failures.http_status.entry(code).or_default() += 1;
                Outcome::Drop
            }
            Err(_) => {
                io.stats.failures.bad_handshake += 1;
                Outcome::Drop
            }
        }
    }

    /// Decodes `io.buf[from..to]` and reacts to each event.
    fn on_frames(&mut self, io: &mut Io, from: usize, to: usize, replies: &mut u32) -> Outcome {
        let Conn {
            decoder,
            inflight,
            seqs,
            sub,
            state,
            part,
            close_ns,
            seq,
            ..
        } = self;
        let Io {
            buf,
            scratch,
            stats,
            interval,
            rng,
            now,
            payload,
            measuring,
            hub,
            frames,
            max_message,
            ..
        } = io;
        let now = *now;
        let mut from = from;
        if *part == Part::Echo && decoder.awaits_frame() && payload.len() <= *max_message {
            // Replies that are byte for byte the expected frame are counted without being
            // decoded (`FrameBatch::leading_replies` says why that is exact); anything else,
            // from the first frame that differs, goes through the decoder.
            let k = frames.leading_replies(&buf[from..to]);
            if k > 0 {
                let k64 = k as u64;
                stats.c.messages_received += k64;
                if *measuring {
                    stats.c.measured_received += k64;
                }
                stats.c.mismatches += k64 - inflight.take_n(now, k64, interval);
                *replies += k as u32;
                from += k * frames.reply_len();
            }
        }
        let mut server_closed = None;
        let fed = decoder.feed(&mut buf[from..to], |ev| {
            match ev {
                Event::Binary(p) | Event::Text(p) => {
                    stats.c.messages_received += 1;
                    if *measuring {
                        stats.c.measured_received += 1;
                    }
                    match (*part, &mut *hub) {
                        (Part::Subscriber, Some(hub)) => {
                            let pending = *state == State::Subscribing;
                            let mut rx = Rx {
                                stats,
                                interval,
                                now,
                                measuring: *measuring,
                                hub,
                            };
                            if sub.on_message(p, pending, seqs, &mut rx) {
                                *state = State::Open;
                            }
                        }
                        (Part::Listener, Some(hub)) => {
                            let pending = *state == State::Subscribing;
                            let mut rx = Rx {
                                stats,
                                interval,
                                now,
                                measuring: *measuring,
                                hub,
                            };
                            if sub.on_watched(p, pending, seq, &mut rx) {
                                *state = State::Open;
                            }
                        }
                        (Part::Publisher(_), Some(_)) => on_publisher_message(p, stats),
                        (Part::Echo, _) => {
                            if !same(p, payload) || !inflight.take(now, interval) {
                                stats.c.mismatches += 1;
                            }
                            *replies += 1;
                        }
                        (Part::Subscriber, None) => match read_stamp(p) {
                            Some(s) if (s.publisher as usize) < seqs.len() => {
                                stats.c.deliveries += 1;
                                if *measuring {
                                    stats.c.measured_deliveries += 1;
                                }
                                record(interval, now.saturating_sub(s.intended_ns), 1);
                                match seqs[s.publisher as usize].arrive(s.seq) {
                                    Arrival::InOrder => {}
                                    Arrival::Gap(k) => stats.c.gaps += k,
                                    Arrival::Late => {
                                        stats.c.gaps -= 1;
                                        stats.c.reordered += 1;
                                    }
                                    Arrival::Duplicate => stats.c.duplicates += 1,
                                    Arrival::TooOld => stats.c.reordered += 1,
                                }
                            }
                            _ => stats.c.foreign += 1,
                        },
                        (Part::Publisher(_) | Part::Hold | Part::Listener, _) => {}
                    }
                }
                Event::Ping(p) => {
                    // "Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in
                    // response ... with identical Application data" (§5.5.2).
                    stats.c.pings += 1;
                    encode_frame_into(scratch, OpCode::Pong, p, Some(rng.next_u32().to_ne_bytes()));
                }
                Event::Pong(_) => {}
                Event::Close(code) => server_closed = Some(code.map(|(c, _)| c)),
            }
            Flow::Continue
        });
        inflight.settle(now, interval);
        if let Err(e) = fed {
            // The server broke RFC 6455: say why (§7.4.1 code), then give up on it.
            stats.c.protocol_errors += 1;
            let mut p = [0u8; 2];
            p.copy_from_slice(&e.close_code().0.to_be_bytes());
            encode_frame_into(
                scratch,
                OpCode::Close,
                &p,
                Some(rng.next_u32().to_ne_bytes()),
            );
            let _ = self.flush(io);
            return Outcome::Drop;
        }
        match server_closed {
            None => Outcome::Keep,
            Some(_) if *state == State::Closing => {
                stats.c.closed_clean += 1;
                record(&mut stats.teardown, now.saturating_sub(*close_ns), 1);
                *state = State::AwaitEof;
                Outcome::Keep
            }
            Some(code) => {
                // The server closed first. "If an endpoint receives a Close frame and did not
                // previously send a Close frame, the endpoint MUST send a Close frame in
                // response" (§5.5.1), echoing the status code.
                stats.c.closed_by_server += 1;
                let echo = code.unwrap_or(CloseCode::NORMAL).0.to_be_bytes();
                let body: &[u8] = if code.is_some() { &echo } else { &[] };
                encode_frame_into(
                    scratch,
                    OpCode::Close,
                    body,
                    Some(rng.next_u32().to_ne_bytes()),
                );
                *state = State::AwaitEof;
                Outcome::Keep
            }
        }
    }

    fn on_eof(&mut self, io: &mut Io) -> Outcome {
        match self.state {
            State::Connecting | State::Handshaking => io.stats.failures.closed += 1,
            State::Subscribing | State::Open | State::Closing => io.stats.c.dropped += 1,
            State::AwaitEof => {}
        }
        Outcome::Drop
    }

    fn on_error(&mut self, io: &mut Io, e: &io::Error) -> Outcome {
        match self.state {
            State::Connecting | State::Handshaking => io.stats.failures.count_io(e),
            State::Subscribing | State::Open | State::Closing => io.stats.c.dropped += 1,
            State::AwaitEof => {}
        }
        Outcome::Drop
    }
}
