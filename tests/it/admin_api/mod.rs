//! The admin HTTP API over real sockets: health and readiness probes, `/metrics` read by a
//! strict Prometheus text parser and checked against real WebSocket traffic, `/stats` JSON,
//! `POST /publish` reaching real subscribers and `GET /channels` counting them, the API key,
//! 400/404/405/409/413, hostile bytes that must not stop it, and the `serve` flags that start
//! it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use starling::api::{self, ApiServer, ApiView, MAX_BODY};
use starling::config::{App, Config};
use starling::metrics::CloseReason;
use starling::shard::Server;
use tungstenite::Message;

use crate::util::child::{free_port, run, Child};
use crate::util::http::{raw_request, request, request_with_body, Resp};
use crate::util::{self, wait_until, ws, PATIENCE};

/// A server plus its admin API, both stopped when dropped.
struct Admin {
    server: Option<Arc<Server>>,
    api: Option<ApiServer>,
}

impl Admin {
    fn start(config: Config, key: Option<&str>) -> Admin {
        let server = Arc::new(Server::start(config).expect("server starts on a free port"));
        let view = ApiView::of(&server, Instant::now());
        let addr = "127.0.0.1:0".parse().unwrap();
        let api = api::start(addr, key.map(str::to_owned), view).expect("api starts");
        Admin {
            server: Some(server),
            api: Some(api),
        }
    }

    fn ws_addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().local_addr()
    }

    fn api_addr(&self) -> SocketAddr {
        self.api.as_ref().unwrap().local_addr()
    }

    fn get(&self, path: &str) -> Resp {
        request(self.api_addr(), "GET", path, &[])
    }

    /// `POST /publish` with `body`, the key `k` if `key` is set.
    fn publish(&self, key: bool, body: &str) -> Resp {
        let auth: &[(&str, &str)] = if key {
            &[("Authorization", "Bearer k")]
        } else {
            &[]
        };
        request_with_body(self.api_addr(), "POST", "/publish", auth, body.as_bytes())
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        // The API first: it holds the other reference to the server.
        if let Some(api) = self.api.take() {
            api.stop();
        }
        if let Some(s) = self.server.take() {
            s.shutdown();
            if let Ok(s) = Arc::try_unwrap(s) {
                s.join();
            }
        }
    }
}

/// Samples by name, then by their label set written as `k=v,k=v` (sorted).
type Samples = BTreeMap<String, BTreeMap<String, f64>>;

/// A strict reader of the Prometheus text format 0.0.4 as this server writes it: every family
/// has `# HELP` then `# TYPE` (once each) before its samples, which follow contiguously; every
/// sample is `name{k="v",...} value` with a numeric value and no timestamp; counters end in
/// `_total`; no blank lines. Panics with the offending line otherwise.
fn parse_prometheus(text: &str) -> Samples {
    assert!(text.ends_with('\n'), "exposition must end with a line feed");
    let mut samples = Samples::new();
    let mut helped = BTreeSet::new();
    let mut typed: Option<String> = None;
    let mut seen_families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has text");
            assert!(valid_name(name) && !help.is_empty(), "{line}");
            assert!(helped.insert(name.to_owned()), "HELP twice: {line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
            assert!(helped.contains(name), "TYPE before HELP: {line}");
            assert!(seen_families.insert(name.to_owned()), "TYPE twice: {line}");
            match kind {
                "counter" => assert!(name.ends_with("_total"), "counter name: {line}"),
                "gauge" => assert!(!name.ends_with("_total"), "gauge name: {line}"),
                _ => panic!("unexpected type: {line}"),
            }
            typed = Some(name.to_owned());
        } else {
            assert!(
                !line.is_empty() && !line.starts_with('#'),
                "stray line: {line:?}"
            );
            let (name, labels, value) = parse_sample(line);
            assert_eq!(
                Some(&name),
                typed.as_ref(),
                "sample outside its family: {line}"
            );
            let old = samples.entry(name).or_default().insert(labels, value);
            assert!(old.is_none(), "duplicate sample: {line}");
        }
    }
    for family in &seen_families {
        assert!(
            samples.contains_key(family),
            "family without samples: {family}"
        );
    }
    samples
}

/// `name{k="v",...} value` -> (name, "k=v,..." sorted, value).
fn parse_sample(line: &str) -> (String, String, f64) {
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("no value: {line}"));
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("bad value: {line}"));
    assert!(value.is_finite() && value >= 0.0, "{line}");
    let (name, labels) = match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => {
            let inner = rest
                .strip_suffix('}')
                .unwrap_or_else(|| panic!("no '}}': {line}"));
            let labels: Vec<String> = inner
                .split(',')
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label has '='");
                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                    let v = v.unwrap_or_else(|| panic!("unquoted label value: {line}"));
                    assert!(valid_name(k) && !v.contains(['"', '\\', '\n']), "{line}");
                    format!("{k}={v}")
                })
                .collect();
            (name, labels)
        }
    };
    assert!(valid_name(name), "bad metric name: {line}");
    let mut labels = labels;
    labels.sort();
    (name.to_owned(), labels.join(","), value)
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// The one unlabelled sample of `name`.
fn scalar(s: &Samples, name: &str) -> f64 {
    let family = s.get(name).unwrap_or_else(|| panic!("no {name}"));
    *family
        .get("")
        .unwrap_or_else(|| panic!("{name} has labels"))
}

/// Opens `clients` WebSocket clients and has each send `each` messages, echoed back.
fn traffic(addr: SocketAddr, clients: usize, each: usize) -> Vec<ws::Ws> {
    let mut all: Vec<ws::Ws> = (0..clients).map(|_| ws::connect(addr)).collect();
    for (i, c) in all.iter_mut().enumerate() {
        for n in 0..each {
            ws::assert_echo(c, Message::text(format!("client {i} message {n}")));
        }
    }
    all
}

fn two_shards() -> Config {
    Config {
        shards: 2,
        ..util::config()
    }
}

/// The channel protocol on two shards, so channels have owners other than a client's shard.
fn hub() -> Config {
    Config {
        app: App::Hub,
        ..two_shards()
    }
}

/// A client subscribed to each of `channels` (each subscription acknowledged).
fn subscriber(addr: SocketAddr, channels: &[&str]) -> ws::Ws {
    let mut c = ws::connect(addr);
    for (id, ch) in channels.iter().enumerate() {
        let cmd = json!({"op": "subscribe", "id": id + 1, "channel": ch});
        c.send(Message::text(cmd.to_string()))
            .expect("send subscribe");
        let reply = json_of(&ws::next_data(&mut c));
        assert_eq!(reply["id"], id + 1, "{reply}");
        assert_eq!(reply["ok"], true, "{reply}");
    }
    c
}

fn json_of(m: &Message) -> Value {
    serde_json::from_str(m.to_text().expect("text")).expect("JSON")
}

fn text_of(m: Message) -> String {
    m.into_text().expect("text message").to_string()
}

#[test]
fn healthz_is_ok() {
    let a = Admin::start(util::config(), None);
    let r = a.get("/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
}

#[test]
fn readyz_is_200_then_503_once_draining() {
    let a = Admin::start(util::config(), None);
    let r = a.get("/readyz");
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    a.server.as_ref().unwrap().drain();
    let r = a.get("/readyz");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("draining"), "{r:?}");
    // Liveness is not readiness: the process is still alive.
    assert_eq!(a.get("/healthz").status, 200);
}

#[test]
fn metrics_parse_and_count_real_traffic() {
    let a = Admin::start(two_shards(), None);
    let (clients, each) = (3, 5);
    let _open = traffic(a.ws_addr(), clients, each);
    let n = (clients * each) as f64;
    // Shards publish every ~250 ms; wait for a snapshot that has all the traffic.
    let mut last = Samples::new();
    let caught_up = wait_until(PATIENCE, || {
        let r = a.get("/metrics");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("Content-Type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        last = parse_prometheus(&r.body);
        scalar(&last, "starling_messages_in_total") >= n
            && scalar(&last, "starling_messages_out_total") >= n
            && scalar(&last, "starling_connections_open") >= clients as f64
    });
    assert!(
        caught_up,
        "counters never reached the traffic sent: {last:?}"
    );
    let s = &last;
    assert!(scalar(s, "starling_connections_upgraded_total") >= clients as f64);
    assert!(scalar(s, "starling_connections_accepted_total") >= clients as f64);
    assert!(scalar(s, "starling_read_bytes_total") > 0.0);
    assert!(scalar(s, "starling_written_bytes_total") > 0.0);
    assert!(scalar(s, "starling_read_calls_total") > 0.0);
    assert!(scalar(s, "starling_write_calls_total") > 0.0);
    assert!(scalar(s, "starling_loop_iterations_total") > 0.0);
    assert!(scalar(s, "process_resident_memory_bytes") > 0.0);
    assert!(scalar(s, "process_max_fds") > 0.0);
    assert_eq!(scalar(s, "starling_shards"), 2.0);
    assert_eq!(scalar(s, "starling_draining"), 0.0);
    assert_eq!(scalar(s, "starling_slow_consumers_total"), 0.0);
    // Per shard: one sample per shard, summing to the total.
    let per_shard = &s["starling_shard_messages_in_total"];
    let keys: Vec<&str> = per_shard.keys().map(String::as_str).collect();
    assert_eq!(keys, ["shard=0", "shard=1"]);
    let sum: f64 = per_shard.values().sum();
    assert_eq!(sum, scalar(s, "starling_messages_in_total"));
    // Closings: every reason present, per shard and in total.
    let closed = &s["starling_connections_closed_total"];
    assert_eq!(closed.len(), CloseReason::COUNT);
    for r in CloseReason::ALL {
        assert!(
            closed.contains_key(&format!("reason={}", r.name())),
            "{r:?}"
        );
    }
    let shard_closed = &s["starling_shard_connections_closed_total"];
    assert_eq!(shard_closed.len(), 2 * CloseReason::COUNT);
    assert!(shard_closed.contains_key("reason=slow_consumer,shard=1"));
}

#[test]
fn stats_json_has_totals_and_every_shard() {
    let a = Admin::start(two_shards(), None);
    let _open = traffic(a.ws_addr(), 2, 4);
    let mut v = serde_json::Value::Null;
    let caught_up = wait_until(PATIENCE, || {
        let r = a.get("/stats");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        v = serde_json::from_str(&r.body).expect("stats is JSON");
        v["total"]["messages_in"].as_u64().unwrap() >= 8
    });
    assert!(caught_up, "stats never counted the traffic: {v}");
    let total = v["total"].as_object().unwrap();
    for field in [
        "open",
        "accepted",
        "upgraded",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "read_calls",
        "write_calls",
        "close_timeouts",
        "accept_emfile",
        "loop_iterations",
        "loop_busy_us",
    ] {
        assert!(total[field].is_u64(), "total.{field} in {v}");
    }
    let closed = total["closed"].as_object().unwrap();
    let names: BTreeSet<&str> = closed.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = CloseReason::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(names, want);
    let shards = v["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    let sum: u64 = shards
        .iter()
        .map(|s| s["messages_in"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, total["messages_in"].as_u64().unwrap());
    assert_eq!(shards[1]["shard"], 1);
    assert_eq!(v["draining"], false);
    assert!(v["uptime_seconds"].as_f64().unwrap() >= 0.0);
}

#[test]
fn api_key_guards_everything_but_the_probes() {
    let a = Admin::start(util::config(), Some("s3cret-token"));
    let addr = a.api_addr();
    for path in ["/metrics", "/stats"] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cret-token2"),
            Some("s3cret-token"),
        ] {
            let headers: Vec<(&str, &str)> =
                auth.map(|v| ("Authorization", v)).into_iter().collect();
            let r = request(addr, "GET", path, &headers);
            assert_eq!(r.status, 401, "{path} with {auth:?}: {r:?}");
            let challenge = r.header("WWW-Authenticate").unwrap_or_default();
            assert!(challenge.starts_with("Bearer"), "{r:?}");
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert!(body["error"].is_string(), "{r:?}");
        }
        let ok = request(
            addr,
            "GET",
            path,
            &[("Authorization", "Bearer s3cret-token")],
        );
        assert_eq!(ok.status, 200, "{path}: {ok:?}");
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(a.get(path).status, 200, "{path} must stay public");
    }
}

#[test]
fn unknown_path_is_404_and_other_methods_405() {
    let a = Admin::start(util::config(), None);
    let r = a.get("/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["status"], 404);
    for method in ["POST", "PUT", "DELETE"] {
        let r = request(a.api_addr(), method, "/metrics", &[("Content-Length", "0")]);
        assert_eq!(r.status, 405, "{method}: {r:?}");
        assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    }
    // HEAD gets the GET status and headers, without a body.
    let r = request(a.api_addr(), "HEAD", "/metrics", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, ""));
}

#[test]
fn serve_flags_start_the_api_and_sigterm_makes_it_unready() {
    let port = free_port();
    let api_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = api_addr.to_string();
    let mut child = Child::serve(&["--api-listen", &listen, "--api-key", "k3y"]);
    let up = wait_until(PATIENCE, || TcpStream::connect(api_addr).is_ok());
    assert!(up, "admin API never listened; log:\n{}", child.log_text());
    assert_eq!(request(api_addr, "GET", "/readyz", &[]).status, 200);
    assert_eq!(request(api_addr, "GET", "/metrics", &[]).status, 401);
    let ok = request(
        api_addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer k3y")],
    );
    assert_eq!(ok.status, 200);
    parse_prometheus(&ok.body);
    // A client that does not answer the server's close keeps the drain going meanwhile.
    let mut client = ws::connect(child.addr);
    ws::assert_echo(&mut client, Message::text("before the drain"));
    child.signal(libc::SIGTERM);
    let unready = wait_until(PATIENCE, || {
        request(api_addr, "GET", "/readyz", &[]).status == 503
    });
    assert!(
        unready,
        "readyz never turned 503; log:\n{}",
        child.log_text()
    );
    drop(client);
    let status = child.wait_exit(PATIENCE).expect("exits after the drain");
    assert!(status.success(), "log:\n{}", child.log_text());
}

#[test]
fn public_api_address_without_a_key_exits_2() {
    let (status, out) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "0.0.0.0:0",
    ]);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("api_listen"), "{out}");
    let (status, out) = run(&["serve", "--api-listen", "127.0.0.1:0", "--no-api"]);
    assert_eq!(status.code(), Some(2), "conflicting flags: {out}");
}

#[test]
fn hostile_requests_are_refused_and_the_api_keeps_serving() {
    let a = Admin::start(util::config(), Some("k"));
    let big_head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let cases: [(&[u8], u16); 4] = [
        // Once answered by an allocation of the declared size, which aborted the process.
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
            413,
        ),
        (
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 not HTTP\r\n\r\n",
            400,
        ),
        (big_head.as_bytes(), 431),
        // Chunked bodies are read, but a chunk that is not one is refused.
        (
            b"POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\
              Transfer-Encoding: chunked\r\n\r\nzz\r\nnot hex\r\n0\r\n\r\n",
            400,
        ),
    ];
    for (bytes, status) in cases {
        let got = raw_request(a.api_addr(), bytes).status;
        assert_eq!(
            got,
            status,
            "{}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
        );
        let r = a.get("/healthz");
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    }
}

// The channel-protocol routes (POST /publish, GET /channels).
mod presence;
mod publish;
