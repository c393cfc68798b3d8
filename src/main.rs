//! `starling`: parse flags, check limits, start the shards, wait for a signal, drain, report;
//! or (`starling drain`) ask a running node to drain through its admin API.
//!
//! Exit codes: 0 after a clean drain, 2 for a configuration error, 1 for anything else
//! (e.g. the address cannot be bound). `starling drain`: 0 when the node started draining,
//! 1 otherwise (2 for bad flags, as always).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use starling::api;
use starling::config::ServeArgs;
use starling::shard::Server;

#[derive(Parser)]
#[command(
    name = "starling",
    version,
    about = "A sharded, per-core WebSocket engine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the WebSocket server.
    Serve(Box<ServeArgs>),
    /// Ask a running node to drain (as SIGTERM does) through its admin API (`POST /drain`).
    Drain(api::client::DrainArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(args) => serve(&args),
        Cmd::Drain(args) => match api::client::drain(&args) {
            Ok(started) => {
                println!("{started}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("starling drain: {why}");
                ExitCode::from(1)
            }
        },
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let started = Instant::now();
    // Handlers first: a SIGTERM that arrives while we start must still drain, not kill.
    let signals = match signal_channel() {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    let config = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    log_limits(config.shard_count(), config.max_connections_per_shard);
    let stats_every = config.stats_interval;
    let api = (config.api_listen, config.api_key.clone());
    // Shared with the admin API, which publishes through it; unique again once the API stops.
    let server = match Server::start(config) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(1);
        }
    };
    let api = start_api(api, &server, started);
    let tick = if stats_every.is_zero() {
        Duration::from_millis(200)
    } else {
        stats_every.min(Duration::from_millis(200))
    };
    let mut since_log = Duration::ZERO;
    while !server.is_finished() {
        match signals.recv_timeout(tick) {
            // A drain may also have started through the admin API (`POST /drain`).
            Ok(sig) if !server.is_draining() => {
                let plan = server.drain_plan();
                tracing::info!(
                    signal = sig,
                    batch = plan.batch,
                    code = plan.code,
                    "draining"
                );
                server.drain();
            }
            Ok(sig) => {
                tracing::warn!(signal = sig, "second signal: stopping now");
                server.shutdown();
            }
            Err(_) => {
                since_log += tick;
                if !stats_every.is_zero() && since_log >= stats_every {
                    since_log = Duration::ZERO;
                    tracing::info!(counters = %server.counters(), "stats");
                }
            }
        }
    }
    if let Some(api) = api {
        api.stop();
    }
    let totals = match Arc::try_unwrap(server) {
        Ok(server) => server.join(),
        Err(server) => {
            // Not expected: the API thread, the only other holder, has been joined. The shards
            // have exited either way; only their threads go unjoined.
            tracing::error!("server still shared at exit; not joining its threads");
            server.shutdown();
            server.counters()
        }
    };
    tracing::info!(counters = %totals, "stopped");
    ExitCode::SUCCESS
}

/// Starts the admin API if configured. It is off the data path, so failing to bind it (say the
/// port is taken by another instance) is logged and the WebSocket server keeps serving: losing
/// metrics is better than refusing every client. The configuration (including "no key on a
/// public address") was already validated.
fn start_api(
    (addr, key): (Option<SocketAddr>, Option<String>),
    server: &Arc<Server>,
    started: Instant,
) -> Option<api::ApiServer> {
    let addr = addr?;
    match api::start(addr, key, api::ApiView::of(server, started)) {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::error!(
                %addr,
                error = %e,
                "cannot start the admin API; serving without it (see --api-listen, --no-api)"
            );
            None
        }
    }
}

/// Raises the soft open-file limit to the hard one and says how many connections that allows.
fn log_limits(shards: usize, per_shard: usize) {
    match starling::sys::raise_nofile_limit() {
        Ok(l) => {
            // A few descriptors go to listeners, epoll, eventfds and stdio.
            let usable = l.soft.saturating_sub(16 + 3 * shards as u64);
            tracing::info!(
                nofile_before = l.soft_before,
                nofile = l.soft,
                hard = l.hard,
                connections = usable,
                "open-file limit"
            );
            let wanted = (per_shard as u64).saturating_mul(shards as u64);
            if per_shard != 0 && wanted > usable {
                tracing::warn!(
                    configured = wanted,
                    allowed = usable,
                    hint = starling::sys::LIMITS_HINT,
                    "max connections is above what the open-file limit allows"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

/// SIGTERM/SIGINT, delivered on a channel by a small thread.
fn signal_channel() -> std::io::Result<crossbeam_channel::Receiver<i32>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}
