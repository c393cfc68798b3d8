//! The bus settings (`--bus`, docs/CLUSTER.md): which bus numbers the channels' messages, and
//! how a node behaves in a cluster.

use std::time::Duration;

use serde::Deserialize;

/// The bus: in-process (one node) or Redis (several nodes as one fan-out tier).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    /// `local` (the default: this process numbers its channels' messages; no Redis), or a
    /// Redis URL (`redis://127.0.0.1:6379`, `redis://:password@host:port/db`).
    pub url: String,
    /// This node's id in the registry and in presence: 1-64 of `A-Z a-z 0-9 . _ -`. Empty:
    /// `<hostname>-<pid>`, unique per process on a box and readable in `GET /nodes`.
    pub node_id: String,
    /// A node that has not renewed its registry record for this long is gone, with its
    /// presence members. It renews every third of it. 10 s: a crashed node's members are gone
    /// within ~13 s, and three missed heartbeats in a row are needed to be declared dead.
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// Publishes that may wait for Redis while it is unreachable; beyond it the oldest is
    /// dropped, counted, and its publisher told. 10,000 is a few seconds of a busy node's
    /// publishes at a few kilobytes each.
    pub outbox: usize,
    /// Longest wait between two attempts to reach Redis (exponential from 100 ms, full
    /// jitter so that nodes do not reconnect in lockstep).
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for BusSettings {
    fn default() -> BusSettings {
        BusSettings {
            url: "local".into(),
            node_id: String::new(),
            node_ttl: Duration::from_secs(10),
            outbox: 10_000,
            backoff_max: Duration::from_secs(5),
        }
    }
}

impl BusSettings {
    /// True for the in-process bus.
    pub fn is_local(&self) -> bool {
        self.url == "local"
    }

    /// The node id, or the default one for this process.
    pub fn node_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String = host
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .take(40)
            .collect();
        let host = if host.is_empty() { "node".into() } else { host };
        format!("{host}-{}", std::process::id())
    }

    /// Why these settings cannot work, if they cannot.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !self.is_local() {
            if !self.url.starts_with("redis://") && !self.url.starts_with("unix://") {
                return Err(("bus", "must be `local` or a redis:// URL".into()));
            }
            if let Err(e) = redis::Client::open(self.url.as_str()) {
                return Err(("bus", format!("not a Redis URL: {e}")));
            }
        }
        if !self.node_id.is_empty() && !crate::bus::valid_node_id(&self.node_id) {
            return Err(("node_id", "1-64 characters of A-Z a-z 0-9 . _ -".into()));
        }
        if self.node_ttl < Duration::from_millis(300) {
            return Err(("node_ttl", "at least 300ms".into()));
        }
        if self.outbox == 0 {
            return Err(("bus_outbox", "at least 1".into()));
        }
        if self.backoff_max < Duration::from_millis(100) {
            return Err(("bus_backoff_max", "at least 100ms".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let ok = BusSettings::default();
        ok.check().unwrap();
        assert!(ok.is_local());
        let redis = BusSettings {
            url: "redis://127.0.0.1:6379".into(),
            node_id: "n-1".into(),
            ..BusSettings::default()
        };
        redis.check().unwrap();
        assert_eq!(redis.node_id(), "n-1");
        for bad in [
            BusSettings {
                url: "http://x".into(),
                ..BusSettings::default()
            },
            BusSettings {
                node_id: "a b".into(),
                ..BusSettings::default()
            },
            BusSettings {
                node_ttl: Duration::from_millis(10),
                ..BusSettings::default()
            },
            BusSettings {
                outbox: 0,
                ..BusSettings::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        let default_id = BusSettings::default().node_id();
        assert!(crate::bus::valid_node_id(&default_id), "{default_id}");
    }
}
