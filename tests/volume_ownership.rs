//! Ownership when a volume changes hands (issue 14): fencing of late PUTs, host
//! identity, self-fencing, setting aside diverged local data. The randomised
//! multi-host model is tests/volume_multihost.rs.
// Test code: a panic is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod volume_support;

use glidefs::clock::{ManualClock, SkewedClock};
use glidefs::store::{MemStore, ObjectMeta, ObjectStore, PutCondition, StoreError};
use glidefs::volume::{FileIo, SimFs, Volume, VolumeConfig, VolumeError};
use std::sync::Arc;
use std::time::Duration;
use volume_support::fault::{FaultStore, Mode};
use volume_support::*;

const MIB: u64 = 1 << 20;

fn host_cfg(fs: &SimFs, name: &str, host: &str) -> VolumeConfig {
    let mut c = sim_cfg(fs, name, MIB);
    c.cache_dir = format!("/sim/{host}/{name}").into();
    c.owner = format!("id-{host}");
    c.host_label = host.to_string();
    c.checkpoint_every = 1000;
    c
}

async fn read4k(v: &Volume, off: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    v.read(off, &mut b).await.unwrap();
    b
}

/// Issue 14 item 3: host A's segment PUT is delayed past B's takeover and B's
/// manifest; when it lands it must not be applied over B's newer data.
#[test]
fn late_put_of_a_fenced_writer_is_ignored_after_a_newer_manifest() {
    smol::block_on(async {
        let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let a_net = FaultStore::new(mem.clone());
        let a_store: Arc<dyn ObjectStore> = a_net.clone();
        let fs = SimFs::new();
        let mut a_cfg = host_cfg(&fs, "vm", "a");
        a_cfg.flush_interval = Duration::from_millis(1);
        let a = Volume::open(a_cfg.clone(), a_store.clone()).await.unwrap();
        a.write(0, &pattern(1, 4096), false).await.unwrap();
        a.drain().await.unwrap();
        // A's next uploads never get a reply; the requests land later.
        a.write(0, &pattern(2, 4096), false).await.unwrap();
        a_net.set(Mode::Delay, "/seg/");
        for _ in 0..50 {
            if a_net.delayed_count() >= 3 {
                break;
            }
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        assert!(a_net.delayed_count() >= 1, "A never tried to upload");
        // B takes over and writes a manifest (checkpoint every segment).
        let mut b_cfg = host_cfg(&fs, "vm", "b");
        b_cfg.takeover = true;
        b_cfg.checkpoint_every = 1;
        let b = Volume::open(b_cfg.clone(), mem.clone()).await.unwrap();
        assert!(read4k(&b, 0).await == pattern(1, 4096));
        b.write(0, &pattern(3, 4096), false).await.unwrap();
        b.write(8192, &pattern(4, 4096), false).await.unwrap();
        b.drain().await.unwrap();
        // A drain returns once the segment is committed; the manifest follows in the
        // same flusher cycle, so wait for it (asserting at once failed under load).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while b.stats().manifests_written == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "B wrote no manifest within 10 s of its drain"
            );
            smol::Timer::after(Duration::from_millis(5)).await;
        }
        // A's late PUTs land now.
        assert!(a_net.release().await >= 1);
        b.close().await.unwrap();
        a.abandon().await;
        // Whoever opens next sees B's data, not A's late segment.
        let mut c_cfg = host_cfg(&fs, "vm", "c");
        c_cfg.takeover = true;
        let c = Volume::open(c_cfg, mem.clone()).await.unwrap();
        assert!(
            read4k(&c, 0).await == pattern(3, 4096),
            "A's late PUT was applied"
        );
        assert!(read4k(&c, 8192).await == pattern(4, 4096));
        c.close().await.unwrap();
    });
}

fn clocked_store() -> (Arc<ManualClock>, Arc<dyn ObjectStore>) {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::with_clock(clock.clone()));
    (clock, store)
}

/// Issue 14 item 5: a writer cut off from the store stops acknowledging writes and
/// FLUSHes before its lease can be taken, and resumes once a renewal lands; after a
/// takeover it is fenced for good.
#[test]
fn a_writer_that_cannot_renew_stops_acknowledging_before_the_ttl() {
    smol::block_on(async {
        let (clock, mem) = clocked_store();
        let net = FaultStore::new(mem.clone());
        let a_store: Arc<dyn ObjectStore> = net.clone();
        let fs = SimFs::new();
        let mut cfg = host_cfg(&fs, "vm", "a");
        cfg.clock = clock.clone();
        cfg.lease_ttl = Duration::from_secs(60);
        let a = Volume::open(cfg.clone(), a_store).await.unwrap();
        a.write(0, &pattern(1, 4096), false).await.unwrap();
        a.drain().await.unwrap();
        net.set(Mode::Partitioned, "");
        // 60 s TTL: deadline 60 - 6 - 2 = 52 s after the last renewal began.
        clock.advance(51_000);
        a.write(0, &pattern(2, 4096), false).await.unwrap();
        a.flush().await.unwrap();
        clock.advance(2_000);
        let e = a.write(4096, &pattern(3, 4096), false).await.unwrap_err();
        assert!(matches!(e, VolumeError::LeaseExpired(_)), "{e}");
        assert_eq!(e.errno(), libc::EIO);
        assert!(matches!(a.flush().await, Err(VolumeError::LeaseExpired(_))));
        assert!(a.stats().lease_expired);
        assert_eq!(a.stats().lease_expirations, 1);
        // Reads still work (from the cache).
        assert!(read4k(&a, 0).await == pattern(2, 4096));
        // The store comes back before anyone took over: a renewal resumes writes.
        net.set(Mode::Normal, "");
        a.drain().await.unwrap();
        assert!(!a.stats().lease_expired);
        a.write(4096, &pattern(3, 4096), false).await.unwrap();
        a.drain().await.unwrap();
        // Cut off again with a write acknowledged but not uploaded; another host
        // takes over once the lease is stale.
        net.set(Mode::Partitioned, "");
        a.write(0, &pattern(4, 4096), false).await.unwrap();
        clock.advance(53_000);
        assert!(a.write(0, &pattern(5, 4096), false).await.is_err());
        let mut b_cfg = host_cfg(&fs, "vm", "b");
        b_cfg.clock = clock.clone();
        b_cfg.lease_ttl = Duration::from_secs(60);
        let e = Volume::open(b_cfg.clone(), mem.clone()).await.unwrap_err();
        assert!(matches!(e, VolumeError::LeaseHeld { .. }), "{e}");
        clock.advance(10_000);
        let b = Volume::open(b_cfg, mem.clone()).await.unwrap();
        assert!(read4k(&b, 4096).await == pattern(3, 4096));
        assert!(
            read4k(&b, 0).await == pattern(2, 4096),
            "B must see what A drained"
        );
        // A's network returns: its renewal finds B's lease; A is fenced for good.
        net.set(Mode::Normal, "");
        assert!(matches!(a.drain().await, Err(VolumeError::Fenced(_))));
        assert!(a.stats().fenced);
        b.close().await.unwrap();
        a.abandon().await;
    });
}

/// Host clocks can be set arbitrarily wrong: staleness is judged on the store's
/// clock (the lease's Last-Modified against a freshly written object's).
#[test]
fn a_host_whose_clock_is_an_hour_ahead_cannot_take_a_live_lease() {
    smol::block_on(async {
        let (clock, mem) = clocked_store();
        let fs = SimFs::new();
        let mut a_cfg = host_cfg(&fs, "vm", "a");
        a_cfg.clock = clock.clone();
        let a = Volume::open(a_cfg, mem.clone()).await.unwrap();
        a.write(0, &pattern(1, 4096), false).await.unwrap();
        a.drain().await.unwrap();
        let mut b_cfg = host_cfg(&fs, "vm", "b");
        b_cfg.clock = Arc::new(SkewedClock {
            base: clock.clone(),
            offset_ms: 3_600_000,
            rate_permille: 0,
        });
        let e = Volume::open(b_cfg, mem.clone()).await.unwrap_err();
        assert!(
            matches!(&e, VolumeError::LeaseHeld { owner, .. } if owner.contains("id-a") && owner.contains('a')),
            "{e}"
        );
        a.close().await.unwrap();
    });
}

/// A store whose one-time check before the first conditional write (S3's
/// conditional-write probe) costs `cost_ms` on the test clock, run by `put_if` or
/// ahead of it by `prepare`, as `S3Store` does.
struct SlowFirstCheck {
    inner: Arc<dyn ObjectStore>,
    clock: Arc<ManualClock>,
    cost_ms: u64,
    checked: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl ObjectStore for SlowFirstCheck {
    async fn put(&self, key: &str, data: bytes::Bytes) -> Result<String, StoreError> {
        self.inner.put(key, data).await
    }
    async fn put_if(
        &self,
        key: &str,
        data: bytes::Bytes,
        cond: PutCondition,
    ) -> Result<String, StoreError> {
        self.prepare().await?;
        self.inner.put_if(key, data, cond).await
    }
    async fn prepare(&self) -> Result<(), StoreError> {
        if !self.checked.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.clock.advance(self.cost_ms);
        }
        Ok(())
    }
    async fn get(&self, key: &str) -> Result<bytes::Bytes, StoreError> {
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, StoreError> {
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
        "slow-first-check".into()
    }
}

/// The store's one-time check (S3's conditional-write probe, 30 s under emulation)
/// is not part of the first lease window: a daemon whose first conditional write of
/// the run is a volume's lease used to come up self-fenced (lease_expired) when the
/// probe took longer than the window (seen in the takeover VM phase, 12 s TTL).
#[test]
fn the_stores_first_check_does_not_count_against_the_lease() {
    smol::block_on(async {
        let (clock, mem) = clocked_store();
        let fs = SimFs::new();
        let mut cfg = host_cfg(&fs, "vm", "a");
        cfg.clock = clock.clone();
        cfg.lease_ttl = Duration::from_secs(60);
        let a = Volume::open(cfg.clone(), mem.clone()).await.unwrap();
        a.write(0, &pattern(1, 4096), false).await.unwrap();
        a.close().await.unwrap();
        // The restarted daemon's store has not run its check yet; the volume exists,
        // so the lease is its first conditional write. 55 s of checks > the 52 s
        // a 60 s lease is trusted for.
        let net = FaultStore::new(Arc::new(SlowFirstCheck {
            inner: mem.clone(),
            clock: clock.clone(),
            cost_ms: 55_000,
            checked: false.into(),
        }));
        let store: Arc<dyn ObjectStore> = net.clone();
        let a = Volume::open(cfg, store).await.unwrap();
        // No renewal can land now: only the window the open started counts.
        net.set(Mode::Partitioned, "");
        a.write(4096, &pattern(2, 4096), false)
            .await
            .expect("a write right after open");
        a.flush().await.expect("a FLUSH right after open");
        assert!(!a.stats().lease_expired);
        a.abandon().await;
    });
}

/// Issue 14 item 5: dirty data of a cache whose volume was written elsewhere since is
/// set aside, never truncated (the old code discarded it with a warning).
#[test]
fn dirty_data_of_a_volume_written_elsewhere_is_set_aside() {
    smol::block_on(async {
        let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let fs = SimFs::new();
        let a_cfg = host_cfg(&fs, "vm", "a");
        let a = Volume::open(a_cfg.clone(), mem.clone()).await.unwrap();
        a.write(0, &pattern(1, 4096), false).await.unwrap();
        a.drain().await.unwrap();
        // Acknowledged, never uploaded; then A dies.
        a.write(0, &pattern(2, 4096), false).await.unwrap();
        a.write(20480, &pattern(3, 8192), false).await.unwrap();
        a.flush().await.unwrap();
        a.abandon().await;
        let mut b_cfg = host_cfg(&fs, "vm", "b");
        b_cfg.takeover = true;
        let b = Volume::open(b_cfg, mem.clone()).await.unwrap();
        b.write(0, &pattern(4, 4096), false).await.unwrap();
        b.drain().await.unwrap();
        b.close().await.unwrap();
        // A comes back and takes the volume again.
        let mut a2 = a_cfg.clone();
        a2.takeover = true;
        let a = Volume::open(a2, mem.clone()).await.unwrap();
        assert!(
            read4k(&a, 0).await == pattern(4, 4096),
            "A served its old data over B's"
        );
        let aside = a.stats().diverged.expect("dirty data was not set aside");
        assert!(
            aside.starts_with("/sim/a/.diverged/vm/"),
            "{}",
            aside.display()
        );
        let data = fs.open(&aside.join("data"), false).unwrap();
        let mut got = vec![0u8; 8192];
        data.read_at(&mut got, 20480).unwrap();
        assert!(got == pattern(3, 8192), "set-aside data differs");
        data.read_at(&mut got[..4096], 0).unwrap();
        assert!(got[..4096] == pattern(2, 4096));
        let ranges = read_file(&fs, &aside.join("dirty-ranges.txt"));
        assert_eq!(ranges, "0 4096\n20480 8192\n");
        let info = read_file(&fs, &aside.join("info.json"));
        assert!(info.contains("\"dirty_bytes\": 12288"), "{info}");
        assert!(info.contains("written-elsewhere"), "{info}");
        a.close().await.unwrap();
    });
}

/// Removing the cache of a fenced volume (export delete without purge) sets its
/// dirty data aside instead of deleting it.
#[test]
fn purging_the_cache_of_a_fenced_volume_sets_dirty_data_aside() {
    smol::block_on(async {
        let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let fs = SimFs::new();
        let a_cfg = host_cfg(&fs, "vm", "a");
        let a = Volume::open(a_cfg.clone(), mem.clone()).await.unwrap();
        a.write(8192, &pattern(5, 4096), false).await.unwrap();
        a.flush().await.unwrap();
        let mut b_cfg = host_cfg(&fs, "vm", "b");
        b_cfg.takeover = true;
        let b = Volume::open(b_cfg, mem.clone()).await.unwrap();
        assert!(matches!(a.drain().await, Err(VolumeError::Fenced(_))));
        let _ = a.close().await;
        Volume::purge_cache(&a_cfg).unwrap();
        let aside: Vec<_> = fs
            .list_dir(std::path::Path::new("/sim/a/.diverged/vm"))
            .unwrap();
        assert!(aside.is_empty(), "SimFs lists files only: {aside:?}");
        assert!(fs.exists(std::path::Path::new("/sim/a/.diverged/vm")));
        assert!(!fs.exists(&a_cfg.cache_dir.join("data")));
        b.close().await.unwrap();
    });
}

fn read_file(fs: &SimFs, p: &std::path::Path) -> String {
    let f = fs.open(p, false).unwrap();
    let mut b = vec![0u8; f.len().unwrap() as usize];
    f.read_at(&mut b, 0).unwrap();
    String::from_utf8(b).unwrap()
}

/// Volumes made with the production default `seed = 0` get distinct random uuids,
/// so a volume purged from the store and made again under its name never takes
/// the old local cache for its own. Before, every such volume got the uuid
/// 9e3779b97f4a7c15 (the seed's mixing constant): the re-made volume replayed the
/// old cache and served (and would upload) the purged data. This failed there.
#[test]
fn a_purged_and_recreated_volume_never_reads_the_old_cache() {
    smol::block_on(async {
        let store: Arc<dyn ObjectStore> = Arc::new(glidefs::store::MemStore::new());
        let fs = SimFs::new();
        let mut cfg = sim_cfg(&fs, "again", 1 << 20);
        cfg.seed = 0;
        let v = open(&cfg, &store).await;
        v.write(0, &pattern(1, 1 << 20), false).await.unwrap();
        v.drain().await.unwrap();
        v.close().await.unwrap();
        drop(v);
        let meta = |s: Arc<dyn ObjectStore>| async move {
            let m: serde_json::Value =
                serde_json::from_slice(&s.get("volumes/again/meta").await.unwrap()).unwrap();
            m["uuid"].as_str().unwrap().to_owned()
        };
        let first = meta(store.clone()).await;
        // Purged from the store (by another host, say); this host's cache stays.
        Volume::purge(&store, "again", cfg.lease_rules(), true, None)
            .await
            .unwrap();
        let v = open(&cfg, &store).await;
        assert_ne!(meta(store.clone()).await, first, "the same uuid again");
        assert!(
            read_all(&v).await.iter().all(|&b| b == 0),
            "the re-made volume shows the purged volume's data"
        );
        v.close().await.unwrap();
    });
}

/// Creating a volume writes its meta and its lease once each: the first lease has no
/// older epoch to fence, so it is not written a second time with a fence (one store
/// round trip per created volume). A later open (here a takeover) still writes the
/// lease again with its fence.
#[test]
fn a_new_volume_writes_its_lease_once_and_later_opens_still_fence() {
    smol::block_on(async {
        let mem = Arc::new(MemStore::new());
        let store: Arc<dyn ObjectStore> = mem.clone();
        let fs = SimFs::new();
        let a = Volume::open(host_cfg(&fs, "vm", "a"), store.clone())
            .await
            .unwrap();
        assert_eq!(mem.put_count(), 2, "a new volume: its meta and its lease");
        a.write(0, &pattern(1, 4096), false).await.unwrap();
        a.drain().await.unwrap();
        let before = mem.put_count();
        let mut b_cfg = host_cfg(&fs, "vm", "b");
        b_cfg.takeover = true;
        let b = Volume::open(b_cfg, store.clone()).await.unwrap();
        assert_eq!(
            mem.put_count() - before,
            2,
            "a takeover: the lease acquired, then written again with its fence"
        );
        let lease: serde_json::Value =
            serde_json::from_slice(&store.get("volumes/vm/lease").await.unwrap()).unwrap();
        assert_eq!(lease["epoch"], 2);
        assert_eq!(lease["fences"].as_array().map(Vec::len), Some(1), "{lease}");
        assert!(read4k(&b, 0).await == pattern(1, 4096));
        b.close().await.unwrap();
        a.abandon().await;
    });
}
