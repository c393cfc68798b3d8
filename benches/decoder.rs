//! The decoder on a realistic stream of mixed frames, fed in 16 KiB reads as the shard does.
//!
//! The mix (about 4 MiB): mostly small text messages (chat/JSON-sized, 20-300 bytes, some
//! non-ASCII), binary messages of 1-4 KiB, pings, a few 64 KiB binaries that span reads, and
//! fragmented text messages with a ping between fragments. `server` decodes masked client
//! frames (unmask + validate); `client` decodes the same messages unmasked, as the load
//! generator does. Throughput counts stream bytes.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use starling::proto::frame::{encode_frame_into, encode_header};
use starling::proto::mask::apply_mask;
use starling::proto::{Decoder, Event, Flow, OpCode, Role, MAX_HEADER_LEN};

const READ: usize = 16 << 10;

/// A tiny xorshift so the stream is the same on every run without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

fn push(out: &mut Vec<u8>, fin: bool, op: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut h, fin, op, payload.len() as u64, mask);
    out.extend_from_slice(&h[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
}

fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len + 4);
    while s.len() < len {
        s.push(match rng.below(40) {
            0 => 'é',
            1 => '€',
            _ => (b'a' + rng.below(26) as u8) as char,
        });
    }
    s.into_bytes()
}

fn stream(masked: bool) -> Vec<u8> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(5 << 20);
    let key = |rng: &mut Rng| masked.then(|| (rng.next() as u32).to_le_bytes());
    while out.len() < 4 << 20 {
        let roll = rng.below(100);
        if roll < 70 {
            let len = 20 + rng.below(280);
            let p = text(&mut rng, len);
            let k = key(&mut rng);
            push(&mut out, true, OpCode::Text, &p, k);
        } else if roll < 90 {
            let p = vec![rng.next() as u8; 1024 + rng.below(3072)];
            let k = key(&mut rng);
            push(&mut out, true, OpCode::Binary, &p, k);
        } else if roll < 95 {
            let k = key(&mut rng);
            push(&mut out, true, OpCode::Ping, b"heartbeat", k);
        } else if roll < 97 {
            let p = vec![rng.next() as u8; 64 << 10];
            let k = key(&mut rng);
            push(&mut out, true, OpCode::Binary, &p, k);
        } else {
            let p = text(&mut rng, 3000);
            let (a, b) = p.split_at(1000);
            let (k1, k2, k3) = (key(&mut rng), key(&mut rng), key(&mut rng));
            push(&mut out, false, OpCode::Text, a, k1);
            push(&mut out, true, OpCode::Ping, b"", k2);
            push(&mut out, true, OpCode::Continuation, b, k3);
        }
    }
    out
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decoder_16KiB_reads");
    for (name, role, masked) in [
        ("server", Role::Server, true),
        ("client", Role::Client, false),
    ] {
        let input = stream(masked);
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| {
            // The stream is unmasked in place, so each iteration decodes a fresh copy.
            b.iter_batched_ref(
                || input.clone(),
                |buf| {
                    let mut dec = Decoder::new(role, 1 << 20);
                    let mut seen = 0usize;
                    for read in buf.chunks_mut(READ) {
                        let n = dec.feed(read, |ev| {
                            seen += match ev {
                                Event::Text(p) | Event::Binary(p) => p.len(),
                                _ => 1,
                            };
                            Flow::Continue
                        });
                        black_box(n.ok());
                    }
                    black_box(seen)
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// The echo benchmark's read: 64 masked 32-byte binary frames arriving together, decoded and
/// each answered with an unmasked frame appended to one output buffer, as the shard's echo
/// app does. Throughput counts messages.
fn echo_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("echo_64x32B");
    let mut input = Vec::new();
    for i in 0..64u32 {
        let key = (i.wrapping_mul(0x9e37_79b9) | 1).to_le_bytes();
        push(&mut input, true, OpCode::Binary, &[b'p'; 32], Some(key));
    }
    g.throughput(Throughput::Elements(64));
    g.bench_function("decode_and_encode", |b| {
        let mut out = Vec::with_capacity(4096);
        let mut dec = Decoder::new(Role::Server, 1 << 20);
        b.iter_batched_ref(
            || input.clone(),
            |buf| {
                out.clear();
                let n = dec.feed(buf, |ev| {
                    if let Event::Binary(p) = ev {
                        encode_frame_into(&mut out, OpCode::Binary, p, None);
                    }
                    Flow::Continue
                });
                black_box(n.ok());
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, decode, echo_batch);
criterion_main!(benches);
