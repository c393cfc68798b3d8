//! The tokio-tungstenite peer: echo and broadcast written the way the crate's own
//! examples and the tokio chat examples write them, on a one-thread runtime.
//!
//! - echo: the socket is split and the read half is `forward`ed into the write
//!   half. `forward` feeds each message into tungstenite's write buffer and
//!   flushes only when the read half has nothing more ready, so a burst of
//!   pipelined messages goes out in one write.
//! - broadcast: one `tokio::sync::broadcast` channel for the whole server; every
//!   connection subscribes, and a writer task per connection feeds what it
//!   receives and flushes once the channel is empty. The reader task publishes.

use std::io;

use futures_util::{future, SinkExt, StreamExt, TryStreamExt};
use starling_peers::{accept, bind, parse_args, runtime, App, BROADCAST_CAPACITY};
use tokio::net::TcpStream;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_tungstenite::{accept_async, tungstenite::Message};

const NAME: &str = "peer-tokio-tungstenite";

fn main() {
    let args = parse_args(NAME);
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let listener = bind(args.listen)?;
            eprintln!("{NAME}: listening on {} app {:?}", args.listen, args.app);
            serve(listener, args.app).await
        })
    });
    if let Err(e) = result {
        eprintln!("{NAME}: {e}");
        std::process::exit(1);
    }
}

async fn serve(listener: tokio::net::TcpListener, app: App) -> io::Result<()> {
    // Created even for echo so both apps share one accept loop; unused there.
    let (hub, _) = broadcast::channel::<Message>(BROADCAST_CAPACITY);
    loop {
        let stream = accept(&listener).await;
        match app {
            App::Echo => tokio::spawn(echo(stream)),
            App::Broadcast => tokio::spawn(member(stream, hub.clone())),
        };
    }
}

/// Sends every text and binary message back to its sender until the connection ends.
async fn echo(stream: TcpStream) {
    let Ok(ws) = accept_async(stream).await else {
        return;
    };
    let (write, read) = ws.split();
    // Ping, pong and close are answered inside tungstenite; only data goes back.
    let _ = read
        .try_filter(|m| future::ready(m.is_text() || m.is_binary()))
        .forward(write)
        .await;
}

/// One broadcast member: a reader that publishes, a writer that delivers.
async fn member(stream: TcpStream, hub: broadcast::Sender<Message>) {
    let Ok(ws) = accept_async(stream).await else {
        return;
    };
    let (mut write, mut read) = ws.split();
    // Subscribe before the first read, so a member receives its own first message.
    let mut inbox = hub.subscribe();
    let writer = tokio::spawn(async move {
        loop {
            let first = match inbox.recv().await {
                Ok(m) => m,
                // Fell more than BROADCAST_CAPACITY behind: skip ahead, never buffer
                // without bound. The load generator sees the skipped ones as gaps.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            if write.feed(first).await.is_err() {
                return;
            }
            // Everything already published goes into the same flush.
            loop {
                match inbox.try_recv() {
                    Ok(m) => {
                        if write.feed(m).await.is_err() {
                            return;
                        }
                    }
                    Err(TryRecvError::Lagged(_)) => continue,
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            if write.flush().await.is_err() {
                return;
            }
        }
    });
    // Reading until the end also lets tungstenite send the close reply.
    while let Some(Ok(msg)) = read.next().await {
        if msg.is_text() || msg.is_binary() {
            // Err means no receivers, impossible while this member is subscribed.
            let _ = hub.send(msg);
        }
    }
    writer.abort();
}
