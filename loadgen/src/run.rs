//! One process's run: start a thread per event loop, walk them through the phases
//! (ramp -> measure -> drain -> close), watch, and gather what they counted.
//!
//! The coordinator never touches a socket; it reads the threads' gauges, sets the phase, and
//! takes the snapshots (CPU, allocations, server memory) at the phase boundaries so each
//! figure covers exactly the phase it describes. Under `--procs` each child runs this with a
//! [`Gate`] that waits for the parent's go between ramp and measure, so all children
//! measure the same window.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::addr::share;
use crate::cli::{Mode, Ramp, Scenario};
use crate::clock::{now_ns, ns};
use crate::control::{Control, Phase};
use crate::env::{CpuSnapshot, CpuUse, Density, MemSnapshot};
use crate::plan::Plan;
use crate::progress::{Monitor, Sample, Snapshot};
use crate::stats::{new_histogram, Stats};
use crate::worker::{self, Spec, Tick};

/// How often the coordinator looks at the gauges.
const WATCH: Duration = Duration::from_millis(20);

/// Between ramp and measure: lets a parent line its children up.
pub trait Gate {
    /// Every connection of this process is open or failed. Return `false` to stop.
    fn ready(&mut self, snap: &Snapshot) -> bool;
    /// About every 250 ms: totals and the latency recorded since the last call.
    fn watch(&mut self, _snap: &Snapshot, _hist: &Histogram<u64>) {}
    /// Whether the measured phase should end for an outside reason.
    fn end_measure(&mut self) -> bool {
        false
    }
}

/// A gate that opens at once (a single process).
pub struct Open;
impl Gate for Open {
    fn ready(&mut self, _: &Snapshot) -> bool {
        true
    }
}

/// Wall-clock shape of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timing {
    /// Start to ramp end (every connection open or failed), seconds.
    pub ramp_s: f64,
    /// Start to the last successful handshake of the ramp, seconds.
    pub time_to_n_s: Option<f64>,
    /// The measured phase, seconds.
    pub measure_s: f64,
    /// Waiting for messages in flight, seconds.
    pub drain_s: f64,
    /// Start to finish, seconds.
    pub total_s: f64,
}

/// One capacity step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepResult {
    /// Step number, from 1.
    pub step: u32,
    /// Connections the step asked for.
    pub connections: u64,
    /// Connections open at the end of the step.
    pub open: u64,
    /// Messages per second per connection.
    pub per_conn_rate: f64,
    /// Messages received per second.
    pub messages_per_sec: f64,
    /// Median latency, µs (from the intended send time).
    pub p50_us: f64,
    /// p99 latency, µs.
    pub p99_us: f64,
    /// Errors during the step.
    pub errors: u64,
    /// Errors per message sent.
    pub error_rate: f64,
    /// Within the bounds.
    pub ok: bool,
}

/// What one process measured.
pub struct Output {
    /// Merged thread records.
    pub stats: Stats,
    /// Phases.
    pub timing: Timing,
    /// Per-second samples.
    pub timeline: Vec<Sample>,
    /// Capacity steps.
    pub steps: Vec<StepResult>,
    /// Why the capacity ramp stopped.
    pub capacity_stop: Option<String>,
    /// Server memory per connection (connect with --server-pid).
    pub density: Option<Density>,
    /// CPU during the ramp.
    pub cpu_ramp: CpuUse,
    /// CPU during the measured phase.
    pub cpu_measure: CpuUse,
    /// Heap allocations during the measured phase (all threads).
    pub allocations_measure: u64,
    /// Our resident memory with every connection open.
    pub client_rss_bytes: Option<u64>,
    /// Ctrl-C (or the parent) cut the run short.
    pub interrupted: bool,
}

/// Runs this process's share of `plan`.
pub fn run(plan: Arc<Plan>, gate: &mut dyn Gate, stop: &AtomicBool) -> std::io::Result<Output> {
    let t0 = now_ns();
    let (pi, pn) = plan.proc_index();
    let (cstart, ccount) = share(plan.connections, pn, pi);
    let (pstart, pcount) = share(plan.publishers, pn, pi);
    let threads = (plan.threads as u64).min((ccount + pcount).max(1)) as usize;
    let hub_channels = match plan.mode {
        Mode::Hub => plan.channels as usize,
        Mode::Raw => 0,
    };
    let ctl = Arc::new(Control::new(threads, hub_channels));
    let (tx, rx) = crossbeam_channel::unbounded::<Tick>();
    let mut handles = Vec::new();
    for t in 0..threads {
        let spec = spec_for(&plan, t, threads, (cstart, ccount), (pstart, pcount));
        let (plan, ctl, tx) = (plan.clone(), ctl.clone(), tx.clone());
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || {
                let _exit = ExitFlag(ctl.clone(), t);
                worker::run(plan, spec, ctl, tx)
            })?;
        handles.push(h);
    }
    drop(tx);
    let mut w = Watch {
        ctl: &ctl,
        rx: &rx,
        mon: Monitor::new(t0, plan.progress),
        gate_hist: new_histogram(),
        steps: Vec::new(),
        last_gate: 0,
    };
    let observe_server = plan.scenario == Scenario::Connect && plan.child.is_none();
    let mem_before = plan
        .server_pid
        .filter(|_| observe_server)
        .map(MemSnapshot::read);
    let cpu0 = CpuSnapshot::read(plan.server_pid);
    // A thread that ended early (an error, a panic) stops the run instead of leaving the
    // coordinator waiting for it.
    let stopped = |w: &Watch| stop.load(Relaxed) || w.ctl.stop.load(Relaxed) || w.ctl.any_exited();

    // Ramp: every connection of the scenario's initial set open or failed.
    while !ctl.all(|g| &g.ramp_done) && !stopped(&w) {
        w.pass(gate);
    }
    let ramp_end = now_ns();
    let last_open = ctl
        .gauges
        .iter()
        .map(|g| g.last_open_ns.load(Relaxed))
        .max()
        .unwrap_or(0);
    let cpu1 = CpuSnapshot::read(plan.server_pid);
    let snap = Snapshot::of(&ctl);
    let density = mem_before.map(|before| {
        let after = MemSnapshot::read(plan.server_pid.unwrap_or(0));
        Density::new(snap.open, before, after)
    });
    let client_rss_bytes = crate::env::self_rss();
    // Nothing opened: there is nothing to measure (the failures say why).
    let nothing_open = snap.open == 0
        && matches!(
            plan.scenario,
            Scenario::Connect | Scenario::Echo | Scenario::Fanout
        );
    let go = !stopped(&w) && gate.ready(&snap) && !nothing_open;

    // Measure.
    let measure_start = now_ns();
    let alloc0 = crate::alloc::allocations();
    let mut capacity_stop = None;
    if go {
        w.mon.phase = if plan.scenario == Scenario::Connect {
            "hold"
        } else {
            "measure"
        };
        ctl.set_phase(Phase::Measure);
        if plan.capacity.is_some() {
            capacity_stop = Some(w.capacity(&plan, gate, stop));
        } else {
            let end = measure_start + ns(plan.duration);
            while now_ns() < end && !stopped(&w) && !gate.end_measure() {
                if plan.count.is_some() && ctl.all(|g| &g.count_done) {
                    break;
                }
                w.pass(gate);
            }
        }
    }
    let measure_end = now_ns();
    let alloc1 = crate::alloc::allocations();
    let cpu2 = CpuSnapshot::read(plan.server_pid);

    // Drain: messages in flight come home, or the drain time is up.
    w.mon.phase = "drain";
    ctl.set_phase(Phase::Drain);
    let drain_end = measure_end + ns(plan.drain);
    let mut quiet = (now_ns(), Snapshot::of(&ctl).unique_deliveries);
    while go && now_ns() < drain_end && !stopped(&w) {
        let s = Snapshot::of(&ctl);
        let all_in = if plan.scenario != Scenario::Fanout {
            true
        } else if pn == 1 {
            let owed = ctl.hub_expected().unwrap_or(s.published * s.subscribers);
            s.unique_deliveries >= owed
        } else {
            // Publishers may live in another process: done when deliveries stop.
            if s.unique_deliveries != quiet.1 {
                quiet = (now_ns(), s.unique_deliveries);
            }
            now_ns() - quiet.0 > 300_000_000
        };
        if all_in && ctl.all(|g| &g.drained) {
            break;
        }
        w.pass(gate);
    }
    let drained_at = now_ns();

    w.mon.phase = "close";
    ctl.set_phase(Phase::Close);
    let mut stats = Stats::default();
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => stats.merge(&s),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(std::io::Error::other("an event-loop thread panicked")),
        }
    }
    w.ingest(gate);
    w.mon.observe(now_ns(), Snapshot::of(&ctl));
    w.mon.finish();
    if let Some(e) = failure {
        return Err(e);
    }
    let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e9;
    Ok(Output {
        timing: Timing {
            ramp_s: secs(t0, ramp_end),
            time_to_n_s: (last_open > 0).then(|| secs(t0, last_open)),
            measure_s: secs(measure_start, measure_end),
            drain_s: secs(measure_end, drained_at),
            total_s: secs(t0, now_ns()),
        },
        stats,
        timeline: std::mem::take(&mut w.mon.samples),
        steps: std::mem::take(&mut w.steps),
        capacity_stop,
        density,
        cpu_ramp: cpu0.until(&cpu1),
        cpu_measure: cpu1.until(&cpu2),
        allocations_measure: alloc1 - alloc0,
        client_rss_bytes,
        interrupted: stop.load(Relaxed),
    })
}

/// Marks thread `t` as ended when its closure returns or unwinds.
struct ExitFlag(Arc<Control>, usize);

impl Drop for ExitFlag {
    fn drop(&mut self) {
        self.0.gauges[self.1].exited.store(true, Relaxed);
    }
}

/// Thread `t`'s share of this process's share.
fn spec_for(plan: &Plan, t: usize, threads: usize, conns: (u64, u64), pubs: (u64, u64)) -> Spec {
    let (pi, pn) = plan.proc_index();
    let tn = threads as u64;
    let (cs, cc) = share(conns.1, tn, t as u64);
    let (ps, pc) = share(pubs.1, tn, t as u64);
    let all_threads = (pn * tn) as f64;
    let global_thread = pi * tn + t as u64;
    let count = plan.count.map(|n| match plan.scenario {
        Scenario::Echo => range_share(n, plan.connections, conns.0 + cs, cc),
        Scenario::Fanout => range_share(n, plan.publishers, pubs.0 + ps, pc),
        // connect --subscribe: deliveries each subscriber waits for, not a total.
        Scenario::Connect => n,
        _ => share(n, pn * tn, global_thread).1,
    });
    let open_rate = match plan.scenario {
        Scenario::Connect | Scenario::Churn | Scenario::Capacity => {
            plan.rate.map(|r| r / all_threads)
        }
        _ => None,
    };
    let send_interval_ns = match plan.scenario {
        Scenario::Echo => plan
            .rate
            .map(|r| (1e9 * plan.connections as f64 / r) as u64),
        Scenario::Fanout => plan.rate.map(|r| (1e9 * plan.publishers as f64 / r) as u64),
        _ => None,
    };
    Spec {
        index: t,
        conns: (conns.0 + cs, cc),
        pubs: (pubs.0 + ps, pc),
        count,
        open_rate,
        concurrency: u64::from(plan.concurrency).div_ceil(tn).max(1),
        send_interval_ns: send_interval_ns.map(|i| i.max(1)),
    }
}

/// Sum of `share(total, parts, i)` for `i` in `[start, start + n)`.
fn range_share(total: u64, parts: u64, start: u64, n: u64) -> u64 {
    let parts = parts.max(1);
    let (base, extra) = (total / parts, total % parts);
    n * base + extra.min(start + n).saturating_sub(start)
}

struct Watch<'a> {
    ctl: &'a Control,
    rx: &'a Receiver<Tick>,
    mon: Monitor,
    gate_hist: Histogram<u64>,
    /// Per capacity step: latency, sent, received, errors.
    steps: Vec<StepResult>,
    last_gate: u64,
}

impl Watch<'_> {
    /// One look: take ticks, update the timeline and progress, feed the gate, sleep.
    fn pass(&mut self, gate: &mut dyn Gate) {
        self.ingest(gate);
        std::thread::sleep(WATCH);
    }

    fn ingest(&mut self, gate: &mut dyn Gate) -> Vec<Tick> {
        let ticks: Vec<Tick> = self.rx.try_iter().collect();
        for t in &ticks {
            self.mon.add_latency(&t.hist);
            let _ = self.gate_hist.add(&t.hist);
        }
        let now = now_ns();
        let snap = Snapshot::of(self.ctl);
        self.mon.observe(now, snap);
        if now - self.last_gate >= 250_000_000 {
            gate.watch(&snap, &self.gate_hist);
            self.gate_hist.reset();
            self.last_gate = now;
        }
        ticks
    }

    /// The capacity ramp; returns why it stopped.
    fn capacity(&mut self, plan: &Plan, gate: &mut dyn Gate, stop: &AtomicBool) -> String {
        let Some(cap) = plan.capacity.as_ref() else {
            return String::new();
        };
        let max_steps = match cap.ramp {
            Ramp::Connections => plan.connections.div_ceil(cap.step),
            Ramp::Rate => (plan.duration.as_secs_f64() / cap.step_duration.as_secs_f64())
                .ceil()
                .max(1.0) as u64,
        };
        let targets = |k: u64| match cap.ramp {
            Ramp::Connections => ((k * cap.step).min(plan.connections), cap.per_conn_rate),
            Ramp::Rate => (plan.connections, k as f64 * cap.per_conn_rate),
        };
        let set = |ctl: &Control, k: u64| {
            let (conns, rate) = targets(k);
            ctl.capacity_conns.store(conns, Relaxed);
            ctl.capacity_rate_milli
                .store((rate * 1000.0).round().max(1.0) as u64, Relaxed);
            ctl.step.store(k as u32, Relaxed);
            ctl.wake_all();
        };
        set(self.ctl, 1);
        let mut k = 1;
        loop {
            let (mut hist, mut sent, mut received, mut errors) = (new_histogram(), 0, 0, 0);
            let end = now_ns() + ns(cap.step_duration);
            let mut collect = |w: &mut Watch, gate: &mut dyn Gate| {
                for t in w.ingest(gate) {
                    if u64::from(t.step) == k {
                        let _ = hist.add(&t.hist);
                        sent += t.sent;
                        received += t.received;
                        errors += t.errors;
                    }
                }
            };
            while now_ns() < end && !stop.load(Relaxed) {
                collect(self, gate);
                std::thread::sleep(WATCH);
            }
            let open = Snapshot::of(self.ctl).open;
            // Move the threads on (or park them on a step past the last) and wait until
            // each has handed over its last tick of step k.
            set(self.ctl, k + 1);
            let wait_until = now_ns() + 1_000_000_000;
            while now_ns() < wait_until
                && self
                    .ctl
                    .gauges
                    .iter()
                    .any(|g| u64::from(g.step_seen.load(Relaxed)) <= k)
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            collect(self, gate);
            let (conns, rate) = targets(k);
            let error_rate = errors as f64 / sent.max(1) as f64;
            let p99_us = hist.value_at_quantile(0.99) as f64 / 1000.0;
            let bound_us = cap.p99.as_secs_f64() * 1e6;
            let ok = p99_us <= bound_us
                && error_rate <= cap.max_error_rate
                && open >= conns
                && received > 0;
            self.steps.push(StepResult {
                step: k as u32,
                connections: conns,
                open,
                per_conn_rate: rate,
                messages_per_sec: received as f64 / cap.step_duration.as_secs_f64(),
                p50_us: hist.value_at_quantile(0.5) as f64 / 1000.0,
                p99_us,
                errors,
                error_rate,
                ok,
            });
            self.mon.println(&format!(
                "step {k}: {conns} connections x {rate}/s: p99 {p99_us:.0} µs, {errors} errors, {open} open -> {}",
                if ok { "held" } else { "over the bound" }
            ));
            if stop.load(Relaxed) {
                return "interrupted".into();
            }
            if !ok {
                return if received == 0 {
                    "no message came back".into()
                } else if p99_us > bound_us {
                    format!("p99 {p99_us:.0} µs over the bound {bound_us:.0} µs")
                } else if error_rate > cap.max_error_rate {
                    format!("error rate {error_rate:.4} over {}", cap.max_error_rate)
                } else {
                    format!("only {open} of {conns} connections open")
                };
            }
            if k >= max_steps {
                return "reached the last step without crossing a bound".into();
            }
            k += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_share_matches_the_sum_of_shares() {
        for total in [0u64, 5, 64, 1000, 1001] {
            for parts in [1u64, 3, 64] {
                for start in 0..parts {
                    for n in 0..=(parts - start) {
                        let direct: u64 =
                            (start..start + n).map(|i| share(total, parts, i).1).sum();
                        assert_eq!(range_share(total, parts, start, n), direct);
                    }
                }
            }
        }
    }
}
