//! What the coordinating thread and the event-loop threads share while a run is under way:
//! the run phase, the capacity step, and one gauge line per thread.
//!
//! Threads own their counters ([`crate::stats`]); once per loop pass each copies a few of
//! them into its [`Gauge`] with relaxed stores, on its own cache line, so the coordinator can
//! show progress and decide phase changes without taking anything from the hot path.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use mio::Waker;

/// The run's phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Opening the scenario's connections (not measured, except in connect).
    Ramp = 0,
    /// The measured phase (connect: the hold).
    Measure = 1,
    /// No new messages; waiting for those in flight.
    Drain = 2,
    /// Closing every connection with a close handshake.
    Close = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Ramp,
            1 => Phase::Measure,
            2 => Phase::Drain,
            _ => Phase::Close,
        }
    }
}

/// One thread's published figures (all counts since the start). Aligned to a cache line so
/// two threads never write the same line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Gauge {
    /// Connections open now.
    pub open: AtomicU64,
    /// Handshakes in flight now.
    pub pending: AtomicU64,
    /// Connections attempted.
    pub attempts: AtomicU64,
    /// Handshakes completed.
    pub handshakes: AtomicU64,
    /// Connection failures.
    pub failures: AtomicU64,
    /// Errors of any kind (see `Stats::errors`).
    pub errors: AtomicU64,
    /// Data messages sent.
    pub sent: AtomicU64,
    /// Data messages received.
    pub received: AtomicU64,
    /// Fanout deliveries minus duplicates.
    pub unique_deliveries: AtomicU64,
    /// Fanout messages published.
    pub published: AtomicU64,
    /// Subscribers open when publishing began.
    pub subscribers: AtomicU64,
    /// Churn cycles completed.
    pub cycles: AtomicU64,
    /// Echo messages in flight.
    pub inflight: AtomicU64,
    /// When this thread last completed a handshake (CLOCK_MONOTONIC ns).
    pub last_open_ns: AtomicU64,
    /// The capacity step this thread has closed the previous step's tick for.
    pub step_seen: AtomicU32,
    /// The thread has ended (normally or not).
    pub exited: AtomicBool,
    /// All of this thread's ramp connections are open or failed.
    pub ramp_done: AtomicBool,
    /// This thread reached its share of --count.
    pub count_done: AtomicBool,
    /// Nothing of this thread's is in flight any more.
    pub drained: AtomicBool,
}

/// Shared by the coordinator and the threads of one process.
pub struct Control {
    phase: AtomicU8,
    /// Set by Ctrl-C (or a parent going away): wrap up now, report what was measured.
    pub stop: AtomicBool,
    /// capacity: connections this process should have open.
    pub capacity_conns: AtomicU64,
    /// capacity: messages per second per connection, times 1000.
    pub capacity_rate_milli: AtomicU64,
    /// capacity: current step (from 1).
    pub step: AtomicU32,
    /// One per thread.
    pub gauges: Vec<Gauge>,
    /// Each thread's waker, registered when its poll is built.
    pub wakers: Mutex<Vec<Arc<Waker>>>,
    /// Hub fanout, per channel: messages published and subscribers counted when publishing
    /// began, over every thread (empty in raw mode). Publishers add as they publish, so the
    /// coordinator knows how many deliveries are owed before it ends the drain.
    pub channels: Vec<ChannelGauge>,
}

/// One hub channel's totals so far, in one process.
#[derive(Debug, Default)]
pub struct ChannelGauge {
    /// Messages published to it.
    pub published: AtomicU64,
    /// Subscribers it had when publishing began.
    pub subscribers: AtomicU64,
}

impl Control {
    /// Control for `threads` threads and `channels` hub channels (0 in raw mode), in the
    /// Ramp phase.
    pub fn new(threads: usize, channels: usize) -> Control {
        Control {
            phase: AtomicU8::new(Phase::Ramp as u8),
            stop: AtomicBool::new(false),
            capacity_conns: AtomicU64::new(0),
            capacity_rate_milli: AtomicU64::new(0),
            step: AtomicU32::new(0),
            gauges: (0..threads).map(|_| Gauge::default()).collect(),
            wakers: Mutex::new(Vec::new()),
            channels: (0..channels).map(|_| ChannelGauge::default()).collect(),
        }
    }

    /// Hub fanout: deliveries owed so far (each message published to a channel, once to each
    /// of its subscribers); `None` in raw mode.
    pub fn hub_expected(&self) -> Option<u64> {
        (!self.channels.is_empty()).then(|| {
            self.channels
                .iter()
                .map(|c| c.published.load(Relaxed) * c.subscribers.load(Relaxed))
                .sum()
        })
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Relaxed))
    }

    /// Moves every thread to `p` and wakes them.
    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Relaxed);
        self.wake_all();
    }

    /// Wakes every thread's poll (phase or step changes).
    pub fn wake_all(&self) {
        if let Ok(w) = self.wakers.lock() {
            for waker in w.iter() {
                let _ = waker.wake();
            }
        }
    }

    /// Sum of one gauge field over the threads.
    pub fn sum(&self, f: impl Fn(&Gauge) -> &AtomicU64) -> u64 {
        self.gauges.iter().map(|g| f(g).load(Relaxed)).sum()
    }

    /// Whether any thread has ended (before the Close phase, that is a failure).
    pub fn any_exited(&self) -> bool {
        self.gauges.iter().any(|g| g.exited.load(Relaxed))
    }

    /// Whether every thread has set a flag.
    pub fn all(&self, f: impl Fn(&Gauge) -> &AtomicBool) -> bool {
        self.gauges.iter().all(|g| f(g).load(Relaxed))
    }
}
