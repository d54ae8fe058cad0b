//! What the router drives, as small traits: [`VolumeFactory`] / [`ExportVolume`]
//! (the volume engine) and [`DeviceBackend`] (the ublk server). The daemon plugs the
//! real layers in (src/daemon/backends.rs); host tests use in-memory fakes
//! (src/router/fake.rs, test builds only). Errors are classified into a few kinds
//! ([`BackendError`]) that the API maps to HTTP status codes.

use crate::ublk::IoTarget;
use crate::ublk::PoolStats;
use crate::volume::{SnapshotInfo, VolumeStats};
use async_trait::async_trait;
use std::sync::Arc;

/// A failure of the volume engine or the device layer, by kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The request is invalid for this volume (e.g. shrinking); not retryable.
    #[error("{0}")]
    Invalid(String),
    /// A dependency (object store, kernel) is unavailable; retrying may succeed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Another host holds the volume's lease.
    #[error("fenced: {0}")]
    Fenced(String),
    /// Stored or cached data is corrupt; needs an operator.
    #[error("data error: {0}")]
    Data(String),
    /// The named thing (a snapshot) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what exists (a snapshot name in use, a snapshot
    /// that forks still need).
    #[error("{0}")]
    Conflict(String),
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(String),
}

/// One open volume, as the router and the I/O adapter see it. The data path
/// (`read`, `write`, ...) is the [`IoTarget`] part.
#[async_trait]
pub trait ExportVolume: IoTarget {
    /// Grow to `new_size` bytes (never shrinks).
    async fn grow(&self, new_size: u64) -> Result<(), BackendError>;
    /// Return once everything acknowledged so far is committed to the object store.
    async fn drain(&self) -> Result<(), BackendError>;
    /// Stop background work and make journals durable locally (fdatasync).
    async fn close(&self) -> Result<(), BackendError>;
    /// Stop background work (uploads) ahead of `close`; I/O keeps working, and what
    /// waits for the store waits. Shutdown calls it before the devices stop.
    async fn stop_background(&self) {}
    /// Take snapshot `name` of everything acknowledged so far.
    async fn snapshot(&self, name: &str) -> Result<SnapshotInfo, BackendError>;
    /// The volume's snapshots, by name.
    async fn snapshots(&self) -> Result<Vec<SnapshotInfo>, BackendError>;
    /// Delete snapshot `name`.
    async fn delete_snapshot(&self, name: &str) -> Result<(), BackendError>;
    /// Scrape-time counters.
    fn counters(&self) -> VolumeStats;
}

/// Opens volumes by name (create, reopen from the local cache, or cold wake from
/// the store) and removes them.
#[async_trait]
pub trait VolumeFactory: Send + Sync + 'static {
    /// Open `name`; a new volume gets `size_bytes`, an existing one keeps its size
    /// (the router grows it afterwards when asked to).
    async fn open(
        &self,
        name: &str,
        size_bytes: u64,
    ) -> Result<Arc<dyn ExportVolume>, BackendError>;
    /// Make volume `child` a copy-on-write fork of snapshot `snap` of `parent`
    /// (`size_bytes` 0: the snapshot's size); returns its size. Writes metadata
    /// only; `open` opens it.
    async fn fork(
        &self,
        parent: &str,
        snap: &str,
        child: &str,
        size_bytes: u64,
    ) -> Result<u64, BackendError> {
        let _ = (parent, snap, child, size_bytes);
        Err(BackendError::Invalid(
            "this volume backend cannot make forks".into(),
        ))
    }
    /// The host's shared cache of forks' base data, for its metrics.
    fn shared_cache(&self) -> Option<Arc<crate::volume::shared_cache::SharedCache>> {
        None
    }
    /// The size of `name` in the object store, if it exists there.
    async fn exists_in_store(&self, name: &str) -> Result<Option<u64>, BackendError>;
    /// Delete `name`'s objects in the store and its local cache (volume closed).
    /// While another host holds the volume's lease (not stale) this deletes nothing
    /// and fails with [`BackendError::Fenced`] naming the holder, unless `force`.
    async fn purge(&self, name: &str, force: bool) -> Result<(), BackendError>;
    /// Delete `name`'s local cache files only (volume closed and drained).
    async fn forget_local(&self, name: &str) -> Result<(), BackendError>;
    /// Dirty data set aside because it could no longer be uploaded (see
    /// `volume::diverged`), all exports.
    fn list_diverged(&self) -> Result<Vec<crate::volume::diverged::DivergedEntry>, BackendError> {
        Ok(Vec::new())
    }
}

/// A block device attached to an export: the ublk layer's own description.
pub use crate::ublk::DeviceInfo;

/// The block-device layer (ublk). Calls may block (kernel control commands).
pub trait DeviceBackend: Send + Sync + 'static {
    /// Create a device serving `target`, with id `dev_id` if given.
    fn add(
        &self,
        dev_id: Option<u32>,
        target: Arc<dyn IoTarget>,
    ) -> Result<DeviceInfo, BackendError>;
    /// Re-attach devices left by a previous daemon (or re-create them with the same
    /// ids when they are gone), many in parallel, with the targets arriving on
    /// `targets` as their volumes open, so that devices are re-attached while other
    /// volumes are still opening. `known` lists every id that may arrive: devices of
    /// ours not in it are orphans and may be deleted, so this is called once, at
    /// start-up. Known ids whose target never arrives are left as they are
    /// (QUIESCED: their I/O waits) for [`DeviceBackend::reattach`] or `delete`.
    fn recover(
        &self,
        known: Vec<u32>,
        targets: std::sync::mpsc::Receiver<(u32, Arc<dyn IoTarget>)>,
    ) -> Vec<(u32, Result<DeviceInfo, BackendError>)>;
    /// After start-up: re-attach one device that `recover` left waiting (or add it
    /// with the same id when it is gone), serving `target`. Touches nothing else.
    fn reattach(&self, dev_id: u32, target: Arc<dyn IoTarget>) -> Result<DeviceInfo, BackendError>;
    /// Stop and delete a device.
    fn delete(&self, dev_id: u32) -> Result<(), BackendError>;
    /// Buffer-pool totals for metrics.
    fn pool(&self) -> Option<PoolStats>;
    /// Stop serving: delete devices (`stop_devices`) or leave them for the next daemon.
    fn shutdown(&self, stop_devices: bool);
}
