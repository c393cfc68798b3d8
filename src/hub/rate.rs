//! Per-connection rate limits: a token bucket small enough to live in every connection.
//!
//! A connection may spend up to `burst` tokens at once and earns `rate` tokens a second back,
//! never holding more than `burst`. The limits are configuration, the same for every
//! connection, so they are passed in on each call and a bucket stores only its level and the
//! time it was last brought up to date: 8 bytes. Limiting messages/s and bytes/s takes two.
//!
//! # Why integers
//!
//! The level is kept in thousandths of a token in a `u32`. Bringing it up to date after
//! `elapsed` ms then adds exactly `elapsed × rate` thousandths: nothing is rounded, so a bucket
//! earns the same whether it is asked every millisecond or once a minute. The alternatives fit
//! the same 8 bytes but drift: an `f32` level loses small refills against a large level (its
//! step at 1,000,000 is 1/16), and a level in whole tokens leaves a fraction of a millisecond
//! over at each refill with nowhere to keep it, which at 1,500 tokens/s asked every millisecond
//! is a third of the rate. The price is range: `burst` is clamped to [`MAX_BURST`] tokens,
//! about 4 MiB for a bytes bucket. The caller keeps `burst` at least the largest single cost
//! (the message size limit, for bytes), or such a message could never pass.
//!
//! # Time
//!
//! `now_ms` is a millisecond tick that wraps at 2^32 (every 49.7 days); the time since the last
//! call is `now_ms.wrapping_sub(last)`, right across the wrap as long as calls are less than
//! 49.7 days apart and the tick never runs backwards (a shard's loop clock does not). A longer
//! silence looks shorter than it was, so the bucket may refill less than it should once.

/// The largest usable `burst`: the level, in thousandths of a token, must fit a `u32`.
pub const MAX_BURST: u32 = u32::MAX / MILLI;

/// Level units per token.
const MILLI: u32 = 1000;

/// One token bucket: 8 bytes, since every connection holds one or two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Thousandths of a token available at `last_ms`; at most `MAX_BURST × 1000`. 4 bytes.
    level: u32,
    /// The tick the level was last brought up to date at. 4 bytes.
    last_ms: u32,
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 8);

/// The level of a full bucket.
fn capacity(burst: u32) -> u32 {
    burst.min(MAX_BURST) * MILLI
}

impl Bucket {
    /// A full bucket: a new connection may use its whole burst straight away.
    pub fn new(burst: u32, now_ms: u32) -> Bucket {
        Bucket {
            level: capacity(burst),
            last_ms: now_ms,
        }
    }

    /// Takes `cost` tokens at `rate` per second with capacity `burst`; false when over the
    /// limit. A refused take spends nothing, so a client that waits gets through once it has
    /// earned enough; counting refusals (to close with 1008) is the caller's business. A `rate`
    /// of 0 never refills; a `cost` of 0 always passes.
    pub fn take(&mut self, cost: u32, rate: u32, burst: u32, now_ms: u32) -> bool {
        let elapsed = u64::from(now_ms.wrapping_sub(self.last_ms));
        // Both factors are below 2^32, so the product fits a u64, and so does the sum.
        let level =
            (u64::from(self.level) + elapsed * u64::from(rate)).min(u64::from(capacity(burst)));
        self.last_ms = now_ms;
        let cost = u64::from(cost) * u64::from(MILLI);
        let (level, ok) = match level.checked_sub(cost) {
            Some(rest) => (rest, true),
            None => (level, false),
        };
        // `level` is at most `capacity(burst)`, a u32.
        self.level = level as u32;
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Tries `take(cost)` `tries` times at one tick and counts the successes.
    fn takes(b: &mut Bucket, tries: u32, cost: u32, rate: u32, burst: u32, now: u32) -> u32 {
        (0..tries)
            .filter(|_| b.take(cost, rate, burst, now))
            .count() as u32
    }

    #[test]
    fn a_new_bucket_allows_the_burst_then_refuses() {
        let mut b = Bucket::new(5, 0);
        assert_eq!(takes(&mut b, 10, 1, 1, 5, 0), 5);
        assert!(!b.take(1, 1, 5, 0));
        assert!(b.take(0, 1, 5, 0), "cost 0 always passes");
    }

    #[test]
    fn refills_at_the_rate() {
        let (rate, burst) = (10, 10);
        let mut b = Bucket::new(burst, 1_000);
        assert_eq!(takes(&mut b, 20, 1, rate, burst, 1_000), 10);
        // One token per 100 ms.
        assert!(!b.take(1, rate, burst, 1_099));
        assert!(b.take(1, rate, burst, 1_100));
        assert!(!b.take(1, rate, burst, 1_100));
        // Half a second: five tokens.
        assert_eq!(takes(&mut b, 20, 1, rate, burst, 1_600), 5);
    }

    #[test]
    fn never_holds_more_than_the_burst() {
        let mut b = Bucket::new(3, 0);
        assert_eq!(takes(&mut b, 10, 1, 100, 3, 0), 3);
        // An hour idle still earns only the burst.
        assert_eq!(takes(&mut b, 10, 1, 100, 3, 3_600_000), 3);
    }

    #[test]
    fn a_refused_take_spends_nothing() {
        let mut b = Bucket::new(10, 0);
        assert!(b.take(7, 1, 10, 0));
        assert!(!b.take(4, 1, 10, 0), "3 left, 4 asked");
        assert!(b.take(3, 1, 10, 0), "the 3 are still there");
        assert!(
            !b.take(11, 1_000, 10, 60_000),
            "more than the burst never passes"
        );
    }

    #[test]
    fn a_zero_rate_never_refills() {
        let mut b = Bucket::new(2, 0);
        assert_eq!(takes(&mut b, 5, 1, 0, 2, 0), 2);
        assert!(!b.take(1, 0, 2, u32::MAX));
    }

    #[test]
    fn fractional_refills_do_not_drift() {
        // 3 tokens/s asked every millisecond for 10 s: exactly 30, no matter how the
        // thousandths fall. (A burst of 1 would be wrong here: each time the level reaches a
        // whole token it is capped there and the thousandths over it are lost.)
        let mut b = Bucket::new(2, 0);
        assert_eq!(takes(&mut b, 2, 1, 3, 2, 0), 2);
        let got: u32 = (1..=10_000).map(|t| takes(&mut b, 1, 1, 3, 2, t)).sum();
        assert_eq!(got, 30);
        // 1,500/s asked twice a millisecond for 1 s: 1,500, not 1,000 or 2,000.
        let mut b = Bucket::new(2, 0);
        assert_eq!(takes(&mut b, 2, 1, 1_500, 2, 0), 2);
        let got: u32 = (1..=1_000).map(|t| takes(&mut b, 2, 1, 1_500, 2, t)).sum();
        assert_eq!(got, 1_500);
    }

    #[test]
    fn the_tick_may_wrap() {
        let start = u32::MAX - 49;
        let mut b = Bucket::new(10, start);
        assert_eq!(takes(&mut b, 20, 1, 10, 10, start), 10);
        // 100 ms later the tick reads 50 after wrapping: one token.
        assert_eq!(takes(&mut b, 5, 1, 10, 10, 50), 1);
        assert_eq!(b.last_ms, 50);
    }

    #[test]
    fn a_huge_burst_is_clamped() {
        let mut b = Bucket::new(u32::MAX, 0);
        assert_eq!(b.level, MAX_BURST * MILLI);
        assert!(b.take(MAX_BURST, u32::MAX, u32::MAX, 0));
        assert!(!b.take(1, u32::MAX, u32::MAX, 0));
        // The largest rate for the longest time cannot overflow.
        assert!(b.take(MAX_BURST, u32::MAX, u32::MAX, u32::MAX));
    }

    #[test]
    fn a_smaller_burst_later_caps_the_level() {
        let mut b = Bucket::new(100, 0);
        assert!(b.take(5, 1, 10, 0));
        assert_eq!(b.level, 5 * MILLI);
    }

    /// The obvious version: step one millisecond at a time in whole thousandths.
    fn reference(ops: &[(u16, u32)], rate: u32, burst: u32) -> Vec<bool> {
        let cap = u128::from(burst.min(MAX_BURST)) * 1000;
        let mut level = cap;
        ops.iter()
            .map(|&(dt, cost)| {
                for _ in 0..dt {
                    level = (level + u128::from(rate)).min(cap);
                }
                let cost = u128::from(cost) * 1000;
                let ok = level >= cost;
                if ok {
                    level -= cost;
                }
                ok
            })
            .collect()
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference_and_the_bound(
            start in any::<u32>(),
            rate in 0u32..5_000,
            burst in 0u32..50,
            ops in prop::collection::vec((0u16..300, 0u32..20), 0..200),
        ) {
            let mut b = Bucket::new(burst, start);
            let mut now = start;
            let mut granted = 0u64;
            let mut got = Vec::new();
            for &(dt, cost) in &ops {
                now = now.wrapping_add(u32::from(dt));
                let ok = b.take(cost, rate, burst, now);
                granted += if ok { u64::from(cost) } else { 0 };
                got.push(ok);
            }
            prop_assert_eq!(&got, &reference(&ops, rate, burst));
            // A token bucket never grants more than its burst plus what it earned.
            let total_ms: u64 = ops.iter().map(|&(dt, _)| u64::from(dt)).sum();
            prop_assert!(granted * 1000 <= u64::from(burst) * 1000 + total_ms * u64::from(rate));
        }
    }
}
