//! Helpers shared by the volume engine tests (tests/volume_*.rs).
#![allow(dead_code)]

pub mod clocked;
pub mod fault;
pub mod model;
pub mod multihost;

use glidefs::store::ObjectStore;
use glidefs::volume::crypto::MasterKeys;
use glidefs::volume::keyring::Keyring;
use glidefs::volume::keys::VolumeKeys;
use glidefs::volume::{manifest, segment, FileIo, SimFs, SnapshotInfo, Volume, VolumeConfig};
use glidefs::BLOCK_SIZE;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Property-test cases: the test's own variable `own` if set, else `PROPTEST_CASES`,
/// else `default` (a value that does not parse also gives `default`).
pub fn proptest_cases(own: Option<&str>, default: u32) -> u32 {
    own.map_or_else(
        || std::env::var("PROPTEST_CASES"),
        |v| std::env::var(v).or_else(|_| std::env::var("PROPTEST_CASES")),
    )
    .ok()
    .and_then(|s| s.parse().ok())
    .unwrap_or(default)
}

/// A config on the simulated file system with fast retries and no timer flushes.
pub fn sim_cfg(fs: &SimFs, name: &str, size: u64) -> VolumeConfig {
    let mut c = VolumeConfig::new(name, size, PathBuf::from(format!("/sim/{name}")));
    c.fileio = Arc::new(fs.clone());
    c.flush_interval = Duration::from_secs(3600);
    c.retry_base = Duration::from_millis(2);
    c.retry_max = Duration::from_millis(20);
    c.seed = 7;
    c.max_segment_bytes = 256 << 10;
    c.checkpoint_every = 2;
    c.journal_compact_bytes = 8 << 10;
    // Tests that count objects expect garbage collection at once.
    c.gc_grace = Duration::ZERO;
    c
}

/// Master keys whose current key is 32 bytes of `b` (no old keys).
pub fn master_keys(b: u8) -> Arc<glidefs::volume::crypto::MasterKeys> {
    Arc::new(glidefs::volume::crypto::MasterKeys {
        current: glidefs::volume::crypto::MasterKey::from_bytes(&[b; 32]),
        old: Vec::new(),
    })
}

/// Deterministic, distinct bytes for (seed, len).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub async fn open(cfg: &VolumeConfig, store: &Arc<dyn ObjectStore>) -> Arc<Volume> {
    Volume::open(cfg.clone(), store.clone()).await.unwrap()
}

/// Cold wake: drain `v` into the store, close it, wipe its cache and open it again,
/// so that everything it reads comes from the store.
pub async fn drain_and_cold_open(
    v: Arc<Volume>,
    cfg: &VolumeConfig,
    store: &Arc<dyn ObjectStore>,
) -> Arc<Volume> {
    v.drain().await.unwrap();
    v.close().await.unwrap();
    drop(v);
    Volume::purge_cache(cfg).unwrap();
    open(cfg, store).await
}

/// Power cut: `v` stops as a killed process would (nothing synced), the simulated
/// disk keeps only what was synced, and the volume is opened again.
pub async fn power_cut_and_reopen(
    v: Arc<Volume>,
    fs: &SimFs,
    cfg: &VolumeConfig,
    store: &Arc<dyn ObjectStore>,
) -> Arc<Volume> {
    v.abandon().await;
    drop(v);
    fs.power_loss();
    open(cfg, store).await
}

pub async fn read_all(v: &Volume) -> Vec<u8> {
    let mut buf = vec![0u8; v.size_bytes() as usize];
    v.read(0, &mut buf).await.unwrap();
    buf
}

/// The newest journal file of a simulated cache dir.
pub fn newest_journal(fs: &SimFs, dir: &Path) -> PathBuf {
    let mut names: Vec<String> = fs
        .list_dir(dir)
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("journal."))
        .collect();
    names.sort();
    dir.join(names.last().expect("a journal"))
}

/// The image snapshot `snap` of volume `vol` holds, read straight from its
/// objects: `snap/<name>`, the manifest it pins, the segments that manifest names
/// (a fork's: its own or its ancestors', through its lineage; sealed ones opened
/// with the data key of the volume that wrote them, which `masters` unwrap from
/// `vol`'s meta).
pub async fn snapshot_image(
    store: &Arc<dyn ObjectStore>,
    vol: &str,
    snap: &str,
    masters: Option<&MasterKeys>,
) -> Vec<u8> {
    let keys = VolumeKeys::new(vol);
    let meta: manifest::VolumeMeta =
        serde_json::from_slice(&store.get(&keys.meta()).await.unwrap()).unwrap();
    let uuid = meta.uuid_u64().unwrap();
    let ring = Keyring::unwrap(vol, uuid, meta.encrypted, meta.keys.as_ref(), masters).unwrap();
    let info: SnapshotInfo =
        serde_json::from_slice(&store.get(&keys.snapshot(snap)).await.unwrap()).unwrap();
    let (_, map) = manifest::decode(
        &store.get(&keys.manifest(info.seq)).await.unwrap(),
        ring.own(),
    )
    .unwrap();
    let lineage = glidefs::volume::lineage::Lineage::new(&meta.lineage).unwrap();
    let mut img = vec![0u8; info.size_bytes as usize];
    for (b, pieces) in &map.map {
        for p in pieces {
            let l = &p.loc;
            let seg = lineage.segment_key(&keys, l.seq);
            let bytes = store
                .get_range(&seg, l.off..l.off + u64::from(l.len))
                .await
                .unwrap_or_else(|e| panic!("{seg} of block {b}: {e}"));
            let (owner, key) = match lineage.owner_uuid(l.seq) {
                Some(u) => (u, ring.ancestor(u)),
                None => (uuid, ring.own()),
            };
            let data =
                segment::decode_payload(l, &bytes, segment::Opener::new(key, owner, *b)).unwrap();
            for s in 0..32usize {
                if p.live & (1 << s) != 0 {
                    let src = (s - usize::from(l.first)) * 4096;
                    let dst = *b as usize * BLOCK_SIZE + s * 4096;
                    img[dst..dst + 4096].copy_from_slice(&data[src..src + 4096]);
                }
            }
        }
    }
    img
}
