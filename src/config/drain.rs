//! How a drain proceeds (`--drain-batch`, `--drain-interval`, `--drain-code`, and the admin
//! API's `POST /drain`): the pace at which connections are closed and the close code they get.
//!
//! Closing every connection at once makes every client reconnect at once, somewhere else: a
//! storm the rest of the fleet has to absorb during each deploy. A pace of `batch` connections
//! per `interval` spreads the reconnects over the drain; the drain timeout still bounds the
//! whole. What a shard does with the plan is in `shard/drain.rs`.

use std::time::Duration;

/// The close codes a drain may send (RFC 6455 §7.4.1, and the IANA registry for 1012).
pub const DRAIN_CODES: [u16; 2] = [GOING_AWAY, SERVICE_RESTART];
/// 1001 "going away": the server is going down; the default.
pub const GOING_AWAY: u16 = 1001;
/// 1012 "service restart": the server is restarting, reconnect (elsewhere) — what a rolling
/// deploy should say.
pub const SERVICE_RESTART: u16 = 1012;

/// Checks a drain close code: only [`DRAIN_CODES`] mean "reconnect" to a client.
pub fn check_code(code: u16) -> Result<(), &'static str> {
    if DRAIN_CODES.contains(&code) {
        Ok(())
    } else {
        Err("must be 1001 (going away) or 1012 (service restart)")
    }
}

/// One drain, as every shard carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPlan {
    /// Connections closed per step over the whole node (each shard closes
    /// [`DrainPlan::per_shard`] of its own); 0 = all at once.
    pub batch: usize,
    /// Time between steps.
    pub interval: Duration,
    /// The close code, one of [`DRAIN_CODES`].
    pub code: u16,
    /// When the drain ends whatever is left: connections still open then are dropped.
    pub timeout: Duration,
}

impl DrainPlan {
    /// Checks the plan's close code: one of [`crate::config::DRAIN_CODES`].
    pub fn check_code(&self) -> Result<(), &'static str> {
        check_code(self.code)
    }

    /// A shard's share of a step with `shards` shards: `ceil(batch / shards)`, so the node
    /// closes at least `batch` per step while every shard has connections left; 0 = all.
    pub fn per_shard(&self, shards: usize) -> usize {
        self.batch.div_ceil(shards.max(1))
    }

    /// The close reason sent when no resume position fits in it.
    pub fn reason(&self) -> &'static str {
        if self.code == SERVICE_RESTART {
            "service restart"
        } else {
            "server shutting down"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reconnect_codes_are_drain_codes() {
        assert!(check_code(1001).is_ok());
        assert!(check_code(1012).is_ok());
        for bad in [0, 1000, 1002, 1011, 1013, 4000] {
            assert!(check_code(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_file_sets_the_pace_and_validation_checks_the_code() {
        let toml = "drain_batch = 50\ndrain_interval = \"200ms\"\ndrain_code = 1012\n";
        let c: crate::config::Config = toml::from_str(toml).unwrap();
        c.validate().unwrap();
        let plan = c.drain_plan();
        assert_eq!(
            (plan.batch, plan.interval, plan.code),
            (50, Duration::from_millis(200), SERVICE_RESTART)
        );
        assert_eq!(plan.reason(), "service restart");
        let c: crate::config::Config = toml::from_str("drain_code = 1000\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("drain_code") && e.contains("1012"), "{e}");
    }

    #[test]
    fn a_step_is_shared_among_shards_rounding_up() {
        let plan = |batch| DrainPlan {
            batch,
            interval: Duration::from_millis(100),
            code: GOING_AWAY,
            timeout: Duration::from_secs(30),
        };
        assert_eq!(plan(0).per_shard(4), 0);
        assert_eq!(plan(50).per_shard(1), 50);
        assert_eq!(plan(50).per_shard(2), 25);
        assert_eq!(plan(50).per_shard(3), 17);
        assert_eq!(plan(1).per_shard(8), 1);
        assert_eq!(plan(5).per_shard(0), 5);
    }
}
