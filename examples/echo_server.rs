//! The smallest complete use of the library: an echo server on 127.0.0.1:9001 with one shard
//! per core, stopped cleanly (close 1001 to every client) on Ctrl-C.
//!
//!     cargo run --release --example echo_server
//!     # then point any WebSocket client at ws://127.0.0.1:9001/

use std::time::Duration;

use starling::config::{App, Config};
use starling::shard::Server;

fn main() -> std::io::Result<()> {
    let config = Config {
        listen: "127.0.0.1:9001".parse().expect("valid address"),
        app: App::Echo,
        ..Config::default()
    };
    config
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let server = Server::start(config)?;
    println!(
        "echo server on ws://{}/ (Ctrl-C to stop)",
        server.local_addr()
    );

    // Wait for Ctrl-C, then drain: the shards send 1001 and exit once every client is gone.
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT])?;
    signals.forever().next();
    server.drain();
    while !server.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("{}", server.join());
    Ok(())
}
