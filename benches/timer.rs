//! The timer wheel at one million pending timers, one per connection: insert, cancel,
//! expiry (stepping 1 ms like a busy shard, and one long jump like a shard waking from an idle
//! poll), and the heartbeat pattern where traffic pushes every connection's timer to now + 30 s.
//!
//! The baseline is uSockets' scheme: one timeout byte per socket and a sweep over every socket
//! on each 4 s tick. Its cost is one sweep of all connections every 4 s whether or not anything
//! is due; the wheel's is per timer touched. All figures are per element (timer or socket).
//!
//! Run: `cargo bench --bench timer -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use starling::timer::TimerWheel;

/// Pending timers: a shard with a million connections.
const N: usize = 1_000_000;
/// Deadlines spread over two minutes, the range ping, pong and handshake timeouts fall in.
const SPREAD_MS: u64 = 120_000;
/// The ping interval.
const HEARTBEAT_MS: u64 = 30_000;

/// A fixed xorshift sequence, so every run measures the same work.
fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// One deadline per key in `1..=SPREAD_MS`.
fn deadlines() -> Vec<u64> {
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    (0..N).map(|_| 1 + next() % SPREAD_MS).collect()
}

/// All keys in a random order. Traffic, accepts and closes reach connections in no
/// particular slab order, and not in the order their timers were filed, so each pass below
/// uses a different shuffle: walking keys sequentially, or in filing order, would flatter
/// every figure with cache locality a shard never sees.
fn shuffled_keys(seed: u64) -> Vec<usize> {
    let mut next = xorshift(seed);
    let mut keys: Vec<usize> = (0..N).collect();
    for i in (1..N).rev() {
        keys.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    keys
}

fn filled(keys: &[usize], deadlines: &[u64]) -> TimerWheel {
    let mut wheel = TimerWheel::with_capacity(keys.len());
    for &key in keys {
        wheel.insert(key, deadlines[key]);
    }
    wheel
}

fn wheel(c: &mut Criterion) {
    let deadlines = deadlines();
    let keys = shuffled_keys(0x2545_f491_4f6c_dd1d);
    let other_keys = shuffled_keys(0x853c_49e6_748f_ea9b);
    let full = filled(&keys, &deadlines);
    let mut group = c.benchmark_group("timer_1M");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(10);

    group.bench_function("insert", |b| {
        b.iter_batched(
            || TimerWheel::with_capacity(N),
            |mut wheel| {
                for &key in &keys {
                    wheel.insert(key, deadlines[key]);
                }
                wheel
            },
            BatchSize::PerIteration,
        )
    });

    group.bench_function("cancel", |b| {
        b.iter_batched(
            || full.clone(),
            |mut wheel| {
                for &key in &other_keys {
                    black_box(wheel.cancel(key));
                }
                wheel
            },
            BatchSize::PerIteration,
        )
    });

    group.bench_function("advance_1ms_steps_expire_all", |b| {
        b.iter_batched(
            || (full.clone(), Vec::with_capacity(N)),
            |(mut wheel, mut fired)| {
                for now in 1..=SPREAD_MS {
                    wheel.advance(now, &mut fired);
                    fired.clear();
                }
                assert!(wheel.is_empty());
                (wheel, fired)
            },
            BatchSize::PerIteration,
        )
    });

    group.bench_function("advance_one_jump_expire_all", |b| {
        b.iter_batched(
            || (full.clone(), Vec::with_capacity(N)),
            |(mut wheel, mut fired)| {
                wheel.advance(SPREAD_MS, &mut fired);
                assert_eq!(fired.len(), N);
                (wheel, fired)
            },
            BatchSize::PerIteration,
        )
    });

    group.bench_function("heartbeat_reinsert_now_plus_30s", |b| {
        let mut wheel = full.clone();
        let mut fired = Vec::new();
        b.iter(|| {
            // Each round the clock moves 1 ms and every connection shows traffic, pushing its
            // ping back to now + 30 s: an unlink and a link per key, nothing fires. Rounds
            // alternate key orders so a key's list neighbours are not the keys touched next.
            let now = wheel.now() + 1;
            wheel.advance(now, &mut fired);
            let order = if now.is_multiple_of(2) {
                &keys
            } else {
                &other_keys
            };
            for &key in order {
                wheel.insert(key, now + HEARTBEAT_MS);
            }
        });
        assert_eq!(wheel.len(), N);
    });

    group.bench_function("baseline_usockets_sweep", |b| {
        // One timeout byte per socket; each 4 s tick scans all of them for the current stamp.
        let mut timeouts: Vec<u8> = deadlines.iter().map(|&d| (d / 4_000) as u8).collect();
        let mut fired = Vec::new();
        let mut stamp = 0u8;
        b.iter(|| {
            stamp = (stamp + 1) % 250; // u8::MAX stays "no timeout"
            for (socket, t) in timeouts.iter_mut().enumerate() {
                if *t == stamp {
                    *t = u8::MAX;
                    fired.push(socket);
                }
            }
            black_box(fired.len());
            fired.clear();
        });
    });

    group.finish();
}

criterion_group!(benches, wheel);
criterion_main!(benches);
