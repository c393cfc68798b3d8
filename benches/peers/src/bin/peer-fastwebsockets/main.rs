//! The fastwebsockets peer: hyper 1 performs the HTTP upgrade (the crate's
//! `upgrade` feature), then echo or broadcast run on the upgraded socket, on a
//! one-thread runtime, inside `tokio::task::unconstrained` as the crate's own
//! examples do.
//!
//! Two ways of writing, chosen with `--writes`, because fastwebsockets writes
//! every frame straight to its stream and so the answer to "how fast is it"
//! depends on who does the batching:
//!
//! - `direct` (the default, [`direct`]): the crate used the way its examples and
//!   README use it, `write_frame` once per message, so one `write(2)` per frame.
//!   This is what a fastwebsockets user gets.
//! - `buffered` ([`buffered`]): the write half behind a `BufWriter` flushed only
//!   when there is nothing more to send right now, so a burst of frames leaves in
//!   one `write(2)` as it does from Starling and the tokio-tungstenite peer. This
//!   is the library with the batching work done for it, an upper bound on what a
//!   user could get.

mod buffered;
mod direct;

use std::io;

use bytes::Bytes;
use fastwebsockets::upgrade::{upgrade, UpgradeFut};
use fastwebsockets::{OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use starling_peers::{accept, bind, parse_args_with, runtime, App, Choice, BROADCAST_CAPACITY};
use tokio::sync::broadcast;
use tokio::task::unconstrained;

const NAME: &str = "peer-fastwebsockets";

/// `--writes`: the first value is the default.
const WRITES: Choice = Choice {
    flag: "--writes",
    values: &["direct", "buffered"],
};

/// How frames reach the socket; see the module docs.
#[derive(Clone, Copy, Debug)]
enum Writes {
    /// One `write_frame`, so one write, per frame: the documented usage.
    Direct,
    /// Frames gathered in a `BufWriter` and flushed when nothing more is ready.
    Buffered,
}

/// A message as the broadcast channel carries it: one shared payload, cloned by
/// reference count for every member.
type Shared = (OpCode, Bytes);
/// The upgraded connection, as fastwebsockets sees it.
type Io = TokioIo<Upgraded>;

fn main() {
    let (args, chosen) = parse_args_with(NAME, &[WRITES]);
    let writes = match chosen.first().copied() {
        Some("buffered") => Writes::Buffered,
        _ => Writes::Direct,
    };
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let listener = bind(args.listen)?;
            eprintln!(
                "{NAME}: listening on {} app {:?} writes {writes:?}",
                args.listen, args.app
            );
            serve(listener, args.app, writes).await
        })
    });
    if let Err(e) = result {
        eprintln!("{NAME}: {e}");
        std::process::exit(1);
    }
}

async fn serve(listener: tokio::net::TcpListener, app: App, writes: Writes) -> io::Result<()> {
    // Created even for echo so both apps share one accept loop; unused there.
    let (hub, _) = broadcast::channel::<Shared>(BROADCAST_CAPACITY);
    loop {
        let stream = accept(&listener).await;
        let hub = hub.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| on_request(req, app, writes, hub.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// Answers the upgrade request and starts the app on the upgraded socket. A
/// request that is not a valid upgrade fails here and hyper drops the connection.
async fn on_request(
    mut req: Request<Incoming>,
    app: App,
    writes: Writes,
    hub: broadcast::Sender<Shared>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade(&mut req)?;
    tokio::spawn(unconstrained(run(fut, app, writes, hub)));
    Ok(response)
}

async fn run(fut: UpgradeFut, app: App, writes: Writes, hub: broadcast::Sender<Shared>) {
    let Ok(ws) = fut.await else {
        return;
    };
    // A connection's error ends that connection only; with thousands of clients
    // closing abruptly at the end of a run, logging each would measure stderr.
    let _ = match (writes, app) {
        (Writes::Direct, App::Echo) => direct::echo(ws).await,
        (Writes::Direct, App::Broadcast) => direct::member(ws, hub).await,
        (Writes::Buffered, App::Echo) => buffered::echo(ws).await,
        (Writes::Buffered, App::Broadcast) => buffered::member(ws, hub).await,
    };
}

/// Takes the payload without copying when the library handed us owned bytes.
fn into_bytes(payload: Payload<'_>) -> Bytes {
    match payload {
        Payload::Bytes(b) => b.freeze(),
        Payload::Owned(v) => Bytes::from(v),
        other => Bytes::copy_from_slice(&other),
    }
}
