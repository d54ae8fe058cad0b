//! Volume configuration ([`VolumeConfig`]) and the injected clock.
//!
//! Everything the engine needs from its environment is injected here: the file layer
//! (so tests can simulate power loss), the clock (lease staleness) and the RNG seed
//! (retry jitter, volume uuids), so model and crash tests are deterministic.

use super::fileio::{FileIo, RealFs};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::clock::{Clock, SystemClock};

/// When a guest FLUSH / FUA write returns (`cache.flush_mode` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// Data and journal fdatasync'ed on the local cache (survives power loss).
    #[default]
    Local,
    /// Additionally wait until everything acknowledged is committed to the store.
    Store,
}

/// Configuration of one volume. Build with [`VolumeConfig::new`] and adjust fields.
#[derive(Clone)]
pub struct VolumeConfig {
    /// Volume name: the export name, see [`crate::rules::validate_name`].
    pub name: String,
    /// Size in bytes (multiple of 4 KiB). When the volume exists in the store, a larger
    /// value grows it, a smaller one is an error, and 0 means "use the stored size".
    pub size_bytes: u64,
    /// Per-volume cache directory (cache file, journal, local state).
    pub cache_dir: PathBuf,
    /// Dirty bytes beyond which writes wait for the flusher (never fail).
    pub dirty_limit_bytes: u64,
    /// The flusher uploads dirty data at least this often.
    pub flush_interval: Duration,
    /// What FLUSH/FUA wait for.
    pub flush_mode: FlushMode,
    /// zstd-compress segment entries when it saves space.
    pub compress: bool,
    /// Write a manifest (checkpoint) object every this many segments.
    pub checkpoint_every: u32,
    /// Target payload of one segment object (see [`crate::rules::SEGMENT_TARGET`]).
    pub max_segment_bytes: u64,
    /// Compact segments whose live bytes are below this percentage of their size
    /// (0 switches compaction off).
    pub compact_below_live_pct: u8,
    /// Merge a fragmented block once none of its extents was written for this long
    /// (see [`crate::rules::MERGE_COLD_AFTER`]); off with compaction.
    pub merge_cold_after: Duration,
    /// Delete a segment that holds nothing live this long after garbage collection
    /// first found it so (see [`crate::rules::GC_GRACE`]).
    pub gc_grace: Duration,
    /// Compact the journal (local checkpoint + new journal) beyond this size.
    pub journal_compact_bytes: u64,
    /// A lease not renewed for this long may be taken by another owner.
    pub lease_ttl: Duration,
    /// Take the lease even when another owner holds it (operator override).
    pub takeover: bool,
    /// Lease owner identity: unique per host and cache directory (the daemon uses
    /// its random host id, see `daemon::host_identity`); default
    /// `<hostname>:<cache_dir>`.
    pub owner: String,
    /// Human-readable name of this host, written into the lease for display only.
    pub host_label: String,
    /// Backoff ceiling of the first retry of a flush or a miss fetch (doubles up to
    /// `retry_max`, with jitter; see [`crate::backoff`]).
    pub retry_base: Duration,
    /// Largest retry delay.
    pub retry_max: Duration,
    /// Attempts for a cache-miss GET before the read fails with EIO.
    pub read_attempts: u32,
    /// File layer (real files, or the power-loss simulator in tests).
    pub fileio: Arc<dyn FileIo>,
    /// Clock used for lease timestamps.
    pub clock: Arc<dyn Clock>,
    /// Seed of the RNG used for jitter and new volume uuids (0 = from the OS).
    pub seed: u64,
    /// The host's cache of ancestors' extents (a fork reads them from it instead of
    /// filling its own cache file); `None`: forks fill their own.
    pub shared_cache: Option<Arc<super::shared_cache::SharedCache>>,
    /// Master keys (`[store.encryption]`): new volumes are encrypted with a data key
    /// they wrap; `None`: new volumes are plaintext and encrypted ones cannot open.
    pub encryption: Option<Arc<super::crypto::MasterKeys>>,
}

impl fmt::Debug for VolumeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolumeConfig")
            .field("name", &self.name)
            .field("size_bytes", &self.size_bytes)
            .field("cache_dir", &self.cache_dir)
            .field("dirty_limit_bytes", &self.dirty_limit_bytes)
            .field("flush_interval", &self.flush_interval)
            .field("flush_mode", &self.flush_mode)
            .field("compress", &self.compress)
            .field("checkpoint_every", &self.checkpoint_every)
            .field("compact_below_live_pct", &self.compact_below_live_pct)
            .field("merge_cold_after", &self.merge_cold_after)
            .field("gc_grace", &self.gc_grace)
            .field("owner", &self.owner)
            .field(
                "encryption",
                &self.encryption.as_ref().map(|m| m.current.id.clone()),
            )
            .finish_non_exhaustive()
    }
}

/// This host's name (`localhost` when empty): for display only. From uname(2), not
/// `/proc/sys/kernel/hostname`, which glidefs.service's `ProcSubset=pid` hides.
pub fn hostname() -> String {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .trim()
        .to_string();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

impl VolumeConfig {
    /// Defaults: [`crate::rules::DIRTY_LIMIT`] (1 GiB) dirty limit,
    /// [`crate::rules::FLUSH_INTERVAL`] (5 s) flush interval, local flush mode, zstd on,
    /// manifest every 16 segments, 96 MiB segments ([`crate::rules::SEGMENT_TARGET`]),
    /// compaction below 70 % live, 300 s lease TTL (renewed every
    /// TTL/3 by the flusher: one conditional PUT per volume per 100 s when idle).
    pub fn new(name: impl Into<String>, size_bytes: u64, cache_dir: impl Into<PathBuf>) -> Self {
        let cache_dir = cache_dir.into();
        let host_label = hostname();
        let owner = format!("{host_label}:{}", cache_dir.display());
        VolumeConfig {
            name: name.into(),
            size_bytes,
            cache_dir,
            dirty_limit_bytes: crate::rules::DIRTY_LIMIT,
            flush_interval: crate::rules::FLUSH_INTERVAL,
            flush_mode: FlushMode::Local,
            compress: true,
            checkpoint_every: 16,
            max_segment_bytes: crate::rules::SEGMENT_TARGET,
            compact_below_live_pct: crate::rules::COMPACT_BELOW_LIVE_PCT,
            merge_cold_after: crate::rules::MERGE_COLD_AFTER,
            gc_grace: crate::rules::GC_GRACE,
            journal_compact_bytes: 4 << 20,
            lease_ttl: crate::rules::LEASE_TTL,
            takeover: false,
            owner,
            host_label,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            read_attempts: 3,
            fileio: Arc::new(RealFs),
            clock: Arc::new(SystemClock),
            shared_cache: None,
            encryption: None,
            seed: 0,
        }
    }

    /// Where dirty data that can no longer be uploaded is moved (see
    /// [`super::diverged`]): `<parent of cache_dir>/.diverged`, beside every
    /// volume's cache directory.
    pub fn set_aside_dir(&self) -> PathBuf {
        self.cache_dir
            .parent()
            .map(|p| p.join(".diverged"))
            .unwrap_or_else(|| PathBuf::from(".diverged"))
    }
}

impl VolumeConfig {
    /// This volume's identity and timing for [`super::lease`].
    pub fn lease_rules(&self) -> super::lease::Rules<'_> {
        super::lease::Rules {
            owner: &self.owner,
            host: &self.host_label,
            ttl_ms: self.lease_ttl.as_millis() as u64,
            clock: self.clock.as_ref(),
        }
    }
}
