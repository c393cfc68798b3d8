//! `--procs N`: more sockets than one process may open, spread over child processes of this
//! same binary, with one report at the end.
//!
//! Each child gets `--child i/N` and computes its own share (connections, publishers,
//! addresses) from the same plan. The parent and its children speak in lines:
//!
//! ```text
//! child -> parent (stdout)   ready <Snapshot>          every connection open or failed
//!                            watch <Snapshot> <hist>   about 4 times a second
//!                            result <ChildResult>      at the end (histograms as base64)
//! parent -> child (stdin)    go                        start measuring (all children at once)
//!                            EOF                       stop now (the parent is going away)
//! ```
//!
//! The parent merges the children's records exactly (histograms are added, not averaged),
//! measures the cores and the server itself, and prints one report.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::cli::Scenario;
use crate::clock::{now_ns, ns};
use crate::env::{CpuSnapshot, CpuUse, Density, MemSnapshot};
use crate::plan::Plan;
use crate::progress::{Monitor, Snapshot};
use crate::run::{self, Gate, Output, Timing};
use crate::stats::{hist_from_b64, hist_to_b64, Stats, WireStats};

/// What a child hands its parent at the end.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildResult {
    /// Counters and histograms.
    pub stats: WireStats,
    /// Phases as the child saw them.
    pub timing: Timing,
    /// Child CPU during the ramp.
    pub cpu_ramp: CpuUse,
    /// Child CPU during the measured phase.
    pub cpu_measure: CpuUse,
    /// Allocations during the measured phase.
    pub allocations_measure: u64,
    /// Resident memory with every connection open.
    pub client_rss_bytes: Option<u64>,
    /// Cut short.
    pub interrupted: bool,
}

/// The child's side of the gate: announce readiness, wait for `go`.
struct ChildGate {
    go: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Gate for ChildGate {
    fn ready(&mut self, snap: &Snapshot) -> bool {
        line("ready", &serde_json::to_string(snap).unwrap_or_default());
        while !self.go.load(Relaxed) && !self.stop.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.go.load(Relaxed) && !self.stop.load(Relaxed)
    }

    fn watch(&mut self, snap: &Snapshot, hist: &Histogram<u64>) {
        let s = serde_json::to_string(snap).unwrap_or_default();
        line("watch", &format!("{s} {}", hist_to_b64(hist)));
    }
}

fn line(kind: &str, body: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{kind} {body}");
    let _ = out.flush();
}

/// Runs as child `plan.child`: prints the lines above; returns the exit status.
pub fn child(plan: Arc<Plan>, stop: Arc<AtomicBool>) -> Result<u8, String> {
    let go = Arc::new(AtomicBool::new(false));
    {
        let (go, stop) = (go.clone(), stop.clone());
        std::thread::spawn(move || {
            for l in std::io::stdin().lock().lines() {
                match l {
                    Ok(l) if l.trim() == "go" => go.store(true, Relaxed),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            stop.store(true, Relaxed);
        });
    }
    let mut gate = ChildGate {
        go,
        stop: stop.clone(),
    };
    let out = run::run(plan, &mut gate, &stop).map_err(|e| e.to_string())?;
    let result = ChildResult {
        stats: out.stats.to_wire(),
        timing: out.timing,
        cpu_ramp: out.cpu_ramp,
        cpu_measure: out.cpu_measure,
        allocations_measure: out.allocations_measure,
        client_rss_bytes: out.client_rss_bytes,
        interrupted: out.interrupted,
    };
    line(
        "result",
        &serde_json::to_string(&result).map_err(|e| e.to_string())?,
    );
    Ok(0)
}

enum Msg {
    Ready(usize),
    Watch(usize, Snapshot, Option<Histogram<u64>>),
    Result(usize, Box<ChildResult>),
    Gone(usize, String),
}

/// The command line for child `i`: ours without the outputs, plus `--child`.
fn child_args(i: usize, n: usize) -> Vec<String> {
    let drop_with_value = ["--json", "--report", "--server-pid"];
    let mut out = Vec::new();
    let mut skip = false;
    for a in std::env::args().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        if a == "--no-progress" {
            continue;
        }
        if drop_with_value.contains(&a.as_str()) {
            skip = true;
            continue;
        }
        if drop_with_value
            .iter()
            .any(|f| a.starts_with(&format!("{f}=")))
        {
            continue;
        }
        out.push(a);
    }
    out.push("--no-progress".into());
    out.push(format!("--child={i}/{n}"));
    out
}

/// Runs `plan.procs` children and merges their figures.
pub fn parent(plan: &Plan, stop: &AtomicBool) -> Result<Output, String> {
    let n = plan.procs;
    let t0 = now_ns();
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let observe_server = plan.scenario == Scenario::Connect;
    let mem_before = plan
        .server_pid
        .filter(|_| observe_server)
        .map(MemSnapshot::read);
    let cpu0 = CpuSnapshot::read(plan.server_pid);
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut children: Vec<Child> = Vec::new();
    let mut stdins: Vec<Option<ChildStdin>> = Vec::new();
    for i in 0..n {
        let mut child = Command::new(&exe)
            .args(child_args(i, n))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start child {i}: {e}"))?;
        stdins.push(child.stdin.take());
        let stdout = child.stdout.take().ok_or("child has no stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || read_child(i, stdout, tx));
        children.push(child);
    }
    drop(tx);
    let mut mon = Monitor::new(t0, plan.progress);
    let mut snaps = vec![Snapshot::default(); n];
    let mut ready = vec![false; n];
    let mut results: Vec<Option<ChildResult>> = (0..n).map(|_| None).collect();
    let mut gone: Option<String> = None;
    let mut go_at = None;
    let mut cpu1 = None;
    let mut cpu2 = None;
    let mut density = None;
    let mut stdins_open = true;
    while results.iter().any(Option::is_none) {
        let stopping = stop.load(Relaxed) || gone.is_some();
        if stopping && stdins_open {
            // Closing their stdin tells the children to wrap up and report.
            stdins.iter_mut().for_each(|s| drop(s.take()));
            stdins_open = false;
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Msg::Ready(i)) => ready[i] = true,
            Ok(Msg::Watch(i, s, h)) => {
                snaps[i] = s;
                if let Some(h) = h {
                    mon.add_latency(&h);
                }
            }
            Ok(Msg::Result(i, r)) => results[i] = Some(*r),
            Ok(Msg::Gone(i, why)) => {
                if results[i].is_none() {
                    gone = Some(format!("child {i} ended without a result: {why}"));
                    results[i] = None;
                    break;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
        let mut total = Snapshot::default();
        snaps.iter().for_each(|s| total.add(s));
        mon.observe(now_ns(), total);
        if go_at.is_none() && ready.iter().all(|r| *r) && !stop.load(Relaxed) {
            cpu1 = Some(CpuSnapshot::read(plan.server_pid));
            density = mem_before.map(|before| {
                let after = MemSnapshot::read(plan.server_pid.unwrap_or(0));
                Density::new(total.open, before, after)
            });
            for s in stdins.iter_mut().flatten() {
                let _ = s.write_all(b"go\n");
                let _ = s.flush();
            }
            go_at = Some(now_ns());
            mon.phase = "measure";
        }
        if let (Some(g), None) = (go_at, &cpu2) {
            if now_ns() >= g + ns(plan.duration) {
                cpu2 = Some(CpuSnapshot::read(plan.server_pid));
                mon.phase = "drain";
            }
        }
    }
    mon.finish();
    drop(stdins);
    for mut c in children {
        let _ = c.wait();
    }
    if let Some(why) = gone {
        return Err(why);
    }
    let results: Vec<ChildResult> = results.into_iter().flatten().collect();
    let mut stats = Stats::default();
    let mut timing = Timing::default();
    let mut allocations = 0;
    let mut rss = 0;
    let mut interrupted = stop.load(Relaxed);
    let (mut ramp_cpu, mut measure_cpu) = (CpuUse::default(), CpuUse::default());
    for r in &results {
        stats.merge(&Stats::from_wire(&r.stats)?);
        timing.ramp_s = timing.ramp_s.max(r.timing.ramp_s);
        timing.time_to_n_s = match (timing.time_to_n_s, r.timing.time_to_n_s) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        timing.measure_s = timing.measure_s.max(r.timing.measure_s);
        timing.drain_s = timing.drain_s.max(r.timing.drain_s);
        allocations += r.allocations_measure;
        rss += r.client_rss_bytes.unwrap_or(0);
        interrupted |= r.interrupted;
        for (sum, part) in [
            (&mut ramp_cpu, &r.cpu_ramp),
            (&mut measure_cpu, &r.cpu_measure),
        ] {
            sum.user_s += part.user_s;
            sum.system_s += part.system_s;
            sum.busy_cores += part.busy_cores;
            sum.wall_s = sum.wall_s.max(part.wall_s);
        }
    }
    timing.total_s = (now_ns() - t0) as f64 / 1e9;
    // Cores and the server are measured here, over the same windows.
    let cpu1 = cpu1.unwrap_or_else(|| CpuSnapshot::read(plan.server_pid));
    let cpu2 = cpu2.unwrap_or_else(|| CpuSnapshot::read(plan.server_pid));
    let (whole_ramp, whole_measure) = (cpu0.until(&cpu1), cpu1.until(&cpu2));
    ramp_cpu.cores = whole_ramp.cores;
    ramp_cpu.server_busy_cores = whole_ramp.server_busy_cores;
    measure_cpu.cores = whole_measure.cores;
    measure_cpu.server_busy_cores = whole_measure.server_busy_cores;
    Ok(Output {
        stats,
        timing,
        timeline: std::mem::take(&mut mon.samples),
        steps: Vec::new(),
        capacity_stop: None,
        density,
        cpu_ramp: ramp_cpu,
        cpu_measure: measure_cpu,
        allocations_measure: allocations,
        client_rss_bytes: Some(rss),
        interrupted,
    })
}

fn read_child(i: usize, stdout: std::process::ChildStdout, tx: crossbeam_channel::Sender<Msg>) {
    for l in BufReader::new(stdout).lines() {
        let l = match l {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Msg::Gone(i, e.to_string()));
                return;
            }
        };
        let (kind, body) = l.split_once(' ').unwrap_or((l.as_str(), ""));
        let msg = match kind {
            "ready" => Msg::Ready(i),
            "watch" => {
                let (snap, hist) = body.rsplit_once(' ').unwrap_or((body, ""));
                match serde_json::from_str(snap) {
                    Ok(s) => Msg::Watch(i, s, hist_from_b64(hist).ok()),
                    Err(_) => continue,
                }
            }
            "result" => match serde_json::from_str(body) {
                Ok(r) => Msg::Result(i, Box::new(r)),
                Err(e) => Msg::Gone(i, format!("unreadable result: {e}")),
            },
            _ => continue,
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
    let _ = tx.send(Msg::Gone(i, "exited".into()));
}
