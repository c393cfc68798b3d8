//! The admin API's handlers and the [`Reply`] they return. Each handler is a pure function of
//! the [`ApiView`] (plus the process facts it reads from `/proc`), so tests call them directly.
//!
//! `/stats` is the same data as `/metrics`, shaped for people and scripts: totals and one
//! object per shard, every counter field by its `Counters` name, closings keyed by
//! `CloseReason::name()`.
//!
//! `POST /publish` and `GET /channels` are the channel protocol (docs/PROTOCOL.md) seen from
//! the server side: a publish here goes through the channel's owner shard like a client's,
//! gets the next sequence number, and its `data` reaches subscribers as the exact bytes sent.
//!
//! `GET /channels/{name}/presence`, `POST /direct` and `POST /users/{id}/disconnect` are the
//! presence and user side: the channel's owner shard answers the list, and a direct message or
//! a disconnect goes to every shard (only the named one for an anonymous id) and sums their
//! counts.
//!
//! `POST /drain` is SIGTERM over HTTP, for deploy tooling that talks to the API rather than
//! to the process: the same drain, with the configured pace and code unless the body says
//! otherwise.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::prometheus::{self, ProcessFacts};
use super::ApiView;
use crate::metrics::{CloseReason, Counters, Published};
use crate::shard::PublishError;

/// How long a publish (per channel) or a channel listing waits for the shards. Far above what
/// a healthy shard needs; it bounds how long one stuck shard holds a handler thread.
const SHARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Most channels one `POST /publish` may name, so one request holds a handler thread (of the
/// few the API has) for at most this many owner round trips.
pub const MAX_PUBLISH_CHANNELS: usize = 100;

/// Media type of the Prometheus text exposition format this API writes.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A response, independent of the wire format (`http::response` turns it into hyper's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: String,
}

impl Reply {
    /// A plain-text reply.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }

    /// A JSON reply.
    pub fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: value.to_string(),
        }
    }

    /// A JSON error: `{"error": "<message>", "status": <status>}`.
    pub fn error(status: u16, message: &str) -> Reply {
        Reply::json(status, &json!({ "error": message, "status": status }))
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }
}

/// `GET /healthz`: the process is alive and its API thread answers.
pub fn healthz(_: &ApiView) -> Reply {
    Reply::text(200, "ok\n")
}

/// `GET /readyz`: 200 while serving, 503 once a drain has started, so a load balancer stops
/// sending new clients before the listeners close.
pub fn readyz(view: &ApiView) -> Reply {
    if view.is_draining() {
        Reply::text(503, "draining\n")
    } else if let Some(why) = super::cluster::not_ready(view) {
        Reply::text(503, &format!("not ready: {why}\n"))
    } else {
        Reply::text(200, "ready\n")
    }
}

/// `GET /metrics`: Prometheus text format, per shard and totals, plus process gauges.
pub fn metrics(view: &ApiView) -> Reply {
    let shards: Vec<Counters> = view.published.iter().map(Published::load).collect();
    let mut body = prometheus::render(&shards, &ProcessFacts::now(view));
    if let Some(bus) = &view.bus {
        super::cluster::metrics(bus, &mut body);
    }
    Reply {
        status: 200,
        content_type: PROMETHEUS_TEXT,
        headers: Vec::new(),
        body,
    }
}

/// `GET /stats`: JSON totals and per-shard counters.
pub fn stats(view: &ApiView) -> Reply {
    let shards: Vec<Counters> = view.published.iter().map(Published::load).collect();
    let mut total = Counters::default();
    for c in &shards {
        total.add(c);
    }
    let process = ProcessFacts::now(view);
    let per_shard: Vec<Value> = shards
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = counters_json(c);
            v.insert("shard".into(), json!(i));
            Value::Object(v)
        })
        .collect();
    let body = json!({
        "uptime_seconds": process.uptime.as_secs_f64(),
        "draining": process.draining,
        "rss_bytes": process.rss_bytes,
        "open_files_limit": process.max_fds,
        "shard_count": shards.len(),
        "total": Value::Object(counters_json(&total)),
        "shards": per_shard,
        "bus": super::cluster::stats(view),
    });
    Reply::json(200, &body)
}

/// `POST /publish`, body `{"channel": "news", "data": <any JSON>}` or
/// `{"channels": ["a", "b"], "data": ...}`: publishes `data`, byte for byte, to each channel in
/// order. 200 with `{"ok": <all published>, "results": [...]}`, one result per channel, either
/// `{"channel", "seq"}` or `{"channel", "error", "message"}` (a `timeout` publish may still be
/// delivered later). 400 for a malformed body, 409 if the server does not run `--app hub`
/// (nothing is published then), 503 while draining.
pub fn publish(view: &ApiView, body: &[u8]) -> Reply {
    if view.is_draining() {
        return Reply::error(503, "draining: publishes are no longer accepted");
    }
    let (targets, data) = match parse_publish(body) {
        Ok(p) => p,
        Err(message) => return Reply::error(400, &message),
    };
    let mut results = Vec::with_capacity(targets.len());
    for channel in targets {
        match view.engine.publish(&channel, data, SHARD_TIMEOUT) {
            Ok(seq) => results.push(json!({ "channel": channel, "seq": seq })),
            // Checked before anything is sent, and the same for every channel: so it is the
            // first result, nothing was published, and it is the whole request's answer.
            Err(e @ PublishError::NotHub) => return Reply::error(409, &e.to_string()),
            Err(e) => results.push(json!({
                "channel": channel,
                "error": error_code(e),
                "message": e.to_string(),
            })),
        }
    }
    let ok = results.iter().all(|r| r.get("seq").is_some());
    Reply::json(200, &json!({ "ok": ok, "results": results }))
}

/// `GET /channels`: `{"channels": [{"name", "subscribers"}]}`, every channel with
/// subscribers right now, by name. A shard that does not answer in time is left out of the
/// counts rather than failing the listing.
pub fn channels(view: &ApiView) -> Reply {
    let mut list = view.engine.channels(SHARD_TIMEOUT);
    list.sort_unstable();
    let list: Vec<Value> = list
        .into_iter()
        .map(|(name, n)| json!({ "name": name, "subscribers": n }))
        .collect();
    Reply::json(200, &json!({ "channels": list }))
}

/// `GET /channels/{name}/presence`: `{"channel", "members": [{"user", "connections"}],
/// "truncated"}` (plus `"unlisted": <connections>` when truncated), members by user id, as
/// the channel's owner counts them. 400 for a bad name, 409 without the hub, 503 if the owner
/// does not answer.
pub fn presence(view: &ApiView, channel: &str) -> Reply {
    let m = match view.engine.presence(channel, SHARD_TIMEOUT) {
        Ok(m) => m,
        Err(e) => return engine_error(e),
    };
    let members: Vec<Value> = m
        .members
        .iter()
        .map(|(user, n)| json!({ "user": &**user, "connections": n }))
        .collect();
    let mut body = json!({
        "channel": channel,
        "members": members,
        "truncated": m.unlisted > 0,
    });
    if m.unlisted > 0 {
        body["unlisted"] = json!(m.unlisted);
    }
    Reply::json(200, &body)
}

/// `POST /users/{id}/disconnect` (no body needed): closes every connection of the user (a
/// token's `sub` or an anonymous id) on every shard with close code 4000, reason
/// "disconnected by server". 200 with `{"user", "disconnected": <connections>}`; 400 for an
/// id that is no user id.
pub fn disconnect(view: &ApiView, user: &str, _body: &[u8]) -> Reply {
    if !crate::hub::wire::valid_user(user) {
        return engine_error(PublishError::BadUser);
    }
    let n = view.engine.disconnect(user, SHARD_TIMEOUT);
    Reply::json(200, &json!({ "user": user, "disconnected": n }))
}

/// `POST /direct`, body `{"user": "bob", "data": <any JSON>}`: delivers `{"direct": <data>}`
/// (no `from`) to every connection of the user. 200 with `{"user", "delivered":
/// <connections>}`; 400 for a malformed body or user id, 409 without the hub, 503 while
/// draining.
pub fn direct(view: &ApiView, body: &[u8]) -> Reply {
    if view.is_draining() {
        return Reply::error(503, "draining: messages are no longer accepted");
    }
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Reply::error(400, "the direct body must be a JSON object");
    }
    let b: DirectBody<'_> = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return Reply::error(400, &format!("malformed direct body: {e}")),
    };
    match view.engine.direct(&b.user, b.data, SHARD_TIMEOUT) {
        Ok(n) => Reply::json(200, &json!({ "user": b.user, "delivered": n })),
        Err(e) => engine_error(e),
    }
}

/// The body of `POST /direct`; unknown fields are refused, as for a publish.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectBody<'a> {
    user: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// `POST /drain`, body (optional, every field optional) `{"batch": N, "interval_ms": N,
/// "code": 1001|1012}`: starts the server's drain as SIGTERM does — readiness goes 503, the
/// listeners close, connections are closed `batch` per step node-wide every `interval_ms`
/// with `code`, and the process exits when they are gone or the drain timeout passes. The
/// configured values fill what the body leaves out. 202 with the plan started, `{"draining":
/// true, "batch", "interval_ms", "code", "timeout_ms"}`; 400 for a malformed body or another
/// code; 409 if a drain has already started (there is only one).
pub fn drain(view: &ApiView, body: &[u8]) -> Reply {
    let b: DrainBody = if body.trim_ascii().is_empty() {
        DrainBody::default()
    } else if body.trim_ascii_start().first() != Some(&b'{') {
        return Reply::error(400, "the drain body must be a JSON object");
    } else {
        match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return Reply::error(400, &format!("malformed drain body: {e}")),
        }
    };
    let mut plan = view.engine.drain_plan();
    plan.batch = b.batch.unwrap_or(plan.batch);
    plan.interval = b.interval_ms.map_or(plan.interval, Duration::from_millis);
    plan.code = b.code.unwrap_or(plan.code);
    if let Err(why) = plan.check_code() {
        return Reply::error(400, &format!("code {}: {why}", plan.code));
    }
    if !view.engine.drain(plan) {
        return Reply::error(409, "already draining");
    }
    let body = json!({
        "draining": true,
        "batch": plan.batch,
        "interval_ms": plan.interval.as_millis() as u64,
        "code": plan.code,
        "timeout_ms": plan.timeout.as_millis() as u64,
    });
    Reply::json(202, &body)
}

/// The body of `POST /drain`; unknown fields are refused, so a misspelt `"bach"` is a 400
/// rather than a drain at another pace than asked.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    batch: Option<usize>,
    interval_ms: Option<u64>,
    code: Option<u16>,
}

/// The reply for a request the engine refused.
fn engine_error(e: PublishError) -> Reply {
    let status = match e {
        PublishError::BadChannel | PublishError::BadUser => 400,
        PublishError::NotHub => 409,
        PublishError::Timeout | PublishError::Stopped | PublishError::Unavailable => 503,
    };
    Reply::json(
        status,
        &json!({ "error": e.to_string(), "code": error_code(e), "status": status }),
    )
}

/// The body of `POST /publish`. serde refuses a field given twice; unknown fields are refused
/// too, so a misspelt `"chanel"` is a 400 rather than a publish to nowhere.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    /// Required; `null` is a value like any other (as in the client protocol).
    #[serde(borrow)]
    data: &'a RawValue,
}

/// The channels to publish to and the data, or the reason for a 400. Channel names are not
/// checked here: a bad one is that channel's failure, as for a client.
fn parse_publish(body: &[u8]) -> Result<(Vec<String>, &RawValue), String> {
    // serde would also read the struct from an array, by position.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err("the publish body must be a JSON object".into());
    }
    let b: PublishBody<'_> =
        serde_json::from_slice(body).map_err(|e| format!("malformed publish body: {e}"))?;
    let targets = match (b.channel, b.channels) {
        (Some(one), None) => vec![one],
        (None, Some(many)) => many,
        (Some(_), Some(_)) => return Err("give \"channel\" or \"channels\", not both".into()),
        (None, None) => return Err("missing field `channel` (or `channels`)".into()),
    };
    if targets.is_empty() || targets.len() > MAX_PUBLISH_CHANNELS {
        return Err(format!(
            "\"channels\" must name 1 to {MAX_PUBLISH_CHANNELS} channels"
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(targets.len());
    if let Some(dup) = targets.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(format!("channel {dup:?} is listed twice"));
    }
    Ok((targets, b.data))
}

/// A short machine-readable name for a per-channel failure.
fn error_code(e: PublishError) -> &'static str {
    match e {
        PublishError::NotHub => "not_hub",
        PublishError::BadChannel => "bad_channel",
        PublishError::Timeout => "timeout",
        PublishError::Stopped => "stopped",
        PublishError::BadUser => "bad_user",
        PublishError::Unavailable => "unavailable",
    }
}

/// Every field of `c` under its own name; `closed` as an object keyed by reason name.
fn counters_json(c: &Counters) -> Map<String, Value> {
    let mut m: Map<String, Value> = c
        .named()
        .iter()
        .map(|&(name, v)| (name.to_owned(), json!(v)))
        .collect();
    let closed: Map<String, Value> = CloseReason::ALL
        .iter()
        .map(|r| (r.name().to_owned(), json!(c.closed_for(*r))))
        .collect();
    m.insert("closed".to_owned(), Value::Object(closed));
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::{view_with, FakeEngine};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    #[test]
    fn stats_has_totals_per_shard_and_named_reasons() {
        let shards: Vec<Published> = (0..2).map(|_| Published::default()).collect();
        for (i, p) in shards.iter().enumerate() {
            let mut c = Counters {
                open: 3,
                accepted: 4,
                messages_in: 10 * (i as u64 + 1),
                loop_busy_us: 5,
                ..Counters::default()
            };
            c.close(CloseReason::SlowConsumer);
            p.store(&c);
        }
        let mut view = view_with(&Arc::default());
        view.published = shards;
        let r = stats(&view);
        assert_eq!((r.status, r.content_type), (200, "application/json"));
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["total"]["messages_in"], 30);
        assert_eq!(v["total"]["open"], 4);
        assert_eq!(v["total"]["closed"]["slow_consumer"], 2);
        assert_eq!(v["total"]["closed"]["normal"], 0);
        assert_eq!(v["shards"][1]["shard"], 1);
        assert_eq!(v["shards"][1]["messages_in"], 20);
        assert_eq!(v["shard_count"], 2);
        assert_eq!(v["draining"], false);
        // Every scalar field plus `closed`, and every reason under `closed`.
        let scalars = Counters::default().named().len();
        assert_eq!(v["total"].as_object().unwrap().len(), scalars + 1);
        assert_eq!(
            v["total"]["closed"].as_object().unwrap().len(),
            CloseReason::COUNT
        );
    }

    fn published(view: &ApiView, body: &str) -> (u16, Value) {
        let r = publish(view, body.as_bytes());
        assert_eq!(r.content_type, "application/json");
        (r.status, serde_json::from_str(&r.body).unwrap())
    }

    #[test]
    fn publish_forwards_data_byte_for_byte_to_each_channel() {
        let fake = Arc::new(FakeEngine::default());
        let view = view_with(&fake);
        let data = r#"{"b": 1,  "a":[1.0, 2e3, "\u00e9"]}"#;
        let (status, v) = published(&view, &format!(r#" {{"channel":"news","data":{data}}}"#));
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v,
            json!({"ok": true, "results": [{"channel": "news", "seq": 1}]})
        );
        let body = r#"{"data": null, "channels": ["a", "news", "bad name", "slow"]}"#;
        let (status, v) = published(&view, body);
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["ok"], false);
        let results = v["results"].as_array().unwrap();
        assert_eq!(results[0], json!({"channel": "a", "seq": 1}));
        assert_eq!(results[1], json!({"channel": "news", "seq": 2}));
        assert_eq!(results[2]["error"], "bad_channel");
        assert_eq!(results[3]["error"], "timeout");
        assert!(results[3]["message"].is_string());
        let log = fake.log();
        assert_eq!(log[0], ("news".into(), data.into()));
        assert_eq!(
            log[1..],
            [("a".into(), "null".into()), ("news".into(), "null".into())]
        );
    }

    #[test]
    fn malformed_publish_bodies_are_400_and_publish_nothing() {
        let fake = Arc::new(FakeEngine::default());
        let view = view_with(&fake);
        let long: Vec<String> = (0..=MAX_PUBLISH_CHANNELS)
            .map(|i| format!("c{i}"))
            .collect();
        let too_many = json!({"channels": long, "data": 1}).to_string();
        for body in [
            "",
            "not json",
            "{\"channel\":\"news\",\"data\":1",
            "[\"news\", null, 1]",
            r#"{"channel":"news"}"#,
            r#"{"data":1}"#,
            r#"{"channel":null,"data":1}"#,
            r#"{"channel":"a","channels":["b"],"data":1}"#,
            r#"{"channels":[],"data":1}"#,
            r#"{"channels":["a","a"],"data":1}"#,
            r#"{"channels":"a","data":1}"#,
            r#"{"channel":7,"data":1}"#,
            r#"{"channel":"a","data":1,"data":2}"#,
            r#"{"chanel":"a","data":1}"#,
            &too_many,
        ] {
            let (status, v) = published(&view, body);
            assert_eq!(status, 400, "{body}: {v}");
            assert_eq!(v["status"], 400);
            assert!(v["error"].is_string(), "{v}");
        }
        assert!(fake.log().is_empty());
    }

    #[test]
    fn publish_is_409_without_the_hub_and_503_while_draining() {
        let view = view_with(&Arc::new(FakeEngine {
            not_hub: true,
            ..FakeEngine::default()
        }));
        let body = r#"{"channels":["a","b"],"data":1}"#;
        let (status, v) = published(&view, body);
        assert_eq!(status, 409, "{v}");
        assert!(v["error"].as_str().unwrap().contains("hub"), "{v}");
        let fake = Arc::new(FakeEngine::default());
        let view = view_with(&fake);
        view.draining.store(true, Ordering::SeqCst);
        assert_eq!(published(&view, body).0, 503);
        assert!(fake.log().is_empty());
    }

    #[test]
    fn channels_are_listed_by_name() {
        let view = view_with(&Arc::new(FakeEngine {
            listing: vec![("news".into(), 3), ("chat:1".into(), 1)],
            ..FakeEngine::default()
        }));
        let r = channels(&view);
        assert_eq!(r.status, 200);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        let want = json!({"channels": [
            {"name": "chat:1", "subscribers": 1},
            {"name": "news", "subscribers": 3},
        ]});
        assert_eq!(v, want);
    }

    #[test]
    fn presence_direct_and_disconnect_answer_from_the_engine() {
        let view = view_with(&Arc::new(FakeEngine::default()));
        let r = presence(&view, "room/1");
        assert_eq!(r.status, 200, "{r:?}");
        let v: Value = serde_json::from_str(&r.body).unwrap();
        let want = json!({"channel": "room/1", "truncated": false,
            "members": [{"user": "room/1", "connections": 1}]});
        assert_eq!(v, want);
        let r = presence(&view, "no spaces");
        assert_eq!(r.status, 400, "{r:?}");
        let r = direct(&view, br#"{"user":"bob","data":{"x":1}}"#);
        assert_eq!(r.status, 200, "{r:?}");
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v, json!({"user": "bob", "delivered": 3}));
        for body in [
            &b""[..],
            b"[]",
            br#"{"user":"bob"}"#,
            br#"{"user":"b","data":1,"x":2}"#,
        ] {
            assert_eq!(direct(&view, body).status, 400, "{body:?}");
        }
        assert_eq!(direct(&view, br#"{"user":"","data":1}"#).status, 400);
        let r = disconnect(&view, "alice", b"");
        assert_eq!(r.status, 200, "{r:?}");
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v, json!({"user": "alice", "disconnected": 5}));
        assert_eq!(disconnect(&view, "a\nb", b"").status, 400);
        let view = view_with(&Arc::new(FakeEngine {
            not_hub: true,
            ..FakeEngine::default()
        }));
        assert_eq!(presence(&view, "a").status, 409);
        assert_eq!(direct(&view, br#"{"user":"bob","data":1}"#).status, 409);
    }

    #[test]
    fn drain_starts_once_with_the_body_over_the_configured_plan() {
        let engine = Arc::new(FakeEngine::default());
        let view = view_with(&engine);
        for bad in [
            &br#"[1]"#[..],
            br#"{"bach":5}"#,
            br#"{"batch":-1}"#,
            b"{",
            br#"{"code":1000}"#,
        ] {
            let r = drain(&view, bad);
            assert_eq!(r.status, 400, "{}: {r:?}", String::from_utf8_lossy(bad));
        }
        assert!(drain(&view, br#"{"code":1000}"#).body.contains("1012"));
        assert!(
            engine.drained.lock().unwrap().is_none(),
            "a bad body started a drain"
        );
        let r = drain(&view, br#"{"batch":50,"code":1012}"#);
        assert_eq!(r.status, 202, "{r:?}");
        let v: Value = serde_json::from_str(&r.body).unwrap();
        let defaults = crate::config::Config::default();
        assert_eq!(
            v,
            json!({"draining": true, "batch": 50, "interval_ms": 100, "code": 1012,
                   "timeout_ms": defaults.drain_timeout.as_millis() as u64})
        );
        let started = engine.drained.lock().unwrap().unwrap();
        assert_eq!((started.batch, started.code), (50, 1012));
        assert_eq!(started.interval, defaults.drain_interval);
        // There is one drain: a second request, even an empty one, is refused.
        let r = drain(&view, b"");
        assert_eq!(r.status, 409, "{r:?}");
        assert!(r.body.contains("already draining"));
    }
}
