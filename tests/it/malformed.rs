//! Peers that break RFC 6455 after a valid upgrade: a table of raw byte transcripts and the
//! close code each must produce. For every row the server must send a close frame with that
//! code, then end the TCP connection, and leave every other connection alone.
//!
//! Each transcript is sent twice: in one write, and one byte per write (so every partial-header
//! and partial-payload path of the decoder meets the error too).

use std::time::Duration;

use starling::config::Config;
use starling::metrics::CloseReason;
use tungstenite::Message;

use crate::util::raw::{build, close_body, fragment, masked, op, RawClient, MASK};
use crate::util::ws;
use crate::util::{config, TestServer};

/// `max_message_size` for the table's server, so size violations are cheap to send.
const MAX: usize = 1000;

/// One transcript: the bytes to send, the frames the server must answer before failing (for
/// valid traffic ahead of the violation), and the close code.
struct Case {
    name: String,
    bytes: Vec<u8>,
    before: Vec<(u8, Vec<u8>)>,
    code: u16,
}

fn case(name: impl Into<String>, bytes: Vec<u8>, code: u16) -> Case {
    Case {
        name: name.into(),
        bytes,
        before: Vec::new(),
        code,
    }
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// A masked header (no payload) announcing `len` in the 64-bit form.
fn header64(opcode: u8, len: u64) -> Vec<u8> {
    let mut h = vec![0x80 | opcode, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&MASK);
    h
}

fn table() -> Vec<Case> {
    const PROTOCOL: u16 = 1002;
    const INVALID_DATA: u16 = 1007;
    const TOO_BIG: u16 = 1009;
    let mut t = vec![
        // §5.1: "The server MUST close the connection upon receiving a frame that is not
        // masked."
        case(
            "unmasked text",
            build(true, 0, op::TEXT, None, b"hi"),
            PROTOCOL,
        ),
        case(
            "unmasked ping",
            build(true, 0, op::PING, None, b""),
            PROTOCOL,
        ),
        case(
            "unmasked close",
            build(true, 0, op::CLOSE, None, &close_body(1000, b"")),
            PROTOCOL,
        ),
        // §5.4: control frames "MUST NOT be fragmented"; §5.5: "All control frames MUST have a
        // payload length of 125 bytes or less".
        case("ping of 126 bytes", masked(op::PING, &[0; 126]), PROTOCOL),
        case("pong of 126 bytes", masked(op::PONG, &[0; 126]), PROTOCOL),
        case(
            "close of 126 bytes",
            masked(op::CLOSE, &close_body(1000, &[b'a'; 124])),
            PROTOCOL,
        ),
        case("fragmented ping", fragment(false, op::PING, b"x"), PROTOCOL),
        case(
            "fragmented close",
            fragment(false, op::CLOSE, &close_body(1000, b"")),
            PROTOCOL,
        ),
        case(
            "fragmented ping inside a fragmented message",
            cat(&[
                fragment(false, op::TEXT, b"a"),
                fragment(false, op::PING, b""),
            ]),
            PROTOCOL,
        ),
        // §5.4: fragments of one message arrive in order, with nothing but control frames
        // between them.
        case(
            "continuation without a start",
            fragment(true, op::CONT, b"x"),
            PROTOCOL,
        ),
        case(
            "unfinished continuation without a start",
            fragment(false, op::CONT, b"x"),
            PROTOCOL,
        ),
        case(
            "new text frame mid-fragmented message",
            cat(&[
                fragment(false, op::TEXT, b"a"),
                fragment(true, op::TEXT, b"b"),
            ]),
            PROTOCOL,
        ),
        case(
            "new binary frame mid-fragmented text",
            cat(&[
                fragment(false, op::TEXT, b"a"),
                fragment(false, op::BINARY, b"b"),
            ]),
            PROTOCOL,
        ),
        Case {
            before: vec![(op::TEXT, b"done".to_vec())],
            ..case(
                "continuation after a complete message",
                cat(&[masked(op::TEXT, b"done"), fragment(true, op::CONT, b"more")]),
                PROTOCOL,
            )
        },
        Case {
            before: vec![(op::PONG, b"hi".to_vec())],
            ..case(
                "reserved opcode after a ping",
                cat(&[masked(op::PING, b"hi"), masked(0x3, b"")]),
                PROTOCOL,
            )
        },
        // §5.8 / §5.2: "If a nonzero value is received and none of the negotiated extensions
        // defines the meaning of such a nonzero value, the receiving endpoint MUST _Fail the
        // WebSocket Connection_."
        case(
            "64-bit length with the most significant bit set",
            cat(&[header64(op::BINARY, (1 << 63) | 5), vec![0; 5]]),
            PROTOCOL,
        ),
        // §8.1: invalid UTF-8 in a text message fails the connection.
        case("invalid byte 0xFF", masked(op::TEXT, b"\xff"), INVALID_DATA),
        case(
            "valid text then 0xFF",
            masked(op::TEXT, b"hello\xff"),
            INVALID_DATA,
        ),
        case(
            "overlong encoding of '/'",
            masked(op::TEXT, b"\xc0\xaf"),
            INVALID_DATA,
        ),
        case(
            "UTF-16 surrogate",
            masked(op::TEXT, b"\xed\xa0\x80"),
            INVALID_DATA,
        ),
        case(
            "code point above U+10FFFF",
            masked(op::TEXT, b"\xf4\x90\x80\x80"),
            INVALID_DATA,
        ),
        case(
            "code point cut at the end of a message",
            masked(op::TEXT, b"ok\xe2\x82"),
            INVALID_DATA,
        ),
        case(
            "code point cut at the end of a fragmented message",
            cat(&[
                fragment(false, op::TEXT, b"\xe2\x82"),
                fragment(true, op::CONT, b""),
            ]),
            INVALID_DATA,
        ),
        // Fails at the fragment where the text becomes invalid: no FIN is ever sent.
        case(
            "invalid byte in a first fragment without FIN",
            fragment(false, op::TEXT, b"ok\xff"),
            INVALID_DATA,
        ),
        case(
            "invalid sequence split across fragments without FIN",
            cat(&[
                fragment(false, op::TEXT, b"\xce"),
                fragment(false, op::CONT, b"A"),
            ]),
            INVALID_DATA,
        ),
        case(
            "invalid byte in the part of a frame that arrived",
            masked(op::TEXT, &[b"abc\xff".as_slice(), &[b'x'; 96]].concat())[..6 + 10].to_vec(),
            INVALID_DATA,
        ),
        // §5.5.1: a close body is empty or starts with a 2-byte code.
        case(
            "close payload of one byte",
            masked(op::CLOSE, &[0x03]),
            PROTOCOL,
        ),
        case(
            "close reason not UTF-8",
            masked(op::CLOSE, &close_body(1000, b"bye\xff")),
            INVALID_DATA,
        ),
        case(
            "close reason with a cut code point",
            masked(op::CLOSE, &close_body(1000, &"€".as_bytes()[..2])),
            INVALID_DATA,
        ),
        // §10.4: a message over the configured limit is refused with 1009.
        case(
            "one frame over max_message_size",
            masked(op::BINARY, &[7; MAX + 1]),
            TOO_BIG,
        ),
        case(
            "text frame over max_message_size",
            masked(op::TEXT, &[b'a'; MAX + 1]),
            TOO_BIG,
        ),
        case(
            "header alone announcing more than max_message_size",
            masked(op::BINARY, &[7; MAX + 1])[..8].to_vec(),
            TOO_BIG,
        ),
        case(
            "header alone announcing 2^40 bytes",
            header64(op::BINARY, 1 << 40),
            TOO_BIG,
        ),
        case(
            "fragments summing past max_message_size",
            cat(&[
                fragment(false, op::BINARY, &[1; MAX / 2]),
                fragment(false, op::CONT, &[2; MAX / 2]),
                fragment(false, op::CONT, &[3; 1]),
            ]),
            TOO_BIG,
        ),
        case(
            "many small fragments summing past max_message_size",
            {
                let mut v = fragment(false, op::TEXT, b"x");
                for _ in 0..MAX {
                    v.extend(fragment(false, op::CONT, b"y"));
                }
                v
            },
            TOO_BIG,
        ),
    ];
    for (bit, name) in [(4u8, "RSV1"), (2, "RSV2"), (1, "RSV3")] {
        t.push(case(
            format!("{name} on text"),
            build(true, bit, op::TEXT, Some(MASK), b"x"),
            PROTOCOL,
        ));
        t.push(case(
            format!("{name} on ping"),
            build(true, bit, op::PING, Some(MASK), b""),
            PROTOCOL,
        ));
    }
    // §5.2: "If an unknown opcode is received, the receiving endpoint MUST _Fail the WebSocket
    // Connection_."
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        t.push(case(
            format!("reserved opcode {opcode:#X}"),
            masked(opcode, b""),
            PROTOCOL,
        ));
    }
    // §7.4: codes that must never appear in a close frame, or are not codes at all.
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        t.push(case(
            format!("close code {code}"),
            masked(op::CLOSE, &close_body(code, b"")),
            PROTOCOL,
        ));
    }
    t
}

/// Runs one transcript on a fresh connection; Err describes what went wrong.
fn run(server: &TestServer, c: &Case, byte_by_byte: bool) -> Result<(), String> {
    let mut client = RawClient::open(server.addr());
    if byte_by_byte {
        for b in &c.bytes {
            // The server may already have failed the connection; what it sent is checked below.
            if client.send(std::slice::from_ref(b)).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    } else {
        client
            .send(&c.bytes)
            .map_err(|e| format!("send failed: {e}"))?;
    }
    for (opcode, payload) in &c.before {
        let f = client
            .read_frame()
            .map_err(|e| format!("expected opcode {opcode:#x} first, got {e:?}"))?;
        if f.opcode != *opcode || &f.payload != payload {
            return Err(format!("expected opcode {opcode:#x} first, got {f:?}"));
        }
    }
    client.expect_close_then_eof(c.code)
}

#[test]
fn each_violation_gets_its_close_code_and_nothing_else_is_affected() {
    let server = TestServer::start(Config {
        max_message_size: MAX,
        ..config()
    });
    // A bystander, open through the whole table.
    let mut bystander = ws::connect(server.addr());
    let table = table();
    let mut failures = Vec::new();
    let mut runs = 0;
    for byte_by_byte in [false, true] {
        for c in &table {
            runs += 1;
            if let Err(e) = run(&server, c, byte_by_byte) {
                let how = if byte_by_byte {
                    "byte by byte"
                } else {
                    "one write"
                };
                failures.push(format!("{} ({how}): {e}", c.name));
            }
        }
        ws::assert_echo(&mut bystander, Message::text("bystander unaffected"));
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} transcripts failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        server.wait_closed(CloseReason::Protocol, runs),
        "every failure counted as protocol_error: {}",
        server.counters()
    );
    ws::assert_server_healthy(server.addr());
    ws::assert_echo(&mut bystander, Message::Binary(vec![1; MAX]));
}

#[test]
fn violation_on_one_connection_leaves_a_concurrent_fragmented_message_intact() {
    let server = TestServer::echo();
    let mut healthy = RawClient::open(server.addr());
    healthy
        .send(&fragment(false, op::TEXT, b"first half, "))
        .unwrap();
    let mut bad = RawClient::open(server.addr());
    bad.send(&masked(0xB, b"")).unwrap();
    bad.expect_close_then_eof(1002).unwrap();
    healthy
        .send(&fragment(true, op::CONT, b"second half"))
        .unwrap();
    healthy.expect_frame(op::TEXT, b"first half, second half");
}
