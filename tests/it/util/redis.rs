//! A `redis-server` of the test's own for the cluster tests: on a port picked like the
//! children's (`child::free_port`), with no persistence (`--save ''`, `--appendonly no`) and its
//! working directory under the target's temporary directory, so nothing outlives the test. It
//! can be killed (SIGKILL, by PID) and started again on the same port, to see what the nodes do
//! while their Redis is gone, and is killed when dropped.
//!
//! `redis-server` must be on `PATH`: `scripts/test` installs it. A test that finds it missing
//! fails and says so; it never passes by skipping.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{self, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::child::{free_port, temp_path};
use super::{wait_until, PATIENCE};

/// The server binary, looked up on `PATH`.
const BIN: &str = "redis-server";

/// A `redis-server` on one port for the whole life of the guard (across kills and restarts).
pub struct Redis {
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    child: Option<process::Child>,
}

impl Redis {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> Redis {
        for _ in 0..5 {
            let mut r = Redis::on(free_port());
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    /// Starts a server on `port` (say one a node was already told to use) and waits until it
    /// answers PING; panics with its log if it cannot.
    pub fn start_on(port: u16) -> Redis {
        let mut r = Redis::on(port);
        assert!(r.spawn(), "redis-server exited; log:\n{}", r.log_text());
        r
    }

    /// A guard for `port` with nothing started yet.
    fn on(port: u16) -> Redis {
        let dir = temp_path("redis");
        std::fs::create_dir_all(&dir).unwrap();
        Redis {
            port,
            log: dir.join("redis.log"),
            dir,
            child: None,
        }
    }

    /// Spawns the server and waits for PING. False if it exited first (the port was taken
    /// meanwhile); panics if it neither exits nor answers.
    fn spawn(&mut self) -> bool {
        require_binary();
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let port = self.port.to_string();
        let child = Command::new(BIN)
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let mut exited = false;
        let up = wait_until(PATIENCE, || {
            exited = !self.is_running();
            exited || self.ping()
        });
        if exited {
            self.child = None;
            return false;
        }
        assert!(
            up,
            "redis-server on port {} never answered PING; log:\n{}",
            self.port,
            self.log_text()
        );
        true
    }

    /// The port it listens on (also while it is down).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The URL a node's `--bus` takes.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(process::Child::id)
    }

    /// Whether the process is alive (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Whether the server answers PING right now (an inline command, `+PONG` back).
    pub fn ping(&self) -> bool {
        self.command("PING").is_ok_and(|r| r == "+PONG")
    }

    /// Sends one inline command (`PING`, `DBSIZE`, `PUBSUB CHANNELS *`) and returns the first
    /// line of the reply without its CRLF: enough for a test to look at what the nodes did.
    pub fn command(&self, line: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(self.addr())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(format!("{line}\r\n").as_bytes())?;
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.ends_with(b"\r\n") {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }

    /// Kills the server with SIGKILL (its PID only), reaps it, and waits until its port
    /// refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `Child::kill` sends SIGKILL to this child's PID only.
            let _ = c.kill();
            let _ = c.wait();
        }
        let addr = self.addr();
        let gone = wait_until(PATIENCE, || TcpStream::connect(addr).is_err());
        assert!(gone, "port {} still accepts after the kill", self.port);
    }

    /// Starts the server again on the same port (killing it first if it still runs) and waits
    /// until it answers PING. It comes back empty: nothing was persisted.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
        // A port just released may briefly still be held (another test's child bound it in
        // between is the only other way): a few tries, then the log.
        let ok = (0..5).any(|_| self.spawn() || sleep_false());
        assert!(
            ok,
            "redis-server did not start again on port {}; log:\n{}",
            self.port,
            self.log_text()
        );
    }

    /// Everything the server logged, over all its runs.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn sleep_false() -> bool {
    std::thread::sleep(Duration::from_millis(200));
    false
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Panics, saying what to do, unless `redis-server` can be run.
pub fn require_binary() {
    static FOUND: OnceLock<Result<String, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| match Command::new(BIN).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!("`{BIN} --version` failed: {o:?}")),
        Err(e) => Err(format!("cannot run `{BIN}`: {e}")),
    });
    if let Err(e) = found {
        panic!(
            "{e}\nThe cluster tests need redis-server on PATH. Run ./scripts/test (it installs \
             it with apt-get when missing) or `apt-get install redis-server`."
        );
    }
}
