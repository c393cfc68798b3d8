//! `starling-loadgen`: parse the flags, make a plan (or refuse one), run it in this process
//! or over `--procs` children, print the report.
//!
//! Exit status: 0 when the run was clean, 1 when anything failed (the summary says what),
//! 2 when the plan was refused or could not start, 130 after Ctrl-C (the summary so far is
//! still printed). A second Ctrl-C exits at once.

mod addr;
mod alloc;
mod cli;
mod client;
mod clock;
mod coalesce;
mod control;
mod env;
mod hub;
mod inflight;
mod plan;
mod plot;
mod procs;
mod progress;
mod report;
mod run;
mod stats;
mod worker;
mod workload;

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use starling::sys;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("starling-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &cli::Args) -> Result<u8, String> {
    let limit = sys::raise_nofile_limit().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let plan = plan::Plan::from_args(args, sys::core_count(), limit.soft, addr::PortSpace::read())?;
    if plan.fastopen && plan.child.is_none() {
        if let Some(note) = env::fastopen_note() {
            eprintln!("starling-loadgen: {note}");
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal asks for a clean stop (summary printed); the second exits.
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())
            .and_then(|_| signal_hook::flag::register(sig, stop.clone()))
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    }
    let plan = Arc::new(plan);
    if plan.child.is_some() {
        return procs::child(plan, stop);
    }
    let out = if plan.procs > 1 {
        procs::parent(&plan, &stop)?
    } else {
        run::run(plan.clone(), &mut run::Open, &stop).map_err(|e| e.to_string())?
    };
    let report = report::Report::new(&plan, &out, env::Environment::read(limit.soft, limit.hard));
    print!("{}", report.text());
    if let Some(path) = &plan.json {
        let json = serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(dir) = &plan.report {
        for note in plot::write_all(dir, &report, &out.stats.latency)? {
            eprintln!("starling-loadgen: {note}");
        }
    }
    Ok(report.exit_code())
}
