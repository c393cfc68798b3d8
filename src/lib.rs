//! Starling: a sharded, per-core WebSocket (RFC 6455) engine on raw `mio`.
//!
//! # Rooms
//!
//! - [`proto`]: RFC 6455, pure. Frame headers, masking, the incremental decoder, UTF-8,
//!   close codes, the HTTP upgrade — byte slices in, results out, no sockets, no clocks. Both
//!   roles: server for the engine, client for the load generator.
//! - [`shard`]: one thread per shard, each owning its SO_REUSEPORT listener, its `slab` of
//!   connections, its single read buffer and its [`timer`] wheel. The only room that touches
//!   sockets. Other threads reach a shard only through [`shard::Handle`] (a crossbeam channel of
//!   [`shard::Command`]s plus a `mio::Waker`).
//! - [`timer`]: a hierarchical timing wheel keyed by slab index; O(1) insert/cancel/expire.
//! - [`config`]: every tunable with the reason for its default; TOML file and flags.
//! - [`metrics`]: per-shard counters (plain integers owned by the shard), published as
//!   snapshots.
//! - [`sys`]: process and kernel facts at start-up (open-file limit, cores, pinning).
//! - [`hub`]: the channel protocol's pure parts (client JSON wire format, per-channel
//!   history for resume, server-sent event encoding, the conflation table for slow
//!   subscribers, presence counting). The shards hold the channel state (`shard/hub.rs`):
//!   each channel has one owner shard that numbers its messages, so every subscriber sees one
//!   order, and counts its members (`shard/hub_presence.rs`); direct messages to a user fan
//!   out to every shard (`shard/hub_users.rs`). A `GET /sse` stream (`shard/sse.rs`) is one
//!   more local subscriber whose deliveries are events.
//! - [`bus`]: where channels meet across nodes. The default in-process bus is the owner
//!   shard above; `--bus redis://…` starts one bus thread that has Redis number, keep and
//!   publish every channel's messages, while each owner shard relays them
//!   (`shard/hub_relay.rs`, docs/CLUSTER.md).
//! - [`api`]: the admin HTTP API (health, readiness, Prometheus metrics, JSON stats) on its own
//!   thread and port; it only reads what the shards publish.
//!
//! # Threads
//!
//! ```text
//!   api thread (admin HTTP: /healthz /readyz /metrics /stats; reads published counters)
//!   main thread ── signals, periodic stats, drain ──┐
//!                                                    │ Command (crossbeam + Waker)
//!        ┌──────────────┬──────────────┬────────────┘
//!     shard 0        shard 1   ...  shard N-1      one per core, optionally pinned
//!     listener       listener        listener      same port, SO_REUSEPORT
//!     slab<Conn>     slab<Conn>      slab<Conn>
//!     timer wheel    timer wheel     timer wheel
//! ```
//!
//! # A connection's life
//!
//! accept (shard's listener) → `Handshaking` (upgrade request parsed from the shard's read
//! buffer; a partial request is kept aside until complete or timed out) → 101 → `Open` (frames
//! parsed in place, unmasked in place; replies queued and flushed once per loop pass; heartbeats
//! from the timer wheel) → `Closing` (we sent Close, waiting for the peer's) or `Flushing` (our
//! last bytes queued) → `Lingering` (write side shut, reading to EOF) → removed from the slab.
//! A `GET /sse` request instead gets a `200` and goes to `Stream` (events out, input ignored)
//! until the client leaves or the server ends it with `Flushing`.
//!
//! # How a broadcast flows
//!
//! A message read on shard A is framed once, appended to A's per-pass outgoing buffer, and at
//! the end of the I/O phase that buffer (one `Bytes`) is handed to every other shard in one
//! command. Each shard joins everything it must broadcast in one pass into one buffer and writes
//! it to each open connection with one `write` (or queues a reference to it when the socket is
//! full). No per-recipient copy is ever made.
#![deny(missing_docs)]

pub mod api;
pub mod bus;
pub mod config;
pub mod hub;
pub mod metrics;
pub mod proto;
pub mod shard;
pub mod sys;
pub mod timer;
