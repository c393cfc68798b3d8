//! Counters. Each shard owns a plain-`u64` [`Counters`] and bumps it on the hot path with no
//! atomics; every so often (and at exit) it copies the whole struct into its [`Published`] slot,
//! which other threads read. Totals are the field-wise sum over shards.

use std::fmt;
use std::sync::{Arc, Mutex};

/// Why a connection ended. One counter per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum CloseReason {
    /// Close handshake completed (either side started it).
    Normal = 0,
    /// The peer closed TCP (EOF) or reset it without a close handshake.
    PeerGone,
    /// The peer broke RFC 6455; we sent the matching close code.
    Protocol,
    /// Bad upgrade request; we answered with an HTTP error.
    BadHandshake,
    /// The upgrade did not complete within `handshake_timeout`.
    HandshakeTimeout,
    /// `max_missed_pongs` pings went unanswered.
    PingTimeout,
    /// No data message within `idle_timeout`.
    Idle,
    /// Outbound queue over `max_backpressure`: closed with 1008.
    SlowConsumer,
    /// We sent 1001 because the server is draining.
    Drain,
    /// A socket error other than reset (counted so nothing disappears silently).
    IoError,
    /// The client's token expired without a refresh: closed with 1008.
    TokenExpired,
    /// The client kept sending over its rate limit: closed with 1008.
    RateLimited,
    /// The admin API disconnected the connection's user: closed with 4000.
    Disconnected,
}

impl CloseReason {
    /// Number of reasons (array length).
    pub const COUNT: usize = 13;
    /// All reasons, in index order.
    pub const ALL: [CloseReason; Self::COUNT] = [
        CloseReason::Normal,
        CloseReason::PeerGone,
        CloseReason::Protocol,
        CloseReason::BadHandshake,
        CloseReason::HandshakeTimeout,
        CloseReason::PingTimeout,
        CloseReason::Idle,
        CloseReason::SlowConsumer,
        CloseReason::Drain,
        CloseReason::IoError,
        CloseReason::TokenExpired,
        CloseReason::RateLimited,
        CloseReason::Disconnected,
    ];

    /// Snake-case name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::PeerGone => "peer_gone",
            CloseReason::Protocol => "protocol_error",
            CloseReason::BadHandshake => "bad_handshake",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::Idle => "idle_timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Drain => "drain",
            CloseReason::IoError => "io_error",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::Disconnected => "disconnected",
        }
    }
}

/// One shard's counters. Plain integers: only the owning shard writes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections currently held (handshaking, open or closing).
    pub open: u64,
    /// Sockets accepted since start.
    pub accepted: u64,
    /// Upgrades completed (101 sent).
    pub upgraded: u64,
    /// Connections ended, by [`CloseReason`] index.
    pub closed: [u64; CloseReason::COUNT],
    /// Data messages received.
    pub messages_in: u64,
    /// Data messages queued for sending (a broadcast to N connections counts N).
    pub messages_out: u64,
    /// Bytes read from sockets.
    pub bytes_in: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// `read` calls made.
    pub read_calls: u64,
    /// `writev`/`write` calls made.
    pub write_calls: u64,
    /// Closings (ours or the peer's) that ran out of `close_timeout` before the peer's EOF or
    /// close frame; the socket was then dropped. The reason was counted when the close began.
    pub close_timeouts: u64,
    /// `accept` failures from the open-file limit (EMFILE/ENFILE).
    pub accept_emfile: u64,
    /// Passes through the event loop.
    pub loop_iterations: u64,
    /// Microseconds the shard spent working (not waiting in `poll`): its busy time.
    pub loop_busy_us: u64,
    /// Hub: channels whose state this shard owns (gauge).
    pub hub_channels: u64,
    /// Hub: local subscriptions, live or being set up (gauge).
    pub hub_subscriptions: u64,
    /// Hub: server-sent event streams opened (`GET /sse`, 200 sent).
    pub sse_streams: u64,
    /// Hub: deliveries not sent to a subscriber over its bound on a `drop` channel (or, on a
    /// `conflate` channel, unkeyed or over the conflation bounds). Each is a `seq` gap.
    pub deliveries_dropped: u64,
    /// Hub: deliveries replaced, before they were sent, by a newer one with the same key on a
    /// `conflate` channel. Each is a `seq` gap too.
    pub deliveries_conflated: u64,
}

impl Counters {
    /// Field-wise sum (for totals across shards).
    pub fn add(&mut self, o: &Counters) {
        self.open += o.open;
        self.accepted += o.accepted;
        self.upgraded += o.upgraded;
        for (a, b) in self.closed.iter_mut().zip(o.closed.iter()) {
            *a += b;
        }
        self.messages_in += o.messages_in;
        self.messages_out += o.messages_out;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.read_calls += o.read_calls;
        self.write_calls += o.write_calls;
        self.close_timeouts += o.close_timeouts;
        self.accept_emfile += o.accept_emfile;
        self.loop_iterations += o.loop_iterations;
        self.loop_busy_us += o.loop_busy_us;
        self.hub_channels += o.hub_channels;
        self.hub_subscriptions += o.hub_subscriptions;
        self.sse_streams += o.sse_streams;
        self.deliveries_dropped += o.deliveries_dropped;
        self.deliveries_conflated += o.deliveries_conflated;
    }

    /// Counts one ended connection (reason and removal at once).
    pub fn close(&mut self, reason: CloseReason) {
        self.closed[reason as usize] += 1;
        self.open = self.open.saturating_sub(1);
    }

    /// Every single-valued field by name, in declaration order (`closed` is the per-reason
    /// array beside it). Exhaustive on purpose: a new field fails to compile here until it is
    /// named, so every reader of this list (the JSON stats) shows it.
    pub fn named(&self) -> [(&'static str, u64); 18] {
        let Counters {
            open,
            accepted,
            upgraded,
            closed: _,
            messages_in,
            messages_out,
            bytes_in,
            bytes_out,
            read_calls,
            write_calls,
            close_timeouts,
            accept_emfile,
            loop_iterations,
            loop_busy_us,
            hub_channels,
            hub_subscriptions,
            sse_streams,
            deliveries_dropped,
            deliveries_conflated,
        } = *self;
        [
            ("open", open),
            ("accepted", accepted),
            ("upgraded", upgraded),
            ("messages_in", messages_in),
            ("messages_out", messages_out),
            ("bytes_in", bytes_in),
            ("bytes_out", bytes_out),
            ("read_calls", read_calls),
            ("write_calls", write_calls),
            ("close_timeouts", close_timeouts),
            ("accept_emfile", accept_emfile),
            ("loop_iterations", loop_iterations),
            ("loop_busy_us", loop_busy_us),
            ("hub_channels", hub_channels),
            ("hub_subscriptions", hub_subscriptions),
            ("sse_streams", sse_streams),
            ("deliveries_dropped", deliveries_dropped),
            ("deliveries_conflated", deliveries_conflated),
        ]
    }

    /// Ended connections for one reason.
    pub fn closed_for(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize]
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "open={} accepted={} upgraded={} msgs_in={} msgs_out={} bytes_in={} bytes_out={} reads={} writes={}",
            self.open,
            self.accepted,
            self.upgraded,
            self.messages_in,
            self.messages_out,
            self.bytes_in,
            self.bytes_out,
            self.read_calls,
            self.write_calls
        )?;
        if self.close_timeouts > 0 {
            write!(f, " close_timeouts={}", self.close_timeouts)?;
        }
        for r in CloseReason::ALL {
            let n = self.closed_for(r);
            if n > 0 {
                write!(f, " closed_{}={}", r.name(), n)?;
            }
        }
        Ok(())
    }
}

/// Where a shard publishes its latest snapshot. Cloned into every reader.
#[derive(Debug, Clone, Default)]
pub struct Published(Arc<Mutex<Counters>>);

impl Published {
    /// Replaces the snapshot (called by the owning shard, off the per-message path).
    pub fn store(&self, c: &Counters) {
        if let Ok(mut g) = self.0.lock() {
            *g = *c;
        }
    }

    /// The latest snapshot.
    pub fn load(&self) -> Counters {
        self.0.lock().map(|g| *g).unwrap_or_default()
    }
}

/// Sum of several shards' snapshots.
pub fn total(shards: &[Published]) -> Counters {
    let mut t = Counters::default();
    for s in shards {
        t.add(&s.load());
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_fieldwise_and_reasons_are_named() {
        let a = Published::default();
        let b = Published::default();
        let mut c = Counters {
            open: 2,
            messages_in: 5,
            ..Counters::default()
        };
        c.close(CloseReason::SlowConsumer);
        a.store(&c);
        b.store(&c);
        let t = total(&[a, b]);
        assert_eq!(t.open, 2);
        assert_eq!(t.messages_in, 10);
        assert_eq!(t.closed_for(CloseReason::SlowConsumer), 2);
        assert!(t.to_string().contains("closed_slow_consumer=2"));
        assert_eq!(CloseReason::ALL.len(), CloseReason::COUNT);
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
