//! The HTTP/1.1 upgrade that opens a WebSocket (RFC 6455 §4), both roles, no I/O.
//!
//! Server role: [`parse_request`] reads the client's request out of whatever bytes have arrived
//! so far and either asks for more (`Ok(None)`), answers what the request wants
//! ([`Request::Upgrade`] or [`Request::Health`]), or names what is wrong with it
//! ([`HandshakeError`], which knows the HTTP response to send: [`HandshakeError::response`]).
//! [`write_response`] then appends the `101 Switching Protocols` answer.
//!
//! Client role (the load generator): [`client_key`], [`write_request`] and [`parse_response`].
//!
//! Contract for callers: keep appending bytes to one buffer and call the parser again with all
//! of it; the answer depends only on the bytes, never on how they were split across reads.
//! `consumed` is the length of the HTTP header block — any bytes after it already belong to the
//! WebSocket stream. Nothing here panics or allocates per byte on network input; the only
//! allocations are the returned `String`s.
//!
//! Decisions worth knowing:
//! - An HTTP/1.0 upgrade attempt gets **400**, not 505: RFC 9110 §15.6.6 reserves 505 for a
//!   *major* version the server does not support, and 1.0 is the same major version. httparse
//!   itself rejects any version token other than `HTTP/1.0` and `HTTP/1.1` (also 400).
//! - `GET /healthz` without `Upgrade: websocket` is a load balancer probe and is answered at any
//!   HTTP version (HAProxy's default `httpchk` speaks HTTP/1.0). A query string is ignored.
//! - `GET /sse` without `Upgrade: websocket` asks for a server-sent event stream
//!   ([`Request::EventStream`]); what it may subscribe to is the caller's business (its query is
//!   read by `hub::sse`, its credentials by the same admission as an upgrade).
//! - Request targets are passed through verbatim; routing on them is the caller's business.
//! - A request with a body (`Transfer-Encoding`, or `Content-Length` other than 0) is refused:
//!   its body would otherwise be mistaken for the first WebSocket frames.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use httparse::{Header, Status, EMPTY_HEADER};
use sha1::{Digest, Sha1};

/// Header fields parsed per message; one more is [`HandshakeError::TooManyHeaders`] (431).
/// Browsers send 10–20 on an upgrade, so 64 leaves room for proxies and cookies.
pub const MAX_HEADERS: usize = 64;

/// "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", the GUID appended to the key (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The answer to [`Request::Health`]. `Connection: close` because the caller closes right after.
pub const HEALTH_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: text/plain\r\n\
Content-Length: 3\r\n\
Connection: close\r\n\
\r\n\
ok\n";

/// What a complete, valid request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A valid WebSocket upgrade.
    Upgrade(Upgrade),
    /// A plain (non-upgrade) `GET /healthz` — for load balancers; the caller writes
    /// [`HEALTH_RESPONSE`].
    Health,
    /// A plain (non-upgrade) `GET /sse?...`: a server-sent event stream is wanted.
    EventStream(EventStream),
}

/// A request for a server-sent event stream (`GET /sse`, no upgrade): what admission and the
/// stream need from its header block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventStream {
    /// The request target as sent, e.g. `/sse?channel=news&token=abc`.
    pub path: String,
    /// The `Origin` header, if sent (browsers send it on a cross-origin `EventSource`).
    pub origin: Option<String>,
    /// The `Authorization` header, if sent once and valid UTF-8.
    pub authorization: Option<String>,
    /// The `Last-Event-ID` header an `EventSource` sends when it reconnects, if sent once and
    /// valid UTF-8.
    pub last_event_id: Option<String>,
}

/// A validated upgrade request: everything the server needs to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The request target as sent, e.g. `/chat?token=abc`.
    pub path: String,
    /// The `Sec-WebSocket-Accept` value: base64 of SHA-1(key + GUID).
    pub accept: [u8; 28],
    /// Index into the server's configured protocol list of the first protocol, in the client's
    /// order of preference, that the server supports.
    pub protocol: Option<usize>,
    /// The `Origin` header, if the client sent one (browsers always do).
    pub origin: Option<String>,
    /// The `Authorization` header, if sent once and valid UTF-8 (admission decides what it
    /// means; more than one line is treated as absent, so no credential is guessed).
    pub authorization: Option<String>,
}

/// What the server accepts in a handshake.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits<'a> {
    /// Largest header block accepted; a longer one is [`HandshakeError::HeaderTooLarge`] (431).
    pub max_header_bytes: usize,
    /// Subprotocols the server speaks, matched case-sensitively against the client's list.
    pub protocols: &'a [String],
}

/// A validated `101 Switching Protocols` answer, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Always 101: any other status is [`HandshakeError::Status`].
    pub status: u16,
    /// The subprotocol the server selected. The caller must check it is one it offered
    /// (RFC 6455 §4.1); this parser does not know the offer.
    pub protocol: Option<String>,
}

/// Everything that can be wrong with a handshake. Small and `Copy`; each server-side variant
/// knows the HTTP response that must be sent before closing ([`HandshakeError::response`]).
/// Variants from `Status` on are found in a server's response (client role): there is nothing
/// to send, the client just closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// httparse rejected the bytes (bad token, header or line ending). 400.
    #[error("malformed HTTP message")]
    Malformed,
    /// The header block is longer than the configured limit. 431.
    #[error("header block larger than the limit")]
    HeaderTooLarge,
    /// More than [`MAX_HEADERS`] header fields. 431.
    #[error("too many header fields")]
    TooManyHeaders,
    /// A method other than GET. 405 with `Allow: GET`.
    #[error("method must be GET")]
    MethodNotAllowed,
    /// An upgrade attempted over HTTP/1.0. 400.
    #[error("WebSocket upgrade requires HTTP/1.1")]
    HttpVersion,
    /// No `Upgrade: websocket` on a path other than `/healthz`. 426.
    #[error("this endpoint requires a WebSocket upgrade")]
    UpgradeRequired,
    /// `Connection` lacks the `upgrade` token. 400.
    #[error("Connection header must contain the token upgrade")]
    MissingConnectionUpgrade,
    /// `Host` missing or repeated. 400.
    #[error("exactly one Host header is required")]
    BadHost,
    /// `Sec-WebSocket-Version` missing, repeated or not 13. 426 with `Sec-WebSocket-Version: 13`.
    #[error("Sec-WebSocket-Version must be 13")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` missing, repeated, or not base64 of 16 bytes. 400.
    #[error("Sec-WebSocket-Key must appear once and decode to 16 bytes")]
    BadKey,
    /// `Origin` repeated or not UTF-8. 400.
    #[error("Origin must appear at most once, as UTF-8")]
    BadOrigin,
    /// The request announces a body. 400.
    #[error("an upgrade request must not carry a body")]
    UnexpectedBody,
    /// Client role: the server answered with this status instead of 101.
    #[error("server answered with status {0} instead of 101")]
    Status(u16),
    /// Client role: `Sec-WebSocket-Accept` missing, repeated or not matching our key.
    #[error("Sec-WebSocket-Accept missing or not matching the key")]
    BadAccept,
    /// Client role: the 101 lacks `Upgrade: websocket`.
    #[error("response lacks Upgrade: websocket")]
    BadResponseUpgrade,
    /// Client role: the 101 lacks `Connection: upgrade`.
    #[error("response lacks Connection: upgrade")]
    BadResponseConnection,
    /// Client role: `Sec-WebSocket-Protocol` repeated, a list, or not UTF-8.
    #[error("response must select at most one subprotocol")]
    BadResponseProtocol,
    /// Client role: the server enabled an extension; we never offer any.
    #[error("response enabled an extension that was not offered")]
    UnexpectedExtension,
}

impl HandshakeError {
    /// The status of the HTTP response this error calls for (server role). For errors found in
    /// a server's response (client role) it is the status that response carried.
    pub fn http_status(self) -> u16 {
        use HandshakeError::*;
        match self {
            Malformed
            | HttpVersion
            | MissingConnectionUpgrade
            | BadHost
            | BadKey
            | BadOrigin
            | UnexpectedBody => 400,
            MethodNotAllowed => 405,
            UpgradeRequired | UnsupportedVersion => 426,
            HeaderTooLarge | TooManyHeaders => 431,
            Status(code) => code,
            BadAccept
            | BadResponseUpgrade
            | BadResponseConnection
            | BadResponseProtocol
            | UnexpectedExtension => 101,
        }
    }

    /// The complete HTTP error response to send before closing: status line, `Content-Type`,
    /// `Content-Length`, `Connection: close` and a one-line body naming the problem. Empty for
    /// client-role errors, where there is nothing to send.
    pub fn response(self) -> Vec<u8> {
        let status = self.http_status();
        let reason = match status {
            400 => "Bad Request",
            405 => "Method Not Allowed",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            _ => return Vec::new(),
        };
        let body = format!("{self}\n");
        let extra = match self {
            // RFC 9110 §15.5.6: "The origin server MUST generate an Allow header field in a
            // 405 response containing a list of the target resource's currently supported
            // methods."
            HandshakeError::MethodNotAllowed => "Allow: GET\r\n",
            // RFC 6455 §4.2.2: on a version it does not understand the server sends "an
            // appropriate HTTP error code (such as 426 Upgrade Required) and a
            // |Sec-WebSocket-Version| header field indicating the version(s) the server is
            // capable of understanding". RFC 9110 §15.5.22: a 426 "MUST send an Upgrade header
            // field", and §7.8: a sender of Upgrade "MUST also send an "Upgrade" connection
            // option in the Connection header field".
            HandshakeError::UpgradeRequired | HandshakeError::UnsupportedVersion => {
                "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n"
            }
            _ => "",
        };
        let connection = if status == 426 {
            "Upgrade, close"
        } else {
            "close"
        };
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: {connection}\r\n{extra}\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Server role: parses and validates the request in `buf` (see the module doc for the contract).
///
/// `Ok(None)`: incomplete, wait for more bytes. `Ok(Some((req, consumed)))`: `consumed` is the
/// length of the header block. `Err`: write `err.response()` and close. Only the first
/// `max_header_bytes` of `buf` are looked at: a block that has not ended by then is
/// [`HandshakeError::HeaderTooLarge`], so the limit also holds for a block that arrives whole.
pub fn parse_request(
    buf: &[u8],
    limits: &ServerLimits<'_>,
) -> Result<Option<(Request, usize)>, HandshakeError> {
    let mut headers = [EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let window = &buf[..buf.len().min(limits.max_header_bytes)];
    let Some(consumed) = block_len(req.parse(window), buf.len(), limits.max_header_bytes)? else {
        return Ok(None);
    };
    // A complete parse fills all three; the fallbacks are unreachable but keep this panic-free.
    let (method, path, version) = (
        req.method.unwrap_or(""),
        req.path.unwrap_or(""),
        req.version,
    );
    let headers = req.headers;

    // §4.1: "The method of the request MUST be GET". Methods are case-sensitive (RFC 9110 §9.1).
    if method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    // §4.2.1: "An |Upgrade| header field containing the value "websocket", treated as an ASCII
    // case-insensitive value." Without it this is not a WebSocket attempt at all; an Upgrade to
    // something else may be ignored (RFC 9110 §7.8), which lets a probe through.
    if !has_token(headers, "upgrade", b"websocket") {
        return match path.split('?').next() {
            Some("/healthz") => Ok(Some((Request::Health, consumed))),
            Some("/sse") => event_stream(headers, path).map(|r| Some((r, consumed))),
            _ => Err(HandshakeError::UpgradeRequired),
        };
    }
    // §4.1: "the HTTP version MUST be at least 1.1". httparse reports 0 for HTTP/1.0.
    if version != Some(1) {
        return Err(HandshakeError::HttpVersion);
    }
    // §4.2.1: "A |Connection| header field that includes the token "Upgrade", treated as an
    // ASCII case-insensitive value."
    if !has_token(headers, "connection", b"upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    // §4.2.1: "A |Host| header field containing the server's authority." RFC 9112 §3.2: a server
    // "MUST respond with a 400 (Bad Request) status code to any HTTP/1.1 request message that
    // lacks a Host header field and to any request message that contains more than one".
    if single(headers, "host").ok().flatten().is_none() {
        return Err(HandshakeError::BadHost);
    }
    // The body check: bytes after the header block are WebSocket frames, never a request body.
    if values(headers, "transfer-encoding").next().is_some()
        || values(headers, "content-length").any(|v| v.trim_ascii() != b"0")
    {
        return Err(HandshakeError::UnexpectedBody);
    }
    // §4.2.1: "A |Sec-WebSocket-Version| header field, with a value of 13." Checked before the
    // key so that a client of an older draft (which has no Sec-WebSocket-Key) learns which
    // version to retry with (§4.4).
    match single(headers, "sec-websocket-version") {
        Ok(Some(v)) if v.trim_ascii() == b"13" => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
    // §4.2.1: "A |Sec-WebSocket-Key| header field with a base64-encoded [...] value that, when
    // decoded, is 16 bytes in length."
    let key = match single(headers, "sec-websocket-key") {
        Ok(Some(k)) if key_is_valid(k.trim_ascii()) => k.trim_ascii(),
        _ => return Err(HandshakeError::BadKey),
    };
    let origin = origin(headers)?;
    let authorization = match single(headers, "authorization") {
        Ok(Some(a)) => std::str::from_utf8(a.trim_ascii()).ok().map(str::to_owned),
        _ => None,
    };
    Ok(Some((
        Request::Upgrade(Upgrade {
            path: path.to_owned(),
            accept: accept_key(key),
            protocol: select_protocol(headers, limits.protocols),
            origin,
            authorization,
        }),
        consumed,
    )))
}

/// The `Origin` field, if any (§4.2.1: "Optionally, an |Origin| header field"): one, in
/// UTF-8, or the request is refused.
fn origin(headers: &[Header<'_>]) -> Result<Option<String>, HandshakeError> {
    match single(headers, "origin") {
        Ok(None) => Ok(None),
        Ok(Some(o)) => std::str::from_utf8(o.trim_ascii())
            .map(|s| Some(s.to_owned()))
            .map_err(|_| HandshakeError::BadOrigin),
        Err(()) => Err(HandshakeError::BadOrigin),
    }
}

/// The fields of a `GET /sse` request. Bytes after its header block would be a second
/// request, which a stream never reads, so a body is refused as on an upgrade.
fn event_stream(headers: &[Header<'_>], path: &str) -> Result<Request, HandshakeError> {
    if values(headers, "transfer-encoding").next().is_some()
        || values(headers, "content-length").any(|v| v.trim_ascii() != b"0")
    {
        return Err(HandshakeError::UnexpectedBody);
    }
    let text = |name| match single(headers, name) {
        Ok(Some(v)) => std::str::from_utf8(v.trim_ascii()).ok().map(str::to_owned),
        _ => None,
    };
    let origin = origin(headers)?;
    // Two resume positions cannot both be honoured; guessing one could hide a gap.
    if single(headers, "last-event-id").is_err() {
        return Err(HandshakeError::Malformed);
    }
    Ok(Request::EventStream(EventStream {
        path: path.to_owned(),
        origin,
        authorization: text("authorization"),
        last_event_id: text("last-event-id"),
    }))
}

/// §4.2.2: the selected subprotocol "MUST be derived from the client's handshake, specifically
/// by selecting one of the values from the |Sec-WebSocket-Protocol| field". The client lists
/// them "ordered by preference" (§4.2.1), possibly over several lines (RFC 9110 §5.3), so the
/// first client token the server knows wins.
fn select_protocol(headers: &[Header<'_>], protocols: &[String]) -> Option<usize> {
    values(headers, "sec-websocket-protocol")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .find_map(|t| protocols.iter().position(|p| p.as_bytes() == t))
}

/// §4.2.2: "concatenate this with the Globally Unique Identifier [...] A SHA-1 hash (160 bits)
/// [...] of this concatenated value is obtained [...] this hash is then base64-encoded".
/// `key` is used as sent (the base64 text, not its decoding).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let digest = Sha1::new().chain_update(key).chain_update(GUID).finalize();
    let mut out = [0u8; 28];
    // 20 bytes always encode to exactly 28 (padded) characters, so this cannot fail.
    let written = STANDARD.encode_slice(digest, &mut out).unwrap_or(0);
    debug_assert_eq!(written, 28);
    out
}

/// Appends the `101 Switching Protocols` response for `up`. `protocols` must be the list the
/// request was parsed with; an index outside it is treated as no protocol selected.
pub fn write_response(out: &mut Vec<u8>, up: &Upgrade, protocols: &[String]) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&up.accept);
    out.extend_from_slice(b"\r\n");
    if let Some(p) = up.protocol.and_then(|i| protocols.get(i)) {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Client role: 16 random bytes to the 24-character base64 `Sec-WebSocket-Key`. §4.1: "a
/// nonce consisting of a randomly selected 16-byte value that has been base64-encoded".
pub fn client_key(random: [u8; 16]) -> [u8; 24] {
    let mut out = [0u8; 24];
    // 16 bytes always encode to exactly 24 (padded) characters, so this cannot fail.
    let written = STANDARD.encode_slice(random, &mut out).unwrap_or(0);
    debug_assert_eq!(written, 24);
    out
}

/// Client role: appends a `GET` upgrade request. `host` is `host[:port]`; `protocols` are
/// offered in order of preference; `extra_headers` are written verbatim, one line each.
pub fn write_request(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    key: &[u8; 24],
    protocols: &[&str],
    extra_headers: &[(String, String)],
) {
    let mut line = |parts: &[&[u8]]| {
        parts.iter().for_each(|p| out.extend_from_slice(p));
        out.extend_from_slice(b"\r\n");
    };
    line(&[b"GET ", path.as_bytes(), b" HTTP/1.1"]);
    line(&[b"Host: ", host.as_bytes()]);
    line(&[b"Upgrade: websocket"]);
    line(&[b"Connection: Upgrade"]);
    line(&[b"Sec-WebSocket-Key: ", key]);
    line(&[b"Sec-WebSocket-Version: 13"]);
    if !protocols.is_empty() {
        line(&[b"Sec-WebSocket-Protocol: ", protocols.join(", ").as_bytes()]);
    }
    for (name, value) in extra_headers {
        line(&[name.as_bytes(), b": ", value.as_bytes()]);
    }
    line(&[]);
}

/// Client role: parses and validates the server's answer to a request sent with `key`.
///
/// `Ok(None)`: incomplete. `Ok(Some((resp, consumed)))`: a valid 101, `consumed` being the
/// header block length. A non-101 status is [`HandshakeError::Status`]; the checks on a 101
/// follow §4.1 ("the client MUST _Fail the WebSocket Connection_" on each).
pub fn parse_response(
    buf: &[u8],
    key: &[u8; 24],
    max_header_bytes: usize,
) -> Result<Option<(Response, usize)>, HandshakeError> {
    let mut headers = [EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let window = &buf[..buf.len().min(max_header_bytes)];
    let Some(consumed) = block_len(resp.parse(window), buf.len(), max_header_bytes)? else {
        return Ok(None);
    };
    let status = resp.code.unwrap_or(0);
    let headers = resp.headers;
    // §4.1: "If the status code received from the server is not 101, the client handles the
    // response per HTTP procedures" — for us, the attempt has failed.
    if status != 101 {
        return Err(HandshakeError::Status(status));
    }
    // §4.1: "If the response lacks an |Upgrade| header field or the |Upgrade| header field
    // contains a value that is not an ASCII case-insensitive match for the value "websocket"".
    match single(headers, "upgrade") {
        Ok(Some(v)) if v.trim_ascii().eq_ignore_ascii_case(b"websocket") => {}
        _ => return Err(HandshakeError::BadResponseUpgrade),
    }
    // §4.1: "If the response lacks a |Connection| header field or the |Connection| header field
    // doesn't contain a token that is an ASCII case-insensitive match for the value "Upgrade"".
    if !has_token(headers, "connection", b"upgrade") {
        return Err(HandshakeError::BadResponseConnection);
    }
    // §4.1: "If the response lacks a |Sec-WebSocket-Accept| header field or the
    // |Sec-WebSocket-Accept| contains a value other than the base64-encoded SHA-1 of the
    // concatenation of the |Sec-WebSocket-Key| [...] but ignoring any leading and trailing
    // whitespace".
    match single(headers, "sec-websocket-accept") {
        Ok(Some(v)) if v.trim_ascii() == accept_key(key) => {}
        _ => return Err(HandshakeError::BadAccept),
    }
    // §4.1: an extension "that was not present in the client's handshake" fails the connection;
    // we never offer one.
    if values(headers, "sec-websocket-extensions").any(|v| !v.trim_ascii().is_empty()) {
        return Err(HandshakeError::UnexpectedExtension);
    }
    // §4.2.2: the server selects "a single value" (or none).
    let protocol = match single(headers, "sec-websocket-protocol") {
        Ok(None) => None,
        Ok(Some(v)) => match std::str::from_utf8(v.trim_ascii()) {
            Ok(p) if !p.is_empty() && !p.contains(',') => Some(p.to_owned()),
            _ => return Err(HandshakeError::BadResponseProtocol),
        },
        Err(()) => return Err(HandshakeError::BadResponseProtocol),
    };
    Ok(Some((Response { status, protocol }, consumed)))
}

/// Maps httparse's verdict on the first `max` bytes of a `buf_len`-byte buffer to ours:
/// `Some(header block length)`, `None` for "need more", or the error.
fn block_len(
    parsed: httparse::Result<usize>,
    buf_len: usize,
    max: usize,
) -> Result<Option<usize>, HandshakeError> {
    match parsed {
        Ok(Status::Complete(n)) => Ok(Some(n)),
        // The window already holds `max` bytes and the block has not ended: it never will
        // within the limit (RFC 6585 §5: 431 Request Header Fields Too Large).
        Ok(Status::Partial) if buf_len >= max => Err(HandshakeError::HeaderTooLarge),
        Ok(Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::TooManyHeaders),
        Err(_) => Err(HandshakeError::Malformed),
    }
}

/// The values of every field line named `name` (ASCII case-insensitive, RFC 9110 §5.1).
fn values<'h>(headers: &'h [Header<'h>], name: &'h str) -> impl Iterator<Item = &'h [u8]> + 'h {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// The value of a field that must appear at most once: `Err(())` when it is repeated.
fn single<'h>(headers: &'h [Header<'h>], name: &'h str) -> Result<Option<&'h [u8]>, ()> {
    let mut it = values(headers, name);
    let first = it.next();
    match it.next() {
        None => Ok(first),
        Some(_) => Err(()),
    }
}

/// Whether any `name` line holds `token` in its comma-separated list, ignoring ASCII case and
/// optional whitespace (RFC 9110 §5.6.1). Several lines combine as one list (RFC 9110 §5.3).
fn has_token(headers: &[Header<'_>], name: &str, token: &[u8]) -> bool {
    values(headers, name)
        .flat_map(|v| v.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Canonical padded base64 of exactly 16 bytes: 24 characters, the last two `==`.
fn key_is_valid(key: &[u8]) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24 && matches!(STANDARD.decode_slice(key, &mut decoded), Ok(16))
}

#[cfg(test)]
mod tests;
