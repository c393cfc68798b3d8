//! Between hyper's request and response types and the router's: what a request head tells
//! the router, the checks that refuse a request before routing, the bounded read of a body,
//! and a [`Reply`] as a response. hyper does the framing (parsing, `Content-Length`, chunked
//! bodies, `Date`, HEAD without a body, keep-alive); what is left here is pure apart from the
//! body read, so it is tested without sockets.
//!
//! What hyper accepts that this API still refuses, before routing (RFC 9112 unless said
//! otherwise):
//! - HTTP/1.1 needs exactly one `Host` (§3.2: "A server MUST respond with a 400 (Bad Request)
//!   status code to any HTTP/1.1 request message that lacks a Host header field and to any
//!   request message that contains more than one Host header field line"). hyper leaves this
//!   check to the server.
//! - A declared `Content-Length` over [`MAX_BODY`] is 413 whatever the route, decided from the
//!   head alone, so no byte of such a body is read (nor `100 Continue` sent to invite it).
//!   A chunked body has no declared length; it is cut off at [`MAX_BODY`] while it is read.

use std::error::Error;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode, Version};

use super::routes::Reply;
use super::{Incoming, MAX_BODY};

/// The request as the router sees it: method, target and credentials, borrowed from the head.
pub(super) fn incoming(head: &Parts) -> Incoming<'_> {
    Incoming {
        method: head.method.as_str(),
        target: target(head),
        authorization: head
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    }
}

/// The path and query of the request target. "A server MUST accept the absolute-form in
/// requests" (§3.2.2), so `http://host/path?q` routes as `/path?q`; a target without a path
/// is `/`.
fn target(head: &Parts) -> &str {
    head.uri.path_and_query().map_or("/", |pq| pq.as_str())
}

/// The refusal of a request that fails a check made before routing (see the module docs), or
/// `None` if it passes them. `body` is only asked for its declared length.
pub(super) fn refusal(head: &Parts, body: &impl Body) -> Option<Reply> {
    let hosts = head.headers.get_all(HOST).iter().count();
    if hosts > 1 || (head.version == Version::HTTP_11 && hosts == 0) {
        return Some(Reply::error(
            400,
            "exactly one Host header field is required",
        ));
    }
    // A chunked body declares nothing: its lower bound is 0.
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Some(too_large());
    }
    None
}

/// The 413 for a body over [`MAX_BODY`], declared or found while reading.
pub(super) fn too_large() -> Reply {
    Reply::error(413, &format!("request body over {MAX_BODY} bytes"))
}

/// Reads a whole body of at most [`MAX_BODY`] bytes, waiting at most `within` for all of it:
/// 413 past the limit, 408 if it is not all there in time ("the server did not receive a
/// complete request message within the time that it was prepared to wait", RFC 9110
/// §15.5.9), 400 if it cannot be read (a malformed chunk, a client that left mid-body).
/// Nothing past the limit is buffered: the read stops at the chunk that crosses it.
pub(super) async fn read_body<B>(body: B, within: Duration) -> Result<Bytes, Reply>
where
    B: Body,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let collect = Limited::new(body, MAX_BODY).collect();
    match tokio::time::timeout(within, collect).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(Reply::error(400, "cannot read the request body")),
        Err(_) => Err(Reply::error(408, "request body not received in time")),
    }
}

/// `reply` as a response: its status, `Content-Type` and extra headers, plus
/// `Cache-Control: no-store` (every answer is a live reading). hyper adds `Content-Length`
/// and `Date`, and leaves the body out for HEAD. A header whose name or value could break
/// the framing (a CR or LF) is left out rather than sent.
pub(super) fn response(reply: Reply) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(reply.body)));
    *res.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = res.headers_mut();
    if let Ok(value) = HeaderValue::from_str(reply.content_type) {
        headers.insert(CONTENT_TYPE, value);
    }
    for (name, value) in &reply.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
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
    use http_body_util::{Empty, StreamBody};
    use hyper::body::Frame;
    use hyper::Request;
    use std::convert::Infallible;

    fn head(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    /// A body delivered in chunks of `size` bytes, `count` of them, with no declared length.
    fn chunked(size: usize, count: usize) -> impl Body<Data = Bytes, Error = Infallible> {
        let chunks = (0..count).map(move |_| Ok(Frame::data(Bytes::from(vec![b' '; size]))));
        StreamBody::new(futures_util::stream::iter(chunks))
    }

    fn read(body: impl Body<Data = Bytes, Error = Infallible>) -> Result<Bytes, Reply> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(read_body(body, Duration::from_secs(5)))
    }

    #[test]
    fn the_router_sees_method_path_query_and_credentials() {
        let h = head(
            Request::post("http://h:1/publish?x=1")
                .header("Authorization", "Bearer k")
                .body(())
                .unwrap(),
        );
        let i = incoming(&h);
        assert_eq!((i.method, i.target), ("POST", "/publish?x=1"));
        assert_eq!(i.authorization, Some("Bearer k"));
        let h = head(Request::get("http://h").body(()).unwrap());
        assert_eq!(
            (incoming(&h).target, incoming(&h).authorization),
            ("/", None)
        );
    }

    #[test]
    fn host_is_required_once_in_http_1_1() {
        let with_hosts = |version, hosts: &[&str]| {
            let mut req = Request::get("/healthz").version(version);
            for h in hosts {
                req = req.header(HOST, *h);
            }
            refusal(&head(req.body(()).unwrap()), &Empty::<Bytes>::new()).map(|r| r.status)
        };
        assert_eq!(with_hosts(Version::HTTP_11, &["a"]), None);
        assert_eq!(with_hosts(Version::HTTP_11, &[]), Some(400));
        assert_eq!(with_hosts(Version::HTTP_11, &["a", "b"]), Some(400));
        assert_eq!(with_hosts(Version::HTTP_10, &[]), None);
        assert_eq!(with_hosts(Version::HTTP_10, &["a", "a"]), Some(400));
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_unread() {
        let h = head(
            Request::post("/publish")
                .header(HOST, "a")
                .body(())
                .unwrap(),
        );
        let at_limit = Full::new(Bytes::from(vec![b' '; MAX_BODY]));
        assert_eq!(refusal(&h, &at_limit), None);
        let over = Full::new(Bytes::from(vec![b' '; MAX_BODY + 1]));
        let r = refusal(&h, &over).unwrap();
        assert_eq!(r.status, 413);
        assert!(r.body.contains("\"error\""));
        // Chunked: nothing declared, so nothing to refuse yet.
        assert_eq!(refusal(&h, &chunked(MAX_BODY, 2)), None);
    }

    #[test]
    fn bodies_are_read_up_to_the_limit() {
        assert_eq!(read(chunked(1024, 1024)).unwrap().len(), MAX_BODY);
        assert_eq!(read(chunked(0, 3)).unwrap().len(), 0);
        assert_eq!(read(chunked(1024, 1025)).unwrap_err().status, 413);
        assert_eq!(read(chunked(MAX_BODY + 1, 1)).unwrap_err().status, 413);
    }

    #[test]
    fn a_body_that_never_ends_is_408() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let endless = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, Infallible>,
        >());
        let r = rt.block_on(read_body(endless, Duration::from_millis(10)));
        assert_eq!(r.unwrap_err().status, 408);
    }

    #[test]
    fn replies_keep_their_type_and_headers_but_never_a_line_break() {
        let reply = Reply::text(405, "no\n")
            .with_header("Allow", "GET, HEAD")
            .with_header("X-Sneaky", "a\r\nSet-Cookie: b");
        let res = response(reply);
        assert_eq!(res.status(), 405);
        let h = res.headers();
        assert_eq!(h[CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(h["allow"], "GET, HEAD");
        assert_eq!(h[CACHE_CONTROL], "no-store");
        assert!(!h.contains_key("x-sneaky") && !h.contains_key("set-cookie"));
        let odd = Reply::text(1000, "");
        assert_eq!(response(odd).status(), 500);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%C3%A9+").as_deref(), Some("a bé+"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        for bad in ["%", "%2", "%zz", "%ff", "%+1"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }
}
