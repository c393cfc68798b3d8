//! Admission: who may open a connection, and what the connection may then do.
//!
//! Everything here is pure. The caller hands in the upgrade request's `Authorization` header,
//! its target and its `Origin`, plus the current time in unix seconds; it gets back a [`Grant`]
//! or an error that carries its whole HTTP response. The shard runs these checks while
//! handshaking, before any 101, so a refused client never holds an open WebSocket.
//!
//! # Tokens
//!
//! A token is a JWT (RFC 7519) signed with HMAC-SHA256 (`HS256`, RFC 7518 §3.2) under the
//! server's secret. The `jsonwebtoken` crate checks the header, the algorithm and the signature;
//! the claims are read here, because the rules on them and the clock are ours:
//!
//! ```json
//! {"sub": "alice", "exp": 1767225600, "nbf": 1767222000,
//!  "channels": {"sub": ["prices.*", "chat:lobby"], "pub": ["chat:lobby"]}}
//! ```
//!
//! - `sub`: the user id, a string of 1 to [`MAX_USER_LEN`] bytes without control characters
//!   (it ends up in presence lists and logs), not starting with `anon:` (the prefix of
//!   anonymous connections' ids, see `hub::presence`). Required.
//! - `exp`: expiry, a NumericDate (seconds). Required: a token that never expires can never be
//!   taken back, since the server keeps no list of revoked tokens.
//! - `nbf`: optional not-before.
//! - `channels`: optional; `sub` and `pub` are lists of at most [`MAX_PATTERNS`] [`Pattern`]s
//!   each. A missing list (or `null`) grants nothing.
//! - `aud`: refused if present. A token addressed to an audience was made for some other
//!   service, and RFC 7519 §4.1.3 says a recipient that does not identify with the audience
//!   "MUST" reject it.
//! - Any other claim is ignored.
//!
//! Times are checked against the caller's `now` with no leeway (servers and token issuers are
//! expected to run NTP). RFC 7519 §4.1.4: the current time "MUST be before the expiration
//! date/time", so a token is already expired at `now == exp`. §4.1.5: the current time "MUST be
//! after or equal to the not-before date/time", so it is valid at `now == nbf`. A fractional
//! NumericDate is rounded towards the stricter side: `exp` down, `nbf` up.
//!
//! The first failure is the answer. The header's algorithm and the signature are checked before
//! anything in the claims is read, so nothing from an unsigned or mis-signed token is believed;
//! the clock comes last, `nbf` before `exp`.
//!
//! # Refresh
//!
//! A connection refreshes by presenting a new token through [`Verifier::verify`] again; the
//! caller decides what may change (the user id should not). [`Grant::expired`] is the one rule
//! for when an unrefreshed connection must go.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::hub::wire::valid_channel;

/// The longest user id (`sub`), in bytes. The same bound as a channel name: ids are copied
/// into presence lists, so they should stay short.
pub const MAX_USER_LEN: usize = 128;

/// The most patterns in each of a token's `channels.sub` and `channels.pub` lists. A grant
/// lives as long as its connection, so its size is bounded; 256 is far more than a real
/// application names, which uses prefixes instead.
pub const MAX_PATTERNS: usize = 256;

/// The longest token accepted, in bytes. A token is already bounded by the handshake's header
/// buffer, but a refresh arrives as a message, and this keeps the work per attempt small.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a request's credentials were refused. Every variant is answered with a 401 and no
/// upgrade; the variants exist for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the request at all. [`Verifier::verify`] never returns this; it is the
    /// caller's answer when [`token_from`] finds nothing.
    #[error("no token")]
    Missing,
    /// Not a JWT: not three base64url parts, a header or claims that are not a JSON object,
    /// too long, or a header that lists critical extensions.
    #[error("token is not a well-formed JWT")]
    Malformed,
    /// The signature does not verify under the server's key, or the header names an algorithm
    /// other than HS256 (`none` included).
    #[error("token signature is not valid")]
    BadSignature,
    /// `exp` is at or before now.
    #[error("token has expired")]
    Expired,
    /// `nbf` is after now.
    #[error("token is not valid yet")]
    NotYetValid,
    /// Signed correctly, but the claims break the rules in the module documentation.
    #[error("token claims are not acceptable")]
    BadClaims,
}

impl AuthError {
    /// The HTTP status to refuse the upgrade with: 401 for every variant.
    pub fn http_status(self) -> u16 {
        401
    }

    /// The complete HTTP/1.1 401 response to send before closing.
    pub fn response(self) -> Vec<u8> {
        // RFC 9110 §15.5.2: a 401 "MUST send a WWW-Authenticate header field". RFC 6750 §3.1: when
        // "the request lacks any authentication information", the server "SHOULD NOT include
        // an error code"; otherwise a bad token is `invalid_token`.
        let challenge = match self {
            AuthError::Missing => "Bearer".to_owned(),
            _ => format!("Bearer error=\"invalid_token\", error_description=\"{self}\""),
        };
        let body = format!("{self}\n");
        format!(
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// The answer to an upgrade from an origin not on the allow-list ([`origin_allowed`]).
pub const FORBIDDEN_ORIGIN_RESPONSE: &[u8] = b"HTTP/1.1 403 Forbidden\r\n\
Content-Type: text/plain\r\n\
Content-Length: 19\r\n\
Connection: close\r\n\
\r\n\
origin not allowed\n";

/// An exact channel name, or a prefix ending in `*`: `prices.*` matches `prices.AAPL` (and
/// `prices.` itself), `*` matches every channel. A `*` anywhere but last is not a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(Box<str>);

impl Pattern {
    /// Reads a pattern: a valid channel name, or `*` after nothing or after a string made of
    /// channel-name bytes no longer than a channel name.
    pub fn parse(s: &str) -> Option<Pattern> {
        let ok = match s.strip_suffix('*') {
            Some(prefix) => prefix.is_empty() || valid_channel(prefix),
            None => valid_channel(s),
        };
        ok.then(|| Pattern(s.into()))
    }

    /// Whether `channel` is covered by this pattern.
    pub fn matches(&self, channel: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => *self.0 == *channel,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The user id (`sub`); empty only for [`Grant::anonymous`].
    pub user: String,
    /// Unix seconds at which the grant ends (`exp`); see [`Grant::expired`].
    pub expires: u64,
    /// Channels the connection may subscribe to.
    pub subscribe: Vec<Pattern>,
    /// Channels the connection may publish to.
    pub publish: Vec<Pattern>,
}

impl Grant {
    /// Whether the grant covers subscribing to `ch`.
    pub fn may_subscribe(&self, ch: &str) -> bool {
        self.subscribe.iter().any(|p| p.matches(ch))
    }

    /// Whether the grant covers publishing to `ch`.
    pub fn may_publish(&self, ch: &str) -> bool {
        self.publish.iter().any(|p| p.matches(ch))
    }

    /// Whether the grant has run out at `now` (unix seconds): from `expires` on, the same rule
    /// [`Verifier::verify`] applies to `exp`.
    pub fn expired(&self, now: u64) -> bool {
        now >= self.expires
    }

    /// The grant of anonymous mode: no user id, no expiry, every channel both ways.
    pub fn anonymous() -> Grant {
        let all = || vec![Pattern("*".into())];
        Grant {
            user: String::new(),
            expires: u64::MAX,
            subscribe: all(),
            publish: all(),
        }
    }
}

/// Checks tokens against the server's HS256 secret.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    // Never print the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for tokens signed with `secret`. RFC 7518 §3.2 asks for a key of at least
    /// 256 bits; refusing a short or empty secret is configuration's job, not this one's.
    pub fn new(secret: &[u8]) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        // The library would read the system clock (with 60 s of leeway); time is checked in
        // `verify` against the caller's `now` instead.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        // Presence of `sub` and `exp` is checked with the rest of the claims, as `BadClaims`.
        validation.required_spec_claims.clear();
        // `validate_aud` stays on with no audience configured: the library then refuses any
        // token that names one (see the module documentation).
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Checks `token` at `now` (unix seconds) and returns what it grants. Claims: `sub` (user
    /// id, required, non-empty, at most [`MAX_USER_LEN`] bytes), `exp` (required), optional
    /// `nbf`, and `channels`: `{"sub": [patterns], "pub": [patterns]}` (missing = none).
    /// The signature and algorithm (HS256 only) are checked first; `exp` and `nbf` against
    /// `now` with zero leeway, `now == exp` being expired.
    pub fn verify(&self, token: &str, now: u64) -> Result<Grant, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let data = jsonwebtoken::decode::<Value>(token, &self.key, &self.validation)
            .map_err(|e| classify(&e, token))?;
        // RFC 7515 §4.1.11: if any extension listed in "crit" is "not understood and supported
        // by the recipient, then the JWS is invalid". We understand none.
        if data.header.crit.is_some() {
            return Err(AuthError::Malformed);
        }
        let (grant, not_before) = read_claims(data.claims)?;
        if not_before.is_some_and(|nbf| now < nbf) {
            return Err(AuthError::NotYetValid);
        }
        if grant.expired(now) {
            return Err(AuthError::Expired);
        }
        Ok(grant)
    }
}

/// Maps the library's refusal onto ours.
fn classify(e: &JwtError, token: &str) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => AuthError::BadSignature,
        ErrorKind::InvalidAudience => AuthError::BadClaims,
        // The library has no `Algorithm` for `none` (or for names it does not know), so such a
        // header fails as JSON. It is an unsigned token, not a garbled one.
        ErrorKind::Json(_) if names_other_algorithm(token) => AuthError::BadSignature,
        _ => AuthError::Malformed,
    }
}

/// Whether the token's header is JSON with a string `alg` other than `HS256`.
fn names_other_algorithm(token: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Alg {
        alg: String,
    }
    let Some((header, _)) = token.split_once('.') else {
        return false;
    };
    let Ok(json) = URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    serde_json::from_slice::<Alg>(&json).is_ok_and(|h| h.alg != "HS256")
}

/// Reads the grant and the optional `nbf` out of verified claims.
fn read_claims(claims: Value) -> Result<(Grant, Option<u64>), AuthError> {
    let Value::Object(mut map) = claims else {
        return Err(AuthError::BadClaims);
    };
    let user = match map.remove("sub") {
        Some(Value::String(s))
            if crate::hub::wire::valid_user(&s)
                && !s.starts_with(crate::hub::presence::ANON_PREFIX) =>
        {
            s
        }
        _ => return Err(AuthError::BadClaims),
    };
    let expires = map
        .get("exp")
        .and_then(|v| numeric_date(v, false))
        .ok_or(AuthError::BadClaims)?;
    let not_before = match map.get("nbf") {
        None | Some(Value::Null) => None,
        Some(v) => Some(numeric_date(v, true).ok_or(AuthError::BadClaims)?),
    };
    let (subscribe, publish) = match map.get("channels") {
        None | Some(Value::Null) => (Vec::new(), Vec::new()),
        Some(Value::Object(lists)) => (patterns(lists, "sub")?, patterns(lists, "pub")?),
        Some(_) => return Err(AuthError::BadClaims),
    };
    let grant = Grant {
        user,
        expires,
        subscribe,
        publish,
    };
    Ok((grant, not_before))
}

/// A NumericDate (RFC 7519 §2: seconds, possibly fractional) as whole seconds, rounded up or
/// down; `None` for anything else, negatives included.
fn numeric_date(v: &Value, round_up: bool) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64().filter(|f| f.is_finite() && *f >= 0.0)?;
    // `as` saturates: a date beyond u64 seconds is simply "never".
    Some(if round_up { f.ceil() } else { f.floor() } as u64)
}

/// One of the `channels` lists: absent or `null` is empty; otherwise an array of patterns.
fn patterns(lists: &Map<String, Value>, name: &str) -> Result<Vec<Pattern>, AuthError> {
    match lists.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= MAX_PATTERNS => items
            .iter()
            .map(|v| {
                v.as_str()
                    .and_then(Pattern::parse)
                    .ok_or(AuthError::BadClaims)
            })
            .collect(),
        Some(_) => Err(AuthError::BadClaims),
    }
}

/// Finds the token in a request: `Authorization: Bearer <t>` (scheme matched without regard to
/// case) wins over a `token` query parameter in `path`, which is percent-decoded. The query is
/// there for browsers, whose WebSocket API cannot set headers. An empty token counts as none.
pub fn token_from(authorization: Option<&str>, path: &str) -> Option<String> {
    if let Some(token) = authorization.and_then(bearer) {
        return Some(token.to_owned());
    }
    let query = path.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or_default();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(key) == "token" {
            let value = percent_decode(value);
            return (!value.is_empty()).then(|| value.into_owned());
        }
    }
    None
}

/// The token of a Bearer credential. RFC 6750 §2.1: `credentials = "Bearer" 1*SP b64token`;
/// RFC 9110 §11.1: the scheme "is case-insensitive". Another scheme (e.g. Basic) is not ours.
fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// RFC 3986 §2.1 percent-decoding. A `%` not followed by two hex digits is kept as it is, and
/// bytes that do not form UTF-8 are replaced; either way the result is then just a bad token.
/// `+` stays `+`: a JWT's alphabet has neither `+` nor space, so form-encoding never matters.
pub(crate) fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = match bytes.get(i + 1..i + 3) {
            Some(&[hi, lo]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                Some(hex_value(hi) << 4 | hex_value(lo))
            }
            _ => None,
        };
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The value of one hex digit (the caller has checked that it is one).
fn hex_value(digit: u8) -> u8 {
    (digit as char).to_digit(16).unwrap_or(0) as u8
}

/// Whether a request from `origin` may upgrade. `allowed` holds exact origins
/// (`https://app.example.com`, `http://localhost:3000`); they are compared without regard to
/// case, since an origin is only a scheme, a host and a port, and a trailing `/` on a listed
/// entry is ignored. An empty list allows every origin. A request without `Origin` is allowed:
/// it comes from a non-browser client, which could send any `Origin` it liked anyway. The check
/// exists to stop other web sites' pages from using a visitor's browser. A browser's opaque
/// origin `null` passes only if `null` is listed.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    allowed.is_empty()
        || allowed
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// Signs a token carrying the claims [`Verifier::verify`] reads: `sub`, `exp` and both
/// `channels` lists, with HS256 under `secret`. For tests and for operators. The patterns are
/// not checked here; a token with a bad one fails verification with [`AuthError::BadClaims`].
pub fn issue(
    secret: &[u8],
    user: &str,
    expires: u64,
    subscribe: &[&str],
    publish: &[&str],
) -> String {
    let claims = serde_json::json!({
        "sub": user,
        "exp": expires,
        "channels": {"sub": subscribe, "pub": publish},
    });
    // An HMAC key fits HS256 and HMAC takes a key of any length, and a `Value` always
    // serializes, so encoding has no way to fail.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 over an in-memory key cannot fail")
}

#[cfg(test)]
mod tests;
