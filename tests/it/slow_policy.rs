//! Per-channel slow-subscriber policies (`--channel-policy`, docs/PROTOCOL.md): on a `drop`
//! channel a subscriber that stops reading stays connected, sees a `seq` gap and recovers it
//! with `since`; on a `conflate` channel it gets the latest value per key once it reads again;
//! elsewhere it is closed with 1008. Small queue bounds and receive buffers make the server
//! run out of room quickly; every wait is for a behaviour, never a duration.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use starling::config::{App, Config};
use starling::metrics::CloseReason;
use tungstenite::Message;

use crate::util::raw::{masked, op, End, RawClient};
use crate::util::sse::Sse;
use crate::util::ws::{connect, next_data, Ws};
use crate::util::{config, wait_until, TestServer, PATIENCE};

fn server(bound: usize, rule: Option<&str>) -> TestServer {
    TestServer::start(Config {
        app: App::Hub,
        max_backpressure: bound,
        history_size: 100_000,
        channel_policy: rule.map(|r| r.parse().unwrap()).into_iter().collect(),
        ..config()
    })
}

fn send_raw(c: &mut RawClient, v: Value) {
    c.send(&masked(op::TEXT, v.to_string().as_bytes())).unwrap();
}

/// The next text message on a raw client (`Err` on timeout or close).
fn read_raw(c: &mut RawClient) -> Result<Value, End> {
    loop {
        let f = c.read_frame()?;
        match f.opcode {
            op::TEXT => return Ok(serde_json::from_slice(&f.payload).unwrap()),
            op::PING => continue,
            other => panic!("unexpected opcode {other:#x}: {:?}", f.payload),
        }
    }
}

/// Reads until the reply with `id`; returns it and the deliveries before it.
fn reply_raw(c: &mut RawClient, id: u64) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let v = read_raw(c).expect("a reply");
        if v["id"] == id {
            return (v, before);
        }
        before.push(v);
    }
}

/// A subscriber with a small receive buffer, so that it stops taking data early.
fn slow_subscriber(server: &TestServer, channel: &str) -> (RawClient, String) {
    let mut c = RawClient::open_with_rcvbuf(server.addr(), 8 * 1024);
    send_raw(
        &mut c,
        json!({"op": "subscribe", "id": 1, "channel": channel}),
    );
    let (r, _) = reply_raw(&mut c, 1);
    assert_eq!(r["ok"], true, "{r}");
    (c, r["epoch"].as_str().unwrap().to_string())
}

fn publish(ws: &mut Ws, channel: &str, key: Option<&str>, data: Value) -> u64 {
    let mut cmd = json!({"op": "publish", "id": 1, "channel": channel, "data": data});
    if let Some(k) = key {
        cmd["key"] = json!(k);
    }
    ws.send(Message::text(cmd.to_string())).unwrap();
    loop {
        let Message::Text(t) = next_data(ws) else {
            panic!("text expected")
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["id"] == 1 {
            assert_eq!(v["ok"], true, "{v}");
            return v["seq"].as_u64().unwrap();
        }
    }
}

/// Publishes 1 KiB messages in rounds until `done` holds for the server's counters.
fn flood(
    server: &TestServer,
    ws: &mut Ws,
    channel: &str,
    keys: &[&str],
    mut done: impl FnMut(&starling::metrics::Counters) -> bool,
) -> HashMap<String, u64> {
    let pad = "x".repeat(1024);
    let mut last = HashMap::new();
    let mut n = 0u64;
    while !done(&server.counters()) {
        for _ in 0..100 {
            let key = (!keys.is_empty()).then(|| keys[n as usize % keys.len()]);
            n += 1;
            publish(ws, channel, key, json!({"k": key, "v": n, "pad": pad}));
            if let Some(k) = key {
                last.insert(k.to_string(), n);
            }
        }
        assert!(
            n < 200_000,
            "the server never ran out of room: {}",
            server.counters()
        );
    }
    last
}

fn seq(v: &Value) -> u64 {
    v["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("not a delivery: {v}"))
}

#[test]
fn drop_keeps_the_subscriber_which_sees_a_gap_and_recovers_it_with_since() {
    let server = server(32 * 1024, Some("log.*=drop"));
    let (mut slow, epoch) = slow_subscriber(&server, "log.app");
    let mut publisher = connect(server.addr());
    flood(&server, &mut publisher, "log.app", &[], |c| {
        c.deliveries_dropped > 0
    });

    // Read again; publish markers until one reaches it (those sent while it was still over its
    // bound are dropped too).
    slow.stream()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut seqs = Vec::new();
    let mut marker = None;
    for _ in 0..500 {
        if marker.is_some() {
            break;
        }
        publish(&mut publisher, "log.app", None, json!("marker"));
        loop {
            match read_raw(&mut slow) {
                Ok(v) => {
                    seqs.push(seq(&v));
                    if v["data"] == "marker" {
                        marker = Some(seq(&v));
                    }
                }
                Err(End::Timeout) => break,
                Err(e) => panic!("the subscriber must stay connected: {e:?}"),
            }
        }
    }
    let end = marker.expect("a marker got through once the subscriber read again");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicate"
    );
    let gap = seqs
        .windows(2)
        .find(|w| w[1] > w[0] + 1)
        .map(|w| w[0])
        .expect("a seq gap where deliveries were dropped");
    let c = server.counters();
    assert!(c.deliveries_dropped > 0, "{c}");
    assert_eq!(c.closed_for(CloseReason::SlowConsumer), 0, "{c}");

    // Recover: resubscribe from the last seq before the gap; the replay fills it exactly.
    slow.stream().set_read_timeout(Some(PATIENCE)).unwrap();
    send_raw(
        &mut slow,
        json!({"op": "unsubscribe", "id": 2, "channel": "log.app"}),
    );
    reply_raw(&mut slow, 2);
    send_raw(
        &mut slow,
        json!({"op": "subscribe", "id": 3, "channel": "log.app",
               "since": {"epoch": epoch, "seq": gap}}),
    );
    let (r, _) = reply_raw(&mut slow, 3);
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(seq(&r), end);
    for want in gap + 1..=end {
        assert_eq!(
            seq(&read_raw(&mut slow).unwrap()),
            want,
            "replay without a hole"
        );
    }
}

#[test]
fn conflate_delivers_the_latest_value_per_key_once_the_subscriber_reads_again() {
    let server = server(16 * 1024, Some("prices.*=conflate"));
    let (mut slow, _) = slow_subscriber(&server, "prices.eq");
    let mut publisher = connect(server.addr());
    let keys = ["AAPL", "MSFT", "GOOG", "AMZN", "TSLA"];
    // Keep publishing a while after the first replacement, so every key has been replaced.
    let mut rounds = 0;
    let last = flood(&server, &mut publisher, "prices.eq", &keys, |c| {
        rounds += u32::from(c.deliveries_conflated > 0);
        rounds > 2
    });

    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut prev = 0;
    let mut gaps = 0;
    while keys.iter().any(|k| seen.get(*k) != last.get(*k)) {
        let d = read_raw(&mut slow).unwrap_or_else(|e| {
            panic!("stays connected until the latest values arrive: {e:?}; seen {seen:?}, want {last:?}")
        });
        let s = seq(&d);
        assert!(s > prev, "in order, no duplicate: {s} after {prev}");
        gaps += u64::from(s > prev + 1);
        prev = s;
        let k = d["data"]["k"].as_str().unwrap().to_string();
        let v = d["data"]["v"].as_u64().unwrap();
        assert!(
            seen.get(&k).is_none_or(|&old| old < v),
            "{k} went back in time"
        );
        seen.insert(k, v);
    }
    assert!(gaps > 0, "replaced values are visible as seq gaps");
    let c = server.counters();
    assert!(c.deliveries_conflated > 0, "{c}");
    assert_eq!(c.closed_for(CloseReason::SlowConsumer), 0, "{c}");
}

#[test]
fn without_a_rule_a_slow_subscriber_is_closed_with_1008() {
    let server = server(16 * 1024, Some("prices.*=conflate"));
    let (mut slow, _) = slow_subscriber(&server, "plain");
    let mut publisher = connect(server.addr());
    flood(&server, &mut publisher, "plain", &["k"], |c| {
        c.closed_for(CloseReason::SlowConsumer) > 0
    });
    let code = loop {
        let f = slow.read_frame().expect("frames, then a close");
        match f.opcode {
            op::TEXT | op::PING => continue,
            op::CLOSE => break f.close_code(),
            other => panic!("opcode {other:#x}"),
        }
    };
    assert_eq!(code, Some(1008));
    assert!(wait_until(PATIENCE, || server
        .counters()
        .deliveries_dropped
        == 0));
}

#[test]
fn event_streams_have_the_same_bound_and_policies() {
    let server = server(16 * 1024, Some("log.*=drop"));
    let mut publisher = connect(server.addr());
    // Disconnect (no rule): the stream just ends; no WebSocket close frame is written into it.
    let mut plain = Sse::get_with_rcvbuf(server.addr(), "/sse?channel=plain", 8 * 1024);
    assert_eq!(plain.status(), 200);
    flood(&server, &mut publisher, "plain", &[], |c| {
        c.closed_for(CloseReason::SlowConsumer) > 0
    });
    while let Some(e) = plain.next() {
        assert!(e.id.is_some() || !e.comments.is_empty(), "{e:?}");
    }
    // Drop: the stream stays and its ids jump.
    let mut log = Sse::get_with_rcvbuf(server.addr(), "/sse?channel=log.x", 8 * 1024);
    assert_eq!(log.status(), 200);
    flood(&server, &mut publisher, "log.x", &[], |c| {
        c.deliveries_dropped > 0
    });
    log.set_read_timeout(Duration::from_millis(200));
    let mut ids = Vec::new();
    let mut marker = false;
    for _ in 0..500 {
        if marker {
            break;
        }
        publish(&mut publisher, "log.x", None, json!("marker"));
        while let Some(e) = log.next_event() {
            let id = e.id.as_deref().unwrap().split_once(':').unwrap().1;
            ids.push(id.parse::<u64>().unwrap());
            marker |= e.data.as_deref() == Some("\"marker\"");
        }
        assert!(!log.ended, "the stream stays open");
    }
    assert!(
        marker,
        "a marker got through once the stream was read again"
    );
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(
        ids.windows(2).any(|w| w[1] > w[0] + 1),
        "a visible gap: {ids:?}"
    );
    assert_eq!(server.counters().closed_for(CloseReason::SlowConsumer), 1);
}
