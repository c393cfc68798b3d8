//! The command line: flags as the user types them, and the parsers for rates, sizes and
//! durations. Nothing here decides whether a combination makes sense; `plan.rs` does.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Open N connections (at --rate, or as fast as --concurrency allows), hold them for
    /// --duration: time to N, handshake latency, failures by cause, memory per connection.
    /// With --subscribe, every connection also subscribes to one hub channel and the run
    /// counts what is published to it while they are held.
    Connect,
    /// Closed loop: each connection keeps --depth messages of --size bytes in flight (or,
    /// with --rate, an open loop at that total rate); messages/s and round-trip latency.
    Echo,
    /// --connections subscribers plus --publishers publishers on a broadcast server (or,
    /// with --mode hub, on channels of `starling serve --app hub`); every message carries
    /// (publisher, sequence, send time): deliveries/s, publish-to-receive latency, gaps,
    /// duplicates and reordering per subscriber.
    Fanout,
    /// Connect, handshake, close handshake, repeat (--rate cycles/s or as fast as
    /// --connections parallel cycles allow): handshake and teardown cost.
    Churn,
    /// Ramp load in steps (connections, or the per-connection message rate with
    /// --ramp rate) until p99 exceeds --p99 or errors exceed --max-error-rate.
    Capacity,
}

/// How fanout's publishers and subscribers talk to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A broadcast server: every message goes to every connection; the stamp is binary.
    Raw,
    /// The channel protocol of `starling serve --app hub`: subscribers subscribe to
    /// channels bench.0 .. bench.{K-1} (--channels), publishers publish JSON to them in turn,
    /// the server numbers each channel's deliveries.
    Hub,
}

/// What `capacity` increases from step to step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ramp {
    /// Add --step connections per step, each sending --per-conn-rate.
    Connections,
    /// Keep --connections open; step k sends k x --per-conn-rate on each.
    Rate,
}

const EXAMPLES: &str = "\
Examples:
  starling-loadgen echo ws://127.0.0.1:9001/ --connections 64 --depth 64 --size 32 --duration 10s
  starling-loadgen fanout ws://127.0.0.1:9001/ --connections 10000 --publishers 1 --rate 1000/s
  starling-loadgen fanout ws://127.0.0.1:9001/ --mode hub --channels 4 -c 200 --publishers 2
  starling-loadgen connect ws://127.0.0.1:9001/ --connections 19000 --rate 5000/s --server-pid 1234
  starling-loadgen connect ws://127.0.0.1:9001-9004/ --connections 60000 --procs 4
  starling-loadgen connect ws://127.0.0.1:9001/ -c 10000 --subscribe news --count 1 --duration 60s
  starling-loadgen churn ws://127.0.0.1:9001/ --rate 2000/s --duration 5s
  starling-loadgen capacity ws://127.0.0.1:9001/ --connections 10000 --step 1000 --p99 10ms

Exit status: 0 when every attempt succeeded, 1 when any connection failed or any error was
counted (the summary says which), 2 when the plan is refused (bad flags, or a limit that
would be hit half-way; the message names the limit and the fix).";

/// A multi-core WebSocket (RFC 6455) load generator.
#[derive(Debug, Clone, Parser)]
#[command(name = "starling-loadgen", version, after_help = EXAMPLES)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// Target: ws://host:port/path?query. A port range (ws://127.0.0.1:9001-9004/) spreads
    /// connections over several listeners.
    pub url: String,

    /// Connections (fanout: subscribers; churn: parallel cycles; capacity: the most).
    #[arg(short = 'c', long)]
    pub connections: Option<u32>,

    /// connect/capacity: new connections per second; echo: total messages per second (open
    /// loop); fanout: total publishes per second; churn: cycles per second. `5000`,
    /// `5000/s`, `5k/s`, `300/m`.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// How long to measure (connect: how long to hold the connections once all are open).
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// echo: messages in flight per connection.
    #[arg(long)]
    pub depth: Option<u32>,

    /// Payload bytes per message (raw fanout: at least 32, which carry the stamp; hub fanout:
    /// the JSON stamp, padded to this length when its numbers leave room).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<usize>,

    /// fanout: publisher connections (extra to --connections).
    #[arg(long)]
    pub publishers: Option<u32>,

    /// fanout: `raw` (a broadcast server, binary stamps) or `hub` (the channel protocol of
    /// `starling serve --app hub`: subscribe, publish, numbered JSON deliveries).
    #[arg(long, value_enum, default_value = "raw")]
    pub mode: Mode,

    /// fanout --mode hub: channels `bench.0 .. bench.{K-1}`; subscribers are spread over them
    /// round-robin and each publisher takes them in turn [default: 1].
    #[arg(long, value_name = "K")]
    pub channels: Option<u32>,

    /// Stop after this many messages (echo: received; fanout: published) or cycles (churn);
    /// connect --subscribe: end the hold once every subscriber has received this many
    /// deliveries.
    #[arg(long)]
    pub count: Option<u64>,

    /// connect: subscribe every connection to CHANNEL of `starling serve --app hub` right
    /// after its 101 (open once the server says ok), hold them, and count what arrives:
    /// deliveries, their sequence, and the latency from a `"t"` (CLOCK_MONOTONIC ns) in the
    /// data, when there is one. Someone else publishes (e.g. the admin API's POST /publish).
    #[arg(long, value_name = "CHANNEL")]
    pub subscribe: Option<String>,

    /// connect, churn: send TEXT as one text message on every connection right after its
    /// 101, e.g. the subscribe or hello a server wants before it keeps a connection; `{n}`
    /// in TEXT becomes the connection's number (0, 1, ...). What the server sends back is
    /// counted as received.
    #[arg(long, value_name = "TEXT")]
    pub first_message: Option<String>,

    /// Event-loop threads per process (default: the cores this process may run on).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Child processes sharing the connections, for more sockets than one process may open.
    #[arg(long, default_value_t = 1)]
    pub procs: usize,

    /// Source addresses: `127.0.0.1-127.0.0.50` or `127.0.0.1,127.0.0.2`.
    #[arg(long)]
    pub source: Option<String>,

    /// Extra request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,

    /// Subprotocol to offer (repeatable, in order of preference).
    #[arg(long = "protocol")]
    pub protocols: Vec<String>,

    /// Send text frames instead of binary (echo).
    #[arg(long)]
    pub text: bool,

    /// TCP Fast Open: the upgrade request rides in the SYN (TCP_FASTOPEN_CONNECT), one packet
    /// and one round trip fewer per connection against a target that has it on (Starling:
    /// `serve --tcp-fastopen N`). The first connection to a target fetches the cookie; a
    /// target without it answers a normal handshake. Needs the client bit in
    /// net.ipv4.tcp_fastopen (1, the default).
    #[arg(long)]
    pub fastopen: bool,

    /// echo: after a poll that brought fewer than 8 events, wait this long before the next
    /// one, so that one wakeup collects the replies of several connections. Every sleep in
    /// a poll costs the target's core a cross-core wakeup (on a VM, an exit), so a client
    /// that is quicker than the target and wakes for every reply slows down what it
    /// measures. A reply that arrives during the wait is stamped up to this much late:
    /// latency can be overstated by at most this, never understated. `auto`: 100us in a
    /// closed loop (no --rate) with at least 1024 messages in flight per thread
    /// (connections x depth), where round trips are queueing-bound; otherwise off. `off` or
    /// `0`: never.
    #[arg(long, default_value = "auto")]
    pub coalesce: String,

    /// Connect + handshake timeout per connection.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,

    /// Most handshakes in flight per process when no --rate paces them.
    #[arg(long, default_value_t = 1024)]
    pub concurrency: u32,

    /// fanout/echo: how long to wait for messages still in flight after the measured phase.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub drain: Duration,

    /// capacity: the p99 latency bound, e.g. `10ms`.
    #[arg(long, value_parser = parse_duration)]
    pub p99: Option<Duration>,

    /// capacity: the error fraction that ends the ramp.
    #[arg(long, default_value_t = 0.001)]
    pub max_error_rate: f64,

    /// capacity: what to ramp.
    #[arg(long, value_enum, default_value = "connections")]
    pub ramp: Ramp,

    /// capacity: connections added per step (default: a tenth of --connections).
    #[arg(long)]
    pub step: Option<u32>,

    /// capacity: how long each step lasts.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub step_duration: Duration,

    /// capacity: messages per second each connection sends (step 1 with --ramp rate).
    #[arg(long, value_parser = parse_rate, default_value = "1/s")]
    pub per_conn_rate: f64,

    /// Largest message accepted from the server.
    #[arg(long, value_parser = parse_size, default_value = "16MiB")]
    pub max_message: usize,

    /// The server's pid (local target): its CPU time, and in connect its memory per
    /// connection (RSS, kernel socket memory) before and after.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write latency.hgrm, latency.png and timeline.png into this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,

    /// No live progress line, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,

    /// Internal: run as child INDEX of COUNT under a `--procs` parent.
    #[arg(long, hide = true)]
    pub child: Option<String>,
}

/// `5000`, `5000/s`, `5k/s`, `300/m`, `2/ms` -> per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let (num, per) = match s.split_once('/') {
        Some((n, unit)) => (n, unit),
        None => (s, "s"),
    };
    let unit_s = match per {
        "s" | "sec" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "unknown rate unit `/{per}` (use /s, /ms, /m or /h)"
            ))
        }
    };
    let (digits, mult) = split_suffix(num, &[("k", 1e3), ("K", 1e3), ("M", 1e6)]);
    let n: f64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a rate like 5000/s"))?;
    let rate = n * mult / unit_s;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("rate `{s}` must be positive"));
    }
    Ok(rate)
}

/// `32`, `4k`, `4KiB`, `16MiB` -> bytes (k/K/KiB = 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let (digits, mult) = split_suffix(
        s,
        &[
            ("KiB", 1024.0),
            ("MiB", 1048576.0),
            ("k", 1024.0),
            ("K", 1024.0),
            ("M", 1048576.0),
            ("B", 1.0),
        ],
    );
    let n: usize = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 32, 4KiB or 16MiB"))?;
    Ok(n * mult as usize)
}

/// `10s`, `500ms`, `2m` (humantime), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs >= 0.0 && secs.is_finite() {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}"))
}

fn split_suffix<'a>(s: &'a str, suffixes: &[(&str, f64)]) -> (&'a str, f64) {
    for &(suffix, mult) in suffixes {
        if let Some(digits) = s.strip_suffix(suffix) {
            return (digits, mult);
        }
    }
    (s, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("5000"), Ok(5000.0));
        assert_eq!(parse_rate("5000/s"), Ok(5000.0));
        assert_eq!(parse_rate("5k/s"), Ok(5000.0));
        assert_eq!(parse_rate("300/m"), Ok(5.0));
        assert_eq!(parse_rate("2/ms"), Ok(2000.0));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("5/fortnight").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32"), Ok(32));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_documented_command_lines_parse() {
        let a = Args::try_parse_from([
            "starling-loadgen",
            "echo",
            "ws://127.0.0.1:9001/",
            "--connections",
            "64",
            "--depth",
            "64",
            "--size",
            "32",
            "--duration",
            "10s",
            "--json",
            "out.json",
        ])
        .unwrap();
        assert_eq!(a.scenario, Scenario::Echo);
        assert_eq!(a.depth, Some(64));
        let f = Args::try_parse_from([
            "starling-loadgen",
            "fanout",
            "ws://127.0.0.1:9001/",
            "--connections",
            "10000",
            "--publishers",
            "1",
            "--rate",
            "1000/s",
        ])
        .unwrap();
        assert_eq!(f.rate, Some(1000.0));
        assert_eq!((f.mode, f.channels), (Mode::Raw, None));
        let h = Args::try_parse_from([
            "starling-loadgen",
            "fanout",
            "ws://127.0.0.1:9001/",
            "--mode",
            "hub",
            "--channels",
            "4",
        ])
        .unwrap();
        assert_eq!((h.mode, h.channels), (Mode::Hub, Some(4)));
    }
}
