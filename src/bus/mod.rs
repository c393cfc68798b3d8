//! The bus: where a channel's messages are numbered and kept, and how nodes share them.
//!
//! Two implementations (docs/CLUSTER.md):
//!
//! - **In-process** (`--bus local`, the default): one node. Each channel's owner *shard*
//!   numbers its messages and keeps its history (`shard/hub_owner.rs`). Nothing here runs.
//! - **Redis** (`--bus redis://host:port`): several nodes. Redis numbers each channel's
//!   messages (one Lua script: INCR, XADD to the history stream, PUBLISH), keeps the history,
//!   the presence counts and the node registry. On each node the owner shard becomes a relay:
//!   it forwards publishes to the bus thread and receives the numbered deliveries back from
//!   Redis pub/sub, in Redis's order, then fans them out to the shards as before.
//!
//! **Threads.** The Redis side is one thread ([`start`]) running a single-threaded tokio
//! runtime with two Redis connections (commands, pub/sub). Shards talk to it through
//! [`BusHandle::send`] (an unbounded tokio channel: never blocks, never waits) and it answers
//! through the shards' own [`Handle`](crate::shard::Handle)s (crossbeam + `mio::Waker`). Nothing on a shard waits
//! for Redis. The thread drains the channel continuously, also while Redis is away, into its
//! own bounded structures: the publish *outbox* (`--bus-outbox`, oldest dropped and counted,
//! its publisher told) and the requests waiting for a connection.

mod keys;
mod redis;

pub use keys::valid_node_id;
pub use redis::start;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::shard::{Asker, ConnAddr, Publisher, Tally};

/// A request from a shard (or the admin API) to the bus thread.
#[derive(Debug)]
pub enum Req {
    /// Number, keep and publish a message.
    Publish {
        /// Channel name (validated).
        channel: Arc<str>,
        /// The publisher's JSON value.
        data: Box<RawValue>,
        /// Conflation key, carried to every node.
        key: Option<Arc<str>>,
        /// Who gets the sequence number (or the failure).
        from: Publisher,
    },
    /// The owner shard wants the channel's deliveries: subscribe to its topic, then report the
    /// channel's position ([`BusEvent::Position`] with `token`).
    Sync {
        /// Channel name.
        channel: Arc<str>,
        /// The owner's token for this incarnation of the channel.
        token: u64,
    },
    /// The node has no subscribers left on the channel.
    Unsync {
        /// Channel name.
        channel: Arc<str>,
    },
    /// What the channel said after `after` (for a resume or a gap), as a
    /// [`BusEvent::Position`] with `token`.
    Fetch {
        /// Channel name.
        channel: Arc<str>,
        /// The owner's token.
        token: u64,
        /// Last sequence number already known.
        after: u64,
    },
    /// One more (+1) or one fewer (-1) connection of `user` in `channel` on this node.
    Presence {
        /// Channel name.
        channel: Arc<str>,
        /// User id.
        user: Arc<str>,
        /// +1 join, -1 leave.
        delta: i32,
    },
    /// One more (+1) or one fewer (-1) connection of `user` (a token's `sub`) on this node:
    /// the node listens for direct messages to the users it has.
    User {
        /// User id.
        user: Arc<str>,
        /// +1 or -1.
        delta: i32,
    },
    /// A direct message to, or a disconnect of, every connection of `user` on every node;
    /// `tally` gets the total.
    Direct {
        /// User id.
        user: Arc<str>,
        /// What happens to each of the user's connections.
        what: ToUser,
        /// Where the number of connections it reached goes (once).
        tally: Tally,
    },
    /// From a channel's owner: the channel has watchers (presence events) on this node, or
    /// (`on: false`) has none left. While it has, the bus tells the owner every
    /// [`PRESENCE_POLL`] who is in it on the other live nodes.
    Watch {
        /// Channel name.
        channel: Arc<str>,
        /// Watchers now, or none left.
        on: bool,
    },
    /// A shard's count for the bus's direct-message token `token`.
    DirectCount {
        /// The bus thread's token.
        token: u64,
        /// Connections on that shard that got it.
        count: u64,
    },
    /// Who is in the channel on every live node.
    List {
        /// Channel name.
        channel: Arc<str>,
        /// Who gets the list.
        to: Asker,
    },
}

/// One retained message of a channel, from Redis.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Sequence number.
    pub seq: u64,
    /// Conflation key.
    pub key: Option<Arc<str>>,
    /// The published JSON value (checked to be one).
    pub data: Bytes,
}

/// What the bus thread tells a channel's owner shard (inside `HubCmd::Bus`).
#[derive(Debug)]
pub enum BusEvent {
    /// A numbered message, in Redis's order.
    Message {
        /// Channel name.
        channel: Arc<str>,
        /// The channel's epoch.
        epoch: u32,
        /// Its sequence number.
        entry: Entry,
    },
    /// The channel's position and the retained messages after the asked `after`.
    Position {
        /// Channel name.
        channel: Arc<str>,
        /// The token of the request this answers.
        token: u64,
        /// The channel's epoch.
        epoch: u32,
        /// Its last sequence number.
        last: u64,
        /// Retained messages after `after`, oldest first (possibly with holes where history
        /// no longer reaches).
        entries: Vec<Entry>,
    },
    /// The bus reconnected: the channel may have missed messages; check with a fetch.
    Resync {
        /// Channel name.
        channel: Arc<str>,
    },
    /// A readiness canary came back through Redis; the shard records that it saw it.
    Canary,
    /// Who is in a watched channel on the other live nodes (named as the cluster's lists
    /// name them, at most `max_presence_members`), for the owner's join and leave events.
    Others {
        /// Channel name.
        channel: Arc<str>,
        /// The users present elsewhere.
        users: Vec<Arc<str>>,
    },
}

/// How often the bus reads the other nodes' members of each watched channel: the delay, at
/// most, between a user joining or leaving on another node (or that node dying, plus its
/// TTL) and the join or leave event on this one.
pub const PRESENCE_POLL: Duration = Duration::from_secs(1);

/// A node as the registry shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    /// Node id.
    pub id: String,
    /// The WebSocket address it listens on.
    pub address: String,
    /// Open connections at its last heartbeat.
    pub connections: u64,
    /// Unix time of its start, in milliseconds.
    pub started_ms: u64,
    /// Unix time of its last heartbeat, in milliseconds.
    pub heartbeat_ms: u64,
}

/// Counters of the bus thread (read by the admin API).
#[derive(Debug, Default)]
pub struct BusCounters {
    /// Messages numbered by Redis for this node's publishers.
    pub published: AtomicU64,
    /// Deliveries received from Redis pub/sub.
    pub received: AtomicU64,
    /// Publishes dropped from a full outbox (their publishers got `unavailable`).
    pub outbox_dropped: AtomicU64,
    /// Publishes waiting for Redis right now.
    pub outbox_len: AtomicU64,
    /// Times the connection to Redis was (re)established.
    pub connects: AtomicU64,
    /// Times it was lost (or could not be made).
    pub failures: AtomicU64,
    /// Messages an owner found missing and recovered from the history.
    pub gaps_filled: AtomicU64,
    /// Messages an owner found missing that history no longer had (subscribers see the gap).
    pub gaps_lost: AtomicU64,
    /// Pub/sub payloads that were not ours (wrong format, data not JSON).
    pub malformed: AtomicU64,
}

/// What the bus thread shares with the shards and the admin API.
#[derive(Debug)]
pub struct BusState {
    /// This node's id.
    pub node_id: String,
    /// Heartbeat period (a third of the node TTL).
    pub heartbeat: Duration,
    /// Counters.
    pub counters: BusCounters,
    connected: AtomicBool,
    /// Milliseconds since `epoch` when a shard last saw a canary (0 = never).
    canary_seen_ms: AtomicU64,
    epoch: Instant,
    registry: Mutex<Vec<NodeRecord>>,
}

impl BusState {
    fn new(node_id: String, heartbeat: Duration) -> BusState {
        BusState {
            node_id,
            heartbeat,
            counters: BusCounters::default(),
            connected: AtomicBool::new(false),
            canary_seen_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            registry: Mutex::new(Vec::new()),
        }
    }

    /// Whether both Redis connections are up right now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::SeqCst);
    }

    /// A shard received a canary that went through Redis and back.
    pub fn canary_seen(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.canary_seen_ms.store(ms.max(1), Ordering::SeqCst);
    }

    /// Time since a shard last saw a canary, if one ever arrived.
    pub fn canary_age(&self) -> Option<Duration> {
        let at = self.canary_seen_ms.load(Ordering::SeqCst);
        (at != 0).then(|| {
            let now = self.epoch.elapsed().as_millis() as u64;
            Duration::from_millis(now.saturating_sub(at))
        })
    }

    /// `Ok` when the node is part of the cluster: connected, and a canary made the whole trip
    /// (publish script → pub/sub → bus thread → shard) within three heartbeats. Otherwise why
    /// not, for `/readyz`.
    pub fn ready(&self) -> Result<(), String> {
        if !self.is_connected() {
            return Err("bus: not connected to redis".into());
        }
        match self.canary_age() {
            None => Err("bus: no canary delivered yet".into()),
            Some(age) if age > self.heartbeat * 3 => Err(format!(
                "bus: last canary delivered {} ms ago",
                age.as_millis()
            )),
            Some(_) => Ok(()),
        }
    }

    /// The live nodes at the last heartbeat, by id.
    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.registry.lock().map(|g| g.clone()).unwrap_or_default()
    }

    fn set_nodes(&self, nodes: Vec<NodeRecord>) {
        if let Ok(mut g) = self.registry.lock() {
            *g = nodes;
        }
    }
}

/// The way into the bus thread. Cheap to clone; every shard holds one.
#[derive(Debug, Clone)]
pub struct BusHandle {
    tx: tokio::sync::mpsc::UnboundedSender<Req>,
    /// Shared state (readiness, counters, registry).
    pub state: Arc<BusState>,
}

impl BusHandle {
    /// Hands a request to the bus thread; never blocks. False if the thread has exited.
    pub fn send(&self, req: Req) -> bool {
        self.tx.send(req).is_ok()
    }
}

/// A new handle and the receiving end for [`start`].
pub fn channel(node_id: String, heartbeat: Duration) -> (BusHandle, Inbox) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let state = Arc::new(BusState::new(node_id, heartbeat));
    (BusHandle { tx, state }, Inbox(rx))
}

/// The bus thread's end of [`channel`].
#[derive(Debug)]
pub struct Inbox(tokio::sync::mpsc::UnboundedReceiver<Req>);

/// Where an answer about `to` goes: the shard it lives on.
fn shard_of(to: &ConnAddr) -> usize {
    to.shard as usize
}

/// Capped exponential backoff with full jitter: a random delay in [0, min(cap, 100 ms × 2^n)],
/// at least 50 ms. `rand` is any uniformly random u64.
pub fn backoff(attempt: u32, cap: Duration, rand: u64) -> Duration {
    let base = Duration::from_millis(100);
    let ceiling = base
        .saturating_mul(1u32 << attempt.min(16))
        .min(cap)
        .max(Duration::from_millis(50));
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis((rand % (ms + 1)).max(50))
}

/// What a [`Req::Direct`] does to each connection of its user, on every node.
#[derive(Debug, Clone)]
pub enum ToUser {
    /// Queue this direct frame (a whole WebSocket frame), shared.
    Frame(Bytes),
    /// Close it with `DISCONNECTED` (4000), as `POST /users/{id}/disconnect` asks.
    Disconnect,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let cap = Duration::from_secs(5);
        for a in 0..40 {
            for r in [0, 1, 77, u64::MAX / 3, u64::MAX] {
                let d = backoff(a, cap, r);
                assert!(d >= Duration::from_millis(50) && d <= cap, "{a} {r} {d:?}");
                let ceiling = Duration::from_millis(100 << a.min(16)).min(cap);
                assert!(d <= ceiling.max(Duration::from_millis(50)), "{a} {d:?}");
            }
        }
        // Jitter spreads the delays of one attempt.
        let spread: std::collections::HashSet<_> =
            (0..50u64).map(|r| backoff(6, cap, r * 104_729)).collect();
        assert!(spread.len() > 10);
    }

    #[test]
    fn readiness_needs_connection_and_a_recent_canary() {
        let s = BusState::new("n1".into(), Duration::from_millis(100));
        assert!(s.ready().unwrap_err().contains("not connected"));
        s.set_connected(true);
        assert!(s.ready().unwrap_err().contains("canary"));
        s.canary_seen();
        s.ready().unwrap();
        s.set_connected(false);
        assert!(s.ready().is_err());
    }
}
