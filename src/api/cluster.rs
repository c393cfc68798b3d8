//! The cluster's side of the admin API (Redis bus, docs/CLUSTER.md): readiness through the
//! bus, the node registry, and the bus's figures for `/stats` and `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::routes::Reply;
use super::ApiView;
use crate::bus::BusState;

/// Why the node is not part of the cluster right now (`None`: it is, or there is no bus).
pub fn not_ready(view: &ApiView) -> Option<String> {
    view.bus.as_ref().and_then(|b| b.ready().err())
}

/// `GET /nodes`: the live nodes as the last heartbeat read them.
pub fn nodes(view: &ApiView) -> Reply {
    let Some(bus) = &view.bus else {
        return Reply::json(200, &json!({ "bus": "local", "nodes": [] }));
    };
    let nodes = bus.nodes();
    Reply::json(
        200,
        &json!({
            "bus": "redis",
            "node": bus.node_id,
            "connected": bus.is_connected(),
            "nodes": nodes,
        }),
    )
}

/// The bus's figures as a JSON object (`/stats`), `null` without a bus.
pub fn stats(view: &ApiView) -> Value {
    let Some(bus) = &view.bus else {
        return Value::Null;
    };
    let c = &bus.counters;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    json!({
        "node": bus.node_id,
        "connected": bus.is_connected(),
        "ready": bus.ready().is_ok(),
        "canary_age_ms": bus.canary_age().map(|d| d.as_millis() as u64),
        "nodes": bus.nodes().len(),
        "published": n(&c.published),
        "received": n(&c.received),
        "outbox": n(&c.outbox_len),
        "outbox_dropped": n(&c.outbox_dropped),
        "connects": n(&c.connects),
        "failures": n(&c.failures),
        "gaps_filled": n(&c.gaps_filled),
        "gaps_lost": n(&c.gaps_lost),
        "malformed": n(&c.malformed),
    })
}

/// The bus's figures in Prometheus text format (appended to `/metrics`).
pub fn metrics(bus: &BusState, out: &mut String) {
    let c = &bus.counters;
    let rows: [(&str, &str, &str, u64); 13] = [
        (
            "bus_connected",
            "gauge",
            "1 while both Redis connections are up.",
            u64::from(bus.is_connected()),
        ),
        (
            "bus_ready",
            "gauge",
            "1 while a canary made the trip through Redis recently.",
            u64::from(bus.ready().is_ok()),
        ),
        (
            "bus_nodes",
            "gauge",
            "Live nodes in the registry.",
            bus.nodes().len() as u64,
        ),
        (
            "bus_outbox",
            "gauge",
            "Publishes waiting for Redis.",
            c.outbox_len.load(Ordering::Relaxed),
        ),
        (
            "bus_published_total",
            "counter",
            "Messages numbered by Redis for this node's publishers.",
            c.published.load(Ordering::Relaxed),
        ),
        (
            "bus_received_total",
            "counter",
            "Deliveries received from Redis pub/sub.",
            c.received.load(Ordering::Relaxed),
        ),
        (
            "bus_outbox_dropped_total",
            "counter",
            "Publishes dropped from a full outbox.",
            c.outbox_dropped.load(Ordering::Relaxed),
        ),
        (
            "bus_connects_total",
            "counter",
            "Connections to Redis established.",
            c.connects.load(Ordering::Relaxed),
        ),
        (
            "bus_failures_total",
            "counter",
            "Connections to Redis lost or refused.",
            c.failures.load(Ordering::Relaxed),
        ),
        (
            "bus_gaps_filled_total",
            "counter",
            "Missed messages recovered from the history.",
            c.gaps_filled.load(Ordering::Relaxed),
        ),
        (
            "bus_gaps_lost_total",
            "counter",
            "Missed messages the history no longer had.",
            c.gaps_lost.load(Ordering::Relaxed),
        ),
        (
            "bus_malformed_total",
            "counter",
            "Pub/sub payloads that were not Starling's.",
            c.malformed.load(Ordering::Relaxed),
        ),
        (
            "bus_canary_age_seconds",
            "gauge",
            "Seconds since a canary last came back (-1: never).",
            0,
        ),
    ];
    for (name, kind, help, v) in &rows[..12] {
        let _ = writeln!(out, "# HELP starling_{name} {help}");
        let _ = writeln!(out, "# TYPE starling_{name} {kind}");
        let _ = writeln!(out, "starling_{name} {v}");
    }
    let (name, kind, help, _) = rows[12];
    let age = bus.canary_age().map_or(-1.0, |d| d.as_secs_f64());
    let _ = writeln!(out, "# HELP starling_{name} {help}");
    let _ = writeln!(out, "# TYPE starling_{name} {kind}");
    let _ = writeln!(out, "starling_{name} {age}");
}
