//! Server-sent event streams (`GET /sse?channel=NAME`, docs/PROTOCOL.md): deliveries as events
//! in order with resumable ids, `Last-Event-ID` replay with no gap and no duplicate, the
//! `resync` event when history is gone, keep-alive comments, and the refusals (401, 403, 400,
//! 404) that never start a stream.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use starling::config::{App, Config};
use starling::hub::auth::issue;
use starling::metrics::CloseReason;
use tungstenite::Message;

use crate::util::raw::header;
use crate::util::sse::{Event, Sse};
use crate::util::ws::{connect, next_data, Ws};
use crate::util::{config, TestServer};

const SECRET: &str = "a-test-secret-of-32-bytes-length";

fn hub(shards: usize, history: usize) -> TestServer {
    TestServer::start(Config {
        app: App::Hub,
        shards,
        history_size: history,
        ..config()
    })
}

/// Publishes `data` on `channel` and waits for the reply (so the message is numbered).
fn publish(ws: &mut Ws, channel: &str, data: Value) -> u64 {
    ws.send(Message::text(
        json!({"op": "publish", "id": 1, "channel": channel, "data": data}).to_string(),
    ))
    .expect("send");
    loop {
        let v: Value = match next_data(ws) {
            Message::Text(t) => serde_json::from_str(&t).unwrap(),
            other => panic!("{other:?}"),
        };
        if v["id"] == 1 {
            assert_eq!(v["ok"], true, "{v}");
            return v["seq"].as_u64().unwrap();
        }
    }
}

/// Opens a stream and checks that it is one: 200, the event-stream headers, no length.
fn open(server: &TestServer, target: &str, headers: &[&str]) -> Sse {
    let s = Sse::get(server.addr(), target, headers);
    assert_eq!(s.status(), 200, "{}", s.head);
    assert_eq!(
        header(&s.head, "content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(
        header(&s.head, "cache-control").as_deref(),
        Some("no-cache")
    );
    assert_eq!(header(&s.head, "content-length"), None, "{}", s.head);
    s
}

/// The event's id as (epoch, seq).
fn id(e: &Event) -> (String, u64) {
    let id = e.id.as_deref().unwrap_or_else(|| panic!("no id: {e:?}"));
    let (epoch, seq) = id.split_once(':').unwrap();
    (epoch.to_string(), seq.parse().unwrap())
}

fn message(s: &mut Sse) -> (u64, Value) {
    let e = s.next_event().expect("an event");
    assert_eq!(e.event.as_deref(), Some("message"), "{e:?}");
    let data = serde_json::from_str(e.data.as_deref().unwrap()).unwrap();
    (id(&e).1, data)
}

#[test]
fn deliveries_arrive_in_order_and_last_event_id_resumes_without_gap_or_duplicate() {
    let server = hub(2, 100);
    let mut publisher = connect(server.addr());
    let mut s = open(&server, "/sse?channel=news", &[]);
    let first = s.next_event().unwrap();
    assert_eq!(first.event.as_deref(), Some("subscribed"), "{first:?}");
    let (epoch, at) = id(&first);
    assert_eq!(at, 0);
    for n in 1..=6u64 {
        assert_eq!(publish(&mut publisher, "news", json!({"n": n})), n);
    }
    // Read three, then go away mid-stream.
    for want in 1..=3u64 {
        let (seq, data) = message(&mut s);
        assert_eq!((seq, data), (want, json!({"n": want})));
    }
    drop(s);
    for n in 7..=9u64 {
        publish(&mut publisher, "news", json!({"n": n}));
    }
    let last = format!("Last-Event-ID: {epoch}:3");
    let mut again = open(&server, "/sse?channel=news", &[&last]);
    let opening = again.next_event().unwrap();
    assert_eq!(opening.event.as_deref(), Some("subscribed"), "{opening:?}");
    assert_eq!(
        id(&opening),
        (epoch.clone(), 3),
        "resume point, not the channel's end"
    );
    let reply: Value = serde_json::from_str(opening.data.as_deref().unwrap()).unwrap();
    assert_eq!(reply["recovered"], true, "{reply}");
    for n in 10..=12u64 {
        publish(&mut publisher, "news", json!({"n": n}));
    }
    for want in 4..=12u64 {
        let (seq, data) = message(&mut again);
        assert_eq!(seq, want, "replay then live, no gap, no duplicate");
        assert_eq!(data, json!({"n": want}));
    }
    // The query parameter works as the header does.
    let q = format!("/sse?lastEventId={epoch}%3A11&channel=news");
    let mut third = open(&server, &q, &[]);
    assert_eq!(id(&third.next_event().unwrap()), (epoch, 11));
    assert_eq!(message(&mut third).0, 12);
    assert!(
        crate::util::wait_until(crate::util::PATIENCE, || server.counters().sse_streams == 3),
        "{:?}",
        server.counters()
    );
}

#[test]
fn data_with_line_breaks_is_split_into_data_lines_and_rejoined() {
    let server = hub(1, 10);
    let mut publisher = connect(server.addr());
    let mut s = open(&server, "/sse?channel=multi", &[]);
    s.next_event().unwrap();
    // A publisher's own whitespace is forwarded as is: here, line breaks between tokens.
    publisher
        .send(Message::text(
            "{\"op\":\"publish\",\"id\":1,\"channel\":\"multi\",\"data\":[1,\n2,\r\n3]}",
        ))
        .unwrap();
    let e = s.next_event().unwrap();
    assert_eq!(e.data.as_deref(), Some("[1,\n2,\n3]"));
}

#[test]
fn a_resume_the_history_cannot_serve_gets_a_resync_event() {
    let server = hub(1, 3);
    let mut publisher = connect(server.addr());
    let mut probe = open(&server, "/sse?channel=t", &[]);
    let (epoch, _) = id(&probe.next_event().unwrap());
    for n in 1..=10u64 {
        publish(&mut publisher, "t", json!(n));
    }
    let mut end = 10;
    for (last, why) in [
        (format!("{epoch}:2"), "pushed out of history"),
        ("00000000:9".to_string(), "another epoch"),
        ("not-an-id".to_string(), "never issued"),
        (format!("{epoch}:99"), "from the future"),
    ] {
        let h = format!("Last-Event-ID: {last}");
        let mut s = open(&server, "/sse?channel=t", &[&h]);
        let e = s.next_event().unwrap();
        assert_eq!(e.event.as_deref(), Some("resync"), "{why}: {e:?}");
        assert_eq!(
            id(&e),
            (epoch.clone(), end),
            "{why}: continue from the channel's end"
        );
        let v: Value = serde_json::from_str(e.data.as_deref().unwrap()).unwrap();
        assert_eq!(v["resync"], true, "{v}");
        end = publish(&mut publisher, "t", json!("live"));
        let (seq, data) = message(&mut s);
        assert_eq!((seq, data), (end, json!("live")), "{why}");
        // Keep the probe drained so it stays under its bound.
        while probe.next_event().is_some_and(|e| id(&e).1 < seq) {}
    }
    // Within history: recovered, with the replay.
    let h = format!("Last-Event-ID: {epoch}:{}", end - 1);
    let mut near = open(&server, "/sse?channel=t", &[&h]);
    assert_eq!(
        near.next_event().unwrap().event.as_deref(),
        Some("subscribed")
    );
    assert_eq!(message(&mut near), (end, json!("live")));
}

#[test]
fn idle_streams_get_keep_alive_comments() {
    let server = TestServer::start(Config {
        app: App::Hub,
        sse_keepalive: Duration::from_millis(100),
        ..config()
    });
    let mut s = open(&server, "/sse?channel=quiet", &[]);
    let mut seen = 0;
    while seen < 2 {
        let e = s.next().expect("the stream stays open");
        if e.comments.iter().any(|c| c == "keep-alive") {
            assert_eq!((e.id, e.data), (None, None));
            seen += 1;
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn admission_refuses_before_any_200() {
    let server = TestServer::start(Config {
        app: App::Hub,
        jwt_secret: Some(SECRET.into()),
        allowed_origins: vec!["https://app.example".into()],
        ..config()
    });
    let good = issue(SECRET.as_bytes(), "alice", now() + 3600, &["news.*"], &[]);
    let expired = issue(SECRET.as_bytes(), "alice", now() - 10, &["news.*"], &[]);
    let bearer = format!("Authorization: Bearer {good}");
    let cases: Vec<(String, Vec<String>, u16)> = vec![
        ("/sse?channel=news.a".into(), vec![], 401),
        ("/sse?channel=news.a&token=garbage".into(), vec![], 401),
        (format!("/sse?channel=news.a&token={expired}"), vec![], 401),
        (format!("/sse?channel=sports&token={good}"), vec![], 403),
        ("/sse?channel=sports".into(), vec![bearer.clone()], 403),
        (
            format!("/sse?channel=news.a&token={good}"),
            vec!["Origin: https://evil.example".into()],
            403,
        ),
    ];
    for (target, headers, want) in &cases {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let mut s = Sse::get(server.addr(), target, &headers);
        assert_eq!(s.status(), *want, "{target}: {}", s.head);
        assert!(!s.head.contains("text/event-stream"), "{}", s.head);
        s.rest();
    }
    let mut ok = open(
        &server,
        &format!("/sse?channel=news.a&token={good}"),
        &["Origin: https://app.example"],
    );
    assert_eq!(
        ok.next_event().unwrap().event.as_deref(),
        Some("subscribed")
    );
    let mut ok = open(&server, "/sse?channel=news.b", &[&bearer]);
    assert_eq!(
        ok.next_event().unwrap().event.as_deref(),
        Some("subscribed")
    );
}

#[test]
fn bad_queries_get_400_and_other_apps_404() {
    let server = hub(1, 10);
    for target in [
        "/sse",
        "/sse?channel=",
        "/sse?channel=no%20spaces",
        "/sse?channel=a&channel=b",
        "/sse?token=abc",
    ] {
        let mut s = Sse::get(server.addr(), target, &[]);
        assert_eq!(s.status(), 400, "{target}: {}", s.head);
        assert!(!s.rest().is_empty(), "400 names the problem");
    }
    // Two resume positions, a body, another method: refused before any stream.
    for (req, want) in [
        (
            "GET /sse?channel=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1\r\nLast-Event-ID: 2\r\n\r\n",
            400,
        ),
        (
            "GET /sse?channel=a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            400,
        ),
        ("POST /sse?channel=a HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    ] {
        let (status, head, _, _) = crate::util::raw::http(server.addr(), req.as_bytes());
        assert_eq!(status, want, "{req:?}: {head}");
    }
    let echo = TestServer::start(config());
    let mut s = Sse::get(echo.addr(), "/sse?channel=news", &[]);
    assert_eq!(s.status(), 404, "{}", s.head);
    s.rest();
}

#[test]
fn a_drain_ends_every_stream() {
    let server = hub(2, 10);
    let mut streams: Vec<Sse> = (0..4)
        .map(|_| open(&server, "/sse?channel=news", &[]))
        .collect();
    for s in &mut streams {
        s.next_event().unwrap();
    }
    server.drain();
    for mut s in streams {
        assert!(s.next_event().is_none(), "EOF after the drain");
    }
    let totals = server.join();
    assert_eq!(totals.closed_for(CloseReason::Drain), 4, "{totals}");
}

#[test]
fn a_stream_ends_when_its_token_expires() {
    let server = TestServer::start(Config {
        app: App::Hub,
        jwt_secret: Some(SECRET.into()),
        ..config()
    });
    let t = issue(SECRET.as_bytes(), "alice", now() + 2, &["*"], &[]);
    let mut s = open(&server, &format!("/sse?channel=news&token={t}"), &[]);
    assert_eq!(s.next_event().unwrap().event.as_deref(), Some("subscribed"));
    assert!(s.next_event().is_none(), "the stream ends");
    assert!(s.ended, "by the server, not a timeout");
    drop(s);
    assert!(
        server.wait_closed(CloseReason::TokenExpired, 1),
        "{}",
        server.counters()
    );
}
