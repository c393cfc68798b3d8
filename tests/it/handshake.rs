//! The HTTP upgrade, over raw TCP: each way a request can be refused and the status it gets,
//! the variants that must still be accepted, requests arriving in pieces, `/healthz`,
//! subprotocol selection and the handshake timeout.

use std::time::Duration;

use starling::config::Config;
use starling::metrics::CloseReason;

use crate::util::raw::{
    self, header, http, masked, op, show, upgrade_request, RawClient, SAMPLE_ACCEPT, SAMPLE_KEY,
};
use crate::util::ws;
use crate::util::{config, TestServer, PATIENCE};

/// The header lines of a valid request, one per entry, so cases can drop or replace one.
const HOST: &str = "Host: 127.0.0.1";
const UPGRADE: &str = "Upgrade: websocket";
const CONNECTION: &str = "Connection: Upgrade";
const VERSION: &str = "Sec-WebSocket-Version: 13";

fn key() -> String {
    format!("Sec-WebSocket-Key: {SAMPLE_KEY}")
}

/// A request with this request line and these header lines.
fn request(line: &str, headers: &[&str]) -> Vec<u8> {
    let mut s = format!("{line}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// A GET / HTTP/1.1 upgrade with the valid header set, `replace` swapping any line that starts
/// with the same name (case-insensitive) and `drop` removing lines by name.
fn upgrade_with(replace: &[&str], drop: &[&str]) -> Vec<u8> {
    let key = key();
    let name = |l: &str| l.split(':').next().unwrap_or("").to_ascii_lowercase();
    let mut lines: Vec<String> = [HOST, UPGRADE, CONNECTION, key.as_str(), VERSION]
        .iter()
        .filter(|l| !drop.iter().any(|d| d.eq_ignore_ascii_case(&name(l))))
        .map(|l| {
            replace
                .iter()
                .find(|r| name(r) == name(l))
                .map_or(l.to_string(), |r| r.to_string())
        })
        .collect();
    for r in replace {
        if !lines.iter().any(|l| name(l) == name(r)) {
            lines.push(r.to_string());
        }
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    request("GET / HTTP/1.1", &refs)
}

#[test]
fn each_bad_request_gets_its_status_and_the_connection_closes() {
    let server = TestServer::echo();
    let big = format!("X-Padding: {}", "a".repeat(9 * 1024));
    let many: Vec<String> = (0..70).map(|i| format!("X-H{i}: v")).collect();
    let mut many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
    many_refs.extend([HOST, UPGRADE, CONNECTION, VERSION]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("no Upgrade header", upgrade_with(&[], &["upgrade"]), 426),
        (
            "Upgrade to something else",
            upgrade_with(&["Upgrade: h2c"], &[]),
            426,
        ),
        (
            "no Connection header",
            upgrade_with(&[], &["connection"]),
            400,
        ),
        (
            "Connection without the upgrade token",
            upgrade_with(&["Connection: keep-alive"], &[]),
            400,
        ),
        (
            "POST",
            {
                let mut r = upgrade_with(&[], &[]);
                r.splice(..3, b"POST".iter().copied());
                r
            },
            405,
        ),
        (
            "lowercase method",
            {
                let mut r = upgrade_with(&[], &[]);
                r.splice(..3, b"get".iter().copied());
                r
            },
            405,
        ),
        (
            "HTTP/1.0 upgrade",
            {
                let r = String::from_utf8(upgrade_with(&[], &[])).unwrap();
                r.replacen("HTTP/1.1", "HTTP/1.0", 1).into_bytes()
            },
            400,
        ),
        ("no Host", upgrade_with(&[], &["host"]), 400),
        (
            "two Host headers",
            request(
                "GET / HTTP/1.1",
                &[HOST, HOST, UPGRADE, CONNECTION, &key(), VERSION],
            ),
            400,
        ),
        ("no key", upgrade_with(&[], &["sec-websocket-key"]), 400),
        (
            "key of 15 bytes",
            upgrade_with(&["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA"], &[]),
            400,
        ),
        (
            "key of 17 bytes",
            upgrade_with(&["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA="], &[]),
            400,
        ),
        (
            "key not base64",
            upgrade_with(&["Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!=="], &[]),
            400,
        ),
        (
            "two keys",
            request(
                "GET / HTTP/1.1",
                &[HOST, UPGRADE, CONNECTION, &key(), &key(), VERSION],
            ),
            400,
        ),
        (
            "version 8",
            upgrade_with(&["Sec-WebSocket-Version: 8"], &[]),
            426,
        ),
        (
            "no version",
            upgrade_with(&[], &["sec-websocket-version"]),
            426,
        ),
        ("plain GET /", request("GET / HTTP/1.1", &[HOST]), 426),
        (
            "body announced",
            upgrade_with(&["Content-Length: 5"], &[]),
            400,
        ),
        (
            "chunked body announced",
            upgrade_with(&["Transfer-Encoding: chunked"], &[]),
            400,
        ),
        (
            "header block over 8 KiB",
            upgrade_with(&[big.as_str()], &[]),
            431,
        ),
        (
            "70 header fields",
            request("GET / HTTP/1.1", &many_refs),
            431,
        ),
        (
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
        ),
        ("not HTTP", b"hello there\r\n\r\n".to_vec(), 400),
        (
            "bad version token",
            b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(),
            400,
        ),
    ];
    let mut failures = Vec::new();
    for (name, req, want) in &cases {
        let (status, head, body, mut c) = http(server.addr(), req);
        let mut problems = Vec::new();
        if status != *want {
            problems.push(format!("status {status}, want {want}"));
        }
        if !head.starts_with("HTTP/1.1 ") {
            problems.push("status line not HTTP/1.1".into());
        }
        if want == &405 && header(&head, "allow").as_deref() != Some("GET") {
            problems.push("405 without Allow: GET".into());
        }
        if want == &426
            && name.contains("version")
            && header(&head, "sec-websocket-version").as_deref() != Some("13")
        {
            problems.push("426 without Sec-WebSocket-Version: 13".into());
        }
        if header(&head, "sec-websocket-accept").is_some() {
            problems.push("an error response carries Sec-WebSocket-Accept".into());
        }
        if let Err(e) = c.expect_eof() {
            problems.push(format!("after the response: {e}"));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{name}: {} (response {head:?} body {:?}; request {:?})",
                problems.join("; "),
                String::from_utf8_lossy(&body),
                show(req)
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(
        server.wait_closed(CloseReason::BadHandshake, cases.len() as u64),
        "every refusal counted as bad_handshake: {}",
        server.counters()
    );
    ws::assert_server_healthy(server.addr());
}

#[test]
fn header_name_and_token_case_and_lists_are_accepted() {
    let server = TestServer::echo();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("as the RFC writes it", upgrade_with(&[], &[])),
        (
            "lowercase names and values",
            request(
                "GET / HTTP/1.1",
                &[
                    "host: 127.0.0.1",
                    "upgrade: websocket",
                    "connection: upgrade",
                    &format!("sec-websocket-key: {SAMPLE_KEY}"),
                    "sec-websocket-version: 13",
                ],
            ),
        ),
        (
            "weird case",
            upgrade_with(&["UPGRADE: WebSocket", "CoNnEcTiOn: uPgRaDe"], &[]),
        ),
        (
            "Connection: keep-alive, Upgrade",
            upgrade_with(&["Connection: keep-alive, Upgrade"], &[]),
        ),
        (
            "Connection: Upgrade,keep-alive",
            upgrade_with(&["Connection: Upgrade,keep-alive"], &[]),
        ),
        (
            "whitespace around values",
            upgrade_with(
                &[
                    "Upgrade:   websocket  ",
                    "Sec-WebSocket-Version:  13 ",
                    &format!("Sec-WebSocket-Key:  {SAMPLE_KEY} "),
                ],
                &[],
            ),
        ),
        (
            "with Origin and unknown headers",
            upgrade_with(&["Origin: http://example.com", "X-Anything: 1"], &[]),
        ),
        (
            "Content-Length: 0",
            upgrade_with(&["Content-Length: 0"], &[]),
        ),
        (
            "path with query",
            String::from_utf8(upgrade_with(&[], &[]))
                .unwrap()
                .replacen("GET / ", "GET /chat?room=1&x=%20 ", 1)
                .into_bytes(),
        ),
    ];
    let mut failures = Vec::new();
    for (name, req) in &cases {
        let (status, head, _body, mut c) = http(server.addr(), req);
        if status != 101 {
            failures.push(format!("{name}: status {status}: {head:?}"));
            continue;
        }
        if header(&head, "sec-websocket-accept").as_deref() != Some(SAMPLE_ACCEPT)
            || !header(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
            || !header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade"))
        {
            failures.push(format!("{name}: bad 101 head {head:?}"));
            continue;
        }
        c.send(&masked(op::TEXT, name.as_bytes())).unwrap();
        c.expect_frame(op::TEXT, name.as_bytes());
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn accept_key_matches_the_rfc_example() {
    // RFC 6455 §1.3: key "dGhlIHNhbXBsZSBub25jZQ==" gives "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".
    let server = TestServer::echo();
    let (status, head, _, _) = http(server.addr(), upgrade_request("/", "").as_bytes());
    assert_eq!(status, 101, "{head}");
    assert_eq!(
        header(&head, "sec-websocket-accept").as_deref(),
        Some(SAMPLE_ACCEPT)
    );
}

/// A client may send its request and shut its sending side at once (the request and the FIN
/// in one segment): the error status it is owed still reaches it before the connection ends.
#[test]
fn bad_request_followed_by_fin_still_gets_its_status() {
    let server = TestServer::echo();
    let cases: [(&str, Vec<u8>, u16); 3] = [
        ("no key", upgrade_with(&[], &["sec-websocket-key"]), 400),
        (
            "version 8",
            upgrade_with(&["Sec-WebSocket-Version: 8"], &[]),
            426,
        ),
        ("not HTTP", b"hello there\r\n\r\n".to_vec(), 400),
    ];
    for (name, req, want) in cases {
        let mut c = RawClient::tcp(server.addr());
        // Corked, so the request and the FIN leave together and the server reads both in
        // one readiness event.
        socket2::SockRef::from(c.stream()).set_cork(true).unwrap();
        c.send(&req).unwrap();
        c.stream().shutdown(std::net::Shutdown::Write).unwrap();
        let head = c
            .read_head()
            .unwrap_or_else(|e| panic!("{name}: no response: {e:?}"));
        assert_eq!(raw::status_of(&head), want, "{name}: {head:?}");
        let body_len = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
        c.read_bytes(body_len)
            .unwrap_or_else(|e| panic!("{name}: body: {e:?}"));
        c.expect_eof().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn request_written_one_byte_at_a_time_succeeds() {
    let server = TestServer::echo();
    let mut c = RawClient::tcp(server.addr());
    for b in upgrade_request("/", "").as_bytes() {
        c.send(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_micros(300));
    }
    let head = c.read_head().expect("response");
    assert_eq!(raw::status_of(&head), 101, "{head}");
    c.send(&masked(op::TEXT, b"after a slow handshake"))
        .unwrap();
    c.expect_frame(op::TEXT, b"after a slow handshake");
}

#[test]
fn frames_sent_right_behind_the_request_are_not_lost() {
    let server = TestServer::echo();
    for split_request in [false, true] {
        let mut c = RawClient::tcp(server.addr());
        let mut bytes = upgrade_request("/", "").into_bytes();
        if split_request {
            // The request in two reads, the second carrying the frames after it.
            c.send(&bytes[..20]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            bytes.drain(..20);
        }
        bytes.extend(masked(op::TEXT, b"first"));
        bytes.extend(masked(op::BINARY, b"second"));
        c.send(&bytes).unwrap();
        let head = c.read_head().expect("response");
        assert_eq!(raw::status_of(&head), 101, "{head}");
        c.expect_frame(op::TEXT, b"first");
        c.expect_frame(op::BINARY, b"second");
    }
}

#[test]
fn healthz_answers_200_and_closes() {
    let server = TestServer::echo();
    for req in [
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /healthz?probe=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /healthz HTTP/1.0\r\n\r\n",
    ] {
        let (status, head, body, mut c) = http(server.addr(), req.as_bytes());
        assert_eq!(status, 200, "{req:?} -> {head}");
        assert_eq!(body, b"ok\n", "{req:?}");
        c.expect_eof().unwrap_or_else(|e| panic!("{req:?}: {e}"));
    }
}

/// Upgrades with these extra header lines and returns the selected subprotocol, if any.
fn selected(server: &TestServer, extra: &str) -> Option<String> {
    let (status, head, _, _) = http(server.addr(), upgrade_request("/", extra).as_bytes());
    assert_eq!(status, 101, "{extra:?} -> {head}");
    header(&head, "sec-websocket-protocol")
}

#[test]
fn subprotocol_is_the_first_offered_one_the_server_speaks() {
    let server = TestServer::start(Config {
        protocols: vec!["chat.v2".into(), "chat".into()],
        ..config()
    });
    let p = |s: &str| Some(s.to_string());
    assert_eq!(selected(&server, ""), None, "nothing offered");
    assert_eq!(
        selected(&server, "Sec-WebSocket-Protocol: other\r\n"),
        None,
        "nothing in common: no header (§4.2.2 lets the server select none)"
    );
    assert_eq!(
        selected(&server, "Sec-WebSocket-Protocol: chat\r\n"),
        p("chat")
    );
    assert_eq!(
        selected(&server, "Sec-WebSocket-Protocol: chat, chat.v2\r\n"),
        p("chat"),
        "the client lists in its order of preference"
    );
    assert_eq!(
        selected(&server, "Sec-WebSocket-Protocol: superchat, chat.v2\r\n"),
        p("chat.v2")
    );
    assert_eq!(
        selected(
            &server,
            "Sec-WebSocket-Protocol: x\r\nSec-WebSocket-Protocol: chat.v2\r\n"
        ),
        p("chat.v2"),
        "the list may span header lines"
    );
    // tungstenite checks the selected protocol is one it offered.
    let (mut w, resp) =
        ws::try_connect_with(server.addr(), &[("Sec-WebSocket-Protocol", "chat.v2")]).unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("chat.v2")
    );
    ws::assert_echo(&mut w, tungstenite::Message::text("with a subprotocol"));
}

#[test]
fn server_without_protocols_selects_none() {
    let server = TestServer::echo();
    assert_eq!(selected(&server, "Sec-WebSocket-Protocol: chat\r\n"), None);
}

#[test]
fn handshake_that_never_completes_times_out_with_408() {
    let server = TestServer::start(Config {
        handshake_timeout: Duration::from_millis(300),
        ..config()
    });
    // One client sends half a request, one sends nothing at all.
    let mut partial = RawClient::tcp(server.addr());
    partial
        .send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        .unwrap();
    let silent = RawClient::tcp(server.addr());
    for (name, mut c) in [("partial", partial), ("silent", silent)] {
        let head = c
            .read_head()
            .unwrap_or_else(|e| panic!("{name}: no response within {PATIENCE:?}: {e:?}"));
        assert_eq!(raw::status_of(&head), 408, "{name}: {head}");
        if let Some(n) = header(&head, "content-length") {
            c.read_bytes(n.parse().unwrap()).unwrap();
        }
        c.expect_eof().unwrap_or_else(|e| panic!("{name}: {e}"));
        // Dropping our end lets the server finish at once instead of lingering.
    }
    assert!(
        server.wait_closed(CloseReason::HandshakeTimeout, 2),
        "both counted as handshake_timeout: {}",
        server.counters()
    );
    ws::assert_server_healthy(server.addr());
}

/// A TcpExt counter from /proc/net/netstat (its header line names the fields, the next line
/// has the values).
fn tcp_ext(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").expect("/proc/net/netstat");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (names, values) = (lines[0].split_whitespace(), lines[1].split_whitespace());
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExt {name}"))
}

/// Turns on the client and server bits of net.ipv4.tcp_fastopen for the test and puts the
/// old value back afterwards. Only listeners that ask for Fast Open (and clients that ask
/// for it) use the server and client bits, so other tests are not affected.
struct FastOpenSysctl(String);

impl FastOpenSysctl {
    const PATH: &'static str = "/proc/sys/net/ipv4/tcp_fastopen";

    fn enable() -> FastOpenSysctl {
        let old = std::fs::read_to_string(Self::PATH).expect("read tcp_fastopen");
        let bits: u32 = old.trim().parse().expect("tcp_fastopen is a number");
        std::fs::write(Self::PATH, (bits | 3).to_string())
            .expect("set net.ipv4.tcp_fastopen (the tests run as root)");
        FastOpenSysctl(old.trim().to_string())
    }
}

impl Drop for FastOpenSysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// `tcp_fastopen` on the listener: a client that puts its upgrade request in the SYN
/// (TCP_FASTOPEN_CONNECT: connect() returns at once, the first write sends SYN + data) gets
/// its 101 and its echo, and the kernel counts those connections as Fast Open (all but the
/// first, which fetches the cookie).
#[test]
fn tcp_fast_open_carries_the_upgrade_request_in_the_syn() {
    use std::os::fd::AsRawFd;
    let _sysctl = FastOpenSysctl::enable();
    let server = TestServer::start(Config {
        tcp_fastopen: 64,
        ..config()
    });
    let before = tcp_ext("TCPFastOpenPassive");
    const N: u64 = 8;
    for i in 0..N {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        starling::sys::set_int_sockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN_CONNECT,
            1,
        )
        .expect("TCP_FASTOPEN_CONNECT");
        s.connect(&server.addr().into()).expect("connect");
        let mut c = RawClient::from_stream(s.into());
        c.send(upgrade_request("/", "").as_bytes()).unwrap();
        let head = c.read_head().expect("response");
        assert_eq!(raw::status_of(&head), 101, "connection {i}: {head}");
        c.send(&masked(op::TEXT, b"fast open")).unwrap();
        c.expect_frame(op::TEXT, b"fast open");
    }
    let used = tcp_ext("TCPFastOpenPassive") - before;
    assert!(used >= N - 1, "{used} of {N} connections used Fast Open");
}
