//! Every tunable of the engine, in one struct, with the reason beside each default.
//!
//! Values come from three layers, later ones winning: the defaults below, an optional TOML file
//! (`--config FILE`, same field names, durations as strings like `"30s"`), and command-line flags.
//! [`Config::validate`] runs once at start-up and turns nonsense into a [`ConfigError`] before any
//! socket is opened.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

mod bus;
mod drain;
mod policy;
pub use bus::BusSettings;
pub use drain::{DrainPlan, DRAIN_CODES};
pub use policy::{ChannelPolicy, SlowPolicy};

/// What the engine does with the messages it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum App {
    /// Every text/binary message goes back to its sender, unchanged.
    Echo,
    /// Every message goes to every open connection on every shard (sender included), encoded
    /// once per shard.
    Broadcast,
    /// The channel protocol (docs/PROTOCOL.md): clients subscribe to channels and publish to
    /// them; every subscriber gets every message of a channel in one sequence, with resume.
    Hub,
}

/// The engine's configuration. `Default` is the embedded default used by `starling serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address every shard binds with SO_REUSEPORT. Loopback by default: exposing a server is a
    /// decision, not an accident.
    pub listen: SocketAddr,
    /// Number of shards (event-loop threads). 0 = one per core, because a shard is
    /// single-threaded and more shards than cores only adds context switches.
    pub shards: usize,
    /// Pin shard `i` to core `i % cores`. Off by default: pinning helps benchmarks and dedicated
    /// boxes, and hurts when the box is shared.
    pub pin: bool,
    /// The built-in application.
    pub app: App,
    /// Largest message accepted (RFC 6455 §10.4), summed over fragments. The default, 16 MiB,
    /// is the largest message conformance suites send (Autobahn's 9.x cases) and tungstenite's
    /// frame limit; a message's bytes are held only while it arrives and until it is handled.
    /// Fan-out deployments with small messages can lower it so that hostile peers hold less
    /// memory each. Over it: close 1009.
    pub max_message_size: usize,
    /// Largest HTTP upgrade header block. 8 KiB matches common proxies; over it: 431.
    pub max_header_bytes: usize,
    /// Bytes that may wait in one connection's outbound queue before it counts as a slow
    /// consumer and is closed with 1008. A new message is still accepted while the queue is at or
    /// under this bound, so the worst case per connection is this plus one message. 1 MiB holds
    /// several seconds of typical fan-out traffic.
    pub max_backpressure: usize,
    /// Subprotocols we speak, in our order of preference; the first one the client also offers
    /// (in the client's order) is selected. Empty = no subprotocol header is sent.
    pub protocols: Vec<String>,
    /// A connection that has not completed its upgrade by then is closed (408). Protects the
    /// accept path from idle or slowloris sockets.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How often an open connection that sent us nothing is pinged. 30 s keeps NAT and load
    /// balancer mappings alive (most idle out after 60 s or more).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long a ping may go unanswered before it counts as missed.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Missed pongs in a row after which the peer is considered dead and dropped. Any frame from
    /// the peer counts as an answer.
    pub max_missed_pongs: u32,
    /// Close a connection that sent no data message for this long (0 = never). Off by default:
    /// heartbeats already find dead peers; idleness is an application policy.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long we wait for the peer's close frame after sending ours before dropping the socket
    /// (RFC 6455 §7.1.1 lets the server close the TCP connection first).
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// On SIGTERM/SIGINT: how long to wait for close handshakes before exiting anyway.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// On drain: connections closed per step, node-wide (each shard closes ceil(N / shards));
    /// 0 = all at once. A pace spreads the clients' reconnects over the drain instead of
    /// sending them all to the rest of the fleet in the same instant (`config/drain.rs`).
    pub drain_batch: usize,
    /// On drain: time between steps. 100 ms with a batch of 1,000 moves 10,000 clients a
    /// second, about what a peer node absorbs in handshakes while serving.
    #[serde(with = "humantime_serde")]
    pub drain_interval: Duration,
    /// On drain: the close code, 1001 (going away) or 1012 (service restart, what a rolling
    /// deploy means). 1001 by default, as before there was a choice.
    pub drain_code: u16,
    /// Per-shard read buffer. One buffer per shard, not per connection, so its size costs
    /// nothing per connection; 64 KiB drains a busy socket in few syscalls.
    pub read_buffer_size: usize,
    /// Upper bound on open connections per shard (0 = limited only by the open-file limit).
    pub max_connections_per_shard: usize,
    /// How often per-shard counters are logged at info level (0 = only at exit).
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
    /// Listen backlog per shard listener (capped by net.core.somaxconn).
    pub backlog: i32,
    /// TCP Fast Open on each listener: the most connections whose SYN carried data (the
    /// upgrade request) that may wait for their handshake to finish; 0 = off. A client that
    /// uses it saves one packet and a round trip per connection. The kernel also needs the
    /// server bit in `net.ipv4.tcp_fastopen` (`sysctl -w net.ipv4.tcp_fastopen=3`: client and
    /// server).
    pub tcp_fastopen: u32,
    /// Where the admin HTTP API (health, readiness, metrics, stats) listens; `None` = no API.
    /// Its own port, so probes and scrapes never queue behind WebSocket upgrades, and loopback
    /// so that exposing the counters is a decision (it then needs `api_key`).
    pub api_listen: Option<SocketAddr>,
    /// Bearer token the admin API requires on every route but `/healthz` and `/readyz`. `None`
    /// is allowed only on a loopback `api_listen`: anyone who can reach a public port could
    /// otherwise read the server's load and its clients' misbehaviour.
    pub api_key: Option<String>,
    /// Hub: messages kept per channel for resume (`since`). 100 covers a reconnect of a few
    /// seconds on a busy channel; 0 disables history (every resume must resync).
    pub history_size: usize,
    /// Hub: how long a message stays resumable (0 = until pushed out by `history_size`).
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Hub: channels one connection may subscribe to. Bounds what one client can make every
    /// shard track.
    pub max_channels_per_connection: usize,
    /// Hub: largest `data` (its JSON text, in bytes) a client may publish or send directly;
    /// over it the command gets `too_large` and the connection stays. 64 KiB, as Centrifugo's
    /// client limit: a delivery is queued on every subscriber, so one publish costs its size
    /// times the subscribers in queue space. The frame limit (`max_message_size`) still
    /// bounds the command as a whole.
    pub max_publish_size: usize,
    /// Hub: users a channel's presence list names. Beyond it, subscribers still subscribe but
    /// are only counted (the list says `truncated`), so one huge channel cannot make its owner
    /// hold, or a presence reply carry, an unbounded list. 10,000 names fit in a reply of about
    /// half a MiB. 0 keeps counts only.
    pub max_presence_members: usize,
    /// HS256 secret for client tokens (JWT: `sub` user, `exp`, `channels.sub`/`channels.pub`
    /// patterns), checked during the upgrade, before the 101: a bad or expired token gets 401.
    /// `None` = no tokens (anonymous clients only).
    pub jwt_secret: Option<String>,
    /// Accept clients without a token (they may use every channel). Defaults to on without a
    /// secret and off with one: configuring a secret means clients must be known.
    pub anonymous: Option<bool>,
    /// Origins (e.g. `https://app.example.com`) browsers may connect from; an upgrade with
    /// another `Origin` gets 403. Empty = any origin (non-browser clients send none).
    pub allowed_origins: Vec<String>,
    /// Hub: messages per second one connection may send (0 = unlimited). Over it the client
    /// gets a `rate_limited` error; if it keeps going it is closed with 1008.
    pub rate_limit_messages: u32,
    /// Hub: bytes per second one connection may send (0 = unlimited); same policy.
    pub rate_limit_bytes: u32,
    /// Hub: how often an idle server-sent event stream (`GET /sse`) gets a keep-alive comment.
    /// 15 s stays under the 30-60 s idle timeouts common in proxies and load balancers.
    #[serde(with = "humantime_serde")]
    pub sse_keepalive: Duration,
    /// Fan-out (broadcast and channel sweeps): the shortest time between two revolutions of a
    /// sweep, so between two writes to the same connection; what arrives in between joins
    /// that connection's next write. 0 = a revolution starts as soon as the last one ends.
    /// Fewer, larger writes cost both ends less per message (README, fan-out latency).
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Hub: slow-subscriber policy per channel (`"prices.*=conflate"`), first match wins;
    /// channels no rule names disconnect slow subscribers, which is what a client that must
    /// not miss a message wants to learn about. Resolved once per channel and shard, when its
    /// first local subscriber arrives, not per delivery.
    pub channel_policy: Vec<ChannelPolicy>,
    /// The bus (`[bus]` in the file): in-process, or Redis for several nodes
    /// (docs/CLUSTER.md).
    pub bus: BusSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shards: 0,
            pin: false,
            app: App::Echo,
            max_message_size: 16 << 20,
            max_header_bytes: 8 * 1024,
            max_backpressure: 1 << 20,
            protocols: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(5),
            max_missed_pongs: 3,
            idle_timeout: Duration::ZERO,
            close_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            drain_batch: 0,
            drain_interval: Duration::from_millis(100),
            drain_code: drain::GOING_AWAY,
            read_buffer_size: 64 * 1024,
            max_connections_per_shard: 0,
            stats_interval: Duration::from_secs(10),
            backlog: 4096,
            tcp_fastopen: 0,
            api_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8081))),
            api_key: None,
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            max_channels_per_connection: 128,
            max_publish_size: 64 << 10,
            max_presence_members: 10_000,
            jwt_secret: None,
            anonymous: None,
            allowed_origins: Vec::new(),
            rate_limit_messages: 0,
            rate_limit_bytes: 0,
            sse_keepalive: Duration::from_secs(15),
            sweep_interval: Duration::ZERO,
            bus: BusSettings::default(),
            channel_policy: Vec::new(),
        }
    }
}

/// A configuration that cannot work, found before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML file is malformed or names an unknown field.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of its allowed range.
    #[error("invalid setting {field}: {why}")]
    Invalid {
        /// The field name as in the file and flags.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

impl Config {
    /// Reads a TOML file; missing fields keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: name,
            source: Box::new(e),
        })
    }

    /// Whether clients without a token are admitted (see `anonymous`).
    pub fn allows_anonymous(&self) -> bool {
        self.anonymous.unwrap_or(self.jwt_secret.is_none())
    }

    /// The slow-subscriber policy of `channel`: the first matching rule's, else disconnect.
    pub fn policy_for(&self, channel: &str) -> SlowPolicy {
        self.channel_policy
            .iter()
            .find(|r| r.matches(channel))
            .map_or(SlowPolicy::Disconnect, |r| r.policy)
    }

    /// The drain this configuration asks for on SIGTERM/SIGINT.
    pub fn drain_plan(&self) -> DrainPlan {
        DrainPlan {
            batch: self.drain_batch,
            interval: self.drain_interval,
            code: self.drain_code,
            timeout: self.drain_timeout,
        }
    }

    /// The shard count after resolving 0 to the number of cores.
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            crate::sys::core_count()
        } else {
            self.shards
        }
    }

    /// Checks ranges that would otherwise fail later, obscurely.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, why: &str| {
            Err(ConfigError::Invalid {
                field,
                why: why.to_string(),
            })
        };
        if let Err((field, why)) = self.bus.check() {
            return bad(field, &why);
        }
        if !self.bus.is_local() && self.app != App::Hub {
            return bad("bus", "a Redis bus carries channels: it needs --app hub");
        }
        if self.shards > 1024 {
            return bad("shards", "at most 1024");
        }
        if self.max_message_size == 0 {
            return bad("max_message_size", "must be at least 1 byte");
        }
        if self.max_header_bytes < 256 {
            return bad("max_header_bytes", "must be at least 256 bytes");
        }
        if self.max_backpressure == 0 {
            return bad("max_backpressure", "must be at least 1 byte");
        }
        if self.read_buffer_size < 4096 {
            return bad("read_buffer_size", "must be at least 4096 bytes");
        }
        for (field, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("ping_interval", self.ping_interval),
            ("pong_timeout", self.pong_timeout),
            ("close_timeout", self.close_timeout),
            ("sse_keepalive", self.sse_keepalive),
        ] {
            if d.is_zero() {
                return bad(field, "must be greater than zero");
            }
        }
        if self.sweep_interval > Duration::from_secs(1) {
            return bad("sweep_interval", "must be at most 1s");
        }
        if self.pong_timeout >= self.ping_interval {
            return bad("pong_timeout", "must be shorter than ping_interval");
        }
        if self.jwt_secret.as_ref().is_some_and(|k| k.len() < 16) {
            return bad("jwt_secret", "must be at least 16 bytes");
        }
        if self.max_channels_per_connection == 0 {
            return bad("max_channels_per_connection", "must be at least 1");
        }
        if self.max_publish_size == 0 {
            return bad("max_publish_size", "must be at least 1 byte");
        }
        if self.max_missed_pongs == 0 {
            return bad("max_missed_pongs", "must be at least 1");
        }
        if let Err(why) = drain::check_code(self.drain_code) {
            return bad("drain_code", why);
        }
        if let Some(key) = &self.api_key {
            // It travels in an `Authorization` header: visible ASCII, no spaces.
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return bad("api_key", "must be non-empty visible ASCII without spaces");
            }
        }
        if let (Some(addr), None) = (self.api_listen, &self.api_key) {
            if !addr.ip().is_loopback() {
                return bad("api_listen", "a non-loopback address needs api_key");
            }
        }
        for p in &self.protocols {
            let token = !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if !token {
                return bad("protocols", &format!("{p:?} is not an HTTP token"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn toml_overrides_some_fields_and_keeps_the_rest() {
        let c: Config = toml::from_str(
            "listen = \"127.0.0.1:9000\"\napp = \"broadcast\"\nping_interval = \"15s\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.app, App::Broadcast);
        assert_eq!(c.ping_interval, Duration::from_secs(15));
        assert_eq!(c.max_message_size, 16 << 20);
        assert_eq!(c.max_presence_members, 10_000);
        let c: Config = toml::from_str("max_presence_members = 0\n").unwrap();
        assert_eq!(c.max_presence_members, 0);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_field_is_an_error() {
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
    }

    #[test]
    fn validation_rejects_nonsense() {
        let c = Config {
            pong_timeout: Duration::from_secs(60),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            protocols: vec!["a b".into()],
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn channel_policies_parse_and_the_first_match_wins() {
        let c: Config =
            toml::from_str("channel_policy = [\"prices.*=conflate\", \"log=drop\", \"*=drop\"]\n")
                .unwrap();
        assert_eq!(c.policy_for("prices.AAPL"), SlowPolicy::Conflate);
        assert_eq!(c.policy_for("log"), SlowPolicy::Drop);
        assert_eq!(c.policy_for("other"), SlowPolicy::Drop);
        assert_eq!(Config::default().policy_for("x"), SlowPolicy::Disconnect);
        for bad in ["prices", "a b=drop", "x=slow", "=drop", "a*b=drop"] {
            assert!(bad.parse::<ChannelPolicy>().is_err(), "{bad}");
        }
        assert!(toml::from_str::<Config>("channel_policy = [\"x=slow\"]").is_err());
    }

    #[test]
    fn a_public_api_needs_a_key() {
        let public = Config {
            api_listen: Some(SocketAddr::from(([0, 0, 0, 0], 8081))),
            ..Config::default()
        };
        assert!(public.validate().is_err());
        let keyed = Config {
            api_key: Some("s3cret".into()),
            ..public.clone()
        };
        keyed.validate().unwrap();
        let spaced = Config {
            api_key: Some("two words".into()),
            ..public
        };
        assert!(spaced.validate().is_err());
    }
}

/// `starling serve` flags. Each one, when given, overrides the same field of the file or the
/// defaults (see [`Config`] for what each does and why its default is what it is).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (same names, with `_` instead of `-`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Built-in application: `echo` sends every message back to its sender; `broadcast` sends
    /// every message to every open connection; `hub` speaks the channel protocol
    /// (docs/PROTOCOL.md) [default: echo].
    #[arg(long, value_enum)]
    pub app: Option<App>,
    /// Event-loop threads, each with its own SO_REUSEPORT listener [default: one per core].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Pin shard i to core i (for benchmarks and dedicated machines).
    #[arg(long)]
    pub pin: bool,
    /// Largest message accepted, summed over fragments; larger ones get close 1009
    /// [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    pub max_message_size: Option<usize>,
    /// Largest upgrade request header block; larger ones get HTTP 431 [default: 8192].
    #[arg(long, value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// TCP Fast Open queue length per listener, 0 = off: clients may send the upgrade
    /// request in their SYN. Needs the server bit (2) in net.ipv4.tcp_fastopen [default: 0].
    #[arg(long, value_name = "QLEN")]
    pub tcp_fastopen: Option<u32>,
    /// Bytes one connection may have waiting to be sent before it is closed with 1008 as a slow
    /// consumer [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub max_backpressure: Option<usize>,
    /// A subprotocol to offer, in preference order (repeat the flag for several).
    #[arg(long = "protocol", value_name = "NAME")]
    pub protocols: Vec<String>,
    /// Time allowed to complete the HTTP upgrade [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// Ping a connection that has been silent this long [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ping_interval: Option<Duration>,
    /// Time a ping may go unanswered before it counts as missed [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub pong_timeout: Option<Duration>,
    /// Missed pongs in a row after which the connection is dropped [default: 3].
    #[arg(long, value_name = "N")]
    pub max_missed_pongs: Option<u32>,
    /// Close connections that send no data message for this long; 0 = never [default: 0].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Time to wait for the peer's close frame, or for our last bytes to drain [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub close_timeout: Option<Duration>,
    /// On SIGTERM/SIGINT, time allowed for close handshakes before exiting [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// On drain, connections closed per step over the whole node (each shard closes its share,
    /// ceil(N / shards)), so clients reconnect elsewhere a batch at a time; 0 = all at once
    /// [default: 0].
    #[arg(long, value_name = "N")]
    pub drain_batch: Option<usize>,
    /// On drain, time between two batches of closes, e.g. 100ms [default: 100ms].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub drain_interval: Option<Duration>,
    /// On drain, the close code: 1001 (going away) or 1012 (service restart, for rolling
    /// deploys) [default: 1001].
    #[arg(long, value_name = "CODE")]
    pub drain_code: Option<u16>,
    /// Per-shard read buffer [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub read_buffer_size: Option<usize>,
    /// Most connections one shard holds; 0 = limited by the open-file limit [default: 0].
    #[arg(long, value_name = "N")]
    pub max_connections_per_shard: Option<usize>,
    /// Hub: messages kept per channel for resume; 0 = none [default: 100].
    #[arg(long, value_name = "N")]
    pub history_size: Option<usize>,
    /// Hub: how long a message stays resumable; 0 = no time limit [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub history_ttl: Option<Duration>,
    /// Hub: channels one connection may subscribe to [default: 128].
    #[arg(long, value_name = "N")]
    pub max_channels_per_connection: Option<usize>,
    /// Hub: largest `data` a client may publish or send directly; over it: error `too_large`
    /// [default: 65536].
    #[arg(long, value_name = "BYTES")]
    pub max_publish_size: Option<usize>,
    /// Hub: users a channel's presence list names; beyond it they are only counted
    /// [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_presence_members: Option<usize>,
    /// Address of the admin HTTP API (/healthz, /readyz, /metrics, /stats); a non-loopback
    /// address needs --api-key [default: 127.0.0.1:8081].
    #[arg(long, value_name = "ADDR", conflicts_with = "no_api")]
    pub api_listen: Option<SocketAddr>,
    /// Do not start the admin HTTP API.
    #[arg(long)]
    pub no_api: bool,
    /// Bearer token the admin API requires, except on /healthz and /readyz.
    #[arg(
        long,
        value_name = "KEY",
        env = "STARLING_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// HS256 secret for client tokens (`?token=` or `Authorization: Bearer`); without a valid
    /// token an upgrade gets 401 (unless --anonymous).
    #[arg(
        long,
        value_name = "SECRET",
        env = "STARLING_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// Also accept clients without a token [default: on without --jwt-secret, off with it].
    #[arg(long)]
    pub anonymous: bool,
    /// An origin browsers may connect from (repeat for several); others get 403 [default: any].
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// Hub: messages per second per connection; 0 = unlimited [default: 0].
    #[arg(long, value_name = "N")]
    pub rate_limit_messages: Option<u32>,
    /// Hub: bytes per second per connection; 0 = unlimited [default: 0].
    #[arg(long, value_name = "N")]
    pub rate_limit_bytes: Option<u32>,
    /// Hub: what a channel does with a subscriber over --max-backpressure, as PATTERN=POLICY
    /// with POLICY one of disconnect, drop, conflate (repeat; first match wins), e.g.
    /// 'prices.*=conflate' [default: disconnect].
    #[arg(long = "channel-policy", value_name = "PATTERN=POLICY")]
    pub channel_policy: Vec<ChannelPolicy>,
    /// Hub: keep-alive comment interval on idle server-sent event streams [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub sse_keepalive: Option<Duration>,
    /// Shortest time between two fan-out writes to the same connection (a sweep revolution);
    /// deliveries in between join its next write. 0 = as soon as the sweep comes round
    /// [default: 0].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub sweep_interval: Option<Duration>,
    /// Hub: `local` (one node) or a Redis URL that joins this node to the others using it,
    /// e.g. redis://127.0.0.1:6379 (docs/CLUSTER.md) [default: local].
    #[arg(long, value_name = "URL")]
    pub bus: Option<String>,
    /// This node's id in the cluster (A-Z a-z 0-9 . _ -) [default: HOSTNAME-PID].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// A node silent for this long is gone, with its presence members [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub node_ttl: Option<Duration>,
    /// Publishes that may wait while Redis is unreachable; the oldest is dropped beyond it
    /// [default: 10000].
    #[arg(long, value_name = "N")]
    pub bus_outbox: Option<usize>,
    /// Longest wait between attempts to reach Redis [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub bus_backoff_max: Option<Duration>,
    /// How often counters are logged; 0 = only at exit [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub stats_interval: Option<Duration>,
}

impl ServeArgs {
    /// Defaults, then the file, then the flags.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        macro_rules! take {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        take!(
            listen,
            app,
            shards,
            max_message_size,
            max_header_bytes,
            tcp_fastopen,
            max_backpressure,
            handshake_timeout,
            ping_interval,
            pong_timeout,
            max_missed_pongs,
            idle_timeout,
            close_timeout,
            drain_timeout,
            drain_batch,
            drain_interval,
            drain_code,
            read_buffer_size,
            max_connections_per_shard,
            stats_interval,
            history_size,
            history_ttl,
            max_channels_per_connection,
            max_publish_size,
            max_presence_members,
            rate_limit_messages,
            rate_limit_bytes,
            sse_keepalive,
            sweep_interval
        );
        if self.jwt_secret.is_some() {
            c.jwt_secret = self.jwt_secret.clone();
        }
        if self.anonymous {
            c.anonymous = Some(true);
        }
        if !self.allowed_origins.is_empty() {
            c.allowed_origins = self.allowed_origins.clone();
        }
        if self.pin {
            c.pin = true;
        }
        if self.api_listen.is_some() {
            c.api_listen = self.api_listen;
        }
        if self.no_api {
            c.api_listen = None;
        }
        if self.api_key.is_some() {
            c.api_key = self.api_key.clone();
        }
        if !self.protocols.is_empty() {
            c.protocols = self.protocols.clone();
        }
        if !self.channel_policy.is_empty() {
            c.channel_policy = self.channel_policy.clone();
        }
        if let Some(url) = &self.bus {
            c.bus.url = url.clone();
        }
        if let Some(id) = &self.node_id {
            c.bus.node_id = id.clone();
        }
        if let Some(v) = self.node_ttl {
            c.bus.node_ttl = v;
        }
        if let Some(v) = self.bus_outbox {
            c.bus.outbox = v;
        }
        if let Some(v) = self.bus_backoff_max {
            c.bus.backoff_max = v;
        }
        c.validate()?;
        Ok(c)
    }
}
