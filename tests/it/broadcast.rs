//! The broadcast app across shards: every message reaches every open connection on every
//! shard, sender included, in the order it was sent.

use std::time::Duration;

use starling::config::{App, Config};
use tungstenite::Message;

use crate::util::ws::{self, Ws};
use crate::util::{config, wait_until, TestServer, PATIENCE};

#[test]
fn every_client_on_every_shard_receives_every_message_in_order() {
    let server = TestServer::start(Config {
        app: App::Broadcast,
        shards: 2,
        ..config()
    });
    // The kernel spreads connections over the shards' listeners by a hash of the 4-tuple; open
    // clients until both shards hold some (16 almost always suffice).
    let mut clients: Vec<Ws> = Vec::new();
    let both_shards = |server: &TestServer, n: usize| {
        wait_until(PATIENCE, || {
            let s = server.shard_counters();
            s.iter().map(|c| c.upgraded).sum::<u64>() >= n as u64
        });
        server.shard_counters().iter().all(|c| c.upgraded > 0)
    };
    while clients.len() < 16 || !both_shards(&server, clients.len()) {
        assert!(
            clients.len() < 256,
            "256 connections all landed on one shard: {:?}",
            server.shard_counters()
        );
        clients.push(ws::connect(server.addr()));
    }
    let per_shard: Vec<u64> = server.shard_counters().iter().map(|c| c.upgraded).collect();
    assert!(per_shard.iter().all(|&n| n > 0), "{per_shard:?}");

    let n = 100;
    for i in 0..n {
        clients[0]
            .write(Message::Text(format!("broadcast {i}")))
            .unwrap();
    }
    clients[0].flush().unwrap();
    for (k, c) in clients.iter_mut().enumerate() {
        for i in 0..n {
            let got = ws::next_data(c);
            assert_eq!(
                got,
                Message::Text(format!("broadcast {i}")),
                "client {k} message {i}"
            );
        }
    }
    assert!(
        wait_until(PATIENCE, || server.counters().messages_in >= n),
        "{}",
        server.counters()
    );
}

#[test]
fn messages_from_clients_on_different_shards_all_arrive() {
    let server = TestServer::start(Config {
        app: App::Broadcast,
        shards: 2,
        ..config()
    });
    let mut clients: Vec<Ws> = (0..8).map(|_| ws::connect(server.addr())).collect();
    // Every client publishes 10 binary messages tagged with its index.
    for (k, c) in clients.iter_mut().enumerate() {
        for i in 0..10u8 {
            c.write(Message::Binary(vec![k as u8, i])).unwrap();
        }
        c.flush().unwrap();
    }
    // Each client gets all 80; per publisher, in order.
    for (k, c) in clients.iter_mut().enumerate() {
        let mut next = [0u8; 8];
        for _ in 0..80 {
            match ws::next_data(c) {
                Message::Binary(b) => {
                    let (from, i) = (b[0] as usize, b[1]);
                    assert_eq!(i, next[from], "client {k}: publisher {from} out of order");
                    next[from] += 1;
                }
                other => panic!("client {k}: {}", ws::desc(&other)),
            }
        }
        assert!(next.iter().all(|&x| x == 10), "client {k}: {next:?}");
    }
}

#[test]
fn many_connections_get_every_message_once_and_late_joiners_only_what_follows() {
    // 1,200 connections on one shard: more than the shard writes per loop pass, so deliveries
    // span several passes and new messages join the writes still ahead.
    let server = TestServer::start(Config {
        app: App::Broadcast,
        shards: 1,
        ..config()
    });
    let mut clients: Vec<Ws> = (0..1200).map(|_| ws::connect(server.addr())).collect();
    let burst = |c: &mut Ws, from: usize, to: usize| {
        for i in from..to {
            c.write(Message::Text(format!("m{i}"))).unwrap();
        }
        c.flush().unwrap();
    };
    burst(&mut clients[0], 0, 25);
    burst(&mut clients[0], 25, 50);
    // The publisher hears its own 50 back: they are committed to the broadcast stream.
    for i in 0..50 {
        assert_eq!(
            ws::next_data(&mut clients[0]),
            Message::Text(format!("m{i}"))
        );
    }
    let mut late = ws::connect(server.addr());
    burst(&mut clients[0], 50, 60);
    for i in 50..60 {
        assert_eq!(
            ws::next_data(&mut clients[0]),
            Message::Text(format!("m{i}"))
        );
    }
    for (k, c) in clients.iter_mut().enumerate().skip(1) {
        for i in 0..60 {
            assert_eq!(
                ws::next_data(c),
                Message::Text(format!("m{i}")),
                "client {k} message {i}"
            );
        }
    }
    // The late connection opened after m49 went out: its first message is m50.
    for i in 50..60 {
        assert_eq!(
            ws::next_data(&mut late),
            Message::Text(format!("m{i}")),
            "late client"
        );
    }
    // Counters are published every 250 ms: wait for the figures to settle.
    assert!(
        wait_until(PATIENCE, || {
            let c = server.counters();
            c.messages_in == 60 && c.messages_out == 1200 * 60 + 10
        }),
        "{}",
        server.counters()
    );
}

#[test]
fn a_paced_sweep_batches_writes_and_still_delivers_everything_in_order() {
    // --sweep-interval: a block of connections is written at most once per interval. The
    // messages are sent one by one (each flushed, 2 ms apart), so an unpaced sweep would
    // write each of the 300 connections about once per message; paced, the writes per
    // connection are bounded by the time the burst took over the interval. 300 connections
    // make three blocks, more than one loop pass writes.
    let interval = Duration::from_millis(20);
    let server = TestServer::start(Config {
        app: App::Broadcast,
        shards: 1,
        sweep_interval: interval,
        ..config()
    });
    let mut clients: Vec<Ws> = (0..300).map(|_| ws::connect(server.addr())).collect();
    assert!(wait_until(PATIENCE, || server.counters().upgraded >= 300));
    // Counters are published periodically: wait until the upgrades' writes are in them.
    std::thread::sleep(Duration::from_millis(600));
    let writes_before = server.counters().write_calls;
    let started = std::time::Instant::now();
    let n = 100;
    for i in 0..n {
        clients[0]
            .send(Message::Binary(format!("m{i}").into_bytes()))
            .unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    for (k, c) in clients.iter_mut().enumerate() {
        for i in 0..n {
            let got = ws::next_data(c);
            assert_eq!(
                got,
                Message::Binary(format!("m{i}").into_bytes()),
                "client {k} message {i}"
            );
        }
    }
    let elapsed = started.elapsed();
    assert!(wait_until(PATIENCE, || server.counters().messages_out >= 300 * n));
    let c = server.counters();
    assert_eq!(c.messages_out, 300 * n);
    // Each block is written at most once per interval (plus the first write), so each
    // connection at most elapsed / interval + 1 times; the sender's 100 reads add one
    // write each at most (it is in block 0 too).
    let writes = c.write_calls - writes_before;
    let per_conn = elapsed.as_millis() as u64 / interval.as_millis() as u64 + 1;
    assert!(
        writes <= 300 * per_conn,
        "{writes} writes for {n} messages to 300 connections in {elapsed:?} (bound {})",
        300 * per_conn
    );
    assert!(
        writes < 300 * n / 2,
        "{writes} writes: not batched ({elapsed:?})"
    );
}
