//! Admission and per-connection policy: who may open a WebSocket or an event stream (origin
//! allow-list and JWT, checked on the request before any 101 or 200 is sent), what each connection may do with
//! channels (its grant), how fast it may send (token buckets), and when its token runs out.
//!
//! Connections that need none of this (anonymous, no rate limits) get no session at all, so
//! an idle connection's memory is unchanged. Sessions live in a side table keyed by slab index
//! and are dropped with the connection. Expiries are kept ordered, so the shard checks only
//! the earliest one each pass.

use std::collections::{BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::hub::auth::{self, Grant, Verifier};
use crate::hub::rate::Bucket;

/// What a connection was admitted with.
#[derive(Debug)]
pub(super) struct Session {
    /// The token's grant; `None` for an anonymous client (everything allowed).
    pub grant: Option<Grant>,
    /// Messages-per-second bucket.
    pub msgs: Bucket,
    /// Bytes-per-second bucket.
    pub bytes: Bucket,
    /// Rate-limit violations in a row; the connection is closed after [`MAX_STRIKES`].
    pub strikes: u8,
}

/// Rate-limit errors tolerated in a row before the connection is closed with 1008.
pub(super) const MAX_STRIKES: u8 = 3;

/// The shard's admission rules and live sessions.
pub(super) struct Admission {
    verifier: Option<Verifier>,
    anonymous: bool,
    origins: Vec<String>,
    rate_msgs: u32,
    rate_bytes: u32,
    pub sessions: HashMap<usize, Session>,
    /// (expiry in unix seconds, slab index, generation), earliest first.
    expiries: BTreeSet<(u64, usize, u32)>,
}

/// Unix time in seconds.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Admission {
    pub fn new(cfg: &Config) -> Admission {
        Admission {
            verifier: cfg.jwt_secret.as_ref().map(|s| Verifier::new(s.as_bytes())),
            anonymous: cfg.allows_anonymous(),
            origins: cfg.allowed_origins.clone(),
            rate_msgs: cfg.rate_limit_messages,
            rate_bytes: cfg.rate_limit_bytes,
            sessions: HashMap::new(),
            expiries: BTreeSet::new(),
        }
    }

    /// Decides an upgrade (or an event stream) from its `Origin`, `Authorization` and request
    /// target. `Ok(None)`: admitted, no session needed. `Ok(Some(session))`: admitted with
    /// this session. `Err(response)`: the complete HTTP refusal (403 or 401).
    pub fn admit(
        &self,
        origin: Option<&str>,
        authorization: Option<&str>,
        path: &str,
        now_ms: u32,
    ) -> Result<Option<Session>, Vec<u8>> {
        if !auth::origin_allowed(origin, &self.origins) {
            return Err(auth::FORBIDDEN_ORIGIN_RESPONSE.to_vec());
        }
        let grant = match auth::token_from(authorization, path) {
            Some(token) => match &self.verifier {
                Some(v) => Some(v.verify(&token, unix_now()).map_err(|e| e.response())?),
                // Tokens mean nothing without a secret: treat the client as anonymous.
                None if self.anonymous => None,
                None => return Err(auth::AuthError::Missing.response()),
            },
            None if self.anonymous => None,
            None => return Err(auth::AuthError::Missing.response()),
        };
        if grant.is_none() && self.rate_msgs == 0 && self.rate_bytes == 0 {
            return Ok(None);
        }
        Ok(Some(Session {
            grant,
            msgs: Bucket::new(self.burst_msgs(), now_ms),
            bytes: Bucket::new(self.burst_bytes(), now_ms),
            strikes: 0,
        }))
    }

    fn burst_msgs(&self) -> u32 {
        self.rate_msgs.saturating_mul(2).max(1)
    }

    fn burst_bytes(&self) -> u32 {
        self.rate_bytes.saturating_mul(2).max(1)
    }

    /// Starts tracking a session (and its expiry).
    pub fn insert(&mut self, idx: usize, gen: u32, s: Session) {
        if let Some(g) = &s.grant {
            self.expiries.insert((g.expires, idx, gen));
        }
        self.sessions.insert(idx, s);
    }

    /// Forgets a connection's session.
    pub fn remove(&mut self, idx: usize, gen: u32) {
        if let Some(s) = self.sessions.remove(&idx) {
            if let Some(g) = s.grant {
                self.expiries.remove(&(g.expires, idx, gen));
            }
        }
    }

    /// Replaces a connection's grant after a token refresh (same user only).
    pub fn refresh(&mut self, idx: usize, gen: u32, token: &str) -> Result<u64, &'static str> {
        let v = self.verifier.as_ref().ok_or("tokens are not configured")?;
        let new = v
            .verify(token, unix_now())
            .map_err(|_| "invalid or expired token")?;
        let s = self
            .sessions
            .get_mut(&idx)
            .ok_or("this connection has no token")?;
        let old = s.grant.as_ref().ok_or("this connection has no token")?;
        if old.user != new.user {
            return Err("the token is for another user");
        }
        self.expiries.remove(&(old.expires, idx, gen));
        self.expiries.insert((new.expires, idx, gen));
        let exp = new.expires;
        s.grant = Some(new);
        Ok(exp)
    }

    /// Connections whose token has expired by `now` (unix seconds), removed from the index.
    pub fn expired(&mut self, now: u64) -> Vec<(usize, u32)> {
        let mut out = Vec::new();
        while let Some(&(exp, idx, gen)) = self.expiries.first() {
            // "exp" is the first second at which the token is no longer valid.
            if exp > now {
                break;
            }
            self.expiries.pop_first();
            out.push((idx, gen));
        }
        out
    }

    /// Seconds until the earliest expiry, for the poll timeout.
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiries.first().map(|e| e.0)
    }

    /// Charges one message of `len` bytes. `Ok(())` within limits; `Err(close)` when over,
    /// with `close` true once the client has kept going past [`MAX_STRIKES`].
    pub fn charge(&mut self, idx: usize, len: usize, now_ms: u32) -> Result<(), bool> {
        let (rm, rb) = (self.rate_msgs, self.rate_bytes);
        let (bm, bb) = (self.burst_msgs(), self.burst_bytes());
        let Some(s) = self.sessions.get_mut(&idx) else {
            return Ok(());
        };
        let ok_m = rm == 0 || s.msgs.take(1, rm, bm, now_ms);
        let cost = u32::try_from(len).unwrap_or(u32::MAX);
        let ok_b = rb == 0 || s.bytes.take(cost, rb, bb, now_ms);
        if ok_m && ok_b {
            s.strikes = 0;
            return Ok(());
        }
        s.strikes = s.strikes.saturating_add(1);
        Err(s.strikes > MAX_STRIKES)
    }

    /// The grant of a connection, if it has one (anonymous connections may do everything).
    pub fn grant(&self, idx: usize) -> Option<&Grant> {
        self.sessions.get(&idx).and_then(|s| s.grant.as_ref())
    }
}
