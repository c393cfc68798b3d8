//! `apply_mask` throughput: the word-at-a-time fast path against the byte-loop reference, at
//! frame sizes from a chat message to a file chunk, from an 8-aligned start and from a start
//! one byte off (a masked payload follows a 6-, 8- or 14-byte header, so its alignment in the
//! read buffer is arbitrary).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use starling::proto::mask::{apply_mask, apply_mask_reference};

const SIZES: [(usize, &str); 4] = [
    (16, "16B"),
    (1 << 10, "1KiB"),
    (64 << 10, "64KiB"),
    (1 << 20, "1MiB"),
];
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn mask(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask");
    let mut buf = vec![0x5au8; (1 << 20) + 16];
    // Index `base` is 8-byte aligned, whatever the allocator returned.
    let base = buf.as_ptr().align_offset(8);
    for (len, name) in SIZES {
        g.throughput(Throughput::Bytes(len as u64));
        for skew in [0usize, 1] {
            let at = base + skew;
            let id = BenchmarkId::new(format!("fast/skew{skew}"), name);
            g.bench_function(id, |b| {
                b.iter(|| apply_mask(black_box(&mut buf[at..at + len]), KEY, 1))
            });
        }
        g.bench_function(BenchmarkId::new("reference", name), |b| {
            b.iter(|| apply_mask_reference(black_box(&mut buf[base..base + len]), KEY, 1))
        });
    }
    g.finish();
}

criterion_group!(benches, mask);
criterion_main!(benches);
