//! Turning what was measured into what is printed: one [`Report`] holding every figure,
//! rendered as the text summary, as `--json`, and (via `plot.rs`) as `--report DIR` files.
//!
//! The report is computed once from the merged [`Output`]; the text and the JSON are two
//! views of the same struct, so they never disagree. Latencies are microseconds with one
//! decimal; rates are per second of the measured phase.

mod text;

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::addr;
use crate::cli::{Mode, Scenario};
use crate::env::{CpuUse, Density, Environment};
use crate::plan::Plan;
use crate::progress::Sample;
use crate::run::{Output, StepResult, Timing};
use crate::stats::hist_to_b64;

/// Percentiles of a latency histogram, µs.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Samples.
    pub count: u64,
}

impl Percentiles {
    /// From a nanosecond histogram.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Percentiles {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            min: us(h.min()),
            mean: (h.mean() / 100.0).round() / 10.0,
            count: h.len(),
        }
    }
}

/// Connection counts.
#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    /// Attempts (socket + connect).
    pub attempted: u64,
    /// Valid 101s.
    pub handshakes: u64,
    /// Failed attempts (see `failures`).
    pub failed: u64,
    /// Most open at once.
    pub open_peak: u64,
    /// Handshakes still in flight when the run ended.
    pub abandoned: u64,
    /// Close handshakes completed at the end.
    pub closed_clean: u64,
    /// Close handshakes the server did not answer in time.
    pub close_timeouts: u64,
    /// `[first, last]` local ports the load generator assigned itself, one per connection
    /// of a (source, target) pair, past half the ephemeral range on a pair; `null`: the
    /// kernel chose every port.
    pub local_ports: Option<[u16; 2]>,
    /// Connections whose assigned port was taken (by another program, or a TIME_WAIT of an
    /// earlier run) and which the kernel placed outside the assigned ports instead.
    pub port_fallbacks: u64,
}

/// Errors by kind (their sum is `errors`).
#[derive(Debug, Clone, Serialize)]
pub struct ErrorKinds {
    /// Connection failures.
    pub connect_failures: u64,
    /// Frames breaking RFC 6455.
    pub protocol_errors: u64,
    /// Echoes that were not what was sent.
    pub mismatches: u64,
    /// Open connections the server closed with a Close frame.
    pub closed_by_server: u64,
    /// Open connections lost without a close handshake.
    pub dropped: u64,
    /// Hub fanout: subscribes and publishes the server answered with an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_errors: Option<u64>,
}

/// Hub fanout: the protocol's own figures.
#[derive(Debug, Clone, Serialize)]
pub struct Hub {
    /// Publishes answered `ok` with a sequence number (every publish must be).
    pub publish_acks: u64,
    /// Publishes answered with an error.
    pub publish_errors: u64,
    /// Subscribes answered with an error.
    pub subscribe_errors: u64,
    /// On each publisher's own sequence numbers (the top-level `gaps`, `duplicates` and
    /// `reordered` are on the server's per-channel numbers): skipped.
    pub publisher_gaps: u64,
    /// Received twice, by publisher numbers.
    pub publisher_duplicates: u64,
    /// Received after a later one of the same publisher.
    pub publisher_reordered: u64,
    /// Fewest and most subscribers on one channel when publishing began.
    pub subscribers_per_channel: (u64, u64),
}

/// connect --subscribe: who subscribed and what reached them.
#[derive(Debug, Clone, Serialize)]
pub struct Listen {
    /// The channel.
    pub channel: String,
    /// Subscribes answered `ok`.
    pub subscribed: u64,
    /// Subscribes refused.
    pub refused: u64,
    /// Deliveries each subscriber waited for (`--count`; 1 without it).
    pub wanted: u64,
    /// Subscribers that heard that many.
    pub reached: u64,
    /// Deliveries on the channel, all subscribers together.
    pub deliveries: u64,
    /// Deliveries timed from a `"t"` in their data (the samples of `latency_us`).
    pub timed: u64,
    /// Server sequence numbers skipped (against each subscribe reply's).
    pub gaps: u64,
    /// Received twice.
    pub duplicates: u64,
    /// Received after a later one.
    pub reordered: u64,
    /// Messages that were neither a delivery of the channel nor the reply.
    pub foreign: u64,
}

/// System calls made by the event loops.
#[derive(Debug, Clone, Serialize)]
pub struct Syscalls {
    /// read(2).
    pub read: u64,
    /// write(2).
    pub write: u64,
    /// epoll_wait(2).
    pub epoll_wait: u64,
    /// nanosleep(2) before a poll (`--coalesce`).
    pub coalesce_waits: u64,
    /// (read + write + epoll_wait + nanosleep) per message received, over the whole run.
    pub per_message: Option<f64>,
}

/// CPU use by phase.
#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    /// During the ramp.
    pub ramp: CpuUse,
    /// During the measured phase.
    pub measure: CpuUse,
}

/// The capacity verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// The last step within the bounds.
    pub largest_ok: Option<StepResult>,
    /// Why the ramp stopped.
    pub stopped_because: String,
    /// Every step.
    pub steps: Vec<StepResult>,
}

/// Every figure of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario.
    pub scenario: Scenario,
    /// Target URL.
    pub target: String,
    /// The command line.
    pub command: Vec<String>,
    /// Unix time the run started.
    pub started_at_unix_s: u64,
    /// Connections asked for (fanout: subscribers).
    pub connections_planned: u64,
    /// Fanout publishers.
    pub publishers: u64,
    /// How fanout talked to the server: `raw` or `hub` (other scenarios: `raw`).
    pub mode: Mode,
    /// Fanout: channels (raw: 1, a broadcast server being one channel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<u32>,
    /// Payload bytes.
    pub size: usize,
    /// Echo depth.
    pub depth: u32,
    /// Echo: the `--coalesce` wait in µs (0: off); latency may be overstated by up to it.
    pub coalesce_us: f64,
    /// `--rate`, per second.
    pub rate: Option<f64>,
    /// Event-loop threads per process.
    pub threads: usize,
    /// Processes.
    pub procs: usize,
    /// Source addresses used (empty: the kernel's choice).
    pub sources: usize,
    /// Target ports.
    pub targets: usize,
    /// Measured phase, seconds (connect: the hold).
    pub duration_s: f64,
    /// Phases.
    pub timing: Timing,
    /// Connection counts.
    pub connections: Connections,
    /// Failures by cause: refused, timeout, reset, closed, emfile, eaddrnotavail,
    /// bad_handshake, other, and `http_status:<code>`.
    pub failures: BTreeMap<String, u64>,
    /// Everything that went wrong (sum of `error_kinds`).
    pub errors: u64,
    /// Errors by kind.
    pub error_kinds: ErrorKinds,
    /// Start to the last handshake of the ramp.
    pub time_to_n_s: Option<f64>,
    /// Handshakes per second over `time_to_n_s` (churn: over the measured phase).
    pub handshakes_per_sec: Option<f64>,
    /// From connect() to the validated 101.
    pub handshake_latency_us: Percentiles,
    /// From the intended start (when `--rate` paces the connects).
    pub handshake_latency_corrected_us: Option<Percentiles>,
    /// Data messages sent.
    pub messages_sent: u64,
    /// Data messages received.
    pub messages_received: u64,
    /// Echo: messages received per second of the measured phase. Fanout: published per
    /// second.
    pub messages_per_sec: f64,
    /// Wire bytes written.
    pub bytes_sent: u64,
    /// Wire bytes read.
    pub bytes_received: u64,
    /// Echo: round trip. Fanout: publish to receive. Rate-driven modes measure from the
    /// intended send time. connect --subscribe: from the `"t"` in each delivery's data.
    pub latency_us: Percentiles,
    /// Whether `latency_us` is corrected for coordinated omission.
    pub latency_from_intended_time: bool,
    /// Fanout: messages published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<u64>,
    /// Fanout: stamped messages received by subscribers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<u64>,
    /// Fanout: deliveries per second of the measured phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_per_sec: Option<f64>,
    /// Fanout: subscribers open when publishing began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribers: Option<u64>,
    /// Fanout: published x subscribers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_deliveries: Option<u64>,
    /// Fanout: expected deliveries that never arrived (gaps and the tail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<u64>,
    /// Fanout: sequence numbers skipped and never received late.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gaps: Option<u64>,
    /// Fanout: messages received twice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicates: Option<u64>,
    /// Fanout: messages received after a later one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reordered: Option<u64>,
    /// Fanout: data messages without our stamp (hub: messages that are neither a delivery
    /// of the subscriber's channel nor an expected reply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreign: Option<u64>,
    /// Fanout: the load generator's CPU time (user + system) per delivery in the measured
    /// phase, ns: what the instrument pays per message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ns_per_delivery: Option<f64>,
    /// Hub fanout: acknowledgements, refusals, per-publisher order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<Hub>,
    /// connect --subscribe: subscriptions and deliveries (their latency is `latency_us`,
    /// from the `"t"` in the data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Listen>,
    /// Churn: cycles completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycles: Option<u64>,
    /// Churn: cycles per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycles_per_sec: Option<f64>,
    /// Churn: from our Close to the server's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teardown_latency_us: Option<Percentiles>,
    /// Capacity ramp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    /// Pings the server sent (all answered).
    pub pings: u64,
    /// System calls of the event loops.
    pub syscalls: Syscalls,
    /// Heap allocations during the measured phase, all processes.
    pub allocations_during_measure: u64,
    /// CPU.
    pub cpu: Cpu,
    /// Server and kernel memory per connection (connect with --server-pid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub density: Option<Density>,
    /// Our own resident memory with every connection open, all processes.
    pub client_rss_bytes: Option<u64>,
    /// The machine.
    pub environment: Environment,
    /// One sample per second.
    pub timeline: Vec<Sample>,
    /// HdrHistogram V2 serialisations (base64), nanoseconds: latency, handshake,
    /// handshake_corrected, teardown.
    pub histograms: BTreeMap<String, String>,
    /// Cut short by Ctrl-C.
    pub interrupted: bool,
    /// No error, and (fanout) no gap, duplicate, reordering or missing delivery.
    pub ok: bool,
}

impl Report {
    /// Builds the report.
    pub fn new(plan: &Plan, out: &Output, env: Environment) -> Report {
        let s = &out.stats;
        let c = &s.c;
        let measure = out.timing.measure_s.max(1e-9);
        let fanout = plan.scenario == Scenario::Fanout;
        let churn = plan.scenario == Scenario::Churn;
        let listen = plan.subscribe.as_ref().map(|ch| Listen {
            channel: ch.clone(),
            subscribed: c.watchers_subscribed,
            refused: c.hub_subscribe_errors,
            wanted: plan.count.unwrap_or(1),
            reached: c.watchers_reached,
            deliveries: c.deliveries,
            timed: s.latency.len(),
            gaps: c.gaps,
            duplicates: c.duplicates,
            reordered: c.reordered,
            foreign: c.foreign,
        });
        let rate_driven =
            listen.is_none() && (plan.rate.is_some() || plan.scenario == Scenario::Capacity);
        let hub_mode = fanout && plan.mode == Mode::Hub;
        let expected = if hub_mode {
            s.channels.expected()
        } else {
            c.published * c.subscribers_at_start
        };
        let unique = c.deliveries.saturating_sub(c.duplicates);
        let missing = expected.saturating_sub(unique);
        let calls = c.reads + c.writes + c.polls + c.coalesce_waits;
        let handshakes_per_sec = if churn {
            Some(c.handshakes as f64 / measure)
        } else {
            out.timing
                .time_to_n_s
                .filter(|t| *t > 0.0)
                .map(|t| c.handshakes as f64 / t)
        };
        let errors = s.errors();
        let hub = hub_mode.then(|| Hub {
            publish_acks: c.hub_acks,
            publish_errors: c.hub_publish_errors,
            subscribe_errors: c.hub_subscribe_errors,
            publisher_gaps: c.hub_pub_gaps,
            publisher_duplicates: c.hub_pub_duplicates,
            publisher_reordered: c.hub_pub_reordered,
            subscribers_per_channel: (
                s.channels.subscribers.iter().copied().min().unwrap_or(0),
                s.channels.subscribers.iter().copied().max().unwrap_or(0),
            ),
        });
        // Hub: every message is accounted for by the protocol, so anything unexpected, a
        // publish without its ok, or a publisher's messages out of order fails the run.
        let hub_ok = hub.as_ref().is_none_or(|h| {
            h.publish_acks == c.published
                && h.publisher_gaps + h.publisher_duplicates + h.publisher_reordered == 0
                && c.foreign == 0
        });
        // Listening: every message in order and understood; with --count, also every
        // subscriber reached (without it, nothing published is no failure).
        let listen_ok = listen.as_ref().is_none_or(|l| {
            l.gaps + l.duplicates + l.reordered + l.foreign == 0
                && (plan.count.is_none() || l.reached == l.subscribed)
        });
        let ok = errors == 0
            && !out.interrupted
            && c.handshakes > 0
            && (!fanout || (c.gaps == 0 && c.duplicates == 0 && c.reordered == 0 && missing == 0))
            && hub_ok
            && listen_ok;
        let mut histograms = BTreeMap::new();
        histograms.insert("latency".to_owned(), hist_to_b64(&s.latency));
        histograms.insert("handshake".to_owned(), hist_to_b64(&s.handshake));
        histograms.insert(
            "handshake_corrected".to_owned(),
            hist_to_b64(&s.handshake_corrected),
        );
        histograms.insert("teardown".to_owned(), hist_to_b64(&s.teardown));
        let some_if = |cond: bool, v: u64| cond.then_some(v);
        Report {
            scenario: plan.scenario,
            target: plan.url.clone(),
            command: std::env::args().collect(),
            started_at_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .saturating_sub(out.timing.total_s as u64),
            connections_planned: plan.connections,
            publishers: plan.publishers,
            mode: plan.mode,
            channels: fanout.then_some(plan.channels),
            size: plan.size,
            depth: plan.depth,
            coalesce_us: plan.coalesce.as_secs_f64() * 1e6,
            rate: plan.rate,
            threads: plan.threads,
            procs: plan.procs,
            sources: plan.endpoints.sources.len(),
            targets: plan.endpoints.targets.len(),
            duration_s: out.timing.measure_s,
            timing: out.timing.clone(),
            connections: Connections {
                attempted: c.connect_attempts,
                handshakes: c.handshakes,
                failed: s.failures.total(),
                open_peak: c.peak_open,
                abandoned: c.abandoned,
                closed_clean: c.closed_clean,
                close_timeouts: c.close_timeouts,
                local_ports: plan.local_ports.as_ref().map(addr::LocalPorts::assigned),
                port_fallbacks: c.port_fallbacks,
            },
            failures: s.failures.to_map(),
            errors,
            error_kinds: ErrorKinds {
                connect_failures: s.failures.total(),
                protocol_errors: c.protocol_errors,
                mismatches: c.mismatches,
                closed_by_server: c.closed_by_server,
                dropped: c.dropped,
                hub_errors: (hub_mode || listen.is_some()).then(|| s.hub_errors()),
            },
            time_to_n_s: out.timing.time_to_n_s,
            handshakes_per_sec,
            handshake_latency_us: Percentiles::of(&s.handshake),
            handshake_latency_corrected_us: plan
                .rate
                .is_some()
                .then(|| Percentiles::of(&s.handshake_corrected)),
            messages_sent: c.messages_sent,
            messages_received: c.messages_received,
            messages_per_sec: if fanout {
                c.published as f64 / measure
            } else {
                c.measured_received as f64 / measure
            },
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            latency_us: Percentiles::of(&s.latency),
            latency_from_intended_time: rate_driven,
            published: some_if(fanout, c.published),
            deliveries: some_if(fanout, c.deliveries),
            deliveries_per_sec: fanout.then(|| c.measured_deliveries as f64 / measure),
            subscribers: some_if(fanout, c.subscribers_at_start),
            expected_deliveries: some_if(fanout, expected),
            missing: some_if(fanout, missing),
            gaps: some_if(fanout, c.gaps),
            duplicates: some_if(fanout, c.duplicates),
            reordered: some_if(fanout, c.reordered),
            foreign: some_if(fanout, c.foreign),
            cpu_ns_per_delivery: (fanout && c.measured_deliveries > 0).then(|| {
                let cpu = &out.cpu_measure;
                (cpu.user_s + cpu.system_s) * 1e9 / c.measured_deliveries as f64
            }),
            hub,
            subscribe: listen,
            cycles: some_if(churn, c.cycles),
            cycles_per_sec: churn.then(|| c.cycles as f64 / measure),
            teardown_latency_us: churn.then(|| Percentiles::of(&s.teardown)),
            capacity: (plan.scenario == Scenario::Capacity).then(|| Capacity {
                largest_ok: out.steps.iter().take_while(|s| s.ok).last().cloned(),
                stopped_because: out.capacity_stop.clone().unwrap_or_default(),
                steps: out.steps.clone(),
            }),
            pings: c.pings,
            syscalls: Syscalls {
                read: c.reads,
                write: c.writes,
                epoll_wait: c.polls,
                coalesce_waits: c.coalesce_waits,
                per_message: (c.messages_received > 0)
                    .then(|| calls as f64 / c.messages_received as f64),
            },
            allocations_during_measure: out.allocations_measure,
            cpu: Cpu {
                ramp: out.cpu_ramp.clone(),
                measure: out.cpu_measure.clone(),
            },
            density: out.density.clone(),
            client_rss_bytes: out.client_rss_bytes,
            environment: env,
            timeline: out.timeline.clone(),
            histograms,
            interrupted: out.interrupted,
            ok,
        }
    }

    /// The exit status: 0 ok, 130 interrupted, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.interrupted {
            130
        } else if self.ok {
            0
        } else {
            1
        }
    }
}
