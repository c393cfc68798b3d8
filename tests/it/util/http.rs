//! A small HTTP/1.1 client for the admin API: one request per connection (`Connection: close`),
//! the response read to EOF and parsed with `httparse`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::PATIENCE;

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    /// The status code.
    pub status: u16,
    /// The header lines as (name, value), in order.
    pub headers: Vec<(String, String)>,
    /// The body, as text.
    pub body: String,
}

impl Resp {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let h = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name));
        h.map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the response if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// One request on a fresh connection (`Connection: close`), read to EOF and parsed.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    request_with_body(addr, method, path, headers, b"")
}

/// [`request`] with a body, its `Content-Length` declared when it is not empty.
pub fn request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// [`request_with_body`] that reports a server that is not there (connection refused, reset,
/// no response) as an error instead of panicking: for polling a server that may be down.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp, String> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    try_raw_request(addr, &bytes)
}

/// Sends `bytes` as they are on a fresh connection; the response read to EOF and parsed.
pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> Resp {
    try_raw_request(addr, bytes).unwrap_or_else(|e| panic!("{addr}: {e}"))
}

fn try_raw_request(addr: SocketAddr, bytes: &[u8]) -> Result<Resp, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s.write_all(bytes).map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("response read to EOF: {e}"))?;
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut hs);
    let n = match r.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        other => {
            let text = String::from_utf8_lossy(&raw);
            return Err(format!("bad response {other:?}: {text}"));
        }
    };
    Ok(Resp {
        status: r.code.unwrap(),
        headers: r
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into()))
            .collect(),
        body: String::from_utf8(raw[n..].to_vec()).map_err(|e| format!("body: {e}"))?,
    })
}
