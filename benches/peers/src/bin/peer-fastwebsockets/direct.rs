//! `--writes direct`: fastwebsockets as its documentation shows it, with no
//! batching of our own. Each `write_frame` is one write to the socket (`write(2)`,
//! or `writev(2)` for payloads over the crate's 1 KiB vectored threshold), so a
//! burst of 64 pipelined echoes costs 64 writes. That cost is the library's, as a
//! user following its examples would get it, and this mode measures it.
//!
//! Sources, all in fastwebsockets 0.10.0 as published on crates.io:
//!
//! - echo follows `examples/echo_server.rs`: the upgraded `WebSocket` wrapped in
//!   a `FragmentCollector`, then a loop of `read_frame` and `write_frame`, closing
//!   on a close frame. Pong and close reply come from the library's `auto_pong`
//!   and `auto_close`, on by default and switched on explicitly in the crate-level
//!   example of `src/lib.rs`, which this code does too.
//! - broadcast needs a writer apart from the reader, so it uses the split API as
//!   `examples/echo_server_split.rs` does (`split(tokio::io::split)`, the read
//!   half in a `FragmentCollectorRead`, `write_frame` per message on the write
//!   half). That example never has a ping to answer; for the frames the read half
//!   owes the peer, `FragmentCollectorRead::read_frame` documents that its
//!   `send_fn` "must ensure frames are sent by write side", and `tests/split.rs`
//!   does it by sharing the write half behind a `tokio::sync::Mutex` and calling
//!   `write_frame` from `send_fn`. That is done here, with the per-connection
//!   task that drains the `tokio::sync::broadcast` channel taking the same lock
//!   for each message it writes.

use std::sync::Arc;

use fastwebsockets::{
    FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload, WebSocket, WebSocketError,
    WebSocketWrite,
};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::Mutex;
use tokio::task::unconstrained;

use super::{into_bytes, Io, Shared};

/// The write half, shared by the reader (pongs, close reply) and the writer task.
type Writer = Arc<Mutex<WebSocketWrite<tokio::io::WriteHalf<Io>>>>;

/// Sends every text and binary message back to its sender until the connection ends.
pub async fn echo(mut ws: WebSocket<Io>) -> Result<(), WebSocketError> {
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    let mut ws = FragmentCollector::new(ws);
    loop {
        // A ping is answered, and a close replied to, inside read_frame.
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

/// One broadcast member: this task reads and publishes, a writer task delivers.
pub async fn member(
    ws: WebSocket<Io>,
    hub: broadcast::Sender<Shared>,
) -> Result<(), WebSocketError> {
    let (rx, tx) = ws.split(tokio::io::split);
    let mut rx = FragmentCollectorRead::new(rx);
    let tx: Writer = Arc::new(Mutex::new(tx));
    // Subscribe before the first read, so a member receives its own first message.
    let inbox = hub.subscribe();
    let writer = tokio::spawn(unconstrained(deliver(tx.clone(), inbox)));
    // Pong and close reply go out on the write half as soon as they are owed,
    // between two of the writer's messages at worst.
    let mut oblige = |frame: Frame<'static>| {
        let tx = tx.clone();
        async move { tx.lock().await.write_frame(frame).await }
    };
    while let Ok(frame) = rx.read_frame(&mut oblige).await {
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                // Err means no receivers, impossible while this member is subscribed.
                let _ = hub.send((frame.opcode, into_bytes(frame.payload)));
            }
            // The close reply has already been written by `oblige`.
            OpCode::Close => break,
            _ => {}
        }
    }
    // Nothing is left for the writer to do: the close reply (if any) is in the
    // socket, and a writer blocked on a peer that stopped reading must not keep
    // the connection alive.
    writer.abort();
    Ok(())
}

/// The writer task of a broadcast member: one `write_frame` per message.
async fn deliver(tx: Writer, mut inbox: broadcast::Receiver<Shared>) -> Result<(), WebSocketError> {
    loop {
        match inbox.recv().await {
            Ok((opcode, payload)) => {
                let frame = Frame::new(true, opcode, None, Payload::Borrowed(&payload));
                tx.lock().await.write_frame(frame).await?;
            }
            // Fell more than BROADCAST_CAPACITY behind: skip ahead, never buffer
            // without bound. The load generator sees the skipped ones as gaps.
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}
