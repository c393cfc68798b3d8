//! Categories 7, 9 and 10 of the Autobahn cases: close handling, large messages and
//! fragmented ones.

use super::*;

/// §5.5.1: "If an endpoint receives a Close frame and did not previously send a Close frame,
/// the endpoint MUST send a Close frame in response" and "After sending a Close frame, the
/// endpoint MUST NOT send any further data frames"; "after receiving a control frame
/// indicating the connection should be closed, a peer discards any further data received"
/// (§1.4).
#[test]
fn autobahn_7_1_to_7_5_close_handling() {
    let big = text_of(256 << 10);
    let bad_reason = [KOSME, b"\xed\xa0\x80", b"edited"].concat();
    check_all([
        case(
            "7.1.2",
            "two close frames: the second is ignored",
            vec![
                send(cat(&[close(1000, b""), masked(op::CLOSE, b"")])),
                closed(&[1000, NO_CODE]),
            ],
        ),
        case(
            "7.1.5",
            "first fragment, close, last fragment: no message, the close answered",
            vec![
                send(cat(&[
                    fragment(false, op::TEXT, b"fragment1"),
                    close(1000, b""),
                    fragment(true, op::CONT, b"fragment2"),
                ])),
                closed(&[1000, NO_CODE]),
            ],
        ),
        case(
            "7.1.6",
            "256 KiB text, text, close, ping: both echoed, then the close, no pong",
            vec![
                send(cat(&[
                    text(&big),
                    text(b"Hello World!"),
                    close(1000, b""),
                    ping(b""),
                ])),
                expect(op::TEXT, &big),
                expect(op::TEXT, b"Hello World!"),
                closed(&[1000, NO_CODE]),
            ],
        ),
        case(
            "7.3.5",
            "close with a reason of 123 bytes, the most that fits",
            vec![send(close(1000, &[b'*'; 123])), closed(&[1000, NO_CODE])],
        ),
        // Autobahn accepts 1002 or 1007 here.
        case(
            "7.5.1",
            "close reason that is not UTF-8 (a surrogate)",
            vec![
                send(close(1000, &bad_reason)),
                closed(&[PROTOCOL_ERROR, INVALID_PAYLOAD]),
            ],
        ),
    ]);
}

/// Not an Autobahn case: the same rules when the peer's TCP FIN arrives in the same segment as
/// its last frame (a client that sends its close and shuts down its side at once; a half-closed
/// peer still reads). The close reply must still be sent ("If an endpoint receives a Close
/// frame and did not previously send a Close frame, the endpoint MUST send a Close frame in
/// response", §5.5.1), and a connection failed by that last frame still gets its code ("the
/// endpoint SHOULD send a Close frame with an appropriate status code", §7.1.7).
#[test]
fn close_7_1_x_peer_that_half_closes_right_behind_its_frame_still_gets_the_close() {
    check_all([
        case(
            "7.1.x (half-close)",
            "close, then FIN in the same segment: the close is answered",
            vec![
                Step::SendThenFin(close(1000, b"")),
                closed(&[1000, NO_CODE]),
            ],
        ),
        case(
            "7.1.x (half-close, failure)",
            "reserved opcode, then FIN in the same segment: close 1002 is sent",
            vec![Step::SendThenFin(masked(3, b"")), fails(PROTOCOL_ERROR)],
        ),
    ]);
}

/// Cases 7.7.x: a close with each code §7.4.1 defines for endpoints to send, and the edges of
/// the ranges §7.4.2 gives to libraries (3000-3999) and applications (4000-4999). The reply is
/// a close with the same code ("When sending a Close frame in response, the endpoint typically
/// echos the status code it received", §5.5.1), with 1000, or with no code, as Autobahn
/// accepts, and then TCP ends.
#[test]
fn autobahn_7_7_each_valid_close_code_is_answered_then_tcp_closes() {
    let codes = [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ];
    check_all(codes.iter().enumerate().map(|(i, &code)| {
        case(
            format!("7.7.{}", i + 1),
            format!("close with code {code}"),
            vec![send(close(code, b"")), closed(&[code, 1000, NO_CODE])],
        )
    }));
}

/// Cases 9.1.2-9.1.5 and 9.2.x alike: 256 KiB, 1 MiB, 4 MiB and 8 MiB in one frame (64 KiB and
/// 16 MiB are in `echo.rs`). The default `max_message_size` is 16 MiB.
#[test]
fn autobahn_9_1_and_9_2_large_messages_in_one_frame_echo() {
    let sizes = [(2, 256 << 10), (3, 1 << 20), (4, 4 << 20), (5, 8 << 20)];
    check_all(sizes.into_iter().flat_map(|(n, len)| {
        [
            ("9.1", op::TEXT, text_of(len)),
            ("9.2", op::BINARY, binary_of(len)),
        ]
        .into_iter()
        .map(move |(sub, opcode, body)| {
            case(
                format!("{sub}.{n}"),
                format!("message of {len} bytes in one frame"),
                then_clean_close(vec![send(masked(opcode, &body)), expect(opcode, body)]),
            )
        })
    }));
}

/// Cases 9.3.x and 9.4.x: a 4 MiB message in fragments of 64 bytes up to 4 MiB, reassembled.
#[test]
fn autobahn_9_3_and_9_4_4_mib_in_fragments_of_64_bytes_to_4_mib_echo() {
    let len = 4 << 20;
    let sizes = [
        64,
        256,
        1 << 10,
        4 << 10,
        16 << 10,
        64 << 10,
        256 << 10,
        1 << 20,
        4 << 20,
    ];
    check_all(sizes.into_iter().enumerate().flat_map(move |(i, size)| {
        [("9.3", op::TEXT), ("9.4", op::BINARY)]
            .into_iter()
            .map(move |(sub, opcode)| {
                let body = if opcode == op::TEXT {
                    text_of(len)
                } else {
                    binary_of(len)
                };
                case(
                    format!("{sub}.{}", i + 1),
                    format!("{len} bytes in fragments of {size}"),
                    then_clean_close(vec![
                        send(fragments(opcode, &body, size)),
                        expect(opcode, body),
                    ]),
                )
            })
    }));
}

/// Cases 9.5.x and 9.6.x: a 1 MiB frame written in chops of 64 to 2048 bytes.
#[test]
fn autobahn_9_5_and_9_6_1_mib_frame_in_chops_of_64_to_2048_bytes_echo() {
    let len = 1 << 20;
    check_all((0..6).flat_map(move |i| {
        let chop = 64 << i;
        [
            ("9.5", op::TEXT, text_of(len)),
            ("9.6", op::BINARY, binary_of(len)),
        ]
        .into_iter()
        .map(move |(sub, opcode, body)| {
            case(
                format!("{sub}.{}", i + 1),
                format!("{len} bytes written in chops of {chop}"),
                then_clean_close(vec![
                    Step::Chops(masked(opcode, &body), chop),
                    expect(opcode, body),
                ]),
            )
        })
    }));
}

/// Cases 9.7.x and 9.8.x: 1000 messages of 0 to 4096 bytes, each sent once the previous one
/// came back (Autobahn measures the round trip; here only the echoes are checked).
#[test]
fn autobahn_9_7_and_9_8_1000_round_trips_per_size_echo() {
    let sizes = [0, 16, 64, 256, 1024, 4096];
    check_all(sizes.into_iter().enumerate().flat_map(|(i, len)| {
        [
            ("9.7", op::TEXT, vec![b'*'; len]),
            ("9.8", op::BINARY, vec![0xfe; len]),
        ]
        .into_iter()
        .map(move |(sub, opcode, body)| {
            let steps = (0..1000)
                .flat_map(|_| [send(masked(opcode, &body)), expect(opcode, &body)])
                .collect();
            case(
                format!("{sub}.{}", i + 1),
                format!("1000 round trips of {len} bytes"),
                then_clean_close(steps),
            )
        })
    }));
}

/// Case 10.1.1: 64 KiB of text sent auto-fragmented in frames of 1300 bytes is one message.
#[test]
fn autobahn_10_1_1_message_in_1300_byte_fragments_echoes_whole() {
    let body = text_of(65536);
    check_all([case(
        "10.1.1",
        "65536 bytes of text in fragments of 1300",
        then_clean_close(vec![
            send(fragments(op::TEXT, &body, 1300)),
            expect(op::TEXT, &body),
        ]),
    )]);
}
