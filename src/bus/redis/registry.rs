//! The node registry and the readiness canary (docs/CLUSTER.md "Presence and the node
//! registry", "Readiness"), renewed every heartbeat.

use super::{keys, unix_ms, Link, Result, Worker};
use crate::bus::keys::CANARY_PREFIX;
use crate::bus::NodeRecord;

impl Worker {
    pub(super) fn canary_channel(&self) -> String {
        format!("{CANARY_PREFIX}{}", self.state.node_id)
    }

    /// Renews the node's record, reads the registry, and sends a canary.
    pub(super) async fn heartbeat(&mut self, link: &mut Link) -> Result<()> {
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
    pub(super) async fn refresh_nodes(&mut self, link: &mut Link) -> Result<()> {
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
}
