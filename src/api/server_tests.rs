//! The admin API's HTTP server over real loopback sockets, with a fake engine: framing,
//! refusals, timeouts against silent clients, pipelined bytes, `100 Continue`, stopping.
//! Waits are bounded by [`PATIENCE`] only so a broken server fails instead of hanging; no test
//! asserts that anything was fast.

use super::*;
use crate::api::tests::{view_with, FakeEngine};
use std::io::{Read, Write};

/// The most any read in these tests waits.
const PATIENCE: Duration = Duration::from_secs(20);

/// Short limits, so tests with silent clients finish quickly (but long enough that a client
/// on a loaded machine still gets its request out).
const SHORT: Timeouts = Timeouts {
    io: Duration::from_secs(1),
    request: Duration::from_secs(3),
};

fn serve(key: Option<&str>, timeouts: Timeouts) -> (ApiServer, Arc<FakeEngine>) {
    let engine = Arc::new(FakeEngine::default());
    let addr = "127.0.0.1:0".parse().unwrap();
    let api = start_with(addr, key.map(str::to_owned), view_with(&engine), timeouts).unwrap();
    (api, engine)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// A response as read off the wire.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Bytes after the body (there must be none).
    after: Vec<u8>,
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

/// Parses one response from `raw` (all of it up to EOF); `head_only` for replies to HEAD.
fn parse(raw: &[u8], head_only: bool) -> Resp {
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut hs);
    let n = match r.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("bad response {other:?}: {:?}", String::from_utf8_lossy(raw)),
    };
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into()))
        .collect();
    let status = r.code.unwrap();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
        .map(|(_, v)| v.parse::<usize>().unwrap())
        .expect("every response has a Content-Length");
    let end = if head_only { n } else { n + length };
    assert!(
        raw.len() >= end,
        "short body: {:?}",
        String::from_utf8_lossy(raw)
    );
    Resp {
        status,
        headers,
        body: raw[n..end].to_vec(),
        after: raw[end..].to_vec(),
    }
}

/// Sends `bytes` on a new connection and reads everything until the server closes.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(bytes).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .expect("the server closes the connection");
    raw
}

/// [`exchange`], parsed, checking that exactly one response came back.
fn one(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let r = parse(&exchange(addr, bytes), false);
    assert!(r.after.is_empty(), "bytes after the response: {r:?}");
    r
}

fn healthz_ok(addr: SocketAddr) {
    let r = one(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.text()), (200, "ok\n"));
}

#[test]
fn refuses_a_public_address_without_a_key() {
    let e = start(
        "0.0.0.0:0".parse().unwrap(),
        None,
        view_with(&Arc::default()),
    )
    .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
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
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    assert!(r.header("Date").unwrap().ends_with(" GMT"), "{r:?}");
    // HEAD: the GET headers, no body.
    let raw = exchange(addr, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = parse(&raw, true);
    assert_eq!((r.status, r.header("Content-Length")), (200, Some("3")));
    assert!(r.after.is_empty(), "{raw:?}");
    api.stop();
    // `stop` joined the thread, which owned the listening socket.
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after stop"
    );
}

#[test]
fn a_huge_content_length_is_413_unread_and_the_server_keeps_serving() {
    let (api, engine) = serve(Some("k"), Timeouts::default());
    let addr = api.local_addr();
    for head in [
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
        "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n",
        "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\
         Expect: 100-continue\r\nContent-Length: 1048577\r\n\r\n",
    ] {
        let raw = exchange(addr, head.as_bytes());
        assert!(raw.starts_with(b"HTTP/1.1 413 "), "{head}: {raw:?}");
        let r = parse(&raw, false);
        assert!(r.after.is_empty(), "no 100 Continue, one response: {raw:?}");
        assert!(r.text().contains("\"error\""));
    }
    // With some of the body already sent: refused all the same, the rest drained.
    let mut req = b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\n".to_vec();
    req.extend(vec![b'x'; 64 * 1024]);
    assert_eq!(one(addr, &req).status, 413);
    healthz_ok(addr);
    assert!(engine.log().is_empty());
}

#[test]
fn a_silent_client_does_not_hold_the_thread() {
    let (api, _) = serve(None, SHORT);
    let addr = api.local_addr();
    let mut silent = connect(addr);
    // Served although `silent` is still open: it was dropped after the io timeout.
    healthz_ok(addr);
    let mut raw = Vec::new();
    silent.read_to_end(&mut raw).unwrap();
    assert!(raw.is_empty(), "nothing to answer: {raw:?}");
    // Part of a head, then silence: 408.
    let mut slow = connect(addr);
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut raw = Vec::new();
    slow.read_to_end(&mut raw).unwrap();
    assert_eq!(parse(&raw, false).status, 408, "{raw:?}");
    // A body that never comes: the route reads it, gives up, and says so.
    let mut stalled = connect(addr);
    stalled
        .write_all(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{\"ch")
        .unwrap();
    let mut raw = Vec::new();
    stalled.read_to_end(&mut raw).unwrap();
    assert_eq!(parse(&raw, false).status, 400, "{raw:?}");
    healthz_ok(addr);
    // Stopping while a client is connected and silent: its connection ends within the
    // timeouts, then the thread sees the flag.
    let _idle = connect(addr);
    api.stop();
}

#[test]
fn garbage_is_400_and_the_server_keeps_serving() {
    let (api, _) = serve(None, Timeouts::default());
    let addr = api.local_addr();
    let garbage: &[&[u8]] = &[
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xff\xfe",
        b"garbage\r\n\r\n",
        b"\0\0\0\0\0\0\0\0\0\0",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for bytes in garbage {
        let r = one(addr, bytes);
        assert_eq!(r.status, 400, "{:?}: {r:?}", String::from_utf8_lossy(bytes));
        assert_eq!(r.header("Content-Type"), Some("application/json"));
    }
    let chunked =
        b"POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(one(addr, chunked).status, 501);
    // A head cut short by the client's half-close.
    let mut s = connect(addr);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    assert_eq!(parse(&raw, false).status, 400);
    healthz_ok(addr);
}

#[test]
fn oversized_heads_are_431() {
    let (api, _) = serve(None, Timeouts::default());
    let addr = api.local_addr();
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
    let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
    let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_eq!(one(addr, req.as_bytes()).status, 431);
    // Blank lines before the request line count towards the head too.
    assert_eq!(one(addr, &[b'\n'; 2 * MAX_HEAD]).status, 431);
    healthz_ok(addr);
}

#[test]
fn bytes_after_the_request_are_ignored() {
    let (api, engine) = serve(None, Timeouts::default());
    let addr = api.local_addr();
    // Two pipelined requests: one answer, to the first.
    let two = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(one(addr, two).text(), "ok\n");
    // A body exactly as long as declared, whatever follows it.
    let body = br#"{"channel":"news","data":[1, 2]}"#;
    let mut req = format!(
        "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req.extend_from_slice(b"GARBAGE\0\xff and POST /publish HTTP/1.1\r\n\r\n");
    let r = one(addr, &req);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(engine.log(), [("news".to_owned(), "[1, 2]".to_owned())]);
    // No body where none is declared: extra bytes are not one.
    let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n{\"channel\":\"x\",\"data\":1}";
    assert_eq!(one(addr, get).status, 200);
    healthz_ok(addr);
}

/// Reads exactly `n` bytes.
fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn continue_is_sent_only_when_the_body_is_wanted() {
    let (api, engine) = serve(Some("k"), Timeouts::default());
    let addr = api.local_addr();
    let body = br#"{"channel":"news","data":"hi"}"#;
    let head = |auth: &str| {
        format!(
            "POST /publish HTTP/1.1\r\nHost: x\r\n{auth}Expect: 100-continue\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
    };
    // Authorized: 100 first, then the body is read and published.
    let mut s = connect(addr);
    s.write_all(head("Authorization: Bearer k\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_n(&mut s, http::CONTINUE.len()), http::CONTINUE);
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    assert_eq!(parse(&raw, false).status, 200, "{raw:?}");
    assert_eq!(engine.log().len(), 1);
    // Refused before the body: no invitation, just the refusal.
    let r = one(addr, head("").as_bytes());
    assert_eq!(r.status, 401, "{r:?}");
    // The body sent without waiting: no 100 needed.
    let mut req = head("Authorization: Bearer k\r\n").into_bytes();
    req.extend_from_slice(body);
    let raw = exchange(addr, &req);
    assert!(raw.starts_with(b"HTTP/1.1 200 "), "{raw:?}");
    assert_eq!(engine.log().len(), 2);
}
