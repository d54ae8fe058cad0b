//! The volume model test shared by tests/volume_model.rs and tests/volume_s3.rs:
//! op strategies, the in-memory model and one case runner.

use super::*;
use glidefs::store::ObjectStore;
use glidefs::volume::{FlushMode, SimFs, Volume, VolumeConfig};
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;

const SIZE: u64 = 1 << 20;
const SECTORS_512: u32 = (SIZE / 512) as u32;
const SS: usize = 4096;

#[derive(Debug, Clone)]
pub enum Op {
    Write {
        at: u32,
        len: u32,
        fua: bool,
    },
    Read {
        at: u32,
        len: u32,
    },
    Discard {
        at: u32,
        len: u32,
    },
    Flush,
    Drain,
    Wait,
    Crash,
    PowerLoss {
        writeback: u64,
    },
    ColdWake,
    Snapshot,
    DeleteSnapshot,
    /// Fork the newest kept snapshot, write into the fork, close it.
    Fork {
        at: u32,
        len: u32,
    },
    /// Purge the volume under test while it has forks (its snapshots go with it);
    /// every fork still reads its image, and the newest fork becomes the volume
    /// under test (later forks are forks of forks).
    DeleteParent,
}

/// (offset in 512-byte units, length in 512-byte units): half 4 KiB aligned.
pub fn range() -> impl Strategy<Value = (u32, u32)> {
    prop_oneof![
        (0..SECTORS_512 / 8, 1u32..=40).prop_map(|(a, l)| (a * 8, l * 8)),
        (0..SECTORS_512, 1u32..=300),
    ]
    .prop_map(|(a, l)| (a, l.min(SECTORS_512 - a)))
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (range(), any::<bool>()).prop_map(|((at, len), f)| Op::Write { at, len, fua: f && len % 3 == 0 }),
        4 => range().prop_map(|(at, len)| Op::Read { at, len }),
        2 => range().prop_map(|(at, len)| Op::Discard { at, len }),
        2 => Just(Op::Flush),
        1 => Just(Op::Drain),
        1 => Just(Op::Wait),
        1 => Just(Op::Crash),
        1 => prop_oneof![Just(0u64), 1u64..u64::MAX].prop_map(|writeback| Op::PowerLoss { writeback }),
        1 => Just(Op::ColdWake),
        1 => Just(Op::Snapshot),
        1 => Just(Op::DeleteSnapshot),
        1 => range().prop_map(|(at, len)| Op::Fork { at, len }),
        1 => Just(Op::DeleteParent),
    ]
}

#[derive(Debug, Clone)]
pub struct Params {
    pub fast_flusher: bool,
    pub small_dirty_limit: bool,
    pub compress: bool,
    pub store_mode: bool,
    /// `compact_below_live_pct`: off, the default, or compacting almost always.
    pub compact_pct: u8,
    /// Dead segments wait out a grace period longer than the case (never deleted)
    /// instead of being deleted at once.
    pub gc_grace: bool,
    /// Client-side encryption on (the volume and its forks).
    pub encrypted: bool,
}

pub fn params() -> impl Strategy<Value = Params> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop_oneof![Just(0u8), Just(70u8), Just(99u8)],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(a, b, c, d, e, f, g)| Params {
            fast_flusher: a,
            small_dirty_limit: b,
            compress: c,
            store_mode: d,
            compact_pct: e,
            gc_grace: f,
            encrypted: g,
        })
}

/// The model: current bytes, and per 4 KiB sector every value a power loss may
/// leave (the value at the last flush, then each later write).
struct Model {
    cur: Vec<u8>,
    cands: Vec<Vec<Vec<u8>>>,
}

impl Model {
    fn new() -> Self {
        Model::durable_image(vec![0; SIZE as usize])
    }
    /// A volume whose content `img` is all durable.
    fn durable_image(img: Vec<u8>) -> Self {
        Model {
            cands: img.chunks(SS).map(|c| vec![c.to_vec()]).collect(),
            cur: img,
        }
    }
    fn write(&mut self, off: usize, data: &[u8]) {
        self.cur[off..off + data.len()].copy_from_slice(data);
        for s in off / SS..(off + data.len()).div_ceil(SS) {
            let v = self.cur[s * SS..(s + 1) * SS].to_vec();
            self.cands[s].push(v);
        }
    }
    fn durable(&mut self) {
        for (s, c) in self.cands.iter_mut().enumerate() {
            if c.len() > 1 || c[0] != self.cur[s * SS..(s + 1) * SS] {
                *c = vec![self.cur[s * SS..(s + 1) * SS].to_vec()];
            }
        }
    }
}

/// Volume `name` (`size` 0: a fork, its snapshot's size) with the case's settings.
fn config(fs: &SimFs, p: &Params, name: &str, size: u64) -> VolumeConfig {
    let mut cfg = sim_cfg(fs, name, size);
    if p.fast_flusher {
        cfg.flush_interval = Duration::from_millis(1);
    }
    if p.small_dirty_limit {
        cfg.dirty_limit_bytes = 192 << 10;
    }
    cfg.compress = p.compress;
    cfg.compact_below_live_pct = p.compact_pct;
    if p.compact_pct > 90 {
        // Small segments: more of them, and more that overwrites leave mostly dead.
        cfg.max_segment_bytes = 64 << 10;
        // Every fragmented block is cold at once: merges as often as the budget
        // lets them.
        cfg.merge_cold_after = Duration::ZERO;
    }
    if p.gc_grace {
        cfg.gc_grace = Duration::from_secs(3600);
    }
    if p.store_mode {
        cfg.flush_mode = FlushMode::Store;
    }
    if p.encrypted {
        cfg.encryption = Some(super::master_keys(1));
    }
    cfg
}

pub fn run_case(store: Arc<dyn ObjectStore>, p: &Params, ops: &[Op]) {
    smol::block_on(async {
        let fs = SimFs::new();
        let mut cfg = config(&fs, p, "model", SIZE);
        let masters = p.encrypted.then(|| super::master_keys(1));
        let mut v = open(&cfg, &store).await;
        let mut m = Model::new();
        // Snapshots taken and not deleted, with the image each must keep.
        let mut snaps: Vec<(String, Vec<u8>)> = Vec::new();
        // Forks made, with the image each must show (its snapshot plus its write).
        let mut forks: Vec<(VolumeConfig, Vec<u8>, String)> = Vec::new();
        // Forks read their base through one shared cache, smaller than the volume
        // (evictions happen).
        let shared = glidefs::volume::shared_cache::SharedCache::new(SIZE / 2);
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Write { at, len, fua } => {
                    let (off, n) = (*at as usize * 512, *len as usize * 512);
                    let data = pattern(i as u64 + 1, n);
                    v.write(off as u64, &data, *fua).await.unwrap();
                    m.write(off, &data);
                    if *fua {
                        m.durable();
                    }
                }
                Op::Read { at, len } => {
                    let (off, n) = (*at as usize * 512, *len as usize * 512);
                    let mut buf = vec![0u8; n];
                    v.read(off as u64, &mut buf).await.unwrap();
                    assert!(
                        buf == m.cur[off..off + n],
                        "op {i}: read {off}+{n} differs from the model"
                    );
                }
                Op::Discard { at, len } => {
                    let (off, n) = (*at as usize * 512, *len as usize * 512);
                    v.discard(off as u64, n as u64).await.unwrap();
                    m.write(off, &vec![0u8; n]);
                }
                Op::Flush => {
                    v.flush().await.unwrap();
                    m.durable();
                }
                Op::Drain => {
                    v.drain().await.unwrap();
                    m.durable();
                }
                Op::Wait => {
                    smol::Timer::after(Duration::from_millis(3)).await;
                }
                Op::Crash => {
                    v.abandon().await;
                    drop(v);
                    v = open(&cfg, &store).await;
                    assert!(
                        read_all(&v).await == m.cur,
                        "op {i}: after crash the volume differs from the model"
                    );
                }
                Op::PowerLoss { writeback } => {
                    v.abandon().await;
                    drop(v);
                    fs.power_loss_with_writeback(*writeback);
                    v = open(&cfg, &store).await;
                    let got = read_all(&v).await;
                    for s in 0..SIZE as usize / SS {
                        let g = &got[s * SS..(s + 1) * SS];
                        assert!(
                            m.cands[s].iter().any(|c| c[..] == *g),
                            "op {i}: after power loss sector {s} is neither flushed nor a later value"
                        );
                    }
                    m.cur = got;
                    m.durable();
                }
                Op::ColdWake => {
                    v.drain().await.unwrap();
                    v.close().await.unwrap();
                    drop(v);
                    Volume::purge_cache(&cfg).unwrap();
                    v = open(&cfg, &store).await;
                    assert!(
                        read_all(&v).await == m.cur,
                        "op {i}: after cold wake the volume differs from the model"
                    );
                    m.durable();
                }
                Op::Snapshot => {
                    let name = format!("s{i}");
                    v.snapshot(&name).await.unwrap();
                    m.durable();
                    snaps.push((name, m.cur.clone()));
                }
                Op::DeleteSnapshot => {
                    // A snapshot with forks stays (InUse); the next one is tried.
                    let free = snaps
                        .iter()
                        .position(|(n, _)| !forks.iter().any(|(_, _, s)| s == n));
                    if let Some(k) = free {
                        let (name, _) = snaps.remove(k);
                        v.delete_snapshot(&name).await.unwrap();
                    }
                }
                Op::Fork { at, len } => {
                    if let Some((snap, img)) = snaps.last() {
                        let child = format!("f{i}");
                        Volume::fork(&store, &cfg.name, snap, &child, 0, masters.as_deref())
                            .await
                            .unwrap();
                        let mut fcfg = config(&fs, p, &child, 0);
                        fcfg.shared_cache = Some(shared.clone());
                        let f = open(&fcfg, &store).await;
                        assert!(read_all(&f).await == *img, "op {i}: fork of {snap}");
                        let (off, n) = (*at as usize * 512, *len as usize * 512);
                        let data = pattern(i as u64 + 7, n);
                        f.write(off as u64, &data, false).await.unwrap();
                        let mut want = img.clone();
                        want[off..off + n].copy_from_slice(&data);
                        f.drain().await.unwrap();
                        f.close().await.unwrap();
                        forks.push((fcfg, want, snap.clone()));
                    }
                }
                Op::DeleteParent => {
                    let Some((fcfg, img, _)) = forks.pop() else {
                        continue;
                    };
                    v.drain().await.unwrap();
                    v.close().await.unwrap();
                    drop(v);
                    Volume::purge(
                        &store,
                        &cfg.name,
                        cfg.lease_rules(),
                        false,
                        masters.as_deref(),
                    )
                    .await
                    .unwrap();
                    Volume::purge_cache(&cfg).unwrap();
                    snaps.clear();
                    // Every fork, this one too, reads its image without its parent.
                    for (c, want, snap) in
                        forks
                            .iter()
                            .chain([&(fcfg.clone(), img.clone(), String::new())])
                    {
                        let f = open(c, &store).await;
                        assert!(
                            read_all(&f).await == *want,
                            "op {i}: fork {} of {snap} after its ancestor {} was purged",
                            c.name,
                            cfg.name
                        );
                        f.close().await.unwrap();
                    }
                    // The newest fork is the volume under test from now on.
                    cfg = fcfg;
                    v = open(&cfg, &store).await;
                    m = Model::durable_image(img);
                }
            }
        }
        // Every snapshot kept its image through compaction and garbage collection.
        for (name, img) in &snaps {
            assert!(
                snapshot_image(&store, &cfg.name, name, masters.as_deref()).await == *img,
                "snapshot {name} differs from the volume when it was taken"
            );
        }
        let listed: Vec<String> = v
            .snapshots()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        let mut want: Vec<String> = snaps.iter().map(|(n, _)| n.clone()).collect();
        want.sort();
        assert_eq!(listed, want, "listed snapshots");
        // Every fork, woken cold after its parent's later life (overwrites,
        // compaction, garbage collection), shows its snapshot plus its own write.
        for (fcfg, want, snap) in &forks {
            Volume::purge_cache(fcfg).unwrap();
            let f = open(fcfg, &store).await;
            assert!(
                read_all(&f).await == *want,
                "fork {} of {snap} after a cold wake",
                fcfg.name
            );
            f.close().await.unwrap();
        }
        // Final: everything drains and a cold wake equals the model.
        let v = drain_and_cold_open(v, &cfg, &store).await;
        assert!(
            read_all(&v).await == m.cur,
            "final cold wake differs from the model"
        );
        v.close().await.unwrap();
    });
}
