//! The admin API's thread: it owns the listening socket and answers one request per
//! connection, one connection at a time, through `super::dispatch` until stopped.
//! The wire format (head parsing, response bytes) is `http`; this file does the socket I/O.
//!
//! The port is for operators, but anyone who can reach it can send it bytes, so nothing a
//! client sends may crash the process or keep the thread from the next client. (The HTTP
//! library this replaced allocated whatever `Content-Length` a request declared, so one
//! request could abort the whole process.) What a client can claim is bounded:
//! - Memory: the head is read into one [`MAX_HEAD`] buffer, reused for every connection; a
//!   body is at most [`MAX_BODY`], and a larger `Content-Length` is refused (413) before any
//!   of it is read. Nothing is ever sized by what a client merely declares.
//! - Time: each read or write waits at most [`Timeouts::io`], receiving a whole request takes
//!   at most [`Timeouts::request`], and delivering the reply gets as long again. A client that
//!   connects and says nothing is dropped after `io`; one that trickles bytes, after `request`.
//!   The handler's own work is not on these clocks: it is bounded by its shard timeouts.
//! - Connections: one request each, answered with `Connection: close`, then closed. Keep-alive
//!   would let one client hold the only thread between requests, for no gain on a port
//!   scraped every few seconds.
//!
//! Waiting and stopping: the listener is registered with a mio `Poll` that also holds a
//! `Waker`. The thread accepts until `WouldBlock`, then sleeps in `poll` until a connection
//! arrives or [`ApiServer::stop`] wakes it, so stopping is immediate without polling a flag on
//! a timer, and without connecting to ourselves (which fails exactly when the process is out
//! of file descriptors). After an accept error (EMFILE, the moment an operator wants
//! metrics) the thread logs, waits [`ACCEPT_PAUSE`] in the same `poll` (a stop still wakes
//! it), and tries again: readiness is edge-triggered, so the connection left in the backlog
//! would not be reported a second time.
//!
//! Lingering close: when the reply goes out before the whole request was read (a refusal, a
//! body the route never needed, bytes after the request), closing at once with unread input
//! makes the kernel answer with RST, which can destroy the reply before the client reads it.
//! So the thread then shuts its side, and reads and discards until the client closes, for at
//! most [`LINGER`] and [`LINGER_BYTES`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use super::http::{self, MAX_HEAD};
use super::routes::Reply;
use super::{dispatch, ApiView, Incoming, MAX_BODY};

/// The listening socket's token.
const LISTENER: Token = Token(0);

/// The stop waker's token.
const WAKE: Token = Token(1);

/// Pause after an accept error before trying again, so a process stuck at its open-file limit
/// is not also spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(250);

/// Longest wait for a client to close after a reply sent before its request was fully read.
const LINGER: Duration = Duration::from_secs(1);

/// The largest [`Timeouts`] value honoured.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Most bytes read and discarded while lingering: enough that the sender of a body just over
/// [`MAX_BODY`] gets to read its 413.
const LINGER_BYTES: usize = 2 * MAX_BODY;

/// How long one connection may hold the API thread. Values over a day count as a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest wait for any one read or write to make progress (default 5 s).
    pub io: Duration,
    /// Longest time to receive a whole request, head and body; delivering the reply gets as
    /// long again (default 10 s).
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
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the API thread and [`ApiServer`] share to stop the loop.
#[derive(Debug)]
struct Shared {
    stopping: AtomicBool,
    /// Wakes the thread from `poll`.
    waker: Waker,
}

impl ApiServer {
    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and joins the API thread; the listening socket is closed when this
    /// returns. A connection being answered is finished first, within its [`Timeouts`].
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Err(error) = self.shared.waker.wake() {
            // The thread still sees the flag after its current connection or pause.
            tracing::warn!(%error, "cannot wake the admin API thread");
        }
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
/// `addr` must be a loopback address (`InvalidInput` otherwise; see the module docs for why).
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
    let mut listener = TcpListener::from_std(std_listener);
    let local_addr = listener.local_addr()?;
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let shared = Arc::new(Shared {
        stopping: AtomicBool::new(false),
        waker: Waker::new(poll.registry(), WAKE)?,
    });
    let acceptor = Acceptor {
        listener,
        poll,
        key,
        view,
        timeouts,
        shared: Arc::clone(&shared),
    };
    let thread = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || acceptor.run())?;
    tracing::info!(addr = %local_addr, "admin API listening");
    Ok(ApiServer {
        local_addr,
        shared,
        thread: Some(thread),
    })
}

/// Everything the API thread owns.
struct Acceptor {
    listener: TcpListener,
    poll: Poll,
    key: Option<String>,
    view: ApiView,
    timeouts: Timeouts,
    shared: Arc<Shared>,
}

impl Acceptor {
    /// Accepts and answers connections until stopped.
    fn run(mut self) {
        let mut events = Events::with_capacity(4);
        let mut buf = vec![0u8; MAX_HEAD];
        let mut failing = false;
        while !self.shared.stopping.load(Ordering::SeqCst) {
            let wait = match self.listener.accept() {
                Ok((stream, peer)) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("admin API accepts connections again");
                    }
                    self.answer(stream.into(), peer, &mut buf);
                    continue;
                }
                // Nothing pending: sleep until a connection arrives or `stop` wakes us.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                // A signal, or a client that left before we took it: on to the next.
                Err(e) if is_transient(&e) => continue,
                Err(error) => {
                    // Once per run of failures, not every pause.
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%error, "admin API accept failed; retrying");
                    }
                    Some(ACCEPT_PAUSE)
                }
            };
            if let Err(error) = self.poll.poll(&mut events, wait) {
                if error.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!(%error, "admin API poll failed");
                    std::thread::sleep(ACCEPT_PAUSE);
                }
            }
        }
    }

    /// Reads one request from `stream`, answers it, and closes.
    fn answer(&self, stream: TcpStream, peer: SocketAddr, buf: &mut [u8]) {
        let mut conn = match Conn::new(stream, self.timeouts) {
            Ok(c) => c,
            Err(error) => {
                tracing::debug!(%peer, %error, "admin API connection unusable");
                return;
            }
        };
        let Some(answer) = self.receive(&mut conn, buf) else {
            return;
        };
        tracing::debug!(%peer, status = answer.reply.status, "admin API request");
        conn.restart_clock();
        let date = http::http_date(SystemTime::now());
        let bytes = http::encode(&answer.reply, answer.head_only, &date);
        if let Err(error) = conn.write_all(&bytes) {
            // The client went away or stopped reading; nothing more to do for it.
            tracing::debug!(%peer, %error, "admin API response not delivered");
            return;
        }
        if answer.linger {
            conn.linger(buf);
        }
    }

    /// Reads a request and dispatches it. `None` if the client closed, failed or stayed
    /// silent before sending a byte: there is no request to answer then.
    fn receive(&self, conn: &mut Conn, buf: &mut [u8]) -> Option<Answer> {
        let mut filled = 0;
        let (head, head_len) = loop {
            // `parse_head` refuses a partial head that fills the buffer, so there is room.
            match conn.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return None,
                Ok(0) => {
                    // Half-closed mid-head: it may still read a reply.
                    let reply = Reply::error(400, "request ended inside its head");
                    return Some(Answer::refusal(reply, false));
                }
                Ok(n) => filled += n,
                Err(e) if is_timeout(&e) && filled > 0 => {
                    // RFC 9110 §15.5.9: a 408 says the server closes instead of waiting.
                    let reply = Reply::error(408, "request not received in time");
                    return Some(Answer::refusal(reply, false));
                }
                Err(_) => return None,
            }
            match http::parse_head(&buf[..filled]) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => return Some(Answer::refusal(e.reply(), true)),
            }
        };
        // The buffer may hold the start of the body and, past it, bytes of another request.
        let declared = head.content_length.unwrap_or(0);
        let body_end = head_len.saturating_add(declared);
        let early = &buf[head_len..filled.min(body_end)];
        let mut body = Body {
            conn,
            early,
            remaining: declared - early.len(),
            // The client already sending the body has stopped waiting (RFC 9110 §10.1.1).
            owe_continue: head.expect_continue && early.is_empty(),
        };
        let incoming = Incoming {
            method: &head.method,
            target: &head.target,
            authorization: head.authorization.as_deref(),
            length: head.content_length,
            body: &mut body,
        };
        let reply = dispatch(&self.view, self.key.as_deref(), incoming);
        let unread = body.remaining > 0 || !body.early.is_empty() || filled > body_end;
        Some(Answer {
            reply,
            head_only: head.is_head(),
            linger: unread,
        })
    }
}

/// What to send back on a connection.
struct Answer {
    reply: Reply,
    /// HEAD: the headers without the body.
    head_only: bool,
    /// Some of the request may be unread: close gracefully (see the module docs).
    linger: bool,
}

impl Answer {
    /// A reply sent instead of reading the request to its end.
    fn refusal(reply: Reply, linger: bool) -> Answer {
        Answer {
            reply,
            head_only: false,
            linger,
        }
    }
}

/// An accepted connection and the clock it runs against.
struct Conn {
    stream: TcpStream,
    timeouts: Timeouts,
    /// When the current phase (receiving the request, or delivering the reply) must be over.
    deadline: Instant,
}

impl Conn {
    fn new(stream: TcpStream, timeouts: Timeouts) -> io::Result<Conn> {
        // Accepted non-blocking from the mio listener; this thread waits on it with timeouts.
        stream.set_nonblocking(false)?;
        Ok(Conn {
            stream,
            timeouts,
            deadline: Instant::now() + timeouts.request,
        })
    }

    /// Starts the reply phase's clock: the handler's time is not the client's fault.
    fn restart_clock(&mut self) {
        self.deadline = Instant::now() + self.timeouts.request;
    }

    /// How long the next read or write may wait: `io`, cut to what is left of the deadline.
    fn wait_limit(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        // A zero timeout is refused by the socket (it would mean "wait forever").
        Ok(left.min(self.timeouts.io).max(Duration::from_millis(1)))
    }

    /// One read, waiting at most [`Conn::wait_limit`]. `Ok(0)` is the client closing.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.stream.set_read_timeout(Some(self.wait_limit()?))?;
            match self.stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Writes all of `bytes`, each write waiting at most [`Conn::wait_limit`].
    fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            self.stream.set_write_timeout(Some(self.wait_limit()?))?;
            match self.stream.write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Shuts our side and discards input until the client closes (see the module docs).
    fn linger(&mut self, scratch: &mut [u8]) {
        if self.stream.shutdown(Shutdown::Write).is_err() {
            return;
        }
        self.deadline = self.deadline.min(Instant::now() + LINGER);
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match self.read(scratch) {
                Ok(n) if n > 0 => drained += n,
                _ => return,
            }
        }
    }
}

/// A request's body as the router reads it: the bytes that came with the head, then the rest
/// from the socket, never past the declared length. `100 Continue` goes out at the first read
/// that needs the socket, so a request refused before its body is read (404, 405, 401)
/// never invites the body.
struct Body<'c, 'b> {
    conn: &'c mut Conn,
    /// Body bytes read together with the head, not yet handed out.
    early: &'b [u8],
    /// Body bytes still to read from the socket.
    remaining: usize,
    /// The client waits for `100 Continue` and has not had it.
    owe_continue: bool,
}

impl Read for Body<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.early.is_empty() {
            let n = out.len().min(self.early.len());
            out[..n].copy_from_slice(&self.early[..n]);
            self.early = &self.early[n..];
            return Ok(n);
        }
        if self.remaining == 0 || out.is_empty() {
            return Ok(0);
        }
        if std::mem::take(&mut self.owe_continue) {
            self.conn.write_all(http::CONTINUE)?;
        }
        let want = out.len().min(self.remaining);
        let n = self.conn.read(&mut out[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body shorter than its Content-Length",
            ));
        }
        self.remaining -= n;
        Ok(n)
    }
}

/// A socket timeout: `WouldBlock` on Unix, `TimedOut` elsewhere and for our own deadline.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
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
