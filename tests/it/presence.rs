//! Presence and direct messages in the channel protocol (`--app hub`), across two shards:
//! join and leave events for subscribers who asked, the presence list and its bound, members
//! removed on every way a connection ends (unsubscribe, close, a dropped socket, a peer that
//! stops answering pings), and direct messages to every connection of a user with the
//! delivered count.
//!
//! Which shard a connection lands on is the kernel's choice (SO_REUSEPORT); tests that need
//! one connection on each shard read it from the shards' published upgrade counters and close
//! connections that landed elsewhere.

use std::net::Shutdown;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use starling::config::{App, Config};
use starling::hub::auth::issue;
use tungstenite::Message;

use crate::util::raw::{masked, op, End, RawClient};
use crate::util::ws::{
    finish_close, next_data, recv_json as recv, send_json as send, try_connect_with, Ws,
};
use crate::util::{config, wait_until, TestServer, PATIENCE};

pub const SECRET: &str = "a-test-secret-of-32-bytes-length";

fn hub(extra: impl FnOnce(&mut Config)) -> TestServer {
    let mut c = Config {
        app: App::Hub,
        shards: 2,
        ..config()
    };
    extra(&mut c);
    TestServer::start(c)
}

fn with_tokens(c: &mut Config) {
    c.jwt_secret = Some(SECRET.into());
}

/// A token for `user` allowed on every channel, valid for an hour.
pub fn token(user: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    issue(SECRET.as_bytes(), user, exp, &["*"], &["*"])
}

pub fn connect_as(addr: std::net::SocketAddr, user: &str) -> Ws {
    let auth = format!("Bearer {}", token(user));
    try_connect_with(addr, &[("Authorization", &auth)])
        .unwrap_or_else(|e| panic!("{user} connects: {e}"))
        .0
}

/// A close handshake started by the client, then the socket closed, as a client would.
fn close(mut ws: Ws) {
    let _ = ws.close(None);
    assert!(finish_close(&mut ws));
}

/// Sends `v` and reads until the reply with its id; what came before it is returned too.
fn call(ws: &mut Ws, v: Value) -> (Value, Vec<Value>) {
    let id = v["id"].as_u64().expect("commands here carry an id");
    send(ws, v);
    let mut before = Vec::new();
    loop {
        let r = recv(ws);
        if r.get("id").and_then(Value::as_u64) == Some(id) {
            return (r, before);
        }
        before.push(r);
    }
}

fn subscribe(ws: &mut Ws, id: u64, ch: &str, presence: bool) {
    let cmd = json!({"op": "subscribe", "id": id, "channel": ch, "presence": presence});
    let (r, _) = call(ws, cmd);
    assert_eq!(r["ok"], true, "{r}");
}

fn presence(ws: &mut Ws, id: u64, ch: &str) -> Value {
    let (r, _) = call(ws, json!({"op": "presence", "id": id, "channel": ch}));
    assert_eq!(r["ok"], true, "{r}");
    r
}

/// The members of a presence reply as (user, connections), in the reply's order.
fn members(r: &Value) -> Vec<(String, u64)> {
    r["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            let user = m["user"].as_str().unwrap().to_owned();
            (user, m["connections"].as_u64().unwrap())
        })
        .collect()
}

fn list(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|&(u, n)| (u.to_owned(), n)).collect()
}

fn event(ch: &str, kind: &str, user: &str) -> Value {
    json!({"ch": ch, kind: {"user": user}})
}

/// Places new connections on a chosen shard, by watching which shard's upgrade counter moves.
/// Every connection to the server must be made through it, one at a time.
struct Placer<'a> {
    server: &'a TestServer,
    upgraded: u64,
}

impl<'a> Placer<'a> {
    fn new(server: &'a TestServer) -> Placer<'a> {
        Placer {
            server,
            upgraded: 0,
        }
    }

    fn per_shard(&self) -> Vec<u64> {
        let c = self.server.shard_counters();
        c.iter().map(|c| c.upgraded).collect()
    }

    /// Connects with `connect` and says which shard took the connection.
    fn connect<T>(&mut self, connect: impl FnOnce() -> T) -> (T, usize) {
        let settled = |want: u64| move |v: &Vec<u64>| v.iter().sum::<u64>() == want;
        let mut before = self.per_shard();
        let ok = wait_until(PATIENCE, || {
            before = self.per_shard();
            settled(self.upgraded)(&before)
        });
        assert!(ok, "upgrade counters never reached {}", self.upgraded);
        let conn = connect();
        self.upgraded += 1;
        let mut after = before.clone();
        let ok = wait_until(PATIENCE, || {
            after = self.per_shard();
            settled(self.upgraded)(&after)
        });
        assert!(ok, "the upgrade was never counted");
        let shard = (0..after.len()).find(|&i| after[i] > before[i]).unwrap();
        (conn, shard)
    }

    /// A connection on `shard`; connections that land elsewhere are closed and gone from the
    /// server before the next try.
    fn on_shard(&mut self, shard: usize, mut connect: impl FnMut() -> Ws) -> Ws {
        for _ in 0..100 {
            let open = self.server.counters().open;
            let (ws, landed) = self.connect(&mut connect);
            if landed == shard {
                return ws;
            }
            close(ws);
            let gone = wait_until(PATIENCE, || self.server.counters().open == open);
            assert!(gone, "a closed connection stayed open");
        }
        panic!("no connection landed on shard {shard} in 100 tries");
    }
}

#[test]
fn joins_and_leaves_across_shards_with_exact_counts() {
    let server = hub(with_tokens);
    let addr = server.addr();
    let mut placer = Placer::new(&server);
    let mut watcher = placer.on_shard(0, || connect_as(addr, "watcher"));
    subscribe(&mut watcher, 1, "room", true);
    let mut alice0 = placer.on_shard(0, || connect_as(addr, "alice"));
    let mut alice1 = placer.on_shard(1, || connect_as(addr, "alice"));
    let mut bob = placer.on_shard(1, || connect_as(addr, "bob"));

    subscribe(&mut alice0, 1, "room", false);
    assert_eq!(recv(&mut watcher), event("room", "join", "alice"));
    // Alice's second connection, on the other shard, is no new member: no event for it.
    subscribe(&mut alice1, 1, "room", false);
    subscribe(&mut bob, 1, "room", false);
    assert_eq!(recv(&mut watcher), event("room", "join", "bob"));
    let r = presence(&mut bob, 2, "room");
    assert_eq!(r["channel"], "room");
    assert_eq!(r["truncated"], false);
    let want = list(&[("alice", 2), ("bob", 1), ("watcher", 1)]);
    assert_eq!(members(&r), want);

    // One of alice's connections leaves: she is still there. The other closes: she is gone.
    let (r, _) = call(
        &mut alice0,
        json!({"op": "unsubscribe", "id": 2, "channel": "room"}),
    );
    assert_eq!(r["ok"], true, "{r}");
    let r = presence(&mut watcher, 2, "room");
    assert_eq!(
        members(&r),
        list(&[("alice", 1), ("bob", 1), ("watcher", 1)])
    );
    close(alice1);
    assert_eq!(recv(&mut watcher), event("room", "leave", "alice"));

    // Bob's socket goes away without a close handshake.
    bob.get_ref().shutdown(Shutdown::Both).unwrap();
    drop(bob);
    assert_eq!(recv(&mut watcher), event("room", "leave", "bob"));
    let r = presence(&mut watcher, 3, "room");
    assert_eq!(members(&r), list(&[("watcher", 1)]));
    // A subscriber that did not ask for events got none: its next message is this reply.
    let (r, before) = call(
        &mut alice0,
        json!({"op": "subscribe", "id": 3, "channel": "other"}),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert!(before.is_empty(), "{before:?}");
}

#[test]
fn a_watcher_sees_no_event_before_its_subscribe_reply_and_not_its_own_join() {
    let server = hub(with_tokens);
    let mut a = connect_as(server.addr(), "a");
    let mut b = connect_as(server.addr(), "b");
    subscribe(&mut a, 1, "c", false);
    let (r, before) = call(
        &mut b,
        json!({"op": "subscribe", "id": 1, "channel": "c", "presence": true}),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert!(before.is_empty(), "{before:?}");
    let r = presence(&mut b, 2, "c");
    assert_eq!(members(&r), list(&[("a", 1), ("b", 1)]));
    close(a);
    assert_eq!(recv(&mut b), event("c", "leave", "a"));
}

#[test]
fn the_list_is_bounded_and_says_so() {
    let server = hub(|c| {
        with_tokens(c);
        c.max_presence_members = 2;
    });
    let mut w = connect_as(server.addr(), "w");
    subscribe(&mut w, 1, "big", true);
    let mut others: Vec<Ws> = ["u1", "u2", "u3"]
        .iter()
        .map(|u| connect_as(server.addr(), u))
        .collect();
    for ws in &mut others {
        subscribe(ws, 1, "big", false);
    }
    let (r, events) = call(&mut w, json!({"op": "presence", "id": 2, "channel": "big"}));
    assert_eq!(r["truncated"], true, "{r}");
    assert_eq!(r["unlisted"], 2, "{r}");
    assert_eq!(members(&r).len(), 2, "{r}");
    assert!(members(&r).contains(&("w".to_owned(), 1)), "{r}");
    // Exactly one other user was listed, so exactly one join was reported, before the reply.
    let listed = members(&r).into_iter().find(|(u, _)| u != "w").unwrap().0;
    assert_eq!(events, [event("big", "join", &listed)]);
    // Unlisted users leave without an event; the listed one's leave is reported.
    for ws in others {
        close(ws);
    }
    assert_eq!(recv(&mut w), event("big", "leave", &listed));
    // The unlisted users' leaves reach the owner when their connections leave the slab, which
    // may be after the listed one's: ask until they have.
    let mut id = 3;
    let mut r = presence(&mut w, id, "big");
    let end = std::time::Instant::now() + PATIENCE;
    while r["truncated"] != false && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
        id += 1;
        r = presence(&mut w, id, "big");
    }
    assert_eq!(r["truncated"], false, "{r}");
    assert_eq!(members(&r), list(&[("w", 1)]));
}

#[test]
fn presence_needs_the_right_to_subscribe() {
    let server = hub(with_tokens);
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let t = issue(SECRET.as_bytes(), "eve", exp, &["public.*"], &[]);
    let auth = format!("Bearer {t}");
    let mut eve = try_connect_with(server.addr(), &[("Authorization", &auth)])
        .unwrap()
        .0;
    let (r, _) = call(
        &mut eve,
        json!({"op": "presence", "id": 1, "channel": "secret"}),
    );
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    let r = presence(&mut eve, 2, "public.news");
    assert_eq!(members(&r), list(&[]));
}

/// A subscribe sent by hand from a raw client that will never answer a ping.
fn raw_subscriber(server: &TestServer, ch: &str) -> RawClient {
    let mut c = RawClient::open(server.addr());
    let cmd = json!({"op": "subscribe", "id": 1, "channel": ch}).to_string();
    c.send(&masked(op::TEXT, cmd.as_bytes())).unwrap();
    let reply = c.read_frame().expect("subscribe reply");
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    c
}

#[test]
fn a_peer_that_stops_answering_pings_leaves() {
    let server = hub(|c| {
        c.ping_interval = Duration::from_millis(300);
        c.pong_timeout = Duration::from_millis(300);
        c.max_missed_pongs = 2;
    });
    // The watcher answers pings: tungstenite replies on every read.
    let mut w = crate::util::ws::connect(server.addr());
    subscribe(&mut w, 1, "live", true);
    let mut silent = raw_subscriber(&server, "live");
    let joined = recv(&mut w);
    let user = joined["join"]["user"].as_str().expect("a join").to_owned();
    assert!(user.starts_with("anon:"), "{joined}");
    let r = presence(&mut w, 2, "live");
    assert_eq!(members(&r).len(), 2, "{r}");
    assert!(members(&r).contains(&(user.clone(), 1)), "{r}");
    // Leave comes once the server gives up on the silent peer.
    assert_eq!(recv(&mut w), event("live", "leave", &user));
    let end = loop {
        match silent.read_frame() {
            Ok(f) if f.opcode == op::PING => continue,
            Ok(f) => panic!("unexpected frame {f:?}"),
            Err(e) => break e,
        }
    };
    assert!(matches!(end, End::Eof | End::Reset), "{end:?}");
    let r = presence(&mut w, 3, "live");
    assert_eq!(members(&r).len(), 1, "{r}");
}

#[test]
fn direct_reaches_every_connection_of_the_user_on_both_shards() {
    let server = hub(with_tokens);
    let addr = server.addr();
    let mut placer = Placer::new(&server);
    let mut bob0 = placer.on_shard(0, || connect_as(addr, "bob"));
    let mut bob1 = placer.on_shard(1, || connect_as(addr, "bob"));
    let (mut alice, _) = placer.connect(|| connect_as(addr, "alice"));
    let data = r#"{"text":  "hi", "n": 1.50}"#;
    let cmd = format!(r#"{{"op":"direct","id":7,"user":"bob","data":{data}}}"#);
    alice.send(Message::text(cmd)).unwrap();
    assert_eq!(
        recv(&mut alice),
        json!({"id": 7, "ok": true, "delivered": 2})
    );
    for bob in [&mut bob0, &mut bob1] {
        let Message::Text(t) = next_data(bob) else {
            panic!("text expected")
        };
        assert_eq!(t.as_str(), format!(r#"{{"from":"alice","direct":{data}}}"#));
    }
    let (r, _) = call(
        &mut alice,
        json!({"op": "direct", "id": 8, "user": "nobody", "data": 1}),
    );
    assert_eq!(r, json!({"id": 8, "ok": true, "delivered": 0}));
    // Once one of bob's connections is gone, one is left to deliver to.
    bob1.get_ref().shutdown(Shutdown::Both).unwrap();
    drop(bob1);
    let mut delivered = 2;
    let mut id = 9;
    let gone = wait_until(PATIENCE, || {
        id += 1;
        let (r, _) = call(
            &mut alice,
            json!({"op": "direct", "id": id, "user": "bob", "data": id}),
        );
        delivered = r["delivered"].as_u64().unwrap();
        delivered == 1
    });
    assert!(gone, "still delivered to {delivered}");
    let (r, _) = call(
        &mut alice,
        json!({"op": "direct", "id": 1, "user": "a\nb", "data": 1}),
    );
    assert_eq!(r["error"]["code"], "bad_user", "{r}");
}

#[test]
fn anonymous_connections_have_ids_others_can_write_to() {
    let server = hub(|_| {});
    let mut a = crate::util::ws::connect(server.addr());
    let mut b = crate::util::ws::connect(server.addr());
    subscribe(&mut a, 1, "lobby", false);
    let r = presence(&mut b, 1, "lobby");
    let m = members(&r);
    assert_eq!(m.len(), 1, "{r}");
    let (a_id, n) = &m[0];
    assert_eq!(*n, 1);
    let (r, _) = call(
        &mut b,
        json!({"op": "direct", "id": 2, "user": a_id, "data": "psst"}),
    );
    assert_eq!(r["delivered"], 1, "{r}");
    let got = recv(&mut a);
    assert_eq!(got["direct"], "psst", "{got}");
    let from = got["from"].as_str().unwrap();
    assert!(from.starts_with("anon:") && from != a_id, "{got}");
    // An id that names no live connection gets nothing.
    for ghost in ["anon:0.99999.1", "anon:7.0.0", "anon:x"] {
        let (r, _) = call(
            &mut b,
            json!({"op": "direct", "id": 3, "user": ghost, "data": 1}),
        );
        assert_eq!(r["delivered"], 0, "{ghost}: {r}");
    }
}

#[test]
fn with_tokens_anonymous_connections_may_not_send_direct_messages() {
    let server = hub(|c| {
        with_tokens(c);
        c.anonymous = Some(true);
    });
    let mut bob = connect_as(server.addr(), "bob");
    let mut anon = crate::util::ws::connect(server.addr());
    let (r, _) = call(
        &mut anon,
        json!({"op": "direct", "id": 1, "user": "bob", "data": 1}),
    );
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    // Bob writes to himself: his one connection gets the message, then the reply (his own
    // shard delivers before every shard has answered).
    let (r, before) = call(
        &mut bob,
        json!({"op": "direct", "id": 1, "user": "bob", "data": "self"}),
    );
    assert_eq!(r, json!({"id": 1, "ok": true, "delivered": 1}));
    assert_eq!(before, [json!({"from": "bob", "direct": "self"})]);
}
