//! Graceful shutdown: on SIGTERM (or `Server::drain`) every open connection gets close 1001,
//! no new connection is accepted, and the process exits 0 once the closes are done.

use starling::metrics::CloseReason;
use std::net::TcpStream;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

use crate::util::child::Child;
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
