//! `--coalesce`: after a poll that brought few events, an echo thread waits a little before
//! the next one, so that one wakeup collects several connections' replies (loadgen/README.md,
//! "Coalescing", says why and what it costs the latency figures). This file resolves the flag;
//! `worker/mod.rs` does the waiting.

use std::time::Duration;

use crate::cli::Scenario;

/// A poll that brings fewer events than this is followed by the wait.
pub const BELOW: usize = 8;
/// Timer slack of a coalescing thread: its waits are a few tens of µs, and the default
/// 50 µs slack would double them.
pub const SLACK_NS: u64 = 1_000;

/// Threads with at least this many echo messages in flight get `--coalesce auto`.
const COALESCE_AUTO_INFLIGHT: u64 = 1024;
/// The wait `--coalesce auto` picks.
const COALESCE_AUTO: Duration = Duration::from_micros(100);

/// Resolves `--coalesce`: `auto`, `off`, or a duration (echo only). `inflight`: the closed
/// loop's messages in flight over all threads (0 for an open loop, where `auto` is off).
pub fn resolve(arg: &str, s: Scenario, inflight: u64, loops: usize) -> Result<Duration, String> {
    let per_loop = inflight / loops.max(1) as u64;
    let d = match arg {
        "auto" if s == Scenario::Echo && per_loop >= COALESCE_AUTO_INFLIGHT => COALESCE_AUTO,
        "auto" | "off" => Duration::ZERO,
        other => crate::cli::parse_duration(other).map_err(|e| format!("--coalesce {e}"))?,
    };
    if !d.is_zero() && s != Scenario::Echo {
        return Err("--coalesce applies to echo only".into());
    }
    if d > Duration::from_millis(10) {
        return Err(format!("--coalesce {arg}: at most 10ms"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_needs_a_deep_closed_loop_per_thread() {
        let r = |arg: &str, s: Scenario, inflight: u64, loops: usize| {
            resolve(arg, s, inflight, loops).map(|d| d.as_micros())
        };
        // 64 x 64 on one or two threads: 4096 or 2048 each, on.
        assert_eq!(r("auto", Scenario::Echo, 4096, 1), Ok(100));
        assert_eq!(r("auto", Scenario::Echo, 4096, 2), Ok(100));
        // The boundary: 1024 per thread on, 1023 off; an open loop counts 0.
        assert_eq!(r("auto", Scenario::Echo, 2048, 2), Ok(100));
        assert_eq!(r("auto", Scenario::Echo, 2046, 2), Ok(0));
        assert_eq!(r("auto", Scenario::Echo, 0, 1), Ok(0));
        // Other scenarios: auto is off, anything else refused.
        assert_eq!(r("auto", Scenario::Fanout, 1 << 20, 1), Ok(0));
        assert_eq!(r("auto", Scenario::Connect, 1 << 20, 1), Ok(0));
        // Explicit: a duration, or off.
        assert_eq!(r("30us", Scenario::Echo, 0, 1), Ok(30));
        assert_eq!(r("off", Scenario::Echo, 4096, 1), Ok(0));
        assert_eq!(r("0", Scenario::Echo, 4096, 1), Ok(0));
        for (arg, s) in [
            ("50us", Scenario::Fanout),
            ("1s", Scenario::Echo),
            ("soon", Scenario::Echo),
        ] {
            let e = resolve(arg, s, 4096, 1).unwrap_err();
            assert!(e.contains("--coalesce"), "{e}");
        }
    }
}
