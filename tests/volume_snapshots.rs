//! Snapshots (issue 16, first part): an immutable image of a volume that garbage
//! collection and compaction keep intact while the volume goes on changing.
// Test code: a panic is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod volume_support;

use glidefs::store::{MemStore, ObjectStore};
use glidefs::volume::keys::VolumeKeys;
use glidefs::volume::{SimFs, VolumeError};
use std::sync::Arc;
use std::time::Duration;
use volume_support::*;

const MIB: u64 = 1 << 20;
const SS: usize = 4096;

async fn segment_count(store: &Arc<dyn ObjectStore>, vol: &str) -> usize {
    let keys = VolumeKeys::new(vol);
    store.list(&keys.segments()).await.unwrap().len()
}

/// Overwrite every 4 KiB of the volume in scattered order, one drain per pass.
async fn overwrite_all(v: &glidefs::volume::Volume, size: u64, seed: u64) -> Vec<u8> {
    let want = pattern(seed, size as usize);
    let n = size / SS as u64;
    for pass in 0..4u64 {
        for i in (pass..n).step_by(4) {
            let off = (i * 7 % n) * SS as u64;
            v.write(off, &want[off as usize..off as usize + SS], false)
                .await
                .unwrap();
        }
        v.drain().await.unwrap();
    }
    want
}

/// Compaction and garbage collection run in flusher cycles after a drain: wait for
/// both to have done something.
async fn settle(v: &glidefs::volume::Volume) {
    let t0 = std::time::Instant::now();
    let start = v.stats().manifests_written;
    while v.stats().compacted_bytes == 0 || v.stats().manifests_written < start + 1 {
        assert!(t0.elapsed() < Duration::from_secs(30), "never settled");
        v.write(0, &v_first_sector(v).await, false).await.unwrap();
        v.drain().await.unwrap();
        smol::Timer::after(Duration::from_millis(10)).await;
    }
}

async fn v_first_sector(v: &glidefs::volume::Volume) -> Vec<u8> {
    let mut b = vec![0u8; SS];
    v.read(0, &mut b).await.unwrap();
    b
}

/// A snapshot keeps its image while the volume is overwritten, compacted and
/// garbage collected, also across a cold wake (the pins are read back from the
/// store); once deleted, what only it pinned is collected.
#[test]
fn a_snapshot_keeps_its_image_through_overwrites_compaction_and_gc() {
    smol::block_on(async {
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let fs = SimFs::new();
        let size = MIB;
        let mut cfg = sim_cfg(&fs, "snapvol", size);
        cfg.compact_below_live_pct = 99;
        cfg.max_segment_bytes = 128 << 10;
        let v = open(&cfg, &store).await;
        let a = pattern(1, size as usize);
        v.write(0, &a, false).await.unwrap();
        let info = v.snapshot("s1").await.unwrap();
        assert_eq!(info.name, "s1");
        assert_eq!(info.size_bytes, size);
        let b = overwrite_all(&v, size, 2).await;
        settle(&v).await;
        assert!(read_all(&v).await == b, "the volume after the overwrite");
        assert!(
            snapshot_image(&store, "snapvol", "s1", None).await == a,
            "s1 after GC"
        );

        // A cold wake: the pins come back from the store before anything is deleted.
        let v = drain_and_cold_open(v, &cfg, &store).await;
        let c = overwrite_all(&v, size, 3).await;
        settle(&v).await;
        assert!(read_all(&v).await == c);
        assert!(
            snapshot_image(&store, "snapvol", "s1", None).await == a,
            "s1 after a cold wake"
        );
        assert_eq!(
            v.snapshots().await.unwrap(),
            vec![info.clone()],
            "listed after a cold wake"
        );

        // Deleted: the segments only s1 kept go at the next collections.
        let pinned = segment_count(&store, "snapvol").await;
        v.delete_snapshot("s1").await.unwrap();
        assert!(v.snapshots().await.unwrap().is_empty());
        overwrite_all(&v, size, 4).await;
        settle(&v).await;
        let after = segment_count(&store, "snapvol").await;
        assert!(
            after < pinned,
            "{after} segments after the delete, {pinned} while pinned"
        );
        let keys = VolumeKeys::new("snapvol");
        assert!(store.get(&keys.snapshot("s1")).await.is_err());
        v.close().await.unwrap();
    });
}

/// Names are checked, a name in use is refused, an unknown one is not found; the
/// errors change nothing. A snapshot of an empty volume is all zeros.
#[test]
fn snapshot_names_and_errors() {
    smol::block_on(async {
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let fs = SimFs::new();
        let cfg = sim_cfg(&fs, "names", MIB);
        let v = open(&cfg, &store).await;
        let empty = v.snapshot("empty").await.unwrap();
        assert_eq!(empty.seq, 0);
        assert!(snapshot_image(&store, "names", "empty", None).await == vec![0u8; MIB as usize]);
        for bad in ["", "Bad", "a/b", "-x", &"x".repeat(65)] {
            let e = v.snapshot(bad).await.unwrap_err();
            assert!(matches!(e, VolumeError::Invalid(_)), "{bad:?}: {e}");
            assert!(e.to_string().contains("snapshot name"), "{e}");
        }
        v.write(0, &pattern(5, 8192), false).await.unwrap();
        let s2 = v.snapshot("s2").await.unwrap();
        assert!(s2.seq > 0);
        let e = v.snapshot("s2").await.unwrap_err();
        assert!(matches!(e, VolumeError::AlreadyExists(_)), "{e}");
        let e = v.delete_snapshot("nope").await.unwrap_err();
        assert!(matches!(e, VolumeError::NotFound(_)), "{e}");
        let names: Vec<String> = v
            .snapshots()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["empty", "s2"]);
        let img = snapshot_image(&store, "names", "s2", None).await;
        assert_eq!(img[..8192], pattern(5, 8192));
        v.close().await.unwrap();
    });
}
