//! The admin HTTP API: health, readiness, Prometheus metrics and JSON stats, served on its own
//! thread and port, never on a shard. It is off the hot path by construction: it only reads the
//! snapshots each shard publishes (every ~250 ms) and the server's drain flag, so a scrape
//! costs the shards nothing.
//!
//! # Contract
//!
//! - [`start`] binds synchronously (a bad or busy address is an `Err` at once), then serves
//!   requests one at a time on a thread named `api`. [`ApiServer::stop`] (or dropping the
//!   [`ApiServer`]) unblocks that thread and joins it.
//! - Every route is one line of `ROUTES`. `dispatch` is a pure function from (method, path,
//!   `Authorization`) to a `Reply`, so routing and auth are tested without sockets. Unknown
//!   paths get 404, methods other than GET and HEAD get 405 with `Allow`, both with a JSON
//!   error body.
//! - With an API key, every route not marked public needs `Authorization: Bearer <key>`; the
//!   token is compared in constant time and a missing or wrong one gets 401 with
//!   `WWW-Authenticate: Bearer`. `/healthz` and `/readyz` stay public because load balancers and
//!   orchestrators probe them without credentials, and they reveal only whether we serve.
//! - Without a key the API must listen on a loopback address: the counters say how busy the
//!   server is and which clients misbehave, which is not for the open network. [`start`]
//!   refuses otherwise, as `Config::validate` does earlier with a clearer message.
//!
//! HTTP parsing is `tiny_http`'s. Its accept thread ends on the first `accept` error (EMFILE
//! when the process is at its open-file limit, the very moment an operator wants metrics), so
//! the serving loop rebuilds it on the same listening socket after a pause instead of going
//! silent for the rest of the process's life.

mod prometheus;
mod routes;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::metrics::Published;
use crate::shard::Server;
use routes::Reply;

/// What the API reads: the shards' published counters, the drain flag, and when the process
/// started. Cheap to clone; nothing in it is written by the API.
#[derive(Debug, Clone)]
pub struct ApiView {
    /// One snapshot slot per shard, in shard order.
    pub published: Vec<Published>,
    /// Set once a drain has started; `/readyz` answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    /// Process start, for the uptime figures.
    pub started: Instant,
}

impl ApiView {
    /// The view of a running server, with `started` as the start of the process.
    pub fn of(server: &Server, started: Instant) -> ApiView {
        ApiView {
            published: server.published(),
            draining: server.draining_flag(),
            started,
        }
    }

    /// True once the server is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Answered without credentials even when a key is configured.
    Public,
    /// Needs the API key when one is configured.
    Key,
}

/// One route: a path, who may call it, and its GET handler.
struct Route {
    path: &'static str,
    access: Access,
    handler: fn(&ApiView) -> Reply,
}

impl Route {
    const fn new(path: &'static str, access: Access, handler: fn(&ApiView) -> Reply) -> Route {
        Route {
            path,
            access,
            handler,
        }
    }
}

/// Every route the API serves. All are read-only, so GET (and HEAD, which `tiny_http` answers
/// with the GET headers and no body) is the only method.
const ROUTES: &[Route] = &[
    Route::new("/healthz", Access::Public, routes::healthz),
    Route::new("/readyz", Access::Public, routes::readyz),
    Route::new("/metrics", Access::Key, routes::metrics),
    Route::new("/stats", Access::Key, routes::stats),
];

/// The value of `Allow` on a 405.
const ALLOW: &str = "GET, HEAD";

/// Pause before rebuilding the HTTP server after an accept error, so a process stuck at its
/// open-file limit is not also spinning.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Routes one request. `method` is the request method as sent, `target` the request target
/// (a query string is ignored), `authorization` the `Authorization` header if any.
fn dispatch(
    view: &ApiView,
    key: Option<&str>,
    method: &str,
    target: &str,
    authorization: Option<&str>,
) -> Reply {
    let path = target.split('?').next().unwrap_or(target);
    let Some(route) = ROUTES.iter().find(|r| r.path == path) else {
        return Reply::error(404, "not found");
    };
    if method != "GET" && method != "HEAD" {
        return Reply::error(405, "method not allowed").with_header("Allow", ALLOW);
    }
    if let (Access::Key, Some(key)) = (route.access, key) {
        if !authorized(authorization, key) {
            return Reply::error(401, "missing or wrong API key")
                .with_header("WWW-Authenticate", "Bearer realm=\"starling\"");
        }
    }
    (route.handler)(view)
}

/// True if `authorization` is `Bearer <key>`. "It uses a case-insensitive token as a means to
/// identify the authentication scheme" (RFC 7235 §2.1), so `bearer` is accepted too.
fn authorized(authorization: Option<&str>, key: &str) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    let value = value.trim();
    let Some((scheme, token)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("Bearer")
        && constant_time_eq(token.trim().as_bytes(), key.as_bytes())
}

/// Compares two byte strings in time that depends only on their lengths, never on where they
/// first differ, so the key cannot be guessed one byte at a time from response times.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    // black_box keeps the optimiser from turning the loop into an early exit.
    std::hint::black_box(diff) == 0
}

/// A running admin API. Stopped and joined by [`ApiServer::stop`] or on drop.
#[derive(Debug)]
pub struct ApiServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the API thread and [`ApiServer`] share to stop the loop.
#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    /// The `tiny_http` server currently serving, to unblock it.
    current: Mutex<Option<Arc<tiny_http::Server>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("stopping", &self.stopping)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and joins the API thread. A request being answered is finished first.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Under the lock, so a server the thread is about to install sees the flag instead.
        if let Ok(current) = self.shared.current.lock() {
            if let Some(http) = current.as_ref() {
                http.unblock();
            }
        }
        thread.thread().unpark();
        if thread.join().is_err() {
            tracing::error!("the admin API thread panicked");
        }
        // Dropping the server closes the listening socket (its accept thread lets go of it as
        // soon as it wakes).
        if let Ok(mut current) = self.shared.current.lock() {
            current.take();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Binds `addr` and serves the admin API on a new thread. `key`, when set, is the bearer token
/// every non-public route requires. Without a key, `addr` must be a loopback address
/// (`InvalidInput` otherwise; see the module docs for why).
pub fn start(addr: SocketAddr, key: Option<String>, view: ApiView) -> io::Result<ApiServer> {
    if key.is_none() && !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("admin API on non-loopback {addr} needs an API key"),
        ));
    }
    let listener = TcpListener::bind(addr)?;
    let local_addr = listener.local_addr()?;
    let shared = Arc::new(Shared::default());
    let inner = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || serve(listener, key, view, inner))?;
    tracing::info!(addr = %local_addr, "admin API listening");
    Ok(ApiServer {
        local_addr,
        shared,
        thread: Some(thread),
    })
}

/// The API thread: serve until stopped, rebuilding `tiny_http` after an accept error.
fn serve(listener: TcpListener, key: Option<String>, view: ApiView, shared: Arc<Shared>) {
    loop {
        let http = match listener
            .try_clone()
            .map_err(|e| e.to_string())
            .and_then(|l| tiny_http::Server::from_listener(l, None).map_err(|e| e.to_string()))
        {
            Ok(h) => Arc::new(h),
            Err(error) => {
                tracing::warn!(%error, "admin API cannot restart its listener; retrying");
                if pause_or_stop(&shared) {
                    return;
                }
                continue;
            }
        };
        match shared.current.lock() {
            Ok(mut current) if !shared.stopping.load(Ordering::SeqCst) => {
                *current = Some(Arc::clone(&http));
            }
            _ => return,
        }
        let error = answer_until_error(&http, key.as_deref(), &view);
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        tracing::warn!(%error, "admin API accept failed; restarting it");
        if pause_or_stop(&shared) {
            return;
        }
    }
}

/// Answers requests until `recv` fails (an accept error, or `unblock` from [`ApiServer::stop`]).
fn answer_until_error(http: &tiny_http::Server, key: Option<&str>, view: &ApiView) -> io::Error {
    loop {
        let request = match http.recv() {
            Ok(r) => r,
            Err(e) => return e,
        };
        let authorization = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str().to_owned());
        let method = request.method().as_str().to_owned();
        let reply = dispatch(view, key, &method, request.url(), authorization.as_deref());
        if let Err(e) = request.respond(reply.into_response()) {
            // The client went away mid-response; nothing to do for it.
            tracing::debug!(error = %e, "admin API response not delivered");
        }
    }
}

/// Sleeps [`RESTART_PAUSE`] (woken early by `stop`); true if the API is stopping.
fn pause_or_stop(shared: &Shared) -> bool {
    std::thread::park_timeout(RESTART_PAUSE);
    shared.stopping.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counters;

    fn view() -> ApiView {
        let p = Published::default();
        p.store(&Counters {
            messages_in: 7,
            ..Counters::default()
        });
        ApiView {
            published: vec![p],
            draining: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
        }
    }

    fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn constant_time_eq_matches_slice_equality() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"a", b""),
            (b"key", b"key"),
            (b"key", b"kex"),
            (b"key", b"key2"),
            (b"\0", b""),
        ];
        for (a, b) in cases {
            assert_eq!(constant_time_eq(a, b), a == b, "{a:?} vs {b:?}");
            assert_eq!(constant_time_eq(b, a), a == b, "{b:?} vs {a:?}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_token_exact() {
        assert!(authorized(Some("Bearer s3cret"), "s3cret"));
        assert!(authorized(Some("bearer  s3cret "), "s3cret"));
        assert!(!authorized(Some("Bearer s3cre"), "s3cret"));
        assert!(!authorized(Some("Basic s3cret"), "s3cret"));
        assert!(!authorized(Some("Bearer"), "s3cret"));
        assert!(!authorized(Some("s3cret"), "s3cret"));
        assert!(!authorized(None, "s3cret"));
    }

    #[test]
    fn routing_auth_and_errors() {
        let v = view();
        let key = Some("k");
        // Public probes need no key.
        assert_eq!(dispatch(&v, key, "GET", "/healthz", None).status, 200);
        assert_eq!(dispatch(&v, key, "GET", "/readyz?full=1", None).status, 200);
        // Protected routes: 401 with a challenge, 200 with the key.
        let r = dispatch(&v, key, "GET", "/metrics", None);
        assert_eq!(r.status, 401);
        assert!(header(&r, "WWW-Authenticate")
            .unwrap()
            .starts_with("Bearer"));
        assert_eq!(
            dispatch(&v, key, "GET", "/stats", Some("Bearer x")).status,
            401
        );
        assert_eq!(
            dispatch(&v, key, "GET", "/stats", Some("Bearer k")).status,
            200
        );
        // Without a key everything is open (the address is loopback).
        assert_eq!(dispatch(&v, None, "GET", "/metrics", None).status, 200);
        // 404 and 405.
        let r = dispatch(&v, key, "GET", "/nope", None);
        assert_eq!(r.status, 404);
        assert!(r.body.contains("\"error\""));
        let r = dispatch(&v, key, "POST", "/healthz", None);
        assert_eq!(r.status, 405);
        assert_eq!(header(&r, "Allow"), Some(ALLOW));
        assert_eq!(dispatch(&v, None, "HEAD", "/stats", None).status, 200);
    }

    #[test]
    fn readyz_follows_the_drain_flag() {
        let v = view();
        assert_eq!(dispatch(&v, None, "GET", "/readyz", None).status, 200);
        v.draining.store(true, Ordering::SeqCst);
        let r = dispatch(&v, None, "GET", "/readyz", None);
        assert_eq!(r.status, 503);
        assert!(r.body.contains("draining"));
    }

    #[test]
    fn refuses_a_public_address_without_a_key() {
        let e = start("0.0.0.0:0".parse().unwrap(), None, view()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn starts_serves_and_stops() {
        use std::io::{Read, Write};
        let api = start("127.0.0.1:0".parse().unwrap(), None, view()).unwrap();
        let mut s = std::net::TcpStream::connect(api.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("ok\n"), "{text}");
        let addr = api.local_addr();
        api.stop();
        // The socket closes once tiny_http's accept thread wakes; wait for that, boundedly.
        let end = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(Instant::now() < end, "still listening after stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
