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

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::prometheus::{self, ProcessFacts};
use super::ApiView;
use crate::metrics::{CloseReason, Counters, Published};
use crate::shard::PublishError;

/// How long a publish (per channel) or a channel listing waits for the shards. Far above what
/// a healthy shard needs; it bounds how long one stuck shard holds the API thread.
const SHARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Most channels one `POST /publish` may name, so one request holds the API thread (which
/// serves requests one at a time) for at most this many owner round trips.
pub const MAX_PUBLISH_CHANNELS: usize = 100;

/// Media type of the Prometheus text exposition format this API writes.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A response, independent of the wire format (`http::encode` writes it).
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
    } else {
        Reply::text(200, "ready\n")
    }
}

/// `GET /metrics`: Prometheus text format, per shard and totals, plus process gauges.
pub fn metrics(view: &ApiView) -> Reply {
    let shards: Vec<Counters> = view.published.iter().map(Published::load).collect();
    let body = prometheus::render(&shards, &ProcessFacts::now(view));
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
        // 15 scalar fields plus `closed`, and every reason under `closed`.
        assert_eq!(v["total"].as_object().unwrap().len(), 16);
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
}
