//! The router: export name → export (volume + device), persisted in the cache dir.
//!
//! Lifecycle: [`Router::new`] → [`Router::recover`] (load the registry, open every
//! volume in parallel, re-attach devices, then ready) → API operations →
//! [`Router::shutdown`]. See docs/operations.md.
//!
//! Files: this one holds the registry state, the helpers every operation shares,
//! shutdown and the metrics source; `ops.rs` the API operations (put, delete,
//! drain), `recover.rs` start-up recovery and the background re-open of exports
//! whose volume waited for the store, `error.rs` the error kinds, `backend.rs`
//! the traits the real layers (src/daemon/backends.rs) and the test fakes implement.
//!
//! Invariants:
//! - only names passing [`crate::rules::validate_name`] reach a path or the store;
//! - operations on one name are serialised by a per-name async lock; nothing slow
//!   (volume open/drain/close, device add/delete, registry write) runs under a lock
//!   shared between names, so creating or deleting one export never stalls another
//!   export's I/O (the I/O path never touches router state at all);
//! - lock order: per-name lock → the registry writer's locks → `state`; `state` is
//!   only held for map reads/writes, never across an await or a blocking call;
//! - the registry on disk is updated before the in-memory map: a crash never leaves a
//!   served export the next daemon does not know about;
//! - `max_exports` counts live exports plus creations in flight;
//! - a failed request changes nothing it can undo (device, volume, registry).

pub mod backend;
mod error;
#[cfg(test)]
mod fake;
mod ops;
mod recover;
pub mod registry;
mod registry_writer;
pub mod target;

use crate::rules::validate_name;
pub use backend::{BackendError, DeviceBackend, DeviceInfo, ExportVolume, VolumeFactory};
pub use error::{ErrorKind, RouterError};
pub use registry::{RegEntry, Registry, RegistryError};
pub use target::MeteredTarget;

use crate::metrics::{Metrics, StatsSource};
use crate::size::format_size;
use crate::ublk::IoTarget;
use crate::ublk::PoolStats;
use crate::volume::VolumeStats;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

/// Router settings (from the config).
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Cache directory (holds the registry).
    pub cache_dir: PathBuf,
    /// Most exports.
    pub max_exports: usize,
    /// Volumes opened/closed in parallel at start and stop.
    pub open_concurrency: usize,
    /// Backoff of the background re-opens of exports that waited for the store at
    /// start-up ([`crate::rules::REOPEN_BACKOFF`]).
    pub reopen_backoff: crate::backoff::Backoff,
}

/// An export's state as reported by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportState {
    /// Volume open (and device attached, when devices are enabled).
    Live,
    /// Recovery or a later step failed; see `error`. A PUT retries, DELETE removes.
    Failed,
    /// Another host took the volume's lease: writes fail; the dirty data this host
    /// could not upload is set aside when the export is deleted (docs/operations.md,
    /// "Fenced exports").
    Fenced,
    /// The lease could not be renewed in time (store unreachable): writes and FLUSHes
    /// fail until a renewal succeeds (self-fencing).
    LeaseExpired,
}

impl ExportState {
    /// Every state, in the order metrics list them.
    pub const ALL: [ExportState; 4] = [
        ExportState::Live,
        ExportState::Failed,
        ExportState::Fenced,
        ExportState::LeaseExpired,
    ];
    /// The API / metric label.
    pub fn label(self) -> &'static str {
        match self {
            ExportState::Live => "live",
            ExportState::Failed => "failed",
            ExportState::Fenced => "fenced",
            ExportState::LeaseExpired => "lease_expired",
        }
    }
}

/// What the API returns for an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportInfo {
    /// Export name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Size, human-readable.
    pub size: String,
    /// Block device path, `null` without a device.
    pub device: Option<String>,
    /// ublk device id, `null` without a device.
    pub dev_id: Option<u32>,
    /// `live` or `failed`.
    pub state: ExportState,
    /// Why the export failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a PUT did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new volume was created.
    Created,
    /// An existing volume was opened from the store (cold wake).
    Woken,
    /// The export was grown.
    Grown,
    /// Nothing to do: same size.
    Unchanged,
    /// A failed export was opened/attached again.
    Repaired,
}

/// Start-up recovery results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoverySummary {
    /// Exports live again.
    pub recovered: usize,
    /// Exports left failed (see GET for the reason).
    pub failed: usize,
}

#[derive(Clone)]
struct Entry {
    size_bytes: u64,
    dev_id_hint: Option<u32>,
    volume: Option<Arc<dyn ExportVolume>>,
    device: Option<DeviceInfo>,
    error: Option<String>,
    /// Device `dev_id_hint` was left QUIESCED by start-up recovery, waiting for this
    /// export's volume: re-attach it in place (or delete it with the export).
    parked: bool,
    /// The volume could not be opened because the store was unavailable: the
    /// background re-open ([`Router::reopen_waiting`]) keeps trying.
    reopen: bool,
}

#[derive(Default)]
struct State {
    exports: BTreeMap<String, Entry>,
    pending: usize,
}

/// The export registry and its operations.
pub struct Router {
    cfg: RouterConfig,
    volumes: Arc<dyn VolumeFactory>,
    devices: Option<Arc<dyn DeviceBackend>>,
    metrics: Arc<Metrics>,
    registry: registry_writer::RegistryWriter,
    state: RwLock<State>,
    name_locks: Mutex<HashMap<String, Weak<async_lock::Mutex<()>>>>,
    ready: AtomicBool,
    closing: AtomicBool,
    in_flight: AtomicUsize,
}

/// Counts a state-changing operation for [`Router::shutdown`], which waits for them.
struct OpGuard<'a>(&'a AtomicUsize);

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long shutdown waits for in-flight API operations before closing volumes.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Releases a `max_exports` reservation unless consumed.
struct Reservation<'a> {
    router: &'a Router,
    live: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.live {
            self.router.state.write().pending -= 1;
        }
    }
}

impl Router {
    /// Create a router (not ready until [`Router::recover`]); creates the cache dir.
    pub fn new(
        cfg: RouterConfig,
        volumes: Arc<dyn VolumeFactory>,
        devices: Option<Arc<dyn DeviceBackend>>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Router>, RouterError> {
        std::fs::create_dir_all(&cfg.cache_dir).map_err(|source| RegistryError::Io {
            path: cfg.cache_dir.clone(),
            source,
        })?;
        let router = Arc::new(Router {
            registry: registry_writer::RegistryWriter::new(Registry::new(&cfg.cache_dir)),
            cfg,
            volumes,
            devices,
            metrics: metrics.clone(),
            state: RwLock::new(State::default()),
            name_locks: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        });
        metrics.set_source(Arc::new(RouterStats(Arc::downgrade(&router))));
        if let Some(c) = router.volumes.shared_cache() {
            metrics.set_shared_cache(c);
        }
        Ok(router)
    }

    /// Whether start-up recovery is done (and the daemon not stopping).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.closing.load(Ordering::SeqCst)
    }

    fn check_open(&self) -> Result<(), RouterError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(RouterError::ShuttingDown);
        }
        if !self.ready.load(Ordering::SeqCst) {
            return Err(RouterError::NotReady);
        }
        Ok(())
    }

    /// Register a state-changing operation; refused once shutdown started. The
    /// increment-then-check order pairs with shutdown's set-then-wait.
    fn begin_op(&self) -> Result<OpGuard<'_>, RouterError> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = OpGuard(&self.in_flight);
        self.check_open()?;
        Ok(guard)
    }

    fn name_lock(&self, name: &str) -> Arc<async_lock::Mutex<()>> {
        let mut m = self.name_locks.lock();
        if let Some(l) = m.get(name).and_then(Weak::upgrade) {
            return l;
        }
        if m.len() >= 1024 {
            m.retain(|_, w| w.strong_count() > 0);
        }
        let l = Arc::new(async_lock::Mutex::new(()));
        m.insert(name.to_string(), Arc::downgrade(&l));
        l
    }

    /// Apply `f`, which changes at most the entries of `names`, to the persisted
    /// registry and return once it is on disk (requests in flight share registry
    /// writes: `registry_writer.rs`); on failure nothing changes.
    fn persist(
        &self,
        names: &[&str],
        f: impl FnOnce(&mut BTreeMap<String, RegEntry>),
    ) -> Result<(), RouterError> {
        Ok(self.registry.apply(names, f)?)
    }

    fn state_of(e: &Entry) -> ExportState {
        if e.error.is_some() {
            return ExportState::Failed;
        }
        match e.volume.as_ref().map(|v| v.counters()) {
            Some(c) if c.fenced => ExportState::Fenced,
            Some(c) if c.lease_expired => ExportState::LeaseExpired,
            _ => ExportState::Live,
        }
    }

    /// Number of exports in each state.
    pub fn state_counts(&self) -> Vec<(ExportState, usize)> {
        let st = self.state.read();
        ExportState::ALL
            .iter()
            .map(|&s| {
                (
                    s,
                    st.exports
                        .values()
                        .filter(|e| Self::state_of(e) == s)
                        .count(),
                )
            })
            .collect()
    }

    /// Dirty data set aside on this host (see [`VolumeFactory::list_diverged`]).
    pub fn diverged(&self) -> Result<Vec<crate::volume::diverged::DivergedEntry>, RouterError> {
        self.volumes
            .list_diverged()
            .map_err(|e| RouterError::Backend {
                name: String::new(),
                op: "list diverged data",
                source: e,
            })
    }

    fn info(name: &str, e: &Entry) -> ExportInfo {
        ExportInfo {
            name: name.to_string(),
            size_bytes: e.size_bytes,
            size: format_size(e.size_bytes),
            device: e.device.as_ref().map(|d| d.block_path.clone()),
            dev_id: e.device.as_ref().map(|d| d.dev_id),
            state: Self::state_of(e),
            error: e.error.clone(),
        }
    }

    /// All exports, sorted by name.
    pub fn list(&self) -> Vec<ExportInfo> {
        let st = self.state.read();
        st.exports.iter().map(|(n, e)| Self::info(n, e)).collect()
    }

    /// One export.
    pub fn get(&self, name: &str) -> Result<ExportInfo, RouterError> {
        validate_name(name).map_err(RouterError::InvalidName)?;
        let st = self.state.read();
        st.exports
            .get(name)
            .map(|e| Self::info(name, e))
            .ok_or_else(|| RouterError::NotFound(name.to_string()))
    }

    /// Number of exports in any state.
    pub fn len(&self) -> usize {
        self.state.read().exports.len()
    }

    /// Whether there are no exports.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn target(
        &self,
        name: &str,
        volume: &Arc<dyn ExportVolume>,
    ) -> Result<Arc<dyn IoTarget>, RouterError> {
        let io = self
            .metrics
            .export_io(name)
            .map_err(|e| RouterError::Metrics(e.to_string()))?;
        Ok(Arc::new(MeteredTarget::new(volume.clone(), io)))
    }

    /// The I/O target of a live export: what its device serves (volume + metrics).
    /// Lets host tests and no-device mode drive I/O without a kernel.
    pub fn io_target(&self, name: &str) -> Result<Arc<dyn IoTarget>, RouterError> {
        let volume = self
            .state
            .read()
            .exports
            .get(name)
            .and_then(|e| e.volume.clone())
            .ok_or_else(|| RouterError::NotFound(name.to_string()))?;
        self.target(name, &volume)
    }

    /// A snapshot of `name`'s entry, or NotFound.
    fn entry(&self, name: &str) -> Result<Entry, RouterError> {
        self.state
            .read()
            .exports
            .get(name)
            .cloned()
            .ok_or_else(|| RouterError::NotFound(name.to_string()))
    }

    fn set_entry(&self, name: &str, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.state.write().exports.get_mut(name) {
            f(e);
        }
    }

    /// Record `name` in the registry with its size and device.
    fn persist_entry(
        &self,
        name: &str,
        size_bytes: u64,
        device: Option<&DeviceInfo>,
    ) -> Result<(), RouterError> {
        let dev_id = device.map(|d| d.dev_id);
        self.persist(&[name], |p| {
            p.insert(
                name.to_string(),
                RegEntry {
                    name: name.to_string(),
                    size_bytes,
                    dev_id,
                },
            );
        })
    }

    /// The open volumes, by name (a snapshot: no lock is held afterwards).
    fn open_volumes(&self) -> Vec<(String, Arc<dyn ExportVolume>)> {
        self.state
            .read()
            .exports
            .iter()
            .filter_map(|(n, e)| e.volume.clone().map(|v| (n.clone(), v)))
            .collect()
    }

    /// Stop: refuse new requests, stop the data plane (leaving devices for the next
    /// daemon unless `stop_devices`), then close every volume (fdatasync journals).
    pub fn shutdown(&self, stop_devices: bool) {
        self.closing.store(true, Ordering::SeqCst);
        // Let API operations already past their checks finish (bounded: a drain
        // against a dead store would wait forever), so none races the closes below.
        let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            if std::time::Instant::now() >= deadline {
                tracing::warn!(
                    in_flight = self.in_flight.load(Ordering::SeqCst),
                    "shutting down with API operations still running"
                );
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Uploads in flight finish (each bounded by its volume's grace) while the
        // devices still serve I/O, so the guests' stall is only the handover below.
        let t0 = std::time::Instant::now();
        let vols = self.open_volumes();
        crate::parallel::map(self.cfg.open_concurrency, vols, |(_, v)| {
            smol::block_on(v.stop_background())
        });
        let t_bg = t0.elapsed().as_millis() as u64;
        if let Some(devs) = &self.devices {
            if stop_devices {
                // Devices still waiting for their volume are not served, so the
                // device layer does not know them: delete them here.
                let parked: Vec<u32> = self
                    .state
                    .read()
                    .exports
                    .values()
                    .filter(|e| e.parked && e.device.is_none())
                    .filter_map(|e| e.dev_id_hint)
                    .collect();
                for id in parked {
                    if let Err(e) = devs.delete(id) {
                        tracing::warn!(dev_id = id, error = %e, "deleting a waiting device at shutdown");
                    }
                }
            }
            devs.shutdown(stop_devices);
        }
        let t_devs = t0.elapsed().as_millis() as u64;
        // Listed again: an API operation still running past SHUTDOWN_GRACE may have
        // opened a volume since the first list.
        let vols = self.open_volumes();
        crate::parallel::map(self.cfg.open_concurrency, vols, |(name, v)| {
            if let Err(e) = smol::block_on(v.close()) {
                tracing::error!(export = %name, error = %e, "close failed");
            }
        });
        tracing::info!(
            uploads_stopped_ms = t_bg,
            devices_stopped_ms = t_devs - t_bg,
            volumes_closed_ms = t0.elapsed().as_millis() as u64 - t_devs,
            "shutdown steps"
        );
        // exports.json alone holds the registry after a clean stop (a downgrade to a
        // release without exports.log reads it whole).
        if let Err(e) = self.registry.compact() {
            tracing::warn!(error = %e, "folding the registry log into exports.json at shutdown");
        }
        self.ready.store(false, Ordering::SeqCst);
    }
}

/// Refuse to shrink an export of `current` bytes to `size`.
fn refuse_shrink(name: &str, current: u64, size: u64) -> Result<(), RouterError> {
    if size < current {
        return Err(RouterError::Conflict(format!(
            "export {name:?} is {}; shrinking is not supported",
            format_size(current)
        )));
    }
    Ok(())
}

/// Open the volume of a registered export of `registered` bytes. The store may hold
/// it larger than the registry says (a crash between growing the volume and writing
/// the registry, or a grow on another host): then the open at the registered size is
/// refused as a shrink, and the volume is opened at its stored size instead, which
/// the caller records. Any other failure is returned as it was.
async fn open_registered(
    volumes: &dyn VolumeFactory,
    name: &str,
    registered: u64,
) -> Result<Arc<dyn ExportVolume>, BackendError> {
    let first = match volumes.open(name, registered).await {
        Ok(v) => return Ok(v),
        // A shrink is refused as invalid; anything else (an outage above all) is
        // not worth another round trip.
        Err(e @ BackendError::Invalid(_)) => e,
        Err(e) => return Err(e),
    };
    match volumes.exists_in_store(name).await {
        Ok(Some(stored)) if stored > registered => {
            tracing::warn!(
                export = name,
                registered,
                stored,
                "the store holds the volume larger than the registry (interrupted grow?): adopting the stored size"
            );
            volumes.open(name, stored).await
        }
        _ => Err(first),
    }
}

/// Grow `volume` to `size` if it is smaller (a volume never shrinks).
async fn grow_to(volume: &Arc<dyn ExportVolume>, size: u64) -> Result<(), BackendError> {
    if volume.size_bytes() < size {
        volume.grow(size).await?;
    }
    Ok(())
}

/// The metrics source: per-export counters and the device layer's pool counters,
/// read at scrape time through a weak reference (metrics never keep a router alive).
struct RouterStats(Weak<Router>);

impl StatsSource for RouterStats {
    fn volumes(&self) -> Vec<(String, VolumeStats)> {
        let Some(r) = self.0.upgrade() else {
            return Vec::new();
        };
        r.open_volumes()
            .into_iter()
            .map(|(n, v)| (n, v.counters()))
            .collect()
    }
    fn pool(&self) -> Option<PoolStats> {
        self.0.upgrade()?.devices.as_ref()?.pool()
    }
    fn export_count(&self) -> usize {
        self.0.upgrade().map(|r| r.len()).unwrap_or(0)
    }
    fn ready(&self) -> Option<bool> {
        self.0.upgrade().map(|r| r.is_ready())
    }
    fn export_states(&self) -> Vec<(&'static str, usize)> {
        self.0
            .upgrade()
            .map(|r| {
                r.state_counts()
                    .into_iter()
                    .map(|(s, n)| (s.label(), n))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
