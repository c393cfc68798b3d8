//! The channel protocol (`--app hub`, docs/PROTOCOL.md): order and completeness across shards,
//! resume with `since` (replay, then live, no gap, no duplicate), the explicit resync when
//! history is gone, error replies, and the frames that close the connection.

use std::collections::HashMap;

use serde_json::{json, Value};
use starling::config::{App, Config};
use tungstenite::Message;

use crate::util::ws::{connect, recv_json as recv, send_json as send, Ws};
use crate::util::{config, wait_until, TestServer, PATIENCE};

fn hub(shards: usize, history: usize) -> TestServer {
    TestServer::start(Config {
        app: App::Hub,
        shards,
        history_size: history,
        ..config()
    })
}

/// Reads until the reply with `id`, returning it and the deliveries seen before it.
pub fn reply(ws: &mut Ws, id: u64) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let v = recv(ws);
        if v.get("id").and_then(Value::as_u64) == Some(id) {
            return (v, before);
        }
        before.push(v);
    }
}

pub fn subscribe(
    ws: &mut Ws,
    id: u64,
    ch: &str,
    since: Option<(&str, u64)>,
) -> (Value, Vec<Value>) {
    let mut cmd = json!({"op": "subscribe", "id": id, "channel": ch});
    if let Some((epoch, seq)) = since {
        cmd["since"] = json!({"epoch": epoch, "seq": seq});
    }
    send(ws, cmd);
    reply(ws, id)
}

#[test]
fn every_subscriber_on_every_shard_sees_every_message_once_in_order() {
    let server = hub(2, 100);
    let mut subs: Vec<Ws> = (0..12).map(|_| connect(server.addr())).collect();
    for (i, s) in subs.iter_mut().enumerate() {
        let (r, _) = subscribe(s, i as u64 + 1, "news", None);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["seq"], 0, "{r}");
    }
    let per_pub = 40;
    let mut pubs: Vec<Ws> = (0..3).map(|_| connect(server.addr())).collect();
    for n in 0..per_pub {
        for (p, ws) in pubs.iter_mut().enumerate() {
            send(
                ws,
                json!({"op": "publish", "id": n, "channel": "news", "data": {"p": p, "n": n}}),
            );
        }
    }
    let total = per_pub * pubs.len() as u64;
    for ws in pubs.iter_mut() {
        let mut acked = 0;
        while acked < per_pub {
            let r = recv(ws);
            assert_eq!(r["ok"], true, "{r}");
            assert!(r["seq"].as_u64().unwrap() <= total);
            acked += 1;
        }
    }
    for (i, s) in subs.iter_mut().enumerate() {
        let mut next_of: HashMap<u64, u64> = HashMap::new();
        for want in 1..=total {
            let d = recv(s);
            assert_eq!(d["ch"], "news", "subscriber {i}: {d}");
            assert_eq!(d["seq"], want, "subscriber {i}: gap or reorder at {d}");
            let (p, n) = (
                d["data"]["p"].as_u64().unwrap(),
                d["data"]["n"].as_u64().unwrap(),
            );
            let e = next_of.entry(p).or_default();
            assert_eq!(
                n, *e,
                "publisher {p}'s messages out of order for subscriber {i}"
            );
            *e += 1;
        }
    }
}

#[test]
fn resume_replays_what_was_missed_then_continues_live() {
    let server = hub(2, 100);
    let mut publisher = connect(server.addr());
    let mut sub = connect(server.addr());
    let (r, _) = subscribe(&mut sub, 1, "prices", None);
    let epoch = r["epoch"].as_str().unwrap().to_string();
    for n in 1..=10u64 {
        send(
            &mut publisher,
            json!({"op": "publish", "id": n, "channel": "prices", "data": n}),
        );
        reply(&mut publisher, n);
    }
    // Read 4, then drop the connection mid-stream.
    let mut last = 0;
    for _ in 0..4 {
        last = recv(&mut sub)["seq"].as_u64().unwrap();
    }
    assert_eq!(last, 4);
    drop(sub);
    for n in 11..=15u64 {
        send(
            &mut publisher,
            json!({"op": "publish", "id": n, "channel": "prices", "data": n}),
        );
        reply(&mut publisher, n);
    }
    let mut again = connect(server.addr());
    let (r, before) = subscribe(&mut again, 7, "prices", Some((&epoch, last)));
    assert!(before.is_empty());
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["seq"], 15);
    for n in 16..=20u64 {
        send(
            &mut publisher,
            json!({"op": "publish", "id": n, "channel": "prices", "data": n}),
        );
        reply(&mut publisher, n);
    }
    for want in 5..=20u64 {
        let d = recv(&mut again);
        assert_eq!(
            d["seq"], want,
            "no gap and no duplicate between replay and live: {d}"
        );
        assert_eq!(d["data"], want);
    }
}

#[test]
fn resume_beyond_history_gets_an_explicit_resync() {
    let server = hub(1, 5);
    let mut publisher = connect(server.addr());
    let mut probe = connect(server.addr());
    let (r, _) = subscribe(&mut probe, 1, "t", None);
    let epoch = r["epoch"].as_str().unwrap().to_string();
    for n in 1..=20u64 {
        send(
            &mut publisher,
            json!({"op": "publish", "id": n, "channel": "t", "data": n}),
        );
        reply(&mut publisher, n);
    }
    let mut late = connect(server.addr());
    let (r, _) = subscribe(&mut late, 2, "t", Some((&epoch, 3)));
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["resync"], true, "{r}");
    // A wrong epoch is never silently matched.
    let mut other = connect(server.addr());
    let (r, _) = subscribe(&mut other, 3, "t", Some(("00000000", 19)));
    assert_eq!(r["resync"], true, "{r}");
    // Within history: recovered.
    let mut near = connect(server.addr());
    let (r, _) = subscribe(&mut near, 4, "t", Some((&epoch, 17)));
    assert_eq!(r["recovered"], true, "{r}");
    for want in 18..=20u64 {
        assert_eq!(recv(&mut near)["seq"], want);
    }
}

#[test]
fn bad_commands_get_error_replies_and_the_connection_stays() {
    let server = hub(1, 10);
    let mut ws = connect(server.addr());
    send(
        &mut ws,
        json!({"op": "unsubscribe", "id": 1, "channel": "x"}),
    );
    let (r, _) = reply(&mut ws, 1);
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"]["code"], "not_subscribed");
    subscribe(&mut ws, 2, "x", None);
    let (r, _) = subscribe(&mut ws, 3, "x", None);
    assert_eq!(r["error"]["code"], "already_subscribed");
    send(&mut ws, json!({"op": "launch", "id": 4}));
    let (r, _) = reply(&mut ws, 4);
    assert_eq!(r["error"]["code"], "unknown_op");
    send(
        &mut ws,
        json!({"op": "subscribe", "id": 5, "channel": "bad channel!"}),
    );
    let (r, _) = reply(&mut ws, 5);
    assert_eq!(r["error"]["code"], "bad_channel");
    send(
        &mut ws,
        json!({"op": "unsubscribe", "id": 6, "channel": "x"}),
    );
    let (r, _) = reply(&mut ws, 6);
    assert_eq!(r["ok"], true);
}

/// `data` up to `max_publish_size` bytes of JSON is published; one byte more gets
/// `too_large`, for publish and direct alike, and the connection stays usable.
#[test]
fn data_over_the_publish_limit_gets_too_large() {
    let server = TestServer::start(Config {
        app: App::Hub,
        max_publish_size: 1000,
        ..config()
    });
    let mut ws = connect(server.addr());
    subscribe(&mut ws, 1, "big", None);
    // A JSON string of 998 characters is 1000 bytes of JSON with its quotes.
    let at_limit = "a".repeat(998);
    send(
        &mut ws,
        json!({"op": "publish", "id": 2, "channel": "big", "data": at_limit}),
    );
    let (r, _) = reply(&mut ws, 2);
    assert_eq!(r["ok"], true, "{r}");
    let over = "a".repeat(999);
    send(
        &mut ws,
        json!({"op": "publish", "id": 3, "channel": "big", "data": over}),
    );
    let (r, before) = reply(&mut ws, 3);
    assert_eq!(r["error"]["code"], "too_large", "{r}");
    assert!(
        before.iter().all(|d| d["data"] == json!(at_limit)),
        "only the first was delivered"
    );
    send(
        &mut ws,
        json!({"op": "direct", "id": 4, "user": "u", "data": over}),
    );
    let (r, _) = reply(&mut ws, 4);
    assert_eq!(r["error"]["code"], "too_large", "{r}");
    assert_eq!(Config::default().max_publish_size, 64 << 10);
}

#[test]
fn binary_frames_and_non_json_close_the_connection() {
    let server = hub(1, 10);
    for (msg, code) in [
        (Message::binary(vec![1, 2, 3]), 1003u16),
        (Message::text("this is not json"), 1007),
    ] {
        let mut ws = connect(server.addr());
        ws.send(msg).unwrap();
        let close = loop {
            match ws.read() {
                Ok(Message::Close(c)) => break c,
                Ok(_) => continue,
                Err(e) => panic!("expected a close frame, got {e}"),
            }
        };
        assert_eq!(close.map(|c| u16::from(c.code)), Some(code));
    }
}

#[test]
fn subscribe_unsubscribe_cycles_leave_nothing_behind() {
    let server = hub(2, 10);
    let mut ws = connect(server.addr());
    let cycles = 100_000u64;
    // Pipelined: requests go out in batches, replies are read after each batch.
    for batch in 0..(cycles / 500) {
        for k in 0..500 {
            let i = batch * 500 + k;
            let ch = format!("c{}", i % 97);
            send(
                &mut ws,
                json!({"op": "subscribe", "id": 2 * i, "channel": ch}),
            );
            send(
                &mut ws,
                json!({"op": "unsubscribe", "id": 2 * i + 1, "channel": ch}),
            );
        }
        for _ in 0..1000 {
            let r = recv(&mut ws);
            assert_eq!(r["ok"], true, "{r}");
        }
    }
    assert!(
        crate::util::wait_until(std::time::Duration::from_secs(5), || {
            let c = server.counters();
            c.hub_subscriptions == 0 && c.hub_channels == 0
        }),
        "subscriptions or channel state left after {cycles} cycles: {:?}",
        server.counters()
    );
}

/// Reads deliveries of `ch` until `last`, asserting they are consecutive after `after`.
fn expect_run(ws: &mut Ws, who: &str, after: u64, last: u64) {
    for want in after + 1..=last {
        let d = recv(ws);
        assert_eq!(d["seq"], want, "{who}: gap, duplicate or reorder at {d}");
    }
}

#[test]
fn wide_channels_stay_complete_while_subscribers_come_and_go_mid_stream() {
    wide_channel_run(hub(1, 1000));
}

#[test]
fn paced_wide_channels_stay_complete_while_subscribers_come_and_go_mid_stream() {
    // --sweep-interval: blocks wait for their interval, and a subscriber that leaves or
    // joins still finds the channel brought fully up to date first.
    wide_channel_run(TestServer::start(Config {
        app: App::Hub,
        shards: 1,
        history_size: 1000,
        sweep_interval: std::time::Duration::from_millis(15),
        ..config()
    }));
}

fn wide_channel_run(server: TestServer) {
    // 700 subscribers on one shard: more than the shard writes per loop pass, so a channel's
    // deliveries reach them over several passes while later publishes arrive.
    let mut subs: Vec<Ws> = (0..700).map(|_| connect(server.addr())).collect();
    for (i, s) in subs.iter_mut().enumerate() {
        let (r, _) = subscribe(s, 1, "wide", None);
        assert_eq!(r["ok"], true, "subscriber {i}: {r}");
    }
    let mut publisher = connect(server.addr());
    let publish = |p: &mut Ws, from: u64, to: u64| {
        for n in from..=to {
            send(
                p,
                json!({"op": "publish", "id": n, "channel": "wide", "data": n}),
            );
        }
        for n in from..=to {
            let (r, _) = reply(p, n);
            assert_eq!(r["seq"], n, "{r}");
        }
    };
    publish(&mut publisher, 1, 30);
    // One subscriber in the middle of the list leaves while the sweep may be part-way; every
    // subscriber after it moves up one place.
    let (r, before) = {
        let s = &mut subs[350];
        send(s, json!({"op": "unsubscribe", "id": 2, "channel": "wide"}));
        reply(s, 2)
    };
    assert_eq!(r["ok"], true, "{r}");
    for (k, d) in before.iter().enumerate() {
        assert_eq!(d["seq"], k as u64 + 1, "leaver: {d}");
    }
    // A newcomer joins part-way: it gets exactly what follows its reply.
    let mut late = connect(server.addr());
    let (r, _) = subscribe(&mut late, 1, "wide", None);
    let joined_at = r["seq"].as_u64().unwrap();
    publish(&mut publisher, 31, 60);
    expect_run(&mut late, "newcomer", joined_at, 60);
    for (i, s) in subs.iter_mut().enumerate() {
        if i != 350 {
            expect_run(s, &format!("subscriber {i}"), 0, 60);
        }
    }
}

#[test]
fn connections_on_several_channels_get_every_channel_in_order_in_fewer_writes() {
    // 300 subscribers on one shard (three sweep blocks): four of every five on eight
    // channels, the fifth on one. A publisher sends rounds of one publish per channel in a
    // single TCP write, so a round's deliveries are swept in the same pass: a connection on
    // several channels is written once for all of them at the end of the pass, the others as
    // they are swept. Every subscriber must still get every channel's messages once, in
    // order.
    let server = hub(1, 100);
    let channels: Vec<String> = (0..8).map(|k| format!("m{k}")).collect();
    let mut subs: Vec<(Ws, usize)> = Vec::new();
    for i in 0..300 {
        let mut ws = connect(server.addr());
        let on = if i % 5 == 4 { 1 } else { channels.len() };
        for (k, ch) in channels[..on].iter().enumerate() {
            let (r, _) = subscribe(&mut ws, k as u64 + 1, ch, None);
            assert_eq!(r["ok"], true, "subscriber {i}: {r}");
        }
        subs.push((ws, on));
    }
    std::thread::sleep(std::time::Duration::from_millis(600));
    let writes_before = server.counters().write_calls;
    let mut publisher = connect(server.addr());
    let rounds = 20u64;
    for n in 1..=rounds {
        for ch in &channels {
            let cmd = json!({"op": "publish", "id": n, "channel": ch, "data": n});
            publisher.write(Message::text(cmd.to_string())).unwrap();
        }
        publisher.flush().unwrap();
        for _ in &channels {
            let r = recv(&mut publisher);
            assert_eq!(r["ok"], true, "{r}");
        }
    }
    let mut deliveries = 0;
    for (i, (ws, on)) in subs.iter_mut().enumerate() {
        let mut next: HashMap<String, u64> = HashMap::new();
        for _ in 0..rounds * *on as u64 {
            let d = recv(ws);
            let ch = d["ch"].as_str().unwrap().to_owned();
            let want = next.entry(ch.clone()).or_insert(1);
            assert_eq!(
                d["seq"], *want,
                "subscriber {i} on {ch}: gap or reorder at {d}"
            );
            assert_eq!(d["data"], *want, "subscriber {i} on {ch}: {d}");
            *want += 1;
        }
        assert_eq!(next.len(), *on, "subscriber {i}");
        deliveries += rounds * *on as u64;
    }
    // The counters are published periodically; every delivery and publish reply is in them
    // once messages_out has caught up.
    assert!(wait_until(PATIENCE, || {
        server.counters().messages_out >= deliveries + rounds * channels.len() as u64
    }));
    let writes = server.counters().write_calls - writes_before;
    // A round per pass is about one write per subscriber per round (6,000, plus the
    // publisher's replies); writing each channel's deliveries separately took 21,861 here.
    // Allow every round to be split over two passes.
    let bound = 2 * rounds * subs.len() as u64;
    assert!(
        writes <= bound,
        "{writes} writes for {deliveries} deliveries (bound {bound})"
    );
}

#[test]
fn wide_channels_with_the_same_subscribers_reach_each_connection_in_one_pass() {
    // 700 subscribers (six blocks, more than one pass writes) all on two channels: the two
    // sweeps go block by block in turn, so each pass reaches the same connections for both
    // channels and writes each of them once. Sweeping one channel to its budget before the
    // other would write every connection twice per round.
    let server = hub(1, 100);
    let channels = ["w0", "w1"];
    let mut subs: Vec<Ws> = (0..700).map(|_| connect(server.addr())).collect();
    for (i, s) in subs.iter_mut().enumerate() {
        for (k, ch) in channels.iter().enumerate() {
            let (r, _) = subscribe(s, k as u64 + 1, ch, None);
            assert_eq!(r["ok"], true, "subscriber {i}: {r}");
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(600));
    let writes_before = server.counters().write_calls;
    let mut publisher = connect(server.addr());
    let rounds = 10u64;
    // Each round is read by every subscriber before the next is published, so each is swept
    // on its own.
    for n in 1..=rounds {
        for ch in channels {
            let cmd = json!({"op": "publish", "id": n, "channel": ch, "data": n});
            publisher.write(Message::text(cmd.to_string())).unwrap();
        }
        publisher.flush().unwrap();
        for _ in channels {
            assert_eq!(recv(&mut publisher)["ok"], true);
        }
        for (i, s) in subs.iter_mut().enumerate() {
            let mut got: Vec<(String, u64)> = (0..2)
                .map(|_| {
                    let d = recv(s);
                    (
                        d["ch"].as_str().unwrap().to_owned(),
                        d["seq"].as_u64().unwrap(),
                    )
                })
                .collect();
            got.sort();
            assert_eq!(
                got,
                vec![("w0".to_owned(), n), ("w1".to_owned(), n)],
                "subscriber {i}, round {n}"
            );
        }
    }
    let deliveries = rounds * 2 * subs.len() as u64;
    assert!(wait_until(PATIENCE, || {
        server.counters().messages_out >= deliveries + rounds * 2
    }));
    let writes = server.counters().write_calls - writes_before;
    // About one write per subscriber per round (7,000); one per delivery would be 14,000.
    let bound = rounds * subs.len() as u64 * 3 / 2;
    assert!(
        writes <= bound,
        "{writes} writes for {deliveries} deliveries (bound {bound})"
    );
}

#[test]
fn a_client_that_keeps_up_on_many_channels_is_not_taken_for_slow() {
    // One client on 12 channels with a 16 KiB queue bound; one 2 KB publish per channel in a
    // single write. Holding each channel's delivery for one write at the end of the pass
    // must not let them pile up towards the bound: what is held leaves once more would pass a
    // quarter of it, so the client, which reads promptly, gets all twelve and is not closed.
    use starling::metrics::CloseReason;
    let server = TestServer::start(Config {
        app: App::Hub,
        shards: 1,
        history_size: 100,
        max_backpressure: 16 * 1024,
        ..config()
    });
    let channels: Vec<String> = (0..12).map(|k| format!("r{k}")).collect();
    let mut client = connect(server.addr());
    for (k, ch) in channels.iter().enumerate() {
        let (r, _) = subscribe(&mut client, k as u64 + 1, ch, None);
        assert_eq!(r["ok"], true, "{r}");
    }
    let mut publisher = connect(server.addr());
    let data = "y".repeat(2000);
    for ch in &channels {
        let cmd = json!({"op": "publish", "id": 1, "channel": ch, "data": data});
        publisher.write(Message::text(cmd.to_string())).unwrap();
    }
    publisher.flush().unwrap();
    for _ in &channels {
        assert_eq!(recv(&mut publisher)["ok"], true);
    }
    let mut got: Vec<String> = (0..channels.len())
        .map(|_| recv(&mut client)["ch"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut want = channels.clone();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(server.counters().closed_for(CloseReason::SlowConsumer), 0);
}
