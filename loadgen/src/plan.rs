//! A run, decided: the target, the scenario's parameters with their defaults filled in, and
//! the checks that refuse a plan before any socket is opened (bad combinations, an open-file
//! limit or a port range that would be exhausted half-way).
//!
//! Everything downstream reads a [`Plan`] and never the raw flags, so a default lives in
//! exactly one place: [`Plan::from_args`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::addr::{self, Endpoints};
use crate::cli::{Args, Mode, Ramp, Scenario};

/// Bytes at the start of every fanout payload: magic, publisher id, sequence, two stamps.
pub const STAMP_LEN: usize = 32;

/// The capacity scenario's ramp.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityPlan {
    /// Step k's p99 must stay at or under this.
    pub p99: Duration,
    /// Step k's errors / messages must stay at or under this.
    pub max_error_rate: f64,
    /// What grows from step to step.
    pub ramp: Ramp,
    /// Connections added per step (`Ramp::Connections`).
    pub step: u64,
    /// Length of one step.
    pub step_duration: Duration,
    /// Messages per second per connection in step 1.
    pub per_conn_rate: f64,
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What is measured.
    pub scenario: Scenario,
    /// The URL as given, for the report.
    pub url: String,
    /// Sources and destinations.
    pub endpoints: Endpoints,
    /// `Host` header for each target (same order as `endpoints.targets`).
    pub hosts: Vec<String>,
    /// Request target: path and query.
    pub path: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Offered subprotocols.
    pub protocols: Vec<String>,
    /// Connections (fanout: subscribers; churn: parallel cycles; capacity: the most), all
    /// processes together.
    pub connections: u64,
    /// Fanout publishers (extra connections), all processes together.
    pub publishers: u64,
    /// Fanout: how publishers and subscribers talk to the server.
    pub mode: Mode,
    /// Hub fanout: channels (1 in raw mode: a broadcast server is one channel).
    pub channels: u32,
    /// connect --subscribe: the hub channel every connection subscribes to.
    pub subscribe: Option<String>,
    /// connect, churn: a text message sent on every connection after its 101 (`{n}`: the
    /// connection's global index).
    pub first_message: Option<String>,
    /// Scenario rate per second (see `--rate`), all processes together.
    pub rate: Option<f64>,
    /// Measured phase (connect: hold time).
    pub duration: Duration,
    /// Echo messages in flight per connection.
    pub depth: u32,
    /// Payload bytes.
    pub size: usize,
    /// Stop after this many messages/cycles, all processes together.
    pub count: Option<u64>,
    /// Threads per process.
    pub threads: usize,
    /// Processes.
    pub procs: usize,
    /// Text frames instead of binary.
    pub text: bool,
    /// TCP Fast Open on every connection.
    pub fastopen: bool,
    /// Local ports assigned here instead of by the kernel's connect() (`addr::explicit_ports`).
    pub local_ports: Option<addr::LocalPorts>,
    /// echo: wait after a poll that brought few events (`--coalesce`; zero: off).
    pub coalesce: Duration,
    /// Connect + handshake timeout.
    pub timeout: Duration,
    /// Handshakes in flight per process when no rate paces them.
    pub concurrency: u32,
    /// Wait for in-flight messages after the measured phase.
    pub drain: Duration,
    /// Capacity ramp (capacity only).
    pub capacity: Option<CapacityPlan>,
    /// Largest message accepted.
    pub max_message: usize,
    /// Server to observe.
    pub server_pid: Option<u32>,
    /// JSON output file.
    pub json: Option<PathBuf>,
    /// Report directory.
    pub report: Option<PathBuf>,
    /// Live progress line wanted (it is shown only on a terminal).
    pub progress: bool,
    /// `(index, count)` when running as a child process.
    pub child: Option<(usize, usize)>,
}

impl Plan {
    /// Fills defaults, validates, and checks the budgets against this machine's limits:
    /// `nofile_hard` (RLIMIT_NOFILE hard) and `ports` (the ephemeral range, less reserved
    /// ports).
    pub fn from_args(
        a: &Args,
        cores: usize,
        nofile_hard: u64,
        ports: Option<addr::PortSpace>,
    ) -> Result<Plan, String> {
        let (hosts, ports_list, path) = parse_url(&a.url)?;
        let targets = resolve(&hosts, &ports_list)?;
        let sources = match &a.source {
            Some(s) => addr::parse_sources(s)?,
            None => Vec::new(),
        };
        if let Some(t) = targets.first() {
            if sources.iter().any(|s| s.is_ipv4() != t.is_ipv4()) {
                return Err("--source and the target must be the same IP family".into());
            }
        }
        let endpoints = Endpoints { sources, targets };
        let host_headers = ports_list.iter().map(|p| host_header(&hosts, *p)).collect();
        let headers = a
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<_, _>>()?;
        let s = a.scenario;
        let connections = u64::from(a.connections.unwrap_or(match s {
            Scenario::Echo => 64,
            Scenario::Fanout => 100,
            Scenario::Connect | Scenario::Capacity => 1000,
            Scenario::Churn => 64,
        }));
        let publishers = match s {
            Scenario::Fanout => u64::from(a.publishers.unwrap_or(1)),
            _ => 0,
        };
        let size = a.size.unwrap_or(match s {
            Scenario::Fanout => 64,
            _ => 32,
        });
        if connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if s == Scenario::Fanout && publishers == 0 {
            return Err("fanout needs at least one publisher (--publishers)".into());
        }
        let hub = a.mode == Mode::Hub;
        if hub && s != Scenario::Fanout {
            return Err("--mode hub applies to fanout only".into());
        }
        if a.channels.is_some() && !hub {
            return Err("--channels needs --mode hub (a broadcast server has one channel)".into());
        }
        let channels = a.channels.unwrap_or(1);
        if channels == 0 {
            return Err("--channels must be at least 1".into());
        }
        if u64::from(channels) > connections {
            return Err(format!(
                "--channels {channels} is more than the {connections} subscribers: every \
                 channel needs at least one"
            ));
        }
        // A hub stamp is JSON whose numbers take what they take: --size pads it, no minimum.
        if s == Scenario::Fanout && !hub && size < STAMP_LEN {
            return Err(format!(
                "fanout needs --size of at least {STAMP_LEN}: every message carries its \
                 publisher, sequence number and send time"
            ));
        }
        if a.publishers.is_some() && s != Scenario::Fanout {
            return Err("--publishers applies to fanout only".into());
        }
        if a.depth.is_some() && s != Scenario::Echo {
            return Err("--depth applies to echo only".into());
        }
        let depth = a.depth.unwrap_or(1);
        if depth == 0 {
            return Err("--depth must be at least 1".into());
        }
        if let Some(m) = &a.first_message {
            if !matches!(s, Scenario::Connect | Scenario::Churn) {
                return Err("--first-message applies to connect and churn only".into());
            }
            if a.subscribe.is_some() {
                return Err(
                    "--first-message and --subscribe both send the first message: \
                            choose one"
                        .into(),
                );
            }
            if m.len() > 1 << 20 {
                return Err("--first-message is over 1 MiB".into());
            }
        }
        if let Some(ch) = &a.subscribe {
            if s != Scenario::Connect {
                return Err("--subscribe applies to connect only (fanout has --mode hub)".into());
            }
            if !starling::hub::wire::valid_channel(ch) {
                return Err(format!(
                    "--subscribe `{ch}` is not a channel name: 1-{} of A-Z a-z 0-9 _ . : / @ -",
                    starling::hub::wire::MAX_CHANNEL_LEN
                ));
            }
        }
        let counts = matches!(s, Scenario::Echo | Scenario::Fanout | Scenario::Churn)
            || a.subscribe.is_some();
        if a.count.is_some() && !counts {
            return Err("--count applies to echo, fanout, churn and connect --subscribe".into());
        }
        if a.count == Some(0) && a.subscribe.is_some() {
            return Err("--count must be at least 1".into());
        }
        if a.procs == 0 {
            return Err("--procs must be at least 1".into());
        }
        if a.procs > 1 && s == Scenario::Capacity {
            return Err("capacity runs in one process (its steps are decided live)".into());
        }
        if a.procs as u64 > connections + publishers {
            return Err("--procs is larger than the number of connections".into());
        }
        if a.size.is_some_and(|n| n > a.max_message) {
            return Err("--size is over --max-message".into());
        }
        let threads = a.threads.unwrap_or(cores).max(1);
        if a.threads == Some(0) {
            return Err("--threads must be at least 1".into());
        }
        let capacity = (s == Scenario::Capacity).then(|| CapacityPlan {
            p99: a.p99.unwrap_or(Duration::from_millis(10)),
            max_error_rate: a.max_error_rate,
            ramp: a.ramp,
            step: a
                .step
                .map_or((connections / 10).max(1), |s| u64::from(s).max(1)),
            step_duration: a.step_duration,
            per_conn_rate: a.per_conn_rate,
        });
        if a.step == Some(0) {
            return Err("--step must be at least 1".into());
        }
        if a.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        let child = match &a.child {
            Some(c) => Some(parse_child(c)?),
            None => None,
        };
        let closed_loop = a.rate.is_none();
        let inflight = if closed_loop {
            connections * u64::from(depth)
        } else {
            0
        };
        let coalesce = crate::coalesce::resolve(&a.coalesce, s, inflight, threads * a.procs)?;
        let sockets = connections + publishers;
        addr::check_fds(sockets, a.procs as u64, nofile_hard)?;
        // Churn reopens connections (new global indices) and leaves TIME_WAIT behind, so
        // its ports stay the kernel's choice.
        let mut local_ports = None;
        if s != Scenario::Churn {
            addr::check_ports(&endpoints, sockets, ports.as_ref())?;
            local_ports = addr::explicit_ports(&endpoints, sockets, ports.as_ref());
        }
        Ok(Plan {
            scenario: s,
            url: a.url.clone(),
            endpoints,
            hosts: host_headers,
            path,
            headers,
            protocols: a.protocols.clone(),
            connections,
            publishers,
            mode: a.mode,
            channels,
            subscribe: a.subscribe.clone(),
            first_message: a.first_message.clone(),
            rate: a.rate,
            duration: a.duration.unwrap_or(Duration::from_secs(10)),
            depth,
            size,
            count: a.count,
            threads,
            procs: a.procs,
            text: a.text,
            fastopen: a.fastopen,
            local_ports,
            coalesce,
            timeout: a.timeout,
            concurrency: a.concurrency,
            drain: a.drain,
            capacity,
            max_message: a.max_message,
            server_pid: a.server_pid,
            json: a.json.clone(),
            report: a.report.clone(),
            progress: !a.no_progress && a.child.is_none(),
            child,
        })
    }

    /// This process's index and the process count.
    pub fn proc_index(&self) -> (u64, u64) {
        match self.child {
            Some((i, n)) => (i as u64, n as u64),
            None => (0, 1),
        }
    }
}

/// Splits `ws://host[:port[-port]]/path?query` into (host, ports, path-and-query).
pub fn parse_url(url: &str) -> Result<(String, Vec<u16>, String), String> {
    let rest = if let Some(r) = url.strip_prefix("ws://") {
        r
    } else if url.starts_with("wss://") {
        return Err("wss:// (TLS) is not supported: measure the server behind plain ws://".into());
    } else {
        return Err(format!("`{url}` is not a ws:// URL"));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    let (host, port_spec) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{url}`: unclosed [ in host"))?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    let bad = || format!("`{url}`: the port must be a number or a range like 9001-9004");
    let ports = match port_spec {
        None => vec![80],
        Some(p) => match p.split_once('-') {
            Some((lo, hi)) => {
                let lo: u16 = lo.parse().map_err(|_| bad())?;
                let hi: u16 = hi.parse().map_err(|_| bad())?;
                if lo > hi || lo == 0 {
                    return Err(bad());
                }
                (lo..=hi).collect()
            }
            None => vec![p.parse().map_err(|_| bad())?],
        },
    };
    if ports.contains(&0) {
        return Err(bad());
    }
    Ok((host, ports, path))
}

fn host_header(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Resolves the host once, before the run: one address, every port.
fn resolve(host: &str, ports: &[u16]) -> Result<Vec<SocketAddr>, String> {
    let ip = (host, ports[0])
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{host}` resolves to no address"))?
        .ip();
    Ok(ports.iter().map(|&p| SocketAddr::new(ip, p)).collect())
}

fn parse_header(h: &str) -> Result<(String, String), String> {
    let (name, value) = h
        .split_once(':')
        .ok_or_else(|| format!("--header `{h}` is not `Name: value`"))?;
    let name = name.trim();
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid_name || value.contains(['\r', '\n']) {
        return Err(format!("--header `{h}` is not a valid header line"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

fn parse_child(c: &str) -> Result<(usize, usize), String> {
    let (i, n) = c.split_once('/').ok_or("--child INDEX/COUNT")?;
    let (i, n): (usize, usize) = (
        i.parse().map_err(|_| "--child INDEX/COUNT")?,
        n.parse().map_err(|_| "--child INDEX/COUNT")?,
    );
    if i >= n {
        return Err("--child: INDEX must be below COUNT".into());
    }
    Ok((i, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let mut v = vec!["starling-loadgen"];
        v.extend_from_slice(args);
        let a = Args::try_parse_from(v).map_err(|e| e.to_string())?;
        Plan::from_args(&a, 2, 20_000, Some(addr::PortSpace::range(32768, 60999)))
    }

    #[test]
    fn urls() {
        let (h, p, path) = parse_url("ws://127.0.0.1:9001/chat?token=x").unwrap();
        assert_eq!(
            (h.as_str(), p, path.as_str()),
            ("127.0.0.1", vec![9001], "/chat?token=x")
        );
        let (_, p, path) = parse_url("ws://127.0.0.1:9001-9004").unwrap();
        assert_eq!((p.len(), path.as_str()), (4, "/"));
        let (h, p, path) = parse_url("ws://[::1]:80?x=1").unwrap();
        assert_eq!((h.as_str(), p, path.as_str()), ("::1", vec![80], "/?x=1"));
        assert!(parse_url("wss://x/").unwrap_err().contains("TLS"));
        assert!(parse_url("http://x/").is_err());
        assert!(parse_url("ws://x:0/").is_err());
        assert!(parse_url("ws://x:9004-9001/").is_err());
    }

    #[test]
    fn defaults_fill_in_per_scenario() {
        let p = plan(&["echo", "ws://127.0.0.1:9001/"]).unwrap();
        assert_eq!((p.connections, p.depth, p.size, p.threads), (64, 1, 32, 2));
        let f = plan(&["fanout", "ws://127.0.0.1:9001/"]).unwrap();
        assert_eq!((f.publishers, f.size), (1, 64));
        let c = plan(&["capacity", "ws://127.0.0.1:9001/", "-c", "500"]).unwrap();
        assert_eq!(c.capacity.unwrap().step, 50);
        assert_eq!(p.hosts, vec!["127.0.0.1:9001".to_owned()]);
    }

    /// The plan hands `coalesce::resolve` the closed loop's messages in flight over all
    /// threads; an open loop (--rate) counts none.
    #[test]
    fn coalesce_sees_the_closed_loop_in_flight_per_thread() {
        let co = |args: &[&str]| plan(args).map(|p| p.coalesce.as_micros());
        let u = "ws://127.0.0.1:9001/";
        assert_eq!(co(&["echo", u, "-c", "64", "--depth", "64"]), Ok(100));
        assert_eq!(co(&["echo", u, "-c", "64", "--depth", "16"]), Ok(0));
        let open = [
            "echo",
            u,
            "-c",
            "4000",
            "--threads",
            "1",
            "--rate",
            "1000/s",
        ];
        assert_eq!(co(&open), Ok(0));
        assert_eq!(co(&[&open[..], &["--coalesce", "20us"]].concat()), Ok(20));
        assert!(plan(&["fanout", u, "--coalesce", "50us"]).is_err());
    }

    #[test]
    fn refusals_are_specific() {
        let e = plan(&["fanout", "ws://127.0.0.1:9/", "--size", "8"]).unwrap_err();
        assert!(e.contains("--size"), "{e}");
        let e = plan(&["connect", "ws://127.0.0.1:9/", "-c", "30000"]).unwrap_err();
        assert!(
            e.contains("RLIMIT_NOFILE") && e.contains("--procs 2"),
            "{e}"
        );
        let e = plan(&[
            "connect",
            "ws://127.0.0.1:9/",
            "-c",
            "60000",
            "--procs",
            "4",
        ])
        .unwrap_err();
        assert!(e.contains("ip_local_port_range"), "{e}");
        assert!(plan(&[
            "connect",
            "ws://127.0.0.1:9-12/",
            "-c",
            "60000",
            "--procs",
            "4"
        ])
        .is_ok());
        let e = plan(&["echo", "ws://127.0.0.1:9/", "-H", "bad header"]).unwrap_err();
        assert!(e.contains("--header"), "{e}");
        assert!(plan(&["connect", "ws://127.0.0.1:9/", "--depth", "3"]).is_err());
    }

    #[test]
    fn hub_mode() {
        let p = plan(&[
            "fanout",
            "ws://127.0.0.1:9/",
            "--mode",
            "hub",
            "-c",
            "8",
            "--channels",
            "4",
        ])
        .unwrap();
        assert_eq!((p.mode, p.channels), (Mode::Hub, 4));
        let small = plan(&[
            "fanout",
            "ws://127.0.0.1:9/",
            "--mode",
            "hub",
            "--size",
            "8",
        ])
        .unwrap();
        assert_eq!((small.size, small.channels), (8, 1));
        let raw = plan(&["fanout", "ws://127.0.0.1:9/"]).unwrap();
        assert_eq!((raw.mode, raw.channels), (Mode::Raw, 1));
        for (args, needle) in [
            (
                &["echo", "ws://127.0.0.1:9/", "--mode", "hub"][..],
                "fanout only",
            ),
            (
                &["fanout", "ws://127.0.0.1:9/", "--channels", "2"],
                "--mode hub",
            ),
            (
                &[
                    "fanout",
                    "ws://127.0.0.1:9/",
                    "--mode",
                    "hub",
                    "--channels",
                    "0",
                ],
                "at least 1",
            ),
            (
                &[
                    "fanout",
                    "ws://127.0.0.1:9/",
                    "--mode",
                    "hub",
                    "-c",
                    "3",
                    "--channels",
                    "4",
                ],
                "every channel",
            ),
        ] {
            let e = plan(args).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn connect_subscribe() {
        let p = plan(&[
            "connect",
            "ws://127.0.0.1:9/",
            "--subscribe",
            "room:1/news",
            "--count",
            "2",
        ])
        .unwrap();
        assert_eq!(
            (p.subscribe.as_deref(), p.count, p.mode),
            (Some("room:1/news"), Some(2), Mode::Raw)
        );
        for (args, needle) in [
            (
                &["fanout", "ws://127.0.0.1:9/", "--subscribe", "x"][..],
                "connect only",
            ),
            (
                &["connect", "ws://127.0.0.1:9/", "--subscribe", "a b"],
                "not a channel name",
            ),
            (
                &["connect", "ws://127.0.0.1:9/", "--count", "3"],
                "--subscribe",
            ),
            (
                &[
                    "connect",
                    "ws://127.0.0.1:9/",
                    "--subscribe",
                    "x",
                    "--count",
                    "0",
                ],
                "at least 1",
            ),
        ] {
            let e = plan(args).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn headers_and_children() {
        let p = plan(&["echo", "ws://127.0.0.1:9/", "-H", "Authorization: Bearer t"]).unwrap();
        assert_eq!(p.headers, vec![("Authorization".into(), "Bearer t".into())]);
        let c = plan(&["echo", "ws://127.0.0.1:9/", "--child", "1/2"]).unwrap();
        assert_eq!((c.proc_index(), c.progress), ((1, 2), false));
        assert!(plan(&["echo", "ws://127.0.0.1:9/", "--child", "2/2"]).is_err());
    }
}
