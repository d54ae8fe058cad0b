//! The multi-host model (tests/volume_multihost.rs): strategies, the model and the
//! case runner. See that file for what is checked.
#![allow(clippy::needless_range_loop)] // sectors index several parallel arrays

use super::fault::{FaultStore, Mode};
use super::*;
use glidefs::clock::{ManualClock, SkewedClock};
use glidefs::store::ObjectStore;
use glidefs::volume::{SimFs, Volume, VolumeConfig, VolumeError};
use proptest::prelude::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

const SIZE: u64 = 1 << 20;
const SECTORS: usize = (SIZE / 4096) as usize;
const TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub enum Op {
    Write { host: usize, sector: usize },
    Read { host: usize, sector: usize },
    Drain { host: usize },
    Open { host: usize, force: bool },
    Kill { host: usize },
    Close { host: usize },
    Net { host: usize, mode: u8 },
    Release { host: usize },
    Advance { ms: u64 },
}

#[derive(Debug, Clone)]
pub struct HostSpec {
    pub offset_ms: i64,
    pub rate_permille: i64,
}

pub fn hosts() -> impl Strategy<Value = Vec<HostSpec>> {
    prop::collection::vec(
        (-3_600_000i64..3_600_000, -5i64..=5).prop_map(|(offset_ms, rate_permille)| HostSpec {
            offset_ms,
            rate_permille,
        }),
        2..=3,
    )
}

/// One random op. `Net` chooses among network modes 0..=5 (see `Op::Net` in
/// [`run_case`]).
pub fn op() -> impl Strategy<Value = Op> {
    let h = 0usize..3;
    let modes = 0u8..6;
    prop_oneof![
        10 => (h.clone(), 0..SECTORS).prop_map(|(host, sector)| Op::Write { host, sector }),
        4 => (h.clone(), 0..SECTORS).prop_map(|(host, sector)| Op::Read { host, sector }),
        4 => h.clone().prop_map(|host| Op::Drain { host }),
        4 => (h.clone(), prop::bool::weighted(0.3)).prop_map(|(host, force)| Op::Open { host, force }),
        1 => h.clone().prop_map(|host| Op::Kill { host }),
        1 => h.clone().prop_map(|host| Op::Close { host }),
        3 => (h.clone(), modes).prop_map(|(host, mode)| Op::Net { host, mode }),
        2 => h.clone().prop_map(|host| Op::Release { host }),
        3 => (0u64..45_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// A takeover while the old owner's segment PUT is in flight, the PUT landing after
/// it, and an open that must ignore it (a chain random ops rarely assemble): host
/// `a` uploads through a network that holds its segment PUTs, is cut off, `b` takes
/// the volume by force, the held PUT lands, `b` maybe writes and drains, and `a`
/// opens again.
fn late_landing() -> impl Strategy<Value = Vec<Op>> {
    (0usize..3, 1usize..3, 0..SECTORS, 0..SECTORS, any::<bool>()).prop_map(
        |(a, d, s, s2, b_writes)| {
            let b = (a + d) % 3;
            let mut v = vec![
                Op::Kill { host: b },
                Op::Open {
                    host: a,
                    force: true,
                },
                Op::Net { host: a, mode: 2 },
                Op::Write { host: a, sector: s },
                Op::Drain { host: a },
                Op::Net { host: a, mode: 1 },
                Op::Open {
                    host: b,
                    force: true,
                },
                Op::Release { host: a },
            ];
            if b_writes {
                v.extend([
                    Op::Write {
                        host: b,
                        sector: s2,
                    },
                    Op::Drain { host: b },
                ]);
            }
            v.extend([
                Op::Kill { host: b },
                Op::Kill { host: a },
                Op::Net { host: a, mode: 0 },
                Op::Open {
                    host: a,
                    force: true,
                },
                Op::Read { host: a, sector: s },
            ]);
            v
        },
    )
}

/// A case: random single ops, with now and then a [`late_landing`] chain among them.
pub fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            12 => op().prop_map(|o| vec![o]),
            1 => late_landing(),
        ],
        1..40,
    )
    .prop_map(|chunks| chunks.into_iter().flatten().collect())
}

struct Host {
    cfg: VolumeConfig,
    net: Arc<FaultStore>,
    store: Arc<dyn ObjectStore>,
    vol: Option<Arc<Volume>>,
    /// Generation of its last successful open.
    gen: u64,
    /// What it would read: per sector, a value id (0 = zeros).
    view: Vec<u64>,
    /// Sectors acknowledged since its last successful drain.
    undrained: HashSet<usize>,
    mode: Mode,
}

fn data_of(v: u64) -> Vec<u8> {
    if v == 0 {
        vec![0u8; 4096]
    } else {
        pattern(v, 4096)
    }
}

fn value_in(buf: &[u8], cands: &HashSet<u64>) -> Option<u64> {
    cands.iter().copied().find(|&v| data_of(v) == buf)
}

/// The stored lease's (owner, epoch), read past every host's faulty network.
async fn stored_lease(store: &dyn ObjectStore) -> Option<(String, u64)> {
    let raw = store.get("volumes/vm/lease").await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    Some((v["owner"].as_str()?.to_string(), v["epoch"].as_u64()?))
}

pub fn run_case(
    store: Arc<dyn ObjectStore>,
    clock: Arc<ManualClock>,
    specs: &[HostSpec],
    ops: &[Op],
) {
    if let Ok(path) = std::env::var("GLIDEFS_TEST_LOG") {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_writer(std::sync::Mutex::new(f))
            .with_ansi(false)
            .try_init();
    }
    smol::block_on(async {
        let fs = SimFs::new();
        let mut hosts: Vec<Host> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let net = FaultStore::new(store.clone());
                let mut cfg = sim_cfg(&fs, "vm", SIZE);
                cfg.cache_dir = format!("/sim/h{i}/vm").into();
                cfg.owner = format!("host-id-{i}");
                cfg.host_label = format!("h{i}");
                cfg.lease_ttl = TTL;
                // Failed uploads (held PUTs, partitions) retry in the background for
                // the rest of the case: not so often that they dominate its cost.
                cfg.retry_max = Duration::from_millis(100);
                cfg.checkpoint_every = 2;
                cfg.clock = Arc::new(SkewedClock {
                    base: clock.clone(),
                    offset_ms: s.offset_ms,
                    rate_permille: s.rate_permille,
                });
                Host {
                    cfg,
                    store: net.clone(),
                    net,
                    vol: None,
                    gen: 0,
                    view: vec![0; SECTORS],
                    undrained: HashSet::new(),
                    mode: Mode::Normal,
                }
            })
            .collect();
        // The model: generation of the newest successful open, and per sector the
        // values a new owner may find.
        let mut gen = 0u64;
        let mut last_opener: Option<usize> = None;
        let mut possible: Vec<HashSet<u64>> = vec![[0u64].into_iter().collect(); SECTORS];
        // Watchdog: a hung operation is a failure, reported with the operation.
        let progress = Arc::new(std::sync::Mutex::new((
            0usize,
            String::new(),
            std::time::Instant::now(),
        )));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Stops the watchdog however the case ends (a failing case panics).
        struct Stop(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Stop {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        let _stop = Stop(done.clone());
        {
            let (progress, done) = (progress.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(500));
                    let p = progress.lock().unwrap();
                    if p.2.elapsed() > Duration::from_secs(15) {
                        // Output capture would swallow a message: write it out.
                        let msg = format!("multihost: op {} hung: {}\n", p.0, p.1);
                        let _ = std::fs::write(
                            std::env::temp_dir().join("glidefs-multihost-hung.txt"),
                            &msg,
                        );
                        let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
                        std::process::abort();
                    }
                }
            });
        }
        // GLIDEFS_MH_TRACE=1: print each op and the model's generation (debugging).
        let trace = std::env::var_os("GLIDEFS_MH_TRACE").is_some();
        // After the case's ops, a final check: every host reconnected and killed, then
        // a host other than the last opener (so it reads the store, not its own cache)
        // takes the volume by force and every sector must be a value the model allows.
        let mut queue: Vec<Op> = ops.to_vec();
        let mut checked_at_end = false;
        let mut next = 0usize;
        loop {
            if next == queue.len() {
                if checked_at_end {
                    break;
                }
                checked_at_end = true;
                let n = hosts.len();
                for host in 0..n {
                    queue.extend([Op::Net { host, mode: 0 }, Op::Kill { host }]);
                }
                let host = last_opener.map_or(0, |l| (l + 1) % n);
                queue.push(Op::Open { host, force: true });
            }
            let i = next;
            next += 1;
            let op = &queue[i].clone();
            if trace {
                eprintln!("op {i}: {op:?} (gen {gen}, last opener {last_opener:?})");
            }
            *progress.lock().unwrap() =
                (i, format!("{op:?} of {ops:?}"), std::time::Instant::now());
            let vid = i as u64 + 1;
            match op {
                Op::Write { host, sector } => {
                    let Some(h) = hosts.get_mut(*host) else {
                        continue;
                    };
                    let Some(v) = h.vol.clone() else { continue };
                    if v.write(*sector as u64 * 4096, &data_of(vid), false)
                        .await
                        .is_ok()
                    {
                        h.view[*sector] = vid;
                        h.undrained.insert(*sector);
                        if h.gen == gen {
                            possible[*sector].insert(vid);
                        }
                    }
                }
                Op::Read { host, sector } => {
                    let Some(h) = hosts.get_mut(*host) else {
                        continue;
                    };
                    let Some(v) = h.vol.clone() else { continue };
                    let mut buf = vec![0u8; 4096];
                    match v.read(*sector as u64 * 4096, &mut buf).await {
                        Ok(()) => assert!(
                            buf == data_of(h.view[*sector]),
                            "op {i}: host {host} read sector {sector}: not its view {}",
                            h.view[*sector]
                        ),
                        Err(e) => assert!(
                            h.mode == Mode::Partitioned || h.gen != gen,
                            "op {i}: read failed on a connected owner: {e}"
                        ),
                    }
                }
                Op::Drain { host } => {
                    let Some(h) = hosts.get_mut(*host) else {
                        continue;
                    };
                    let Some(v) = h.vol.clone() else { continue };
                    if h.mode == Mode::Partitioned {
                        continue; // would wait for the network
                    }
                    // With segment PUTs held back (Delay) the upload starts and the
                    // wait is given up, as by a client whose PUT timed out: the held
                    // PUT lands at a later Release, maybe after another host took over
                    // and wrote a manifest.
                    let patience = if h.mode == Mode::Delay {
                        Duration::from_millis(10)
                    } else {
                        Duration::from_secs(20)
                    };
                    let drained =
                        futures_lite::future::or(async { Some(v.drain().await) }, async {
                            smol::Timer::after(patience).await;
                            None
                        })
                        .await;
                    let Some(drained) = drained else {
                        assert!(
                            h.mode == Mode::Delay,
                            "op {i}: drain on host {host} hung (mode {:?})",
                            h.mode
                        );
                        continue;
                    };
                    match drained {
                        Ok(()) if h.gen != gen => {
                            // Superseded: its flusher may have committed these writes by
                            // itself before the newer open (they were then among the
                            // values that open could find, and it pinned what it found).
                            // A commit after the takeover would change what a later open
                            // reads: the final open below checks every sector.
                            h.undrained.clear();
                        }
                        Ok(()) => {
                            for s in h.undrained.drain() {
                                possible[s] = [h.view[s]].into_iter().collect();
                            }
                        }
                        Err(VolumeError::Fenced(_)) => {
                            assert_ne!(h.gen, gen, "op {i}: current owner {host} fenced");
                        }
                        Err(e) => panic!("op {i}: drain on host {host}: {e}"),
                    }
                }
                Op::Open { host, force } => {
                    let Some(h) = hosts.get_mut(*host) else {
                        continue;
                    };
                    if h.vol.is_some() {
                        continue;
                    }
                    let mut cfg = h.cfg.clone();
                    cfg.takeover = *force;
                    let before = stored_lease(store.as_ref()).await;
                    let v = match Volume::open(cfg, h.store.clone()).await {
                        Ok(v) => v,
                        Err(e @ VolumeError::LeaseHeld { .. }) => {
                            if trace {
                                eprintln!("op {i}: open refused: {e}");
                            }
                            continue;
                        }
                        Err(VolumeError::Store(_)) if h.mode != Mode::Normal => {
                            // The lease write may have landed although the reply was
                            // lost: then the previous owner is fenced, and nobody is
                            // current until the next open. It landed only if the
                            // stored lease changed to this host's: a lease that was
                            // this host's already (an earlier open) proves nothing.
                            let after = stored_lease(store.as_ref()).await;
                            if after != before
                                && after.as_ref().is_some_and(|(o, _)| *o == h.cfg.owner)
                            {
                                gen += 1;
                                last_opener = None;
                            }
                            continue;
                        }
                        Err(e) => panic!("op {i}: open on host {host}: {e}"),
                    };
                    let ours = last_opener == Some(*host);
                    let (old_view, old_undrained) = (h.view.clone(), h.undrained.clone());
                    gen += 1;
                    h.gen = gen;
                    last_opener = Some(*host);
                    for s in 0..SECTORS {
                        let mut buf = vec![0u8; 4096];
                        v.read(s as u64 * 4096, &mut buf).await.unwrap();
                        if ours {
                            assert!(
                                buf == data_of(h.view[s]),
                                "op {i}: host {host} reopened its own cache; sector {s} is not {}",
                                h.view[s]
                            );
                        } else {
                            let got = value_in(&buf, &possible[s]).unwrap_or_else(|| {
                                panic!(
                                    "op {i}: host {host} opened; sector {s} holds none of {:?}",
                                    possible[s]
                                )
                            });
                            h.view[s] = got;
                            // The store's copy is pinned now: only this owner's
                            // writes can change it.
                            possible[s] = [got].into_iter().collect();
                        }
                    }
                    if !ours {
                        if let Some(aside) = v.stats().diverged {
                            // Set aside intact: what this host acknowledged last.
                            let f = glidefs::volume::FileIo::open(&fs, &aside.join("data"), false)
                                .unwrap();
                            for &s in &old_undrained {
                                let mut buf = vec![0u8; 4096];
                                f.read_at(&mut buf, s as u64 * 4096).unwrap();
                                assert!(
                                    buf == data_of(old_view[s]),
                                    "op {i}: host {host}: set-aside sector {s} is not its acknowledged {}",
                                    old_view[s]
                                );
                            }
                        }
                        h.undrained.clear();
                    }
                    h.vol = Some(v);
                }
                Op::Kill { host } => {
                    let Some(h) = hosts.get_mut(*host) else {
                        continue;
                    };
                    if let Some(v) = h.vol.take() {
                        v.abandon().await;
                    }
                }
                Op::Close { host } => {
                    let Some(h) = hosts.get_mut(*host) else {
                        continue;
                    };
                    if let Some(v) = h.vol.take() {
                        let _ = v.close().await;
                    }
                }
                Op::Net { host, mode } => {
                    let Some(h) = hosts.get_mut(*host) else {
                        continue;
                    };
                    let (m, filter) = match mode {
                        0 => (Mode::Normal, ""),
                        1 => (Mode::Partitioned, ""),
                        2 => (Mode::Delay, "/seg/"),
                        // Lost replies of segment PUTs (the S3 store resolves an
                        // ambiguous conditional PUT itself by reading the object back).
                        3 => (Mode::CommitThenFail, "/seg/"),
                        4 => (Mode::Duplicate, "/"),
                        // Lost replies of lease writes (acquire, fence, renew).
                        _ => (Mode::CommitThenFail, "/lease"),
                    };
                    h.mode = m;
                    h.net.set(m, filter);
                }
                Op::Release { host } => {
                    let Some(h) = hosts.get_mut(*host) else {
                        continue;
                    };
                    h.net.release().await;
                }
                Op::Advance { ms } => clock.advance(*ms),
            }
        }
        for h in hosts.iter_mut() {
            if let Some(v) = h.vol.take() {
                v.abandon().await;
            }
        }
    });
}
