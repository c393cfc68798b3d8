//! One connection's state, kept small on purpose: a shard holds hundreds of thousands of these.
//!
//! Byte budget (x86_64): 144 bytes with alignment padding, checked by a test:
//!
//! | field        | bytes | why                                                        |
//! |--------------|------:|------------------------------------------------------------|
//! | `stream`     |     4 | the socket (an fd)                                         |
//! | `generation` |     4 | tells a reused slab slot from the connection that left it  |
//! | `decoder`    |   ≤64 | partial header spill, frame state, UTF-8 carry, 1 heap Vec |
//! | `queue`      |    48 | outbound chunks; no heap while empty                       |
//! | `last_seen`  |     4 | ms tick of the last bytes from the peer (liveness)         |
//! | `last_data`  |     4 | ms tick of the last data message (idle timeout)            |
//! | `ping_sent`  |     4 | ms tick of our last ping                                   |
//! | `phase`, `timer`, `missed_pongs`, `flags`, `reason` | 5 | one byte each       |
//!
//! Ticks are `u32` milliseconds since the shard started, compared with wrapping arithmetic:
//! every interval we compare is far below the 24 days that makes ambiguous.
//!
//! Nothing here is heap-allocated while the connection is idle: a partial upgrade request lives
//! in the shard's side table (rare), a partial frame in the decoder's single Vec, and the read
//! buffer is the shard's.

use mio::net::TcpStream;
use mio::Token;

use crate::proto::Decoder;

use super::send_queue::SendQueue;

/// Lifecycle of a connection. The subtle rule lives on [`Phase::reads_frames`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP accepted, waiting for a complete upgrade request.
    Handshaking,
    /// 101 sent; frames flow both ways.
    Open,
    /// We sent a close frame and wait for the peer's (or the close timeout).
    Closing,
    /// Our last bytes (close reply, HTTP error) are queued; when they are written we shut
    /// down our side and stop sending.
    Flushing,
    /// Write side shut down; we read and discard until the peer's EOF (or the close timeout),
    /// so the peer sees our last bytes instead of a reset caused by unread input.
    Lingering,
    /// A server-sent event stream (`GET /sse`, `shard/sse.rs`): the `200` is sent, events
    /// flow one way until the client goes; what it sends is read and discarded. Not a
    /// WebSocket: no frames, no close handshake, so [`Phase::sends_data`] is false.
    Stream,
}

impl Phase {
    /// Frames from the peer are still decoded. True in `Closing` too: after *we* sent Close
    /// the peer may still send data before its own Close (RFC 6455 §5.5.1), and we must read
    /// up to that Close to finish the handshake cleanly. Data received then is discarded.
    pub fn reads_frames(self) -> bool {
        matches!(self, Phase::Open | Phase::Closing)
    }

    /// We may still queue data frames ("After sending a Close frame, the endpoint MUST NOT
    /// send any more data frames", §5.5.1).
    pub fn sends_data(self) -> bool {
        self == Phase::Open
    }
}

/// What the connection's single timer slot currently means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// Upgrade must complete by then.
    Handshake,
    /// Next heartbeat decision (ping, or skip because the peer was active), or idle check.
    Heartbeat,
    /// Our ping must be answered by then.
    PongDue,
    /// Close handshake / final flush / linger must be over by then.
    Close,
    /// An event stream's next keep-alive comment.
    KeepAlive,
}

/// Flag bits in [`Conn::flags`].
pub mod flags {
    /// Already in the shard's dirty list for this loop pass.
    pub const DIRTY: u8 = 1;
    /// Reads were cut short by the per-pass budget or by backpressure: more input may be
    /// waiting without a new readiness event (edge-triggered), so the shard retries it.
    pub const READ_PENDING: u8 = 2;
    /// We have sent a close frame.
    pub const SENT_CLOSE: u8 = 4;
    /// Bytes arrived since our last ping (any frame counts as liveness).
    pub const SEEN: u8 = 8;
    /// The close reason in `Conn::reason` is already counted: the connection's end is decided
    /// (it is counted then, not when the socket finally goes, so counters are current while a
    /// close handshake or linger is still running).
    pub const COUNTED: u8 = 16;
    /// Deliveries of `conflate` channels are held for it in the shard's conflation table
    /// (`shard/slow.rs`), to be queued when its queue is back under the bound.
    pub const HELD: u8 = 32;
    /// The peer's EOF has been read while our last bytes were still queued: it may still
    /// read, so the connection goes once they are written (or the close timer fires), with
    /// no linger, since no further EOF will come.
    pub const PEER_EOF: u8 = 64;
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// Matches the high half of this connection's token.
    pub generation: u32,
    /// Frame decoder state.
    pub decoder: Decoder,
    /// Outbound queue.
    pub queue: SendQueue,
    /// Tick of the last bytes received.
    pub last_seen: u32,
    /// Tick of the last data message received.
    pub last_data: u32,
    /// Tick of our last ping.
    pub ping_sent: u32,
    /// Lifecycle phase.
    pub phase: Phase,
    /// Meaning of the pending timer.
    pub timer: TimerKind,
    /// Pings unanswered in a row.
    pub missed_pongs: u8,
    /// Bits from the `flags` module below.
    pub flags: u8,
    /// Why the connection is ending (a `CloseReason` index), set when the close starts.
    pub reason: u8,
}

impl Conn {
    /// A freshly accepted connection.
    pub fn new(stream: TcpStream, generation: u32, decoder: Decoder, now: u32) -> Conn {
        Conn {
            stream,
            generation,
            decoder,
            queue: SendQueue::default(),
            last_seen: now,
            last_data: now,
            ping_sent: now,
            phase: Phase::Handshaking,
            timer: TimerKind::Handshake,
            missed_pongs: 0,
            flags: 0,
            reason: 0,
        }
    }

    /// Tests a flag.
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// Tokens carry the slab index in the low 32 bits and the generation in the high 32 bits, so an
/// event for a connection that is gone (its slot reused) is recognised and ignored.
pub fn token(index: usize, generation: u32) -> Token {
    Token(((generation as usize) << 32) | (index & 0xFFFF_FFFF))
}

/// Splits a token into (slab index, generation).
pub fn split(token: Token) -> (usize, u32) {
    (token.0 & 0xFFFF_FFFF, (token.0 >> 32) as u32)
}

/// `a` is at or after `b` on the wrapping u32 millisecond clock.
pub fn tick_reached(now: u32, deadline: u32) -> bool {
    now.wrapping_sub(deadline) < (1 << 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_fits_its_byte_budget() {
        let size = std::mem::size_of::<Conn>();
        assert!(
            size <= 144,
            "Conn grew to {size} bytes; update the budget table"
        );
    }

    #[test]
    fn tokens_round_trip_and_generations_differ() {
        for (i, g) in [
            (0usize, 0u32),
            (5, 1),
            (0xFFFF_FFFE, u32::MAX),
            (123456, 77),
        ] {
            assert_eq!(split(token(i, g)), (i, g));
        }
        assert_ne!(token(3, 1), token(3, 2));
    }

    #[test]
    fn wrapping_ticks_compare_across_the_wrap() {
        assert!(tick_reached(10, 5));
        assert!(tick_reached(5, 5));
        assert!(!tick_reached(4, 5));
        assert!(tick_reached(3, u32::MAX - 2));
        assert!(!tick_reached(u32::MAX - 2, 3));
    }
}
