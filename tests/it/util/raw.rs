//! Raw sockets: a client that writes exactly the bytes a test builds (valid or not) and reads
//! the server's frames and HTTP responses back without interpreting more than it must.
//!
//! The frame builder is written here rather than borrowed from `starling::proto`, so the tests
//! do not share a bug with the code under test, and so it can build frames the engine's encoder
//! never would (RSV bits, unmasked client frames, long control frames).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::PATIENCE;

/// The masking key of every raw client frame (any value works; this one is not symmetric, so
/// an unmasking bug shows).
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The sample key of RFC 6455 §1.3 and the accept value it must produce.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// `Sec-WebSocket-Accept` for [`SAMPLE_KEY`] (RFC 6455 §1.3).
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Opcodes by name, as wire nibbles.
pub mod op {
    /// Continuation.
    pub const CONT: u8 = 0x0;
    /// Text.
    pub const TEXT: u8 = 0x1;
    /// Binary.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// A frame on the wire: FIN, the three RSV bits (as the low 3 bits of `rsv`), the opcode
/// nibble, an optional mask key and the payload (masked here when a key is given). The length
/// uses the minimal encoding.
pub fn build(fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | ((rsv & 7) << 4) | (opcode & 0xF)];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A final, masked client frame: the common case.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    build(true, 0, opcode, Some(MASK), payload)
}

/// A masked client frame with FIN as given (for fragments).
pub fn fragment(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    build(fin, 0, opcode, Some(MASK), payload)
}

/// A close payload: the code big-endian, then the reason bytes.
pub fn close_body(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// A valid upgrade request for `path` with the RFC sample key and any extra header lines
/// (each ending in `\r\n`).
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// RSV1-3 as the low three bits.
    pub rsv: u8,
    /// Opcode nibble.
    pub opcode: u8,
    /// Whether the server (wrongly) masked it; the payload is returned unmasked either way.
    pub masked: bool,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// For a close frame: the status code, if the payload carries one.
    pub fn close_code(&self) -> Option<u16> {
        match self.payload.as_slice() {
            [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
            _ => None,
        }
    }
}

/// How reading stopped short of what was asked.
#[derive(Debug)]
pub enum End {
    /// The server closed its side (read returned 0).
    Eof,
    /// The connection was reset.
    Reset,
    /// Nothing arrived within the read timeout.
    Timeout,
    /// Any other socket error.
    Io(io::Error),
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> End {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => End::Timeout,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => End::Reset,
            _ => End::Io(e),
        }
    }
}

/// A TCP client that sends raw bytes and reads raw frames, buffering what it has read ahead.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// A plain TCP connection with read and write timeouts of [`PATIENCE`], so nothing hangs.
    pub fn tcp(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect to the server");
        RawClient::from_stream(stream)
    }

    /// Connects with a receive buffer of `rcvbuf` bytes, set before connecting so the window
    /// stays small (setting it also turns off the kernel's receive-buffer autotuning), and
    /// upgrades. For clients that should stop taking data early.
    pub fn open_with_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> RawClient {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(rcvbuf).unwrap();
        s.connect(&addr.into()).expect("connect to the server");
        let mut c = RawClient::from_stream(s.into());
        c.upgrade();
        c
    }

    /// Wraps a connected stream (e.g. one with a small receive buffer set before connecting).
    pub fn from_stream(stream: TcpStream) -> RawClient {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects and completes a valid upgrade; panics if the answer is not 101.
    pub fn open(addr: SocketAddr) -> RawClient {
        let mut c = RawClient::tcp(addr);
        c.upgrade();
        c
    }

    /// Sends a valid upgrade request and reads the 101 (bytes after it stay buffered).
    pub fn upgrade(&mut self) {
        self.send(upgrade_request("/", "").as_bytes())
            .expect("send upgrade request");
        let head = self.read_head().expect("upgrade response");
        assert!(
            head.starts_with("HTTP/1.1 101 "),
            "expected 101, got {head:?}"
        );
    }

    /// The socket, for timeouts and shutdowns.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes all of `bytes`.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn fill(&mut self) -> Result<(), End> {
        let mut tmp = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => return Err(End::Eof),
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn need(&mut self, n: usize) -> Result<(), End> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(())
    }

    /// Reads an HTTP response head (through the blank line) and returns it as text.
    pub fn read_head(&mut self) -> Result<String, End> {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..i + 4).collect();
                return Ok(String::from_utf8_lossy(&head).into_owned());
            }
            self.fill()?;
        }
    }

    /// Reads exactly `n` bytes (e.g. an HTTP body of known length).
    pub fn read_bytes(&mut self, n: usize) -> Result<Vec<u8>, End> {
        self.need(n)?;
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads one frame.
    pub fn read_frame(&mut self) -> Result<Frame, End> {
        self.need(2)?;
        let (b0, b1) = (self.buf[0], self.buf[1]);
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7F {
            126 => {
                self.need(4)?;
                (u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4)
            }
            127 => {
                self.need(10)?;
                let mut l = [0u8; 8];
                l.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(l), 10)
            }
            n => (u64::from(n), 2),
        };
        let key = if masked {
            self.need(at + 4)?;
            let k = [
                self.buf[at],
                self.buf[at + 1],
                self.buf[at + 2],
                self.buf[at + 3],
            ];
            at += 4;
            Some(k)
        } else {
            None
        };
        let len = usize::try_from(len).expect("frame length fits memory");
        self.need(at + len)?;
        let mut payload = self.buf[at..at + len].to_vec();
        self.buf.drain(..at + len);
        if let Some(k) = key {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        Ok(Frame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 7,
            opcode: b0 & 0xF,
            masked,
            payload,
        })
    }

    /// Reads one frame and panics unless it is an unfragmented data or control frame of
    /// `opcode` carrying `payload`.
    pub fn expect_frame(&mut self, opcode: u8, payload: &[u8]) {
        match self.read_frame() {
            Ok(f) => {
                assert!(
                    f.fin && f.rsv == 0 && !f.masked,
                    "server frame header wrong: {f:?}"
                );
                assert_eq!(f.opcode, opcode, "opcode of {f:?}");
                assert!(
                    f.payload == payload,
                    "payload of opcode {opcode:#x}: got {} bytes, want {} bytes",
                    f.payload.len(),
                    payload.len()
                );
            }
            Err(e) => panic!("expected a frame with opcode {opcode:#x}, got {e:?}"),
        }
    }

    /// After a protocol failure: the next frame must be a close with `code` and a UTF-8 reason
    /// that fits a control frame, and then the TCP connection must end (EOF or reset).
    pub fn expect_close_then_eof(&mut self, code: u16) -> Result<(), String> {
        let f = self
            .read_frame()
            .map_err(|e| format!("expected close {code}, got {e:?}"))?;
        if f.opcode != op::CLOSE {
            return Err(format!(
                "expected close {code}, got opcode {:#x} with {} bytes",
                f.opcode,
                f.payload.len()
            ));
        }
        if f.close_code() != Some(code) {
            return Err(format!(
                "expected close code {code}, got {:?} (payload {:?})",
                f.close_code(),
                f.payload
            ));
        }
        if !f.fin || f.masked || f.rsv != 0 || f.payload.len() > 125 {
            return Err(format!("malformed close frame from server: {f:?}"));
        }
        if std::str::from_utf8(&f.payload[2..]).is_err() {
            return Err(format!("close reason is not UTF-8: {:?}", f.payload));
        }
        self.expect_eof()
    }

    /// The server must end the TCP connection: EOF or reset, with no more bytes before it.
    pub fn expect_eof(&mut self) -> Result<(), String> {
        if !self.buf.is_empty() {
            return Err(format!(
                "expected EOF, got {} more bytes: {:?}",
                self.buf.len(),
                &self.buf[..self.buf.len().min(32)]
            ));
        }
        match self.fill() {
            Err(End::Eof) | Err(End::Reset) => Ok(()),
            Err(End::Timeout) => Err("connection still open: no EOF within the timeout".into()),
            Err(End::Io(e)) => Err(format!("expected EOF, got error {e}")),
            Ok(()) => Err(format!(
                "expected EOF, got {} more bytes: {:?}",
                self.buf.len(),
                &self.buf[..self.buf.len().min(32)]
            )),
        }
    }
}

/// One HTTP exchange on a fresh connection: sends `request`, reads the response head and the
/// body its `Content-Length` announces. Returns (status, head, body) and the client, so the
/// caller can check what happens next (EOF for errors, frames for 101).
pub fn http(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>, RawClient) {
    let mut c = RawClient::tcp(addr);
    c.send(request).expect("send request");
    let head = c
        .read_head()
        .unwrap_or_else(|e| panic!("no HTTP response to {:?}: {e:?}", show(request)));
    let status = status_of(&head);
    let body = match header(&head, "content-length") {
        Some(n) => c
            .read_bytes(n.parse().expect("numeric Content-Length"))
            .expect("response body"),
        None => Vec::new(),
    };
    (status, head, body, c)
}

/// The status code of a response head.
pub fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

/// The value of header `name` (case-insensitive) in a response head, trimmed.
pub fn header(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Bytes shown as text for messages (long requests cut short).
pub fn show(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
    if bytes.len() > 200 {
        format!("{s}... ({} bytes)", bytes.len())
    } else {
        s
    }
}
