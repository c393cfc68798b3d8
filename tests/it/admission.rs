//! Admission on the upgrade (origin allow-list, JWT before any 101), what a token allows on
//! channels, token expiry and refresh on an open connection, and the per-connection rate limit.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use starling::config::{App, Config};
use starling::hub::auth::issue;
use starling::metrics::CloseReason;
use tungstenite::Message;

use crate::util::ws::{next_data, try_connect_with, Ws};
use crate::util::{config, TestServer, PATIENCE};

const SECRET: &str = "a-test-secret-of-32-bytes-length";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn server(extra: impl FnOnce(&mut Config)) -> TestServer {
    let mut c = Config {
        app: App::Hub,
        jwt_secret: Some(SECRET.into()),
        ..config()
    };
    extra(&mut c);
    TestServer::start(c)
}

/// Sends a raw upgrade with `extra` header lines and returns the status code of the answer.
fn status_of(server: &TestServer, path: &str, extra: &[&str]) -> u16 {
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap()
}

fn token(exp: u64, sub: &[&str], publ: &[&str]) -> String {
    issue(SECRET.as_bytes(), "alice", exp, sub, publ)
}

fn connect_with_token(server: &TestServer, t: &str) -> Ws {
    try_connect_with(server.addr(), &[("Authorization", &format!("Bearer {t}"))])
        .expect("a valid token is admitted")
        .0
}

fn call(ws: &mut Ws, v: Value) -> Value {
    let id = v["id"].as_u64();
    ws.send(Message::text(v.to_string())).unwrap();
    loop {
        let Message::Text(t) = next_data(ws) else {
            panic!("text expected")
        };
        let r: Value = serde_json::from_str(&t).unwrap();
        if r["id"].as_u64() == id {
            return r;
        }
    }
}

#[test]
fn bad_or_missing_tokens_get_401_and_never_a_101() {
    let s = server(|_| {});
    let good = token(now() + 600, &["*"], &["*"]);
    let other = issue(
        b"another-secret-of-enough-length!",
        "alice",
        now() + 600,
        &["*"],
        &[],
    );
    let expired = token(now() - 10, &["*"], &[]);
    assert_eq!(status_of(&s, "/", &[]), 401, "no token");
    assert_eq!(
        status_of(&s, &format!("/?token={other}"), &[]),
        401,
        "wrong key"
    );
    assert_eq!(
        status_of(&s, &format!("/?token={expired}"), &[]),
        401,
        "expired"
    );
    assert_eq!(status_of(&s, "/?token=not.a.jwt", &[]), 401, "garbage");
    assert_eq!(
        status_of(&s, &format!("/?token={good}"), &[]),
        101,
        "query token"
    );
    let auth = format!("Authorization: Bearer {good}");
    assert_eq!(status_of(&s, "/", &[&auth]), 101, "header token");
}

#[test]
fn origins_outside_the_allow_list_get_403() {
    let s = server(|c| {
        c.jwt_secret = None;
        c.allowed_origins = vec!["https://app.example.com".into()];
    });
    assert_eq!(
        status_of(&s, "/", &["Origin: https://evil.example.com"]),
        403
    );
    assert_eq!(
        status_of(&s, "/", &["Origin: https://app.example.com"]),
        101
    );
    assert_eq!(
        status_of(&s, "/", &[]),
        101,
        "non-browser clients send no Origin"
    );
}

#[test]
fn a_token_limits_which_channels_may_be_used() {
    let s = server(|_| {});
    let mut ws = connect_with_token(&s, &token(now() + 600, &["news.*"], &["chat"]));
    let r = call(
        &mut ws,
        json!({"op": "subscribe", "id": 1, "channel": "news.eu"}),
    );
    assert_eq!(r["ok"], true, "{r}");
    let r = call(
        &mut ws,
        json!({"op": "subscribe", "id": 2, "channel": "secret"}),
    );
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    let r = call(
        &mut ws,
        json!({"op": "publish", "id": 3, "channel": "news.eu", "data": 1}),
    );
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    let r = call(
        &mut ws,
        json!({"op": "publish", "id": 4, "channel": "chat", "data": 1}),
    );
    assert_eq!(r["ok"], true, "{r}");
}

#[test]
fn an_expired_connection_is_closed_and_a_refreshed_one_stays() {
    let s = server(|_| {});
    let mut stale = connect_with_token(&s, &token(now() + 2, &["*"], &["*"]));
    let mut fresh = connect_with_token(&s, &token(now() + 2, &["*"], &["*"]));
    let r = call(
        &mut fresh,
        json!({"op": "refresh", "id": 1, "token": token(now() + 600, &["*"], &["*"])}),
    );
    assert_eq!(r["ok"], true, "{r}");
    let close = loop {
        match stale.read() {
            Ok(Message::Close(c)) => break c,
            Ok(_) => continue,
            Err(e) => panic!("expected a close for the expired token, got {e}"),
        }
    };
    let close = close.expect("a close code");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("expired"), "{}", close.reason);
    assert!(s.wait_closed(CloseReason::TokenExpired, 1));
    std::thread::sleep(Duration::from_millis(1500));
    let r = call(
        &mut fresh,
        json!({"op": "subscribe", "id": 2, "channel": "a"}),
    );
    assert_eq!(
        r["ok"], true,
        "the refreshed connection is still served: {r}"
    );
}

#[test]
fn a_client_over_its_rate_limit_gets_errors_then_1008() {
    let s = server(|c| {
        c.jwt_secret = None;
        c.rate_limit_messages = 5;
    });
    let (mut ws, _) = try_connect_with(s.addr(), &[]).unwrap();
    for i in 0..200 {
        let msg = json!({"op": "publish", "id": i, "channel": "x", "data": i});
        if ws.send(Message::text(msg.to_string())).is_err() {
            break;
        }
    }
    let mut limited = 0;
    let code = loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let r: Value = serde_json::from_str(&t).unwrap();
                if r["error"]["code"] == "rate_limited" {
                    limited += 1;
                }
            }
            Ok(Message::Close(c)) => break c.map(|c| u16::from(c.code)),
            Ok(_) => {}
            Err(e) => panic!("expected errors then a close, got {e}"),
        }
    };
    assert!(
        limited >= 1,
        "at least one rate_limited error before the close"
    );
    assert_eq!(code, Some(1008));
    assert!(s.wait_closed(CloseReason::RateLimited, 1));
}
