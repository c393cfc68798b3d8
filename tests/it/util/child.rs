//! The real `starling` binary as a child process: for what only a process shows (signals, exit
//! codes, command-line parsing, resident memory). The guard kills the child by PID when dropped.
//!
//! `serve` does not report the port it bound, so the test picks one: a random port just below
//! the kernel's ephemeral range (which port-0 binds and outgoing connections draw from, so no
//! in-process test server or client socket can be holding it), checked free by binding it
//! first. The server binds with SO_REUSEPORT, which would let two processes of the same user
//! share a port, so the check matters; a child that still fails to bind is retried on another
//! port.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use super::{wait_until, PATIENCE};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_starling");

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh path under the target's temporary directory, unique in this test run.
pub fn temp_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("it");
    std::fs::create_dir_all(&dir).unwrap();
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{}-{n}-{name}", std::process::id()))
}

/// A port that is free right now and outside the ephemeral range.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let port = if low >= 2048 {
            rng.gen_range(low.saturating_sub(8000).max(1024)..low)
        } else {
            0
        };
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().unwrap().port();
        }
    }
    panic!("no free port found");
}

/// A running `starling serve`. Killed (SIGKILL, by PID) on drop if still running.
pub struct Child {
    child: std::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Child {
    /// `starling serve --listen 127.0.0.1:<free port> <args>`, once it accepts connections.
    pub fn serve(args: &[&str]) -> Child {
        let mut log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let listen = format!("127.0.0.1:{port}");
            let mut all = vec!["serve", "--listen", &listen];
            all.extend_from_slice(args);
            // Parallel children would all race for the admin API's default port; only tests
            // about the API ask for one.
            if !args
                .iter()
                .any(|a| a.starts_with("--api") || *a == "--no-api")
            {
                all.push("--no-api");
            }
            match Child::try_spawn_listening(&all, port) {
                Ok(c) => return c,
                Err(e) => log = e,
            }
        }
        panic!("starling serve {args:?} did not start on any of 5 ports; last log:\n{log}");
    }

    /// Spawns `starling <args>` and waits until `port` accepts connections. None if the process
    /// exited first (e.g. the port was taken meanwhile); panics if it neither exits nor listens.
    pub fn spawn_listening(args: &[&str], port: u16) -> Option<Child> {
        Child::try_spawn_listening(args, port).ok()
    }

    /// [`Child::spawn_listening`] with what the process wrote before it exited as the error.
    pub fn try_spawn_listening(args: &[&str], port: u16) -> Result<Child, String> {
        let log = temp_path("starling.log");
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn starling");
        let mut c = Child {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        let addr = c.addr;
        let mut exited = false;
        let up = wait_until(PATIENCE, || {
            exited = matches!(c.child.try_wait(), Ok(Some(_)));
            exited || TcpStream::connect(addr).is_ok()
        });
        if exited {
            return Err(c.log_text());
        }
        assert!(
            up,
            "starling {args:?} never listened; log:\n{}",
            c.log_text()
        );
        Ok(c)
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` to the child.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with the PID of a child we spawned and have not reaped (we hold its
        // `Child`, and only `wait_exit`/drop reap it), so the PID cannot name another process.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size in KiB (`VmRSS` in /proc/PID/status).
    pub fn rss_kib(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Everything the child wrote to stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // `Child::kill` sends SIGKILL to this child's PID only.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs `starling <args>` to completion (killed after [`PATIENCE`]) and returns its exit status
/// and its stdout and stderr together.
pub fn run(args: &[&str]) -> (ExitStatus, String) {
    let log = temp_path("run.log");
    let out = File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn starling");
    let end = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for starling") {
            break st;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("starling {args:?} still running after {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}
