//! The admin HTTP API: health, readiness, Prometheus metrics and JSON stats, plus publishing to
//! channels and listing them, served on its own thread and port, never on a shard. Reads are
//! off the hot path by construction: they only see the snapshots each shard publishes (every
//! ~250 ms) and the server's drain flag, so a scrape costs the shards nothing. `POST /publish`
//! and `GET /channels` go to the shards as commands, through the [`Engine`] the view holds,
//! exactly like a client's publish does. `POST /drain` starts the server's drain (as SIGTERM
//! does) with an optional pace and close code of its own; `client` is the other end of it,
//! `starling drain`.
//!
//! # Contract
//!
//! - [`start`] binds synchronously (a bad or busy address is an `Err` at once), then serves
//!   on a thread named `api`: hyper's HTTP/1.1 server on a single-threaded tokio runtime,
//!   many connections at once, each handler on a small pool of blocking threads (see
//!   `server`). [`ApiServer::stop`] (or dropping the [`ApiServer`]) closes the listener, lets
//!   requests in progress finish within a bound, and joins the thread.
//! - Every route is one line of `ROUTES`, naming its method by its handler's kind: a GET
//!   route also answers HEAD, a POST route gets the request body. `dispatch` is a function from
//!   (method, path, `Authorization`) to the handler to call or the refusal, and touches no
//!   socket, so routing and auth are tested without sockets. Unknown paths get 404, a method
//!   the path does not serve gets 405 with `Allow` listing those it does, both with a JSON
//!   error body.
//! - A request whose `Content-Length` is over [`MAX_BODY`] gets 413 before routing, whatever
//!   its route, and no byte of its body is read. Otherwise a POST body is read only after the
//!   route and the key check pass (that is also when `100 Continue` is sent to a client that
//!   asked for it); a chunked body is accepted and cut off with 413 once over [`MAX_BODY`].
//! - The HTTP framing is hyper's; what a client can claim of this process is bounded by the
//!   server (head size, body size, time to send each, idle keep-alive, connections at once;
//!   see `server`). Nothing a client sends can crash the process or keep other clients from
//!   being answered.
//! - With an API key, every route not marked public needs `Authorization: Bearer <key>`; the
//!   token is compared in constant time and a missing or wrong one gets 401 with
//!   `WWW-Authenticate: Bearer`. `/healthz` and `/readyz` stay public because load balancers and
//!   orchestrators probe them without credentials, and they reveal only whether we serve.
//! - Without a key the API must listen on a loopback address: the counters say how busy the
//!   server is and which clients misbehave, which is not for the open network. [`start`]
//!   refuses otherwise, as `Config::validate` does earlier with a clearer message.
//!
//! Files: this one holds the view, the routing table, dispatch and the key check; `routes`
//! the handlers; `prometheus` the text format; `http` the edge between hyper's types and
//! ours (checks before routing, the bounded body read, a `Reply` as a response); `server` the
//! thread, its runtime, its connections and their limits; `client` the `starling drain`
//! command's side.

pub mod client;
mod cluster;
mod http;
mod prometheus;
mod routes;
mod server;

pub use server::{start, start_with, ApiServer, Timeouts};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use crate::config::DrainPlan;
use crate::metrics::Published;
use crate::shard::{Members, PublishError, Server};
use routes::Reply;

/// The largest request body accepted (`POST /publish`): 1 MiB. Bigger gets 413.
pub const MAX_BODY: usize = 1 << 20;

/// What the API asks of the engine beyond reading counters: the channel operations. [`Server`]
/// is the real one; routes are written against the trait so they are tested without shards.
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// Publishes `data` to `channel`, waiting at most `timeout` for its sequence number
    /// ([`Server::publish`]).
    fn publish(
        &self,
        channel: &str,
        data: &RawValue,
        timeout: Duration,
    ) -> Result<u64, PublishError>;

    /// Channels with subscribers and how many, by name ([`Server::channels`]).
    fn channels(&self, timeout: Duration) -> Vec<(String, usize)>;

    /// Who is in `channel` ([`Server::presence`]).
    fn presence(&self, channel: &str, timeout: Duration) -> Result<Members, PublishError>;

    /// Sends `data` to every connection of `user` ([`Server::direct`]).
    fn direct(&self, user: &str, data: &RawValue, timeout: Duration) -> Result<u64, PublishError>;

    /// Closes every connection of `user` ([`Server::disconnect`]).
    fn disconnect(&self, user: &str, timeout: Duration) -> usize;

    /// The drain the server is configured for ([`Server::drain_plan`]).
    fn drain_plan(&self) -> DrainPlan;

    /// Starts a drain with `plan`; false if one had already started ([`Server::drain_with`]).
    fn drain(&self, plan: DrainPlan) -> bool;
}

impl Engine for Server {
    fn publish(
        &self,
        channel: &str,
        data: &RawValue,
        timeout: Duration,
    ) -> Result<u64, PublishError> {
        Server::publish(self, channel, data, timeout)
    }

    fn channels(&self, timeout: Duration) -> Vec<(String, usize)> {
        Server::channels(self, timeout)
    }

    fn presence(&self, channel: &str, timeout: Duration) -> Result<Members, PublishError> {
        Server::presence(self, channel, timeout)
    }

    fn direct(&self, user: &str, data: &RawValue, timeout: Duration) -> Result<u64, PublishError> {
        Server::direct(self, user, data, timeout)
    }

    fn disconnect(&self, user: &str, timeout: Duration) -> usize {
        Server::disconnect(self, user, timeout)
    }

    fn drain_plan(&self) -> DrainPlan {
        Server::drain_plan(self)
    }

    fn drain(&self, plan: DrainPlan) -> bool {
        Server::drain_with(self, plan)
    }
}

/// What the API reads, and the engine it publishes through. Cheap to clone; the API writes to
/// none of it.
#[derive(Debug, Clone)]
pub struct ApiView {
    /// One snapshot slot per shard, in shard order.
    pub published: Vec<Published>,
    /// Set once a drain has started; `/readyz` answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    /// Process start, for the uptime figures.
    pub started: Instant,
    /// Publishing and listing channels. For a real server this is the server itself, so the
    /// API keeps it alive until the API thread has been joined.
    pub engine: Arc<dyn Engine>,
    /// The Redis bus's state (readiness, registry, counters); `None` with the local bus.
    pub bus: Option<Arc<crate::bus::BusState>>,
}

impl ApiView {
    /// The view of a running server, with `started` as the start of the process. The view
    /// holds a clone of `server` until the API is stopped.
    pub fn of(server: &Arc<Server>, started: Instant) -> ApiView {
        ApiView {
            published: server.published(),
            draining: server.draining_flag(),
            started,
            engine: Arc::clone(server) as Arc<dyn Engine>,
            bus: server.bus(),
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

/// A route's handler; its kind is the route's method.
#[derive(Debug, Clone, Copy)]
enum Handler {
    /// GET, and HEAD (answered with the GET headers and no body).
    Get(fn(&ApiView) -> Reply),
    /// POST, given the body (at most [`MAX_BODY`] bytes).
    Post(fn(&ApiView, &[u8]) -> Reply),
    /// GET (and HEAD) on a path with one `{}` segment, given that segment percent-decoded.
    GetAt(fn(&ApiView, &str) -> Reply),
    /// POST on a path with one `{}` segment, given that segment percent-decoded and the body.
    PostAt(fn(&ApiView, &str, &[u8]) -> Reply),
}

impl Handler {
    /// The methods this handler answers, as `Allow` lists them.
    fn methods(self) -> &'static [&'static str] {
        match self {
            Handler::Get(_) | Handler::GetAt(_) => &["GET", "HEAD"],
            Handler::Post(_) | Handler::PostAt(_) => &["POST"],
        }
    }
}

/// One route: a path, who may call it, and its handler.
struct Route {
    path: &'static str,
    access: Access,
    handler: Handler,
}

impl Route {
    const fn get(path: &'static str, access: Access, f: fn(&ApiView) -> Reply) -> Route {
        Route {
            path,
            access,
            handler: Handler::Get(f),
        }
    }

    const fn post(path: &'static str, access: Access, f: fn(&ApiView, &[u8]) -> Reply) -> Route {
        Route {
            path,
            access,
            handler: Handler::Post(f),
        }
    }

    const fn get_at(path: &'static str, access: Access, f: fn(&ApiView, &str) -> Reply) -> Route {
        Route {
            path,
            access,
            handler: Handler::GetAt(f),
        }
    }

    const fn post_at(
        path: &'static str,
        access: Access,
        f: fn(&ApiView, &str, &[u8]) -> Reply,
    ) -> Route {
        Route {
            path,
            access,
            handler: Handler::PostAt(f),
        }
    }

    /// Whether `path` is this route's: `Some(None)` for an exact path, `Some(Some(segment))`
    /// for a path with `{}`, whose segment (still percent-encoded) is non-empty and may hold
    /// slashes (channel names do).
    fn matches<'p>(&self, path: &'p str) -> Option<Option<&'p str>> {
        let Some((prefix, suffix)) = self.path.split_once("{}") else {
            return (self.path == path).then_some(None);
        };
        let rest = path.strip_prefix(prefix)?.strip_suffix(suffix)?;
        (!rest.is_empty()).then_some(Some(rest))
    }
}

/// Every route the API serves. A path may appear once per method.
const ROUTES: &[Route] = &[
    Route::get("/healthz", Access::Public, routes::healthz),
    Route::get("/readyz", Access::Public, routes::readyz),
    Route::get("/metrics", Access::Key, routes::metrics),
    Route::get("/stats", Access::Key, routes::stats),
    Route::get("/nodes", Access::Key, cluster::nodes),
    Route::get("/channels", Access::Key, routes::channels),
    Route::post("/publish", Access::Key, routes::publish),
    Route::get_at("/channels/{}/presence", Access::Key, routes::presence),
    Route::post_at("/users/{}/disconnect", Access::Key, routes::disconnect),
    Route::post("/direct", Access::Key, routes::direct),
    Route::post("/drain", Access::Key, routes::drain),
];

/// One request as the router sees it: its head only, so that routing and the key check are
/// over before any of the body is read.
struct Incoming<'a> {
    /// The method as sent.
    method: &'a str,
    /// The request target; a query string is ignored.
    target: &'a str,
    /// The `Authorization` header, if any.
    authorization: Option<&'a str>,
}

/// A request that passed routing: the handler to run and the path segment it gets. The
/// body, when [`Call::wants_body`], is read only once a `Call` exists, so a request refused by
/// routing never has its body read (nor invited with `100 Continue`).
#[derive(Debug)]
struct Call {
    handler: Handler,
    /// The `{}` segment, percent-decoded; empty for an exact path.
    segment: String,
}

impl Call {
    /// True for POST routes, the ones given the request body.
    fn wants_body(&self) -> bool {
        matches!(self.handler, Handler::Post(_) | Handler::PostAt(_))
    }

    /// Runs the handler with `body` (empty for routes that take none). It may block while it
    /// waits for the shards, within their timeouts, so the server runs it off its event loop.
    fn run(&self, view: &ApiView, body: &[u8]) -> Reply {
        match self.handler {
            Handler::Get(f) => f(view),
            Handler::GetAt(f) => f(view, &self.segment),
            Handler::Post(f) => f(view, body),
            Handler::PostAt(f) => f(view, &self.segment, body),
        }
    }
}

/// Routes one request: 404, 405, 401 in that order, and 400 for a path segment that is not
/// percent-encoded UTF-8; otherwise the call to make. The body limit (413) is the server's,
/// since it is decided while reading.
fn dispatch(key: Option<&str>, req: &Incoming<'_>) -> Result<Call, Reply> {
    let path = req.target.split('?').next().unwrap_or(req.target);
    let mut on_path = ROUTES
        .iter()
        .filter_map(|r| Some((r, r.matches(path)?)))
        .peekable();
    if on_path.peek().is_none() {
        return Err(Reply::error(404, "not found"));
    }
    let Some((route, segment)) = on_path.find(|(r, _)| r.handler.methods().contains(&req.method))
    else {
        return Err(Reply::error(405, "method not allowed").with_header("Allow", &allow(path)));
    };
    if let (Access::Key, Some(key)) = (route.access, key) {
        if !authorized(req.authorization, key) {
            return Err(Reply::error(401, "missing or wrong API key")
                .with_header("WWW-Authenticate", "Bearer realm=\"starling\""));
        }
    }
    let segment = match segment.map(http::percent_decode) {
        Some(None) => return Err(Reply::error(400, "the path is not percent-encoded UTF-8")),
        Some(Some(s)) => s,
        None => String::new(),
    };
    Ok(Call {
        handler: route.handler,
        segment,
    })
}

/// `Allow` for `path`: every method some route on it answers.
fn allow(path: &str) -> String {
    let methods: Vec<&str> = ROUTES
        .iter()
        .filter(|r| r.matches(path).is_some())
        .flat_map(|r| r.handler.methods().iter().copied())
        .collect();
    methods.join(", ")
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::metrics::Counters;
    use std::sync::Mutex;

    /// An engine without shards: records publishes, numbers them per channel, and fails the
    /// way the server does for a non-hub app, a bad name, or a channel called `slow`.
    #[derive(Debug, Default)]
    pub(in crate::api) struct FakeEngine {
        pub not_hub: bool,
        pub published: Mutex<Vec<(String, String)>>,
        pub listing: Vec<(String, usize)>,
        /// The drain started, if any.
        pub drained: Mutex<Option<DrainPlan>>,
    }

    impl Engine for FakeEngine {
        fn publish(&self, ch: &str, data: &RawValue, _: Duration) -> Result<u64, PublishError> {
            match ch {
                _ if self.not_hub => Err(PublishError::NotHub),
                _ if !crate::hub::wire::valid_channel(ch) => Err(PublishError::BadChannel),
                "slow" => Err(PublishError::Timeout),
                _ => {
                    let mut log = self.published.lock().unwrap();
                    log.push((ch.to_owned(), data.get().to_owned()));
                    Ok(log.iter().filter(|(c, _)| c == ch).count() as u64)
                }
            }
        }

        fn channels(&self, _: Duration) -> Vec<(String, usize)> {
            self.listing.clone()
        }

        fn presence(&self, ch: &str, _: Duration) -> Result<Members, PublishError> {
            match ch {
                _ if self.not_hub => Err(PublishError::NotHub),
                _ if !crate::hub::wire::valid_channel(ch) => Err(PublishError::BadChannel),
                _ => Ok(Members {
                    members: vec![(ch.into(), 1)],
                    unlisted: 0,
                }),
            }
        }

        fn direct(&self, user: &str, _: &RawValue, _: Duration) -> Result<u64, PublishError> {
            match user {
                _ if self.not_hub => Err(PublishError::NotHub),
                _ if !crate::hub::wire::valid_user(user) => Err(PublishError::BadUser),
                _ => Ok(user.len() as u64),
            }
        }

        fn disconnect(&self, user: &str, _: Duration) -> usize {
            user.len()
        }

        fn drain_plan(&self) -> DrainPlan {
            crate::config::Config::default().drain_plan()
        }

        fn drain(&self, plan: DrainPlan) -> bool {
            let mut started = self.drained.lock().unwrap();
            let first = started.is_none();
            if first {
                *started = Some(plan);
            }
            first
        }
    }

    impl FakeEngine {
        /// Every publish so far: (channel, data as given).
        pub fn log(&self) -> Vec<(String, String)> {
            self.published.lock().unwrap().clone()
        }
    }

    pub(in crate::api) fn view_with(engine: &Arc<FakeEngine>) -> ApiView {
        let p = Published::default();
        p.store(&Counters {
            messages_in: 7,
            ..Counters::default()
        });
        ApiView {
            published: vec![p],
            draining: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
            engine: Arc::clone(engine) as Arc<dyn Engine>,
            bus: None,
        }
    }

    fn view() -> ApiView {
        view_with(&Arc::default())
    }

    fn request(
        v: &ApiView,
        key: Option<&str>,
        method: &str,
        target: &str,
        auth: Option<&str>,
    ) -> Reply {
        let incoming = Incoming {
            method,
            target,
            authorization: auth,
        };
        match dispatch(key, &incoming) {
            Ok(call) => call.run(v, b""),
            Err(refused) => refused,
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
        assert_eq!(request(&v, key, "GET", "/healthz", None).status, 200);
        assert_eq!(request(&v, key, "GET", "/readyz?full=1", None).status, 200);
        // Protected routes: 401 with a challenge, 200 with the key.
        let r = request(&v, key, "GET", "/metrics", None);
        assert_eq!(r.status, 401);
        assert!(header(&r, "WWW-Authenticate")
            .unwrap()
            .starts_with("Bearer"));
        assert_eq!(
            request(&v, key, "GET", "/stats", Some("Bearer x")).status,
            401
        );
        assert_eq!(
            request(&v, key, "GET", "/stats", Some("Bearer k")).status,
            200
        );
        // Without a key everything is open (the address is loopback).
        assert_eq!(request(&v, None, "GET", "/metrics", None).status, 200);
        // 404 and 405.
        let r = request(&v, key, "GET", "/nope", None);
        assert_eq!(r.status, 404);
        assert!(r.body.contains("\"error\""));
        let r = request(&v, key, "POST", "/healthz", None);
        assert_eq!(r.status, 405);
        assert_eq!(header(&r, "Allow"), Some("GET, HEAD"));
        assert_eq!(request(&v, None, "HEAD", "/stats", None).status, 200);
        assert_eq!(request(&v, None, "HEAD", "/channels", None).status, 200);
        for method in ["GET", "HEAD", "PUT"] {
            let r = request(&v, key, method, "/publish", Some("Bearer k"));
            assert_eq!(r.status, 405, "{method}");
            assert_eq!(header(&r, "Allow"), Some("POST"));
        }
        let r = request(&v, key, "POST", "/channels", None);
        assert_eq!((r.status, header(&r, "Allow")), (405, Some("GET, HEAD")));
        // Method names are case-sensitive (RFC 9110 §9.1).
        assert_eq!(request(&v, None, "get", "/stats", None).status, 405);
        // Paths with a segment: it may hold slashes, is percent-decoded, and must be there.
        let r = request(&v, None, "GET", "/channels/chat:room/42/presence", None);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.contains("\"chat:room/42\""), "{}", r.body);
        let r = request(&v, None, "POST", "/users/al%20ice%C3%A9/disconnect", None);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.contains("\"al iceé\""), "{}", r.body);
        assert_eq!(
            request(&v, None, "POST", "/users/%zz/disconnect", None).status,
            400
        );
        assert_eq!(
            request(&v, None, "POST", "/users/%ff/disconnect", None).status,
            400
        );
        assert_eq!(
            request(&v, None, "POST", "/users//disconnect", None).status,
            404
        );
        assert_eq!(
            request(&v, None, "GET", "/channels//presence", None).status,
            404
        );
        let r = request(&v, None, "GET", "/users/a/disconnect", None);
        assert_eq!((r.status, header(&r, "Allow")), (405, Some("POST")));
        let r = request(&v, key, "POST", "/users/a/disconnect", None);
        assert_eq!(r.status, 401);
        let r = request(&v, key, "GET", "/channels/a/presence", None);
        assert_eq!(r.status, 401);
    }

    #[test]
    fn post_bodies_are_wanted_only_when_authorized() {
        let v = view();
        let key = Some("k");
        let publish = |auth| {
            let incoming = Incoming {
                method: "POST",
                target: "/publish",
                authorization: auth,
            };
            dispatch(key, &incoming)
        };
        // Refused before the body: no call, so nothing reads it.
        let r = publish(None).expect_err("refused without the key");
        assert_eq!(r.status, 401);
        let call = publish(Some("Bearer k")).expect("routed with the key");
        assert!(call.wants_body());
        // The body reaches the handler as given: whitespace is not JSON, a publish is.
        assert_eq!(call.run(&v, &[b' '; 16]).status, 400);
        let ok = br#"{"channel":"news","data":1}"#;
        assert_eq!(call.run(&v, ok).status, 200);
        let get = Incoming {
            method: "GET",
            target: "/healthz",
            authorization: None,
        };
        assert!(!dispatch(key, &get).unwrap().wants_body());
    }

    #[test]
    fn readyz_follows_the_drain_flag() {
        let v = view();
        assert_eq!(request(&v, None, "GET", "/readyz", None).status, 200);
        v.draining.store(true, Ordering::SeqCst);
        let r = request(&v, None, "GET", "/readyz", None);
        assert_eq!(r.status, 503);
        assert!(r.body.contains("draining"));
    }
}
