//! The volume engine: one per export, no kernel dependency.
//!
//! A volume is a sparse local cache file plus a journal in `cache_dir`, and a
//! log of immutable segment objects in the store (formats: docs/format.md).
//!
//! Data path (datapath.rs):
//! - `write`: data pwrite into the cache file, WRITE journal record (with per-sector
//!   crc32c) reserved, block map update - all under the volume's state lock; before the
//!   acknowledgement the journal file holds the record (group commit: concurrent
//!   writes' records go out in one pwrite, see `Inner::journal_commit`). Sub-block
//!   writes never wait on the store; a write that covers only part of a 4 KiB sector
//!   not yet cached fetches that block first.
//! - `read`: valid sectors come from the cache file; blocks absent from the store
//!   read as zeros; otherwise one ranged GET of the block's segment entry, verified,
//!   written into the cache (single-flight per block).
//! - the flusher (one task on smol's global executor) uploads dirty blocks as one
//!   segment per batch and marks them clean unless rewritten meanwhile (generation
//!   counters); see [`flusher`].
//!
//! Locking: `Inner::st` (parking_lot) is never held across an await; `sync_lock`
//! (async) orders FLUSH against journal rotation. Lock order: sync_lock → st.
//!
//! INTERFACE CONTRACT (used by the router and the ublk target adapter):
//! ```text
//! VolumeConfig::new(name, size, cache_dir) + pub fields
//! Volume::open(cfg, store) -> Result<Arc<Volume>, VolumeError>   // create, reopen, or cold wake
//! Volume::exists_in_store(&store, name) -> Result<Option<u64 /*size*/>, VolumeError>
//! Volume::purge(&store, name, rules, force) -> Result<(), VolumeError> // remote objects only
//! Volume::purge_cache(&cfg) -> Result<(), VolumeError>            // local cache dir
//! vol.size_bytes() -> u64
//! vol.read(offset, &mut buf).await; vol.write(offset, &data, fua).await
//! vol.flush().await; vol.discard(offset, len).await; vol.write_zeroes(offset, len).await
//! vol.drain().await; vol.grow(new_size).await; vol.close().await; vol.stats()
//! ```

mod admin;
mod background_cpu;
pub mod blockmap;
mod compaction;
pub mod config;
pub mod crypto;
mod datapath;
pub mod diverged;
pub mod error;
mod fencing;
mod fetch;
pub mod fileio;
mod flusher;
mod fork;
pub mod journal;
pub mod keyring;
pub mod keys;
pub(crate) mod le;
pub mod lease;
pub mod lineage;
pub mod manifest;
mod meta_io;
mod open;
mod readahead;
pub mod rewrap;
pub mod segment;
pub mod shared_cache;
pub mod snapshot;

pub use config::{Clock, FlushMode, SystemClock, VolumeConfig};
pub use error::VolumeError;
pub use fileio::{FileHandle, FileIo, RealFs, SimFs};
pub use snapshot::SnapshotInfo;

use crate::store::{ObjectStore, StoreTraffic, TrafficCounts};
use crate::{BLOCK_SIZE, SECTOR_SIZE};
use blockmap::{mask, LocalMap, StoreMap, SECTORS_PER_BLOCK};
use event_listener::Event;
use journal::{Journal, Record};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const BS: u64 = BLOCK_SIZE as u64;
const SS: u64 = SECTOR_SIZE as u64;
/// fdatasync rounds a FLUSH tries before it syncs with the state lock held.
const SYNC_ATTEMPTS: usize = 3;

/// Counters of one volume (a snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VolumeStats {
    /// Size of the volume.
    pub size_bytes: u64,
    /// Bytes acknowledged but not yet committed to the store.
    pub dirty_bytes: u64,
    /// Read chunks served without the store.
    pub cache_hits: u64,
    /// Read chunks that needed a store GET.
    pub cache_misses: u64,
    /// Blocks fetched ahead of a sequential reader (see `readahead.rs`).
    pub readahead_blocks: u64,
    /// Failed flush attempts (retried).
    pub flush_errors: u64,
    /// Segments committed.
    pub segments_written: u64,
    /// Bytes of segment objects uploaded.
    pub bytes_uploaded: u64,
    /// Bytes fetched from the store on misses.
    pub bytes_fetched: u64,
    /// Checksum failures (store entries, journal records, cache sectors at replay).
    pub checksum_errors: u64,
    /// Manifests written.
    pub manifests_written: u64,
    /// Objects deleted by garbage collection.
    pub gc_deleted: u64,
    /// The lease was lost: nothing more can be committed.
    pub fenced: bool,
    /// The lease could not be renewed in time: writes and FLUSHes are refused until
    /// it is (self-fencing).
    pub lease_expired: bool,
    /// Times writes started being refused for that reason.
    pub lease_expirations: u64,
    /// Dirty data found at open after another host wrote the volume was moved here.
    pub diverged: Option<std::path::PathBuf>,
    /// Bytes of segments the store map points into (sizes known from listings
    /// and uploads).
    pub store_segment_bytes: u64,
    /// Of those, bytes that are not live payload (dead extents, headers, index):
    /// what compaction and garbage collection reclaim.
    pub store_dead_bytes: u64,
    /// Live payload bytes of the volume's own segments.
    pub store_owned_bytes: u64,
    /// Live payload bytes a fork reads from its ancestors' segments (shared with
    /// them and their other forks; 0 for other volumes).
    pub store_shared_bytes: u64,
    /// Live bytes compaction rewrote into new segments.
    pub compacted_bytes: u64,
    /// Times the background flusher woke. A clean volume's flusher sleeps until a
    /// write, a kick or its lease renewal, so an idle volume adds about one wake-up
    /// per renewal period (`lease_ttl` / 3).
    pub flusher_wakeups: u64,
    /// Bytes of guest writes acknowledged (WRITE requests; not WRITE_ZEROES or
    /// DISCARD, which carry no data).
    pub client_bytes_written: u64,
    /// Every request this volume made to the store, and the bytes moved
    /// ([`crate::store::CountedStore`]).
    pub store: TrafficCounts,
}

impl VolumeStats {
    /// Bytes written to the store per byte of guest writes (0 before the first
    /// write). Includes the manifests, lease renewals and meta, not only segments.
    pub fn write_amplification(&self) -> f64 {
        if self.client_bytes_written == 0 {
            return 0.0;
        }
        self.store.bytes_written as f64 / self.client_bytes_written as f64
    }
}

#[derive(Default)]
pub(crate) struct Stats {
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub readahead_blocks: AtomicU64,
    pub flush_errors: AtomicU64,
    pub segments_written: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub checksum_errors: AtomicU64,
    pub manifests_written: AtomicU64,
    pub gc_deleted: AtomicU64,
    pub compacted_bytes: AtomicU64,
    pub lease_expirations: AtomicU64,
    pub flusher_wakeups: AtomicU64,
    pub client_bytes_written: AtomicU64,
    /// Shared with the [`crate::store::CountedStore`] the volume's store is wrapped in.
    pub store_traffic: Arc<StoreTraffic>,
}

pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Mutable state under `Inner::st`.
pub(crate) struct State {
    pub local: LocalMap,
    pub store: StoreMap,
    pub journal: Journal,
    /// Incremented by every write/zero (the order of acknowledgements).
    pub write_seq: u64,
    /// Blocks being fetched (single flight); waiters listen on the event.
    pub fetching: HashMap<u64, Arc<Event>>,
    /// Next segment sequence number.
    pub next_seq: u64,
    /// Newest committed segment.
    pub last_committed: u64,
    /// Segments committed since the last manifest.
    pub segs_since_manifest: u32,
    /// Compaction committed a segment since the last manifest (its emptied
    /// segments wait for the next manifest's garbage collection).
    pub compacted_since_manifest: bool,
    /// Segments garbage collection found holding nothing live, with the monotonic
    /// time (ms) it first did: deleted once `gc_grace` has passed. Nothing ever
    /// points into such a segment again (pieces only move to newer segments).
    pub gc_pending: BTreeMap<u64, u64>,
    /// Segments of the volume's own writes committed within `merge_cold_after`,
    /// with their commit time (ms): blocks with a piece in one are not cold.
    pub recent_uploads: VecDeque<(u64, u64)>,
    /// Bytes merges may still rewrite ([`crate::rules::MERGE_BUDGET_PCT`] of the
    /// bytes uploaded since open, less what merges spent).
    pub merge_credit: u64,
    /// What the volume's snapshots pin (`None` until loaded, see `snapshot.rs`).
    pub pins: Option<snapshot::Pins>,
}

/// The shared state of one open volume. Its fields are private to `volume` and the
/// files under it (open, datapath, fetch, flusher); nothing else in the crate sees
/// them, and the [`Volume`] handle is the only way in from outside.
pub(crate) struct Inner {
    cfg: VolumeConfig,
    store: Arc<dyn ObjectStore>,
    keys: keys::VolumeKeys,
    /// A fork's ancestors (empty otherwise): whose segments its older pieces are.
    lineage: lineage::Lineage,
    /// Data keys of an encrypted volume and its encrypted ancestors (empty: plaintext).
    keyring: keyring::Keyring,
    uuid: u64,
    /// Highest segment seq listed at open (recorded in our segments).
    base_seq: u64,
    boot_id: String,
    size: AtomicU64,
    data: Arc<dyn FileHandle>,
    st: Mutex<State>,
    sync_lock: async_lock::Mutex<()>,
    /// Held by garbage collection's deletions and by snapshot changes.
    gc_lock: async_lock::Mutex<()>,
    /// Etag of the meta object (for grow).
    meta: async_lock::Mutex<(manifest::VolumeMeta, String)>,
    lease: Mutex<lease::Held>,
    /// Keys of objects fenced writers landed late, for the next garbage collection.
    zombies: Mutex<Vec<String>>,
    /// Monotonic ms (cfg.clock) after which writes and FLUSHes are refused until the
    /// lease is renewed (self-fencing, see `lease::self_fence_after_ms`).
    lease_deadline: AtomicU64,
    /// Monotonic ms when the last successful renewal (or the acquisition) began.
    last_renew: AtomicU64,
    /// Renewals since the last confirmed one whose outcome is unknown (the PUT
    /// failed, but may have landed): (the `renewed_at_ms` each wrote, monotonic ms
    /// when each began). If a later attempt finds one of them stored, it landed.
    unsure_renewals: Mutex<Vec<(u64, u64)>>,
    /// Writes are being refused because the deadline passed.
    lease_expired: AtomicBool,
    /// A manifest of our epoch was committed: the lease's fences are redundant.
    wrote_manifest: AtomicBool,
    /// Where dirty data found at open was set aside (written elsewhere meanwhile).
    diverged: Mutex<Option<std::path::PathBuf>>,
    /// Notified when dirty data was committed, or on fencing/close.
    changed: Event,
    /// Wakes the flusher.
    kick: Event,
    kick_flag: AtomicBool,
    /// The flusher sleeps because nothing is dirty: the next write must wake it
    /// (through `dirtied`) to start the write-back delay.
    flusher_idle: AtomicBool,
    dirtied: Event,
    stats: Stats,
    /// Sequential readahead's stream and prefetches.
    readahead: readahead::Readahead,
    closed: AtomicBool,
    /// Set before the flusher is stopped: blocking jobs it queued must not run.
    bg_stop: AtomicBool,
    /// Held by every blocking job that changes local files (journal rotation,
    /// state file), so stopping the flusher can wait for a running one.
    file_ops: Mutex<()>,
    failed: AtomicBool,
    fenced: Mutex<Option<String>>,
    rng: Mutex<u64>,
}

impl Inner {
    /// The key of segment `seq`: the volume's own, or an ancestor's (a fork).
    pub(crate) fn segment_key(&self, seq: u64) -> String {
        self.lineage.segment_key(&self.keys, seq)
    }

    /// How payloads of segment `seq` (ours or an ancestor's) are opened, for block `b`.
    pub(crate) fn opener(&self, seq: u64, b: u64) -> segment::Opener<'_> {
        let (uuid, key) = self.frame_key(seq);
        segment::Opener::new(key, uuid, b)
    }

    /// The uuid of the volume that wrote segment `seq` and its data key (`None`:
    /// plaintext).
    pub(crate) fn frame_key(&self, seq: u64) -> (u64, Option<&crypto::FrameKey>) {
        match self.lineage.owner_uuid(seq) {
            Some(u) => (u, self.keyring.ancestor(u)),
            None => (self.uuid, self.keyring.own()),
        }
    }

    /// The key that seals this volume's own objects (`None`: plaintext volume).
    pub(crate) fn seal_key(&self) -> Option<&crypto::FrameKey> {
        self.keyring.own()
    }

    /// The volume uuid as `meta` and snapshots spell it.
    pub(crate) fn uuid_hex(&self) -> String {
        format!("{:016x}", self.uuid)
    }

    pub(crate) fn size_bytes(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub fn kick(&self) {
        self.kick_flag.store(true, Ordering::Release);
        self.kick.notify(usize::MAX);
    }
    /// After a write made blocks dirty: wake a flusher that sleeps because the volume
    /// was clean. One relaxed load per write otherwise. No wake-up is lost: the
    /// flusher sets `flusher_idle` before it looks at the dirty set under `st`, and
    /// a writer marks blocks dirty under `st` before it calls this.
    pub(crate) fn note_dirtied(&self) {
        if self.flusher_idle.load(Ordering::Relaxed)
            && self.flusher_idle.swap(false, Ordering::SeqCst)
        {
            self.dirtied.notify(usize::MAX);
        }
    }
    pub fn fail(&self, context: &str, e: std::io::Error) -> VolumeError {
        tracing::error!(volume = %self.cfg.name, %context, error = %e, "local I/O error; volume failed");
        self.failed.store(true, Ordering::Release);
        self.changed.notify(usize::MAX);
        VolumeError::io(context, e)
    }
    pub fn set_fenced(&self, msg: String) {
        tracing::error!(volume = %self.cfg.name, %msg, "volume fenced");
        *self.fenced.lock() = Some(msg);
        self.changed.notify(usize::MAX);
    }
    /// Error out of background work once the flusher is being stopped.
    pub fn check_bg(&self) -> Result<(), VolumeError> {
        if self.bg_stop.load(Ordering::Acquire) {
            return Err(VolumeError::Closed);
        }
        Ok(())
    }
    /// Writes and FLUSHes: refused once the lease could not be renewed in time
    /// (self-fencing) - another host may take the volume after the TTL.
    pub fn check_lease_time(&self) -> Result<(), VolumeError> {
        let now = self.cfg.clock.mono_ms();
        let deadline = self.lease_deadline.load(Ordering::Acquire);
        if now <= deadline {
            return Ok(());
        }
        if !self.lease_expired.swap(true, Ordering::AcqRel) {
            bump(&self.stats.lease_expirations, 1);
            tracing::error!(
                volume = %self.cfg.name,
                overdue_ms = now - deadline,
                "lease not renewed in time: refusing writes and FLUSHes until it is (another host may take the volume)"
            );
        }
        Err(VolumeError::LeaseExpired(format!(
            "lease of {} not renewed for {} ms",
            self.cfg.name,
            now.saturating_sub(self.last_renew.load(Ordering::Acquire))
        )))
    }
    /// A renewal that began at `started` (monotonic ms) was written.
    pub fn renewed(&self, started: u64) {
        self.last_renew.store(started, Ordering::Release);
        let ttl = self.cfg.lease_ttl.as_millis() as u64;
        self.lease_deadline
            .store(started + lease::self_fence_after_ms(ttl), Ordering::Release);
        if self.lease_expired.swap(false, Ordering::AcqRel) {
            tracing::warn!(volume = %self.cfg.name, "lease renewed: accepting writes again");
        }
    }
    pub fn check_live(&self) -> Result<(), VolumeError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(VolumeError::Closed);
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(VolumeError::io(
                "volume failed after a local I/O error",
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        if let Some(m) = self.fenced.lock().clone() {
            return Err(VolumeError::Fenced(m));
        }
        Ok(())
    }
    /// The sleep before retry `retry` (1-based) of a flush or a miss fetch: the crate's
    /// one backoff rule between `cfg.retry_base` and `cfg.retry_max`, jittered by the
    /// volume's seeded RNG.
    pub fn backoff(&self, retry: u32) -> std::time::Duration {
        crate::backoff::Backoff {
            base: self.cfg.retry_base,
            max: self.cfg.retry_max,
        }
        .delay(retry, self.rand())
    }
    /// Next pseudo-random number (xorshift64*), for jitter.
    pub fn rand(&self) -> u64 {
        let mut s = self.rng.lock();
        let mut x = *s;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *s = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Write sectors `s0..` of block `b` (sector-aligned `buf`) under the state lock:
    /// cache pwrite, journal record (reserved, see `Inner::journal_commit`), map
    /// update. Returns the journal ticket the write must see written before it is
    /// acknowledged: it covers its own record and every earlier one (a rewrite of a
    /// sector whose record is still pending needs that record too).
    pub fn commit_write(
        &self,
        st: &mut State,
        b: u64,
        s0: usize,
        buf: &[u8],
    ) -> Result<u64, VolumeError> {
        let n = buf.len() / SECTOR_SIZE;
        let m = mask(s0, n);
        self.data
            .write_at(buf, b * BS + s0 as u64 * SS)
            .map_err(|e| self.fail("cache write", e))?;
        // Only a sector that becomes dirty needs a record (see journal.rs).
        if st.local.get(b).dirty & m != m {
            st.journal
                .append_write_deferred(b * SECTORS_PER_BLOCK as u64 + s0 as u64, buf);
        }
        st.write_seq += 1;
        let ws = st.write_seq;
        st.local.mark_written(b, m, ws);
        Ok(st.journal.ticket())
    }

    /// Wait until the journal records up to `ticket` are in the journal file (the page
    /// cache). Group commit: a writer whose record is pending yields once, so the
    /// other requests its worker is handling reserve theirs; the first to run again
    /// writes all of them with one pwrite.
    pub async fn journal_commit(&self, ticket: u64) -> Result<(), VolumeError> {
        if self.st.lock().journal.is_written(ticket) {
            return Ok(());
        }
        futures_lite::future::yield_now().await;
        let mut st = self.st.lock();
        if st.journal.is_written(ticket) {
            return Ok(());
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(VolumeError::io(
                "volume failed after a local I/O error",
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        st.journal
            .write_pending()
            .map_err(|e| self.fail("journal append", e))
    }
}

/// One open volume. Cheap to share (`Arc<Volume>`); all I/O methods take `&self`.
pub struct Volume {
    inner: Arc<Inner>,
    flusher: Mutex<Option<smol::Task<()>>>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("name", &self.inner.cfg.name)
            .field("size", &self.size_bytes())
            .finish_non_exhaustive()
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        // Dropping the task cancels the flusher at its next await point.
        self.flusher.lock().take();
    }
}

impl Volume {
    /// Open a volume: create it (absent in the store), reopen it (replaying the
    /// journal after a crash) or cold-wake it from the store (empty cache dir).
    /// Takes the lease; see [`lease`].
    pub async fn open(
        cfg: VolumeConfig,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Arc<Volume>, VolumeError> {
        let inner = open::open(cfg, store).await?;
        let task = flusher::spawn(inner.clone());
        Ok(Arc::new(Volume {
            inner,
            flusher: Mutex::new(Some(task)),
        }))
    }

    /// Size of volume `name` if it exists in the store.
    pub async fn exists_in_store(
        store: &Arc<dyn ObjectStore>,
        name: &str,
    ) -> Result<Option<u64>, VolumeError> {
        admin::exists_in_store(store.as_ref(), name).await
    }

    /// Make volume `child` a copy-on-write fork of snapshot `snap` of `parent`
    /// (`size_bytes` 0: the snapshot's size; larger grows it). Only metadata is
    /// written; open `child` like any volume afterwards. With `masters` the fork is
    /// encrypted (and holds its encrypted ancestors' data keys); an encrypted parent
    /// needs them. An existing `child` is
    /// [`VolumeError::AlreadyExists`], an unknown snapshot [`VolumeError::NotFound`].
    pub async fn fork(
        store: &Arc<dyn ObjectStore>,
        parent: &str,
        snap: &str,
        child: &str,
        size_bytes: u64,
        masters: Option<&crypto::MasterKeys>,
    ) -> Result<u64, VolumeError> {
        fork::create(
            store.as_ref(),
            fork::ForkOf { parent, snap },
            child,
            size_bytes,
            rand::random::<u64>() | 1,
            masters,
        )
        .await
    }

    /// Delete every object of volume `name` (segments, manifests, meta, lease last).
    /// What forks of its snapshots still read is kept (see `fork.rs`), and purging
    /// a fork releases what it kept of its ancestors. The caller must have closed
    /// the volume. Refused with
    /// [`VolumeError::LeaseHeld`] (nothing deleted) while another owner than
    /// `rules.owner` holds a lease that is not stale, unless `force`. An encrypted
    /// volume's data key is erased first (crypto-erase, see `keyring.rs`);
    /// `masters` lets the purge read its snapshots to keep only what forks need.
    pub async fn purge(
        store: &Arc<dyn ObjectStore>,
        name: &str,
        rules: lease::Rules<'_>,
        force: bool,
        masters: Option<&crypto::MasterKeys>,
    ) -> Result<(), VolumeError> {
        admin::purge(store.as_ref(), name, rules, force, masters).await
    }

    /// Re-wrap volume `name`'s data keys under `masters.current` unless a live lease
    /// holder serves it (see [`rewrap`]); `dry_run` only says what would happen.
    pub async fn rewrap_keys(
        store: &Arc<dyn ObjectStore>,
        name: &str,
        masters: &crypto::MasterKeys,
        rules: lease::Rules<'_>,
        dry_run: bool,
    ) -> Result<rewrap::Rewrap, VolumeError> {
        rewrap::rewrap(store.as_ref(), name, masters, rules, dry_run).await
    }

    /// Every volume in the store (names with a `meta` object), sorted.
    pub async fn names_in_store(store: &Arc<dyn ObjectStore>) -> Result<Vec<String>, VolumeError> {
        rewrap::volume_names(store.as_ref()).await
    }

    /// Delete the local cache directory of a (closed) volume. Dirty data it still
    /// holds (never uploaded: the volume was fenced) is set aside first, never
    /// deleted (see [`diverged`]).
    pub fn purge_cache(cfg: &VolumeConfig) -> Result<(), VolumeError> {
        let fs = &*cfg.fileio;
        if let Some((uuid, dirty)) = diverged::local_dirty(fs, &cfg.cache_dir)? {
            let to = diverged::set_aside(
                fs,
                &cfg.cache_dir,
                &cfg.set_aside_dir(),
                diverged::Aside {
                    name: &cfg.name,
                    uuid,
                    map: &dirty,
                    reason: "removed",
                    now_ms: cfg.clock.now_ms(),
                },
            )
            .map_err(|e| VolumeError::io("setting aside dirty data", e))?;
            tracing::warn!(volume = %cfg.name, dirty_bytes = dirty.dirty_sectors * SS, set_aside = %to.display(), "cache removed with dirty data never uploaded: set aside");
        }
        cfg.fileio
            .remove_dir_all(&cfg.cache_dir)
            .map_err(|e| VolumeError::io(format!("removing {}", cfg.cache_dir.display()), e))
    }

    /// Delete the local cache directory of a (closed) volume whose objects were
    /// purged: dirty data never uploaded goes with it. The operator destroyed the
    /// volume; setting that data aside (as [`purge_cache`](Self::purge_cache) does)
    /// would keep a copy of what was meant to be gone.
    pub fn discard_cache(cfg: &VolumeConfig) -> Result<(), VolumeError> {
        let fs = &*cfg.fileio;
        if let Some((_, dirty)) = diverged::local_dirty(fs, &cfg.cache_dir)? {
            tracing::info!(volume = %cfg.name, dirty_bytes = dirty.dirty_sectors * SS, "purged: dirty data never uploaded discarded with the cache");
        }
        cfg.fileio
            .remove_dir_all(&cfg.cache_dir)
            .map_err(|e| VolumeError::io(format!("removing {}", cfg.cache_dir.display()), e))
    }

    /// Every set-aside directory of diverged dirty data under `set_aside_dir`.
    pub fn list_diverged(
        fs: &dyn FileIo,
        set_aside_dir: &std::path::Path,
    ) -> Result<Vec<diverged::DivergedEntry>, VolumeError> {
        diverged::list(fs, set_aside_dir)
            .map_err(|e| VolumeError::io(format!("listing {}", set_aside_dir.display()), e))
    }

    /// Current size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.inner.size.load(Ordering::Acquire)
    }

    /// Volume name.
    pub fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    /// Make every completed write durable: fdatasync cache data and journal
    /// (and in [`FlushMode::Store`], wait for the store commit).
    pub async fn flush(&self) -> Result<(), VolumeError> {
        let inner = &self.inner;
        inner.check_live()?;
        inner.check_lease_time()?;
        if inner.cfg.flush_mode == FlushMode::Store {
            // drain ends with a local sync.
            return self.drain().await;
        }
        self.sync_local().await
    }

    async fn sync_local(&self) -> Result<(), VolumeError> {
        let inner = &self.inner;
        let _g = inner.sync_lock.lock().await;
        // A SYNC record vouches for every record before it (replay after a power loss
        // does not verify them), so it may only follow an fdatasync that began after
        // those records' data was written: a write landing during the fdatasync would
        // get its record before SYNC with its data perhaps not on disk. Retry while
        // records keep arriving; then sync with the state lock held (writes wait).
        let mut journal = None;
        for _ in 0..SYNC_ATTEMPTS {
            let before = inner.st.lock().journal.ticket();
            let data = inner.data.clone();
            smol::unblock(move || data.sync_data())
                .await
                .map_err(|e| inner.fail("fdatasync", e))?;
            let mut st = inner.st.lock();
            if st.journal.ticket() == before {
                journal = Some(Self::append_sync(inner, &mut st)?);
                break;
            }
        }
        let j = match journal {
            Some(j) => j,
            None => {
                let mut st = inner.st.lock();
                inner
                    .data
                    .sync_data()
                    .map_err(|e| inner.fail("fdatasync", e))?;
                Self::append_sync(inner, &mut st)?
            }
        };
        smol::unblock(move || j.sync_data())
            .await
            .map_err(|e| inner.fail("fdatasync", e))
    }

    /// Append a SYNC record; returns the journal file to fdatasync.
    fn append_sync(inner: &Inner, st: &mut State) -> Result<Arc<dyn FileHandle>, VolumeError> {
        st.journal
            .append(&Record::Sync)
            .map_err(|e| inner.fail("journal append", e))?;
        Ok(st.journal.file.clone())
    }

    /// Wait until everything acknowledged before this call is committed to the store.
    pub async fn drain(&self) -> Result<(), VolumeError> {
        let inner = &self.inner;
        let target = inner.st.lock().write_seq;
        loop {
            inner.check_live()?;
            let l = inner.changed.listen();
            let done = {
                let st = inner.st.lock();
                st.local.oldest_dirty().is_none_or(|s| s > target)
            };
            if done {
                // Make the CLEAN records durable too, so a later power loss cannot
                // bring back older local data over what was drained.
                return self.sync_local().await;
            }
            inner.kick();
            l.await;
        }
    }

    /// Take snapshot `name`: an immutable image of everything acknowledged before
    /// the call (the volume is drained first). A name in use is
    /// [`VolumeError::AlreadyExists`].
    pub async fn snapshot(&self, name: &str) -> Result<SnapshotInfo, VolumeError> {
        self.drain().await?;
        self.inner.check_live()?;
        snapshot::create(&self.inner, name).await
    }

    /// The volume's snapshots, by name.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotInfo>, VolumeError> {
        self.inner.check_live()?;
        snapshot::list(&self.inner).await
    }

    /// Delete snapshot `name` ([`VolumeError::NotFound`] if there is none).
    pub async fn delete_snapshot(&self, name: &str) -> Result<(), VolumeError> {
        self.inner.check_live()?;
        snapshot::delete(&self.inner, name).await
    }

    /// Grow the volume to `new_size` (a larger multiple of 4 KiB).
    pub async fn grow(&self, new_size: u64) -> Result<(), VolumeError> {
        self.inner.check_live()?;
        admin::grow(&self.inner, new_size).await
    }

    /// Stop the flusher (without draining) and make the local state durable
    /// (cache data, journal, state file). Nothing remote is released.
    pub async fn close(&self) -> Result<(), VolumeError> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        inner.readahead.cancel();
        self.stop_flusher().await;
        if inner.failed.load(Ordering::Acquire) {
            return Err(VolumeError::Closed);
        }
        flusher::checkpoint_local(inner, true, false).await
    }

    /// Stop the flusher ahead of [`close`](Self::close), at shutdown while the device
    /// still serves I/O: an upload in flight finishes (bounded) with the guest's I/O
    /// still flowing. Reads, writes and local FLUSHes keep working; what waits for
    /// the store (drain, a store-mode FLUSH, writers at the dirty limit) waits.
    /// Then a local checkpoint (the flusher's own, not a clean close) syncs the
    /// cache data, so the close after the device stopped has little left to sync.
    pub async fn stop_background(&self) {
        self.stop_flusher().await;
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) || inner.failed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = flusher::checkpoint_local(inner, false, false).await {
            tracing::warn!(volume = %inner.cfg.name, error = %e, "checkpoint before close failed");
        }
    }

    /// Wait until the readahead in flight has filled the cache (tests).
    #[doc(hidden)]
    pub async fn settle_readahead(&self) {
        self.inner.readahead.settle().await;
    }

    /// Simulate `kill -9` (tests): stop the flusher and refuse further I/O without
    /// syncing anything. What the engine wrote stays in the (simulated) page cache.
    #[doc(hidden)]
    pub async fn abandon(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.readahead.cancel();
        self.stop_flusher().await;
    }

    async fn stop_flusher(&self) {
        self.inner.bg_stop.store(true, Ordering::Release);
        self.inner.kick();
        let task = self.flusher.lock().take();
        if let Some(mut t) = task {
            // Let an in-flight store request finish (a cancelled PUT may still land
            // later); a hung store is cut off after the grace period.
            let grace = self
                .inner
                .cfg
                .retry_max
                .max(std::time::Duration::from_secs(1));
            let done = futures_lite::future::or(
                async {
                    (&mut t).await;
                    true
                },
                async {
                    smol::Timer::after(grace).await;
                    false
                },
            )
            .await;
            if !done {
                t.cancel().await;
            }
        }
        // Wait for a blocking job the flusher may have left running.
        drop(self.inner.file_ops.lock());
        self.inner.changed.notify(usize::MAX);
    }

    /// Counters.
    pub fn stats(&self) -> VolumeStats {
        let i = &self.inner;
        let s = &i.stats;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let top = i.lineage.top();
        let (dirty_sectors, store_segment_bytes, store_live_bytes, store_shared_bytes) = {
            let st = i.st.lock();
            let (mut size, mut live, mut shared) = (0u64, 0u64, 0u64);
            for (seq, u) in &st.store.segs {
                if *seq <= top {
                    shared += u.live;
                } else {
                    size += u.size;
                    live += u.live;
                }
            }
            (st.local.dirty_sectors, size, live, shared)
        };
        VolumeStats {
            size_bytes: self.size_bytes(),
            dirty_bytes: dirty_sectors * SS,
            cache_hits: l(&s.cache_hits),
            cache_misses: l(&s.cache_misses),
            readahead_blocks: l(&s.readahead_blocks),
            flush_errors: l(&s.flush_errors),
            segments_written: l(&s.segments_written),
            bytes_uploaded: l(&s.bytes_uploaded),
            bytes_fetched: l(&s.bytes_fetched),
            checksum_errors: l(&s.checksum_errors),
            manifests_written: l(&s.manifests_written),
            gc_deleted: l(&s.gc_deleted),
            fenced: i.fenced.lock().is_some(),
            lease_expired: i.lease_expired.load(Ordering::Acquire)
                || i.cfg.clock.mono_ms() > i.lease_deadline.load(Ordering::Acquire),
            lease_expirations: l(&s.lease_expirations),
            diverged: i.diverged.lock().clone(),
            store_segment_bytes,
            store_dead_bytes: store_segment_bytes.saturating_sub(store_live_bytes),
            store_owned_bytes: store_live_bytes,
            store_shared_bytes,
            compacted_bytes: l(&s.compacted_bytes),
            flusher_wakeups: l(&s.flusher_wakeups),
            client_bytes_written: l(&s.client_bytes_written),
            store: s.store_traffic.snapshot(),
        }
    }
}
