//! Publishing from outside the shards: a broadcast server on 127.0.0.1:9002 whose main thread
//! sends every open connection the time once a second. The frame is encoded once and the same
//! bytes go to every shard and every connection.
//!
//!     cargo run --release --example broadcast
//!     # connect a few clients to ws://127.0.0.1:9002/ and watch the ticks arrive

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use starling::config::{App, Config};
use starling::proto::{frame, OpCode};
use starling::shard::{Command, Server};

fn main() -> std::io::Result<()> {
    let server = Server::start(Config {
        listen: "127.0.0.1:9002".parse().expect("valid address"),
        app: App::Broadcast,
        ..Config::default()
    })?;
    println!("broadcast server on ws://{}/", server.local_addr());
    for tick in 0u64.. {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let frames = frame::encode_frame(OpCode::Text, format!("tick {tick} at {now}").as_bytes());
        for shard in server.handles() {
            shard.send(Command::Broadcast {
                frames: frames.clone(),
                count: 1,
            });
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}
