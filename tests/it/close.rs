//! The close handshake started by the client (RFC 6455 §5.5.1, §7.1): the server answers with a
//! close frame echoing the code, then closes TCP first (§7.1.1), and is none the worse for it.

use std::borrow::Cow;

use starling::metrics::CloseReason;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use crate::util::raw::{close_body, masked, op, RawClient};
use crate::util::ws;
use crate::util::TestServer;

#[test]
fn client_close_is_echoed_with_its_code_then_tcp_closes() {
    let server = TestServer::echo();
    let codes = [1000u16, 1001, 1003, 1011, 3000, 4000, 4999];
    for code in codes {
        let mut c = RawClient::open(server.addr());
        c.send(&masked(op::CLOSE, &close_body(code, b"bye")))
            .unwrap();
        // "When sending a Close frame in response, the endpoint typically echos the status code
        // it received" (§5.5.1).
        c.expect_close_then_eof(code)
            .unwrap_or_else(|e| panic!("close {code}: {e}"));
    }
    assert!(
        server.wait_closed(CloseReason::Normal, codes.len() as u64),
        "{}",
        server.counters()
    );
    ws::assert_server_healthy(server.addr());
}

/// 1010 is a client's code ("not used by the server", §7.4.1), so it is answered with 1000.
#[test]
fn client_close_1010_is_answered_with_1000() {
    let server = TestServer::echo();
    let mut c = RawClient::open(server.addr());
    c.send(&masked(op::CLOSE, &close_body(1010, b"no extension")))
        .unwrap();
    c.expect_close_then_eof(1000).unwrap();
}

#[test]
fn close_without_payload_is_answered_then_tcp_closes() {
    let server = TestServer::echo();
    let mut c = RawClient::open(server.addr());
    c.send(&masked(op::CLOSE, b"")).unwrap();
    let f = c.read_frame().expect("close reply");
    assert_eq!(f.opcode, op::CLOSE, "{f:?}");
    // No code to echo: an empty body, or 1000 at most.
    assert!(
        f.payload.is_empty() || f.close_code() == Some(1000),
        "reply to an empty close: {f:?}"
    );
    c.expect_eof().unwrap();
    ws::assert_server_healthy(server.addr());
}

#[test]
fn messages_before_the_close_are_answered_and_nothing_after_it() {
    let server = TestServer::echo();
    let mut c = RawClient::open(server.addr());
    let mut bytes = Vec::new();
    for i in 0..50 {
        bytes.extend(masked(op::TEXT, format!("m{i}").as_bytes()));
    }
    bytes.extend(masked(op::CLOSE, &close_body(1000, b"")));
    // After a close the peer may not send data (§5.5.1); whatever follows is ignored.
    bytes.extend(masked(op::TEXT, b"after close"));
    bytes.extend(masked(op::PING, b"after close"));
    c.send(&bytes).unwrap();
    for i in 0..50 {
        c.expect_frame(op::TEXT, format!("m{i}").as_bytes());
    }
    c.expect_close_then_eof(1000).unwrap();
}

/// A peer that sends a message, its close and its FIN in one go, and only then starts reading
/// through a small receive buffer: the echo the server cannot write at once still arrives in
/// full, then the close reply, then EOF (the queue drains on writability after the peer's EOF
/// was already read).
#[test]
fn echo_and_close_reply_drain_to_a_peer_that_already_sent_its_fin() {
    let server = TestServer::echo();
    let mut c = RawClient::open_with_rcvbuf(server.addr(), 4096);
    let body: Vec<u8> = (0..512 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    c.send(&masked(op::TEXT, &body)).unwrap();
    c.send(&masked(op::CLOSE, &close_body(1000, b""))).unwrap();
    c.stream().shutdown(std::net::Shutdown::Write).unwrap();
    // Give the server time to read everything, EOF included, before anything is read here.
    std::thread::sleep(std::time::Duration::from_millis(200));
    c.expect_frame(op::TEXT, &body);
    c.expect_close_then_eof(1000).unwrap();
}

#[test]
fn tungstenite_close_completes_cleanly() {
    let server = TestServer::echo();
    let mut w = ws::connect(server.addr());
    ws::assert_echo(&mut w, Message::text("before close"));
    w.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: Cow::Borrowed("done"),
    }))
    .unwrap();
    let reply = match w.read() {
        Ok(Message::Close(f)) => f,
        Ok(other) => panic!("expected the close reply, got {}", ws::desc(&other)),
        Err(e) => panic!("expected the close reply, got {e}"),
    };
    assert_eq!(reply.map(|f| f.code), Some(CloseCode::Normal));
    assert!(
        ws::finish_close(&mut w),
        "tungstenite did not see a clean end"
    );
    // The server closed TCP first (§7.1.1); the client now closes its end.
    drop(w);
    assert!(
        server.wait_closed(CloseReason::Normal, 1),
        "{}",
        server.counters()
    );
    ws::assert_server_healthy(server.addr());
}

#[test]
fn peer_dropping_tcp_without_a_close_is_counted_and_harmless() {
    let server = TestServer::echo();
    let c = RawClient::open(server.addr());
    drop(c);
    assert!(
        server.wait_closed(CloseReason::PeerGone, 1),
        "{}",
        server.counters()
    );
    assert!(crate::util::wait_until(crate::util::PATIENCE, || server
        .counters()
        .open
        == 0));
    ws::assert_server_healthy(server.addr());
}
