//! Encryption cost (issue 17): compress + encode + seal of a segment vs without the
//! seal, the encode step alone, and open + decode of its extents vs decode alone, on
//! the same data in the same run.
//! Data: 32 extents of 128 KiB, half random (stored raw), half text-like (zstd).
//! Results: scripts/bench-results/encryption-*.txt.
// Test code: a panic is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glidefs::volume::crypto::DataKey;
use glidefs::volume::segment::{self, Extent, Opener, HEADER_LEN};
use std::time::Duration;

const EXTENT: usize = 128 << 10;
const EXTENTS: usize = 32;

fn data(i: usize) -> Vec<u8> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..EXTENT)
        .map(|j| {
            if i.is_multiple_of(2) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            } else {
                b"the quick brown fox jumps over the lazy dog "[j % 44]
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let key = DataKey::random();
    let raw: Vec<Vec<u8>> = (0..EXTENTS).map(data).collect();
    let items = |compress: bool| -> Vec<Extent> {
        raw.iter()
            .enumerate()
            .map(|(i, d)| {
                let (kind, payload) = segment::encode_extent(d, compress);
                Extent {
                    block: i as u64,
                    first: 0,
                    count: 32,
                    kind,
                    payload,
                }
            })
            .collect()
    };
    let mut g = c.benchmark_group("segment_4MiB");
    g.throughput(Throughput::Bytes((EXTENT * EXTENTS) as u64))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    // What the flusher does per segment: compress every extent, then encode (and
    // seal); and the encode step alone on already compressed extents.
    g.bench_function("compress_encode_plain", |b| {
        b.iter(|| segment::encode(9, 7, 1, 0, &items(true), None))
    });
    g.bench_function("compress_encode_sealed", |b| {
        b.iter(|| segment::encode(9, 7, 1, 0, &items(true), Some(key.frames())))
    });
    let compressed = items(true);
    g.bench_function("encode_plain", |b| {
        b.iter(|| segment::encode(9, 7, 1, 0, &compressed, None))
    });
    g.bench_function("encode_sealed", |b| {
        b.iter(|| segment::encode(9, 7, 1, 0, &compressed, Some(key.frames())))
    });
    for (name, seal) in [
        ("decode_plain", None),
        ("decode_sealed", Some(key.frames())),
    ] {
        let (obj, entries) = segment::encode(9, 7, 1, 0, &items(true), seal);
        assert!(obj.len() > HEADER_LEN);
        g.bench_function(name, |b| {
            b.iter(|| {
                for e in &entries {
                    let l = e.loc(9);
                    let p = &obj[l.off as usize..l.off as usize + l.len as usize];
                    segment::decode_payload(&l, p, Opener::new(seal, 7, e.block)).unwrap();
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
