//! Unit tests for the handshake: the RFC example, every split point, each rejection with its
//! status, both roles against each other, tungstenite as a second opinion, and properties.

use super::*;
use proptest::prelude::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &[u8; 28] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const BASE: [&str; 5] = [
    "Host: server.example.com",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
];

/// A request with the given first line and header lines, CRLF-terminated.
fn raw(first: &str, headers: &[&str]) -> Vec<u8> {
    let mut s = format!("{first}\r\n");
    headers.iter().for_each(|h| s.push_str(&format!("{h}\r\n")));
    s.push_str("\r\n");
    s.into_bytes()
}

/// The base upgrade with header lines whose name starts with `drop` removed, plus `add`.
fn upgrade_with(drop: &[&str], add: &[&str]) -> Vec<u8> {
    let mut hs: Vec<&str> = BASE
        .into_iter()
        .filter(|h| !drop.iter().any(|d| h.starts_with(d)))
        .collect();
    hs.extend_from_slice(add);
    raw("GET /chat HTTP/1.1", &hs)
}

fn protos() -> Vec<String> {
    vec!["chat".into(), "superchat".into()]
}

fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, HandshakeError> {
    let p = protos();
    parse_request(
        buf,
        &ServerLimits {
            max_header_bytes: 8192,
            protocols: &p,
        },
    )
}

fn upgrade(buf: &[u8]) -> Upgrade {
    match parse(buf) {
        Ok(Some((Request::Upgrade(up), n))) if n == buf.len() => up,
        other => panic!("expected an upgrade, got {other:?}"),
    }
}

fn reject(buf: &[u8]) -> HandshakeError {
    match parse(buf) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Parses `r` with httparse: (status, header lines, body).
fn http(r: &[u8]) -> (u16, Vec<String>, Vec<u8>) {
    let mut hs = [EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut hs);
    let Ok(Status::Complete(n)) = resp.parse(r) else {
        panic!("bad response {r:?}")
    };
    let lines = resp
        .headers
        .iter()
        .map(|h| format!("{}: {}", h.name, String::from_utf8_lossy(h.value)))
        .collect();
    (resp.code.unwrap_or(0), lines, r[n..].to_vec())
}

#[test]
fn rfc_6455_section_1_3_example() {
    assert_eq!(&accept_key(KEY.as_bytes()), ACCEPT);
    assert_eq!(&upgrade(&upgrade_with(&[], &[])).accept, ACCEPT);
}

#[test]
fn accept_key_matches_tungstenite() {
    for seed in 0..=255u8 {
        let key = client_key([seed.wrapping_mul(37); 16].map(|b| b ^ seed));
        let ours = accept_key(&key);
        assert_eq!(
            ours.as_slice(),
            tungstenite::handshake::derive_accept_key(&key).as_bytes()
        );
    }
}

#[test]
fn every_split_waits_then_gives_the_same_answer() {
    let cases = [
        upgrade_with(
            &[],
            &["Sec-WebSocket-Protocol: superchat", "Origin: http://a.b"],
        ),
        raw("GET /healthz HTTP/1.0", &[]),
        raw("POST /chat HTTP/1.1", &BASE),
        raw("GET /x HTTP/1.1", &["Host: a"]),
    ];
    for whole in cases {
        let mut stream = whole.clone();
        stream.extend_from_slice(b"\x81\x85frame");
        let expected = parse(&whole);
        assert!(!matches!(expected, Ok(None)));
        for cut in 0..whole.len() {
            assert_eq!(parse(&stream[..cut]), Ok(None), "cut at {cut}");
        }
        for cut in whole.len()..=stream.len() {
            assert_eq!(parse(&stream[..cut]), expected, "cut at {cut}");
        }
        if let Ok(Some((_, n))) = expected {
            assert_eq!(n, whole.len());
        }
    }
}

#[test]
fn rejections_carry_their_status() {
    use HandshakeError::*;
    let table: Vec<(Vec<u8>, HandshakeError, u16)> = vec![
        (raw("POST /chat HTTP/1.1", &BASE), MethodNotAllowed, 405),
        (raw("get /chat HTTP/1.1", &BASE), MethodNotAllowed, 405),
        (raw("GET /chat HTTP/1.0", &BASE), HttpVersion, 400),
        (raw("GET /chat HTTP/2.0", &BASE), Malformed, 400),
        (
            raw("GET /chat HTTP/1.1", &["Host: a", "Bad Name: x"]),
            Malformed,
            400,
        ),
        (
            b"GET /chat HTTP/1.1\n\rHost: a\r\n\r\n".to_vec(),
            Malformed,
            400,
        ),
        (upgrade_with(&["Host"], &[]), BadHost, 400),
        (upgrade_with(&[], &["Host: other"]), BadHost, 400),
        (
            upgrade_with(&["Connection"], &[]),
            MissingConnectionUpgrade,
            400,
        ),
        (upgrade_with(&["Sec-WebSocket-Key"], &[]), BadKey, 400),
        (
            upgrade_with(&[], &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]),
            BadKey,
            400,
        ),
        (
            upgrade_with(&["Sec-WebSocket-Key"], &["Sec-WebSocket-Key: AAAA"]),
            BadKey,
            400,
        ),
        // 15 and 17 bytes, and 16 bytes with non-canonical trailing bits.
        (
            upgrade_with(
                &["Sec-WebSocket-Key"],
                &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA"],
            ),
            BadKey,
            400,
        ),
        (
            upgrade_with(
                &["Sec-WebSocket-Key"],
                &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA="],
            ),
            BadKey,
            400,
        ),
        (
            upgrade_with(
                &["Sec-WebSocket-Key"],
                &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAB=="],
            ),
            BadKey,
            400,
        ),
        (
            upgrade_with(
                &["Sec-WebSocket-Key"],
                &["Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!=="],
            ),
            BadKey,
            400,
        ),
        (
            upgrade_with(&[], &["Origin: a", "Origin: b"]),
            BadOrigin,
            400,
        ),
        (
            upgrade_with(&[], &["Origin: \u{e9}"])
                .iter()
                .map(|&b| if b == 0xc3 { 0xff } else { b })
                .collect(),
            BadOrigin,
            400,
        ),
        (
            upgrade_with(&[], &["Content-Length: 5"]),
            UnexpectedBody,
            400,
        ),
        (
            upgrade_with(&[], &["Transfer-Encoding: chunked"]),
            UnexpectedBody,
            400,
        ),
        (
            upgrade_with(&["Sec-WebSocket-Version"], &[]),
            UnsupportedVersion,
            426,
        ),
        (
            upgrade_with(&["Sec-WebSocket-Version"], &["Sec-WebSocket-Version: 8"]),
            UnsupportedVersion,
            426,
        ),
        (
            upgrade_with(&[], &["Sec-WebSocket-Version: 13"]),
            UnsupportedVersion,
            426,
        ),
        (upgrade_with(&["Upgrade"], &[]), UpgradeRequired, 426),
        (
            upgrade_with(&["Upgrade"], &["Upgrade: websockets"]),
            UpgradeRequired,
            426,
        ),
        (
            raw("GET /chat HTTP/1.1", &["Host: a"]),
            UpgradeRequired,
            426,
        ),
        (
            raw("POST /healthz HTTP/1.1", &["Host: a"]),
            MethodNotAllowed,
            405,
        ),
    ];
    for (i, (req, err, status)) in table.into_iter().enumerate() {
        assert_eq!(reject(&req), err, "case {i}");
        assert_eq!(err.http_status(), status, "case {i}");
    }
}

#[test]
fn error_responses_are_complete_http() {
    use HandshakeError::*;
    for err in [
        Malformed,
        HeaderTooLarge,
        TooManyHeaders,
        MethodNotAllowed,
        HttpVersion,
    ]
    .into_iter()
    .chain([
        UpgradeRequired,
        MissingConnectionUpgrade,
        BadHost,
        UnsupportedVersion,
    ])
    .chain([BadKey, BadOrigin, UnexpectedBody])
    {
        let (status, lines, body) = http(&err.response());
        assert_eq!(status, err.http_status());
        assert_eq!(body, format!("{err}\n").into_bytes());
        assert!(lines.contains(&format!("Content-Length: {}", body.len())));
        assert!(lines.contains(&"Content-Type: text/plain".to_string()));
        let has = |l: &str| lines.iter().any(|x| x == l);
        assert_eq!(has("Allow: GET"), err == MethodNotAllowed);
        assert_eq!(has("Sec-WebSocket-Version: 13"), status == 426);
        assert_eq!(has("Upgrade: websocket"), status == 426);
        assert!(has("Connection: close") || has("Connection: Upgrade, close"));
    }
    for err in [Status(403), BadAccept, UnexpectedExtension] {
        assert!(err.response().is_empty());
    }
    assert_eq!(Status(403).http_status(), 403);
}

#[test]
fn header_limit_applies_to_partial_and_whole_blocks() {
    let p = protos();
    let whole = upgrade_with(&[], &[]);
    let exact = ServerLimits {
        max_header_bytes: whole.len(),
        protocols: &p,
    };
    assert!(matches!(
        parse_request(&whole, &exact),
        Ok(Some((Request::Upgrade(_), _)))
    ));
    let tight = ServerLimits {
        max_header_bytes: whole.len() - 1,
        protocols: &p,
    };
    assert_eq!(
        parse_request(&whole, &tight),
        Err(HandshakeError::HeaderTooLarge)
    );
    // Still incomplete when the buffer reaches the limit.
    let mut endless = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    endless.extend_from_slice(&[b'a'; 200]);
    let small = ServerLimits {
        max_header_bytes: 100,
        protocols: &p,
    };
    assert_eq!(parse_request(&endless[..99], &small), Ok(None));
    assert_eq!(
        parse_request(&endless[..100], &small),
        Err(HandshakeError::HeaderTooLarge)
    );
    assert_eq!(HandshakeError::HeaderTooLarge.http_status(), 431);
}

#[test]
fn too_many_headers_is_431() {
    let fill: Vec<String> = (0..MAX_HEADERS - BASE.len())
        .map(|i| format!("X-{i}: y"))
        .collect();
    let fill: Vec<&str> = fill.iter().map(String::as_str).collect();
    upgrade(&upgrade_with(&[], &fill));
    let over = upgrade_with(&[], &[fill.as_slice(), &["X-last: y"]].concat());
    assert_eq!(reject(&over), HandshakeError::TooManyHeaders);
    assert_eq!(HandshakeError::TooManyHeaders.http_status(), 431);
}

#[test]
fn connection_and_upgrade_are_token_lists() {
    for c in [
        "Upgrade",
        "upgrade",
        "keep-alive, Upgrade",
        "keep-alive,UPGRADE ",
        "x,,upgrade",
    ] {
        upgrade(&upgrade_with(
            &["Connection"],
            &[&format!("Connection: {c}")],
        ));
    }
    upgrade(&upgrade_with(
        &["Connection"],
        &["Connection: keep-alive", "Connection: Upgrade"],
    ));
    for c in ["keep-alive", "upgraded", "Upgrade-Insecure-Requests", ""] {
        let req = upgrade_with(&["Connection"], &[&format!("Connection: {c}")]);
        assert_eq!(
            reject(&req),
            HandshakeError::MissingConnectionUpgrade,
            "{c:?}"
        );
    }
    for u in ["WebSocket", "h2c, websocket", " websocket "] {
        upgrade(&upgrade_with(&["Upgrade"], &[&format!("Upgrade: {u}")]));
    }
}

#[test]
fn protocol_is_the_clients_first_supported_choice() {
    let pick = |lines: &[&str]| upgrade(&upgrade_with(&[], lines)).protocol;
    assert_eq!(pick(&[]), None);
    assert_eq!(pick(&["Sec-WebSocket-Protocol: superchat, chat"]), Some(1));
    assert_eq!(pick(&["Sec-WebSocket-Protocol: chat, superchat"]), Some(0));
    assert_eq!(
        pick(&[
            "Sec-WebSocket-Protocol: v2",
            "Sec-WebSocket-Protocol: x, superchat"
        ]),
        Some(1)
    );
    assert_eq!(pick(&["Sec-WebSocket-Protocol: Chat, v9"]), None);
    assert_eq!(pick(&["Sec-WebSocket-Protocol: ,, chat"]), Some(0));
}

#[test]
fn healthz_is_answered_without_upgrade() {
    for first in [
        "GET /healthz HTTP/1.1",
        "GET /healthz HTTP/1.0",
        "GET /healthz?lb=1 HTTP/1.1",
    ] {
        let req = raw(first, &["Host: a"]);
        assert_eq!(parse(&req), Ok(Some((Request::Health, req.len()))));
    }
    assert_eq!(
        reject(&raw("GET /healthzz HTTP/1.1", &["Host: a"])),
        HandshakeError::UpgradeRequired
    );
    let (status, lines, body) = http(HEALTH_RESPONSE);
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));
    assert!(lines.contains(&"Content-Length: 3".to_string()));
    assert!(lines.contains(&"Connection: close".to_string()));
}

#[test]
fn authorization_passes_through_once_or_not_at_all() {
    let up = upgrade(&upgrade_with(&[], &["Authorization: Bearer abc.def"]));
    assert_eq!(up.authorization.as_deref(), Some("Bearer abc.def"));
    assert_eq!(upgrade(&upgrade_with(&[], &[])).authorization, None);
    let twice = upgrade_with(&[], &["Authorization: Bearer a", "Authorization: Bearer b"]);
    assert_eq!(
        upgrade(&twice).authorization,
        None,
        "ambiguous credentials are ignored"
    );
}

#[test]
fn path_and_origin_pass_through() {
    let mut req = upgrade_with(&[], &["Origin: https://example.com"]);
    req.splice(4..9, b"/chat?token=abc".iter().copied());
    let up = upgrade(&req);
    assert_eq!(up.path, "/chat?token=abc");
    assert_eq!(up.origin.as_deref(), Some("https://example.com"));
    assert_eq!(
        upgrade(&upgrade_with(&[], &["Content-Length: 0"])).origin,
        None
    );
}

#[test]
fn client_request_round_trips_through_both_parsers() {
    let key = client_key(*b"0123456789abcdef");
    let mut req = Vec::new();
    let extra = [("Origin".to_string(), "http://lg".to_string())];
    write_request(
        &mut req,
        "127.0.0.1:9001",
        "/ws?id=7",
        &key,
        &["v2", "chat"],
        &extra,
    );
    let up = upgrade(&req);
    assert_eq!(up.path, "/ws?id=7");
    assert_eq!(up.accept, accept_key(&key));
    assert_eq!(up.protocol, Some(0));
    assert_eq!(up.origin.as_deref(), Some("http://lg"));

    let mut resp = Vec::new();
    write_response(&mut resp, &up, &protos());
    let mut stream = resp.clone();
    stream.extend_from_slice(b"\x81\x02hi");
    let expected = Response {
        status: 101,
        protocol: Some("chat".into()),
    };
    for cut in 0..resp.len() {
        assert_eq!(parse_response(&stream[..cut], &key, 4096), Ok(None));
    }
    assert_eq!(
        parse_response(&stream, &key, 4096),
        Ok(Some((expected, resp.len())))
    );
    assert_eq!(
        parse_response(&stream, &key, resp.len() - 1),
        Err(HandshakeError::HeaderTooLarge)
    );

    let mut plain = Vec::new();
    write_request(&mut plain, "h", "/", &key, &[], &[]);
    let up = upgrade(&plain);
    assert_eq!(up.protocol, None);
    let mut resp = Vec::new();
    write_response(
        &mut resp,
        &Upgrade {
            protocol: Some(9),
            ..up
        },
        &protos(),
    );
    assert_eq!(
        parse_response(&resp, &key, 4096).map(|r| r.map(|r| r.0.protocol)),
        Ok(Some(None))
    );
}

#[test]
fn parse_response_checks_the_101() {
    use HandshakeError::*;
    let key: [u8; 24] = KEY.as_bytes().try_into().unwrap();
    let accept = std::str::from_utf8(ACCEPT).unwrap();
    let good = ["Upgrade: websocket", "Connection: Upgrade"];
    let ok = |hs: &[&str]| parse_response(&raw("HTTP/1.1 101 Switching Protocols", hs), &key, 4096);
    let with = |extra: &[&str]| {
        let acc = format!("Sec-WebSocket-Accept: {accept}");
        ok(&[&good[..], &[acc.as_str()], extra].concat())
    };
    assert!(matches!(
        with(&[]),
        Ok(Some((
            Response {
                status: 101,
                protocol: None
            },
            _
        )))
    ));
    assert!(matches!(
        with(&["Sec-WebSocket-Protocol: chat"]),
        Ok(Some(_))
    ));
    assert_eq!(ok(&good), Err(BadAccept));
    assert_eq!(
        ok(&[
            &good[..],
            &["Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA="]
        ]
        .concat()),
        Err(BadAccept)
    );
    assert_eq!(
        with(&[&format!("Sec-WebSocket-Accept: {accept}")]),
        Err(BadAccept)
    );
    assert_eq!(
        ok(&[&format!("Sec-WebSocket-Accept: {accept}"), good[1]]),
        Err(BadResponseUpgrade)
    );
    assert_eq!(
        ok(&[good[0], &format!("Sec-WebSocket-Accept: {accept}")]),
        Err(BadResponseConnection)
    );
    assert_eq!(
        with(&["Sec-WebSocket-Extensions: permessage-deflate"]),
        Err(UnexpectedExtension)
    );
    assert_eq!(
        with(&["Sec-WebSocket-Protocol: a, b"]),
        Err(BadResponseProtocol)
    );
    assert_eq!(
        with(&["Sec-WebSocket-Protocol: a", "Sec-WebSocket-Protocol: b"]),
        Err(BadResponseProtocol)
    );
    let forbidden = raw("HTTP/1.1 403 Forbidden", &["Content-Length: 0"]);
    assert_eq!(parse_response(&forbidden, &key, 4096), Err(Status(403)));
    assert_eq!(
        parse_response(b"HTTP/1.1 1x1 Nope\r\n\r\n", &key, 4096),
        Err(Malformed)
    );
}

/// The seeds committed for the fuzz target still mean what their names say: `upgrade*` and
/// `health*` are accepted requests, `reject*` are refused by both parsers, `response*` are valid
/// answers to the RFC's key.
#[test]
fn fuzz_seeds_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/handshake");
    let key: [u8; 24] = KEY.as_bytes().try_into().unwrap();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(entry.path()).unwrap();
        let (req, resp) = (parse(&bytes), parse_response(&bytes, &key, 8192));
        let ok = match name.split('_').next() {
            Some("upgrade") => matches!(req, Ok(Some((Request::Upgrade(_), _)))),
            Some("health") => matches!(req, Ok(Some((Request::Health, _)))),
            Some("reject") => req.is_err() && resp.is_err(),
            Some("response") => matches!(resp, Ok(Some(_))),
            _ => false,
        };
        assert!(ok, "{name}: request {req:?}, response {resp:?}");
        seen += 1;
    }
    assert!(seen >= 6, "only {seen} seeds in {}", dir.display());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), max in 0usize..700) {
        let p = protos();
        let limits = ServerLimits { max_header_bytes: max, protocols: &p };
        if let Ok(Some((_, n))) = parse_request(&bytes, &limits) {
            prop_assert!(n <= bytes.len() && n <= max);
        }
        if let Ok(Some((_, n))) = parse_response(&bytes, &[b'A'; 24], max) {
            prop_assert!(n <= bytes.len() && n <= max);
        }
    }

    #[test]
    fn mutated_requests_never_panic(pos in 0usize..200, byte in any::<u8>(), cut in 0usize..250) {
        let mut req = upgrade_with(&[], &["Sec-WebSocket-Protocol: chat", "Origin: o"]);
        if let Some(b) = req.get_mut(pos) { *b = byte; }
        let _ = parse(&req[..cut.min(req.len())]);
    }
}
