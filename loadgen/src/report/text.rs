//! The text summary: one line per aspect of the run, from the same [`Report`] the JSON is
//! written from.

use std::fmt::Write as _;

use super::Report;
use crate::cli::Scenario;
use crate::progress::human;

impl Report {
    /// The text summary.
    pub fn text(&self) -> String {
        let mut t = String::new();
        let w = &mut t;
        let _ = writeln!(
            w,
            "starling-loadgen {} {}  ({} process(es) x {} thread(s))",
            serde_json::to_value(self.scenario)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            self.target,
            self.procs,
            self.threads
        );
        let c = &self.connections;
        let _ = writeln!(
            w,
            "  connections  {} handshakes of {} attempted, {} failed, peak {} open{}",
            c.handshakes,
            c.attempted,
            c.failed,
            c.open_peak,
            match (self.time_to_n_s, self.handshakes_per_sec) {
                (Some(t), Some(r)) => format!("; time to N {t:.3} s ({}/s)", human(r)),
                _ => String::new(),
            }
        );
        if let Some([lo, hi]) = c.local_ports {
            let _ = writeln!(
                w,
                "  ports        local ports {lo}-{hi} assigned, one per connection of each \
                 (source, target) pair (over half the ephemeral range); {} were taken and \
                 placed by the kernel",
                c.port_fallbacks
            );
        }
        let h = &self.handshake_latency_us;
        let _ = writeln!(
            w,
            "  handshake    p50 {} p90 {} p99 {} p99.9 {} max {}",
            us(h.p50),
            us(h.p90),
            us(h.p99),
            us(h.p999),
            us(h.max)
        );
        let failures: Vec<String> = self
            .failures
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if !failures.is_empty() {
            let _ = writeln!(w, "  FAILURES     {}", failures.join(", "));
        }
        if self.messages_sent + self.messages_received > 0 {
            let _ = writeln!(
                w,
                "  messages     sent {} received {}  {} msg/s over {:.2} s",
                self.messages_sent,
                self.messages_received,
                human(self.messages_per_sec),
                self.duration_s
            );
        }
        let l = &self.latency_us;
        // Runs that send only a --first-message measure no latency.
        if self.messages_sent + self.messages_received > 0 && l.count > 0 {
            let _ = writeln!(
                w,
                "  latency      p50 {} p90 {} p99 {} p99.9 {} max {}{}",
                us(l.p50),
                us(l.p90),
                us(l.p99),
                us(l.p999),
                us(l.max),
                if self.latency_from_intended_time {
                    "  (from intended send time)"
                } else if self.subscribe.is_some() {
                    "  (from the \"t\" in the data)"
                } else {
                    ""
                }
            );
        }
        if let (Some(d), Some(e)) = (self.deliveries, self.expected_deliveries) {
            let _ = writeln!(
                w,
                "  fanout       {} deliveries of {} expected ({} subscribers), {}/s; gaps {} duplicates {} reordered {} missing {}",
                d,
                e,
                self.subscribers.unwrap_or(0),
                human(self.deliveries_per_sec.unwrap_or(0.0)),
                self.gaps.unwrap_or(0),
                self.duplicates.unwrap_or(0),
                self.reordered.unwrap_or(0),
                self.missing.unwrap_or(0)
            );
        }
        if let Some(h) = &self.hub {
            let _ = writeln!(
                w,
                "  hub          {} channel(s), {}-{} subscribers each; publishes acked {} of {}, refused {}; subscribes refused {}; by publisher: gaps {} duplicates {} reordered {}; foreign {}",
                self.channels.unwrap_or(1),
                h.subscribers_per_channel.0,
                h.subscribers_per_channel.1,
                h.publish_acks,
                self.published.unwrap_or(0),
                h.publish_errors,
                h.subscribe_errors,
                h.publisher_gaps,
                h.publisher_duplicates,
                h.publisher_reordered,
                self.foreign.unwrap_or(0)
            );
        }
        if let Some(l) = &self.subscribe {
            let _ = writeln!(
                w,
                "  subscribe    {}: {} subscribed, {} refused; {} heard {} deliver{} each; {} deliveries ({} timed), gaps {} duplicates {} reordered {} foreign {}",
                l.channel,
                l.subscribed,
                l.refused,
                l.reached,
                l.wanted,
                if l.wanted == 1 { "y" } else { "ies" },
                l.deliveries,
                l.timed,
                l.gaps,
                l.duplicates,
                l.reordered,
                l.foreign
            );
        }
        if let Some(ns) = self.cpu_ns_per_delivery {
            let _ = writeln!(
                w,
                "  cost         {ns:.0} ns of load-generator CPU per delivery"
            );
        }
        if let (Some(n), Some(r), Some(td)) =
            (self.cycles, self.cycles_per_sec, &self.teardown_latency_us)
        {
            let _ = writeln!(
                w,
                "  churn        {n} cycles, {}/s; teardown p50 {} p99 {}",
                human(r),
                us(td.p50),
                us(td.p99)
            );
        }
        if let Some(cap) = &self.capacity {
            match &cap.largest_ok {
                Some(s) => {
                    let _ = writeln!(
                        w,
                        "  capacity     held {} connections x {}/s (p99 {}); stopped: {}",
                        s.connections,
                        s.per_conn_rate,
                        us(s.p99_us),
                        cap.stopped_because
                    );
                }
                None => {
                    let _ = writeln!(w, "  capacity     no step held: {}", cap.stopped_because);
                }
            }
        }
        if let Some(d) = &self.density {
            let f = |x: Option<f64>| x.map_or("n/a".to_owned(), |v| format!("{v:.0} B"));
            let _ = writeln!(
                w,
                "  density      per connection: server RSS {}, kernel TCP buffers {}, kernel slab {} (both ends)",
                f(d.server_rss_bytes_per_conn),
                f(d.kernel_tcp_mem_bytes_per_conn),
                f(d.kernel_slab_bytes_per_conn)
            );
        }
        // connect's work is the ramp; the other scenarios' is the measured phase.
        let (m, phase) = if self.scenario == Scenario::Connect {
            (&self.cpu.ramp, "ramp")
        } else {
            (&self.cpu.measure, "measure")
        };
        let cores: Vec<String> = m
            .cores
            .iter()
            .map(|c| {
                format!(
                    "cpu{}{} {:.0}% (user {:.0}, sys {:.0}, irq {:.0})",
                    c.cpu,
                    if c.ours { "*" } else { "" },
                    c.busy * 100.0,
                    c.user * 100.0,
                    c.system * 100.0,
                    c.irq * 100.0
                )
            })
            .collect();
        let _ = writeln!(
            w,
            "  cpu ({})  loadgen {:.2} cores (user {:.2} s, sys {:.2} s){}; cores (* = ours): {}",
            phase,
            m.busy_cores,
            m.user_s,
            m.system_s,
            m.server_busy_cores
                .map_or(String::new(), |s| format!(", server {s:.2} cores")),
            cores.join(", ")
        );
        let _ = writeln!(
            w,
            "  syscalls     read {} write {} epoll_wait {}{}{}; allocations during measure {}",
            self.syscalls.read,
            self.syscalls.write,
            self.syscalls.epoll_wait,
            match self.syscalls.coalesce_waits {
                0 => String::new(),
                n => format!(" nanosleep {n} (--coalesce {}us)", self.coalesce_us),
            },
            self.syscalls
                .per_message
                .map_or(String::new(), |p| format!(" ({p:.3} per message)")),
            self.allocations_during_measure
        );
        let e = &self.error_kinds;
        let _ = writeln!(
            w,
            "  errors       {}{}",
            self.errors,
            if self.errors > 0 {
                format!(
                    " (connect failures {}, protocol {}, mismatched echoes {}, closed by server {}, dropped {}{})",
                    e.connect_failures,
                    e.protocol_errors,
                    e.mismatches,
                    e.closed_by_server,
                    e.dropped,
                    e.hub_errors.map_or(String::new(), |n| format!(", hub refusals {n}"))
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            w,
            "  result       {}",
            if self.interrupted {
                "INTERRUPTED (figures so far)"
            } else if self.ok {
                "ok"
            } else {
                "FAILED"
            }
        );
        t
    }
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}
