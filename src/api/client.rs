//! The other end of `POST /drain`: `starling drain` asks a running node to drain through its
//! admin API, so deploy tooling needs neither the node's PID nor a way to signal it.
//!
//! One request on one connection (`Connection: close`), bounded in time and in the bytes read
//! back: the node answers before the drain runs, so a node that does not answer in time is
//! reported as such rather than waited for.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::{json, Value};

/// How long connecting, sending and reading the answer may each take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer read; the API's answers are a few hundred bytes.
const MAX_ANSWER: u64 = 64 * 1024;

/// `starling drain` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// The node's admin API (its --api-listen).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8081")]
    pub api: String,
    /// The node's API key (its --api-key), sent as a bearer token.
    #[arg(
        long,
        value_name = "KEY",
        env = "STARLING_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// Connections closed per step over the whole node; 0 = all at once [default: the node's
    /// --drain-batch].
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Time between steps, e.g. 100ms [default: the node's --drain-interval].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Close code: 1001 (going away) or 1012 (service restart) [default: the node's
    /// --drain-code].
    #[arg(long, value_name = "CODE")]
    pub code: Option<u16>,
}

impl DrainArgs {
    /// The request body: only what was given, so the node's configuration fills the rest.
    fn body(&self) -> Value {
        let mut body = json!({});
        if let Some(n) = self.batch {
            body["batch"] = json!(n);
        }
        if let Some(t) = self.interval {
            body["interval_ms"] = json!(t.as_millis() as u64);
        }
        if let Some(c) = self.code {
            body["code"] = json!(c);
        }
        body
    }
}

/// Asks the node to drain: what it started on `202 Accepted`, else why not (the node's
/// message when it answered).
pub fn drain(args: &DrainArgs) -> Result<String, String> {
    let body = args.body().to_string();
    let (status, answer) = post(
        &args.api,
        "/drain",
        args.api_key.as_deref(),
        body.as_bytes(),
    )
    .map_err(|e| format!("cannot reach the admin API at {}: {e}", args.api))?;
    let json: Option<Value> = serde_json::from_slice(&answer).ok();
    if status == 202 {
        return Ok(json.map_or_else(|| "draining".to_owned(), |v| summary(&v)));
    }
    let message = json
        .as_ref()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&answer).trim().to_owned());
    Err(format!("{} answered {status}: {message}", args.api))
}

/// One line on the drain a `202` describes.
fn summary(v: &Value) -> String {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let pace = match n("batch") {
        0 => "all connections at once".to_owned(),
        b => format!("{b} connections every {} ms", n("interval_ms")),
    };
    format!(
        "draining: {pace}, close code {}, at most {} ms",
        n("code"),
        n("timeout_ms")
    )
}

/// One `POST` with a JSON body; the status and the body of the answer.
fn post(addr: &str, path: &str, key: Option<&str>, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let to = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
    let mut s = TcpStream::connect_timeout(&to, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(key) = key {
        req.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes)?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut raw)?;
    parse_answer(&raw).ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

/// The status and body of a complete HTTP/1.1 answer (read to EOF: `Connection: close`).
fn parse_answer(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(raw) {
        Ok(httparse::Status::Complete(n)) => Some((r.code?, raw.get(n..)?.to_vec())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(batch: Option<usize>, interval: Option<Duration>, code: Option<u16>) -> DrainArgs {
        DrainArgs {
            api: "127.0.0.1:1".into(),
            api_key: None,
            batch,
            interval,
            code,
        }
    }

    #[test]
    fn the_body_names_only_what_was_given() {
        assert_eq!(args(None, None, None).body(), json!({}));
        let a = args(Some(50), Some(Duration::from_millis(200)), Some(1012));
        assert_eq!(
            a.body(),
            json!({"batch": 50, "interval_ms": 200, "code": 1012})
        );
    }

    #[test]
    fn answers_are_read_and_summed_up() {
        let raw = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_answer(raw), Some((202, b"{}".to_vec())));
        assert_eq!(parse_answer(b"HTTP/1.1 20"), None);
        assert_eq!(parse_answer(b"garbage\r\n\r\n"), None);
        let v = json!({"batch": 50, "interval_ms": 200, "code": 1012, "timeout_ms": 30000});
        assert_eq!(
            summary(&v),
            "draining: 50 connections every 200 ms, close code 1012, at most 30000 ms"
        );
        assert!(summary(&json!({"batch": 0})).contains("all connections at once"));
    }
}
