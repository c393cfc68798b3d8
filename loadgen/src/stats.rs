//! What a thread counts: plain counters and HdrHistograms owned by one event loop, merged
//! after the run (and across processes, through [`WireStats`]).
//!
//! Nothing here is shared while a run is under way, so counting is a plain add and recording
//! a latency is one histogram increment. Latencies are recorded in nanoseconds (1 ns .. 60 s,
//! 3 significant digits); reports print microseconds. In rate-driven modes the recorded
//! latency starts at the *intended* send time of the message or connection, not the moment
//! the loop got round to it, so a stall on either side shows up in the percentiles instead of
//! silently thinning the samples (coordinated omission).

use std::collections::BTreeMap;
use std::io;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram holds; longer values are recorded as this.
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy hdrhistogram's preconditions (low >= 1,
    // high >= 2 * low, sigfig <= 5), so construction cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// Why a connection attempt failed. Reported as a map keyed by these names (and
/// `http_status:<code>` for a non-101 answer).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// ECONNREFUSED: nothing listening (or the backlog overflowed with tcp_abort_on_overflow).
    pub refused: u64,
    /// No 101 within --timeout (SYN never answered, or the server never replied).
    pub timeout: u64,
    /// ECONNRESET / EPIPE before the handshake completed.
    pub reset: u64,
    /// The server closed the connection (EOF) before answering the upgrade.
    pub closed: u64,
    /// EMFILE / ENFILE: this process or the system is out of descriptors.
    pub emfile: u64,
    /// EADDRNOTAVAIL: no ephemeral port left for the (source, target) pair.
    pub eaddrnotavail: u64,
    /// A 101 that breaks RFC 6455 §4.1 (bad accept key, missing Upgrade, ...).
    pub bad_handshake: u64,
    /// Any other errno.
    pub other: u64,
    /// Non-101 answers by status code.
    pub http_status: BTreeMap<u16, u64>,
}

impl Failures {
    /// Counts an I/O error by its errno.
    pub fn count_io(&mut self, e: &io::Error) {
        *self.slot(e) += 1;
    }

    fn slot(&mut self, e: &io::Error) -> &mut u64 {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => &mut self.refused,
            Some(libc::ECONNRESET) | Some(libc::EPIPE) | Some(libc::ECONNABORTED) => {
                &mut self.reset
            }
            Some(libc::ETIMEDOUT) => &mut self.timeout,
            Some(libc::EMFILE) | Some(libc::ENFILE) => &mut self.emfile,
            Some(libc::EADDRNOTAVAIL) => &mut self.eaddrnotavail,
            _ => &mut self.other,
        }
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.refused
            + self.timeout
            + self.reset
            + self.closed
            + self.emfile
            + self.eaddrnotavail
            + self.bad_handshake
            + self.other
            + self.http_status.values().sum::<u64>()
    }

    /// Adds another thread's failures.
    pub fn merge(&mut self, o: &Failures) {
        self.refused += o.refused;
        self.timeout += o.timeout;
        self.reset += o.reset;
        self.closed += o.closed;
        self.emfile += o.emfile;
        self.eaddrnotavail += o.eaddrnotavail;
        self.bad_handshake += o.bad_handshake;
        self.other += o.other;
        for (code, n) in &o.http_status {
            *self.http_status.entry(*code).or_default() += n;
        }
    }

    /// The flat map reports print: every fixed cause, then `http_status:<code>` per status.
    pub fn to_map(&self) -> BTreeMap<String, u64> {
        let mut m: BTreeMap<String, u64> = [
            ("refused", self.refused),
            ("timeout", self.timeout),
            ("reset", self.reset),
            ("closed", self.closed),
            ("emfile", self.emfile),
            ("eaddrnotavail", self.eaddrnotavail),
            ("bad_handshake", self.bad_handshake),
            ("other", self.other),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (code, n) in &self.http_status {
            m.insert(format!("http_status:{code}"), *n);
        }
        m
    }
}

/// Plain counters. Every field is a count since the thread started.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Connections attempted (socket + connect).
    pub connect_attempts: u64,
    /// Valid 101 answers.
    pub handshakes: u64,
    /// Most connections open at once in this thread.
    pub peak_open: u64,
    /// Data messages sent.
    pub messages_sent: u64,
    /// Data messages received.
    pub messages_received: u64,
    /// Messages received during the measured phase (for the rate).
    pub measured_received: u64,
    /// Bytes written to sockets (frames and requests).
    pub bytes_sent: u64,
    /// Bytes read from sockets.
    pub bytes_received: u64,
    /// Echo: a message that is not the one sent. Hub fanout: a delivery on a channel other
    /// than the subscriber's, or whose data is not the stamp that was published (not a
    /// stamp, the wrong length, or a message of another channel).
    pub mismatches: u64,
    /// A frame stream the decoder rejected (RFC 6455 violation by the server).
    pub protocol_errors: u64,
    /// Open connections the server closed with a Close frame before we asked.
    pub closed_by_server: u64,
    /// Open connections lost to EOF or a reset without a close handshake.
    pub dropped: u64,
    /// Close handshakes we started that completed (server's Close received).
    pub closed_clean: u64,
    /// Close handshakes we started that got no Close back in time.
    pub close_timeouts: u64,
    /// Pings received (each answered with a pong).
    pub pings: u64,
    /// Fanout: messages published.
    pub published: u64,
    /// Fanout: messages received by subscribers carrying our stamp.
    pub deliveries: u64,
    /// Fanout: deliveries during the measured phase.
    pub measured_deliveries: u64,
    /// Fanout: sequence numbers skipped (sum of the jumps).
    pub gaps: u64,
    /// Fanout: a sequence number seen before.
    pub duplicates: u64,
    /// Fanout: a sequence number below the highest seen but not seen before.
    pub reordered: u64,
    /// Data messages without our stamp (fanout), e.g. a server's greeting.
    pub foreign: u64,
    /// Churn: connect-handshake-close cycles completed.
    pub cycles: u64,
    /// Fanout: subscribers open when publishing began.
    pub subscribers_at_start: u64,
    /// Handshakes still in flight when the run ended (neither success nor failure).
    pub abandoned: u64,
    /// Hub fanout: publishes answered `ok` with a sequence number.
    pub hub_acks: u64,
    /// Hub fanout: publishes answered with an error (or without a sequence number).
    pub hub_publish_errors: u64,
    /// Hub fanout: subscribes answered with an error (or without a sequence number).
    pub hub_subscribe_errors: u64,
    /// connect --subscribe: subscribes answered `ok` with a sequence number.
    pub watchers_subscribed: u64,
    /// connect --subscribe: subscribers that have heard `--count` deliveries (default 1).
    pub watchers_reached: u64,
    /// Hub fanout, checked on each publisher's own numbers: skipped.
    pub hub_pub_gaps: u64,
    /// Hub fanout, on each publisher's own numbers: received twice.
    pub hub_pub_duplicates: u64,
    /// Hub fanout, on each publisher's own numbers: received after a later one.
    pub hub_pub_reordered: u64,
    /// read(2) calls.
    pub reads: u64,
    /// write(2) calls.
    pub writes: u64,
    /// epoll_wait(2) calls.
    pub polls: u64,
    /// `--coalesce` waits (nanosleep(2) calls) before a poll.
    pub coalesce_waits: u64,
    /// Connections whose own local port was taken, opened on a port the kernel chose.
    #[serde(default)]
    pub port_fallbacks: u64,
}

impl Counters {
    /// Adds another thread's counters (`peak_open` adds too: threads peak together).
    pub fn merge(&mut self, o: &Counters) {
        macro_rules! add {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        add!(
            connect_attempts,
            handshakes,
            peak_open,
            messages_sent,
            messages_received,
            measured_received,
            bytes_sent,
            bytes_received,
            mismatches,
            protocol_errors,
            closed_by_server,
            dropped,
            closed_clean,
            close_timeouts,
            pings,
            published,
            deliveries,
            measured_deliveries,
            gaps,
            duplicates,
            reordered,
            foreign,
            cycles,
            subscribers_at_start,
            abandoned,
            hub_acks,
            hub_publish_errors,
            hub_subscribe_errors,
            watchers_subscribed,
            watchers_reached,
            hub_pub_gaps,
            hub_pub_duplicates,
            hub_pub_reordered,
            reads,
            writes,
            polls,
            coalesce_waits,
            port_fallbacks
        );
    }
}

/// Hub fanout, per channel: what was published to it and who listened. Expected deliveries
/// are the sum over channels of the product, so they cannot be worked out from totals.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerChannel {
    /// Messages published to channel i.
    pub published: Vec<u64>,
    /// Subscribers of channel i open (and subscribed) when publishing began.
    pub subscribers: Vec<u64>,
}

impl PerChannel {
    /// Zeroed counts for `channels` channels (empty in raw mode).
    pub fn new(channels: usize) -> PerChannel {
        PerChannel {
            published: vec![0; channels],
            subscribers: vec![0; channels],
        }
    }

    /// Adds another record (element by element; the longer length wins).
    pub fn merge(&mut self, o: &PerChannel) {
        for (mine, theirs) in [
            (&mut self.published, &o.published),
            (&mut self.subscribers, &o.subscribers),
        ] {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
    }

    /// Deliveries owed: each message published to a channel, to each of its subscribers.
    pub fn expected(&self) -> u64 {
        self.published
            .iter()
            .zip(&self.subscribers)
            .map(|(p, s)| p * s)
            .sum()
    }
}

/// One thread's (or a merged) record of a run.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Counters.
    pub c: Counters,
    /// Hub fanout: per-channel counts.
    pub channels: PerChannel,
    /// Connection failures by cause.
    pub failures: Failures,
    /// Message latency: echo round trip, fanout publish-to-receive.
    pub latency: Histogram<u64>,
    /// Handshake latency from the connect() call to the validated 101.
    pub handshake: Histogram<u64>,
    /// Handshake latency from the intended start (rate-driven ramps).
    pub handshake_corrected: Histogram<u64>,
    /// Churn: from sending Close to the server's Close.
    pub teardown: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            c: Counters::default(),
            channels: PerChannel::default(),
            failures: Failures::default(),
            latency: new_histogram(),
            handshake: new_histogram(),
            handshake_corrected: new_histogram(),
            teardown: new_histogram(),
        }
    }
}

/// Records `ns` (clamped to the histogram's range) `n` times.
pub fn record(h: &mut Histogram<u64>, ns: u64, n: u64) {
    // In range by construction after the clamp, so this cannot fail.
    let _ = h.record_n(ns.clamp(1, MAX_LATENCY_NS), n);
}

impl Stats {
    /// Adds another record into this one.
    pub fn merge(&mut self, o: &Stats) {
        self.c.merge(&o.c);
        self.channels.merge(&o.channels);
        self.failures.merge(&o.failures);
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.handshake.add(&o.handshake);
        let _ = self.handshake_corrected.add(&o.handshake_corrected);
        let _ = self.teardown.add(&o.teardown);
    }

    /// Errors that make a run fail: connection failures, protocol errors, wrong echoes or
    /// deliveries, connections lost or closed by the server while in use, hub commands the
    /// server refused.
    pub fn errors(&self) -> u64 {
        self.failures.total()
            + self.c.protocol_errors
            + self.c.mismatches
            + self.c.closed_by_server
            + self.c.dropped
            + self.hub_errors()
    }

    /// Hub commands the server answered with an error.
    pub fn hub_errors(&self) -> u64 {
        self.c.hub_publish_errors + self.c.hub_subscribe_errors
    }

    /// The serialisable form, for a child process to hand its record to the parent.
    pub fn to_wire(&self) -> WireStats {
        WireStats {
            counters: self.c.clone(),
            channels: self.channels.clone(),
            failures: self.failures.clone(),
            latency: hist_to_b64(&self.latency),
            handshake: hist_to_b64(&self.handshake),
            handshake_corrected: hist_to_b64(&self.handshake_corrected),
            teardown: hist_to_b64(&self.teardown),
        }
    }

    /// Back from the serialisable form.
    pub fn from_wire(w: &WireStats) -> Result<Stats, String> {
        Ok(Stats {
            c: w.counters.clone(),
            channels: w.channels.clone(),
            failures: w.failures.clone(),
            latency: hist_from_b64(&w.latency)?,
            handshake: hist_from_b64(&w.handshake)?,
            handshake_corrected: hist_from_b64(&w.handshake_corrected)?,
            teardown: hist_from_b64(&w.teardown)?,
        })
    }
}

/// [`Stats`] with each histogram as base64 of its HdrHistogram V2 serialisation (the
/// format other HdrHistogram tools read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireStats {
    /// Counters.
    pub counters: Counters,
    /// Hub fanout: per-channel counts.
    #[serde(default)]
    pub channels: PerChannel,
    /// Failures.
    pub failures: Failures,
    /// Message latency.
    pub latency: String,
    /// Handshake latency.
    pub handshake: String,
    /// Handshake latency from the intended start.
    pub handshake_corrected: String,
    /// Churn teardown latency.
    pub teardown: String,
}

/// base64 of the V2 serialisation.
pub fn hist_to_b64(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Serialising into a Vec cannot fail for a histogram built by new_histogram.
    let _ = V2Serializer::new().serialize(h, &mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Inverse of [`hist_to_b64`]; the result has [`new_histogram`]'s bounds.
pub fn hist_from_b64(s: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("histogram: bad base64: {e}"))?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("histogram: {e:?}"))?;
    let mut out = new_histogram();
    out.add(&h).map_err(|e| format!("histogram: {e:?}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_causes() {
        let mut f = Failures::default();
        for e in [
            libc::ECONNREFUSED,
            libc::ECONNRESET,
            libc::EMFILE,
            libc::EADDRNOTAVAIL,
            9999,
        ] {
            f.count_io(&io::Error::from_raw_os_error(e));
        }
        f.http_status.insert(403, 2);
        assert_eq!(
            (f.refused, f.reset, f.emfile, f.eaddrnotavail, f.other),
            (1, 1, 1, 1, 1)
        );
        assert_eq!(f.total(), 7);
        assert_eq!(f.to_map()["http_status:403"], 2);
        assert_eq!(f.to_map()["timeout"], 0);
    }

    #[test]
    fn wire_round_trip_keeps_every_count() {
        let mut s = Stats::default();
        s.c.messages_sent = 5;
        s.channels = PerChannel {
            published: vec![3, 4],
            subscribers: vec![10, 20],
        };
        s.failures.http_status.insert(404, 1);
        for v in [1u64, 900, 50_000, 7_000_000, MAX_LATENCY_NS * 2] {
            record(&mut s.latency, v, 3);
        }
        let json = serde_json::to_string(&s.to_wire()).unwrap();
        let back = Stats::from_wire(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(back.c, s.c);
        assert_eq!(back.channels.expected(), 110);
        assert_eq!(back.failures, s.failures);
        assert_eq!(back.latency, s.latency);
        assert_eq!(back.latency.len(), 15);
        let mut m = Stats::default();
        m.merge(&back);
        m.merge(&s);
        assert_eq!(m.latency.len(), 30);
        assert_eq!(m.c.messages_sent, 10);
        assert_eq!(m.channels.expected(), 440);
        assert_eq!(m.errors(), 2);
    }
}
