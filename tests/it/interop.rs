//! Clients that no one here wrote — Python `websockets` and Node `ws` — drive the server
//! through echo of every kind, pipelining, ping/pong, subprotocol selection and the close
//! handshake (scripts in `tests/interop/`). The test command installs both; a missing one is a
//! failure here, never a skip.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use starling::config::Config;
use starling::metrics::CloseReason;

use crate::util::{config, wait_until, TestServer};

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

fn server() -> TestServer {
    TestServer::start(Config {
        protocols: vec!["chat.v1".into()],
        max_message_size: 2 << 20,
        ..config()
    })
}

fn run(program: &str, script: &str, url: &str) -> String {
    let out = Command::new(program)
        .arg(interop_dir().join(script))
        .arg(url)
        .arg("chat.v1")
        .current_dir(interop_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (the test command installs it): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn check(program: &str, script: &str) {
    let server = server();
    let url = format!("ws://{}/", server.addr());
    let out = run(program, script, &url);
    for step in [
        "ok subprotocol chat.v1",
        "ok echo",
        "ok pipelined 500",
        "ok ping",
        "ok close",
    ] {
        assert!(out.contains(step), "{script}: missing {step:?} in:\n{out}");
    }
    // The client's close handshake completed on our side as a normal close.
    assert!(
        wait_until(Duration::from_secs(10), || server
            .counters()
            .closed_for(CloseReason::Normal)
            == 1),
        "{}",
        server.counters()
    );
    assert_eq!(server.counters().closed_for(CloseReason::Protocol), 0);
}

#[test]
fn python_websockets_client() {
    check("python3", "py_client.py");
}

#[test]
fn node_ws_client() {
    check("node", "node_client.js");
}
