//! The admin API's handlers and the [`Reply`] they return. Each handler is a pure function of
//! the [`ApiView`] (plus the process facts it reads from `/proc`), so tests call them directly.
//!
//! `/stats` is the same data as `/metrics`, shaped for people and scripts: totals and one
//! object per shard, every counter field by its `Counters` name, closings keyed by
//! `CloseReason::name()`.

use serde_json::{json, Map, Value};

use super::prometheus::{self, ProcessFacts};
use super::ApiView;
use crate::metrics::{CloseReason, Counters, Published};

/// Media type of the Prometheus text exposition format this API writes.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A response, independent of the HTTP library.
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

    /// The `tiny_http` response carrying this reply.
    pub fn into_response(self) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
        let mut r = tiny_http::Response::from_data(self.body).with_status_code(self.status);
        let all = std::iter::once(("Content-Type", self.content_type.to_owned()))
            .chain(self.headers)
            .chain(std::iter::once(("Cache-Control", "no-store".to_owned())));
        for (name, value) in all {
            // Names and values are ours (constants and numbers), so this never fails; a header
            // that did would be left out rather than fail the whole reply.
            if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                r.add_header(h);
            }
        }
        r
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

/// Every field of `c` under its own name; `closed` as an object keyed by reason name.
fn counters_json(c: &Counters) -> Map<String, Value> {
    // Exhaustive on purpose: a new counter field fails to compile here until it is exposed.
    let Counters {
        open,
        accepted,
        upgraded,
        closed,
        messages_in,
        messages_out,
        bytes_in,
        bytes_out,
        read_calls,
        write_calls,
        close_timeouts,
        accept_emfile,
        loop_iterations,
        loop_busy_us,
        hub_channels,
        hub_subscriptions,
    } = *c;
    let closed: Map<String, Value> = CloseReason::ALL
        .iter()
        .map(|r| (r.name().to_owned(), json!(closed[*r as usize])))
        .collect();
    let fields = json!({
        "open": open,
        "accepted": accepted,
        "upgraded": upgraded,
        "closed": closed,
        "messages_in": messages_in,
        "messages_out": messages_out,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "read_calls": read_calls,
        "write_calls": write_calls,
        "close_timeouts": close_timeouts,
        "accept_emfile": accept_emfile,
        "loop_iterations": loop_iterations,
        "loop_busy_us": loop_busy_us,
        "hub_channels": hub_channels,
        "hub_subscriptions": hub_subscriptions,
    });
    match fields {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Instant;

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
        let view = ApiView {
            published: shards,
            draining: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
        };
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
}
