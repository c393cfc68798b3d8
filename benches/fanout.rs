//! Publish one 64-byte message to N local subscribers' send queues: encode once and queue a
//! shared handle on each (what the shard does), against encoding a fresh frame per recipient
//! (what a per-connection design does). Throughput is in deliveries.
//!
//! This measures the user-space cost of queuing only; the syscall side (one write per
//! subscriber per loop pass) is measured end to end by `benches/compare.sh`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use starling::proto::{frame, OpCode};
use starling::shard::send_queue::{BufPool, SendQueue};

const BOUND: usize = 1 << 20;

fn fanout(c: &mut Criterion) {
    let payload = [7u8; 64];
    let mut g = c.benchmark_group("fanout");
    for n in [100usize, 10_000] {
        g.throughput(Throughput::Elements(n as u64));
        let mut queues: Vec<SendQueue> = (0..n).map(|_| SendQueue::default()).collect();
        let mut pool = BufPool::default();
        let mut sink = std::io::sink();
        g.bench_with_input(BenchmarkId::new("encode_once_shared", n), &n, |b, _| {
            b.iter(|| {
                let f = frame::encode_frame(OpCode::Binary, black_box(&payload));
                for q in queues.iter_mut() {
                    q.push_shared(f.clone(), BOUND);
                }
                for q in queues.iter_mut() {
                    q.flush(&mut sink, &mut pool).unwrap();
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("encode_per_recipient", n), &n, |b, _| {
            b.iter(|| {
                for q in queues.iter_mut() {
                    q.push_shared(
                        frame::encode_frame(OpCode::Binary, black_box(&payload)),
                        BOUND,
                    );
                }
                for q in queues.iter_mut() {
                    q.flush(&mut sink, &mut pool).unwrap();
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
