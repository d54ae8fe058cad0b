//! Client-side encryption (issue 17): nothing written through an encrypted volume is
//! in the store in the clear; wrong, missing and rotated master keys; tampered,
//! swapped and replayed objects are refused; purge destroys the data key first and
//! forks keep reading what they share.
// Test code: a panic is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod volume_support;

use glidefs::store::{LocalDirStore, MemStore, ObjectStore};
use glidefs::volume::crypto::{MasterKey, MasterKeys};
use glidefs::volume::keys::VolumeKeys;
use glidefs::volume::manifest::VolumeMeta;
use glidefs::volume::{SimFs, Volume, VolumeConfig, VolumeError};
use std::path::Path;
use std::sync::Arc;
use volume_support::fault::{FaultStore, Mode};
use volume_support::*;

const MIB: u64 = 1 << 20;
const SS: usize = 4096;

fn cfg(fs: &SimFs, name: &str, size: u64, keys: Option<Arc<MasterKeys>>) -> VolumeConfig {
    let mut c = sim_cfg(fs, name, size);
    c.encryption = keys;
    c
}

/// Write `data` at 0, upload it, close the volume and drop its cache, so the next
/// open reads everything from the store.
async fn write_cold(c: &VolumeConfig, store: &Arc<dyn ObjectStore>, data: &[u8]) {
    let v = open(c, store).await;
    v.write(0, data, false).await.unwrap();
    v.drain().await.unwrap();
    v.close().await.unwrap();
    Volume::purge_cache(c).unwrap();
}

async fn meta(store: &Arc<dyn ObjectStore>, vol: &str) -> VolumeMeta {
    serde_json::from_slice(&store.get(&VolumeKeys::new(vol).meta()).await.unwrap()).unwrap()
}

/// Every file under `dir`, whole.
fn files(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(std::fs::read(&p).unwrap());
        }
    }
    out
}

#[test]
fn a_pattern_written_through_an_encrypted_volume_is_in_no_store_object() {
    // The plaintext run shows the scan finds the pattern when it is there.
    for encrypted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalDirStore::open(dir.path().join("store")).unwrap());
        let fs = SimFs::new();
        let keys = encrypted.then(|| master_keys(1));
        let c = cfg(&fs, "secret", MIB, keys);
        let data = pattern(42, 256 << 10);
        smol::block_on(async {
            let v = open(&c, &store).await;
            v.write(0, &data, false).await.unwrap();
            v.drain().await.unwrap();
            v.snapshot("s1").await.unwrap();
            // Half of it again: more segments, a manifest, compaction candidates.
            v.write(0, &data[..128 << 10], false).await.unwrap();
            v.drain().await.unwrap();
            v.close().await.unwrap();
        });
        let objects = files(&dir.path().join("store"));
        assert!(objects.len() >= 4, "{} objects", objects.len());
        // Any 32-byte run of any 4 KiB sector of the pattern, anywhere.
        let found = data.chunks(SS).any(|sector| {
            let needle = &sector[1000..1032];
            objects.iter().any(|o| o.windows(32).any(|w| w == needle))
        });
        assert_eq!(found, !encrypted, "encrypted = {encrypted}");
        if encrypted {
            // The master key is in no object either (raw or hex).
            let hex = "01".repeat(32);
            assert!(!objects
                .iter()
                .any(|o| o.windows(32).any(|w| w == [1u8; 32])));
            assert!(!objects
                .iter()
                .any(|o| o.windows(64).any(|w| w == hex.as_bytes())));
        }
    }
}

#[test]
fn wrong_missing_and_rotated_master_keys() {
    smol::block_on(async {
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let fs = SimFs::new();
        let (a, b) = (master_keys(1), master_keys(2));
        let data = pattern(3, 64 << 10);
        write_cold(&cfg(&fs, "v", MIB, Some(a.clone())), &store, &data).await;
        let key_id = meta(&store, "v").await.keys.unwrap().key_id;
        assert_eq!(key_id, a.current.id);

        let fail = |keys: Option<Arc<MasterKeys>>| {
            let (c, s) = (cfg(&fs, "v", 0, keys), store.clone());
            async move {
                match Volume::open(c, s).await {
                    Ok(_) => panic!("opened"),
                    Err(e) => e,
                }
            }
        };
        let e = fail(None).await;
        assert!(matches!(e, VolumeError::Key(_)), "{e}");
        assert!(e.to_string().contains("no master key"), "{e}");
        let e = fail(Some(b.clone())).await;
        assert!(matches!(e, VolumeError::Key(_)), "{e}");
        assert!(
            e.to_string().contains(&a.current.id) && e.to_string().contains(&b.current.id),
            "names both key ids: {e}"
        );
        // A different key that claims the right id: no garbage, a key error.
        let forged = Arc::new(MasterKeys {
            current: MasterKey::from_bytes(&[2; 32]),
            old: Vec::new(),
        });
        let mut m = meta(&store, "v").await;
        m.keys.as_mut().unwrap().key_id = forged.current.id.clone();
        let key = VolumeKeys::new("v").meta();
        store
            .put(&key, serde_json::to_vec(&m).unwrap().into())
            .await
            .unwrap();
        let e = fail(Some(forged)).await;
        assert!(e.to_string().contains("wrong key file"), "{e}");
        m.keys.as_mut().unwrap().key_id = a.current.id.clone();
        store
            .put(&key, serde_json::to_vec(&m).unwrap().into())
            .await
            .unwrap();

        // Rotation: B current, A old: opens, and the data keys are wrapped by B.
        let rot = Arc::new(MasterKeys {
            current: b.current.clone(),
            old: vec![a.current.clone()],
        });
        let c = cfg(&fs, "v", 0, Some(rot));
        let v = open(&c, &store).await;
        assert!(read_all(&v).await[..data.len()] == data[..]);
        v.close().await.unwrap();
        Volume::purge_cache(&c).unwrap();
        assert_eq!(meta(&store, "v").await.keys.unwrap().key_id, b.current.id);
        // Now B alone opens it, A alone does not.
        let c = cfg(&fs, "v", 0, Some(b.clone()));
        let v = open(&c, &store).await;
        assert!(read_all(&v).await[..data.len()] == data[..]);
        v.close().await.unwrap();
        let e = fail(Some(a)).await;
        assert!(matches!(e, VolumeError::Key(_)), "{e}");
    });
}

/// The keys under `prefix` (a volume's segments or manifests: oldest first).
async fn keys_under(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    v.sort();
    v
}

/// `obj` (a segment) with header seq `seq` and valid header checksum.
fn with_seq(obj: &[u8], seq: u64) -> Vec<u8> {
    let mut o = obj.to_vec();
    o[16..24].copy_from_slice(&seq.to_le_bytes());
    let c = crc32c::crc32c(&o[0..52]);
    o[52..56].copy_from_slice(&c.to_le_bytes());
    o
}

#[test]
fn tampered_swapped_and_replayed_objects_are_refused() {
    smol::block_on(async {
        let fs = SimFs::new();
        let keys = Some(master_keys(1));
        let mut c = cfg(&fs, "t", MIB, keys);
        c.checkpoint_every = 1000; // no manifest: open reads every segment's index
        c.compact_below_live_pct = 0;
        let data = pattern(5, 64 << 10);
        let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let v = open(&c, &mem).await;
        for i in 0..3u64 {
            v.write(i * (64 << 10), &data, false).await.unwrap();
            v.drain().await.unwrap();
        }
        v.close().await.unwrap();
        Volume::purge_cache(&c).unwrap();
        let segs = keys_under(&mem, &VolumeKeys::new("t").segments()).await;
        assert!(segs.len() >= 3, "{segs:?}");
        let (s0, s1) = (segs[0].clone(), segs[1].clone());
        let orig0 = mem.get(&s0).await.unwrap();
        let orig1 = mem.get(&s1).await.unwrap();

        // 1. A flipped byte in a payload: an I/O error on read and a counter.
        let mut bad = orig0.to_vec();
        let n = bad.len();
        bad[n - 5] ^= 1;
        mem.put(&s0, bad.into()).await.unwrap();
        let v = open(&c, &mem).await;
        let mut buf = vec![0u8; 64 << 10];
        assert!(v.read(0, &mut buf).await.is_err());
        assert!(v.stats().checksum_errors >= 1);
        v.close().await.unwrap();
        Volume::purge_cache(&c).unwrap();
        mem.put(&s0, orig0.clone()).await.unwrap();

        // 2. Swap: segment 1's object under segment 0's key (header renumbered and
        // its checksum fixed, as an attacker can): the sealed index is bound to
        // the number it was written under.
        let seq0 = VolumeKeys::new("t").segment_seq(&s0).unwrap();
        mem.put(&s0, with_seq(&orig1, seq0).into()).await.unwrap();
        let e = match Volume::open(c.clone(), mem.clone()).await {
            Ok(_) => panic!("a swapped segment was accepted"),
            Err(e) => e,
        };
        assert!(matches!(e, VolumeError::Corrupt(_)), "{e}");
        assert!(e.to_string().contains("authentication failed"), "{e}");
        mem.put(&s0, orig0.clone()).await.unwrap();

        // 3. Restored, everything reads again; a snapshot writes a manifest.
        let v = open(&c, &mem).await;
        assert!(read_all(&v).await[..data.len()] == data[..]);
        v.snapshot("s").await.unwrap();
        v.close().await.unwrap();
        Volume::purge_cache(&c).unwrap();

        // 4. A manifest replayed under a newer number (header and checksum fixed):
        // its sealed body is bound to its own number.
        let k = VolumeKeys::new("t");
        let mans = keys_under(&mem, &k.manifests()).await;
        let m = mans.last().unwrap().clone();
        let mseq = k.manifest_seq(&m).unwrap();
        let mut re = mem.get(&m).await.unwrap().to_vec();
        let newer = k.manifest(mseq + 50);
        re[16..24].copy_from_slice(&(mseq + 50).to_le_bytes());
        let n = re.len() - 4;
        let crc = crc32c::crc32c(&re[..n]);
        re[n..].copy_from_slice(&crc.to_le_bytes());
        mem.put(&newer, re.into()).await.unwrap();
        let e = match Volume::open(c.clone(), mem.clone()).await {
            Ok(_) => panic!("a replayed manifest was accepted"),
            Err(e) => e,
        };
        assert!(e.to_string().contains("authentication failed"), "{e}");
        mem.delete(&newer).await.unwrap();
        let v = open(&c, &mem).await;
        assert!(read_all(&v).await[..data.len()] == data[..]);
        v.close().await.unwrap();
    });
}

#[test]
fn purge_destroys_the_data_key_first_and_forks_keep_reading() {
    smol::block_on(async {
        let fs = SimFs::new();
        let keys = master_keys(1);
        let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let fault = FaultStore::new(mem.clone());
        let store: Arc<dyn ObjectStore> = fault.clone();
        let pc = cfg(&fs, "p", MIB, Some(keys.clone()));
        let data = pattern(9, 128 << 10);
        let v = open(&pc, &store).await;
        v.write(0, &data, false).await.unwrap();
        v.drain().await.unwrap();
        v.snapshot("s1").await.unwrap();
        // Written after the snapshot: a segment the purge must delete.
        v.write(0, &data[..SS], false).await.unwrap();
        v.drain().await.unwrap();
        v.close().await.unwrap();

        // A daemon without the key can neither fork nor read it.
        let e = Volume::fork(&store, "p", "s1", "x", 0, None)
            .await
            .unwrap_err();
        assert!(matches!(e, VolumeError::Key(_)), "{e}");
        Volume::fork(&store, "p", "s1", "c", 0, Some(&keys))
            .await
            .unwrap();
        let cc = cfg(&fs, "c", 0, Some(keys.clone()));
        let c = open(&cc, &store).await;
        assert!(read_all(&c).await[..data.len()] == data[..]);
        c.close().await.unwrap();
        Volume::purge_cache(&cc).unwrap();

        // Purge with every delete failing: it stops, but the key is gone already.
        fault.set(Mode::FailDeletes, "");
        assert!(
            Volume::purge(&store, "p", pc.lease_rules(), false, Some(&keys))
                .await
                .is_err()
        );
        fault.set(Mode::Normal, "");
        let m = meta(&store, "p").await;
        assert!(m.encrypted && m.keys.is_none(), "{m:?}");
        Volume::purge_cache(&pc).unwrap();
        let e = match Volume::open(pc.clone(), store.clone()).await {
            Ok(_) => panic!("opened without its data key"),
            Err(e) => e,
        };
        assert!(e.to_string().contains("crypto-erased"), "{e}");
        // The purge finishes; the fork still reads the shared frames (its own
        // wrapped copy of the parent's key).
        Volume::purge(&store, "p", pc.lease_rules(), false, Some(&keys))
            .await
            .unwrap();
        let c = open(&cc, &store).await;
        assert!(read_all(&c).await[..data.len()] == data[..]);
        c.close().await.unwrap();
        // Purging the fork takes the parent's leftovers with it.
        Volume::purge(&store, "c", cc.lease_rules(), false, Some(&keys))
            .await
            .unwrap();
        Volume::purge_cache(&cc).unwrap();
        assert!(mem.list("").await.unwrap().is_empty());
    });
}

#[test]
fn a_plaintext_volume_stays_plaintext_when_encryption_is_turned_on() {
    smol::block_on(async {
        let fs = SimFs::new();
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let data = pattern(11, 32 << 10);
        write_cold(&cfg(&fs, "old", MIB, None), &store, &data).await;
        let c = cfg(&fs, "old", 0, Some(master_keys(1)));
        let v = open(&c, &store).await;
        assert!(read_all(&v).await[..data.len()] == data[..]);
        v.write(0, &data, false).await.unwrap();
        v.drain().await.unwrap();
        v.close().await.unwrap();
        assert!(!meta(&store, "old").await.encrypted);
    });
}

/// The objects under `prefix` with their etags (what a re-wrap must not touch).
async fn objects_under(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.etag))
        .collect();
    out.sort();
    out
}

/// `glidefs keys rewrap`: every volume no daemon serves is re-wrapped under the
/// current master key, without rewriting data; a volume with a live lease is left
/// to its daemon until the lease is stale; a dry run changes nothing; a wrong key
/// fails that volume only, naming the key ids.
#[test]
fn rewrap_store_finishes_a_rotation() {
    use glidefs::daemon::key_rotation::rewrap_store;
    use glidefs::volume::rewrap::Rewrap;
    smol::block_on(async {
        let clock = Arc::new(glidefs::clock::ManualClock::new(1_000_000_000));
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::with_clock(clock.clone()));
        let fs = SimFs::new();
        let (a, b) = (master_keys(1), master_keys(2));
        let data = pattern(5, 128 << 10);
        let bc = cfg(&fs, "base", MIB, Some(a.clone()));
        let v = open(&bc, &store).await;
        v.write(0, &data, false).await.unwrap();
        v.drain().await.unwrap();
        v.snapshot("s1").await.unwrap();
        v.close().await.unwrap();
        Volume::purge_cache(&bc).unwrap();
        // Never opened: no lease.
        Volume::fork(&store, "base", "s1", "child", 0, Some(&a))
            .await
            .unwrap();
        write_cold(&cfg(&fs, "plain", MIB, None), &store, &data).await;
        let segments = objects_under(&store, "volumes/base/seg/").await;
        assert!(!segments.is_empty());

        let ttl = std::time::Duration::from_secs(60);
        let rot = MasterKeys {
            current: b.current.clone(),
            old: vec![a.current.clone()],
        };
        let run = |masters: MasterKeys, dry_run: bool| {
            let store = store.clone();
            async move {
                let mut seen = Vec::new();
                let s = rewrap_store(&store, &masters, ttl, dry_run, |n, r| {
                    seen.push((n.to_owned(), r.as_ref().map_err(|e| e.to_string()).cloned()));
                })
                .await
                .unwrap();
                (s, seen)
            }
        };
        let id_a = a.current.id.clone();
        let held = |seen: &[(String, Result<Rewrap, String>)]| matches!(&seen[0], (n, Ok(Rewrap::Held { from, .. })) if n == "base" && *from == id_a);

        let (s, seen) = run(rot.clone(), true).await;
        assert!(held(&seen), "{seen:?}");
        assert_eq!(
            seen[1],
            ("child".into(), Ok(Rewrap::Stale { from: id_a.clone() }))
        );
        assert_eq!(seen[2], ("plain".into(), Ok(Rewrap::NoKey)));
        assert!(!s.complete(), "{s:?}");
        assert_eq!(
            meta(&store, "child").await.keys.unwrap().key_id,
            id_a,
            "dry run wrote"
        );

        let (s, seen) = run(rot.clone(), false).await;
        assert!(held(&seen), "{seen:?}");
        assert_eq!(
            seen[1],
            ("child".into(), Ok(Rewrap::Rewrapped { from: id_a.clone() }))
        );
        assert_eq!((s.rewrapped, s.held, s.no_key), (1, 1, 1), "{s:?}");
        assert!(!s.complete());
        assert_eq!(
            meta(&store, "child").await.keys.unwrap().key_id,
            b.current.id
        );

        // A key that unwraps nothing: child fails, naming both ids; nothing written.
        let c = master_keys(3);
        let (s, seen) = run((*c).clone(), false).await;
        assert_eq!(s.failed, 1, "{seen:?}");
        let e = seen[1].1.clone().unwrap_err();
        assert!(
            e.contains(&b.current.id) && e.contains(&c.current.id),
            "{e}"
        );
        assert_eq!(
            meta(&store, "child").await.keys.unwrap().key_id,
            b.current.id
        );

        // Once base's lease is stale, the command re-wraps it too: complete.
        clock.advance(ttl.as_millis() as u64 + 60_000);
        let (s, seen) = run(rot.clone(), false).await;
        assert_eq!(
            seen[0],
            ("base".into(), Ok(Rewrap::Rewrapped { from: id_a.clone() }))
        );
        assert_eq!(seen[1], ("child".into(), Ok(Rewrap::Current)));
        assert!(s.complete(), "{s:?}");
        assert_eq!(
            objects_under(&store, "volumes/base/seg/").await,
            segments,
            "data rewritten"
        );

        // Key B alone opens both and reads the data.
        for name in ["base", "child"] {
            let c = cfg(&fs, name, 0, Some(b.clone()));
            let v = open(&c, &store).await;
            assert!(read_all(&v).await[..data.len()] == data[..], "{name}");
            v.close().await.unwrap();
            Volume::purge_cache(&c).unwrap();
        }
    });
}
