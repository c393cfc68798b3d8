//! The admin API's HTTP server over real loopback sockets, with a fake engine, the requests
//! written as raw bytes so the wire itself is tested: framing, HEAD, keep-alive, body limits
//! (declared and chunked), `100 Continue`, malformed requests, clients that stall or stay
//! silent, the connection cap, stopping. Waits are bounded by [`PATIENCE`] only so a broken
//! server fails instead of hanging; no test asserts that anything was fast.

use super::*;
use crate::api::tests::{view_with, FakeEngine};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;

/// The most any read in these tests waits.
const PATIENCE: Duration = Duration::from_secs(20);

/// Short limits, so tests with silent clients finish quickly (but long enough that a client
/// on a loaded machine still gets its request out).
const SHORT: Timeouts = Timeouts {
    io: Duration::from_secs(1),
    request: Duration::from_secs(2),
};

/// Limits far beyond [`PATIENCE`]: a client the server waits for is still being waited for
/// when the test has given up, so anything the test sees meanwhile happened despite it.
const LONG: Timeouts = Timeouts {
    io: Duration::from_secs(3600),
    request: Duration::from_secs(3600),
};

/// The interim response that invites a body.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn serve(key: Option<&str>, timeouts: Timeouts) -> (ApiServer, Arc<FakeEngine>) {
    let engine = Arc::new(FakeEngine::default());
    let addr = "127.0.0.1:0".parse().unwrap();
    let api = start_with(addr, key.map(str::to_owned), view_with(&engine), timeouts).unwrap();
    (api, engine)
}

/// A response as read off the wire.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        let h = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name));
        h.map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// One response at the start of `raw` and its length in bytes, if all of it is there. A
/// response without `Content-Length` has no body; `head_only` for replies to HEAD.
fn parse(raw: &[u8], head_only: bool) -> Option<(Resp, usize)> {
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut hs);
    let n = match r.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(e) => panic!("bad response ({e}): {:?}", String::from_utf8_lossy(raw)),
    };
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
        .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
    let end = if head_only { n } else { n + length };
    let resp = Resp {
        status: r.code.unwrap(),
        headers,
        body: raw.get(n..end)?.to_vec(),
    };
    Some((resp, end))
}

/// A client connection that reads responses one at a time.
struct Client {
    s: TcpStream,
    /// Bytes read past the last response returned.
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.set_write_timeout(Some(PATIENCE)).unwrap();
        Client { s, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// The next response; panics if the connection ends first.
    fn response(&mut self, head_only: bool) -> Resp {
        loop {
            if let Some((resp, n)) = parse(&self.buf, head_only) {
                self.buf.drain(..n);
                return resp;
            }
            let mut chunk = [0; 16 * 1024];
            let n = self.s.read(&mut chunk).expect("a response in time");
            let so_far = String::from_utf8_lossy(&self.buf);
            assert!(n > 0, "closed before a whole response: {so_far:?}");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Everything after the responses read so far, up to the server's close.
    fn rest(&mut self) -> Vec<u8> {
        self.s
            .read_to_end(&mut self.buf)
            .expect("the server closes the connection");
        std::mem::take(&mut self.buf)
    }
}

/// Sends `bytes` on a new connection; its one response, checking that the server then closes
/// with nothing more (so `bytes` must ask to close, or be refused).
fn one(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let mut c = Client::connect(addr);
    c.send(bytes);
    let r = c.response(false);
    let rest = c.rest();
    assert!(rest.is_empty(), "bytes after the response: {rest:?}");
    r
}

fn healthz_ok(addr: SocketAddr) {
    let r = one(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((r.status, r.text()), (200, "ok\n"));
}

/// `body` as one chunked body in chunks of at most `size` bytes.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// `f` on another thread, which must finish within [`PATIENCE`].
fn finishes(f: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    finished.recv_timeout(PATIENCE).expect("finished in time");
}

#[test]
fn refuses_a_public_address_without_a_key_and_a_busy_one() {
    let e = start(
        "0.0.0.0:0".parse().unwrap(),
        None,
        view_with(&Arc::default()),
    )
    .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    let (api, _) = serve(None, Timeouts::default());
    let e = start(api.local_addr(), None, view_with(&Arc::default())).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
}

#[test]
fn starts_serves_and_stops() {
    let (api, _) = serve(None, Timeouts::default());
    let addr = api.local_addr();
    let r = one(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((r.status, r.text()), (200, "ok\n"));
    assert_eq!(r.header("Content-Length"), Some("3"));
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    assert!(r.header("Date").unwrap().ends_with(" GMT"), "{r:?}");
    // HEAD: the GET headers, no body.
    let mut c = Client::connect(addr);
    c.send(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let r = c.response(true);
    assert_eq!((r.status, r.header("Content-Length")), (200, Some("3")));
    assert!(c.rest().is_empty(), "HEAD has no body");
    // A route with headers of its own.
    let r = one(
        addr,
        b"DELETE /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET, HEAD")));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    api.stop();
    // `stop` joined the thread, which owned the listening socket.
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after stop"
    );
}

#[test]
fn keep_alive_answers_requests_in_turn_on_one_connection() {
    let (api, engine) = serve(None, Timeouts::default());
    let mut c = Client::connect(api.local_addr());
    c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response(false).text(), "ok\n");
    let body = br#"{"channel":"news","data":1}"#;
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.send(head.as_bytes());
    c.send(body);
    assert_eq!(c.response(false).status, 200);
    // Pipelined: both answered, in order, the second closing.
    c.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(c.response(false).status, 404);
    assert_eq!(c.response(false).text(), "ready\n");
    assert!(c.rest().is_empty());
    assert_eq!(engine.log(), [("news".to_owned(), "1".to_owned())]);
}

#[test]
fn a_declared_length_over_the_limit_is_413_unread() {
    let (api, engine) = serve(Some("k"), Timeouts::default());
    let addr = api.local_addr();
    for head in [
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
        // Before the key check, as before routing.
        "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n",
        "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\
         Expect: 100-continue\r\nContent-Length: 1048577\r\n\r\n",
    ] {
        // `one` also checks that no `100 Continue` came before, nor anything after.
        let r = one(addr, head.as_bytes());
        assert_eq!(r.status, 413, "{head}: {r:?}");
        assert_eq!(r.header("Connection"), Some("close"));
        assert!(r.text().contains("\"error\""));
    }
    // With some of the body already sent: refused all the same, the rest discarded.
    let mut req = b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\n".to_vec();
    req.extend(vec![b'x'; 64 * 1024]);
    assert_eq!(one(addr, &req).status, 413);
    healthz_ok(addr);
    assert!(engine.log().is_empty());
}

#[test]
fn chunked_bodies_are_read_up_to_the_limit() {
    let (api, engine) = serve(None, Timeouts::default());
    let addr = api.local_addr();
    let head = b"POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut req = head.to_vec();
    req.extend(chunked(br#"{"channel":"news","data":[1, 2]}"#, 7));
    let mut c = Client::connect(addr);
    c.send(&req);
    assert_eq!(c.response(false).status, 200);
    assert_eq!(engine.log(), [("news".to_owned(), "[1, 2]".to_owned())]);
    // Just over the limit: 413, found while reading, and the connection closed.
    let mut req = head.to_vec();
    req.extend(chunked(&vec![b' '; MAX_BODY + 1], 64 * 1024));
    let r = one(addr, &req);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.header("Connection"), Some("close"));
    // A malformed chunk: the body cannot be read.
    let mut req = head.to_vec();
    req.extend_from_slice(b"zz\r\nnot hex\r\n0\r\n\r\n");
    assert_eq!(one(addr, &req).status, 400);
    healthz_ok(addr);
    assert_eq!(engine.log().len(), 1);
}

#[test]
fn a_stalled_client_does_not_block_others() {
    let (api, engine) = serve(None, LONG);
    let addr = api.local_addr();
    let _silent = Client::connect(addr);
    let mut mid_head = Client::connect(addr);
    mid_head.send(b"GET /healthz HTTP/1.1\r\nHo");
    let body = br#"{"channel":"news","data":"late"}"#;
    let mut mid_body = Client::connect(addr);
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    mid_body.send(head.as_bytes());
    mid_body.send(&body[..5]);
    // Each of those is waited for far longer than this read would wait.
    healthz_ok(addr);
    // And each is still being served.
    mid_body.send(&body[5..]);
    assert_eq!(mid_body.response(false).status, 200);
    assert_eq!(engine.log().len(), 1);
    mid_head.send(b"st: x\r\n\r\n");
    assert_eq!(mid_head.response(false).text(), "ok\n");
}

#[test]
fn silent_and_slow_clients_are_dropped_after_their_timeouts() {
    let (api, _) = serve(None, SHORT);
    let addr = api.local_addr();
    // Connected, never a byte: closed, nothing to answer.
    let mut silent = Client::connect(addr);
    assert!(silent.rest().is_empty());
    // Part of a head, then silence: closed too.
    let mut slow = Client::connect(addr);
    slow.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
    assert!(slow.rest().is_empty());
    // A body that never comes: the route waits for it, gives up, and says so.
    let mut stalled = Client::connect(addr);
    stalled.send(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{\"ch");
    let r = stalled.response(false);
    assert_eq!((r.status, r.header("Connection")), (408, Some("close")));
    assert!(stalled.rest().is_empty());
    // Kept alive, then idle: closed after the same wait for a head.
    let mut idle = Client::connect(addr);
    idle.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(idle.response(false).status, 200);
    assert!(idle.rest().is_empty());
    healthz_ok(addr);
}

#[test]
fn malformed_requests_are_400_and_the_server_keeps_serving() {
    let (api, _) = serve(Some("k"), Timeouts::default());
    let addr = api.local_addr();
    let garbage: &[&[u8]] = &[
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xff\xfe\r\n\r\n",
        b"garbage\r\n\r\n",
        b"\0\0\0\0\0\0\0\0\0\0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ];
    for bytes in garbage {
        let r = one(addr, bytes);
        assert_eq!(r.status, 400, "{:?}: {r:?}", String::from_utf8_lossy(bytes));
    }
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(MAX_HEAD)
    );
    assert_eq!(one(addr, big.as_bytes()).status, 431);
    let long_path = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "p".repeat(2 * MAX_HEAD)
    );
    assert_eq!(one(addr, long_path.as_bytes()).status, 431);
    healthz_ok(addr);
}

#[test]
fn continue_is_sent_only_when_the_body_is_wanted() {
    let (api, engine) = serve(Some("k"), Timeouts::default());
    let addr = api.local_addr();
    let body = br#"{"channel":"news","data":"hi"}"#;
    let head = |auth: &str| {
        format!(
            "POST /publish HTTP/1.1\r\nHost: x\r\n{auth}Expect: 100-continue\r\n\
             Connection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    };
    // Authorized: 100 first, then the body is read and published.
    let mut c = Client::connect(addr);
    c.send(head("Authorization: Bearer k\r\n").as_bytes());
    let mut interim = vec![0; CONTINUE.len()];
    c.s.read_exact(&mut interim).unwrap();
    assert_eq!(interim, CONTINUE);
    c.send(body);
    assert_eq!(c.response(false).status, 200);
    assert_eq!(engine.log().len(), 1);
    // Refused before the body: no invitation, just the refusal.
    let r = one(addr, head("").as_bytes());
    assert_eq!(r.status, 401, "{r:?}");
    // The body sent without waiting: no 100 needed (one may still come first).
    let mut req = head("Authorization: Bearer k\r\n").into_bytes();
    req.extend_from_slice(body);
    let mut c = Client::connect(addr);
    c.send(&req);
    let mut r = c.response(false);
    if r.status == 100 {
        r = c.response(false);
    }
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(engine.log().len(), 2);
}

#[test]
fn connections_over_the_cap_wait_for_a_free_slot() {
    let (api, _) = serve(None, LONG);
    let addr = api.local_addr();
    let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // Each answered once and kept alive, so each holds its slot.
    let mut held: Vec<Client> = (0..MAX_CONNECTIONS)
        .map(|_| {
            let mut c = Client::connect(addr);
            c.send(get);
            assert_eq!(c.response(false).status, 200);
            c
        })
        .collect();
    let mut waiting = Client::connect(addr);
    waiting.send(get);
    waiting
        .s
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0; 1];
    let early = waiting.s.read(&mut byte);
    assert!(early.is_err(), "answered over the cap: {early:?}");
    waiting.s.set_read_timeout(Some(PATIENCE)).unwrap();
    // One leaves: its slot goes to the one waiting.
    held.pop().unwrap().s.shutdown(Shutdown::Both).unwrap();
    assert_eq!(waiting.response(false).status, 200);
}

#[test]
fn stop_returns_with_clients_connected_and_closes_the_port() {
    let (api, _) = serve(None, LONG);
    let addr = api.local_addr();
    let mut silent = Client::connect(addr);
    let mut idle = Client::connect(addr);
    idle.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(idle.response(false).status, 200);
    let mut mid_head = Client::connect(addr);
    mid_head.send(b"GET /healthz HTTP/1.1\r\nHo");
    // Make sure the last connection has been accepted before stopping.
    healthz_ok(addr);
    finishes(move || api.stop());
    assert!(TcpStream::connect(addr).is_err(), "still listening");
    // Idle connections were closed, the one mid-request cut off after the grace.
    for c in [&mut silent, &mut idle, &mut mid_head] {
        assert!(c.rest().is_empty());
    }
}
