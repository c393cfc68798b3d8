//! The admin API's HTTP/1.1 wire format, pure: a request head in bytes to a [`Head`] (or the
//! [`HeadError`] that says which status refuses it), and a [`Reply`] to response bytes. No
//! sockets and no clocks here (the `Date` value is passed in), so every rule is tested on byte
//! strings; `server` does the reading and writing.
//!
//! What a request may be (RFC 9112 unless said otherwise):
//! - The head (request line and header fields) is at most [`MAX_HEAD`] bytes with at most
//!   [`MAX_HEADERS`] fields; more is 431. A request line longer than that is 431 too rather than
//!   414: both mean "this head does not fit", and one answer keeps the reader simple.
//! - `Content-Length` is the only body framing understood. A malformed value, a list, or the
//!   field given twice is 400 (§6.3 rule 5). A value over [`MAX_BODY`] is 413, decided here so
//!   no byte of such a body is ever read or buffered.
//! - Any `Transfer-Encoding` is refused: 501 alone ("A server that receives a request message
//!   with a transfer coding it does not understand SHOULD respond with 501", §6.1), 400 next to
//!   a `Content-Length` (§6.3 rule 3: such a message "ought to be handled as an error"; it is
//!   the shape of request smuggling). Admin clients send bodies with a length.
//! - HTTP/1.1 needs exactly one `Host` (§3.2: "A server MUST respond with a 400 (Bad Request)
//!   status code to any HTTP/1.1 request message that lacks a Host header field and to any
//!   request message that contains more than one Host header field line").
//! - `Expect: 100-continue` is noted for HTTP/1.1 only ("A server that receives a 100-continue
//!   expectation in an HTTP/1.0 request MUST ignore that expectation", RFC 9110 §10.1.1); other
//!   expectations are ignored.
//!
//! Every response carries `Content-Length` and `Connection: close`: the server answers one
//! request per connection.

use std::time::{SystemTime, UNIX_EPOCH};

use super::routes::Reply;
use super::MAX_BODY;

/// Largest request head (request line plus header fields) read: 16 KiB. Bigger is 431.
pub(super) const MAX_HEAD: usize = 16 * 1024;

/// Most header fields a request may have. More is 431.
pub(super) const MAX_HEADERS: usize = 64;

/// The interim response sent before reading a body the client is holding back.
pub(super) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A parsed request head: what routing needs and how to read the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    /// The method as sent (methods are case-sensitive, RFC 9110 §9.1).
    pub method: String,
    /// The path and query: the origin-form target, or the path of an absolute-form one.
    pub target: String,
    /// The first `Authorization` field, if any and if it is text.
    pub authorization: Option<String>,
    /// The declared body length, at most [`MAX_BODY`]; `None` means no body (§6.3 rule 7).
    pub content_length: Option<usize>,
    /// True if the client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

impl Head {
    /// True for HEAD, whose response has the GET headers and no content.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Why a request head is refused, each with its status. Small and `Copy`, like the
/// protocol errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeadError {
    /// Not HTTP/1.x syntax (httparse refused it).
    Malformed,
    /// Head over [`MAX_HEAD`] bytes or over [`MAX_HEADERS`] fields.
    TooLarge,
    /// `Content-Length` malformed, a list, or given twice.
    BadLength,
    /// `Transfer-Encoding` together with `Content-Length`.
    AmbiguousLength,
    /// `Transfer-Encoding` (chunked or any other): not implemented.
    TransferEncoding,
    /// An HTTP/1.1 request without `Host`, or any request with two.
    BadHost,
    /// `Content-Length` over [`MAX_BODY`].
    BodyTooLarge,
}

impl HeadError {
    /// The status that refuses the request.
    pub fn status(self) -> u16 {
        match self {
            HeadError::Malformed
            | HeadError::BadLength
            | HeadError::AmbiguousLength
            | HeadError::BadHost => 400,
            HeadError::TooLarge => 431,
            HeadError::TransferEncoding => 501,
            HeadError::BodyTooLarge => 413,
        }
    }

    /// The refusal, as a JSON error like every other.
    pub fn reply(self) -> Reply {
        let message = match self {
            HeadError::Malformed => "malformed HTTP request",
            HeadError::TooLarge => "request head over 16 KiB or over 64 header fields",
            HeadError::BadLength => "malformed or repeated Content-Length",
            HeadError::AmbiguousLength => "both Transfer-Encoding and Content-Length",
            HeadError::TransferEncoding => {
                "Transfer-Encoding is not supported; send Content-Length"
            }
            HeadError::BadHost => "exactly one Host header field is required",
            HeadError::BodyTooLarge => return Reply::error(413, &body_too_large()),
        };
        Reply::error(self.status(), message)
    }
}

/// The 413 message, shared with the router's own body check.
fn body_too_large() -> String {
    format!("request body over {MAX_BODY} bytes")
}

/// Parses the request head at the start of `bytes`: `Ok(None)` if it is not complete yet (and
/// may still fit), else the head and its length in bytes (the body, if any, follows).
pub(super) fn parse_head(bytes: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if bytes.len() >= MAX_HEAD => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    // Complete means httparse filled these in.
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed);
    };
    let http11 = version == 1;
    let field = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };

    let lengths: Vec<&[u8]> = field("Content-Length").map(|h| h.value).collect();
    let content_length = match lengths[..] {
        [] => None,
        [one] => Some(parse_length(one).ok_or(HeadError::BadLength)?),
        _ => return Err(HeadError::BadLength),
    };
    if field("Transfer-Encoding").next().is_some() {
        return Err(match content_length {
            Some(_) => HeadError::AmbiguousLength,
            None => HeadError::TransferEncoding,
        });
    }
    let hosts = field("Host").count();
    if hosts > 1 || (http11 && hosts == 0) {
        return Err(HeadError::BadHost);
    }
    let content_length = match content_length {
        Some(n) if n > MAX_BODY as u64 => return Err(HeadError::BodyTooLarge),
        // At most MAX_BODY, so it fits.
        Some(n) => Some(usize::try_from(n).map_err(|_| HeadError::BodyTooLarge)?),
        None => None,
    };
    let authorization = field("Authorization")
        .next()
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::to_owned);
    let expect_continue =
        http11 && field("Expect").any(|h| trim_ows(h.value).eq_ignore_ascii_case(b"100-continue"));
    let head = Head {
        method: method.to_owned(),
        target: origin_form(target).to_owned(),
        authorization,
        content_length,
        expect_continue,
    };
    Ok(Some((head, len)))
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6), around optional whitespace. A value too big for
/// a u64 saturates: it is over [`MAX_BODY`] all the same.
fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = trim_ows(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// `value` without leading or trailing spaces and tabs (OWS).
fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// The path and query of `target`. "A server MUST accept the absolute-form in requests"
/// (RFC 9112 §3.2.2), so `http://host/path?q` routes as `/path?q`; other forms are returned as
/// sent (and match no route).
fn origin_form(target: &str) -> &str {
    let lower = |n: usize| target.get(..n).map(str::to_ascii_lowercase);
    let scheme_len = if lower(7).as_deref() == Some("http://") {
        7
    } else if lower(8).as_deref() == Some("https://") {
        8
    } else {
        return target;
    };
    let rest = &target[scheme_len..];
    match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => &rest[i..],
        // `http://host` or `http://host?q`: the path is empty, which means `/`.
        _ => "/",
    }
}

/// The response bytes for `reply`: status line, its headers plus `Cache-Control: no-store`,
/// `Date`, `Content-Length` and `Connection: close`, then the body unless `head_only`. A header
/// whose name or value could break the framing (a CR or LF) is left out rather than sent.
pub(super) fn encode(reply: &Reply, head_only: bool, date: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + if head_only { 0 } else { reply.body.len() });
    let status = reply.status;
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason(status)).as_bytes());
    let body_len = reply.body.len().to_string();
    let fixed = [
        ("Content-Type", reply.content_type),
        ("Cache-Control", "no-store"),
        ("Date", date),
        ("Content-Length", body_len.as_str()),
        ("Connection", "close"),
    ];
    let extra = reply.headers.iter().map(|(k, v)| (*k, v.as_str()));
    for (name, value) in fixed
        .into_iter()
        .take(1)
        .chain(extra)
        .chain(fixed.into_iter().skip(1))
    {
        if name.is_empty() || name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
            continue;
        }
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(reply.body.as_bytes());
    }
    out
}

/// The reason phrase for the statuses this API sends; empty for others, which is allowed
/// ("A client SHOULD ignore the reason-phrase content", RFC 9112 §4).
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// `now` as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the `Date` format of
/// RFC 9110 §5.6.7. A clock before 1970 reads as 1970.
pub(super) fn http_date(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months[(month - 1) as usize];
    format!("{weekday}, {day:02} {month} {year} {h:02}:{m:02}:{s:02} GMT")
}

/// (year, month 1..=12, day 1..=31) of a count of days since 1970-01-01, by the
/// era-of-400-years method (March-based years, so the leap day ends a year).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, 0..=146_096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Decodes `%XX` escapes (RFC 3986 §2.1); `None` for a bad escape or a result that is not
/// UTF-8. `+` stays `+`: this is a path, not a form.
pub(super) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Option<(Head, usize)>, HeadError> {
        parse_head(text.as_bytes())
    }

    fn head(text: &str) -> Head {
        match parse(text) {
            Ok(Some((h, n))) => {
                assert_eq!(n, text.find("\r\n\r\n").unwrap() + 4, "{text:?}");
                h
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn a_plain_request_and_its_fields() {
        let h = head(
            "POST /publish?x=1 HTTP/1.1\r\nHost: a\r\nauthorization:  Bearer k \r\n\
             content-length: 12\r\nExpect: 100-Continue\r\n\r\n{\"body\"",
        );
        assert_eq!(h.method, "POST");
        assert_eq!(h.target, "/publish?x=1");
        assert_eq!(h.authorization.as_deref(), Some("Bearer k"));
        assert_eq!(h.content_length, Some(12));
        assert!(h.expect_continue && !h.is_head());
        let h = head("HEAD /healthz HTTP/1.0\r\nExpect: 100-continue\r\n\r\n");
        assert_eq!((h.content_length, h.authorization.as_deref()), (None, None));
        assert!(h.is_head());
        assert!(!h.expect_continue, "ignored in HTTP/1.0");
        // Leading empty lines are skipped (RFC 9112 §2.2).
        assert_eq!(head("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").target, "/");
    }

    #[test]
    fn absolute_form_routes_by_its_path() {
        let cases = [
            ("http://h:1/metrics?a", "/metrics?a"),
            ("HTTPS://h/x", "/x"),
            ("http://h", "/"),
            ("http://h?q", "/"),
            ("*", "*"),
            ("/p", "/p"),
        ];
        for (target, want) in cases {
            assert_eq!(origin_form(target), want, "{target}");
        }
        let h = head("GET http://a/healthz HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.target, "/healthz");
    }

    #[test]
    fn incomplete_heads_wait_until_they_no_longer_fit() {
        let full = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
        for end in 0..full.len() {
            assert_eq!(parse(&full[..end]), Ok(None), "{:?}", &full[..end]);
        }
        let mut long = format!(
            "GET /healthz HTTP/1.1\r\nHost: a\r\nX: {}",
            "y".repeat(MAX_HEAD)
        );
        assert_eq!(parse(&long[..MAX_HEAD - 1]), Ok(None));
        assert_eq!(parse(&long[..MAX_HEAD]), Err(HeadError::TooLarge));
        long.push_str("\r\n\r\n");
        assert_eq!(parse(&long), Err(HeadError::TooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let r = parse(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n"));
        assert_eq!(r, Err(HeadError::TooLarge));
        let fits: String = (0..MAX_HEADERS - 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        head(&format!("GET / HTTP/1.1\r\nHost: a\r\n{fits}\r\n"));
    }

    #[test]
    fn garbage_is_malformed() {
        let garbage: &[&[u8]] = &[
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            b"G\0T / HTTP/1.1\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
        ];
        for bytes in garbage {
            assert_eq!(parse_head(bytes), Err(HeadError::Malformed), "{bytes:?}");
        }
    }

    #[test]
    fn content_length_and_transfer_encoding_rules() {
        let with = |fields: &str| parse(&format!("POST /p HTTP/1.1\r\nHost: a\r\n{fields}\r\n"));
        let length = |fields: &str| with(fields).map(|r| r.map(|(h, _)| h.content_length));
        assert_eq!(length("Content-Length: 0\r\n"), Ok(Some(Some(0))));
        assert_eq!(length("Content-Length: \t 7 \r\n"), Ok(Some(Some(7))));
        assert_eq!(length("Content-Length: 007\r\n"), Ok(Some(Some(7))));
        let max = format!("Content-Length: {MAX_BODY}\r\n");
        assert_eq!(length(&max), Ok(Some(Some(MAX_BODY))));
        for bad in ["", "-1", "+1", "1 2", "1,1", "0x10", "1.0", "½"] {
            let r = with(&format!("Content-Length: {bad}\r\n"));
            assert_eq!(r, Err(HeadError::BadLength), "{bad:?}");
        }
        let twice = "Content-Length: 1\r\ncontent-length: 1\r\n";
        assert_eq!(with(twice), Err(HeadError::BadLength));
        for huge in [
            format!("{}", MAX_BODY + 1),
            "1000000000000".to_owned(),
            "99999999999999999999999999999999".to_owned(),
        ] {
            let r = with(&format!("Content-Length: {huge}\r\n"));
            assert_eq!(r, Err(HeadError::BodyTooLarge), "{huge}");
        }
        assert_eq!(
            with("Transfer-Encoding: chunked\r\n"),
            Err(HeadError::TransferEncoding)
        );
        assert_eq!(
            with("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"),
            Err(HeadError::AmbiguousLength)
        );
        assert_eq!(HeadError::TransferEncoding.status(), 501);
        assert_eq!(HeadError::BodyTooLarge.reply().status, 413);
    }

    #[test]
    fn host_is_required_once_in_http_1_1() {
        let r = parse("GET / HTTP/1.1\r\n\r\n");
        assert_eq!(r, Err(HeadError::BadHost));
        let r = parse("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n");
        assert_eq!(r, Err(HeadError::BadHost));
        head("GET / HTTP/1.0\r\n\r\n");
    }

    #[test]
    fn responses_are_framed_and_closed() {
        let reply = Reply::text(200, "ok\n").with_header("Allow", "GET");
        let date = "Thu, 01 Jan 1970 00:00:00 GMT";
        let bytes = encode(&reply, false, date);
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nAllow: GET\r\n\
             Cache-Control: no-store\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n\
             Content-Length: 3\r\nConnection: close\r\n\r\nok\n"
        );
        let head_only = String::from_utf8(encode(&reply, true, date)).unwrap();
        assert_eq!(head_only, text.strip_suffix("ok\n").unwrap());
        let sneaky = Reply::text(418, "").with_header("X", "a\r\nSet-Cookie: b");
        let text = String::from_utf8(encode(&sneaky, false, date)).unwrap();
        assert!(text.starts_with("HTTP/1.1 418 \r\n"), "{text}");
        assert!(!text.contains("Set-Cookie") && text.contains("Content-Length: 0\r\n"));
    }

    #[test]
    fn dates_are_imf_fixdates() {
        let at = |secs| http_date(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        // The example in RFC 9110 §5.6.7.
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(4_107_542_399), "Sun, 28 Feb 2100 23:59:59 GMT");
        assert_eq!(at(4_107_542_400), "Mon, 01 Mar 2100 00:00:00 GMT");
        assert_eq!(at(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
    }
}
