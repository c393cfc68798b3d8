//! Frame header parse + payload unmask per size class, and the encoders.
//!
//! `parse_unmask` is what the server does to every client frame whose payload is in the read
//! buffer: parse the header, unmask the payload in place (throughput counts the whole frame).
//! `encode_header` is per call; `encode_frame` is the broadcast path (one `Bytes` per message).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use starling::proto::frame::{encode_frame, encode_frame_into, encode_header, FrameHeader};
use starling::proto::mask::apply_mask;
use starling::proto::{OpCode, MAX_HEADER_LEN};

const SIZES: [(usize, &str); 3] = [(16, "16B"), (1 << 10, "1KiB"), (64 << 10, "64KiB")];

fn parse_unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_unmask");
    for (len, name) in SIZES {
        let payload = vec![b'x'; len];
        let mut frame = Vec::new();
        encode_frame_into(&mut frame, OpCode::Binary, &payload, Some([1, 2, 3, 4]));
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let buf = black_box(&mut frame[..]);
                if let Ok(Some((h, n))) = FrameHeader::parse(buf) {
                    let end = n + h.payload_len as usize;
                    if let (Some(key), Some(p)) = (h.mask, buf.get_mut(n..end)) {
                        apply_mask(p, key, 0);
                    }
                }
            })
        });
    }
    g.finish();
}

fn encoders(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_header");
    let cases = [
        (16u64, None, "7bit"),
        (1 << 10, None, "16bit"),
        (1 << 20, Some([1, 2, 3, 4]), "64bit_masked"),
    ];
    for (len, mask, name) in cases {
        g.bench_function(name, |b| {
            let mut out = [0u8; MAX_HEADER_LEN];
            b.iter(|| encode_header(&mut out, true, OpCode::Text, black_box(len), mask))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("encode_frame");
    for (len, name) in SIZES {
        let payload = vec![b'y'; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| encode_frame(OpCode::Text, black_box(&payload)))
        });
    }
    g.finish();
}

criterion_group!(benches, parse_unmask, encoders);
criterion_main!(benches);
