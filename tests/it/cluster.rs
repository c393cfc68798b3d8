//! Several nodes on one Redis bus (`starling serve --app hub --bus redis://… --node-id …`), as
//! real processes against a `redis-server` of the test's own: fan-out from publishers on every
//! node to subscribers on every node in one numbering, `since` and `Last-Event-ID` resumes on
//! another node, presence across nodes (anonymous ids kept apart per node) and a killed node's
//! members leaving within the node TTL, direct messages to and disconnects of a user on every
//! node, Redis killed and restarted under running nodes, and a node started before its Redis (docs/CLUSTER.md).
//!
//! Nothing here is timed except where the behaviour is itself a bound (a dead node's members
//! go within its TTL); every other wait is for an event, bounded by [`PATIENCE`] so a broken
//! cluster fails instead of hanging.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use crate::hub::{reply, subscribe};
use crate::presence::{connect_as, SECRET};
use crate::util::child::free_port;
use crate::util::node::{cluster, Node};
use crate::util::redis::Redis;
use crate::util::sse::{Event, Sse};
use crate::util::ws::{connect, recv_json as recv, send_json as send, Ws};
use crate::util::{wait_until, PATIENCE};

/// A client `publish` of `data`, awaited: the sequence number the reply gives it.
fn publish(ws: &mut Ws, id: u64, channel: &str, data: &Value) -> u64 {
    send(
        ws,
        json!({"op": "publish", "id": id, "channel": channel, "data": data}),
    );
    let (r, _) = reply(ws, id);
    assert_eq!(r["ok"], true, "{r}");
    r["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {r}"))
}

/// Reads the next `n` deliveries of `ws`, which must be `ch`'s seqs `after + 1 ..= after + n`;
/// their data, in order.
fn deliveries(ws: &mut Ws, who: &str, ch: &str, after: u64, n: u64) -> Vec<Value> {
    (after + 1..=after + n)
        .map(|want| {
            let d = recv(ws);
            assert_eq!(d["ch"], ch, "{who}: {d}");
            assert_eq!(d["seq"], want, "{who}: gap, duplicate or reorder at {d}");
            d["data"].clone()
        })
        .collect()
}

/// The connection still answers a ping with its pong: open and served by its node. Data
/// messages read before the pong are returned.
fn ping(ws: &mut Ws, who: &str) -> Vec<Value> {
    ws.send(Message::Ping(b"still there?".to_vec()))
        .unwrap_or_else(|e| panic!("{who}: ping not sent: {e}"));
    let mut before = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Pong(p)) if p[..] == b"still there?"[..] => return before,
            Ok(Message::Text(t)) => before.push(serde_json::from_str(&t).unwrap()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("{who}: no pong: {other:?}"),
        }
    }
}

#[test]
fn cluster_harness_redis_starts_answers_dies_and_comes_back_on_its_port() {
    let mut redis = Redis::start();
    let port = redis.port();
    assert!(redis.ping());
    assert_eq!(redis.command("SET k v").unwrap(), "+OK");
    let first = redis.pid().unwrap();
    redis.kill();
    assert!(!redis.ping(), "answers after SIGKILL");
    assert_eq!(redis.pid(), None);
    redis.restart();
    assert_eq!(redis.port(), port);
    assert!(redis.ping());
    assert_ne!(redis.pid(), Some(first), "a new process");
    // Nothing was persisted.
    assert_eq!(redis.command("EXISTS k").unwrap(), ":0");
    let addr = redis.addr();
    drop(redis);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still there after drop"
    );
}

#[test]
fn cluster_fanout_reaches_every_subscriber_on_every_node_once_in_one_order() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 3, &[]);
    let channels = ["news", "sport"];
    // Ten subscribers per node, five on each channel.
    let mut epochs: [Option<String>; 2] = [None, None];
    let mut subs: Vec<(String, usize, Ws)> = Vec::new();
    for node in &nodes {
        for i in 0..10 {
            let ch = i % 2;
            let mut ws = connect(node.addr());
            let (r, _) = subscribe(&mut ws, 1, channels[ch], None);
            assert_eq!((&r["ok"], &r["seq"]), (&json!(true), &json!(0)), "{r}");
            let epoch = r["epoch"].as_str().unwrap().to_owned();
            let first = epochs[ch].get_or_insert_with(|| epoch.clone());
            assert_eq!(*first, epoch, "one epoch per channel on every node");
            subs.push((format!("subscriber {i} on node {}", node.id), ch, ws));
        }
    }
    // Client publish on a, admin publish on b, client publish on c, in turn, on both channels.
    // Each publish is answered before the next, so each channel's numbering is this order.
    let mut on_a = connect(nodes[0].addr());
    let mut on_c = connect(nodes[2].addr());
    let mut sent: [Vec<Value>; 2] = [Vec::new(), Vec::new()];
    for k in 0..200u64 {
        let ch = (k % 2) as usize;
        let data = json!({"k": k, "via": k % 3});
        let seq = match k % 3 {
            0 => publish(&mut on_a, k, channels[ch], &data),
            1 => nodes[1].publish(channels[ch], &data),
            _ => publish(&mut on_c, k, channels[ch], &data),
        };
        sent[ch].push(data);
        assert_eq!(
            seq,
            sent[ch].len() as u64,
            "publish {k} on {}",
            channels[ch]
        );
    }
    for (who, ch, ws) in &mut subs {
        let got = deliveries(ws, who, channels[*ch], 0, 100);
        assert!(
            got == sent[*ch],
            "{who}: data differs from what was published"
        );
    }
    // Nothing more was queued for anyone (a late duplicate would come before this).
    for name in channels {
        assert_eq!(nodes[1].publish(name, &json!("end")), 101);
    }
    for (who, ch, ws) in &mut subs {
        assert_eq!(
            deliveries(ws, who, channels[*ch], 100, 1),
            [json!("end")],
            "{who}"
        );
    }
}

#[test]
fn cluster_since_resumes_on_another_node_without_gap_or_duplicate() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 3, &[]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut publisher = connect(c.addr());
    let mut sub = connect(a.addr());
    let (r, _) = subscribe(&mut sub, 1, "prices", None);
    let epoch = r["epoch"].as_str().unwrap().to_owned();
    for n in 1..=10u64 {
        assert_eq!(publish(&mut publisher, n, "prices", &json!(n)), n);
    }
    // Read four on a, then go away mid-stream.
    let got = deliveries(&mut sub, "on a", "prices", 0, 4);
    assert_eq!(got, [json!(1), json!(2), json!(3), json!(4)]);
    drop(sub);
    for n in 11..=15u64 {
        assert_eq!(a.publish("prices", &json!(n)), n);
    }
    let mut again = connect(b.addr());
    let (r, before) = subscribe(&mut again, 7, "prices", Some((&epoch, 4)));
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!((&r["epoch"], &r["seq"]), (&json!(epoch), &json!(15)), "{r}");
    for n in 16..=20u64 {
        assert_eq!(publish(&mut publisher, n, "prices", &json!(n)), n);
    }
    let got = deliveries(&mut again, "on b", "prices", 4, 16);
    let want: Vec<Value> = (5..=20u64).map(|n| json!(n)).collect();
    assert_eq!(got, want, "replayed then live");
    assert_eq!(publish(&mut publisher, 21, "prices", &json!(21)), 21);
    assert_eq!(deliveries(&mut again, "on b", "prices", 20, 1), [json!(21)]);
}

/// The event's id as (epoch, seq).
fn event_id(e: &Event) -> (String, u64) {
    let id = e.id.as_deref().unwrap_or_else(|| panic!("no id: {e:?}"));
    let (epoch, seq) = id.split_once(':').unwrap();
    (epoch.to_owned(), seq.parse().unwrap())
}

/// The next event, a delivery: its seq and data.
fn sse_message(s: &mut Sse, who: &str) -> (u64, Value) {
    let e = s.next_event().unwrap_or_else(|| panic!("{who}: no event"));
    assert_eq!(e.event.as_deref(), Some("message"), "{who}: {e:?}");
    let data = serde_json::from_str(e.data.as_deref().unwrap()).unwrap();
    (event_id(&e).1, data)
}

#[test]
fn cluster_last_event_id_resumes_an_event_stream_on_another_node() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 3, &[]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut s = Sse::get(a.addr(), "/sse?channel=feed", &[]);
    assert_eq!(s.status(), 200, "{}", s.head);
    let first = s.next_event().expect("the subscribed event");
    assert_eq!(first.event.as_deref(), Some("subscribed"), "{first:?}");
    let (epoch, at) = event_id(&first);
    assert_eq!(at, 0);
    for n in 1..=6u64 {
        assert_eq!(b.publish("feed", &json!({"n": n})), n);
    }
    for want in 1..=3u64 {
        assert_eq!(sse_message(&mut s, "on a"), (want, json!({"n": want})));
    }
    drop(s);
    let mut on_a = connect(a.addr());
    for n in 7..=9u64 {
        assert_eq!(publish(&mut on_a, n, "feed", &json!({"n": n})), n);
    }
    let last = format!("Last-Event-ID: {epoch}:3");
    let mut again = Sse::get(c.addr(), "/sse?channel=feed", &[&last]);
    assert_eq!(again.status(), 200, "{}", again.head);
    let opening = again.next_event().expect("the subscribed event");
    assert_eq!(opening.event.as_deref(), Some("subscribed"), "{opening:?}");
    assert_eq!(event_id(&opening), (epoch.clone(), 3), "the resume point");
    let r: Value = serde_json::from_str(opening.data.as_deref().unwrap()).unwrap();
    assert_eq!(r["recovered"], true, "{r}");
    for n in 10..=12u64 {
        assert_eq!(b.publish("feed", &json!({"n": n})), n);
    }
    for want in 4..=12u64 {
        let (seq, data) = sse_message(&mut again, "on c");
        assert_eq!(
            (seq, data),
            (want, json!({"n": want})),
            "no gap, no duplicate"
        );
    }
}

/// A subscriber of `ch` as `user` on `node` (without presence events).
fn member(node: &Node, user: &str, ch: &str) -> Ws {
    let mut ws = connect_as(node.addr(), user);
    send(&mut ws, json!({"op": "subscribe", "id": 1, "channel": ch}));
    let (r, _) = reply(&mut ws, 1);
    assert_eq!(r["ok"], true, "{user} on {}: {r}", node.id);
    ws
}

/// A presence list (client reply or admin body) as (user, connections), in its order.
fn members(v: &Value) -> Vec<(String, u64)> {
    let list = v["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members: {v}"));
    list.iter()
        .map(|m| {
            let user = m["user"].as_str().unwrap().to_owned();
            (user, m["connections"].as_u64().unwrap())
        })
        .collect()
}

fn list(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|&(u, n)| (u.to_owned(), n)).collect()
}

/// Polls `GET /channels/{ch}/presence` on `node` for up to `bound` until it is `want`.
fn wait_presence(node: &Node, ch: &str, want: &[(String, u64)], bound: Duration) -> bool {
    let path = format!("/channels/{ch}/presence");
    let mut last = Value::Null;
    let ok = wait_until(bound, || {
        let r = node.get(&path);
        assert_eq!(r.status, 200, "{r:?}");
        last = r.json();
        members(&last) == want
    });
    if !ok {
        eprintln!("presence on node {} stayed {last}", node.id);
    }
    ok
}

#[test]
fn cluster_presence_spans_nodes_and_a_killed_nodes_members_leave_within_its_ttl() {
    let ttl = Duration::from_secs(2);
    let redis = Redis::start();
    let mut nodes = cluster(&redis, 3, &["--jwt-secret", SECRET, "--node-ttl", "2s"]);
    let ids = |ns: &[&str]| ns.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let all_listed = wait_until(PATIENCE, || {
        nodes
            .iter()
            .all(|n| n.live_nodes() == ids(&["a", "b", "c"]))
    });
    assert!(all_listed, "GET /nodes: {:?}", nodes[0].get("/nodes"));
    // Each record names where the node takes connections.
    let v = nodes[0].get("/nodes").json();
    for node in &nodes {
        let records = v["nodes"].as_array().unwrap();
        let record = records.iter().find(|r| r["id"] == node.id.as_str());
        let record = record.unwrap_or_else(|| panic!("no {} in {v}", node.id));
        assert_eq!(record["address"], node.addr().to_string(), "{v}");
        assert!(record["connections"].is_u64(), "{v}");
    }

    // Carl on c; alice twice on a, bob on a and on b, carol twice on b.
    let mut held = vec![member(&nodes[2], "carl", "room")];
    for (node, user) in [(0, "alice"), (0, "alice"), (0, "bob"), (1, "bob")] {
        held.push(member(&nodes[node], user, "room"));
    }
    let on_b = [
        member(&nodes[1], "carol", "room"),
        member(&nodes[1], "carol", "room"),
    ];
    let everyone = list(&[("alice", 2), ("bob", 2), ("carl", 1), ("carol", 2)]);
    assert!(wait_presence(&nodes[2], "room", &everyone, PATIENCE));
    // The client's presence command on c says the same.
    let mut asker = connect_as(nodes[2].addr(), "asker");
    send(
        &mut asker,
        json!({"op": "presence", "id": 2, "channel": "room"}),
    );
    let (r, _) = reply(&mut asker, 2);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(members(&r), everyone, "{r}");

    nodes[1].kill();
    let killed = Instant::now();
    let survivors = list(&[("alice", 2), ("bob", 1), ("carl", 1)]);
    let gone = wait_presence(&nodes[0], "room", &survivors, 3 * ttl);
    assert!(
        gone,
        "b's members still listed on a {:?} after the kill (node TTL {ttl:?}); log of a:\n{}",
        killed.elapsed(),
        nodes[0].log_text()
    );
    let unlisted = wait_until(3 * ttl, || nodes[0].live_nodes() == ids(&["a", "c"]));
    assert!(unlisted, "GET /nodes on a: {:?}", nodes[0].get("/nodes"));
    // The client's presence command on a says the same, and a's own members are untouched.
    let mut asker = connect_as(nodes[0].addr(), "asker");
    send(
        &mut asker,
        json!({"op": "presence", "id": 3, "channel": "room"}),
    );
    let (r, _) = reply(&mut asker, 3);
    assert_eq!(members(&r), survivors, "{r}");
    assert!(ping(&mut held[1], "alice on a").is_empty());
    drop(on_b);
}

/// Bob once on node a and twice on b, each connection known to its node (it answered a ping).
fn bob_on_a_and_twice_on_b(nodes: &[Node]) -> [Ws; 3] {
    let mut bobs = [
        connect_as(nodes[0].addr(), "bob"),
        connect_as(nodes[1].addr(), "bob"),
        connect_as(nodes[1].addr(), "bob"),
    ];
    for (i, b) in bobs.iter_mut().enumerate() {
        assert!(ping(b, &format!("bob {i}")).is_empty());
    }
    bobs
}

/// Sends `from` direct messages to bob, `{"try": n}` for n = 1, 2, ..., until one reaches
/// `want` connections: a node listens for a user's messages once the user has a connection
/// there, and until every node does, a try counts fewer. The number of tries and the last
/// reply.
fn direct_to_bob_until(from: &mut Ws, want: u64) -> (u64, Value) {
    let (mut tries, mut last) = (0u64, Value::Null);
    let all = wait_until(PATIENCE, || {
        tries += 1;
        send(
            from,
            json!({"op": "direct", "id": tries, "user": "bob", "data": {"try": tries}}),
        );
        last = reply(from, tries).0;
        last["delivered"] == want
    });
    assert!(
        all,
        "never delivered to {want} connections of bob's: {last}"
    );
    (tries, last)
}

#[test]
fn cluster_direct_messages_reach_the_user_on_every_node() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 3, &["--jwt-secret", SECRET]);
    let mut bobs = bob_on_a_and_twice_on_b(&nodes);
    let mut alice = connect_as(nodes[2].addr(), "alice");
    // Tries are numbered so that each copy is told apart.
    let (tries, _) = direct_to_bob_until(&mut alice, 3);
    // Each connection got the last try once, after at most one copy of each earlier try.
    for (i, b) in bobs.iter_mut().enumerate() {
        let mut prev = 0;
        while prev < tries {
            let d = recv(b);
            assert_eq!(d["from"], "alice", "bob {i}: {d}");
            let t = d["direct"]["try"].as_u64().unwrap();
            assert!(t > prev, "bob {i}: try {t} after {prev}");
            prev = t;
        }
    }
}

/// A watcher of `ch` as `user` on `node`: subscribed with presence events, its reply read.
fn watcher(node: &Node, user: &str, ch: &str) -> Ws {
    let mut ws = connect_as(node.addr(), user);
    send(
        &mut ws,
        json!({"op": "subscribe", "id": 1, "channel": ch, "presence": true}),
    );
    let (r, _) = reply(&mut ws, 1);
    assert_eq!(r["ok"], true, "{user} on {}: {r}", node.id);
    ws
}

/// The next presence event `ws` gets: ("join" or "leave", user).
fn event(ws: &mut Ws, who: &str) -> (String, String) {
    let e = recv(ws);
    for kind in ["join", "leave"] {
        if let Some(user) = e[kind]["user"].as_str() {
            return (kind.to_owned(), user.to_owned());
        }
    }
    panic!("{who}: not a presence event: {e}");
}

fn ev(kind: &str, user: &str) -> (String, String) {
    (kind.to_owned(), user.to_owned())
}

#[test]
fn cluster_presence_events_tell_a_watcher_about_users_on_every_node_once() {
    let redis = Redis::start();
    let mut nodes = cluster(&redis, 3, &["--jwt-secret", SECRET, "--node-ttl", "2s"]);
    let mut w = watcher(&nodes[0], "watcher", "room");

    // Carol first on b: a join from the other node.
    let carol_b = member(&nodes[1], "carol", "room");
    assert_eq!(event(&mut w, "watcher"), ev("join", "carol"));
    // Carol also on a, the watcher's node: she is already present, so nothing. She leaves b
    // (still here on a), then a: one leave, whichever node's view changes last.
    let carol_a = member(&nodes[0], "carol", "room");
    drop(carol_b);
    let gone_from_b = wait_until(PATIENCE, || {
        let r = nodes[0].get("/channels/room/presence").json();
        members(&r) == list(&[("carol", 1), ("watcher", 1)])
    });
    assert!(gone_from_b, "carol's connection on b is still listed");
    drop(carol_a);
    assert_eq!(event(&mut w, "watcher"), ev("leave", "carol"));

    // Dave on c, then c dies: his leave comes within the node TTL (plus a poll).
    let dave = member(&nodes[2], "dave", "room");
    assert_eq!(event(&mut w, "watcher"), ev("join", "dave"));
    nodes[2].kill();
    assert_eq!(event(&mut w, "watcher"), ev("leave", "dave"));
    drop(dave);

    // A watcher on b hears about a's users too, and the stream of events stays in step with
    // the list: erin joins on a.
    let mut w_b = watcher(&nodes[1], "watcher-b", "room");
    let erin = member(&nodes[0], "erin", "room");
    // b's first read of a's members may come before or after erin's subscribe; either way the
    // events end with erin present, and name only users that are in the room.
    let mut seen = Vec::new();
    while seen.last() != Some(&ev("join", "erin")) {
        seen.push(event(&mut w_b, "watcher-b"));
        assert!(seen.len() <= 3, "watcher-b: {seen:?}");
    }
    for (kind, user) in &seen {
        assert_eq!(kind, "join", "watcher-b: {seen:?}");
        assert!(
            ["watcher", "erin"].contains(&user.as_str()),
            "watcher-b: {seen:?}"
        );
    }
    // The first watcher hears of the second one (a user on b) and of erin (local).
    let mut heard = vec![event(&mut w, "watcher"), event(&mut w, "watcher")];
    heard.sort();
    assert_eq!(heard, vec![ev("join", "erin"), ev("join", "watcher-b")]);
    drop(erin);
}

/// The close frame `ws` gets next (data before it is skipped): its code and reason.
fn closed_with(ws: &mut Ws, who: &str) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
            Ok(Message::Close(None)) => panic!("{who}: closed without a code"),
            Ok(_) => continue,
            Err(e) => panic!("{who}: no close frame: {e}"),
        }
    }
}

#[test]
fn cluster_disconnect_by_the_admin_api_closes_the_user_on_every_node() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 3, &["--jwt-secret", SECRET]);
    let mut bobs = bob_on_a_and_twice_on_b(&nodes);
    let mut carol = connect_as(nodes[0].addr(), "carol");
    let mut alice = connect_as(nodes[2].addr(), "alice");
    // Every node with a connection of bob's listens for him once a direct message reaches
    // all three; only then is the disconnect below sure to be heard everywhere.
    direct_to_bob_until(&mut alice, 3);

    // Sent to node 2, which holds none of bob's connections.
    let r = nodes[2].post("/users/bob/disconnect", &json!({}));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"user": "bob", "disconnected": 3}));
    for (i, b) in bobs.iter_mut().enumerate() {
        let (code, reason) = closed_with(b, &format!("bob {i}"));
        assert_eq!(code, 4000, "bob {i}");
        assert_eq!(reason, "disconnected by server", "bob {i}");
    }
    // Others on the same nodes are untouched, and bob has nothing left anywhere.
    assert!(ping(&mut carol, "carol").is_empty());
    let r = nodes[0].post("/users/bob/disconnect", &json!({}));
    assert_eq!(r.json()["disconnected"], 0, "{r:?}");
    assert!(ping(&mut alice, "alice").is_empty());
}

#[test]
fn cluster_anonymous_users_of_different_nodes_are_different_members() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2, &[]);
    // The first connection of each node: the same local index and generation on both.
    let mut subs = Vec::new();
    for node in &nodes {
        let mut ws = connect(node.addr());
        let (r, _) = subscribe(&mut ws, 1, "lobby", None);
        assert_eq!(r["ok"], true, "{r}");
        subs.push(ws);
    }
    let mut last = Value::Null;
    let two = wait_until(PATIENCE, || {
        last = nodes[0].get("/channels/lobby/presence").json();
        members(&last).len() == 2
    });
    assert!(two, "one user per node, not one shared id: {last}");
    assert!(members(&last).iter().all(|(_, n)| *n == 1), "{last}");
}

/// A subscriber that keeps what a client must to never miss a message: the channel's epoch,
/// the last seq it took, and every delivery by (epoch, seq). A gap, or a numbering restarted
/// past messages it has not seen (a `reset` notice after Redis lost the channel), is filled by
/// resubscribing with `since`, as docs/PROTOCOL.md tells clients to.
struct Follower {
    ws: Ws,
    who: &'static str,
    ch: &'static str,
    epoch: String,
    last: u64,
    seen: BTreeMap<(String, u64), Value>,
    next_id: u64,
    resumes: u32,
}

impl Follower {
    fn subscribe(mut ws: Ws, who: &'static str, ch: &'static str) -> Follower {
        let (r, _) = subscribe(&mut ws, 1, ch, None);
        assert_eq!(r["ok"], true, "{who}: {r}");
        Follower {
            ws,
            who,
            ch,
            epoch: r["epoch"].as_str().unwrap().to_owned(),
            last: r["seq"].as_u64().unwrap(),
            seen: BTreeMap::new(),
            next_id: 2,
            resumes: 0,
        }
    }

    /// Reads and takes messages until `done` holds.
    fn until(&mut self, mut done: impl FnMut(&Follower) -> bool) {
        while !done(self) {
            let v = recv(&mut self.ws);
            self.take(v);
        }
    }

    /// Takes one message read from the connection (a delivery, a notice).
    fn take(&mut self, v: Value) {
        let who = self.who;
        assert_eq!(v["ch"], self.ch, "{who}: {v}");
        if let Some(reset) = v.get("reset") {
            // The numbering restarted: continue in the new epoch, fetching what it already
            // said before this notice.
            self.epoch = reset["epoch"].as_str().unwrap().to_owned();
            self.last = 0;
            if reset["seq"].as_u64().unwrap() > 0 {
                self.resume();
            }
            return;
        }
        let seq = v["seq"].as_u64().unwrap_or_else(|| panic!("{who}: {v}"));
        assert!(
            seq > self.last,
            "{who}: duplicate or reorder: {v} after {}",
            self.last
        );
        if seq > self.last + 1 {
            return self.resume();
        }
        self.last = seq;
        let old = self
            .seen
            .insert((self.epoch.clone(), seq), v["data"].clone());
        assert!(
            old.is_none(),
            "{who}: seq {seq} twice in epoch {}",
            self.epoch
        );
    }

    /// Unsubscribes and subscribes again with `since` at the last seq taken.
    fn resume(&mut self) {
        self.resumes += 1;
        assert!(self.resumes <= 5, "{}: gaps keep coming", self.who);
        let (id, ch) = (self.next_id, self.ch);
        self.next_id += 2;
        send(
            &mut self.ws,
            json!({"op": "unsubscribe", "id": id, "channel": ch}),
        );
        // What came before the reply follows the gap; the resume brings it again.
        let (r, _) = reply(&mut self.ws, id);
        assert_eq!(r["ok"], true, "{}: {r}", self.who);
        let since = (self.epoch.clone(), self.last);
        let (r, before) = subscribe(&mut self.ws, id + 1, ch, Some((&since.0, since.1)));
        assert!(before.is_empty(), "{}: {before:?}", self.who);
        assert_eq!(
            r["recovered"], true,
            "{}: resume from {since:?} after a gap: {r}",
            self.who
        );
    }
}

#[test]
fn cluster_nodes_ride_out_redis_being_killed_and_restarted() {
    let mut redis = Redis::start();
    let mut nodes = cluster(&redis, 2, &[]);
    let mut sub = Follower::subscribe(connect(nodes[1].addr()), "subscriber on b", "ticks");
    let mut publisher = connect(nodes[0].addr());
    for n in 1..=5u64 {
        assert_eq!(publish(&mut publisher, n, "ticks", &json!(n)), n);
    }
    sub.until(|f| f.last == 5);
    let one_member = |node: &Node| {
        let v = node.get("/channels/ticks/presence").json();
        members(&v).len() == 1
    };
    assert!(
        wait_until(PATIENCE, || one_member(&nodes[0])),
        "b's subscriber on a"
    );

    redis.kill();
    for node in &mut nodes {
        node.wait_readyz(503);
        assert!(
            node.is_running(),
            "node {} exited:\n{}",
            node.id,
            node.log_text()
        );
        assert_eq!(node.healthz(), Some(200), "node {}", node.id);
    }
    // Both clients are still connected and served by their nodes.
    for v in ping(&mut sub.ws, "subscriber on b") {
        sub.take(v);
    }
    assert!(ping(&mut publisher, "publisher on a").is_empty());
    // Published while Redis is away: they wait in a's outbox, unanswered for now.
    for n in 6..=8u64 {
        send(
            &mut publisher,
            json!({"op": "publish", "id": n, "channel": "ticks", "data": n}),
        );
    }
    let early = ping(&mut publisher, "publisher on a");
    assert!(early.is_empty(), "answered while Redis is away: {early:?}");

    redis.restart();
    for node in &nodes {
        node.wait_readyz(200);
    }
    // Redis came back empty; b wrote its members again.
    let listed = wait_until(PATIENCE, || one_member(&nodes[0]));
    assert!(listed, "{}", nodes[0].get("/channels/ticks/presence").body);
    // The outbox drained: each publish answered with the number Redis gave it. Then more.
    let mut numbered = Vec::new();
    for n in 6..=8u64 {
        let (r, _) = reply(&mut publisher, n);
        assert_eq!(r["ok"], true, "{r}");
        numbered.push((r["seq"].as_u64().unwrap(), json!(n)));
    }
    for n in 9..=12u64 {
        numbered.push((publish(&mut publisher, n, "ticks", &json!(n)), json!(n)));
    }
    // The subscriber on b ends with every message Redis numbered, each once: what reached it
    // live, and what it missed filled in from the history in Redis.
    let last = numbered.last().unwrap().0;
    sub.until(|f| f.last >= last);
    let epoch = &sub.epoch;
    for (seq, data) in &numbered {
        let got = sub.seen.get(&(epoch.clone(), *seq));
        assert_eq!(got, Some(data), "seq {seq} of epoch {epoch} on b");
    }
    // Each message once, none lost: before the outage, queued during it, published after.
    let mut all: Vec<u64> = sub.seen.values().map(|d| d.as_u64().unwrap()).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=12).collect::<Vec<u64>>(),
        "seen on b: {:?}",
        sub.seen
    );
    assert!(nodes.iter_mut().all(Node::is_running));
}

#[test]
fn cluster_node_started_before_its_redis_serves_then_becomes_ready() {
    let port = free_port();
    let node = Node::start(&format!("redis://127.0.0.1:{port}"), "early", &[]);
    assert_eq!(node.healthz(), Some(200));
    assert_eq!(node.readyz(), Some(503), "ready without a bus");
    // It serves local connections meanwhile.
    let mut ws = connect(node.addr());
    assert!(ping(&mut ws, "early client").is_empty());

    let _redis = Redis::start_on(port);
    node.wait_readyz(200);
    // And the bus carries messages once ready.
    let (r, _) = subscribe(&mut ws, 1, "late", None);
    assert_eq!(r["ok"], true, "{r}");
    let seq = node.publish("late", &json!("hello"));
    let d = recv(&mut ws);
    assert_eq!(d, json!({"ch": "late", "seq": seq, "data": "hello"}));
}

/// Reads `ws` until the node's drain message, checking the deliveries before it are `ch`'s
/// seqs `after + 1 ..`; returns (the drain's position for `ch`, the close code that follows).
fn until_drained(ws: &mut Ws, who: &str, ch: &str, mut after: u64) -> ((String, u64), u16) {
    let position = loop {
        let m = recv(ws);
        if m["type"] == "drain" {
            let p = m["positions"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["channel"] == ch))
                .unwrap_or_else(|| panic!("{who}: no position for {ch}: {m}"));
            break (
                p["epoch"].as_str().unwrap().to_owned(),
                p["seq"].as_u64().unwrap(),
            );
        }
        assert_eq!(m["seq"], after + 1, "{who}: gap or duplicate at {m}");
        after += 1;
    };
    assert_eq!(
        position.1, after,
        "{who}: the position is the last delivery received"
    );
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (position, u16::from(f.code)),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("{who}: expected the close after the drain message, got {other:?}"),
        }
    }
}

#[test]
fn cluster_paced_drain_sends_positions_that_resume_on_another_node_without_gap() {
    let redis = Redis::start();
    let pace = [
        "--drain-batch",
        "4",
        "--drain-interval",
        "100ms",
        "--drain-code",
        "1012",
    ];
    let a = Node::start(&redis.url(), "a", &pace);
    let b = Node::start(&redis.url(), "b", &[]);
    a.wait_readyz(200);
    b.wait_readyz(200);
    let mut subs: Vec<Ws> = (0..12).map(|_| connect(a.addr())).collect();
    for (i, s) in subs.iter_mut().enumerate() {
        let (r, _) = subscribe(s, i as u64, "deploy", None);
        assert_eq!(r["ok"], true, "{r}");
    }
    for n in 1..=5u64 {
        assert_eq!(b.publish("deploy", &json!(n)), n);
    }
    // Publishing goes on (on b) through the whole drain of a.
    let api = b.api;
    let total = 60u64;
    let publisher = std::thread::spawn(move || {
        let key = format!("Bearer {}", crate::util::node::API_KEY);
        for n in 6..=total {
            let body = json!({"channel": "deploy", "data": n}).to_string();
            let auth = [("Authorization", key.as_str())];
            let r = crate::util::http::request_with_body(
                api,
                "POST",
                "/publish",
                &auth,
                body.as_bytes(),
            );
            assert_eq!(r.status, 200, "{r:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let r = a.post("/drain", &json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let mut seen = Vec::new();
    for (i, s) in subs.iter_mut().enumerate() {
        let who = format!("subscriber {i} on a");
        let ((epoch, seq), code) = until_drained(s, &who, "deploy", 0);
        assert_eq!(code, 1012, "{who}");
        seen.push(seq);
        // It reconnects to b and resumes from the position it was given.
        let mut again = connect(b.addr());
        let (r, _) = subscribe(&mut again, 1, "deploy", Some((&epoch, seq)));
        assert_eq!(r["recovered"], true, "{who}: {r}");
        *s = again;
    }
    publisher.join().unwrap();
    for (i, s) in subs.iter_mut().enumerate() {
        let who = format!("subscriber {i} on b");
        let from = seen[i];
        let got = deliveries(s, &who, "deploy", from, total - from);
        let want: Vec<Value> = (from + 1..=total).map(|n| json!(n)).collect();
        assert_eq!(got, want, "{who}: replayed then live, every message once");
    }
    // Batches of 4 every 100 ms: not everyone was closed at the same position.
    assert!(seen.iter().min() < seen.iter().max(), "positions {seen:?}");
}

#[test]
fn cluster_outbox_is_bounded_drops_the_oldest_visibly_and_sends_the_rest_when_redis_is_back() {
    let port = free_port();
    let node = Node::start(
        &format!("redis://127.0.0.1:{port}"),
        "cut-off",
        &["--bus-outbox", "3"],
    );
    let mut ws = connect(node.addr());
    for id in 1..=5u64 {
        send(
            &mut ws,
            json!({"op": "publish", "id": id, "channel": "queued", "data": id}),
        );
    }
    // The two oldest no longer fit: their publishers are told at once, with nothing published.
    for id in 1..=2u64 {
        let (r, _) = reply(&mut ws, id);
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["error"]["code"], "unavailable", "{r}");
    }
    let dropped = || {
        let m = node.get("/metrics").body;
        m.lines()
            .find_map(|l| l.strip_prefix("starling_bus_outbox_dropped_total "))
            .map(|v| v.trim().to_owned())
    };
    assert_eq!(dropped().as_deref(), Some("2"));
    let _redis = Redis::start_on(port);
    node.wait_readyz(200);
    // The rest go out in order once Redis is there.
    for (id, seq) in (3..=5u64).zip(1..) {
        let (r, _) = reply(&mut ws, id);
        assert_eq!(
            (r["ok"].clone(), r["seq"].clone()),
            (json!(true), json!(seq)),
            "{r}"
        );
    }
}
