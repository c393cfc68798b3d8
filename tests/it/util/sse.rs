//! A server-sent events client over a raw `TcpStream`: sends a `GET`, reads the response head
//! and then events, block by block, as the HTML standard's parser splits them (the server
//! writes LF line ends only, which is all this reader handles).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::PATIENCE;

/// One block of the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// The `id:` field.
    pub id: Option<String>,
    /// The `event:` field.
    pub event: Option<String>,
    /// The `data:` lines joined with LF.
    pub data: Option<String>,
    /// Comment lines (without the leading colon).
    pub comments: Vec<String>,
}

/// An open stream (or a refused request: see [`Sse::status`]).
pub struct Sse {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server ended the stream (EOF or reset), as opposed to a read timeout.
    pub ended: bool,
    /// The response head, through the blank line.
    pub head: String,
}

impl Sse {
    /// `GET <target>` with extra header lines (each without CRLF).
    pub fn get(addr: SocketAddr, target: &str, headers: &[&str]) -> Sse {
        Sse::request(TcpStream::connect(addr).expect("connect"), target, headers)
    }

    /// Like [`Sse::get`] with a receive buffer of `rcvbuf` bytes set before connecting, for a
    /// client that should stop taking data early.
    pub fn get_with_rcvbuf(addr: SocketAddr, target: &str, rcvbuf: usize) -> Sse {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(rcvbuf).unwrap();
        s.connect(&addr.into()).expect("connect");
        Sse::request(s.into(), target, &[])
    }

    fn request(mut stream: TcpStream, target: &str, headers: &[&str]) -> Sse {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut req =
            format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).expect("send request");
        let mut s = Sse {
            stream,
            buf: Vec::new(),
            ended: false,
            head: String::new(),
        };
        loop {
            if let Some(i) = s.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = s.buf.drain(..i + 4).collect();
                s.head = String::from_utf8(head).expect("UTF-8 head");
                return s;
            }
            assert!(s.fill(), "no response head to {target}");
        }
    }

    /// How long a read waits before [`Sse::next`] gives up (`None` with `ended` false).
    pub fn set_read_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).unwrap();
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        super::raw::status_of(&self.head)
    }

    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 16 * 1024];
        match self.stream.read(&mut tmp) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Ok(0) | Err(_) => {
                self.ended = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    /// The next block, or `None` at EOF (or error, or timeout).
    pub fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Some(parse_block(&String::from_utf8(block).expect("UTF-8 event")));
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// The next block that is not only comments (keep-alives).
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            let e = self.next()?;
            if e.id.is_some() || e.event.is_some() || e.data.is_some() {
                return Some(e);
            }
        }
    }

    /// The rest of the body until EOF (for refused requests: their `Content-Length` body).
    pub fn rest(&mut self) -> String {
        while self.fill() {}
        String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned()
    }
}

fn parse_block(block: &str) -> Event {
    let mut e = Event::default();
    for line in block.split('\n').filter(|l| !l.is_empty()) {
        if let Some(c) = line.strip_prefix(':') {
            e.comments.push(c.trim_start().to_string());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match field {
            "id" => e.id = Some(value),
            "event" => e.event = Some(value),
            "data" => {
                e.data = Some(match e.data.take() {
                    Some(d) => format!("{d}\n{value}"),
                    None => value,
                })
            }
            other => panic!("unexpected field {other:?} in {block:?}"),
        }
    }
    e
}
