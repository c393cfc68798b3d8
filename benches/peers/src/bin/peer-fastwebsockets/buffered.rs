//! `--writes buffered`: fastwebsockets with the batching done for it.
//!
//! fastwebsockets writes every frame straight to its stream, so a burst of 64
//! pipelined echoes costs 64 `write(2)` calls where Starling and the
//! tokio-tungstenite peer make one. Here the write half sits behind a
//! `BufWriter` and is flushed when there is nothing more to write right now, the
//! feed-then-flush discipline tokio-tungstenite's `forward` follows. It is not
//! what the crate's examples do ([`super::direct`] is); it shows how far the
//! library goes when its user adds this machinery.
//!
//! - echo: after each echoed frame the next read is polled; only when it would
//!   block is the write half flushed, and then the read is awaited.
//! - broadcast: a writer task per connection writes everything already published
//!   and flushes once the channel is empty. Frames the library obliges us to send
//!   (pong, close reply) reach the writer through a small per-connection channel.

use std::convert::Infallible;
use std::future::{poll_fn, ready, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use fastwebsockets::{
    FragmentCollectorRead, Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketRead,
    WebSocketWrite,
};
use tokio::io::BufWriter;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::mpsc;
use tokio::task::unconstrained;

use super::{into_bytes, Io, Shared};

type Reader = WebSocketRead<tokio::io::ReadHalf<Io>>;
type Writer = WebSocketWrite<BufWriter<tokio::io::WriteHalf<Io>>>;
/// Frames the echo reader owes the peer (pong, close reply), not yet written.
type Owed = Mutex<Vec<Frame<'static>>>;

/// Splits the socket and puts the write half behind a buffer we flush ourselves.
fn split(ws: WebSocket<Io>) -> (FragmentCollectorRead<tokio::io::ReadHalf<Io>>, Writer) {
    let (rx, tx): (Reader, Writer) = ws.split(|io| {
        let (r, w) = tokio::io::split(io);
        (r, BufWriter::new(w))
    });
    (FragmentCollectorRead::new(rx), tx)
}

/// Drives `fut` until it completes (`Some(output)`), or until it would wait while
/// `must_write()` says bytes are waiting to go out (`None`). The future is never
/// dropped, so a partially read frame is never lost.
async fn read_or_write<F: Future>(
    mut fut: Pin<&mut F>,
    must_write: impl Fn() -> bool,
) -> Option<F::Output> {
    poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending if must_write() => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    })
    .await
}

/// Sends every text and binary message back to its sender until the connection ends.
pub async fn echo(ws: WebSocket<Io>) -> Result<(), WebSocketError> {
    let (mut rx, mut tx) = split(ws);
    // Pongs and the close reply the reader owes; written by this loop, never by
    // the reader, so the write half has one owner. A Mutex rather than a RefCell
    // only because spawned futures must be Send; it is never contended.
    let owed: Owed = Mutex::new(Vec::new());
    let mut oblige = |frame: Frame<'static>| {
        lock(&owed).push(frame);
        ready(Ok::<(), Infallible>(()))
    };
    // Whether the write buffer holds bytes not yet flushed.
    let mut unflushed = false;
    loop {
        let frame = {
            let mut read = pin!(rx.read_frame(&mut oblige));
            loop {
                let must_write = || unflushed || !lock(&owed).is_empty();
                match read_or_write(read.as_mut(), must_write).await {
                    Some(frame) => break frame,
                    // Nothing more to read right now (a ping may have been read and
                    // its pong be owed): everything pending goes out in one write.
                    None => {
                        pay(&mut tx, &owed).await?;
                        tx.flush().await?;
                        unflushed = false;
                    }
                }
            }
        }?;
        unflushed |= pay(&mut tx, &owed).await?;
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                tx.write_frame(frame).await?;
                unflushed = true;
            }
            OpCode::Close => return tx.flush().await,
            _ => {}
        }
    }
}

fn lock(owed: &Owed) -> std::sync::MutexGuard<'_, Vec<Frame<'static>>> {
    owed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes the frames the reader owes (pong, close reply) without flushing;
/// says whether it wrote any.
async fn pay(tx: &mut Writer, owed: &Owed) -> Result<bool, WebSocketError> {
    let frames = std::mem::take(&mut *lock(owed));
    let wrote = !frames.is_empty();
    for frame in frames {
        tx.write_frame(frame).await?;
    }
    Ok(wrote)
}

/// One broadcast member: this task reads and publishes, a writer task delivers.
pub async fn member(
    ws: WebSocket<Io>,
    hub: broadcast::Sender<Shared>,
) -> Result<(), WebSocketError> {
    let (mut rx, tx) = split(ws);
    // Subscribe before the first read, so a member receives its own first message.
    let inbox = hub.subscribe();
    let (owed_tx, owed_rx) = mpsc::unbounded_channel();
    let mut writer = tokio::spawn(unconstrained(deliver(tx, inbox, owed_rx)));
    let mut oblige = |frame: Frame<'static>| {
        ready(
            owed_tx
                .send(frame)
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe)),
        )
    };
    while let Ok(frame) = rx.read_frame(&mut oblige).await {
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                // Err means no receivers, impossible while this member is subscribed.
                let _ = hub.send((frame.opcode, into_bytes(frame.payload)));
            }
            OpCode::Close => break,
            _ => {}
        }
    }
    // Closing the owed channel tells the writer to flush (the close reply
    // included) and stop; a peer that never reads does not keep the task alive.
    drop(owed_tx);
    if tokio::time::timeout(Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    Ok(())
}

/// The writer task of a broadcast member.
async fn deliver(
    mut tx: Writer,
    mut inbox: broadcast::Receiver<Shared>,
    mut owed: mpsc::UnboundedReceiver<Frame<'static>>,
) -> Result<(), WebSocketError> {
    loop {
        tokio::select! {
            // Owed frames first: a close reply must not wait behind a backlog.
            biased;
            frame = owed.recv() => match frame {
                Some(frame) => tx.write_frame(frame).await?,
                None => return tx.flush().await,
            },
            msg = inbox.recv() => match msg {
                Ok((opcode, payload)) => write_shared(&mut tx, opcode, &payload).await?,
                // Fell more than BROADCAST_CAPACITY behind: skip ahead, never buffer
                // without bound. The load generator sees the skipped ones as gaps.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return tx.flush().await,
            },
        }
        // Everything already published goes into the same flush.
        loop {
            match inbox.try_recv() {
                Ok((opcode, payload)) => write_shared(&mut tx, opcode, &payload).await?,
                Err(TryRecvError::Lagged(_)) => continue,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        tx.flush().await?;
    }
}

async fn write_shared(
    tx: &mut Writer,
    opcode: OpCode,
    payload: &[u8],
) -> Result<(), WebSocketError> {
    let frame = Frame::new(true, opcode, None, Payload::Borrowed(payload));
    tx.write_frame(frame).await
}
