//! Liveness: the server pings a silent connection, drops one that answers nothing after
//! `max_missed_pongs`, keeps one that answers (or that keeps talking), and closes one that sends
//! no data message within `idle_timeout`.

use std::time::{Duration, Instant};

use starling::config::Config;
use starling::metrics::CloseReason;
use tungstenite::Message;

use crate::util::raw::{masked, op, End, RawClient};
use crate::util::ws;
use crate::util::{config, TestServer, PATIENCE};

fn fast_heartbeat() -> Config {
    Config {
        ping_interval: Duration::from_millis(200),
        pong_timeout: Duration::from_millis(100),
        max_missed_pongs: 2,
        ..config()
    }
}

#[test]
fn client_that_never_answers_pings_is_dropped() {
    let server = TestServer::start(fast_heartbeat());
    let mut c = RawClient::open(server.addr());
    let mut pings = 0;
    let end = loop {
        match c.read_frame() {
            Ok(f) if f.opcode == op::PING => pings += 1,
            Ok(f) => panic!("unexpected frame {f:?}"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(end, End::Eof | End::Reset),
        "expected the server to drop the connection, got {end:?}"
    );
    assert!(pings >= 1, "the server never pinged before dropping");
    assert!(
        server.wait_closed(CloseReason::PingTimeout, 1),
        "{}",
        server.counters()
    );
    ws::assert_server_healthy(server.addr());
}

#[test]
fn client_that_answers_pings_stays_open() {
    let server = TestServer::start(fast_heartbeat());
    let mut w = ws::connect(server.addr());
    // tungstenite answers each ping with a pong on its next read. Wait for several pings:
    // proof that intervals passed, each answered.
    ws::set_read_timeout(&w, Duration::from_millis(50));
    let deadline = Instant::now() + PATIENCE;
    let mut pings = 0;
    while pings < 6 && Instant::now() < deadline {
        match w.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {}", ws::desc(&other)),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("connection lost after {pings} pings: {e}"),
        }
    }
    assert!(pings >= 6, "only {pings} pings arrived");
    ws::set_read_timeout(&w, PATIENCE);
    ws::assert_echo(&mut w, Message::text("still open"));
    assert_eq!(
        server.counters().closed_for(CloseReason::PingTimeout),
        0,
        "{}",
        server.counters()
    );
}

#[test]
fn any_frame_counts_as_liveness() {
    let server = TestServer::start(fast_heartbeat());
    // Never a pong, but a message every 100 ms (the server never needs to ping), then every
    // 250 ms (it pings, and the next message arrives before or after the pong deadline, but
    // never two deadlines in a row without one). Two missed pongs drop a silent client within
    // about 600 ms; each phase lasts several times that.
    for period in [100, 250] {
        let mut c = RawClient::open(server.addr());
        for i in 0..12 {
            let msg = format!("tick {i} every {period} ms");
            c.send(&masked(op::TEXT, msg.as_bytes())).unwrap();
            loop {
                let f = c.read_frame().unwrap_or_else(|e| {
                    panic!("period {period} ms: dropped after {i} messages: {e:?}")
                });
                match f.opcode {
                    // Ignored on purpose: this client does not answer pings.
                    op::PING => continue,
                    op::TEXT => {
                        assert_eq!(f.payload, msg.as_bytes());
                        break;
                    }
                    _ => panic!("unexpected frame {f:?}"),
                }
            }
            std::thread::sleep(Duration::from_millis(period));
        }
    }
    assert_eq!(server.counters().closed_for(CloseReason::PingTimeout), 0);
}

#[test]
fn idle_connection_is_closed_with_a_close_frame() {
    let server = TestServer::start(Config {
        idle_timeout: Duration::from_millis(300),
        ..config()
    });
    let mut c = RawClient::open(server.addr());
    let f = c
        .read_frame()
        .expect("a close frame after the idle timeout");
    assert_eq!(f.opcode, op::CLOSE, "{f:?}");
    assert_eq!(f.close_code(), Some(1000), "{f:?}");
    // Finish the handshake the server started; it then closes TCP.
    c.send(&masked(op::CLOSE, &f.payload[..2])).unwrap();
    c.expect_eof().unwrap();
    assert!(
        server.wait_closed(CloseReason::Idle, 1),
        "{}",
        server.counters()
    );
}

#[test]
fn pings_from_the_client_do_not_reset_the_idle_timeout() {
    // Idleness is about data messages: a client that only pings is still idle.
    let server = TestServer::start(Config {
        idle_timeout: Duration::from_millis(300),
        ..config()
    });
    let mut c = RawClient::open(server.addr());
    let deadline = Instant::now() + PATIENCE;
    let close = loop {
        assert!(Instant::now() < deadline, "never closed for idleness");
        c.send(&masked(op::PING, b"p")).unwrap();
        let f = c.read_frame().expect("pong or close");
        match f.opcode {
            op::PONG => std::thread::sleep(Duration::from_millis(50)),
            op::CLOSE => break f,
            _ => panic!("unexpected frame {f:?}"),
        }
    };
    assert_eq!(close.close_code(), Some(1000));
    assert!(server.wait_closed(CloseReason::Idle, 1));
}

#[test]
fn data_messages_keep_an_idle_timeout_from_firing() {
    let server = TestServer::start(Config {
        idle_timeout: Duration::from_millis(300),
        ..config()
    });
    let mut c = RawClient::open(server.addr());
    // A message every 100 ms for 1.5 s: five idle timeouts' worth of time.
    for i in 0..15 {
        c.send(&masked(op::BINARY, &[i])).unwrap();
        c.expect_frame(op::BINARY, &[i]);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.counters().closed_for(CloseReason::Idle), 0);
}
