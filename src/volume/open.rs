//! Opening a volume (create / reopen after crash / cold wake), plus the store-level
//! operations that need no open volume: exists, purge, grow.
//!
//! Open order: meta object (create if absent) → lease → store map (newest manifest
//! plus newer segments) → local state (replay if the cache belongs to this volume
//! uuid and the previous lease holder was us, else discard it) → fresh local
//! checkpoint and journal generation (or, after a kill -9 in the same boot with an
//! intact journal, keep appending to the last journal: see [`journal::JournalTail`]).
//! Segment sequence numbers continue after the highest listed segment, so nothing
//! is ever overwritten.

use super::blockmap::{LocalMap, StoreMap};
use super::crypto::FrameKey;
use super::diverged;
use super::fencing::{self, Witness};
use super::journal::{self, Journal, LocalState};
use super::keyring::Keyring;
use super::keys::VolumeKeys;
use super::lease::{self, Fence};
use super::lineage::{Ancestor, Lineage};
use super::manifest::{self, VolumeMeta, FORMAT_VERSION};
use super::meta_io::{check_name, meta_bytes, read_meta};
use super::segment;
use super::{fileio, Inner, State, Stats, VolumeConfig, VolumeError};
use crate::store::{put_new, CountedStore, ObjectStore, PutCondition, StoreError, StoreTraffic};
use crate::BLOCK_SIZE;
use event_listener::Event;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// What [`load_store_map`] found.
struct Loaded {
    map: StoreMap,
    /// Highest segment seq listed (zombies included: sequence numbers never repeat).
    max_seq: u64,
    /// Epoch of the manifest the map starts from (0: none, or an older version's).
    manifest_epoch: u64,
    /// Keys of objects written by fenced writers after they were fenced.
    zombies: Vec<String>,
}

/// Load the newest valid manifest plus the valid segments above it, ignoring every
/// object a fenced writer landed late (see `fencing.rs`; `fences` from the lease).
async fn load_store_map(
    store: &dyn ObjectStore,
    keys: &VolumeKeys,
    uuid: u64,
    fences: &[Fence],
    lineage: &Lineage,
    ring: &Keyring,
) -> Result<Loaded, VolumeError> {
    let mut witnesses: Vec<Witness> = fences
        .iter()
        .map(|f| Witness {
            epoch: f.epoch,
            base: f.base,
        })
        .collect();
    let mut zombies = Vec::new();
    // Manifests: headers first (each is a witness), then the newest valid one.
    let mut mans = Vec::new();
    for m in store.list(&keys.manifests()).await? {
        let Some(seq) = keys.manifest_seq(&m.key) else {
            continue;
        };
        let hb = store
            .get_range(&m.key, 0..manifest::HEADER_LEN as u64)
            .await?;
        let h = manifest::decode_header(&hb)
            .map_err(|e| VolumeError::Corrupt(format!("{}: {e}", m.key)))?;
        if h.uuid != uuid {
            return Err(VolumeError::Corrupt(format!(
                "{} belongs to another volume incarnation",
                m.key
            )));
        }
        if h.seq != seq {
            return Err(VolumeError::Corrupt(format!(
                "{}: header says seq {}",
                m.key, h.seq
            )));
        }
        witnesses.push(Witness {
            epoch: h.epoch,
            base: h.seq,
        });
        mans.push((m.key, h));
    }
    mans.sort_by_key(|(_, h)| std::cmp::Reverse(h.seq));
    let mut map = StoreMap::default();
    let mut base = 0u64;
    let mut manifest_epoch = 0u64;
    let mut chosen = false;
    for (key, h) in &mans {
        if fencing::is_zombie(h.epoch, h.seq, &witnesses) {
            tracing::warn!(%key, epoch = h.epoch, "manifest written by a fenced writer; ignored");
            zombies.push(key.clone());
            continue;
        }
        if !chosen {
            chosen = true;
            let b = store.get(key).await?;
            let (_, mmap) = manifest::decode(&b, ring.own())
                .map_err(|e| VolumeError::Corrupt(format!("{key}: {e}")))?;
            map = mmap;
            base = h.seq;
            manifest_epoch = h.epoch;
        }
    }
    if !chosen {
        if let Some(p) = lineage.parent() {
            // A fork without a manifest of its own yet starts from its parent's
            // snapshot (which its parent keeps while the fork exists).
            let seal = lineage.parent_uuid().and_then(|u| ring.ancestor(u));
            let (m, h) = parent_manifest(store, p, seal).await?;
            map = m;
            base = h.seq;
        }
    }
    let mut max_seq = base.max(lineage.top());
    let mut segs: Vec<(u64, String, u64)> = store
        .list(&keys.segments())
        .await?
        .into_iter()
        .filter_map(|o| keys.segment_seq(&o.key).map(|s| (s, o.key, o.size)))
        .collect();
    segs.sort();
    // Headers first: every one is a witness for the others.
    let mut heads = Vec::new();
    for (seq, key, size) in segs {
        max_seq = max_seq.max(seq);
        if seq <= base {
            // The manifest's pieces point into it: its size, for compaction.
            if map.segs.contains_key(&seq) {
                map.note_segment(seq, size);
            }
            continue;
        }
        map.note_segment(seq, size);
        let hb = store.get_range(&key, 0..segment::HEADER_LEN as u64).await?;
        let h =
            segment::decode_header(&hb).map_err(|e| VolumeError::Corrupt(format!("{key}: {e}")))?;
        if h.uuid != uuid {
            tracing::warn!(%key, "segment of another volume incarnation; ignored");
            map.forget_segment(seq);
            continue;
        }
        if h.seq != seq {
            return Err(VolumeError::Corrupt(format!(
                "{key}: header says seq {}",
                h.seq
            )));
        }
        witnesses.push(Witness {
            epoch: h.epoch,
            base: h.base_seq,
        });
        heads.push((key, h));
    }
    for (key, h) in heads {
        if fencing::is_zombie(h.epoch, h.seq, &witnesses) {
            tracing::warn!(%key, epoch = h.epoch, "segment written by a fenced writer; ignored");
            map.forget_segment(h.seq);
            zombies.push(key);
            continue;
        }
        if h.count == 0 {
            map.forget_segment(h.seq);
            continue;
        }
        // Header and index in one GET (a sealed index is bound to the header).
        let ib = store
            .get_range(
                &key,
                0..(segment::HEADER_LEN + segment::index_len(&h)) as u64,
            )
            .await?;
        let entries = segment::decode_index(&h, &ib[segment::HEADER_LEN..], ring.own(), &ib)
            .map_err(|e| VolumeError::Corrupt(format!("{key}: {e}")))?;
        for e in entries {
            map.apply(e.block, e.loc(h.seq));
        }
        map.forget_segment(h.seq);
    }
    Ok(Loaded {
        map,
        max_seq,
        manifest_epoch,
        zombies,
    })
}

/// The map of the snapshot a fork was made from: its parent's manifest `p.seq`.
async fn parent_manifest(
    store: &dyn ObjectStore,
    p: &Ancestor,
    seal: Option<&FrameKey>,
) -> Result<(StoreMap, manifest::ManifestHeader), VolumeError> {
    let key = VolumeKeys::new(&p.volume).manifest(p.seq);
    let corrupt = |m: String| {
        VolumeError::Corrupt(format!(
            "{key} (snapshot {:?} of {:?}, which this fork starts from): {m}",
            p.snapshot, p.volume
        ))
    };
    let b = match store.get(&key).await {
        Ok(b) => b,
        Err(StoreError::NotFound(_)) => return Err(corrupt("missing".into())),
        Err(e) => return Err(e.into()),
    };
    let (h, map) = manifest::decode(&b, seal).map_err(corrupt)?;
    let want = u64::from_str_radix(&p.uuid, 16).map_err(|e| corrupt(e.to_string()))?;
    if h.uuid != want || h.seq != p.seq {
        return Err(corrupt(format!(
            "belongs to volume {:016x} at seq {}, not {} at {}",
            h.uuid, h.seq, p.uuid, p.seq
        )));
    }
    Ok((map, h))
}

/// File in the cache dir naming the lease epoch the cache was last opened under.
pub(crate) const CACHE_EPOCH_FILE: &str = "lease-epoch";

fn read_cache_epoch(fs: &dyn fileio::FileIo, dir: &std::path::Path) -> Option<u64> {
    let raw = fileio::read_all(fs, &dir.join(CACHE_EPOCH_FILE)).ok()??;
    std::str::from_utf8(&raw).ok()?.trim().parse().ok()
}

fn new_uuid(seed: u64) -> u64 {
    let mut x = if seed == 0 {
        rand::random::<u64>()
    } else {
        seed
    };
    if x == 0 {
        x = 1;
    }
    x
}

pub(crate) async fn open(
    cfg: VolumeConfig,
    store: Arc<dyn ObjectStore>,
) -> Result<Arc<Inner>, VolumeError> {
    check_name(&cfg.name)?;
    crate::rules::check_aligned(cfg.size_bytes).map_err(VolumeError::Invalid)?;
    // Every request from here on, the open's own included, is counted per volume.
    let traffic = Arc::new(StoreTraffic::default());
    let store: Arc<dyn ObjectStore> = Arc::new(CountedStore::new(store, traffic.clone()));
    let keys = VolumeKeys::new(&cfg.name);
    let meta_key = keys.meta();
    let mut rng_seed = new_uuid(cfg.seed);
    // 1. Volume metadata.
    let (mut meta, mut etag) = loop {
        if let Some(m) = read_meta(store.as_ref(), &meta_key).await? {
            break m;
        }
        if cfg.size_bytes == 0 {
            return Err(VolumeError::NotFound(cfg.name.clone()));
        }
        super::admin::check_cache_capacity(&cfg, cfg.size_bytes)?;
        let uuid = new_uuid(match cfg.seed {
            0 => 0,
            s => s ^ 0x9e37_79b9_7f4a_7c15,
        });
        let keys = cfg
            .encryption
            .as_deref()
            .map(|m| Keyring::create(m, uuid, None).1);
        let m = VolumeMeta {
            format: FORMAT_VERSION,
            block_size: BLOCK_SIZE as u64,
            size_bytes: cfg.size_bytes,
            // Seed 0 (the daemon's): random. A fixed seed (tests) derives a fixed
            // uuid from it, distinct from the RNG seed.
            uuid: format!("{uuid:016x}"),
            lineage: Vec::new(),
            purged: false,
            encrypted: keys.is_some(),
            keys,
        };
        match put_new(store.as_ref(), &meta_key, meta_bytes(&m)?).await? {
            Some(e) => break (m, e),
            None => continue,
        }
    };
    if meta.purged {
        return Err(VolumeError::InUse(format!(
            "volume {:?} was deleted, and what forks of its snapshots still read is kept under its name: use another name (or delete the forks)",
            cfg.name
        )));
    }
    let uuid = meta.uuid_u64().map_err(VolumeError::Corrupt)?;
    // Keys before the lease: a volume this daemon cannot decrypt is refused without
    // taking it from its holder.
    let ring = Keyring::unwrap(
        &cfg.name,
        uuid,
        meta.encrypted,
        meta.keys.as_ref(),
        cfg.encryption.as_deref(),
    )?;
    if cfg.size_bytes != 0 && cfg.size_bytes < meta.size_bytes {
        return Err(VolumeError::Unsupported(format!(
            "volume {} is {} bytes; shrinking to {} is not supported",
            cfg.name, meta.size_bytes, cfg.size_bytes
        )));
    }
    // 2. Lease. The store's one-time checks first (S3's conditional-write probe:
    // 30 s under emulation), so they do not eat into the first lease window.
    store.prepare().await?;
    let ttl_ms = cfg.lease_ttl.as_millis() as u64;
    let acquire_started = cfg.clock.mono_ms();
    let acq = lease::acquire(store.as_ref(), &keys, cfg.lease_rules(), cfg.takeover).await?;
    // A format-1 volume is marked format 2 before anything of format 2 is written
    // (by the lease holder only), so a release that reads only format 1 refuses it
    // instead of misreading it. Format-1 objects stay as they are and are read as
    // before (docs/format.md "Volumes of format 1").
    // Master key rotation: data keys wrapped by an older master key are wrapped
    // again by the current one (by the lease holder, in the same meta write as a
    // grow or format raise). No data is rewritten.
    let rewrap = match (&meta.keys, cfg.encryption.as_deref()) {
        (Some(w), Some(m)) if w.key_id != m.current.id => Some(ring.wrap(&m.current, uuid)),
        _ => None,
    };
    if cfg.size_bytes > meta.size_bytes || meta.format != FORMAT_VERSION || rewrap.is_some() {
        if cfg.size_bytes > meta.size_bytes {
            super::admin::check_cache_capacity(&cfg, cfg.size_bytes)?;
        }
        if meta.format != FORMAT_VERSION {
            tracing::info!(volume = %cfg.name, from = meta.format, to = FORMAT_VERSION, "volume format raised; objects of the old format are still read");
        }
        if let Some(w) = &rewrap {
            let from = meta
                .keys
                .as_ref()
                .map(|k| k.key_id.clone())
                .unwrap_or_default();
            tracing::info!(volume = %cfg.name, from = %from, to = %w.key_id, "data keys wrapped again by the current master key");
        }
        let m = VolumeMeta {
            size_bytes: cfg.size_bytes.max(meta.size_bytes),
            format: FORMAT_VERSION,
            keys: rewrap.or_else(|| meta.keys.clone()),
            ..meta.clone()
        };
        etag = store
            .put_if(&meta_key, meta_bytes(&m)?, PutCondition::IfMatch(etag))
            .await?;
        meta = m;
    }
    let size = meta.size_bytes;
    // 3. Store map.
    let lineage = Lineage::new(&meta.lineage)
        .map_err(|e| VolumeError::Corrupt(format!("{meta_key}: {e}")))?;
    let loaded = load_store_map(
        store.as_ref(),
        &keys,
        uuid,
        &acq.held.lease.fences,
        &lineage,
        &ring,
    )
    .await?;
    let (smap, max_seq) = (loaded.map, loaded.max_seq);
    // 3b. Our fence, before anything is served: objects of older epochs that land
    // from now on, above max_seq, never count. Fences a manifest made redundant go.
    let epoch = acq.held.lease.epoch;
    let mut fences: Vec<Fence> = acq
        .held
        .lease
        .fences
        .iter()
        .copied()
        .filter(|f| loaded.manifest_epoch == 0 || f.epoch > loaded.manifest_epoch)
        .collect();
    fences.push(Fence {
        epoch,
        base: max_seq,
    });
    let held = if acq.prev_owner.is_none() && epoch == 1 {
        // The first lease of the volume: no older epoch exists whose late objects a
        // fence would exclude (a witness only judges non-zero epochs older than its
        // own), so the lease stays as acquired. One store write less per volume
        // created.
        acq.held.clone()
    } else {
        let fenced_lease = lease::Lease {
            fences,
            ..acq.held.lease.clone()
        };
        let (held, written) =
            lease::rewrite(store.as_ref(), &keys.lease(), &acq.held, fenced_lease).await?;
        if !written {
            return Err(VolumeError::Store(StoreError::Unavailable(
                "the lease changed while the volume was opened; retry".into(),
            )));
        }
        held
    };
    // 4. Local state.
    // The cache is in step with the store only if nobody acquired the lease since it
    // was last ours: the previous epoch must be the one the cache recorded (a lease
    // write of ours that landed although its open failed also breaks the chain).
    let recorded = read_cache_epoch(&*cfg.fileio, &cfg.cache_dir);
    let local_ours = match acq.prev_owner.as_deref() {
        None => true,
        Some(o) => o == cfg.owner && recorded.is_none_or(|e| e == acq.prev_epoch),
    };
    let fs = cfg.fileio.clone();
    let dir = cfg.cache_dir.clone();
    let (aside_root, name, now_ms) = (cfg.set_aside_dir(), cfg.name.clone(), cfg.clock.now_ms());
    let prev = acq.prev_owner.clone().unwrap_or_default();
    let (data, replayed, boot_id, journal, diverged) = smol::unblock(move || -> Result<_, VolumeError> {
        let io = |c: &str, e| VolumeError::io(format!("{c} in {}", dir.display()), e);
        fs.create_dir_all(&dir).map_err(|e| io("creating cache dir", e))?;
        let mut replayed = None;
        let mut diverged = None;
        if local_ours {
            let data = fs.open(&dir.join("data"), true).map_err(|e| io("opening cache file", e))?;
            replayed = journal::replay(&*fs, &dir, uuid, &*data)?;
        } else if let Some((old_uuid, dirty)) = diverged::local_dirty(&*fs, &dir)? {
            // Written elsewhere since: what we never uploaded must not be lost, nor
            // served over the other host's data. Move it aside, start clean.
            let aside = diverged::Aside { name: &name, uuid: old_uuid, map: &dirty, reason: "written-elsewhere", now_ms };
            let to = diverged::set_aside(&*fs, &dir, &aside_root, aside)
                .map_err(|e| io("setting aside diverged data", e))?;
            tracing::error!(volume = %name, previous_owner = %prev, dirty_bytes = dirty.dirty_sectors * crate::SECTOR_SIZE as u64, set_aside = %to.display(), "volume was written by another host since this cache held it: local dirty data set aside");
            diverged = Some(to);
        } else {
            tracing::warn!(dir = %dir.display(), previous_owner = %prev, "lease was held by another owner; discarding the (clean) local cache");
        }
        let data = fs.open(&dir.join("data"), true).map_err(|e| io("opening cache file", e))?;
        let epoch_file = dir.join(CACHE_EPOCH_FILE);
        let epoch_text = format!("{epoch}\n");
        let boot_id = fs.boot_id();
        let was_replayed = replayed.is_some();
        let (map, errors, last_gen, tail) = match replayed {
            Some(r) => {
                // Before anything else: the replayed cache is ours under this epoch.
                fileio::write_atomic(&*fs, &epoch_file, epoch_text.as_bytes())
                    .map_err(|e| io("recording the lease epoch", e))?;
                (r.map, r.checksum_errors, r.last_gen, r.tail)
            }
            None => {
                data.set_len(0).map_err(|e| io("resetting cache file", e))?;
                (LocalMap::default(), 0, journal::list_journals(&*fs, &dir).map_err(|e| io("listing", e))?.last().copied().unwrap_or(0), None)
            }
        };
        let cur = data.len().map_err(|e| io("cache file size", e))?;
        if let Some(t) = tail.filter(|_| cur == size) {
            // Reopen after the daemon was killed (same boot): the state file, the
            // journals and the cache data already describe `map`, so keep appending
            // to the last journal, as the killed process would have. A new
            // checkpoint (five fsyncs) would change nothing; the flusher's next
            // journal compaction writes one.
            let j = Journal::reopen(&*fs, &dir, t.gen, t.end).map_err(|e| io("reopening journal", e))?;
            return Ok((data, (map, errors), boot_id, j, diverged));
        }
        if cur != size {
            data.set_len(size).map_err(|e| io("sizing cache file", e))?;
        }
        // Fresh checkpoint: the replayed state becomes the base, journal starts anew.
        let gen = last_gen + 1;
        let st = LocalState::from_map(uuid, gen, false, boot_id.clone(), &map);
        let state_file = journal::state_path(&dir);
        if was_replayed && !map.holds_nothing() {
            let j = Journal::create(&*fs, &dir, gen, uuid).map_err(|e| io("creating journal", e))?;
            data.sync_data().map_err(|e| io("syncing cache file", e))?;
            fileio::write_atomic(&*fs, &state_file, &st.encode()).map_err(|e| io("writing state", e))?;
            journal::remove_older(&*fs, &dir, gen).map_err(|e| io("removing journal", e))?;
            return Ok((data, (map, errors), boot_id, j, diverged));
        }
        // A cache that vouches for no data (a new volume, or a cache discarded or
        // replayed empty): no data to sync, and one directory fsync makes the journal,
        // the state and the lease epoch durable together (3 syncs instead of 7, most
        // of a new volume's local cost). The lease epoch goes last: an open
        // interrupted before it finds the old epoch (or none) and discards this
        // cache again, which holds nothing. A journal header lost to a power cut is
        // ignored by replay; the directory fsync precedes every acknowledged write.
        let j = Journal::create_unsynced(&*fs, &dir, gen, uuid).map_err(|e| io("creating journal", e))?;
        fileio::replace_file(&*fs, &state_file, &st.encode()).map_err(|e| io("writing state", e))?;
        if !was_replayed {
            fileio::replace_file(&*fs, &epoch_file, epoch_text.as_bytes())
                .map_err(|e| io("recording the lease epoch", e))?;
        }
        fs.sync_dir(&dir).map_err(|e| io("syncing cache dir", e))?;
        journal::remove_older(&*fs, &dir, gen).map_err(|e| io("removing journal", e))?;
        Ok((data, (map, errors), boot_id, j, diverged))
    })
    .await?;
    rng_seed ^= 0x2545_f491_4f6c_dd1d;
    let (map, errors) = replayed;
    let stats = Stats {
        store_traffic: traffic,
        ..Stats::default()
    };
    stats.checksum_errors.store(errors, Ordering::Relaxed);
    let last_committed = max_seq;
    let inner = Inner {
        base_seq: max_seq,
        keys,
        lineage,
        keyring: ring,
        uuid,
        boot_id,
        size: AtomicU64::new(size),
        data,
        st: Mutex::new(State {
            local: map,
            store: smap,
            journal,
            write_seq: 0,
            fetching: HashMap::new(),
            next_seq: max_seq + 1,
            last_committed,
            segs_since_manifest: 0,
            compacted_since_manifest: false,
            gc_pending: BTreeMap::new(),
            recent_uploads: VecDeque::new(),
            merge_credit: 0,
            pins: None,
        }),
        sync_lock: async_lock::Mutex::new(()),
        gc_lock: async_lock::Mutex::new(()),
        meta: async_lock::Mutex::new((meta, etag)),
        lease: Mutex::new(held),
        zombies: Mutex::new(loaded.zombies),
        lease_deadline: AtomicU64::new(acquire_started + lease::self_fence_after_ms(ttl_ms)),
        last_renew: AtomicU64::new(acquire_started),
        unsure_renewals: Mutex::new(Vec::new()),
        lease_expired: AtomicBool::new(false),
        wrote_manifest: AtomicBool::new(false),
        changed: Event::new(),
        kick: Event::new(),
        kick_flag: AtomicBool::new(false),
        flusher_idle: AtomicBool::new(false),
        dirtied: Event::new(),
        stats,
        readahead: Default::default(),
        closed: AtomicBool::new(false),
        bg_stop: AtomicBool::new(false),
        file_ops: Mutex::new(()),
        failed: AtomicBool::new(false),
        fenced: Mutex::new(None),
        diverged: Mutex::new(diverged),
        rng: Mutex::new(rng_seed | 1),
        store,
        cfg,
    };
    let inner = Arc::new(inner);
    if inner.st.lock().local.dirty_sectors > 0 {
        inner.kick();
    }
    Ok(inner)
}
