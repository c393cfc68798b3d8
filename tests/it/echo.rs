//! The echo app returns every data message unchanged: every length encoding, many messages in
//! order, fragmented messages reassembled with control frames between their fragments.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use tungstenite::Message;

use crate::util::raw::{fragment, masked, op, RawClient};
use crate::util::ws::{self, assert_echo};
use crate::util::{config, TestServer};

/// ASCII text of `n` bytes that is not one repeated byte.
fn text_of(n: usize) -> String {
    (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect()
}

/// Binary of `n` bytes covering every byte value.
fn binary_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 256) as u8).collect()
}

#[test]
fn text_and_binary_of_every_length_encoding_come_back() {
    let server = TestServer::echo();
    let mut ws = ws::connect(server.addr());
    // 7-bit lengths (0, 1, 125), 16-bit (126, 65535), 64-bit (65536 and up to the 1 MiB limit).
    for n in [0, 1, 125, 126, 65535, 65536, (1 << 20) - 100] {
        assert_echo(&mut ws, Message::Text(text_of(n)));
        assert_echo(&mut ws, Message::Binary(binary_of(n)));
    }
}

#[test]
fn message_of_exactly_max_message_size_is_accepted() {
    let server = TestServer::start(starling::config::Config {
        max_message_size: 1000,
        ..config()
    });
    let mut ws = ws::connect(server.addr());
    assert_echo(&mut ws, Message::Binary(binary_of(1000)));
    // Fragments summing to exactly the limit are fine too.
    let mut c = RawClient::open(server.addr());
    let body = text_of(1000);
    c.send(&fragment(false, op::TEXT, &body.as_bytes()[..600]))
        .unwrap();
    c.send(&fragment(true, op::CONT, &body.as_bytes()[600..]))
        .unwrap();
    c.expect_frame(op::TEXT, body.as_bytes());
}

/// With the default configuration the largest messages conformance suites send (Autobahn's
/// 9.1.6 / 9.2.6: 16 MiB of text or binary in one frame) come back whole, and one byte more
/// gets close 1009 as soon as the header announces it.
#[test]
fn default_limit_takes_a_16_mib_message_and_refuses_one_byte_more() {
    let server = TestServer::echo();
    let limit = 16 << 20;
    assert_eq!(starling::config::Config::default().max_message_size, limit);
    let mut ws = ws::connect(server.addr());
    assert_echo(&mut ws, Message::Text(text_of(limit)));
    assert_echo(&mut ws, Message::Binary(binary_of(limit)));
    let mut c = RawClient::open(server.addr());
    let mut head = vec![0x82, 0x80 | 127];
    head.extend_from_slice(&(limit as u64 + 1).to_be_bytes());
    head.extend_from_slice(&crate::util::raw::MASK);
    c.send(&head).unwrap();
    c.expect_close_then_eof(1009).unwrap();
}

#[test]
fn pipelined_messages_come_back_in_order() {
    let server = TestServer::echo();
    let mut ws = ws::connect(server.addr());
    let n = 1000;
    for i in 0..n {
        ws.write(Message::Text(format!("message {i}"))).unwrap();
    }
    ws.flush().unwrap();
    for i in 0..n {
        let got = ws::next_data(&mut ws);
        assert_eq!(got, Message::Text(format!("message {i}")), "message {i}");
    }
}

#[test]
fn many_frames_in_one_write_come_back_in_order() {
    let server = TestServer::echo();
    let mut c = RawClient::open(server.addr());
    let mut burst = Vec::new();
    for i in 0..300 {
        let opcode = if i % 2 == 0 { op::TEXT } else { op::BINARY };
        burst.extend_from_slice(&masked(opcode, format!("#{i}").as_bytes()));
    }
    c.send(&burst).unwrap();
    for i in 0..300 {
        let opcode = if i % 2 == 0 { op::TEXT } else { op::BINARY };
        c.expect_frame(opcode, format!("#{i}").as_bytes());
    }
}

#[test]
fn fragments_with_pings_between_them_are_reassembled_and_pings_answered() {
    let server = TestServer::echo();
    let mut c = RawClient::open(server.addr());
    // "Control frames ... MAY be injected in the middle of a fragmented message" (§5.4).
    c.send(&fragment(false, op::TEXT, b"Hel")).unwrap();
    c.send(&masked(op::PING, b"p1")).unwrap();
    c.send(&fragment(false, op::CONT, b"lo, ")).unwrap();
    c.send(&masked(op::PING, b"p2")).unwrap();
    c.send(&fragment(false, op::CONT, b"")).unwrap();
    c.send(&fragment(true, op::CONT, b"world")).unwrap();
    // "A Pong frame sent in response to a Ping frame must have identical Application data"
    // (§5.5.3); the pongs answer the pings as they arrive, before the message is complete.
    c.expect_frame(op::PONG, b"p1");
    c.expect_frame(op::PONG, b"p2");
    c.expect_frame(op::TEXT, b"Hello, world");
    // The same in a single write.
    let mut all = fragment(false, op::BINARY, &[1, 2]);
    all.extend(masked(op::PING, &[9; 125]));
    all.extend(fragment(true, op::CONT, &[3]));
    c.send(&all).unwrap();
    c.expect_frame(op::PONG, &[9; 125]);
    c.expect_frame(op::BINARY, &[1, 2, 3]);
}

#[test]
fn large_fragments_are_reassembled() {
    let server = TestServer::echo();
    let mut c = RawClient::open(server.addr());
    let body = binary_of(3 * 70_000);
    c.send(&fragment(false, op::BINARY, &body[..70_000]))
        .unwrap();
    c.send(&fragment(false, op::CONT, &body[70_000..140_000]))
        .unwrap();
    c.send(&fragment(true, op::CONT, &body[140_000..])).unwrap();
    c.expect_frame(op::BINARY, &body);
}

#[test]
fn code_point_split_across_fragments_is_valid_text() {
    let server = TestServer::echo();
    let mut c = RawClient::open(server.addr());
    let s = "a€b😀c".as_bytes();
    // Split inside the 3-byte euro sign and inside the 4-byte emoji.
    c.send(&fragment(false, op::TEXT, &s[..2])).unwrap();
    c.send(&fragment(false, op::CONT, &s[2..6])).unwrap();
    c.send(&fragment(true, op::CONT, &s[6..])).unwrap();
    c.expect_frame(op::TEXT, s);
}

#[test]
fn frame_written_one_byte_at_a_time_is_echoed() {
    let server = TestServer::echo();
    let mut c = RawClient::open(server.addr());
    let mut frames = masked(op::TEXT, text_of(300).as_bytes());
    frames.extend(masked(op::PING, b"ping"));
    for b in &frames {
        c.send(std::slice::from_ref(b)).unwrap();
        // Separate segments, so the server sees partial headers and payloads across reads.
        std::thread::sleep(Duration::from_micros(300));
    }
    c.expect_frame(op::TEXT, text_of(300).as_bytes());
    c.expect_frame(op::PONG, b"ping");
}

#[test]
fn unsolicited_pong_gets_no_answer() {
    let server = TestServer::echo();
    let mut c = RawClient::open(server.addr());
    // "A Pong frame MAY be sent unsolicited. ... A response to an unsolicited Pong frame is not
    // expected." (§5.5.3)
    c.send(&masked(op::PONG, b"heartbeat")).unwrap();
    c.send(&masked(op::TEXT, b"after")).unwrap();
    c.expect_frame(op::TEXT, b"after");
}

#[test]
fn tungstenite_accepts_the_handshake_and_its_accept_key() {
    // tungstenite checks Sec-WebSocket-Accept against the key it sent, and the status, Upgrade
    // and Connection of the 101; a connect that returns Ok passed all of that.
    let server = TestServer::echo();
    let (mut ws, resp) = ws::try_connect_with(server.addr(), &[]).unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    assert!(resp.headers().get("sec-websocket-extensions").is_none());
    assert_echo(&mut ws, Message::text("ok"));
}

#[test]
fn random_fragmentation_and_write_splits_round_trip() {
    let server = TestServer::echo();
    let addr = server.addr();
    let mut runner = TestRunner::new(PropConfig {
        cases: 48,
        failure_persistence: None,
        ..PropConfig::default()
    });
    let strategy = (
        any::<bool>(),
        proptest::collection::vec(any::<char>(), 0..400),
        proptest::collection::vec(1usize..64, 1..8),
        proptest::collection::vec(1usize..40, 1..12),
        proptest::collection::vec(any::<bool>(), 8),
    );
    runner
        .run(&strategy, |(is_text, chars, cuts, writes, pings)| {
            let text: String = chars.into_iter().collect();
            let body = text.as_bytes();
            // Cut the message into fragments (cuts may fall inside code points).
            let mut stream = Vec::new();
            let mut pongs = Vec::new();
            let mut at = 0;
            let mut i = 0;
            loop {
                let end = (at + cuts[i % cuts.len()]).min(body.len());
                let last = end == body.len();
                let opcode = match (i, is_text) {
                    (0, true) => op::TEXT,
                    (0, false) => op::BINARY,
                    _ => op::CONT,
                };
                stream.extend(fragment(last, opcode, &body[at..end]));
                if !last && pings[i % pings.len()] {
                    let p = format!("p{i}");
                    stream.extend(masked(op::PING, p.as_bytes()));
                    pongs.push(p);
                }
                at = end;
                i += 1;
                if last {
                    break;
                }
            }
            // Write the stream in pieces of arbitrary sizes.
            let mut c = RawClient::open(addr);
            let mut off = 0;
            let mut w = 0;
            while off < stream.len() {
                let end = (off + writes[w % writes.len()]).min(stream.len());
                c.send(&stream[off..end]).unwrap();
                // Give the server a chance to read in between, so reads split differently.
                std::thread::yield_now();
                off = end;
                w += 1;
            }
            for p in &pongs {
                c.expect_frame(op::PONG, p.as_bytes());
            }
            c.expect_frame(if is_text { op::TEXT } else { op::BINARY }, body);
            Ok(())
        })
        .unwrap();
}
