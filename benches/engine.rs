//! 4 KiB random write and read-hit through the volume engine vs raw pwrite/pread on
//! a file in the same directory, in the same run; and a FLUSH-heavy writer (4 KiB
//! write + FLUSH) vs pwrite + fdatasync, with a raw model of the engine's FLUSH
//! (fdatasync the data file, append a record to a second file, fdatasync that) to
//! tell the engine's own cost from the file system's. Results:
//! scripts/bench-results/engine.txt.
//!
//! The engine uses real files (RealFs) in a temp dir and an in-memory store; the
//! flusher interval is long so the numbers measure the acknowledged-write path
//! (cache pwrite + journal record + map update) and the cache-hit read path.
// Test code: a panic is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use glidefs::store::{MemStore, ObjectStore};
use glidefs::volume::{Volume, VolumeConfig};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

const REGION: u64 = 64 << 20;
const IO: usize = 4096;

struct Lcg(u64);
impl Lcg {
    fn next_off(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % (REGION / IO as u64)) * IO as u64
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let mut cfg = VolumeConfig::new("bench", REGION, dir.path().join("vol"));
    cfg.flush_interval = Duration::from_secs(3600);
    cfg.dirty_limit_bytes = 4 << 30;
    cfg.journal_compact_bytes = 1 << 40;
    let vol = smol::block_on(Volume::open(cfg, store)).unwrap();
    let raw = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("raw"))
        .unwrap();
    raw.set_len(REGION).unwrap();
    // Prefill both so reads hit (the engine's cache, the raw file's page cache).
    let fill = vec![0x5au8; 1 << 20];
    for off in (0..REGION).step_by(fill.len()) {
        smol::block_on(vol.write(off, &fill, false)).unwrap();
        raw.write_all_at(&fill, off).unwrap();
    }
    // Flush the prefill so background writeback does not land in one measurement.
    smol::block_on(vol.flush()).unwrap();
    raw.sync_all().unwrap();
    let buf = vec![0xa5u8; IO];
    let mut g = c.benchmark_group("4k_random");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let mut r = Lcg(1);
    g.bench_function("raw_pwrite", |b| {
        b.iter(|| raw.write_all_at(&buf, r.next_off()).unwrap())
    });
    let mut r = Lcg(1);
    g.bench_function("engine_write", |b| {
        b.iter(|| smol::block_on(vol.write(r.next_off(), &buf, false)).unwrap())
    });
    // Raw again: the order of measurements must not decide the ratio.
    let mut r = Lcg(3);
    g.bench_function("raw_pwrite_again", |b| {
        b.iter(|| raw.write_all_at(&buf, r.next_off()).unwrap())
    });
    let mut out = vec![0u8; IO];
    let mut r = Lcg(2);
    g.bench_function("raw_pread", |b| {
        b.iter(|| raw.read_exact_at(&mut out, r.next_off()).unwrap())
    });
    let mut r = Lcg(2);
    g.bench_function("engine_read_hit", |b| {
        b.iter(|| smol::block_on(vol.read(r.next_off(), &mut out)).unwrap())
    });
    g.finish();
    assert_eq!(vol.stats().cache_misses, 0, "reads must all hit the cache");

    // FLUSH after every write: what a database commit costs.
    let mut log = OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.path().join("raw-log"))
        .unwrap();
    let rec = [0x11u8; 64];
    let mut g = c.benchmark_group("4k_write_fsync");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let mut r = Lcg(4);
    g.bench_function("raw_pwrite_fdatasync", |b| {
        b.iter(|| {
            raw.write_all_at(&buf, r.next_off()).unwrap();
            raw.sync_data().unwrap();
        })
    });
    let mut r = Lcg(4);
    g.bench_function("raw_engine_model", |b| {
        b.iter(|| {
            use std::io::Write;
            raw.write_all_at(&buf, r.next_off()).unwrap();
            raw.sync_data().unwrap();
            log.write_all(&rec).unwrap();
            log.sync_data().unwrap();
        })
    });
    let mut r = Lcg(4);
    g.bench_function("engine_write_flush", |b| {
        b.iter(|| {
            smol::block_on(async {
                vol.write(r.next_off(), &buf, false).await.unwrap();
                vol.flush().await.unwrap();
            })
        })
    });
    g.finish();
    smol::block_on(vol.close()).unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
