//! The admin API's thread: it owns the listening socket and the `tiny_http` server on it, and
//! answers one request at a time through [`dispatch`](super::dispatch) until stopped.
//!
//! `tiny_http`'s accept thread ends on the first `accept` error (EMFILE when the process is at
//! its open-file limit, the very moment an operator wants metrics), so the serving loop
//! rebuilds it on the same listening socket after a pause instead of going silent for the rest
//! of the process's life.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{dispatch, ApiView, Incoming};

/// Pause before rebuilding the HTTP server after an accept error, so a process stuck at its
/// open-file limit is not also spinning.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

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
        let mut request = match http.recv() {
            Ok(r) => r,
            Err(e) => return e,
        };
        let authorization = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str().to_owned());
        let method = request.method().as_str().to_owned();
        let target = request.url().to_owned();
        let length = request.body_length();
        let incoming = Incoming {
            method: &method,
            target: &target,
            authorization: authorization.as_deref(),
            length,
            body: &mut LazyBody(&mut request),
        };
        let reply = dispatch(view, key, incoming);
        if let Err(e) = request.respond(reply.into_response()) {
            // The client went away mid-response; nothing to do for it.
            tracing::debug!(error = %e, "admin API response not delivered");
        }
    }
}

/// A request's body, opened at its first read: that is when `tiny_http` sends `100 Continue` to
/// a client that asked for it, so a request refused before its body is read (404, 401, 413)
/// never invites the body.
struct LazyBody<'r>(&'r mut tiny_http::Request);

impl Read for LazyBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.as_reader().read(buf)
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
    use crate::api::tests::view_with;
    use std::time::Instant;

    fn view() -> ApiView {
        view_with(&Arc::default())
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
