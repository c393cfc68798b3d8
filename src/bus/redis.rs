//! The Redis bus thread: one single-threaded tokio runtime, a command connection and a
//! pub/sub connection, and the node's bounded queues for the times Redis is away.
//!
//! **Loop.** Connect (both connections, load the two scripts, subscribe to every topic the
//! node wants, rewrite this node's presence, ask every synced owner to check for a gap), then
//! serve: pub/sub deliveries go to their channel's owner shard; requests are served in
//! arrival order; publishes leave in pipelines of up to [`BATCH`], each followed by at most one
//! pipeline of presence changes (coalesced per user, one `HSET` per channel, see
//! `presence`), so subscribes never hold publishes back; every heartbeat renews the
//! node's registry record and sends a canary. Any Redis error ends the serve phase; the loop
//! waits a capped, jittered exponential backoff (still draining requests meanwhile) and
//! connects again.
//!
//! **While Redis is away** publishes wait in the outbox (at most `--bus-outbox`; the oldest is
//! dropped, counted, and its publisher gets `unavailable`), subscribes and fetches wait in
//! order, presence changes only update the node's own mirror (written whole on reconnect),
//! and presence lists are answered from this node's own members.
//!
//! **Delivery guarantee.** A publish is retried after a lost connection if its reply never
//! came, so a message can be numbered twice when Redis ran the script but the reply was lost
//! (at-least-once); it is never silently lost while it fits in the outbox.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Value};

use super::keys::{self, CANARY_PREFIX};
use super::{backoff, shard_of, BusEvent, BusState, Inbox, Req};
use crate::config::Config;
use crate::metrics::Published;
use crate::shard::{owner_of, Command, Handle, HubCmd, Publisher};

mod direct;
mod presence;
mod registry;
mod values;

use values::{entry, parse_position};

use direct::{Outstanding, Round, RoundFor};

const PUBLISH_LUA: &str = include_str!("publish.lua");
const FETCH_LUA: &str = include_str!("fetch.lua");
/// Connect and reply timeout for every Redis call: a call that takes longer means Redis is
/// gone for practical purposes.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Publishes per pipeline.
const BATCH: usize = 256;
/// How long a direct message waits for other nodes' counts before answering with what it has.
const DIRECT_WAIT: Duration = Duration::from_secs(2);
/// Channel keys and presence hashes expire this long after their last write (at least twice
/// the history TTL), so abandoned channels do not stay in Redis forever.
const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

type Result<T> = std::result::Result<T, redis::RedisError>;

/// Starts the bus thread for `cfg` (whose bus is Redis). `shards` are every shard's handle,
/// `stats` their counters (for the registry's connection count), `address` what the node
/// listens on.
pub fn start(
    cfg: Arc<Config>,
    inbox: Inbox,
    state: Arc<BusState>,
    shards: Vec<Handle>,
    stats: Vec<Published>,
    address: String,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let url = cfg.bus.url.clone();
    let client = redis::Client::open(url.as_str()).map_err(std::io::Error::other)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started_ms = unix_ms();
    let worker = Worker {
        key_ttl_ms: KEY_TTL.max(cfg.history_ttl * 2).as_millis() as u64,
        cfg,
        client,
        state,
        rx: inbox.0,
        shards,
        stats,
        address,
        started_ms,
        outbox: VecDeque::new(),
        waiting: VecDeque::new(),
        dirty: VecDeque::new(),
        dirty_set: HashSet::new(),
        topics: HashSet::new(),
        watched: HashSet::new(),
        mirror: HashMap::new(),
        gone: HashSet::new(),
        users: HashMap::new(),
        user_topics: HashSet::new(),
        directs: HashMap::new(),
        rounds: HashMap::new(),
        replies: VecDeque::new(),
        next_token: 0,
        rng: started_ms ^ u64::from(std::process::id()).rotate_left(32),
        shas: (String::new(), String::new()),
        stopping: false,
    };
    std::thread::Builder::new()
        .name("bus".into())
        .spawn(move || rt.block_on(worker.run()))
}

/// One publish waiting for Redis.
struct Outgoing {
    channel: Arc<str>,
    data: Box<serde_json::value::RawValue>,
    key: Option<Arc<str>>,
    from: Publisher,
}

/// Both connections, while they work.
struct Link {
    conn: MultiplexedConnection,
    sink: PubSubSink,
    stream: PubSubStream,
}

struct Worker {
    cfg: Arc<Config>,
    client: redis::Client,
    state: Arc<BusState>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Req>,
    shards: Vec<Handle>,
    stats: Vec<Published>,
    address: String,
    started_ms: u64,
    key_ttl_ms: u64,
    outbox: VecDeque<Outgoing>,
    /// Requests other than publishes and presence writes, in arrival order, served when
    /// connected.
    waiting: VecDeque<Req>,
    /// (channel, user) whose count changed since Redis last heard it, oldest first, each once:
    /// written from `mirror` in batches, after the publishes ready at that moment.
    dirty: VecDeque<(Arc<str>, Arc<str>)>,
    /// The members of `dirty`, so a pair that changes again is not queued twice.
    dirty_set: HashSet<(Arc<str>, Arc<str>)>,
    /// Channels this node receives (subscribed whenever connected).
    topics: HashSet<Arc<str>>,
    /// Channels with presence watchers on this node, polled every [`super::PRESENCE_POLL`].
    watched: HashSet<Arc<str>>,
    /// This node's presence counts: channel → user → connections.
    mirror: HashMap<Arc<str>, HashMap<Arc<str>, u32>>,
    /// (channel, user) whose count dropped to 0 while Redis was away: deleted on reconnect.
    gone: HashSet<(Arc<str>, Arc<str>)>,
    /// Connections per user (token users only) on this node.
    users: HashMap<Arc<str>, u32>,
    /// Users whose direct-message topic is subscribed on the current connection.
    user_topics: HashSet<Arc<str>>,
    /// Direct messages from this node waiting for counts, by token.
    directs: HashMap<u64, Outstanding>,
    /// Local delivery rounds waiting for the shards' counts, by token.
    rounds: HashMap<u64, Round>,
    /// Counts to send to other nodes: (their node id, their token, count).
    replies: VecDeque<(String, u64, u64)>,
    next_token: u64,
    rng: u64,
    /// SHA1 of the publish and fetch scripts, loaded at every connect.
    shas: (String, String),
    stopping: bool,
}

impl Worker {
    async fn run(mut self) {
        let mut attempt = 0u32;
        while !self.stopping {
            match self.connect().await {
                Ok(link) => {
                    attempt = 0;
                    self.state.counters.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(url = %self.cfg.bus.url, node = %self.state.node_id, "bus connected");
                    let res = self.serve(link).await;
                    self.state.set_connected(false);
                    // Counts from other nodes cannot arrive any more: answer with what came.
                    self.answer_all_directs();
                    self.replies.clear();
                    // The mirror is written whole on reconnect; queued writes would repeat it.
                    self.dirty.clear();
                    self.dirty_set.clear();
                    match res {
                        Ok(()) => break,
                        Err(e) => tracing::warn!(error = %e, "bus: lost redis"),
                    }
                }
                Err(e) => {
                    if attempt == 0 {
                        tracing::warn!(url = %self.cfg.bus.url, error = %e, "bus: cannot reach redis; retrying");
                    }
                }
            }
            self.state.counters.failures.fetch_add(1, Ordering::Relaxed);
            let delay = backoff(attempt, self.cfg.bus.backoff_max, self.next_rand());
            attempt = attempt.saturating_add(1);
            self.idle(delay).await;
        }
        // Whoever still waits for an answer gets a failure rather than silence.
        while let Some(o) = self.outbox.pop_front() {
            self.fail_publish(o.from);
        }
        tracing::info!("bus stopped");
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*: jitter and epoch candidates need spread, not secrecy.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Waits `delay` while taking requests, so nothing piles up in the channel.
    async fn idle(&mut self, delay: Duration) {
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                r = self.rx.recv() => match r {
                    Some(req) => self.take(req, false),
                    None => { self.stopping = true; return; }
                },
                _ = tokio::time::sleep_until(until) => return,
            }
        }
    }

    async fn connect(&mut self) -> Result<Link> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        let pubsub = tokio::time::timeout(IO_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(timeout_error)??;
        let (mut sink, stream) = pubsub.split();
        let publish: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(PUBLISH_LUA)
            .query_async(&mut conn)
            .await?;
        let fetch: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(FETCH_LUA)
            .query_async(&mut conn)
            .await?;
        self.shas = (publish, fetch);
        let mut topics: Vec<String> = self.topics.iter().map(|c| keys::topic(c)).collect();
        topics.push(keys::topic(&self.canary_channel()));
        topics.push(keys::reply_topic(&self.state.node_id));
        self.user_topics = self.users.keys().cloned().collect();
        topics.extend(self.user_topics.iter().map(|u| keys::user_topic(u)));
        for chunk in topics.chunks(1000) {
            tokio::time::timeout(IO_TIMEOUT, sink.subscribe(chunk))
                .await
                .map_err(timeout_error)??;
        }
        let mut link = Link { conn, sink, stream };
        self.rewrite_presence(&mut link).await?;
        self.state.set_connected(true);
        // Owners that were receiving may have missed messages while we were away.
        for ch in &self.topics {
            self.tell_owner(
                ch,
                BusEvent::Resync {
                    channel: Arc::clone(ch),
                },
            );
        }
        self.heartbeat(&mut link).await?;
        Ok(link)
    }

    async fn serve(&mut self, mut link: Link) -> Result<()> {
        let period = self.state.heartbeat;
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(Duration::from_millis(250));
        let mut poll = tokio::time::interval(super::PRESENCE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Everything pub/sub has already delivered goes to the shards before the next
            // round trip: one round trip per batch, not per message.
            loop {
                match link.stream.next().now_or_never() {
                    Some(Some(msg)) => {
                        self.on_message(msg.get_channel_name(), msg.get_payload_bytes())
                    }
                    Some(None) => return Err(closed("pub/sub connection closed")),
                    None => break,
                }
            }
            self.work(&mut link).await?;
            tokio::select! {
                biased;
                m = link.stream.next() => match m {
                    Some(msg) => self.on_message(msg.get_channel_name(), msg.get_payload_bytes()),
                    None => return Err(closed("pub/sub connection closed")),
                },
                r = self.rx.recv() => match r {
                    Some(req) => self.take(req, true),
                    None => { self.stopping = true; return Ok(()); }
                },
                _ = beat.tick() => self.heartbeat(&mut link).await?,
                _ = sweep.tick() => self.expire_directs(),
                _ = poll.tick(), if !self.watched.is_empty() => self.poll_watched(&mut link).await?,
            }
        }
    }

    /// Files a request: publishes into the outbox, the rest into `waiting`.
    fn take(&mut self, req: Req, connected: bool) {
        match req {
            Req::Publish {
                channel,
                data,
                key,
                from,
            } => {
                if self.outbox.len() >= self.cfg.bus.outbox.max(1) {
                    if let Some(old) = self.outbox.pop_front() {
                        self.state
                            .counters
                            .outbox_dropped
                            .fetch_add(1, Ordering::Relaxed);
                        self.fail_publish(old.from);
                    }
                }
                self.outbox.push_back(Outgoing {
                    channel,
                    data,
                    key,
                    from,
                });
                let n = self.outbox.len() as u64;
                self.state.counters.outbox_len.store(n, Ordering::Relaxed);
            }
            Req::Presence {
                channel,
                user,
                delta,
            } => {
                let count = self.mirror_change(&channel, &user, delta);
                if connected {
                    let pair = (channel, user);
                    if !self.dirty_set.contains(&pair) {
                        self.dirty_set.insert(pair.clone());
                        self.dirty.push_back(pair);
                    }
                } else if count == 0 {
                    self.gone.insert((channel, user));
                } else {
                    self.gone.remove(&(channel, user));
                }
            }
            Req::User { user, delta } => {
                let n = self.users.entry(Arc::clone(&user)).or_insert(0);
                *n = n.saturating_add_signed(delta);
                if *n == 0 {
                    self.users.remove(&user);
                }
                if connected {
                    self.waiting.push_back(Req::User { user, delta });
                }
            }
            Req::Direct { user, what, tally } if !connected => {
                self.local_round(&user, what, RoundFor::Sender(tally));
            }
            Req::DirectCount { token, count } => self.round_count(token, count),
            Req::Watch { channel, on: true } => {
                self.watched.insert(channel);
            }
            Req::Watch { channel, on: false } => {
                self.watched.remove(&channel);
            }
            Req::List { channel, to } if !connected => {
                let members = self.local_members(&channel);
                self.answer_list(&channel, to, members);
            }
            other => self.waiting.push_back(other),
        }
    }

    /// Serves what waits, oldest first; each request leaves the queue only once done.
    async fn work(&mut self, link: &mut Link) -> Result<()> {
        loop {
            // Take whatever arrived meanwhile, so a pipeline carries as much as it can.
            while let Ok(req) = self.rx.try_recv() {
                self.take(req, true);
            }
            if let Some(Req::List { .. }) = self.waiting.front() {
                let Some(Req::List { channel, to }) = self.waiting.pop_front() else {
                    continue;
                };
                match self.cluster_members(link, &channel).await {
                    Ok(members) => self.answer_list(&channel, to, members),
                    Err(e) => {
                        let members = self.local_members(&channel);
                        self.answer_list(&channel, to, members);
                        return Err(e);
                    }
                }
                continue;
            }
            if let Some(Req::Direct { .. }) = self.waiting.front() {
                let Some(Req::Direct { user, what, tally }) = self.waiting.pop_front() else {
                    continue;
                };
                self.send_direct(link, user, what, tally).await?;
                continue;
            }
            if let Some((node, token, count)) = self.replies.front() {
                let payload = format!("{token} {count}");
                redis::cmd("PUBLISH")
                    .arg(keys::reply_topic(node))
                    .arg(payload)
                    .query_async::<()>(&mut link.conn)
                    .await?;
                self.replies.pop_front();
                continue;
            }
            if let Some(req) = self.waiting.front().and_then(peek) {
                self.serve_one(link, req).await?;
                self.waiting.pop_front();
                continue;
            }
            if self.waiting.pop_front().is_some() {
                continue;
            }
            // Publishes first, then one batch of presence writes, so a burst of subscribes
            // (a million of them during a ramp) delays a publish by one batch at most.
            if self.outbox.is_empty() && self.dirty.is_empty() {
                return Ok(());
            }
            if !self.outbox.is_empty() {
                self.flush_publishes(link).await?;
            }
            if !self.dirty.is_empty() {
                self.write_presence(link).await?;
            }
        }
    }

    async fn serve_one(&mut self, link: &mut Link, req: Peek) -> Result<()> {
        match req {
            Peek::Sync { channel, token } => {
                if !self.topics.contains(&channel) {
                    tokio::time::timeout(IO_TIMEOUT, link.sink.subscribe(keys::topic(&channel)))
                        .await
                        .map_err(timeout_error)??;
                    self.topics.insert(Arc::clone(&channel));
                }
                let ev = self.fetch(link, &channel, token, None).await?;
                self.tell_owner(&channel, ev);
            }
            Peek::Unsync { channel } => {
                if self.topics.remove(&channel) {
                    tokio::time::timeout(IO_TIMEOUT, link.sink.unsubscribe(keys::topic(&channel)))
                        .await
                        .map_err(timeout_error)??;
                }
            }
            Peek::Fetch {
                channel,
                token,
                after,
            } => {
                let ev = self.fetch(link, &channel, token, Some(after)).await?;
                self.tell_owner(&channel, ev);
            }
            Peek::User { user } => {
                let want = self.users.contains_key(&user);
                let have = self.user_topics.contains(&user);
                let topic = keys::user_topic(&user);
                if want && !have {
                    tokio::time::timeout(IO_TIMEOUT, link.sink.subscribe(topic))
                        .await
                        .map_err(timeout_error)??;
                    self.user_topics.insert(user);
                } else if !want && have {
                    tokio::time::timeout(IO_TIMEOUT, link.sink.unsubscribe(topic))
                        .await
                        .map_err(timeout_error)??;
                    self.user_topics.remove(&user);
                }
            }
        }
        Ok(())
    }

    async fn flush_publishes(&mut self, link: &mut Link) -> Result<()> {
        let n = self.outbox.len().min(BATCH);
        let mut pipe = redis::pipe();
        let (cap, ttl) = (
            self.cfg.history_size,
            self.cfg.history_ttl.as_millis() as u64,
        );
        for i in 0..n {
            let cand = keys::epoch_hex(self.next_rand() as u32);
            let o = &self.outbox[i];
            let key = o.key.as_deref().unwrap_or("");
            self.script_call(&mut pipe, &self.shas.0, &o.channel);
            pipe.arg(keys::topic(&o.channel))
                .arg(o.data.get())
                .arg(key)
                .arg(cap)
                .arg(ttl)
                .arg(cand)
                .arg(self.key_ttl_ms);
        }
        let replies: Vec<(u64, String)> = pipe.query_async(&mut link.conn).await?;
        for (seq, _epoch) in replies {
            let Some(o) = self.outbox.pop_front() else {
                break;
            };
            self.state
                .counters
                .published
                .fetch_add(1, Ordering::Relaxed);
            match o.from {
                Publisher::Conn(to, id) => {
                    self.shards[shard_of(&to)].send(Command::Hub(HubCmd::Published {
                        to,
                        id,
                        seq,
                    }));
                }
                Publisher::Caller(tx) => {
                    let _ = tx.send(seq);
                }
            }
        }
        let left = self.outbox.len() as u64;
        self.state
            .counters
            .outbox_len
            .store(left, Ordering::Relaxed);
        Ok(())
    }

    /// `EVALSHA sha 3 <seq> <epoch> <hist>` for `channel`, arguments to follow.
    fn script_call(&self, pipe: &mut redis::Pipeline, sha: &str, channel: &str) {
        pipe.cmd("EVALSHA")
            .arg(sha)
            .arg(3)
            .arg(keys::key(channel, "seq"))
            .arg(keys::key(channel, "epoch"))
            .arg(keys::key(channel, "hist"));
    }

    /// The channel's position and (with `after`) what it retained after that.
    async fn fetch(
        &mut self,
        link: &mut Link,
        channel: &Arc<str>,
        token: u64,
        after: Option<u64>,
    ) -> Result<BusEvent> {
        let cand = keys::epoch_hex(self.next_rand() as u32);
        let mut pipe = redis::pipe();
        self.script_call(&mut pipe, &self.shas.1, channel);
        pipe.arg(after.map_or(-1i64, |a| a.min(i64::MAX as u64) as i64))
            .arg(cand)
            .arg(self.cfg.history_size)
            .arg(self.cfg.history_ttl.as_millis() as u64)
            .arg(self.key_ttl_ms);
        let (reply,): (Vec<Value>,) = pipe.query_async(&mut link.conn).await?;
        let (epoch, last, entries) = parse_position(&reply, &self.state)
            .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Parse, "bad fetch reply")))?;
        Ok(BusEvent::Position {
            channel: Arc::clone(channel),
            token,
            epoch,
            last,
            entries,
        })
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        if let Some(user) = keys::user_of(topic) {
            return self.on_direct(user, payload);
        }
        if keys::is_reply(topic) {
            return self.on_reply(payload);
        }
        let Some(ch) = keys::channel_of(topic) else {
            return;
        };
        let Some(p) = keys::parse_payload(payload) else {
            self.state
                .counters
                .malformed
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        if let Some(node) = ch.strip_prefix(CANARY_PREFIX) {
            if node == self.state.node_id {
                self.tell_owner(ch, BusEvent::Canary);
            }
            return;
        }
        let Some(entry) = entry(p.seq, p.key, p.data) else {
            self.state
                .counters
                .malformed
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.state.counters.received.fetch_add(1, Ordering::Relaxed);
        let channel: Arc<str> = match self.topics.get(ch) {
            Some(c) => Arc::clone(c),
            None => Arc::from(ch),
        };
        self.tell_owner(
            &channel.clone(),
            BusEvent::Message {
                channel,
                epoch: p.epoch,
                entry,
            },
        );
    }

    fn tell_owner(&self, channel: &str, ev: BusEvent) {
        let owner = owner_of(channel, self.shards.len());
        self.shards[owner].send(Command::Hub(HubCmd::Bus(ev)));
    }

    fn fail_publish(&self, from: Publisher) {
        match from {
            Publisher::Conn(to, id) => {
                self.shards[shard_of(&to)].send(Command::Hub(HubCmd::PublishFailed { to, id }));
            }
            // Dropping the sender tells the caller at once.
            Publisher::Caller(tx) => drop(tx),
        }
    }
}

/// A copy of the parts of a waiting request that serving it needs (the request itself stays
/// queued until served, so a lost connection loses nothing).
enum Peek {
    Sync {
        channel: Arc<str>,
        token: u64,
    },
    Unsync {
        channel: Arc<str>,
    },
    Fetch {
        channel: Arc<str>,
        token: u64,
        after: u64,
    },
    User {
        user: Arc<str>,
    },
}

/// What serving `req` needs; `None` for requests never kept in `waiting` (publishes, lists).
fn peek(req: &Req) -> Option<Peek> {
    Some(match req {
        Req::Sync { channel, token } => Peek::Sync {
            channel: Arc::clone(channel),
            token: *token,
        },
        Req::Unsync { channel } => Peek::Unsync {
            channel: Arc::clone(channel),
        },
        Req::Fetch {
            channel,
            token,
            after,
        } => Peek::Fetch {
            channel: Arc::clone(channel),
            token: *token,
            after: *after,
        },
        Req::User { user, .. } => Peek::User {
            user: Arc::clone(user),
        },
        Req::List { .. }
        | Req::Publish { .. }
        | Req::Direct { .. }
        | Req::DirectCount { .. }
        | Req::Watch { .. }
        | Req::Presence { .. } => return None,
    })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn timeout_error(_: tokio::time::error::Elapsed) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "redis did not answer in time"))
}

fn closed(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, what))
}
