//! Graceful shutdown: on SIGTERM (or `Server::drain`, or `starling drain` through the admin
//! API) every open connection gets its close (1001 unless configured otherwise), no new
//! connection is accepted, and the process exits 0 once the closes are done. A paced drain
//! closes a batch per interval; hub connections are told their resume positions first.

use serde_json::{json, Value};
use starling::metrics::CloseReason;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use crate::util::child::{free_port, run, Child};
use crate::util::raw::{self, RawClient};
use crate::util::ws::{self, Ws};
use crate::util::{wait_until, TestServer, PATIENCE};

/// Reads until a close frame and returns its code.
fn await_close(w: &mut Ws) -> Option<CloseCode> {
    loop {
        match w.read() {
            Ok(Message::Close(f)) => return f.map(|f| f.code),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("expected a close, got {}", ws::desc(&other)),
            Err(e) => panic!("expected a close, got error {e}"),
        }
    }
}

/// A new connection while draining must not be served: refused, reset, or closed without a
/// 101. Returns true if it was refused outright (the listener is gone).
fn new_connection_is_turned_away(addr: std::net::SocketAddr) -> bool {
    let Ok(stream) = TcpStream::connect(addr) else {
        return true;
    };
    let mut c = RawClient::from_stream(stream);
    if c.send(raw::upgrade_request("/", "").as_bytes()).is_err() {
        return false;
    }
    if let Ok(head) = c.read_head() {
        panic!("a connection made during the drain was answered: {head:?}");
    }
    false
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let mut child = Child::serve(&["--shards", "2", "--stats-interval", "0s"]);
    let mut clients: Vec<Ws> = (0..3).map(|_| ws::connect(child.addr)).collect();
    for c in &mut clients {
        ws::assert_echo(c, Message::text("before the drain"));
    }
    child.signal(libc::SIGTERM);
    // Each client is told the server is going away ("1001 indicates that an endpoint is
    // "going away", such as a server going down", §7.4.1). The clients hold back their replies
    // for now, so the server is still draining below.
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            await_close(c),
            Some(CloseCode::Away),
            "client {i}; log:\n{}",
            child.log_text()
        );
    }
    // No new connection is served while draining; eventually the listeners are gone.
    assert!(
        wait_until(PATIENCE, || new_connection_is_turned_away(child.addr)),
        "new connections still accepted while draining"
    );
    // Now answer the closes (tungstenite queued the replies; reading flushes them).
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(ws::finish_close(c), "client {i}: close did not complete");
    }
    // The server closed TCP first (§7.1.1); the clients now close theirs.
    drop(clients);
    let status = child
        .wait_exit(PATIENCE)
        .unwrap_or_else(|| panic!("still running after the drain; log:\n{}", child.log_text()));
    assert_eq!(status.code(), Some(0), "log:\n{}", child.log_text());
}

#[test]
fn sigterm_exits_even_if_clients_never_answer_the_close() {
    let mut child = Child::serve(&[
        "--shards",
        "1",
        "--close-timeout",
        "300ms",
        "--drain-timeout",
        "5s",
    ]);
    let mut silent = RawClient::open(child.addr);
    child.signal(libc::SIGTERM);
    silent.expect_close_then_eof(1001).unwrap();
    let status = child
        .wait_exit(PATIENCE)
        .unwrap_or_else(|| panic!("still running; log:\n{}", child.log_text()));
    assert_eq!(status.code(), Some(0), "log:\n{}", child.log_text());
}

#[test]
fn server_drain_closes_clients_with_1001_and_the_shards_exit() {
    let server = TestServer::start(starling::config::Config {
        shards: 2,
        ..crate::util::config()
    });
    let mut clients: Vec<Ws> = (0..4).map(|_| ws::connect(server.addr())).collect();
    for c in &mut clients {
        ws::assert_echo(c, Message::text("hi"));
    }
    server.drain();
    for c in &mut clients {
        assert_eq!(await_close(c), Some(CloseCode::Away));
        assert!(ws::finish_close(c));
    }
    drop(clients);
    assert!(
        wait_until(PATIENCE, || server.is_finished()),
        "shards still running after every connection closed"
    );
    let totals = server.join();
    assert_eq!(totals.closed_for(CloseReason::Drain), 4, "{totals}");
    assert_eq!(totals.open, 0, "{totals}");
}

#[test]
fn sigterm_right_after_start_still_drains() {
    // A process manager may signal as soon as the port is open. From the moment the server
    // accepts connections, SIGTERM must mean "drain" (exit 0), never the default action of
    // dying by the signal. The window is narrow, so try several times.
    for i in 0..20 {
        let mut child = Child::serve(&["--shards", "1"]);
        child.signal(libc::SIGTERM);
        let status = child
            .wait_exit(PATIENCE)
            .unwrap_or_else(|| panic!("attempt {i}: still running; log:\n{}", child.log_text()));
        assert_eq!(
            status.code(),
            Some(0),
            "attempt {i}: {status:?}; log:\n{}",
            child.log_text()
        );
    }
}

/// Close frames arriving at `n` raw clients at once, each replied to: when each arrived,
/// after `since`, and its code. The clients are read on threads of their own so that an
/// arrival is timed when it happens, not when a sequential reader gets to it.
fn closes_of(clients: Vec<RawClient>, since: Instant) -> Vec<(Duration, Option<u16>)> {
    std::thread::scope(|s| {
        let readers: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || {
                        let f = c.read_frame().expect("a close frame");
                        let at = since.elapsed();
                        assert_eq!(f.opcode, raw::op::CLOSE, "{f:?}");
                        let _ = c.send(&raw::masked(raw::op::CLOSE, &f.payload[..2]));
                        (at, f.close_code())
                    })
                    .expect("spawn a reader")
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

#[test]
fn a_paced_drain_closes_in_batches_spread_over_time_and_exits_0() {
    let mut child = Child::serve(&[
        "--shards",
        "2",
        "--drain-batch",
        "50",
        "--drain-interval",
        "200ms",
        "--drain-timeout",
        "20s",
        "--stats-interval",
        "0s",
    ]);
    let n = 300;
    // Each upgrade is answered before the next: all are open on the server before the drain.
    let clients: Vec<RawClient> = (0..n).map(|_| RawClient::open(child.addr)).collect();
    let signalled = Instant::now();
    child.signal(libc::SIGTERM);
    let mut closes = closes_of(clients, signalled);
    assert!(
        closes.iter().all(|&(_, code)| code == Some(1001)),
        "{closes:?}"
    );
    closes.sort();
    let first = closes[0].0;
    let last = closes[n - 1].0;
    // 50 per step node-wide (25 per shard) every 200 ms: about 6 steps of 50, the shards
    // doing their share on their own. Loose bounds only: not (nearly) all at once, all
    // long before the timeout.
    let early = closes
        .iter()
        .filter(|&&(at, _)| at < first + Duration::from_millis(100))
        .count();
    assert!(early <= n / 2, "{early} of {n} closes in the first 100 ms");
    assert!(
        last - first >= Duration::from_millis(800),
        "the closes took only {:?} from first to last",
        last - first
    );
    assert!(
        last < Duration::from_secs(15),
        "the last close came at {last:?}"
    );
    let status = child
        .wait_exit(PATIENCE)
        .unwrap_or_else(|| panic!("still running after the drain; log:\n{}", child.log_text()));
    assert_eq!(status.code(), Some(0), "log:\n{}", child.log_text());
}

/// What a hub subscriber saw of one channel until the server closed it.
struct Seen {
    /// The epoch and seq of its subscribe reply.
    epoch: String,
    subscribed_at: u64,
    /// The last delivery's seq (every one checked consecutive).
    last: Option<u64>,
    /// The drain message.
    drain: Value,
    /// The close frame.
    close: Option<(CloseCode, String)>,
}

/// Reads deliveries of `news` (checking each is the next seq) until the drain message, then
/// the close frame, then completes the close.
fn read_until_drained(mut ws: Ws, epoch: String, subscribed_at: u64) -> Seen {
    let mut last = None;
    let drain = loop {
        let v = ws::recv_json(&mut ws);
        if v.get("type").is_some() {
            break v;
        }
        let seq = v["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("not a delivery: {v}"));
        assert_eq!(v["ch"], "news", "{v}");
        assert_eq!(
            seq,
            last.unwrap_or(subscribed_at) + 1,
            "a gap or a repeat at {v}"
        );
        last = Some(seq);
    };
    let close = match ws.read() {
        Ok(Message::Close(f)) => f.map(|f| (f.code, f.reason.to_string())),
        other => panic!("expected the close right after the drain message, got {other:?}"),
    };
    assert!(ws::finish_close(&mut ws), "the close did not complete");
    Seen {
        epoch,
        subscribed_at,
        last,
        drain,
        close,
    }
}

/// Publishes to `news` one message at a time (each after the last one's reply) until the
/// drain message comes instead of a reply; returns how many it published.
fn publish_until_drained(mut ws: Ws) -> (u64, Value, Option<CloseCode>) {
    let mut published = 0;
    let drain = loop {
        ws::send_json(
            &mut ws,
            json!({"op": "publish", "id": published, "channel": "news", "data": {"n": published}}),
        );
        let v = ws::recv_json(&mut ws);
        if v.get("type").is_some() {
            break v;
        }
        assert_eq!(v["ok"], true, "{v}");
        published += 1;
    };
    let code = await_close(&mut ws);
    assert!(ws::finish_close(&mut ws));
    (published, drain, code)
}

#[test]
fn a_hub_drain_tells_each_subscriber_the_position_it_was_given_and_closes_with_1012() {
    let mut child = Child::serve(&[
        "--app",
        "hub",
        "--shards",
        "2",
        "--drain-batch",
        "2",
        "--drain-interval",
        "100ms",
        "--drain-code",
        "1012",
        "--stats-interval",
        "0s",
    ]);
    let mut subs: Vec<(Ws, String, u64)> = (0..8)
        .map(|i| {
            let mut ws = ws::connect(child.addr);
            ws::send_json(
                &mut ws,
                json!({"op": "subscribe", "id": i, "channel": "news"}),
            );
            let r = ws::recv_json(&mut ws);
            assert_eq!(r["ok"], true, "{r}");
            let epoch = r["epoch"].as_str().unwrap().to_owned();
            (ws, epoch, r["seq"].as_u64().unwrap())
        })
        .collect();
    // Connected last, so closed last on its shard: deliveries go on while the others drain.
    let publisher = ws::connect(child.addr);
    std::thread::scope(|s| {
        let publishing = s.spawn(|| publish_until_drained(publisher));
        // Every subscriber is receiving before the drain starts.
        for (ws, _, at) in &mut subs {
            let d = ws::recv_json(ws);
            assert_eq!(d["seq"].as_u64(), Some(*at + 1), "{d}");
            *at += 1;
        }
        child.signal(libc::SIGTERM);
        let readers: Vec<_> = subs
            .drain(..)
            .map(|(ws, epoch, at)| s.spawn(move || read_until_drained(ws, epoch, at)))
            .collect();
        let seen: Vec<Seen> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        let (published, drain, code) = publishing.join().unwrap();
        assert!(published > 0);
        assert_eq!(drain, json!({"type": "drain", "positions": []}));
        assert_eq!(code, Some(CloseCode::Restart));
        for (i, s) in seen.iter().enumerate() {
            // The position is exactly the last delivery it got, in the epoch it subscribed in.
            let seq = s.last.unwrap_or(s.subscribed_at);
            let want = json!({"type": "drain", "positions": [
                {"channel": "news", "epoch": s.epoch, "seq": seq}
            ]});
            assert_eq!(s.drain, want, "subscriber {i}");
            let reason = format!("resume news@{}:{seq}", s.epoch);
            assert_eq!(
                s.close,
                Some((CloseCode::Restart, reason)),
                "subscriber {i}"
            );
        }
        // Deliveries went on during the drain: those closed later had been given more.
        let seqs: Vec<u64> = seen.iter().map(|s| s.last.unwrap_or(0)).collect();
        assert!(
            seqs.iter().max() > seqs.iter().min(),
            "every subscriber stopped at the same seq: {seqs:?}"
        );
    });
    let status = child
        .wait_exit(PATIENCE)
        .unwrap_or_else(|| panic!("still running after the drain; log:\n{}", child.log_text()));
    assert_eq!(status.code(), Some(0), "log:\n{}", child.log_text());
}

#[test]
fn starling_drain_asks_a_running_node_through_its_admin_api() {
    let api = format!("127.0.0.1:{}", free_port());
    let mut child = Child::serve(&[
        "--api-listen",
        &api,
        "--api-key",
        "k",
        "--close-timeout",
        "10s",
        "--drain-timeout",
        "20s",
    ]);
    let api_addr: std::net::SocketAddr = api.parse().unwrap();
    assert!(
        wait_until(PATIENCE, || TcpStream::connect(api_addr).is_ok()),
        "the admin API never listened; log:\n{}",
        child.log_text()
    );
    let mut client = ws::connect(child.addr);
    ws::assert_echo(&mut client, Message::text("before"));
    // A wrong key: refused, with the server's reason, and nothing starts.
    let (status, out) = run(&["drain", "--api", &api, "--api-key", "wrong"]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("401") && out.contains("API key"), "{out}");
    ws::assert_echo(&mut client, Message::text("still served"));
    // The drain, with a code of its own.
    let drain = ["drain", "--api", &api, "--api-key", "k", "--code", "1012"];
    let (status, out) = run(&drain);
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("draining") && out.contains("1012"), "{out}");
    assert_eq!(await_close(&mut client), Some(CloseCode::Restart));
    // There is only one drain; the client has not answered its close, so the node is still
    // there to say so.
    let (status, out) = run(&drain);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("409") && out.contains("already draining"),
        "{out}"
    );
    let (ready, ..) = raw::http(api_addr, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(ready, 503);
    // Then it exits as on SIGTERM.
    assert!(ws::finish_close(&mut client));
    drop(client);
    let status = child
        .wait_exit(PATIENCE)
        .unwrap_or_else(|| panic!("still running after the drain; log:\n{}", child.log_text()));
    assert_eq!(status.code(), Some(0), "log:\n{}", child.log_text());
    let (status, out) = run(&drain);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("cannot reach"), "{out}");
}
