//! The admin API's thread: a single-threaded tokio runtime serving hyper's HTTP/1.1 server on
//! the listening socket until stopped. hyper does the framing (heads, `Content-Length` and
//! chunked bodies, `100 Continue`, keep-alive, `Date`); this file owns the sockets, how many
//! there are at once and how long each may take. Each request is checked and routed on the
//! runtime (`http`, `super::dispatch`), its body read there if the route wants one, and its
//! handler then run on the runtime's blocking pool, since handlers wait for shard replies. A
//! client that stalls therefore holds only its own connection, never the thread.
//!
//! The port is for operators, but anyone who can reach it can send it bytes, so nothing a
//! client sends may crash the process or keep other clients from being answered. (An HTTP
//! library used here once allocated whatever `Content-Length` a request declared, so one
//! request could abort the whole process.) What a client can claim is bounded:
//! - Memory: a head is at most [`MAX_HEAD`] bytes (431 past it), read into a buffer of at most
//!   [`MAX_BUF`]; a body at most [`MAX_BODY`]. A larger declared `Content-Length` is refused
//!   (413) before any of it is read, and a chunked body is cut off (413) at the limit. Nothing
//!   is sized by what a client merely declares.
//! - Time: a head must be in within [`Timeouts::io`] of the connection's start or of the end
//!   of the previous reply, or the connection is closed (hyper's header read timeout); that
//!   also closes idle keep-alive connections. A body must be in within [`Timeouts::request`]
//!   (408 otherwise), and each write may wait at most `io` for the client to take bytes
//!   ([`WriteLimit`]). The handler's own work is not on these clocks: it is bounded by its
//!   shard timeouts.
//! - Connections: at most [`MAX_CONNECTIONS`] at once; more wait in the listen backlog until
//!   one ends. Handlers: at most [`HANDLER_THREADS`] at once; more queue for a thread.
//!
//! After an accept error that is not about one connection (EMFILE, the moment an operator
//! wants metrics) the loop logs once per run of failures, waits [`ACCEPT_PAUSE`] (a stop
//! still ends the wait) and tries again, so a process at its open-file limit is not also
//! spinning.
//!
//! Stopping: [`ApiServer::stop`] sets a watch channel. The accept loop ends and closes the
//! listener; idle connections close at once; a request in progress is finished, without
//! keep-alive after it (hyper's graceful shutdown), within [`STOP_GRACE`]; whatever is left
//! then is cut off, and the thread is joined.
//!
//! Lingering close: when a reply goes out before the whole request was read (a refusal of a
//! body, a malformed head, bytes after it), closing at once with unread input makes the kernel
//! answer with RST, which can destroy the reply before the client reads it. So when hyper is
//! done with such a connection, the server shuts its side and reads and discards until the
//! client closes, for at most [`LINGER`] and [`LINGER_BYTES`].

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Incoming as RequestBody};
use hyper::header::{HeaderValue, CONNECTION};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Sleep;

use super::http;
use super::routes::Reply;
use super::{dispatch, ApiView, Call, MAX_BODY};

/// Largest request head (request line plus header fields): 16 KiB. Bigger is 431.
pub(super) const MAX_HEAD: usize = 16 * 1024;

/// Largest read buffer hyper keeps per connection (it must be at least 8 KiB).
const MAX_BUF: usize = 2 * MAX_HEAD;

/// Most connections served at once. Operators' scrapers and tools need a handful; the cap
/// keeps a flood of idle sockets from costing more than this many buffers and file
/// descriptors.
pub(super) const MAX_CONNECTIONS: usize = 64;

/// Most handlers running at once, each on its own blocking thread. A handler waits for the
/// shards (at most their timeouts), so a few threads keep one slow request from delaying the
/// others without letting the API compete with the shards for cores.
const HANDLER_THREADS: usize = 8;

/// Pause after an accept error before trying again, so a process stuck at its open-file limit
/// is not also spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(250);

/// Longest wait, once stopping, for requests in progress to be answered.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Longest wait, after [`STOP_GRACE`], for handlers still running; past it they finish on
/// their own while the thread exits.
const HANDLER_GRACE: Duration = Duration::from_secs(1);

/// Longest wait for a client to close after a reply sent before its request was fully read.
const LINGER: Duration = Duration::from_secs(1);

/// Most bytes read and discarded while lingering: enough that the sender of a body just over
/// [`MAX_BODY`] gets to read its 413.
const LINGER_BYTES: usize = 2 * MAX_BODY;

/// The largest [`Timeouts`] value honoured.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How long a client may take. Values over a day count as a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest wait for a request head, from the connection's start or the end of the previous
    /// reply (so also how long an idle keep-alive connection stays open), and for any one
    /// write to make progress (default 5 s).
    pub io: Duration,
    /// Longest time to receive a request body once its head is in (default 10 s).
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            io: Duration::from_secs(5),
            request: Duration::from_secs(10),
        }
    }
}

/// A running admin API. Stopped and joined by [`ApiServer::stop`] or on drop.
#[derive(Debug)]
pub struct ApiServer {
    local_addr: SocketAddr,
    /// Set to true to stop; every connection watches it too.
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and joins the API thread; the listening socket is closed when this
    /// returns. Requests in progress are answered first, within a few seconds.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.send_replace(true);
        if thread.join().is_err() {
            tracing::error!("the admin API thread panicked");
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Binds `addr` and serves the admin API on a new thread with the default [`Timeouts`].
/// `key`, when set, is the bearer token every non-public route requires. Without a key,
/// `addr` must be a loopback address (`InvalidInput` otherwise; see the module docs of `api`
/// for why).
pub fn start(addr: SocketAddr, key: Option<String>, view: ApiView) -> io::Result<ApiServer> {
    start_with(addr, key, view, Timeouts::default())
}

/// [`start`] with the given [`Timeouts`].
pub fn start_with(
    addr: SocketAddr,
    key: Option<String>,
    view: ApiView,
    timeouts: Timeouts,
) -> io::Result<ApiServer> {
    if key.is_none() && !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("admin API on non-loopback {addr} needs an API key"),
        ));
    }
    // Clamped so that `now + timeout` cannot overflow an Instant.
    let timeouts = Timeouts {
        io: timeouts.io.min(MAX_TIMEOUT),
        request: timeouts.request.min(MAX_TIMEOUT),
    };
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local_addr = std_listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(HANDLER_THREADS)
        .thread_name("api-handler")
        .build()?;
    // Registering the listener needs the runtime's reactor; done here so a failure is ours.
    let listener = {
        let _in_runtime = runtime.enter();
        TcpListener::from_std(std_listener)?
    };
    let (stop, stopped) = watch::channel(false);
    let api = Arc::new(Api {
        view,
        key,
        timeouts,
    });
    let thread = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            runtime.block_on(serve(listener, api, stopped));
            runtime.shutdown_timeout(HANDLER_GRACE);
        })?;
    tracing::info!(addr = %local_addr, "admin API listening");
    Ok(ApiServer {
        local_addr,
        stop,
        thread: Some(thread),
    })
}

/// What every connection shares.
struct Api {
    view: ApiView,
    key: Option<String>,
    timeouts: Timeouts,
}

/// Accepts connections, each served on its own task, until stopped; then lets them finish
/// within [`STOP_GRACE`].
async fn serve(listener: TcpListener, api: Arc<Api>, mut stopped: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    let mut failing = false;
    loop {
        let accepted = tokio::select! {
            () = stopping(&mut stopped) => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        while let Some(done) = conns.try_join_next() {
            reap(done);
        }
        match accepted {
            Ok((stream, peer, slot)) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("admin API accepts connections again");
                }
                let conn = connection(stream, peer, Arc::clone(&api), stopped.clone(), slot);
                conns.spawn(conn);
            }
            // A signal, or a client that left before we took it: on to the next.
            Err(e) if is_transient(&e) => {}
            Err(error) => {
                // Once per run of failures, not every pause.
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%error, "admin API accept failed; retrying");
                }
                tokio::select! {
                    () = stopping(&mut stopped) => break,
                    () = tokio::time::sleep(ACCEPT_PAUSE) => {}
                }
            }
        }
    }
    drop(listener);
    let finish = async {
        while let Some(done) = conns.join_next().await {
            reap(done);
        }
    };
    if tokio::time::timeout(STOP_GRACE, finish).await.is_err() {
        tracing::warn!(left = conns.len(), "admin API requests cut off at stop");
        conns.shutdown().await;
    }
}

/// Waits for a connection slot, then for a connection. Without a free slot the listener is
/// not polled, so extra clients wait in the kernel's backlog.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let slot = Arc::clone(slots)
        .acquire_owned()
        .await
        .map_err(io::Error::other)?;
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, slot))
}

/// Resolves once a stop is asked for (or the [`ApiServer`] is gone).
async fn stopping(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Logs a connection task that did not end normally.
fn reap(done: Result<(), JoinError>) {
    if let Err(error) = done {
        if error.is_panic() {
            tracing::error!(%error, "admin API connection task panicked");
        }
    }
}

/// The future a request's answer is: boxed, so that hyper can poll the connection by
/// reference and hand the socket back when it is done (see [`connection`]).
type Answering = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// Serves one connection with hyper until either side ends it or the server stops, then
/// closes it, lingering if input may be unread. `_slot` is its place under
/// [`MAX_CONNECTIONS`], freed when this returns.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    api: Arc<Api>,
    mut stopped: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    // Set when a reply went out over a body that was not read.
    let unread = Arc::new(AtomicBool::new(false));
    let service = {
        let (api, unread) = (Arc::clone(&api), Arc::clone(&unread));
        service_fn(move |req| -> Answering {
            Box::pin(respond(Arc::clone(&api), Arc::clone(&unread), req))
        })
    };
    let io = TokioIo::new(WriteLimit::new(stream, api.timeouts.io));
    let mut conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(api.timeouts.io)
        .max_buf_size(MAX_BUF)
        .max_header_size(MAX_HEAD)
        .serve_connection(io, service);
    let served = {
        let mut stop = pin!(stopping(&mut stopped));
        let mut shutting = false;
        poll_fn(|cx| {
            if !shutting && stop.as_mut().poll(cx).is_ready() {
                shutting = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            // Not shut down by hyper: the socket comes back for a lingering close.
            conn.poll_without_shutdown(cx)
        })
        .await
    };
    if let Err(error) = served {
        tracing::debug!(%peer, %error, "admin API connection ended");
    }
    let parts = conn.into_parts();
    let left_over = unread.load(Ordering::Relaxed) || !parts.read_buf.is_empty();
    close(parts.io.into_inner().stream, left_over).await;
}

/// Closes a connection hyper is done with. With input unread (`left_over`, or bytes waiting
/// on the socket), it lingers first (see the module docs); otherwise a plain close ends it
/// with FIN.
async fn close(mut stream: TcpStream, left_over: bool) {
    let mut scratch = vec![0u8; 16 * 1024];
    let waiting = matches!(stream.try_read(&mut scratch), Ok(n) if n > 0);
    if !(left_over || waiting) || stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut scratch).await {
                Ok(n) if n > 0 => drained += n,
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Answers one request: the reply, with `Connection: close` when its body was left unread,
/// since hyper cannot then read a next request on this connection.
async fn respond(
    api: Arc<Api>,
    unread: Arc<AtomicBool>,
    req: Request<RequestBody>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (head, body) = req.into_parts();
    let answer = answer(&api, &head, body).await;
    let status = answer.reply.status;
    tracing::debug!(method = %head.method, path = head.uri.path(), status, "admin API request");
    let mut res = http::response(answer.reply);
    if answer.body_left {
        unread.store(true, Ordering::Relaxed);
        res.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(res)
}

/// A reply, and whether the request's body was left (partly) unread.
struct Answer {
    reply: Reply,
    body_left: bool,
}

/// The checks before routing, routing, the body if the route wants it, then the handler:
/// the order that keeps a refused request from having its body read.
async fn answer(api: &Api, head: &Parts, body: RequestBody) -> Answer {
    let has_body = !body.is_end_stream();
    let refused = |reply| Answer {
        reply,
        body_left: has_body,
    };
    if let Some(reply) = http::refusal(head, &body) {
        return refused(reply);
    }
    let call = match dispatch(api.key.as_deref(), &http::incoming(head)) {
        Ok(call) => call,
        Err(reply) => return refused(reply),
    };
    let (bytes, body_left) = if call.wants_body() {
        match http::read_body(body, api.timeouts.request).await {
            Ok(bytes) => (bytes, false),
            Err(reply) => return refused(reply),
        }
    } else {
        (Bytes::new(), has_body)
    };
    let reply = run(api, call, bytes).await;
    Answer { reply, body_left }
}

/// Runs `call` on the blocking pool: handlers wait for the shards, which must not stall the
/// runtime that serves every other connection.
async fn run(api: &Api, call: Call, body: Bytes) -> Reply {
    let view = api.view.clone();
    match tokio::task::spawn_blocking(move || call.run(&view, &body)).await {
        Ok(reply) => reply,
        Err(error) => {
            tracing::error!(%error, "admin API handler failed");
            Reply::error(500, "internal error")
        }
    }
}

/// A socket whose writes fail once one has waited [`Timeouts::io`] without progress. hyper has
/// no write timeout of its own, and a client that stops reading its reply must not hold a
/// connection slot for ever.
struct WriteLimit {
    stream: TcpStream,
    limit: Duration,
    /// Running while a write is blocked; cleared by any progress.
    stall: Option<Pin<Box<Sleep>>>,
}

impl WriteLimit {
    fn new(stream: TcpStream, limit: Duration) -> WriteLimit {
        WriteLimit {
            stream,
            limit,
            stall: None,
        }
    }

    /// `polled`, or `TimedOut` if writing has been blocked for the whole limit.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stall = None;
            return polled;
        }
        let limit = self.limit;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteLimit {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteLimit {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accept errors that concern one connection (or none), not the listener.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
