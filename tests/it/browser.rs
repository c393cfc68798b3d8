//! A real browser: headless Chromium (Debian's `chromium`, installed by the test command) opens
//! `tests/interop/browser.html`, which talks to a broadcast server — echo of text, binary and a
//! 512 KiB message, subprotocol, and a clean close handshake — and reports its verdict as a
//! message that this test receives as another subscriber.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use starling::config::{App, Config};
use tungstenite::Message;

use crate::util::{config, TestServer};

#[test]
fn chromium_talks_to_the_server() {
    let server = TestServer::start(Config {
        app: App::Broadcast,
        protocols: vec!["chat.v1".into()],
        ..config()
    });
    let url = format!("ws://{}/", server.addr());
    let (mut observer, _) = tungstenite::connect(&url).expect("observer connects");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = observer.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
    }
    let page = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/browser.html");
    let profile = tempdir();
    let child = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}?url={}", page.display(), url))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromium is installed by the test command");
    let _guard = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let verdict = loop {
        assert!(Instant::now() < deadline, "no verdict from the browser");
        match observer.read() {
            Ok(Message::Text(t)) if t.starts_with("RESULT ") => break t.to_string(),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("observer: {e}"),
        }
    };
    assert!(verdict.starts_with("RESULT ok 4 echoes"), "{verdict}");
    let _ = std::fs::remove_dir_all(&profile);
}

fn tempdir() -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "starling-chromium-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Kills the browser (by its PID, through the handle) however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
