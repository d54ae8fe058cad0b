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
use super::journal::{self, Journal, LocalState};
use super::keys::VolumeKeys;
use super::lease;
use super::manifest::{self, VolumeMeta, FORMAT_VERSION};
use super::meta_io::{check_name, meta_bytes, read_meta};
use super::segment;
use super::{fileio, Inner, State, Stats, VolumeConfig, VolumeError};
use crate::store::{ObjectStore, PutCondition, StoreError};
use crate::BLOCK_SIZE;
use event_listener::Event;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Load the newest manifest plus newer segments. Returns (map, highest seq listed).
async fn load_store_map(
    store: &dyn ObjectStore,
    keys: &VolumeKeys,
    uuid: u64,
) -> Result<(StoreMap, u64), VolumeError> {
    let seq_of = |k: &str| keys.manifest_seq(k);
    let mut map = StoreMap::default();
    let mut base = 0u64;
    let manifests = store.list(&keys.manifests()).await?;
    if let Some(m) = manifests
        .iter()
        .filter(|m| seq_of(&m.key).is_some())
        .max_by_key(|m| seq_of(&m.key))
    {
        let b = store.get(&m.key).await?;
        let (seq, muuid, mmap) =
            manifest::decode(&b).map_err(|e| VolumeError::Corrupt(format!("{}: {e}", m.key)))?;
        if muuid != uuid {
            return Err(VolumeError::Corrupt(format!(
                "{} belongs to another volume incarnation",
                m.key
            )));
        }
        map = mmap;
        base = seq;
    }
    let mut max_seq = base;
    let mut segs: Vec<(u64, String)> = store
        .list(&keys.segments())
        .await?
        .into_iter()
        .filter_map(|o| keys.segment_seq(&o.key).map(|s| (s, o.key)))
        .collect();
    segs.sort();
    // Headers first: a segment written by an older lease epoch that landed after a
    // newer writer had opened the volume (a "zombie" PUT) is ignored.
    let mut heads = Vec::new();
    for (seq, key) in segs {
        max_seq = max_seq.max(seq);
        if seq <= base {
            continue;
        }
        let hb = store.get_range(&key, 0..segment::HEADER_LEN as u64).await?;
        let h =
            segment::decode_header(&hb).map_err(|e| VolumeError::Corrupt(format!("{key}: {e}")))?;
        if h.uuid != uuid {
            tracing::warn!(%key, "segment of another volume incarnation; ignored");
            continue;
        }
        if h.seq != seq {
            return Err(VolumeError::Corrupt(format!(
                "{key}: header says seq {}",
                h.seq
            )));
        }
        heads.push((key, h));
    }
    let mut min_base: HashMap<u64, u64> = HashMap::new();
    for (_, h) in &heads {
        let e = min_base.entry(h.epoch).or_insert(h.base_seq);
        *e = (*e).min(h.base_seq);
    }
    for (key, h) in heads {
        if min_base.iter().any(|(&e, &b)| e > h.epoch && b < h.seq) {
            tracing::warn!(%key, epoch = h.epoch, "segment written by a fenced writer; ignored");
            continue;
        }
        if h.count == 0 {
            continue;
        }
        let start = segment::HEADER_LEN as u64;
        let ib = store
            .get_range(
                &key,
                start..start + u64::from(h.count) * segment::ENTRY_LEN as u64,
            )
            .await?;
        let entries = segment::decode_index(&h, &ib)
            .map_err(|e| VolumeError::Corrupt(format!("{key}: {e}")))?;
        for e in entries {
            map.apply(e.block, e.loc(h.seq));
        }
    }
    Ok((map, max_seq))
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
        let m = VolumeMeta {
            format: FORMAT_VERSION,
            block_size: BLOCK_SIZE as u64,
            size_bytes: cfg.size_bytes,
            uuid: format!("{:016x}", new_uuid(cfg.seed ^ 0x9e37_79b9_7f4a_7c15)),
        };
        match store
            .put_if(&meta_key, meta_bytes(&m)?, PutCondition::IfAbsent)
            .await
        {
            Ok(e) => break (m, e),
            Err(StoreError::PreconditionFailed(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let uuid = meta.uuid_u64().map_err(VolumeError::Corrupt)?;
    if cfg.size_bytes != 0 && cfg.size_bytes < meta.size_bytes {
        return Err(VolumeError::Unsupported(format!(
            "volume {} is {} bytes; shrinking to {} is not supported",
            cfg.name, meta.size_bytes, cfg.size_bytes
        )));
    }
    // 2. Lease.
    let acq = lease::acquire(store.as_ref(), &keys, cfg.lease_rules(), cfg.takeover).await?;
    if cfg.size_bytes > meta.size_bytes {
        let m = VolumeMeta {
            size_bytes: cfg.size_bytes,
            ..meta.clone()
        };
        etag = store
            .put_if(&meta_key, meta_bytes(&m)?, PutCondition::IfMatch(etag))
            .await?;
        meta = m;
    }
    let size = meta.size_bytes;
    // 3. Store map.
    let (smap, max_seq) = load_store_map(store.as_ref(), &keys, uuid).await?;
    // 4. Local state.
    let local_ours = acq.prev_owner.as_deref().is_none_or(|o| o == cfg.owner);
    let fs = cfg.fileio.clone();
    let dir = cfg.cache_dir.clone();
    let (data, replayed, boot_id, journal) = smol::unblock(move || -> Result<_, VolumeError> {
        let io = |c: &str, e| VolumeError::io(format!("{c} in {}", dir.display()), e);
        fs.create_dir_all(&dir).map_err(|e| io("creating cache dir", e))?;
        let data = fs.open(&dir.join("data"), true).map_err(|e| io("opening cache file", e))?;
        let mut replayed = None;
        if local_ours {
            replayed = journal::replay(&*fs, &dir, uuid, &*data)?;
        } else {
            tracing::warn!(dir = %dir.display(), "lease was held by another owner; discarding local cache");
        }
        let boot_id = fs.boot_id();
        let (map, errors, last_gen, tail) = match replayed {
            Some(r) => (r.map, r.checksum_errors, r.last_gen, r.tail),
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
            return Ok((data, (map, errors), boot_id, j));
        }
        if cur != size {
            data.set_len(size).map_err(|e| io("sizing cache file", e))?;
        }
        // Fresh checkpoint: the replayed state becomes the base, journal starts anew.
        let gen = last_gen + 1;
        let j = Journal::create(&*fs, &dir, gen, uuid).map_err(|e| io("creating journal", e))?;
        data.sync_data().map_err(|e| io("syncing cache file", e))?;
        let st = LocalState::from_map(uuid, gen, false, boot_id.clone(), &map);
        fileio::write_atomic(&*fs, &journal::state_path(&dir), &st.encode()).map_err(|e| io("writing state", e))?;
        for g in journal::list_journals(&*fs, &dir).map_err(|e| io("listing", e))? {
            if g < gen {
                fs.remove_file(&journal::journal_path(&dir, g)).map_err(|e| io("removing journal", e))?;
            }
        }
        Ok((data, (map, errors), boot_id, j))
    })
    .await?;
    rng_seed ^= 0x2545_f491_4f6c_dd1d;
    let (map, errors) = replayed;
    let stats = Stats::default();
    stats.checksum_errors.store(errors, Ordering::Relaxed);
    let last_committed = max_seq;
    let inner = Inner {
        base_seq: max_seq,
        keys,
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
        }),
        sync_lock: async_lock::Mutex::new(()),
        meta: async_lock::Mutex::new((meta, etag)),
        lease: Mutex::new(acq.held),
        changed: Event::new(),
        kick: Event::new(),
        kick_flag: AtomicBool::new(false),
        stats,
        closed: AtomicBool::new(false),
        bg_stop: AtomicBool::new(false),
        file_ops: Mutex::new(()),
        failed: AtomicBool::new(false),
        fenced: Mutex::new(None),
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
