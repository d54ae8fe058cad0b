//! Copy-on-write forks of snapshots (issue 16): a fork reads its parent as of the
//! snapshot plus its own writes, stores only those, survives its parent's
//! overwrites, compaction, garbage collection and purge, and forks of forks work.
// Test code: a panic is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod volume_support;

use glidefs::store::{MemStore, ObjectStore};
use glidefs::volume::keys::VolumeKeys;
use glidefs::volume::{SimFs, Volume, VolumeConfig, VolumeError};
use std::sync::Arc;
use std::time::Duration;
use volume_support::*;

const MIB: u64 = 1 << 20;
const SS: usize = 4096;

fn cfg(fs: &SimFs, name: &str, size: u64) -> VolumeConfig {
    let mut c = sim_cfg(fs, name, size);
    c.compact_below_live_pct = 99;
    c.max_segment_bytes = 128 << 10;
    c
}

/// Write `seed`'s pattern into every other 4 KiB of `img` and of `v`, one upload
/// per pass; returns nothing, `img` is the expected content afterwards.
async fn scribble(v: &Volume, img: &mut [u8], seed: u64, phase: usize) {
    let data = pattern(seed, img.len());
    for (i, c) in data.chunks(SS).enumerate() {
        if i % 2 == phase {
            let off = i * SS;
            v.write(off as u64, c, false).await.unwrap();
            img[off..off + SS].copy_from_slice(c);
        }
    }
    v.drain().await.unwrap();
}

/// Wait until compaction and a manifest ran (garbage collection follows it).
async fn settle(v: &Volume) {
    let t0 = std::time::Instant::now();
    let (c0, m0) = (v.stats().compacted_bytes, v.stats().manifests_written);
    while v.stats().compacted_bytes == c0 || v.stats().manifests_written <= m0 {
        assert!(t0.elapsed() < Duration::from_secs(30), "never settled");
        let mut b = vec![0u8; SS];
        v.read(0, &mut b).await.unwrap();
        v.write(0, &b, false).await.unwrap();
        v.drain().await.unwrap();
        smol::Timer::after(Duration::from_millis(10)).await;
    }
}

async fn objects(store: &Arc<dyn ObjectStore>, vol: &str) -> Vec<(String, u64)> {
    let l = store.list(VolumeKeys::new(vol).root()).await.unwrap();
    l.into_iter().map(|o| (o.key, o.size)).collect()
}

#[test]
fn a_fork_reads_its_parent_at_the_snapshot_plus_its_own_writes() {
    smol::block_on(async {
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let fs = SimFs::new();
        let vcfg = cfg(&fs, "base", MIB);
        let v = open(&vcfg, &store).await;
        let a = pattern(1, MIB as usize);
        v.write(0, &a, false).await.unwrap();
        v.snapshot("s1").await.unwrap();
        // The parent goes on: overwritten, compacted, collected.
        let mut b = a.clone();
        scribble(&v, &mut b, 2, 0).await;
        scribble(&v, &mut b, 3, 1).await;
        settle(&v).await;

        // A fork costs two small objects, whatever the size.
        let before: u64 = store.list("").await.unwrap().iter().map(|o| o.size).sum();
        let size = Volume::fork(&store, "base", "s1", "f", 0, None)
            .await
            .unwrap();
        assert_eq!(size, MIB);
        let after: u64 = store.list("").await.unwrap().iter().map(|o| o.size).sum();
        assert!(
            after - before <= 64 << 10,
            "a fork added {} bytes",
            after - before
        );
        let fcfg = cfg(&fs, "f", 0);
        let f = open(&fcfg, &store).await;
        assert!(read_all(&f).await == a, "the fork reads the snapshot");
        let mut fa = a.clone();
        scribble(&f, &mut fa, 4, 1).await;
        assert!(read_all(&f).await == fa, "the fork's own writes");
        assert!(
            read_all(&v).await == b,
            "the parent is untouched by the fork"
        );
        let f = drain_and_cold_open(f, &fcfg, &store).await;
        assert!(read_all(&f).await == fa, "the fork after a cold wake");
        // The fork stored about what it wrote (half the volume), not the base.
        let own: u64 = objects(&store, "f")
            .await
            .iter()
            .filter(|(k, _)| k.contains("/seg/"))
            .map(|(_, s)| s)
            .sum();
        assert!(own < MIB * 6 / 10, "the fork stored {own} bytes");

        // A fork of the fork, larger: the fork's image, then zeros.
        f.snapshot("f1").await.unwrap();
        Volume::fork(&store, "f", "f1", "g", 2 * MIB, None)
            .await
            .unwrap();
        let mut fb = fa.clone();
        scribble(&f, &mut fb, 5, 0).await;
        let gcfg = cfg(&fs, "g", 0);
        let g = open(&gcfg, &store).await;
        let mut ga = fa.clone();
        ga.resize(2 * MIB as usize, 0);
        assert!(read_all(&g).await == ga, "the fork of the fork");
        g.write(MIB + 8192, &pattern(6, SS), false).await.unwrap();
        ga[MIB as usize + 8192..MIB as usize + 8192 + SS].copy_from_slice(&pattern(6, SS));
        let g = drain_and_cold_open(g, &gcfg, &store).await;
        assert!(
            read_all(&g).await == ga,
            "the fork of the fork after a cold wake"
        );
        assert!(read_all(&f).await == fb);
        for x in [v, f, g] {
            x.close().await.unwrap();
        }
    });
}

#[test]
fn snapshots_with_forks_stay_and_purges_keep_what_forks_read() {
    smol::block_on(async {
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let fs = SimFs::new();
        let vcfg = cfg(&fs, "p", MIB);
        let v = open(&vcfg, &store).await;
        let a = pattern(11, MIB as usize);
        v.write(0, &a, false).await.unwrap();
        v.snapshot("s1").await.unwrap();
        Volume::fork(&store, "p", "s1", "c", 0, None).await.unwrap();
        let e = v.delete_snapshot("s1").await.unwrap_err();
        assert!(matches!(e, VolumeError::InUse(_)), "{e}");
        assert!(
            e.to_string().contains("\"s1\"") && e.to_string().contains('c'),
            "{e}"
        );
        assert_eq!(
            v.snapshots().await.unwrap().len(),
            1,
            "refused delete kept it"
        );

        // The parent purged: what the fork reads stays, the name stays taken.
        let mut b = a.clone();
        scribble(&v, &mut b, 12, 0).await;
        v.close().await.unwrap();
        drop(v);
        Volume::purge(&store, "p", vcfg.lease_rules(), false, None)
            .await
            .unwrap();
        Volume::purge_cache(&vcfg).unwrap();
        let ccfg = cfg(&fs, "c", 0);
        let c = open(&ccfg, &store).await;
        assert!(read_all(&c).await == a, "the fork after its parent's purge");
        let e = Volume::open(vcfg.clone(), store.clone())
            .await
            .err()
            .unwrap();
        assert!(matches!(e, VolumeError::InUse(_)), "{e}");
        // Only the snapshot, its manifest, segments, marker and meta are left.
        let left = objects(&store, "p").await;
        assert!(left.iter().all(|(k, _)| !k.ends_with("/lease")), "{left:?}");

        // The fork purged: the parent's leftovers go with it.
        c.close().await.unwrap();
        drop(c);
        Volume::purge(&store, "c", ccfg.lease_rules(), false, None)
            .await
            .unwrap();
        Volume::purge_cache(&ccfg).unwrap();
        assert!(objects(&store, "p").await.is_empty(), "leftovers of p");
        assert!(objects(&store, "c").await.is_empty());
        // The name is free again.
        let v = open(&vcfg, &store).await;
        assert!(read_all(&v).await == vec![0u8; MIB as usize]);
        v.close().await.unwrap();
    });
}

#[test]
fn bad_forks_are_refused_and_change_nothing() {
    smol::block_on(async {
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let fs = SimFs::new();
        let v = open(&cfg(&fs, "src", MIB), &store).await;
        v.snapshot("s1").await.unwrap();
        let keys_before = store.list("").await.unwrap().len();
        let cases: [(&str, &str, &str, u64); 6] = [
            ("src", "nope", "x", 0),
            ("nobody", "s1", "x", 0),
            ("src", "s1", "src", 0),
            ("src", "s1", "x", 4096),
            ("src", "S 1", "x", 0),
            ("src", "s1", "Bad/Name", 0),
        ];
        for (parent, snap, child, size) in cases {
            let e = Volume::fork(&store, parent, snap, child, size, None)
                .await
                .unwrap_err();
            match (snap, child) {
                ("nope", _) | (_, "x") if parent == "nobody" || snap == "nope" => {
                    assert!(matches!(e, VolumeError::NotFound(_)), "{e}")
                }
                (_, "src") => assert!(matches!(e, VolumeError::AlreadyExists(_)), "{e}"),
                _ => assert!(matches!(e, VolumeError::Invalid(_)), "{e}"),
            }
        }
        assert_eq!(store.list("").await.unwrap().len(), keys_before);
        v.close().await.unwrap();
    });
}

/// Forks of one snapshot on one host read the base through the shared cache: each
/// stored extent is fetched once and held once, whatever the number of forks, and
/// nothing of it lands in the forks' own cache files (a second read is a shared
/// hit); a fork's own writes stay its own.
#[test]
fn forks_read_their_base_once_through_the_shared_cache() {
    smol::block_on(async {
        let mem = Arc::new(MemStore::new());
        let store: Arc<dyn ObjectStore> = mem.clone();
        let fs = SimFs::new();
        let size = 2 * MIB;
        let bcfg = cfg(&fs, "gold", size);
        let v = open(&bcfg, &store).await;
        let a = pattern(21, size as usize);
        v.write(0, &a, false).await.unwrap();
        v.snapshot("s1").await.unwrap();
        v.close().await.unwrap();
        let cache = glidefs::volume::shared_cache::SharedCache::new(64 * MIB);
        let mut forks = Vec::new();
        for k in 0..8 {
            let name = format!("vm-{k}");
            Volume::fork(&store, "gold", "s1", &name, 0, None)
                .await
                .unwrap();
            let mut c = cfg(&fs, &name, 0);
            c.shared_cache = Some(cache.clone());
            forks.push(open(&c, &store).await);
        }
        let gets = mem.get_count();
        for f in &forks {
            assert!(read_all(f).await == a);
        }
        let blocks = size / glidefs::BLOCK_SIZE as u64;
        assert_eq!(
            mem.get_count() - gets,
            blocks,
            "one GET per stored extent for 8 forks"
        );
        let st = cache.stats();
        assert_eq!((st.misses, st.bytes), (blocks, size), "{st:?}");
        let fetched: u64 = forks.iter().map(|f| f.stats().bytes_fetched).sum();
        assert!(
            fetched <= size + size / 10,
            "the forks fetched {fetched} bytes"
        );
        assert!(forks.iter().all(|f| f.stats().store_shared_bytes >= size));
        // Read again: served by the shared cache, not the forks' cache files.
        assert!(read_all(&forks[3]).await == a);
        assert_eq!(cache.stats().hits, st.hits + blocks, "{:?}", cache.stats());
        // Own writes stay own.
        forks[0]
            .write(4096, &pattern(22, 4096), false)
            .await
            .unwrap();
        let mut b = a.clone();
        b[4096..8192].copy_from_slice(&pattern(22, 4096));
        assert!(read_all(&forks[0]).await == b);
        assert!(read_all(&forks[1]).await == a);
        forks[0].drain().await.unwrap();
        assert!(forks[0].stats().store_owned_bytes >= 4096);
        for f in forks {
            f.close().await.unwrap();
        }
    });
}

/// A fork reading its base sequentially has the base read ahead into the shared
/// cache: once the prefetches are done the stream reads on without a GET, every
/// extent is held once in the shared cache, and nothing lands in the fork's cache
/// (blocks of its own are read ahead into its cache file as for any volume).
#[test]
fn a_fork_streaming_its_base_is_read_ahead_into_the_shared_cache() {
    smol::block_on(async {
        let mem = Arc::new(MemStore::new());
        let store: Arc<dyn ObjectStore> = mem.clone();
        let fs = SimFs::new();
        let size = 4 * MIB;
        let bs = glidefs::BLOCK_SIZE;
        let v = open(&cfg(&fs, "gold", size), &store).await;
        let a = pattern(31, size as usize);
        v.write(0, &a, false).await.unwrap();
        v.snapshot("s1").await.unwrap();
        v.close().await.unwrap();
        let cache = glidefs::volume::shared_cache::SharedCache::new(64 * MIB);
        Volume::fork(&store, "gold", "s1", "vm", 0, None)
            .await
            .unwrap();
        let mut c = cfg(&fs, "vm", 0);
        c.shared_cache = Some(cache.clone());
        let f = open(&c, &store).await;
        let read = |b: usize| {
            let f = &f;
            async move {
                let mut blk = vec![0u8; bs];
                f.read((b * bs) as u64, &mut blk).await.unwrap();
                blk
            }
        };
        assert!(read(0).await == a[..bs]);
        assert!(read(1).await == a[bs..2 * bs]);
        let blocks = size as usize / bs;
        assert_eq!(f.stats().readahead_blocks, blocks as u64 - 2);
        f.settle_readahead().await;
        let gets = mem.get_count();
        for b in 2..blocks {
            assert!(read(b).await == a[b * bs..(b + 1) * bs], "block {b}");
        }
        assert_eq!(
            mem.get_count(),
            gets,
            "the stream fetched after its readahead"
        );
        let st = cache.stats();
        assert_eq!((st.misses, st.bytes), (blocks as u64, size), "{st:?}");
        assert_eq!(st.hits, blocks as u64 - 2, "{st:?}");
        f.close().await.unwrap();
    });
}
