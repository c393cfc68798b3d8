//! The independent client: tungstenite over a blocking `TcpStream` with timeouts, so a server
//! that stops answering fails the test instead of hanging it.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Response;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

use super::PATIENCE;

/// A connected tungstenite client.
pub type Ws = WebSocket<TcpStream>;

/// Connects and upgrades with extra request headers (name, value); the error is text.
pub fn try_connect_with(
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<(Ws, Response), String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tungstenite::client(req, stream).map_err(|e| format!("handshake: {e}"))
}

/// Connects and upgrades; panics with the reason on failure.
pub fn connect(addr: SocketAddr) -> Ws {
    try_connect_with(addr, &[])
        .unwrap_or_else(|e| panic!("websocket connect to {addr}: {e}"))
        .0
}

/// Reads the next data message, answering pings on the way (tungstenite queues the pong and
/// flushes it on the next call). Panics on close or error.
pub fn next_data(ws: &mut Ws) -> Message {
    loop {
        match ws.read() {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => return m,
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("expected a data message, got {other:?}"),
            Err(e) => panic!("expected a data message, got error {e}"),
        }
    }
}

/// Sends `msg` and panics unless the next data message is the same.
pub fn assert_echo(ws: &mut Ws, msg: Message) {
    ws.send(msg.clone()).expect("send");
    let got = next_data(ws);
    assert!(
        got == msg,
        "echo differs: sent {}, got {}",
        desc(&msg),
        desc(&got)
    );
}

/// A fresh client on `addr` gets its message echoed: the server is still healthy.
pub fn assert_server_healthy(addr: SocketAddr) {
    let mut ws = connect(addr);
    assert_echo(&mut ws, Message::text("still here"));
    let _ = ws.close(None);
}

/// Reads until the server ends the connection after a close handshake we started or answered.
/// Returns true if the connection ended cleanly (tungstenite's `ConnectionClosed`).
pub fn finish_close(ws: &mut Ws) -> bool {
    for _ in 0..10_000 {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => return true,
            Err(_) => return false,
        }
    }
    false
}

/// Short description of a message for assertion output.
pub fn desc(m: &Message) -> String {
    match m {
        Message::Text(t) => format!("text of {} bytes", t.len()),
        Message::Binary(b) => format!("binary of {} bytes", b.len()),
        other => format!("{other:?}"),
    }
}

/// Sets a short read timeout for polling loops (restored with [`PATIENCE`]).
pub fn set_read_timeout(ws: &Ws, t: Duration) {
    ws.get_ref().set_read_timeout(Some(t)).unwrap();
}

/// Sends `v` as one JSON text message.
pub fn send_json(ws: &mut Ws, v: serde_json::Value) {
    ws.send(Message::text(v.to_string())).expect("send");
}

/// The next data message, which must be JSON text.
pub fn recv_json(ws: &mut Ws) -> serde_json::Value {
    match next_data(ws) {
        Message::Text(t) => serde_json::from_str(&t).expect("JSON from the server"),
        other => panic!("expected text, got {other:?}"),
    }
}
