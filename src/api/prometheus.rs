//! Rendering the shards' counters in the Prometheus text exposition format, version 0.0.4:
//! per family a `# HELP` line, a `# TYPE` line, then its samples, `name{label="value"} number`,
//! one per line. Counter names end in `_total`.
//!
//! Each counter exists twice: `starling_<name>` is the sum over shards (no labels), and
//! `starling_shard_<name>{shard="N"}` is one shard's value. Two families rather than one with a
//! `shard="all"` sample, so that `sum(starling_shard_...)` never counts anything twice.
//! Closings are by `reason` (the `CloseReason` names); slow consumers also get their own
//! counter because that is the one to alert on. Process gauges use the conventional
//! `process_*` names so existing dashboards find them.
//!
//! [`render`] is pure: counters and [`ProcessFacts`] in, text out.

use std::fmt::{self, Write};
use std::time::Duration;

use super::ApiView;
use crate::metrics::{CloseReason, Counters};

/// Process-wide figures shown beside the counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessFacts {
    /// Resident set size in bytes, if `/proc` could be read.
    pub rss_bytes: Option<u64>,
    /// Soft open-file limit (the most sockets plus files this process may hold), if known.
    pub max_fds: Option<u64>,
    /// Time since the process started.
    pub uptime: Duration,
    /// True once the server is draining.
    pub draining: bool,
}

impl ProcessFacts {
    /// The facts right now, read from `/proc` and the view.
    pub fn now(view: &ApiView) -> ProcessFacts {
        ProcessFacts {
            rss_bytes: crate::sys::rss_bytes(),
            max_fds: std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|t| parse_max_open_files(&t)),
            uptime: view.started.elapsed(),
            draining: view.is_draining(),
        }
    }
}

/// The soft "Max open files" limit from `/proc/self/limits` text; `None` if absent or
/// "unlimited".
fn parse_max_open_files(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A sample value: counters are integers, durations are seconds with a fraction.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(u64),
    Secs(f64),
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // f64's Display never uses an exponent, and both forms are valid Go floats.
        match self {
            Num::Int(n) => write!(f, "{n}"),
            Num::Secs(s) => write!(f, "{s}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// A metric without its prefix: name (after `starling_` or `starling_shard_`), help, type.
type Meta = (&'static str, &'static str, Kind);

/// Number of one-value-per-shard metrics (everything but the closings by reason).
const SCALARS: usize = 19;

/// The one-value-per-shard metrics of `c`, in output order.
fn scalars(c: &Counters) -> [(Meta, Num); SCALARS] {
    // Exhaustive on purpose: a new counter field fails to compile here until it is exposed.
    let Counters {
        open,
        accepted,
        upgraded,
        closed,
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
    } = *c;
    let counter = |name, help, v| ((name, help, Kind::Counter), Num::Int(v));
    let gauge = |name, help, v| ((name, help, Kind::Gauge), Num::Int(v));
    let busy = Num::Secs(loop_busy_us as f64 / 1e6);
    [
        gauge(
            "connections_open",
            "Connections held (handshaking, open or closing).",
            open,
        ),
        counter("connections_accepted_total", "Sockets accepted.", accepted),
        counter(
            "connections_upgraded_total",
            "Upgrades completed (101 sent).",
            upgraded,
        ),
        counter(
            "slow_consumers_total",
            "Connections closed because their send queue passed max_backpressure.",
            closed[CloseReason::SlowConsumer as usize],
        ),
        counter("messages_in_total", "Data messages received.", messages_in),
        counter(
            "messages_out_total",
            "Data messages queued for sending (a broadcast to N connections counts N).",
            messages_out,
        ),
        counter("read_bytes_total", "Bytes read from sockets.", bytes_in),
        counter(
            "written_bytes_total",
            "Bytes written to sockets.",
            bytes_out,
        ),
        counter("read_calls_total", "read system calls made.", read_calls),
        counter(
            "write_calls_total",
            "write and writev system calls made.",
            write_calls,
        ),
        counter(
            "close_timeouts_total",
            "Closings that ran out of close_timeout; the socket was then dropped.",
            close_timeouts,
        ),
        counter(
            "accept_emfile_total",
            "accept failures from the open-file limit (EMFILE/ENFILE).",
            accept_emfile,
        ),
        counter(
            "loop_iterations_total",
            "Passes through the event loop.",
            loop_iterations,
        ),
        (
            (
                "loop_busy_seconds_total",
                "Time the event loop spent working rather than waiting in poll.",
                Kind::Counter,
            ),
            busy,
        ),
        gauge(
            "hub_channels",
            "Channels whose state the shard owns.",
            hub_channels,
        ),
        gauge(
            "hub_subscriptions",
            "Channel subscriptions held.",
            hub_subscriptions,
        ),
        counter(
            "sse_streams_total",
            "Server-sent event streams opened (GET /sse answered with 200).",
            sse_streams,
        ),
        counter(
            "deliveries_dropped_total",
            "Deliveries not sent to subscribers over their bound (drop and conflate channels).",
            deliveries_dropped,
        ),
        counter(
            "deliveries_conflated_total",
            "Deliveries replaced by a newer one with the same key before they were sent.",
            deliveries_conflated,
        ),
    ]
}

const CLOSED: Meta = (
    "connections_closed_total",
    "Connections ended, by reason.",
    Kind::Counter,
);

/// The whole exposition for these per-shard counters (shard `i` is `shards[i]`).
pub fn render(shards: &[Counters], p: &ProcessFacts) -> String {
    let mut total = Counters::default();
    for c in shards {
        total.add(c);
    }
    let total_rows = scalars(&total);
    let shard_rows: Vec<_> = shards.iter().map(scalars).collect();
    let ids: Vec<String> = (0..shards.len()).map(|i| i.to_string()).collect();
    let mut out = Out(String::with_capacity(4096 + 2048 * shards.len()));
    for (i, (meta, value)) in total_rows.iter().enumerate() {
        out.family("starling_", *meta);
        out.sample("starling_", meta.0, &[], *value);
        out.family("starling_shard_", *meta);
        for (id, rows) in ids.iter().zip(&shard_rows) {
            out.sample("starling_shard_", meta.0, &[("shard", id)], rows[i].1);
        }
    }
    out.family("starling_", CLOSED);
    for r in CloseReason::ALL {
        let n = Num::Int(total.closed_for(r));
        out.sample("starling_", CLOSED.0, &[("reason", r.name())], n);
    }
    out.family("starling_shard_", CLOSED);
    for (id, c) in ids.iter().zip(shards) {
        for r in CloseReason::ALL {
            let labels = [("shard", id.as_str()), ("reason", r.name())];
            out.sample(
                "starling_shard_",
                CLOSED.0,
                &labels,
                Num::Int(c.closed_for(r)),
            );
        }
    }
    out.process(shards.len(), p);
    out.0
}

/// The text being built. Writing to a `String` cannot fail, so results are ignored.
struct Out(String);

impl Out {
    fn family(&mut self, prefix: &str, (name, help, kind): Meta) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.0, "# HELP {prefix}{name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {prefix}{name} {kind}");
    }

    fn sample(&mut self, prefix: &str, name: &str, labels: &[(&str, &str)], value: Num) {
        let _ = write!(self.0, "{prefix}{name}");
        for (i, (k, v)) in labels.iter().enumerate() {
            let open = if i == 0 { "{" } else { "," };
            let _ = write!(self.0, "{open}{k}=\"{}\"", escape_label(v));
        }
        if !labels.is_empty() {
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, value: Num) {
        self.family("", (name, help, Kind::Gauge));
        self.sample("", name, &[], value);
    }

    fn process(&mut self, shards: usize, p: &ProcessFacts) {
        self.gauge(
            "starling_shards",
            "Shards (event-loop threads) serving.",
            Num::Int(shards as u64),
        );
        self.gauge(
            "starling_draining",
            "1 once a graceful drain has started, else 0.",
            Num::Int(u64::from(p.draining)),
        );
        self.gauge(
            "starling_uptime_seconds",
            "Seconds since the process started.",
            Num::Secs(p.uptime.as_secs_f64()),
        );
        if let Some(rss) = p.rss_bytes {
            let help = "Resident memory size in bytes.";
            self.gauge("process_resident_memory_bytes", help, Num::Int(rss));
        }
        if let Some(max) = p.max_fds {
            let help = "Maximum number of open file descriptors (soft limit).";
            self.gauge("process_max_fds", help, Num::Int(max));
        }
    }
}

/// HELP text escapes: "`\` and line feed characters must be escaped as `\\` and `\n`".
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label values additionally escape the double quote.
fn escape_label(s: &str) -> String {
    escape_help(s).replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ProcessFacts {
        ProcessFacts {
            rss_bytes: Some(4096),
            max_fds: Some(20000),
            uptime: Duration::from_millis(1500),
            draining: false,
        }
    }

    fn two_shards() -> Vec<Counters> {
        let mut a = Counters {
            open: 2,
            accepted: 3,
            messages_in: 10,
            loop_busy_us: 1_500_000,
            ..Counters::default()
        };
        a.close(CloseReason::SlowConsumer);
        let b = Counters {
            open: 1,
            messages_in: 5,
            loop_busy_us: 250_000,
            deliveries_dropped: 7,
            deliveries_conflated: 3,
            sse_streams: 2,
            ..Counters::default()
        };
        vec![a, b]
    }

    #[test]
    fn totals_shards_and_reasons_have_the_expected_samples() {
        let text = render(&two_shards(), &facts());
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "starling_messages_in_total 15",
            "starling_shard_messages_in_total{shard=\"0\"} 10",
            "starling_shard_messages_in_total{shard=\"1\"} 5",
            "starling_connections_open 2",
            "starling_slow_consumers_total 1",
            "starling_connections_closed_total{reason=\"slow_consumer\"} 1",
            "starling_connections_closed_total{reason=\"normal\"} 0",
            "starling_shard_connections_closed_total{shard=\"0\",reason=\"slow_consumer\"} 1",
            "starling_loop_busy_seconds_total 1.75",
            "starling_shard_loop_busy_seconds_total{shard=\"1\"} 0.25",
            "starling_uptime_seconds 1.5",
            "starling_deliveries_dropped_total 7",
            "starling_deliveries_conflated_total 3",
            "starling_shard_deliveries_dropped_total{shard=\"1\"} 7",
            "starling_sse_streams_total 2",
            "starling_draining 0",
            "starling_shards 2",
            "process_resident_memory_bytes 4096",
            "process_max_fds 20000",
            "# TYPE starling_messages_in_total counter",
            "# TYPE starling_connections_open gauge",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn every_family_is_announced_once_before_its_samples() {
        let text = render(&two_shards(), &facts());
        let mut declared: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    declared.iter().all(|(n, _)| n != name),
                    "{name} declared twice"
                );
                assert_eq!(
                    kind.ends_with("counter"),
                    name.ends_with("_total"),
                    "{line}"
                );
                declared.push((name.into(), kind.into()));
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().unwrap();
                let (current, _) = declared.last().expect("a sample before any TYPE");
                assert_eq!(name, current, "sample outside its family: {line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        // Each scalar twice (total and shard), closings twice, five process gauges.
        assert_eq!(declared.len(), 2 * SCALARS + 2 + 5);
    }

    #[test]
    fn no_shards_and_unknown_process_facts_still_render() {
        let p = ProcessFacts {
            rss_bytes: None,
            max_fds: None,
            ..facts()
        };
        let text = render(&[], &p);
        assert!(text.contains("starling_messages_in_total 0\n"));
        assert!(!text.contains("process_max_fds"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn escapes_follow_the_format() {
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
        assert_eq!(escape_label("say \"hi\"\n"), "say \\\"hi\\\"\\n");
    }

    #[test]
    fn max_open_files_is_the_soft_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             96364                96364                processes \n\
                    Max open files            1024                 20000                files     \n";
        assert_eq!(parse_max_open_files(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_open_files(unlimited), None);
        assert_eq!(parse_max_open_files(""), None);
    }
}
