//! Watching a run while it happens: the per-second timeline that goes into the report, and
//! the live progress line (indicatif, drawn only when stderr is a terminal).
//!
//! Fed with [`Snapshot`]s (totals summed over threads or child processes) and the latency
//! histograms the threads hand over once a second; it only reads, never steers.

use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::control::Control;
use crate::stats::new_histogram;

/// Totals at one moment, over all threads (and processes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Connections open.
    pub open: u64,
    /// Handshakes in flight.
    pub pending: u64,
    /// Connections attempted.
    pub attempts: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Connection failures.
    pub failures: u64,
    /// All errors.
    pub errors: u64,
    /// Messages sent.
    pub sent: u64,
    /// Messages received.
    pub received: u64,
    /// Fanout deliveries minus duplicates.
    pub unique_deliveries: u64,
    /// Fanout messages published.
    pub published: u64,
    /// Fanout subscribers open when publishing began.
    pub subscribers: u64,
    /// Churn cycles.
    pub cycles: u64,
    /// Echo messages in flight.
    pub inflight: u64,
}

impl Snapshot {
    /// Sums the gauges of one process's threads.
    pub fn of(ctl: &Control) -> Snapshot {
        Snapshot {
            open: ctl.sum(|g| &g.open),
            pending: ctl.sum(|g| &g.pending),
            attempts: ctl.sum(|g| &g.attempts),
            handshakes: ctl.sum(|g| &g.handshakes),
            failures: ctl.sum(|g| &g.failures),
            errors: ctl.sum(|g| &g.errors),
            sent: ctl.sum(|g| &g.sent),
            received: ctl.sum(|g| &g.received),
            unique_deliveries: ctl.sum(|g| &g.unique_deliveries),
            published: ctl.sum(|g| &g.published),
            subscribers: ctl.sum(|g| &g.subscribers),
            cycles: ctl.sum(|g| &g.cycles),
            inflight: ctl.sum(|g| &g.inflight),
        }
    }

    /// Adds another process's totals.
    pub fn add(&mut self, o: &Snapshot) {
        self.open += o.open;
        self.pending += o.pending;
        self.attempts += o.attempts;
        self.handshakes += o.handshakes;
        self.failures += o.failures;
        self.errors += o.errors;
        self.sent += o.sent;
        self.received += o.received;
        self.unique_deliveries += o.unique_deliveries;
        self.published += o.published;
        self.subscribers += o.subscribers;
        self.cycles += o.cycles;
        self.inflight += o.inflight;
    }
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run started (end of the interval).
    pub t_s: f64,
    /// Phase name.
    pub phase: String,
    /// Connections open.
    pub open: u64,
    /// Handshakes completed per second.
    pub handshakes_per_sec: f64,
    /// Messages sent per second.
    pub sent_per_sec: f64,
    /// Messages received per second.
    pub received_per_sec: f64,
    /// Errors so far.
    pub errors: u64,
    /// Median latency in the interval, µs.
    pub p50_us: f64,
    /// p99 latency in the interval, µs.
    pub p99_us: f64,
    /// Latency samples in the interval.
    pub latency_count: u64,
}

/// Timeline and progress line.
pub struct Monitor {
    start_ns: u64,
    bar: Option<ProgressBar>,
    hist: Histogram<u64>,
    last: (u64, Snapshot),
    /// One entry per second.
    pub samples: Vec<Sample>,
    /// Phase shown and recorded.
    pub phase: &'static str,
    /// When the line was last redrawn.
    drawn_ns: u64,
}

impl Monitor {
    /// Starts watching at `start_ns`; a bar only if `show` and stderr is a terminal.
    pub fn new(start_ns: u64, show: bool) -> Monitor {
        let bar = show.then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                b.set_style(style);
            }
            b.enable_steady_tick(Duration::from_millis(250));
            b
        });
        Monitor {
            start_ns,
            bar,
            hist: new_histogram(),
            last: (start_ns, Snapshot::default()),
            samples: Vec::new(),
            phase: "ramp",
            drawn_ns: 0,
        }
    }

    /// Adds latency recorded by a thread since its last tick.
    pub fn add_latency(&mut self, h: &Histogram<u64>) {
        let _ = self.hist.add(h);
    }

    /// Looks at the totals now; closes a timeline second when one has passed.
    pub fn observe(&mut self, now: u64, s: Snapshot) {
        let (t0, prev) = self.last;
        let p99 = || self.hist.value_at_quantile(0.99) as f64 / 1000.0;
        let redraw = now.saturating_sub(self.drawn_ns) >= 250_000_000;
        if let (Some(bar), true) = (&self.bar, redraw) {
            self.drawn_ns = now;
            let dt = (now.saturating_sub(t0)).max(1) as f64 / 1e9;
            let rx = s.received.saturating_sub(prev.received) as f64 / dt;
            bar.set_message(format!(
                "{:>7} {:>6.1}s  open {} (+{} connecting, {} failed)  {} msg/s  p99 {:.0} µs  errors {}",
                self.phase,
                (now - self.start_ns) as f64 / 1e9,
                s.open,
                s.pending,
                s.failures,
                human(rx),
                p99(),
                s.errors
            ));
        }
        if now.saturating_sub(t0) < 1_000_000_000 {
            return;
        }
        let dt = (now - t0) as f64 / 1e9;
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        self.samples.push(Sample {
            t_s: (now - self.start_ns) as f64 / 1e9,
            phase: self.phase.to_owned(),
            open: s.open,
            handshakes_per_sec: rate(s.handshakes, prev.handshakes),
            sent_per_sec: rate(s.sent, prev.sent),
            received_per_sec: rate(s.received, prev.received),
            errors: s.errors,
            p50_us: self.hist.value_at_quantile(0.5) as f64 / 1000.0,
            p99_us: p99(),
            latency_count: self.hist.len(),
        });
        self.hist.reset();
        self.last = (now, s);
    }

    /// Prints a line above the bar (or to stderr when there is none).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// 1234567 -> "1.23M".
pub fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}
