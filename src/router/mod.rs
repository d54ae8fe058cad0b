//! The router: export name → export (volume + device), persisted in the cache dir.
//!
//! Lifecycle: [`Router::new`] → [`Router::recover`] (load the registry, open every
//! volume in parallel, re-attach devices, then ready) → API operations →
//! [`Router::shutdown`]. See docs/operations.md.
//!
//! Invariants:
//! - only names passing [`name::validate_name`] reach a path or the store;
//! - operations on one name are serialised by a per-name async lock; nothing slow
//!   (volume open/drain/close, device add/delete, registry write) runs under a lock
//!   shared between names, so creating or deleting one export never stalls another
//!   export's I/O (the I/O path never touches router state at all);
//! - lock order: per-name lock → `persisted` → `state`; `state` is only held for map
//!   reads/writes, never across an await or a blocking call;
//! - the registry on disk is updated before the in-memory map: a crash never leaves a
//!   served export the next daemon does not know about;
//! - `max_exports` counts live exports plus creations in flight;
//! - a failed request changes nothing it can undo (device, volume, registry).

pub mod backend;
pub mod fake;
pub mod name;
pub mod real;
pub mod registry;
pub mod target;

pub use backend::{BackendError, DeviceBackend, DeviceInfo, ExportVolume, VolumeFactory};
pub use name::{validate_name, validate_size, MAX_EXPORT_SIZE};
pub use registry::{RegEntry, Registry, RegistryError};
pub use target::MeteredTarget;

use crate::metrics::{Metrics, PoolCounters, StatsSource, VolumeCounters};
use crate::size::format_size;
use crate::ublk::IoTarget;
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
}

/// How an error should be reported (the API maps each to one HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input (400).
    Invalid,
    /// No such export (404).
    NotFound,
    /// Conflicts with the current state (409).
    Conflict,
    /// A capacity limit was hit (507).
    Limit,
    /// Not ready, shutting down, or a dependency is down: retry later (503).
    Unavailable,
    /// Corrupt data or an unexpected failure (500).
    Internal,
}

/// Router errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// The export name is not acceptable.
    #[error("{0}")]
    InvalidName(String),
    /// The size is not acceptable.
    #[error("{0}")]
    InvalidSize(String),
    /// No export of that name.
    #[error("export {0:?} not found")]
    NotFound(String),
    /// The request conflicts with the export's state.
    #[error("{0}")]
    Conflict(String),
    /// `max_exports` reached.
    #[error("export limit reached: this daemon serves at most {0} exports (limits.max_exports)")]
    LimitReached(usize),
    /// Start-up recovery is not finished.
    #[error("not ready: recovering exports")]
    NotReady,
    /// The daemon is stopping.
    #[error("shutting down")]
    ShuttingDown,
    /// The volume engine or device layer failed.
    #[error("{op} {name:?}: {source}")]
    Backend {
        /// Export name.
        name: String,
        /// What was being done.
        op: &'static str,
        /// The failure.
        source: BackendError,
    },
    /// The registry could not be read or written.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Metric handles could not be created.
    #[error("metrics: {0}")]
    Metrics(String),
}

impl RouterError {
    /// The error's kind, for status codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RouterError::InvalidName(_) | RouterError::InvalidSize(_) => ErrorKind::Invalid,
            RouterError::NotFound(_) => ErrorKind::NotFound,
            RouterError::Conflict(_) => ErrorKind::Conflict,
            RouterError::LimitReached(_) => ErrorKind::Limit,
            RouterError::NotReady | RouterError::ShuttingDown => ErrorKind::Unavailable,
            RouterError::Backend { source, .. } => match source {
                BackendError::Invalid(_) => ErrorKind::Invalid,
                BackendError::Unavailable(_) => ErrorKind::Unavailable,
                BackendError::Fenced(_) => ErrorKind::Conflict,
                _ => ErrorKind::Internal,
            },
            RouterError::Registry(_) | RouterError::Metrics(_) => ErrorKind::Internal,
        }
    }
}

fn backend<'a>(name: &'a str, op: &'static str) -> impl FnOnce(BackendError) -> RouterError + 'a {
    move |source| RouterError::Backend {
        name: name.to_string(),
        op,
        source,
    }
}

/// An export's state as reported by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportState {
    /// Volume open (and device attached, when devices are enabled).
    Live,
    /// Recovery or a later step failed; see `error`. A PUT retries, DELETE removes.
    Failed,
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
    registry: Registry,
    persisted: Mutex<BTreeMap<String, RegEntry>>,
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
            registry: Registry::new(&cfg.cache_dir),
            cfg,
            volumes,
            devices,
            metrics: metrics.clone(),
            persisted: Mutex::new(BTreeMap::new()),
            state: RwLock::new(State::default()),
            name_locks: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        });
        metrics.set_source(Arc::new(RouterStats(Arc::downgrade(&router))));
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

    /// Apply `f` to the persisted registry and write it; on failure nothing changes.
    fn persist(&self, f: impl FnOnce(&mut BTreeMap<String, RegEntry>)) -> Result<(), RouterError> {
        let mut p = self.persisted.lock();
        let mut next = p.clone();
        f(&mut next);
        self.registry.save(&next)?;
        *p = next;
        Ok(())
    }

    fn info(name: &str, e: &Entry) -> ExportInfo {
        ExportInfo {
            name: name.to_string(),
            size_bytes: e.size_bytes,
            size: format_size(e.size_bytes),
            device: e.device.as_ref().map(|d| d.path.clone()),
            dev_id: e.device.as_ref().map(|d| d.dev_id),
            state: if e.error.is_some() {
                ExportState::Failed
            } else {
                ExportState::Live
            },
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

    /// Create (or cold-wake) `name` with `size` bytes, grow it, or repair it.
    /// Idempotent: the same request again returns the same state.
    pub async fn put(
        &self,
        name: &str,
        size: u64,
    ) -> Result<(ExportInfo, PutOutcome), RouterError> {
        validate_name(name).map_err(RouterError::InvalidName)?;
        validate_size(size).map_err(RouterError::InvalidSize)?;
        let _op = self.begin_op()?;
        let lock = self.name_lock(name);
        let _guard = lock.lock().await;
        self.check_open()?;
        let existing = self.state.read().exports.get(name).cloned();
        match existing {
            Some(e) if e.error.is_none() => self.resize(name, e, size).await,
            Some(e) => self.repair(name, e, size).await,
            None => self.create(name, size).await,
        }
    }

    async fn resize(
        &self,
        name: &str,
        e: Entry,
        size: u64,
    ) -> Result<(ExportInfo, PutOutcome), RouterError> {
        if size == e.size_bytes {
            return Ok((Self::info(name, &e), PutOutcome::Unchanged));
        }
        if size < e.size_bytes {
            return Err(RouterError::Conflict(format!(
                "export {name:?} is {}; shrinking is not supported",
                format_size(e.size_bytes)
            )));
        }
        let volume = e
            .volume
            .clone()
            .ok_or_else(|| RouterError::Conflict("export has no volume".into()))?;
        volume.grow(size).await.map_err(backend(name, "grow"))?;
        let mut device = e.device.clone();
        if let (Some(devs), Some(d)) = (&self.devices, &e.device) {
            // ublk devices cannot change size while live on the kernels we target
            // (no UPDATE_SIZE before 6.16): re-create the device with the same id.
            let target = self.target(name, &volume)?;
            devs.delete(d.dev_id)
                .map_err(backend(name, "delete device for resize"))?;
            match devs.add(Some(d.dev_id), target) {
                Ok(nd) => device = Some(nd),
                Err(err) => {
                    self.set_entry(name, |x| {
                        x.device = None;
                        x.error = Some(format!("device lost during resize: {err}"));
                    });
                    return Err(backend(name, "re-add device for resize")(err));
                }
            }
        }
        self.persist(|p| {
            if let Some(r) = p.get_mut(name) {
                r.size_bytes = size;
            }
        })?;
        let mut st = self.state.write();
        let entry = st
            .exports
            .get_mut(name)
            .ok_or_else(|| RouterError::NotFound(name.to_string()))?;
        entry.size_bytes = size;
        entry.device = device;
        Ok((Self::info(name, entry), PutOutcome::Grown))
    }

    async fn create(&self, name: &str, size: u64) -> Result<(ExportInfo, PutOutcome), RouterError> {
        let mut reservation = {
            let mut st = self.state.write();
            if st.exports.len() + st.pending >= self.cfg.max_exports {
                return Err(RouterError::LimitReached(self.cfg.max_exports));
            }
            st.pending += 1;
            Reservation {
                router: self,
                live: true,
            }
        };
        let stored = self
            .volumes
            .exists_in_store(name)
            .await
            .map_err(backend(name, "look up"))?;
        if let Some(stored) = stored {
            if size < stored {
                return Err(RouterError::Conflict(format!(
                    "volume {name:?} already exists in the store with size {}; ask for at least that",
                    format_size(stored)
                )));
            }
        }
        let volume = self
            .volumes
            .open(name, size)
            .await
            .map_err(backend(name, "open"))?;
        let mut device = None;
        let attached: Result<(), RouterError> = async {
            if volume.size_bytes() < size {
                volume.grow(size).await.map_err(backend(name, "grow"))?;
            }
            let target = self.target(name, &volume)?;
            if let Some(devs) = &self.devices {
                device = Some(
                    devs.add(None, target)
                        .map_err(backend(name, "add device"))?,
                );
            }
            let dev_id = device.as_ref().map(|d| d.dev_id);
            self.persist(|p| {
                p.insert(
                    name.to_string(),
                    RegEntry {
                        name: name.to_string(),
                        size_bytes: size,
                        dev_id,
                    },
                );
            })
        }
        .await;
        if let Err(err) = attached {
            self.undo_create(name, &volume, device.as_ref(), stored.is_none())
                .await;
            return Err(err);
        }
        let entry = Entry {
            size_bytes: volume.size_bytes(),
            dev_id_hint: device.as_ref().map(|d| d.dev_id),
            volume: Some(volume),
            device,
            error: None,
        };
        let info = Self::info(name, &entry);
        {
            let mut st = self.state.write();
            st.pending -= 1;
            reservation.live = false;
            st.exports.insert(name.to_string(), entry);
        }
        tracing::info!(export = name, size = size, device = ?info.device, "export created");
        let outcome = if stored.is_some() {
            PutOutcome::Woken
        } else {
            PutOutcome::Created
        };
        Ok((info, outcome))
    }

    async fn undo_create(
        &self,
        name: &str,
        volume: &Arc<dyn ExportVolume>,
        device: Option<&DeviceInfo>,
        fresh: bool,
    ) {
        if let (Some(devs), Some(d)) = (&self.devices, device) {
            if let Err(e) = devs.delete(d.dev_id) {
                tracing::warn!(export = name, error = %e, "undo: device delete failed");
            }
        }
        if let Err(e) = volume.close().await {
            tracing::warn!(export = name, error = %e, "undo: volume close failed");
        }
        if fresh {
            if let Err(e) = self.volumes.purge(name).await {
                tracing::warn!(export = name, error = %e, "undo: purge of new volume failed");
            }
        }
        self.metrics.remove_export(name);
    }

    async fn repair(
        &self,
        name: &str,
        e: Entry,
        size: u64,
    ) -> Result<(ExportInfo, PutOutcome), RouterError> {
        if size < e.size_bytes {
            return Err(RouterError::Conflict(format!(
                "export {name:?} is {}; shrinking is not supported",
                format_size(e.size_bytes)
            )));
        }
        let volume = match &e.volume {
            Some(v) => v.clone(),
            None => self
                .volumes
                .open(name, e.size_bytes)
                .await
                .map_err(backend(name, "open"))?,
        };
        let fixed: Result<Entry, RouterError> = async {
            if volume.size_bytes() < size {
                volume.grow(size).await.map_err(backend(name, "grow"))?;
            }
            let mut device = e.device.clone();
            if let (Some(devs), None) = (&self.devices, &device) {
                let target = self.target(name, &volume)?;
                // Same id when it is free; `recover` is start-up only (it treats
                // unlisted devices as orphans).
                let d = match e.dev_id_hint {
                    Some(id) => devs.add(Some(id), target.clone()).or_else(|err| {
                        tracing::warn!(export = name, dev_id = id, error = %err, "previous device id unavailable");
                        devs.add(None, target)
                    }),
                    None => devs.add(None, target),
                };
                device = Some(d.map_err(backend(name, "attach device"))?);
            }
            let dev_id = device.as_ref().map(|d| d.dev_id);
            self.persist(|p| {
                p.insert(name.to_string(), RegEntry { name: name.to_string(), size_bytes: volume.size_bytes(), dev_id });
            })?;
            Ok(Entry {
                size_bytes: volume.size_bytes(),
                dev_id_hint: dev_id,
                volume: Some(volume.clone()),
                device,
                error: None,
            })
        }
        .await;
        let mut st = self.state.write();
        match fixed {
            Ok(entry) => {
                let info = Self::info(name, &entry);
                st.exports.insert(name.to_string(), entry);
                tracing::info!(export = name, "failed export repaired");
                Ok((info, PutOutcome::Repaired))
            }
            Err(err) => {
                // Keep the volume open if we opened it: the export stays failed, but a
                // later attempt does not need to reopen.
                if let Some(cur) = st.exports.get_mut(name) {
                    cur.volume = Some(volume);
                    cur.error = Some(err.to_string());
                }
                Err(err)
            }
        }
    }

    /// Delete `name`: detach the device, then (without `purge`) drain everything to
    /// the store and drop the local cache; with `purge` also delete its objects.
    pub async fn delete(&self, name: &str, purge: bool) -> Result<(), RouterError> {
        validate_name(name).map_err(RouterError::InvalidName)?;
        let _op = self.begin_op()?;
        let lock = self.name_lock(name);
        let _guard = lock.lock().await;
        let e = self.entry(name)?;
        if let (Some(devs), Some(d)) = (&self.devices, &e.device) {
            devs.delete(d.dev_id)
                .map_err(backend(name, "delete device"))?;
            self.set_entry(name, |x| x.device = None);
        }
        if let Some(volume) = &e.volume {
            if !purge {
                if let Err(err) = volume.drain().await {
                    self.reattach(name, volume, &e).await;
                    return Err(backend(name, "drain")(err));
                }
            }
            if let Err(err) = volume.close().await {
                tracing::warn!(export = name, error = %err, "close failed during delete");
            }
            self.set_entry(name, |x| {
                x.volume = None;
                x.error = Some("deleting".into());
            });
            if !purge {
                if let Err(err) = self.volumes.forget_local(name).await {
                    tracing::warn!(export = name, error = %err, "removing local cache failed");
                }
            }
        } else if !purge {
            tracing::warn!(
                export = name,
                "deleting a failed export: its local cache is kept"
            );
        }
        if purge {
            if let Err(err) = self.volumes.purge(name).await {
                self.set_entry(name, |x| x.error = Some(format!("purge failed: {err}")));
                return Err(backend(name, "purge")(err));
            }
        }
        self.persist(|p| {
            p.remove(name);
        })?;
        self.state.write().exports.remove(name);
        self.metrics.remove_export(name);
        tracing::info!(export = name, purge, "export deleted");
        Ok(())
    }

    async fn reattach(&self, name: &str, volume: &Arc<dyn ExportVolume>, e: &Entry) {
        let (Some(devs), Some(d)) = (&self.devices, &e.device) else {
            return;
        };
        let res = self.target(name, volume).and_then(|t| {
            devs.add(Some(d.dev_id), t)
                .map_err(backend(name, "re-add device"))
        });
        match res {
            Ok(dev) => self.set_entry(name, |x| x.device = Some(dev)),
            Err(err) => {
                tracing::error!(export = name, error = %err, "device could not be re-attached");
                self.set_entry(name, |x| x.error = Some(err.to_string()));
            }
        }
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

    /// Return once everything acknowledged on `name` is in the object store.
    pub async fn drain(&self, name: &str) -> Result<ExportInfo, RouterError> {
        validate_name(name).map_err(RouterError::InvalidName)?;
        let _op = self.begin_op()?;
        let lock = self.name_lock(name);
        let _guard = lock.lock().await;
        let e = self.entry(name)?;
        let volume = e.volume.clone().ok_or_else(|| {
            RouterError::Conflict(format!(
                "export {name:?} has failed: {}",
                e.error.clone().unwrap_or_default()
            ))
        })?;
        volume.drain().await.map_err(backend(name, "drain"))?;
        Ok(Self::info(name, &e))
    }

    /// Start-up: load the registry, open every volume (bounded parallelism) and
    /// re-attach each export's device as soon as its volume is open (device
    /// recovery runs alongside the remaining opens), then become ready. Exports that
    /// fail stay listed as `failed`; only an unreadable registry is an error.
    pub fn recover(&self) -> Result<RecoverySummary, RouterError> {
        let t0 = std::time::Instant::now();
        let entries = self.registry.load()?;
        *self.persisted.lock() = entries.clone();
        let queue = Mutex::new(entries.values().cloned().collect::<Vec<_>>());
        let opened = Mutex::new(Vec::with_capacity(entries.len()));
        let workers = self.cfg.open_concurrency.clamp(1, entries.len().max(1));
        let known: Vec<u32> = entries.values().filter_map(|e| e.dev_id).collect();
        let names: HashMap<u32, String> = entries
            .values()
            .filter_map(|e| e.dev_id.map(|id| (id, e.name.clone())))
            .collect();
        let (tx, rx) = std::sync::mpsc::channel::<(u32, Arc<dyn IoTarget>)>();
        let (queue, opened) = (&queue, &opened);
        let mut recovered = Vec::new();
        std::thread::scope(|s| {
            let devs = self
                .devices
                .as_ref()
                .map(|d| s.spawn(move || d.recover_stream(known, rx)));
            for _ in 0..workers {
                let tx = tx.clone();
                s.spawn(move || loop {
                    let Some(e) = queue.lock().pop() else { break };
                    let r = smol::block_on(async {
                        let v = self.volumes.open(&e.name, e.size_bytes).await?;
                        if v.size_bytes() < e.size_bytes {
                            v.grow(e.size_bytes).await?;
                        }
                        Ok::<_, BackendError>(v)
                    });
                    // The device's target, handed to the device recovery at once
                    // (or kept for `add` when the export had no device yet).
                    let mut target = None;
                    let mut target_err = None;
                    if let Ok(v) = &r {
                        match self.target(&e.name, v) {
                            Ok(t) if self.devices.is_some() => match e.dev_id {
                                // Only fails when the recovery thread is gone; the
                                // device is then reported as not recovered.
                                Some(id) => drop(tx.send((id, t))),
                                None => target = Some(t),
                            },
                            Ok(_) => {}
                            Err(err) => target_err = Some(err.to_string()),
                        }
                    }
                    opened.lock().push((e, r, target, target_err));
                });
            }
            drop(tx);
            if let Some(h) = devs {
                recovered = h.join().unwrap_or_default();
            }
        });
        tracing::info!(
            volumes = entries.len(),
            workers,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "recovery: volumes opened and devices attached"
        );
        let mut map = BTreeMap::new();
        let mut to_add = Vec::new();
        for (r, res, target, target_err) in std::mem::take(&mut *opened.lock()) {
            let mut entry = Entry {
                size_bytes: r.size_bytes,
                dev_id_hint: r.dev_id,
                volume: None,
                device: None,
                error: target_err,
            };
            match res.map_err(backend(&r.name, "open")) {
                Ok(v) => {
                    entry.size_bytes = v.size_bytes();
                    if let Some(t) = target {
                        to_add.push((r.name.clone(), t));
                    }
                    entry.volume = Some(v);
                }
                Err(err) => {
                    tracing::error!(export = %r.name, error = %err, "volume could not be opened");
                    entry.error = Some(err.to_string());
                }
            }
            map.insert(r.name.clone(), entry);
        }
        let answered: std::collections::HashSet<u32> =
            recovered.iter().map(|(id, _)| *id).collect();
        for (id, res) in recovered {
            let Some(name) = names.get(&id) else { continue };
            if let Some(e) = map.get_mut(name) {
                match res {
                    Ok(d) => e.device = Some(d),
                    Err(err) => {
                        tracing::error!(export = %name, dev_id = id, error = %err, "device could not be recovered");
                        e.error = Some(format!("device {id}: {err}"));
                    }
                }
            }
        }
        if let Some(devs) = &self.devices {
            // A volume that opened but whose device got no answer (the device
            // recovery thread failed) must not look live.
            for (name, e) in map.iter_mut() {
                let id = entries.get(name).and_then(|r| r.dev_id);
                if let Some(id) = id {
                    if e.volume.is_some() && e.error.is_none() && !answered.contains(&id) {
                        e.error = Some(format!("device {id}: not recovered"));
                    }
                }
            }
            for (name, t) in to_add {
                match devs.add(None, t) {
                    Ok(d) => {
                        if let Some(e) = map.get_mut(&name) {
                            e.dev_id_hint = Some(d.dev_id);
                            e.device = Some(d);
                        }
                    }
                    Err(err) => {
                        if let Some(e) = map.get_mut(&name) {
                            e.error = Some(format!("add device: {err}"));
                        }
                    }
                }
            }
        }
        tracing::info!(
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "recovery: devices attached"
        );
        // Record device ids that changed (e.g. re-created devices).
        let changed: Vec<(String, Option<u32>)> = map
            .iter()
            .filter_map(|(n, e)| {
                let id = e.device.as_ref().map(|d| d.dev_id);
                (id.is_some() && entries.get(n).map(|r| r.dev_id) != Some(id))
                    .then(|| (n.clone(), id))
            })
            .collect();
        if !changed.is_empty() {
            self.persist(|p| {
                for (n, id) in changed {
                    if let Some(r) = p.get_mut(&n) {
                        r.dev_id = id;
                    }
                }
            })?;
        }
        let failed = map.values().filter(|e| e.error.is_some()).count();
        let summary = RecoverySummary {
            recovered: map.len() - failed,
            failed,
        };
        self.state.write().exports = map;
        self.ready.store(true, Ordering::SeqCst);
        Ok(summary)
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
        if let Some(devs) = &self.devices {
            devs.shutdown(stop_devices);
        }
        let vols: Vec<(String, Arc<dyn ExportVolume>)> = self
            .state
            .read()
            .exports
            .iter()
            .filter_map(|(n, e)| e.volume.clone().map(|v| (n.clone(), v)))
            .collect();
        let workers = self.cfg.open_concurrency.clamp(1, vols.len().max(1));
        let queue = Mutex::new(vols);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let Some((name, v)) = queue.lock().pop() else {
                        break;
                    };
                    if let Err(e) = smol::block_on(v.close()) {
                        tracing::error!(export = %name, error = %e, "close failed");
                    }
                });
            }
        });
        self.ready.store(false, Ordering::SeqCst);
    }
}

struct RouterStats(Weak<Router>);

impl StatsSource for RouterStats {
    fn volumes(&self) -> Vec<(String, VolumeCounters)> {
        let Some(r) = self.0.upgrade() else {
            return Vec::new();
        };
        let vols: Vec<(String, Arc<dyn ExportVolume>)> = r
            .state
            .read()
            .exports
            .iter()
            .filter_map(|(n, e)| e.volume.clone().map(|v| (n.clone(), v)))
            .collect();
        vols.into_iter().map(|(n, v)| (n, v.counters())).collect()
    }
    fn pool(&self) -> Option<PoolCounters> {
        self.0.upgrade()?.devices.as_ref()?.pool()
    }
    fn export_count(&self) -> usize {
        self.0.upgrade().map(|r| r.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
