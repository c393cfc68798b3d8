//! The one clock every figure is measured with: `CLOCK_MONOTONIC` in nanoseconds.
//!
//! A plain `u64` rather than `Instant` because timestamps travel inside message payloads
//! (fanout) and between processes (`--procs`): the monotonic clock is one clock for the whole
//! machine, so a publisher in one process and a subscriber in another compare stamps directly.
//! Reading it is a vDSO call (no syscall); the hot paths still read it once per socket read,
//! not once per message.

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call; CLOCK_MONOTONIC is
    // always supported on Linux, so the call only writes `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Converts a duration to nanoseconds, saturating (durations here are at most hours).
pub fn ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
        assert!(a > 0);
    }
}
