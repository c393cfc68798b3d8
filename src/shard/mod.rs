//! Shards: one thread per core, each the sole owner of its listener, its slab of connections,
//! its read buffer and its timer wheel. This is the only room that touches sockets.
//!
//! Other threads reach a shard only through its [`Handle`]: a crossbeam channel of
//! [`Command`]s plus the shard's `mio::Waker`. [`Command`] is the complete list of what may be
//! asked of a shard. A handle wakes the shard at most once per batch of commands (an atomic
//! flag the shard clears before draining its inbox), so a burst of broadcasts costs one eventfd
//! write, not one per message.
//!
//! [`Server::start`] binds every shard's listener before any thread starts, so a bad address
//! fails synchronously with a clear error.

mod admission;
mod conn;
mod drain;
mod event_loop;
mod hub;
mod hub_index;
mod hub_owner;
mod hub_position;
mod hub_presence;
mod hub_relay;
mod hub_sweep;
mod hub_users;
mod lifecycle;
mod listener;
mod read;
pub mod send_queue;
mod slow;
mod sse;
mod sweep;

pub use conn::{Conn, Phase};
pub use hub::{owner_of, ConnAddr, HubCmd, Publisher};
pub use hub_presence::{Asker, Members, PresenceCmd};
pub use hub_users::{Tally, UserCmd};
pub use lifecycle::DISCONNECTED;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use mio::{Poll, Token, Waker};

use crate::config::{Config, DrainPlan};
use crate::metrics::{self, Counters, Published};

/// Token of the shard's listener.
const LISTENER: Token = Token(usize::MAX - 1);
/// Token of the shard's waker.
const WAKER: Token = Token(usize::MAX - 2);

/// Everything another thread may ask of a shard.
#[derive(Debug)]
pub enum Command {
    /// Deliver these already-encoded server frames (one or more, back to back) to every open
    /// connection of the shard. `count` is the number of messages inside, for the counters.
    Broadcast {
        /// Encoded frames.
        frames: Bytes,
        /// Messages inside `frames`.
        count: u32,
    },
    /// Stop accepting, close every connection at the plan's pace with its code (hub
    /// connections get their resume positions first), exit when every shard's connections
    /// are gone or the plan's timeout passes (`drain.rs`).
    Drain(DrainPlan),
    /// Exit now, dropping every connection.
    Shutdown,
    /// Channel-protocol traffic between shards (`--app hub`).
    Hub(hub::HubCmd),
    /// Close every open connection of `user` (a token's `sub` or an anonymous id) with
    /// [`DISCONNECTED`], and send how many down `reply`.
    Disconnect {
        /// The user id.
        user: Arc<str>,
        /// Where the count goes.
        reply: Sender<usize>,
    },
}

/// The way into a shard from any other thread.
#[derive(Debug, Clone)]
pub struct Handle {
    id: usize,
    tx: Sender<Command>,
    waker: Arc<Waker>,
    notified: Arc<AtomicBool>,
}

impl Handle {
    /// The shard's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Sends a command, waking the shard unless a wake-up is already pending.
    /// Returns false if the shard has exited.
    pub fn send(&self, cmd: Command) -> bool {
        if self.tx.send(cmd).is_err() {
            return false;
        }
        // Ordering: the push above happens before the swap; the shard clears the flag before
        // it drains. Either the shard's drain sees our command, or we see `false` and wake it.
        if !self.notified.swap(true, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
        true
    }

    /// Commands waiting in the shard's inbox (used for cross-shard backpressure).
    pub fn backlog(&self) -> usize {
        self.tx.len()
    }
}

/// Why [`Server::publish`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The server does not run the channel protocol (`--app hub`).
    #[error("the server is not running the channel protocol (--app hub)")]
    NotHub,
    /// The channel name breaks the naming rules.
    #[error("invalid channel name")]
    BadChannel,
    /// The owner shard did not answer in time.
    #[error("timed out waiting for the channel's owner")]
    Timeout,
    /// The server is shutting down.
    #[error("the server has stopped")]
    Stopped,
    /// The user id breaks the rules (1 to 128 bytes, no control characters).
    #[error("invalid user id")]
    BadUser,
    /// The bus dropped the message (Redis unreachable and its outbox full).
    #[error("the bus is unavailable; nothing was published")]
    Unavailable,
}

/// Sums up to `n` counts from `rx`, waiting at most `timeout` in all.
fn gather<T: Copy + Default + std::ops::AddAssign>(
    rx: &Receiver<T>,
    n: usize,
    timeout: std::time::Duration,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    let mut total = T::default();
    for _ in 0..n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) => total += v,
            Err(_) => break,
        }
    }
    total
}

/// A running group of shards serving one address.
#[derive(Debug)]
pub struct Server {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stats: Vec<Published>,
    local_addr: SocketAddr,
    draining: Arc<AtomicBool>,
    app: crate::config::App,
    /// The Redis bus and its thread, when configured.
    bus: Option<(crate::bus::BusHandle, JoinHandle<()>)>,
    /// The configured drain, for signals and for what `POST /drain` does not override.
    plan: DrainPlan,
}

/// Pieces of one shard created on the starting thread and moved into its own.
struct Parts {
    poll: Poll,
    listener: mio::net::TcpListener,
    inbox: Receiver<Command>,
}

impl Server {
    /// Binds `config.shard_count()` listeners on `config.listen` and starts one thread each.
    pub fn start(config: Config) -> io::Result<Server> {
        let n = config.shard_count().max(1);
        let config = Arc::new(config);
        let mut addr = config.listen;
        let mut parts = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for id in 0..n {
            let listener = listener::bind(addr, config.backlog, config.tcp_fastopen)?;
            // With port 0 the first bind picks the port; the rest must share it.
            addr = listener.local_addr()?;
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, inbox) = crossbeam_channel::unbounded();
            handles.push(Handle {
                id,
                tx,
                waker,
                notified: Arc::new(AtomicBool::new(false)),
            });
            parts.push(Parts {
                poll,
                listener,
                inbox,
            });
        }
        let stats: Vec<Published> = (0..n).map(|_| Published::default()).collect();
        let bus = (!config.bus.is_local())
            .then(|| crate::bus::channel(config.bus.node_id(), config.bus.node_ttl / 3));
        let busy = Arc::new(AtomicUsize::new(n));
        let mut threads = Vec::with_capacity(n);
        for (id, p) in parts.into_iter().enumerate() {
            let mut shard = event_loop::Shard::new(
                id,
                Arc::clone(&config),
                p.poll,
                p.listener,
                p.inbox,
                handles[id].notified.clone(),
                handles.iter().filter(|h| h.id != id).cloned().collect(),
                Arc::clone(&busy),
                stats[id].clone(),
            )?;
            shard.bus = bus.as_ref().map(|(h, _)| h.clone());
            let pin = config.pin;
            let t = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || {
                    if pin {
                        let core = id % crate::sys::core_count();
                        if let Err(e) = crate::sys::pin_current_thread(core) {
                            tracing::warn!(shard = id, core, error = %e, "cannot pin shard");
                        }
                    }
                    shard.run();
                })?;
            threads.push(t);
        }
        let bus = match bus {
            Some((handle, inbox)) => {
                let state = Arc::clone(&handle.state);
                let thread = crate::bus::start(
                    Arc::clone(&config),
                    inbox,
                    state,
                    handles.clone(),
                    stats.clone(),
                    addr.to_string(),
                )?;
                tracing::info!(node = %handle.state.node_id, url = %config.bus.url, "bus: redis");
                Some((handle, thread))
            }
            None => None,
        };
        tracing::info!(%addr, shards = n, app = ?config.app, "listening");
        Ok(Server {
            bus,
            handles,
            threads,
            stats,
            local_addr: addr,
            draining: Arc::new(AtomicBool::new(false)),
            app: config.app,
            plan: config.drain_plan(),
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Handles to every shard.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Starts a graceful drain on every shard, as configured (nothing if one has started).
    pub fn drain(&self) {
        self.drain_with(self.plan);
    }

    /// Starts a graceful drain on every shard with `plan` (its code must be one of
    /// [`crate::config::DRAIN_CODES`]). False if a drain had already started: there is only
    /// one.
    pub fn drain_with(&self, plan: DrainPlan) -> bool {
        if self.draining.swap(true, Ordering::SeqCst) {
            return false;
        }
        for h in &self.handles {
            h.send(Command::Drain(plan));
        }
        true
    }

    /// The drain the configuration asks for.
    pub fn drain_plan(&self) -> DrainPlan {
        self.plan
    }

    /// True once a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stops every shard now.
    pub fn shutdown(&self) {
        for h in &self.handles {
            h.send(Command::Shutdown);
        }
    }

    /// Publishes `data` (a JSON value) to `channel` from outside the shards (the server API),
    /// through the channel's owner like any client publish. Returns the sequence number the
    /// message got, or why it could not be published.
    pub fn publish(
        &self,
        channel: &str,
        data: &serde_json::value::RawValue,
        timeout: std::time::Duration,
    ) -> Result<u64, PublishError> {
        if self.app != crate::config::App::Hub {
            return Err(PublishError::NotHub);
        }
        if !crate::hub::wire::valid_channel(channel) {
            return Err(PublishError::BadChannel);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (channel, data) = (Arc::from(channel), data.to_owned());
        let from = hub::Publisher::Caller(tx);
        let sent = match &self.bus {
            Some((bus, _)) => bus.send(crate::bus::Req::Publish {
                channel,
                data,
                key: None,
                from,
            }),
            None => {
                let owner = hub::owner_of(&channel, self.handles.len());
                self.handles[owner].send(Command::Hub(hub::HubCmd::Publish {
                    channel,
                    data,
                    from,
                    key: None,
                }))
            }
        };
        if !sent {
            return Err(PublishError::Stopped);
        }
        rx.recv_timeout(timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => PublishError::Timeout,
            crossbeam_channel::RecvTimeoutError::Disconnected => PublishError::Unavailable,
        })
    }

    /// Channels with subscribers right now and how many, summed over shards, by name.
    pub fn channels(&self, timeout: std::time::Duration) -> Vec<(String, usize)> {
        let mut total: std::collections::BTreeMap<String, usize> = Default::default();
        if self.app != crate::config::App::Hub {
            return Vec::new();
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let asked = self
            .handles
            .iter()
            .filter(|h| h.send(Command::Hub(hub::HubCmd::Channels { reply: tx.clone() })))
            .count();
        let deadline = std::time::Instant::now() + timeout;
        for _ in 0..asked {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(list) = rx.recv_timeout(left) else {
                break;
            };
            for (name, n) in list {
                *total.entry(name.to_string()).or_default() += n;
            }
        }
        total.into_iter().collect()
    }

    /// Who is in `channel`, as its owner shard counts them (docs/PROTOCOL.md, presence).
    pub fn presence(
        &self,
        channel: &str,
        timeout: std::time::Duration,
    ) -> Result<Members, PublishError> {
        if self.app != crate::config::App::Hub {
            return Err(PublishError::NotHub);
        }
        if !crate::hub::wire::valid_channel(channel) {
            return Err(PublishError::BadChannel);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (channel, to): (Arc<str>, _) = (Arc::from(channel), hub_presence::Asker::Caller(tx));
        let sent = match &self.bus {
            Some((bus, _)) => bus.send(crate::bus::Req::List { channel, to }),
            None => {
                let owner = hub::owner_of(&channel, self.handles.len());
                let ask = hub_presence::PresenceCmd::List { channel, to };
                self.handles[owner].send(Command::Hub(hub::HubCmd::Presence(ask)))
            }
        };
        if !sent {
            return Err(PublishError::Stopped);
        }
        rx.recv_timeout(timeout).map_err(|_| PublishError::Timeout)
    }

    /// Sends `data` (a JSON value) to every connection of `user` on every shard, as a direct
    /// message without a sender (`{"direct": <data>}`). Returns how many connections got it,
    /// summed over the shards that answered within `timeout`.
    pub fn direct(
        &self,
        user: &str,
        data: &serde_json::value::RawValue,
        timeout: std::time::Duration,
    ) -> Result<u64, PublishError> {
        if self.app != crate::config::App::Hub {
            return Err(PublishError::NotHub);
        }
        if !crate::hub::wire::valid_user(user) {
            return Err(PublishError::BadUser);
        }
        let frame = crate::hub::wire::direct_frame(None, data);
        let user: Arc<str> = Arc::from(user);
        let (tx, rx) = crossbeam_channel::unbounded();
        if let (Some((bus, _)), None) = (&self.bus, crate::hub::presence::parse_anon(&user)) {
            // Any node may hold the user's connections: the bus gathers every node's count.
            let tally = hub_users::Tally::Caller(tx);
            let what = crate::bus::ToUser::Frame(frame);
            if !bus.send(crate::bus::Req::Direct { user, what, tally }) {
                return Err(PublishError::Stopped);
            }
            return Ok(gather(&rx, 1, timeout));
        }
        let asked = self
            .shards_for(&user)
            .filter(|h| {
                let cmd = hub_users::UserCmd::Direct {
                    user: Arc::clone(&user),
                    frame: frame.clone(),
                    tally: hub_users::Tally::Caller(tx.clone()),
                };
                h.send(Command::Hub(hub::HubCmd::User(cmd)))
            })
            .count();
        Ok(gather(&rx, asked, timeout))
    }

    /// Closes every open connection of `user` (a token's `sub`, or an anonymous id) on every
    /// shard with close code [`DISCONNECTED`]; how many, summed over the shards that answered
    /// within `timeout`. Works whatever the app. With the Redis bus a token's user is
    /// disconnected on every node (the count is the cluster's); an anonymous id names one
    /// connection of this node.
    pub fn disconnect(&self, user: &str, timeout: std::time::Duration) -> usize {
        let user: Arc<str> = Arc::from(user);
        if let (Some((bus, _)), None) = (&self.bus, crate::hub::presence::parse_anon(&user)) {
            let (tx, rx) = crossbeam_channel::unbounded();
            let what = crate::bus::ToUser::Disconnect;
            let tally = hub_users::Tally::Caller(tx);
            if !bus.send(crate::bus::Req::Direct { user, what, tally }) {
                return 0;
            }
            return gather(&rx, 1, timeout) as usize;
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let asked = self
            .shards_for(&user)
            .filter(|h| {
                h.send(Command::Disconnect {
                    user: Arc::clone(&user),
                    reply: tx.clone(),
                })
            })
            .count();
        gather(&rx, asked, timeout)
    }

    /// The shards that may hold connections of `user`: the one an anonymous id names, or all.
    fn shards_for<'a>(&'a self, user: &str) -> impl Iterator<Item = &'a Handle> + 'a {
        let only = crate::hub::presence::parse_anon(user).map(|(s, _, _)| s as usize);
        self.handles
            .iter()
            .filter(move |h| only.is_none_or(|s| s == h.id))
    }

    /// Set once a drain has started (for readiness checks on other threads).
    pub fn draining_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.draining)
    }

    /// Where each shard publishes its counters (for readers on other threads).
    pub fn published(&self) -> Vec<Published> {
        self.stats.clone()
    }

    /// Latest per-shard counters (published every ~250 ms and at exit).
    pub fn shard_counters(&self) -> Vec<Counters> {
        self.stats.iter().map(Published::load).collect()
    }

    /// Sum over shards.
    pub fn counters(&self) -> Counters {
        metrics::total(&self.stats)
    }

    /// True once every shard thread has exited.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// The bus's shared state (readiness, counters, registry), with the Redis bus.
    pub fn bus(&self) -> Option<Arc<crate::bus::BusState>> {
        self.bus.as_ref().map(|(h, _)| Arc::clone(&h.state))
    }

    /// Waits for every shard to exit (then for the bus thread) and returns the final totals.
    pub fn join(self) -> Counters {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a shard thread panicked");
            }
        }
        if let Some((handle, thread)) = self.bus {
            // The shards' handles are gone with them; this was the last one.
            drop(handle);
            if thread.join().is_err() {
                tracing::error!("the bus thread panicked");
            }
        }
        metrics::total(&self.stats)
    }
}
