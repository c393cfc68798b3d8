//! Shared machinery for the integration tests: an in-process server on port 0 that shuts down
//! when dropped, polling waits with generous upper bounds, and the client helpers in the
//! submodules (`raw` for hand-built bytes, `ws` for the independent tungstenite client, `sse`
//! for event streams, `http` for the admin API, `child` for the real binary as a separate
//! process, `redis` for a `redis-server` of the test's own and `node` for cluster nodes on it).
//!
//! Waits here only bound how long a test may hang; no test asserts that something was fast.

pub mod child;
pub mod http;
pub mod node;
pub mod raw;
pub mod redis;
pub mod sse;
pub mod ws;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use starling::config::{App, Config};
use starling::metrics::{CloseReason, Counters};
use starling::shard::Server;

/// The upper bound for anything a test waits on. Far above what any step needs on an idle
/// machine, so that a loaded CI box does not turn slowness into failures.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A config for tests: loopback, a port the kernel picks, one shard, echo.
pub fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        app: App::Echo,
        ..Config::default()
    }
}

/// Polls `cond` every 10 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An in-process server that is shut down and joined when dropped, so a failing test does not
/// leave shard threads behind.
pub struct TestServer {
    server: Option<Server>,
}

impl TestServer {
    /// Starts `config` (whose `listen` should name port 0).
    pub fn start(config: Config) -> TestServer {
        let server = Server::start(config).expect("server starts on a free port");
        TestServer {
            server: Some(server),
        }
    }

    /// Starts the default test config (one shard, echo).
    pub fn echo() -> TestServer {
        TestServer::start(config())
    }

    fn get(&self) -> &Server {
        self.server.as_ref().expect("server present until join")
    }

    /// Where to connect.
    pub fn addr(&self) -> SocketAddr {
        self.get().local_addr()
    }

    /// Totals over shards (published every ~250 ms).
    pub fn counters(&self) -> Counters {
        self.get().counters()
    }

    /// Per-shard counters.
    pub fn shard_counters(&self) -> Vec<Counters> {
        self.get().shard_counters()
    }

    /// Waits until at least `n` connections ended for `reason`; false if that never happened
    /// within [`PATIENCE`].
    pub fn wait_closed(&self, reason: CloseReason, n: u64) -> bool {
        wait_until(PATIENCE, || self.counters().closed_for(reason) >= n)
    }

    /// Starts a graceful drain.
    pub fn drain(&self) {
        self.get().drain();
    }

    /// True once every shard thread has exited.
    pub fn is_finished(&self) -> bool {
        self.get().is_finished()
    }

    /// Waits for the shards to exit (after a drain) and returns the final totals.
    pub fn join(mut self) -> Counters {
        self.server.take().expect("joined once").join()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
            s.join();
        }
    }
}
