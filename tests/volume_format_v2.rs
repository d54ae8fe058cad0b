//! Store format 2 (issue 15): only dirty sectors are uploaded, segments fill to
//! their target size, compaction reclaims overwritten data, a cold read of a sector
//! costs one GET.
// Test code: a panic is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod volume_support;

use glidefs::store::{MemStore, ObjectMeta, ObjectStore, PutCondition, StoreError};
use glidefs::volume::keys::VolumeKeys;
use glidefs::volume::{SimFs, Volume};
use glidefs::BLOCK_SIZE;
use std::sync::Arc;
use std::time::Duration;
use volume_support::*;

const MIB: u64 = 1 << 20;
const BS: u64 = BLOCK_SIZE as u64;

fn mem() -> (Arc<MemStore>, Arc<dyn ObjectStore>) {
    let m = Arc::new(MemStore::new());
    let s: Arc<dyn ObjectStore> = m.clone();
    (m, s)
}

/// Bytes of every segment object of volume `name`.
async fn segment_bytes(store: &Arc<dyn ObjectStore>, name: &str) -> u64 {
    let segs = store.list(&VolumeKeys::new(name).segments()).await.unwrap();
    segs.iter().map(|o| o.size).sum()
}

/// A 4 KiB write into a block costs about 4 KiB in the store, on a fresh volume
/// and on one whose blocks are all in the store already. Format 1 uploaded the
/// whole 128 KiB block (32x on a filled volume); this failed there.
#[test]
fn sparse_writes_upload_only_their_sectors() {
    smol::block_on(async {
        let (_, store) = mem();
        let fs = SimFs::new();
        let mut cfg = sim_cfg(&fs, "sparse", 4 * MIB);
        cfg.compress = false;
        let v = open(&cfg, &store).await;
        v.write(0, &pattern(1, 4 * MIB as usize), false)
            .await
            .unwrap();
        v.drain().await.unwrap();
        for filled in [true, false] {
            let before = v.stats().bytes_uploaded;
            let mut client = 0u64;
            for i in 0..24u64 {
                // One sector in every other block, at varying offsets.
                let off = (i * 11 % 32) * BS + (i % 32) * 4096;
                v.write(off, &pattern(100 + i, 4096), false).await.unwrap();
                client += 4096;
            }
            v.drain().await.unwrap();
            let up = v.stats().bytes_uploaded - before;
            // Payload plus 56-byte headers and 32-byte index entries.
            assert!(
                up as f64 <= client as f64 * 1.1,
                "filled={filled}: {up} bytes uploaded for {client} written"
            );
        }
        let want = read_all(&v).await;
        let v = drain_and_cold_open(v, &cfg, &store).await;
        assert!(read_all(&v).await == want, "content after a cold wake");
        v.close().await.unwrap();
    });
}

/// Sequential writes fill segments to the target size: 8 MiB in 1 MiB segments is
/// 8 segment PUTs, not one per block or per flush.
#[test]
fn dense_writes_fill_segments_to_their_target_size() {
    smol::block_on(async {
        let (_, store) = mem();
        let fs = SimFs::new();
        let mut cfg = sim_cfg(&fs, "dense", 16 * MIB);
        cfg.compress = false;
        cfg.max_segment_bytes = MIB;
        let v = open(&cfg, &store).await;
        let chunk = pattern(5, 128 << 10);
        for i in 0..64u64 {
            v.write(i * BS, &chunk, false).await.unwrap();
        }
        v.drain().await.unwrap();
        assert_eq!(v.stats().segments_written, 8);
        v.close().await.unwrap();
    });
}

/// A partial segment is not held back beyond the flush interval: it goes out
/// without a drain once its data is that old.
#[test]
fn a_partial_segment_goes_out_when_its_data_reaches_the_flush_interval() {
    smol::block_on(async {
        let (_, store) = mem();
        let fs = SimFs::new();
        let mut cfg = sim_cfg(&fs, "age", 4 * MIB);
        cfg.flush_interval = Duration::from_millis(200);
        cfg.max_segment_bytes = 64 * MIB;
        let v = open(&cfg, &store).await;
        v.write(3 * BS, &pattern(9, 8192), false).await.unwrap();
        let t0 = std::time::Instant::now();
        while v.stats().dirty_bytes > 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "dirty data never uploaded"
            );
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        assert_eq!(v.stats().segments_written, 1);
        v.close().await.unwrap();
    });
}

/// Random 4 KiB overwrites of a whole volume, many times: compaction keeps the
/// store near the live data, and every byte reads back after a cold wake.
#[test]
fn compaction_keeps_the_store_near_the_live_data() {
    smol::block_on(async {
        let (_, store) = mem();
        let fs = SimFs::new();
        let size = 2 * MIB;
        let mut cfg = sim_cfg(&fs, "compact", size);
        cfg.compress = false;
        cfg.max_segment_bytes = 256 << 10;
        cfg.checkpoint_every = 4;
        let v = open(&cfg, &store).await;
        let mut want = pattern(1, size as usize);
        v.write(0, &want, false).await.unwrap();
        v.drain().await.unwrap();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for round in 0..12u64 {
            for i in 0..64u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = (x % (size / 4096)) * 4096;
                let d = pattern(round * 1000 + i, 4096);
                want[off as usize..off as usize + 4096].copy_from_slice(&d);
                v.write(off, &d, false).await.unwrap();
            }
            v.drain().await.unwrap();
        }
        // Compaction runs in flusher cycles (each drain kicks one) and goes on while
        // candidates remain; the manifest after it lets GC delete what it emptied.
        let t0 = std::time::Instant::now();
        loop {
            v.drain().await.unwrap();
            let stored = segment_bytes(&store, "compact").await;
            if stored as f64 <= size as f64 * 1.5 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{stored} bytes of segments for {size} live bytes: {:?}",
                v.stats()
            );
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        assert!(v.stats().compacted_bytes > 0, "compaction never ran");
        assert!(read_all(&v).await == want, "content before the cold wake");
        let v = drain_and_cold_open(v, &cfg, &store).await;
        assert!(read_all(&v).await == want, "content after a cold wake");
        v.close().await.unwrap();
    });
}

/// A block made of several extents: a cold read of one 4 KiB sector is one ranged
/// GET, a read of the whole block one per extent.
#[test]
fn a_cold_read_of_one_sector_costs_one_get() {
    smol::block_on(async {
        let (m, store) = mem();
        let fs = SimFs::new();
        let mut cfg = sim_cfg(&fs, "cold", MIB);
        cfg.compact_below_live_pct = 0;
        let v = open(&cfg, &store).await;
        v.write(0, &pattern(1, BLOCK_SIZE), false).await.unwrap();
        v.drain().await.unwrap();
        for (i, s) in [3u64, 9, 20].into_iter().enumerate() {
            v.write(s * 4096, &pattern(2 + i as u64, 4096), false)
                .await
                .unwrap();
            v.drain().await.unwrap();
        }
        let want = read_all(&v).await;
        let v = drain_and_cold_open(v, &cfg, &store).await;
        let gets = m.get_count();
        let mut one = vec![0u8; 4096];
        v.read(9 * 4096, &mut one).await.unwrap();
        assert_eq!(one, want[9 * 4096..10 * 4096]);
        assert_eq!(m.get_count() - gets, 1, "GETs for one sector");
        let gets = m.get_count();
        let mut blk = vec![0u8; BLOCK_SIZE];
        v.read(0, &mut blk).await.unwrap();
        assert_eq!(blk, want[..BLOCK_SIZE]);
        // The whole-block extent and the two sector extents not yet read.
        assert_eq!(m.get_count() - gets, 3, "GETs for the rest of the block");
        v.close().await.unwrap();
    });
}

/// A cold reader going through a block 4 KiB at a time fetches each extent once:
/// the first read fills every sector of the extent it fetched. (The first version
/// of format 2 filled only the wanted sector: 32 GETs of the same 128 KiB for one
/// block, which made the integrity phase's cold-wake verify 5x slower.)
#[test]
fn a_sector_by_sector_cold_read_fetches_each_extent_once() {
    smol::block_on(async {
        let (m, store) = mem();
        let fs = SimFs::new();
        let cfg = sim_cfg(&fs, "seqcold", MIB);
        let v = open(&cfg, &store).await;
        let want = pattern(3, 2 * BLOCK_SIZE);
        v.write(0, &want, false).await.unwrap();
        let v = drain_and_cold_open(v, &cfg, &store).await;
        let gets = m.get_count();
        let mut got = vec![0u8; 2 * BLOCK_SIZE];
        for (i, c) in got.chunks_mut(4096).enumerate() {
            v.read(i as u64 * 4096, c).await.unwrap();
        }
        assert!(got == want);
        assert_eq!(m.get_count() - gets, 2, "GETs for two whole-block extents");
        v.close().await.unwrap();
    });
}

/// A block rewritten sector by sector in many uploads is made of many extents
/// (one GET each on a cold read); compaction merges it into one whole-block extent,
/// and a cold read of it is one GET again.
#[test]
fn compaction_merges_a_fragmented_block_into_one_extent() {
    smol::block_on(async {
        let (m, store) = mem();
        let fs = SimFs::new();
        let mut cfg = sim_cfg(&fs, "merge", MIB);
        cfg.compact_below_live_pct = 0;
        let v = open(&cfg, &store).await;
        v.write(0, &pattern(1, BLOCK_SIZE), false).await.unwrap();
        v.drain().await.unwrap();
        for s in [1u64, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23] {
            v.write(s * 4096, &pattern(s + 1, 4096), false)
                .await
                .unwrap();
            v.drain().await.unwrap();
        }
        let want = read_all(&v).await;
        let v = drain_and_cold_open(v, &cfg, &store).await;
        let gets = m.get_count();
        let mut blk = vec![0u8; BLOCK_SIZE];
        v.read(0, &mut blk).await.unwrap();
        assert_eq!(blk, want[..BLOCK_SIZE]);
        assert_eq!(
            m.get_count() - gets,
            13,
            "one GET per extent before compaction"
        );
        v.close().await.unwrap();
        drop(v);
        cfg.compact_below_live_pct = 99;
        let v = open(&cfg, &store).await;
        // A write elsewhere gives the flusher a cycle, which compacts.
        v.write(6 * BS, &pattern(77, 4096), false).await.unwrap();
        v.drain().await.unwrap();
        // Compaction runs in the flusher after the upload the drain waited for.
        let t0 = std::time::Instant::now();
        while v.stats().compacted_bytes == 0 || v.stats().manifests_written == 0 {
            assert!(t0.elapsed() < Duration::from_secs(20), "never compacted");
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        let v = drain_and_cold_open(v, &cfg, &store).await;
        let gets = m.get_count();
        v.read(0, &mut blk).await.unwrap();
        assert_eq!(blk, want[..BLOCK_SIZE]);
        assert_eq!(
            m.get_count() - gets,
            1,
            "GETs for the block after compaction"
        );
        v.close().await.unwrap();
    });
}

/// An open volume is closed and reopened by a build that reads its objects: the
/// store objects say format 2.
#[test]
fn new_volumes_are_format_2() {
    smol::block_on(async {
        let (_, store) = mem();
        let fs = SimFs::new();
        let cfg = sim_cfg(&fs, "fmt", MIB);
        let v = open(&cfg, &store).await;
        v.write(0, &pattern(1, 4096), false).await.unwrap();
        v.drain().await.unwrap();
        v.close().await.unwrap();
        let meta: serde_json::Value =
            serde_json::from_slice(&store.get("volumes/fmt/meta").await.unwrap()).unwrap();
        assert_eq!(meta["format"], 2);
        let segs = store.list("volumes/fmt/seg/").await.unwrap();
        let obj = store.get(&segs[0].key).await.unwrap();
        assert_eq!(&obj[8..12], &2u32.to_le_bytes());
        drop(Volume::purge_cache(&cfg));
    });
}

/// A store whose ranged GETs take 20 ms each, counting how many run at once.
struct SlowGets {
    inner: Arc<dyn ObjectStore>,
    running: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl ObjectStore for SlowGets {
    async fn put(&self, key: &str, data: bytes::Bytes) -> Result<String, StoreError> {
        self.inner.put(key, data).await
    }
    async fn put_if(
        &self,
        key: &str,
        data: bytes::Bytes,
        cond: PutCondition,
    ) -> Result<String, StoreError> {
        self.inner.put_if(key, data, cond).await
    }
    async fn get(&self, key: &str) -> Result<bytes::Bytes, StoreError> {
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now, SeqCst);
        smol::Timer::after(Duration::from_millis(20)).await;
        self.running.fetch_sub(1, SeqCst);
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        "slow-gets".to_owned()
    }
}

/// A fresh in-memory store behind [`SlowGets`]: the wrapper (its counters) and it
/// as the volumes' store.
fn slow_store() -> (Arc<SlowGets>, Arc<dyn ObjectStore>) {
    let (_, mem) = mem();
    let slow = Arc::new(SlowGets {
        inner: mem,
        running: Default::default(),
        peak: Default::default(),
    });
    (slow.clone(), slow)
}

/// Write sector `s` of blocks `blocks`, one upload per call.
async fn scatter(v: &Volume, blocks: std::ops::Range<u64>, s: u64, seed: u64) {
    for b in blocks {
        v.write(b * BS + s * 4096, &pattern(seed + b, 4096), false)
            .await
            .unwrap();
    }
    v.drain().await.unwrap();
}

/// The extents of a fragmented block are fetched at once: a cold read of it
/// costs one round trip, not one per extent. (Before, they were fetched one after
/// the other: the CI outage phase's cold reads of a slowly written export took
/// minutes.)
#[test]
fn a_fragmented_blocks_extents_are_fetched_concurrently() {
    smol::block_on(async {
        let (slow, store) = slow_store();
        let fs = SimFs::new();
        let mut cfg = sim_cfg(&fs, "concurrent", MIB);
        cfg.compact_below_live_pct = 0;
        let v = open(&cfg, &store).await;
        v.write(0, &pattern(1, BLOCK_SIZE), false).await.unwrap();
        v.drain().await.unwrap();
        for s in [2u64, 6, 10, 14] {
            scatter(&v, 0..1, s, s).await;
        }
        let want = read_all(&v).await;
        let v = drain_and_cold_open(v, &cfg, &store).await;
        slow.peak.store(0, std::sync::atomic::Ordering::SeqCst);
        let mut blk = vec![0u8; BLOCK_SIZE];
        v.read(0, &mut blk).await.unwrap();
        assert_eq!(blk, want[..BLOCK_SIZE]);
        assert_eq!(
            slow.peak.load(std::sync::atomic::Ordering::SeqCst),
            5,
            "ranged GETs in flight at once for a block of 5 extents"
        );
        v.close().await.unwrap();
    });
}

/// The blocks of one read request are fetched at once: a cold 1 MiB read (8
/// blocks, each one extent) has its 8 GETs in flight together. (Before, the blocks
/// were fetched one after another: a peak of 1; seen failing.)
#[test]
fn a_cold_multi_block_read_fetches_its_blocks_concurrently() {
    smol::block_on(async {
        let (slow, store) = slow_store();
        let fs = SimFs::new();
        let cfg = sim_cfg(&fs, "multiblock", 2 * MIB);
        let v = open(&cfg, &store).await;
        let data = pattern(3, MIB as usize);
        v.write(BS, &data, false).await.unwrap();
        let v = drain_and_cold_open(v, &cfg, &store).await;
        slow.peak.store(0, std::sync::atomic::Ordering::SeqCst);
        let mut buf = vec![0u8; MIB as usize];
        v.read(BS, &mut buf).await.unwrap();
        assert!(buf == data, "cold 1 MiB read differs from what was written");
        assert_eq!(
            slow.peak.load(std::sync::atomic::Ordering::SeqCst),
            8,
            "ranged GETs in flight at once for a cold read of 8 blocks"
        );
        v.close().await.unwrap();
    });
}

/// Sequential readahead: after a read that continues the previous one, the next
/// blocks are fetched in the background, so a cold 128 KiB stream finds them cached
/// (no GET of its own); reads that jump around prefetch nothing.
#[test]
fn a_cold_sequential_stream_is_read_ahead() {
    smol::block_on(async {
        let (_, store) = slow_store();
        let fs = SimFs::new();
        let cfg = sim_cfg(&fs, "readahead", 8 * MIB);
        let v = open(&cfg, &store).await;
        let data = pattern(4, 8 * MIB as usize);
        v.write(0, &data, false).await.unwrap();
        let v = drain_and_cold_open(v, &cfg, &store).await;
        let read = |b: u64| {
            let v = &v;
            async move {
                let mut blk = vec![0u8; BLOCK_SIZE];
                v.read(b * BS, &mut blk).await.unwrap();
                blk
            }
        };
        // Jumping around: nothing ahead.
        for b in [9u64, 3, 40, 20] {
            assert!(read(b).await[..] == data[(b * BS) as usize..((b + 1) * BS) as usize]);
        }
        assert_eq!(v.stats().readahead_blocks, 0, "random reads prefetched");
        // A stream: block 0, then 1 continues it and starts the readahead of the
        // blocks up to 8 MiB past its end (all 64), at most 32 at a time: first
        // 2..=36 without 3, 9 and 20, which are cached already (the later ones may
        // have started by now: they follow finished ones).
        let misses = v.stats().cache_misses;
        read(0).await;
        read(1).await;
        let started = v.stats().readahead_blocks;
        assert!((32..=58).contains(&started), "{started} prefetches started");
        assert_eq!(v.stats().cache_misses, misses + 2);
        // Each finished prefetch starts the next one without waiting for the reader:
        // once they settle, every block of the volume but the 4 cached ones was
        // fetched ahead, and the stream reads on without a miss.
        v.settle_readahead().await;
        assert_eq!(v.stats().readahead_blocks, 64 - 2 - 4);
        for b in 2..64u64 {
            assert!(
                read(b).await[..] == data[(b * BS) as usize..((b + 1) * BS) as usize],
                "block {b}"
            );
        }
        let s = v.stats();
        assert_eq!(
            s.cache_misses,
            misses + 2,
            "the stream missed after its readahead"
        );
        v.close().await.unwrap();
    });
}

/// Blocks fragmented by scattered writes are merged into one whole-block extent
/// once cold (a cold read of one is one GET again), and merges stay within their
/// budget: a volume whose writes uploaded little merges nothing.
#[test]
fn cold_fragmented_blocks_are_merged_within_the_budget() {
    smol::block_on(async {
        let (m, store) = mem();
        let fs = SimFs::new();
        let clock = Arc::new(glidefs::clock::ManualClock::new(1_000_000));
        let mut cfg = sim_cfg(&fs, "coldmerge", 4 * MIB);
        cfg.clock = clock.clone();
        cfg.compress = false;
        let v = open(&cfg, &store).await;
        // Six uploads of one sector in each of blocks 0..4: 7 extents, 6 GETs each,
        // and 96 KiB of uploads: a budget of 48 KiB, less than one block.
        for (i, s) in [1u64, 5, 9, 13, 17, 21].into_iter().enumerate() {
            scatter(&v, 0..4, s, 10 * i as u64).await;
        }
        clock.advance(61_000);
        scatter(&v, 20..21, 0, 99).await;
        v.drain().await.unwrap();
        assert_eq!(v.stats().compacted_bytes, 0, "merged beyond the budget");
        // 256 KiB more uploaded (elsewhere): budget for one block, the first of the
        // equally fragmented ones.
        v.write(2 * MIB, &pattern(5, 2 * BLOCK_SIZE), false)
            .await
            .unwrap();
        v.drain().await.unwrap();
        let t0 = std::time::Instant::now();
        while v.stats().compacted_bytes == 0 {
            assert!(t0.elapsed() < Duration::from_secs(20), "never merged");
            v.drain().await.unwrap();
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        let s = v.stats();
        assert_eq!(s.compacted_bytes, BS, "one block merged: {s:?}");
        // What the volume's own writes uploaded (the merge's segment aside).
        let own = s.bytes_uploaded - s.compacted_bytes;
        assert!(
            s.compacted_bytes * 2 <= own,
            "merges {} beyond half of {own} uploaded",
            s.compacted_bytes
        );
        let want = read_all(&v).await;
        let v = drain_and_cold_open(v, &cfg, &store).await;
        // Block 1 first: 0 then 1 would be a sequential stream, read ahead.
        for (b, gets) in [(1u64, 6u64), (0, 1)] {
            let before = m.get_count();
            let mut blk = vec![0u8; BLOCK_SIZE];
            v.read(b * BS, &mut blk).await.unwrap();
            let (a, z) = ((b * BS) as usize, ((b + 1) * BS) as usize);
            assert_eq!(blk, want[a..z], "block {b}");
            assert_eq!(m.get_count() - before, gets, "GETs for block {b}");
        }
        v.close().await.unwrap();
    });
}

/// A segment that holds nothing live stays in the store for `gc_grace` after
/// garbage collection found it, then goes.
#[test]
fn dead_segments_are_deleted_after_the_grace_period() {
    smol::block_on(async {
        let (_, store) = mem();
        let fs = SimFs::new();
        let clock = Arc::new(glidefs::clock::ManualClock::new(1_000_000));
        let mut cfg = sim_cfg(&fs, "grace", MIB);
        cfg.clock = clock.clone();
        cfg.lease_ttl = Duration::from_secs(3600);
        cfg.gc_grace = Duration::from_secs(600);
        cfg.checkpoint_every = 1;
        let v = open(&cfg, &store).await;
        let keys = VolumeKeys::new("grace");
        let segments = || async {
            let l = store.list(&keys.segments()).await.unwrap();
            l.into_iter().map(|o| o.key).collect::<Vec<_>>()
        };
        v.write(0, &pattern(1, BLOCK_SIZE), false).await.unwrap();
        v.drain().await.unwrap();
        let first = segments().await;
        assert_eq!(first.len(), 1);
        v.write(0, &pattern(2, BLOCK_SIZE), false).await.unwrap();
        v.drain().await.unwrap();
        // A write elsewhere gives the flusher a cycle (an idle one cycles at each
        // lease renewal).
        clock.advance(599_000);
        scatter(&v, 5..6, 0, 3).await;
        assert!(
            segments().await.contains(&first[0]),
            "deleted before the grace period ended"
        );
        assert!(v.stats().store_dead_bytes > 0);
        // Garbage collection runs after the manifest, which may land after the
        // drain returned: it first found the segment dead at 599 s at the latest.
        clock.advance(601_000);
        let t0 = std::time::Instant::now();
        while segments().await.contains(&first[0]) {
            assert!(t0.elapsed() < Duration::from_secs(20), "never deleted");
            scatter(&v, 5..6, 1, 4).await;
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        assert_eq!(read_all(&v).await[..BLOCK_SIZE], pattern(2, BLOCK_SIZE));
        v.close().await.unwrap();
    });
}
