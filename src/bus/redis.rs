//! The Redis bus thread: one single-threaded tokio runtime, a command connection and a
//! pub/sub connection, and the node's bounded queues for the times Redis is away.
//!
//! **Loop.** Connect (both connections, load the two scripts, subscribe to every topic the
//! node wants, rewrite this node's presence, ask every synced owner to check for a gap), then
//! serve: pub/sub deliveries go to their channel's owner shard; requests are served in
//! arrival order; publishes leave in pipelines of up to [`BATCH`]; every heartbeat renews the
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

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Value};

use super::keys::{self, CANARY_PREFIX};
use super::{backoff, shard_of, BusEvent, BusState, Entry, Inbox, NodeRecord, Req};
use crate::config::Config;
use crate::hub::wire;
use crate::metrics::Published;
use crate::shard::{
    owner_of, Asker, Command, Handle, HubCmd, Members, PresenceCmd, Publisher, Tally, UserCmd,
};

const PUBLISH_LUA: &str = include_str!("publish.lua");
const FETCH_LUA: &str = include_str!("fetch.lua");
/// Connect and reply timeout for every Redis call: a call that takes longer means Redis is
/// gone for practical purposes.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
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
        topics: HashSet::new(),
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

/// A direct message sent from this node, waiting for the counts of the nodes that have the
/// user.
struct Outstanding {
    tally: Tally,
    waiting: usize,
    sum: u64,
    deadline: tokio::time::Instant,
}

/// Where a round of local delivery (every shard of this node) reports its total.
enum RoundFor {
    /// A direct message sent from another node: its reply topic and token.
    Remote(String, u64),
    /// One sent from this node (its `directs` token).
    Local(u64),
    /// Straight to the sender (Redis away: this node only).
    Sender(Tally),
}

/// One round of local delivery.
struct Round {
    for_: RoundFor,
    waiting: usize,
    sum: u64,
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
    /// Requests other than publishes, in arrival order, served when connected.
    waiting: VecDeque<Req>,
    /// Channels this node receives (subscribed whenever connected).
    topics: HashSet<Arc<str>>,
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
                    for (_, o) in std::mem::take(&mut self.directs) {
                        self.answer(o.tally, o.sum);
                    }
                    self.replies.clear();
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
        loop {
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
                    self.waiting.push_back(Req::Presence {
                        channel,
                        user,
                        delta: count as i32,
                    });
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
            Req::Direct { user, frame, tally } if !connected => {
                self.local_round(&user, frame, RoundFor::Sender(tally));
            }
            Req::DirectCount { token, count } => self.round_count(token, count),
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
                let Some(Req::Direct { user, frame, tally }) = self.waiting.pop_front() else {
                    continue;
                };
                self.send_direct(link, user, frame, tally).await?;
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
            if self.outbox.is_empty() {
                return Ok(());
            }
            self.flush_publishes(link).await?;
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
            Peek::Presence {
                channel,
                user,
                count,
            } => {
                let key = keys::key(&channel, "presence");
                let field = keys::presence_field(&self.state.node_id, &user);
                let mut p = redis::pipe();
                if count == 0 {
                    p.cmd("HDEL").arg(&key).arg(field).ignore();
                } else {
                    p.cmd("HSET").arg(&key).arg(field).arg(count).ignore();
                }
                p.cmd("PEXPIRE").arg(&key).arg(self.key_ttl_ms).ignore();
                p.query_async::<()>(&mut link.conn).await?;
                if count == 0 {
                    self.forget_zero(&channel, &user);
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

    /// A direct message from this node: to every node with the user (`PUBLISH` says how
    /// many), each of which answers with its count.
    async fn send_direct(
        &mut self,
        link: &mut Link,
        user: Arc<str>,
        frame: Bytes,
        tally: Tally,
    ) -> Result<()> {
        self.next_token += 1;
        let token = self.next_token;
        let mut payload = format!("{} {token} ", self.state.node_id).into_bytes();
        payload.extend_from_slice(&frame);
        let sent: Result<usize> = redis::cmd("PUBLISH")
            .arg(keys::user_topic(&user))
            .arg(payload)
            .query_async(&mut link.conn)
            .await;
        match sent {
            Ok(0) => self.answer(tally, 0),
            Ok(nodes) => {
                let deadline = tokio::time::Instant::now() + DIRECT_WAIT;
                let o = Outstanding {
                    tally,
                    waiting: nodes,
                    sum: 0,
                    deadline,
                };
                self.directs.insert(token, o);
            }
            Err(e) => {
                // Redis went away under it: this node's connections still get it.
                self.local_round(&user, frame, RoundFor::Sender(tally));
                return Err(e);
            }
        }
        Ok(())
    }

    /// `<node> <token> <frame>` on a user's topic: deliver here, then report the count.
    fn on_direct(&mut self, user: &str, payload: &[u8]) {
        let parsed = keys::split_word(payload).and_then(|(node, rest)| {
            let (token, frame) = keys::split_word(rest)?;
            Some((node.to_owned(), token.parse::<u64>().ok()?, frame))
        });
        let Some((node, token, frame)) = parsed else {
            self.state
                .counters
                .malformed
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let frame = Bytes::copy_from_slice(frame);
        let for_ = if node == self.state.node_id {
            RoundFor::Local(token)
        } else {
            RoundFor::Remote(node, token)
        };
        self.local_round(&Arc::from(user), frame, for_);
    }

    /// `<token> <count>` on our reply topic: one node's count for our direct message.
    fn on_reply(&mut self, payload: &[u8]) {
        let parsed = keys::split_word(payload).and_then(|(token, count)| {
            let count = std::str::from_utf8(count).ok()?.parse::<u64>().ok()?;
            Some((token.parse::<u64>().ok()?, count))
        });
        match parsed {
            Some((token, count)) => self.direct_count(token, count),
            None => {
                self.state
                    .counters
                    .malformed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Gives `frame` to every shard of this node for `user`'s connections.
    fn local_round(&mut self, user: &Arc<str>, frame: Bytes, for_: RoundFor) {
        self.next_token += 1;
        let token = self.next_token;
        let mut asked = 0;
        for h in &self.shards {
            let cmd = UserCmd::Direct {
                user: Arc::clone(user),
                frame: frame.clone(),
                tally: Tally::Bus { token },
            };
            if h.send(Command::Hub(HubCmd::User(cmd))) {
                asked += 1;
            }
        }
        let round = Round {
            for_,
            waiting: asked,
            sum: 0,
        };
        if asked == 0 {
            return self.round_done(round);
        }
        self.rounds.insert(token, round);
    }

    fn round_count(&mut self, token: u64, count: u64) {
        let Some(r) = self.rounds.get_mut(&token) else {
            return;
        };
        r.sum += count;
        r.waiting -= 1;
        if r.waiting == 0 {
            if let Some(r) = self.rounds.remove(&token) {
                self.round_done(r);
            }
        }
    }

    fn round_done(&mut self, r: Round) {
        match r.for_ {
            RoundFor::Remote(node, token) => self.replies.push_back((node, token, r.sum)),
            RoundFor::Local(token) => self.direct_count(token, r.sum),
            RoundFor::Sender(tally) => self.answer(tally, r.sum),
        }
    }

    /// One node's count for a direct message from this node.
    fn direct_count(&mut self, token: u64, count: u64) {
        let Some(o) = self.directs.get_mut(&token) else {
            return;
        };
        o.sum += count;
        o.waiting = o.waiting.saturating_sub(1);
        if o.waiting == 0 {
            if let Some(o) = self.directs.remove(&token) {
                self.answer(o.tally, o.sum);
            }
        }
    }

    /// Answers direct messages whose nodes did not all answer in time, with what came.
    fn expire_directs(&mut self) {
        let now = tokio::time::Instant::now();
        let late: Vec<u64> = self
            .directs
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for t in late {
            if let Some(o) = self.directs.remove(&t) {
                self.answer(o.tally, o.sum);
            }
        }
    }

    fn answer(&self, tally: Tally, count: u64) {
        match tally {
            Tally::Shard { shard, token } => {
                let cmd = UserCmd::Delivered { token, count };
                if let Some(h) = self.shards.get(shard as usize) {
                    h.send(Command::Hub(HubCmd::User(cmd)));
                }
            }
            Tally::Caller(tx) => {
                let _ = tx.send(count);
            }
            Tally::Bus { .. } => {}
        }
    }

    fn tell_owner(&self, channel: &str, ev: BusEvent) {
        let owner = owner_of(channel, self.shards.len());
        self.shards[owner].send(Command::Hub(HubCmd::Bus(ev)));
    }

    fn canary_channel(&self) -> String {
        format!("{CANARY_PREFIX}{}", self.state.node_id)
    }

    /// Renews the node's record, reads the registry, and sends a canary.
    async fn heartbeat(&mut self, link: &mut Link) -> Result<()> {
        let connections: u64 = self.stats.iter().map(|p| p.load().open).sum();
        let rec = NodeRecord {
            id: self.state.node_id.clone(),
            address: self.address.clone(),
            connections,
            started_ms: self.started_ms,
            heartbeat_ms: unix_ms(),
        };
        let json = serde_json::to_string(&rec).unwrap_or_default();
        let ttl_ms = self.cfg.bus.node_ttl.as_millis() as u64;
        let canary = self.canary_channel();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(keys::node_key(&rec.id))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms.max(1))
            .ignore()
            .cmd("ZADD")
            .arg(keys::NODES)
            .arg(rec.heartbeat_ms)
            .arg(&rec.id)
            .ignore();
        self.script_call(&mut pipe, &self.shas.0, &canary);
        pipe.arg(keys::topic(&canary))
            .arg(rec.heartbeat_ms)
            .arg("")
            .arg(0)
            .arg(0)
            .arg("00000000")
            .arg(60_000)
            .ignore();
        pipe.query_async::<()>(&mut link.conn).await?;
        self.refresh_nodes(link).await
    }

    /// Reads every registered node's record; forgets those whose record expired.
    async fn refresh_nodes(&mut self, link: &mut Link) -> Result<()> {
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::NODES)
            .arg(0)
            .arg(-1)
            .query_async(&mut link.conn)
            .await?;
        if ids.is_empty() {
            self.state.set_nodes(Vec::new());
            return Ok(());
        }
        let mut get = redis::cmd("MGET");
        for id in &ids {
            get.arg(keys::node_key(id));
        }
        let recs: Vec<Option<String>> = get.query_async(&mut link.conn).await?;
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for (id, rec) in ids.iter().zip(recs) {
            match rec.and_then(|r| serde_json::from_str::<NodeRecord>(&r).ok()) {
                Some(r) => live.push(r),
                None => dead.push(id),
            }
        }
        if !dead.is_empty() {
            redis::cmd("ZREM")
                .arg(keys::NODES)
                .arg(&dead)
                .query_async::<()>(&mut link.conn)
                .await?;
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        self.state.set_nodes(live);
        Ok(())
    }

    fn mirror_change(&mut self, channel: &Arc<str>, user: &Arc<str>, delta: i32) -> u32 {
        let users = self.mirror.entry(Arc::clone(channel)).or_default();
        let n = users.entry(Arc::clone(user)).or_insert(0);
        *n = n.saturating_add_signed(delta);
        *n
    }

    /// Drops a zero count from the mirror once Redis knows.
    fn forget_zero(&mut self, channel: &Arc<str>, user: &Arc<str>) {
        if let Some(users) = self.mirror.get_mut(channel) {
            if users.get(user) == Some(&0) {
                users.remove(user);
            }
            if users.is_empty() {
                self.mirror.remove(channel);
            }
        }
    }

    /// After a (re)connect: this node's counts, all of them, and the deletions Redis missed.
    async fn rewrite_presence(&mut self, link: &mut Link) -> Result<()> {
        let node = self.state.node_id.clone();
        let mut pipe = redis::pipe();
        let mut n = 0;
        for (ch, users) in &self.mirror {
            let key = keys::key(ch, "presence");
            for (user, &count) in users {
                let field = keys::presence_field(&node, user);
                if count == 0 {
                    pipe.cmd("HDEL").arg(&key).arg(field).ignore();
                } else {
                    pipe.cmd("HSET").arg(&key).arg(field).arg(count).ignore();
                }
                n += 1;
            }
            pipe.cmd("PEXPIRE").arg(&key).arg(self.key_ttl_ms).ignore();
        }
        for (ch, user) in &self.gone {
            let field = keys::presence_field(&node, user);
            pipe.cmd("HDEL")
                .arg(keys::key(ch, "presence"))
                .arg(field)
                .ignore();
            n += 1;
        }
        if n > 0 {
            pipe.query_async::<()>(&mut link.conn).await?;
        }
        self.gone.clear();
        for users in self.mirror.values_mut() {
            users.retain(|_, c| *c > 0);
        }
        self.mirror.retain(|_, u| !u.is_empty());
        Ok(())
    }

    /// The channel's members over every live node (fields of dead nodes are deleted).
    async fn cluster_members(&mut self, link: &mut Link, channel: &str) -> Result<Members> {
        self.refresh_nodes(link).await?;
        let live: HashSet<String> = self.state.nodes().into_iter().map(|n| n.id).collect();
        let key = keys::key(channel, "presence");
        let fields: Vec<(String, u32)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut link.conn)
            .await?;
        let mut counts: HashMap<String, u32> = HashMap::new();
        let mut dead = Vec::new();
        for (field, n) in fields {
            let Some((node, user)) = keys::split_field(&field) else {
                continue;
            };
            if node != self.state.node_id && !live.contains(node) {
                dead.push(field.clone());
                continue;
            }
            *counts.entry(cluster_user(node, user)).or_default() += n;
        }
        if !dead.is_empty() {
            redis::cmd("HDEL")
                .arg(&key)
                .arg(&dead)
                .query_async::<()>(&mut link.conn)
                .await?;
        }
        Ok(bounded(counts, self.cfg.max_presence_members))
    }

    /// This node's own members of `channel` (when Redis is away).
    fn local_members(&self, channel: &str) -> Members {
        let counts = self.mirror.get(channel).map(|users| {
            users
                .iter()
                .filter(|(_, &c)| c > 0)
                .map(|(u, &c)| (cluster_user(&self.state.node_id, u), c))
                .collect()
        });
        bounded(counts.unwrap_or_default(), self.cfg.max_presence_members)
    }

    fn answer_list(&self, channel: &str, to: Asker, list: Members) {
        match to {
            Asker::Conn(addr, id) => {
                let mut reply = Vec::with_capacity(64 + list.members.len() * 32);
                let members = list.members.iter().map(|(u, n)| (&**u, *n));
                wire::reply_presence(&mut reply, id, channel, members, list.unlisted);
                let listed = PresenceCmd::Listed {
                    channel: Arc::from(channel),
                    to: addr,
                    reply,
                };
                self.shards[shard_of(&addr)].send(Command::Hub(HubCmd::Presence(listed)));
            }
            Asker::Caller(tx) => {
                let _ = tx.send(list);
            }
        }
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
    Presence {
        channel: Arc<str>,
        user: Arc<str>,
        count: u32,
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
        Req::Presence {
            channel,
            user,
            delta,
        } => Peek::Presence {
            channel: Arc::clone(channel),
            user: Arc::clone(user),
            count: (*delta).max(0) as u32,
        },
        Req::User { user, .. } => Peek::User {
            user: Arc::clone(user),
        },
        Req::List { .. } | Req::Publish { .. } | Req::Direct { .. } | Req::DirectCount { .. } => {
            return None
        }
    })
}

/// A presence user id as the cluster lists it: anonymous ids are per node, so they carry it.
fn cluster_user(node: &str, user: &str) -> String {
    if user.starts_with(crate::hub::presence::ANON_PREFIX) {
        format!("{user}@{node}")
    } else {
        user.to_owned()
    }
}

/// Members sorted by user id, at most `max` listed; the rest counted as unlisted.
fn bounded(counts: HashMap<String, u32>, max: usize) -> Members {
    let mut all: Vec<(Arc<str>, u32)> = counts
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|(u, n)| (Arc::from(u), n))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let unlisted = all.iter().skip(max).map(|(_, n)| u64::from(*n)).sum();
    all.truncate(max);
    Members {
        members: all,
        unlisted,
    }
}

/// Reads the fetch script's reply: epoch, last, then (seq, key, data) triples.
fn parse_position(v: &[Value], state: &BusState) -> Option<(u32, u64, Vec<Entry>)> {
    let epoch = wire::parse_epoch(std::str::from_utf8(&bytes_of(v.first()?)?).ok()?)?;
    let last = int_of(v.get(1)?)?;
    let mut entries = Vec::with_capacity((v.len() - 2) / 3);
    for t in v[2..].chunks_exact(3) {
        let seq = int_of(&t[0])?;
        let (key, data) = (bytes_of(&t[1])?, bytes_of(&t[2])?);
        match entry(seq, &key, &data) {
            Some(e) => entries.push(e),
            None => {
                state.counters.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Some((epoch, last, entries))
}

/// An entry, if `data` is one JSON value and `key` is UTF-8.
fn entry(seq: u64, key: &[u8], data: &[u8]) -> Option<Entry> {
    serde_json::from_slice::<&serde_json::value::RawValue>(data).ok()?;
    let key = match key {
        [] => None,
        k => Some(Arc::from(std::str::from_utf8(k).ok()?)),
    };
    Some(Entry {
        seq,
        key,
        data: Bytes::copy_from_slice(data),
    })
}

fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn int_of(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => std::str::from_utf8(&bytes_of(other)?).ok()?.parse().ok(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_sorted_bounded_and_anonymous_ids_carry_their_node() {
        let mut counts = HashMap::new();
        counts.insert("carol".to_string(), 1);
        counts.insert("alice".to_string(), 2);
        counts.insert("bob".to_string(), 3);
        counts.insert("zero".to_string(), 0);
        let m = bounded(counts, 2);
        let names: Vec<&str> = m.members.iter().map(|(u, _)| &**u).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(m.unlisted, 1);
        assert_eq!(cluster_user("n1", "anon:0.1.2"), "anon:0.1.2@n1");
        assert_eq!(cluster_user("n1", "alice"), "alice");
    }

    #[test]
    fn fetch_replies_are_read_and_bad_data_is_skipped() {
        let state = BusState::new("n".into(), Duration::from_secs(1));
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = vec![
            b("9f2c01ab"),
            Value::Int(7),
            b("6"),
            b(""),
            b(r#"{"a":1}"#),
            b("7"),
            b("k"),
            b("not json"),
        ];
        let (epoch, last, entries) = parse_position(&reply, &state).unwrap();
        assert_eq!((epoch, last), (0x9f2c_01ab, 7));
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].seq, 6);
        assert!(entries[0].key.is_none());
        assert_eq!(state.counters.malformed.load(Ordering::Relaxed), 1);
        assert!(parse_position(&[b("zz"), Value::Int(1)], &state).is_none());
    }
}
