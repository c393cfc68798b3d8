//! Slow consumers: a connection that stops reading while the server has lots to send it is
//! closed with 1008 once its queue passes `max_backpressure`, the server's memory stays bounded,
//! and the connections that do read are not touched.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use starling::config::{App, Config};
use starling::metrics::CloseReason;

use crate::util::child::Child;
use crate::util::raw::{build, masked, op, RawClient, MASK};
use crate::util::{config, TestServer};

/// Payload of each message the publisher sends.
const MSG: usize = 64 * 1024;

/// The header the server puts on an unfragmented binary message of `len` bytes.
fn server_header(len: usize) -> Vec<u8> {
    let mut h = vec![0x82];
    if len < 126 {
        h.push(len as u8);
    } else if len <= 0xFFFF {
        h.push(126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h
}

/// Reads exactly `n` binary frames of `len` payload bytes from `stream`, checking each header
/// and skipping the payload without copying it (this reader must outpace the server, or the
/// publisher would become a slow consumer itself). Any other frame, or EOF, is an error.
fn count_frames(mut stream: TcpStream, n: usize, len: usize) -> Result<TcpStream, String> {
    let want = server_header(len);
    let mut buf = vec![0u8; 256 * 1024];
    let mut header = Vec::with_capacity(want.len());
    let mut left = 0usize;
    let mut frames = 0;
    while frames < n {
        let got = match stream.read(&mut buf) {
            Ok(0) => return Err(format!("EOF after {frames} of {n} frames")),
            Ok(g) => g,
            Err(e) => return Err(format!("after {frames} of {n} frames: {e}")),
        };
        let mut i = 0;
        while i < got {
            if frames == n {
                return Err(format!(
                    "{} unexpected bytes after the last frame: {:?}",
                    got - i,
                    &buf[i..got.min(i + 16)]
                ));
            }
            if left > 0 {
                let take = left.min(got - i);
                left -= take;
                i += take;
                if left == 0 {
                    frames += 1;
                }
                continue;
            }
            header.push(buf[i]);
            i += 1;
            if header.len() == want.len() {
                if header != want {
                    return Err(format!("frame {frames}: header {header:?}, want {want:?}"));
                }
                header.clear();
                left = len;
            }
        }
    }
    Ok(stream)
}

/// Publishes `n` messages of [`MSG`] bytes on `publisher` while a thread reads them all back
/// (the broadcast app sends each to its sender too). `each` runs after every message.
fn publish(publisher: &TcpStream, n: usize, mut each: impl FnMut(usize)) -> Result<(), String> {
    let frame = build(true, 0, op::BINARY, Some(MASK), &vec![0x5a; MSG]);
    let reader_stream = publisher.try_clone().unwrap();
    let reader = std::thread::spawn(move || count_frames(reader_stream, n, MSG));
    let mut writer = publisher.try_clone().unwrap();
    for i in 0..n {
        if let Err(e) = std::io::Write::write_all(&mut writer, &frame) {
            let r = reader.join().unwrap();
            return Err(format!("publisher write {i} failed: {e}; reader: {r:?}"));
        }
        each(i);
    }
    reader.join().unwrap().map(|_| ())
}

/// What a slow consumer finally reads: the data frames that made it, then a close frame.
/// Returns (data bytes before the close, close code).
fn drain_slow(c: &mut RawClient) -> (usize, Option<u16>) {
    let mut data = 0;
    loop {
        let f = c
            .read_frame()
            .unwrap_or_else(|e| panic!("slow consumer: after {data} bytes: {e:?}"));
        match f.opcode {
            op::BINARY => {
                assert!(f.fin && f.payload.len() == MSG, "data frame intact");
                data += f.payload.len();
            }
            op::CLOSE => return (data, f.close_code()),
            op::PING => {}
            _ => panic!("slow consumer: unexpected frame {:?}", f.opcode),
        }
    }
}

#[test]
fn consumer_that_stops_reading_is_closed_with_1008() {
    let server = TestServer::start(Config {
        app: App::Broadcast,
        max_backpressure: 256 * 1024,
        // Long enough that the close frame is still waiting when the slow client reads again.
        close_timeout: Duration::from_secs(60),
        ..config()
    });
    let mut slow = RawClient::open_with_rcvbuf(server.addr(), 16 * 1024);
    let publisher = RawClient::open(server.addr());
    // 16 MiB: far more than the socket buffers and the queue bound together can hold.
    let n = 256;
    publish(publisher.stream(), n, |_| {}).expect("publisher keeps receiving everything");

    let (data, code) = drain_slow(&mut slow);
    assert_eq!(
        code,
        Some(1008),
        "slow consumer closed as a policy violation"
    );
    assert!(
        data < n * MSG,
        "the slow consumer got all {data} bytes: nothing was dropped"
    );
    slow.expect_eof().unwrap();
    assert!(
        server.wait_closed(CloseReason::SlowConsumer, 1),
        "{}",
        server.counters()
    );
    assert_eq!(
        server.counters().closed_for(CloseReason::SlowConsumer),
        1,
        "only the slow consumer"
    );
    // The publisher is still connected and served.
    let mut publisher = publisher;
    publisher.send(&masked(op::TEXT, b"still here")).unwrap();
    publisher.expect_frame(op::TEXT, b"still here");
}

#[test]
fn server_memory_stays_bounded_while_a_consumer_does_not_read() {
    let mut child = Child::serve(&[
        "--app",
        "broadcast",
        "--shards",
        "1",
        "--max-backpressure",
        "262144",
        "--stats-interval",
        "0s",
    ]);
    let _slow = RawClient::open_with_rcvbuf(child.addr, 16 * 1024);
    let publisher = RawClient::open(child.addr);
    // > 500 MiB at a client that never reads.
    let n = 520 * 1024 * 1024 / MSG;
    let mut max_rss = 0;
    let result = publish(publisher.stream(), n, |i| {
        if i % 128 == 0 {
            max_rss = max_rss.max(child.rss_kib().unwrap_or(0));
        }
    });
    max_rss = max_rss.max(child.rss_kib().unwrap_or(0));
    result.unwrap_or_else(|e| panic!("publisher: {e}; log:\n{}", child.log_text()));
    assert!(max_rss > 0, "could not read VmRSS");
    eprintln!(
        "pushed {} MiB at a non-reading client; server max VmRSS {} KiB",
        (n * MSG) >> 20,
        max_rss
    );
    assert!(
        max_rss < 100 * 1024,
        "RSS reached {} MiB after pushing {} MiB",
        max_rss / 1024,
        (n * MSG) >> 20
    );
    let mut publisher = publisher;
    publisher.send(&masked(op::TEXT, b"still here")).unwrap();
    publisher.expect_frame(op::TEXT, b"still here");
    assert!(
        child.wait_exit(Duration::ZERO).is_none(),
        "server still running"
    );
}
