//! The router's backends on the real layers: [`EngineVolumes`] opens
//! [`crate::volume::Volume`]s in `<cache dir>/volumes/<name>` against the (metered)
//! object store; [`UblkDevices`] drives a [`UblkServer`]. Both map their layer's
//! errors to the router's error kinds ([`BackendError`]).

use super::VolumeSettings;
use crate::router::{BackendError, DeviceBackend, DeviceInfo, ExportVolume, VolumeFactory};
use crate::store::{ObjectStore, StoreError};
use crate::ublk::IoTarget;
use crate::ublk::PoolStats;
use crate::ublk::{UblkError, UblkOptions, UblkServer};
use crate::volume::{SnapshotInfo, VolumeStats};
use crate::volume::{Volume, VolumeConfig, VolumeError};
use async_trait::async_trait;
use std::io;
use std::sync::Arc;

/// Classify a volume error.
pub fn classify(e: VolumeError) -> BackendError {
    let msg = e.to_string();
    match e {
        VolumeError::Invalid(_) | VolumeError::Unsupported(_) => BackendError::Invalid(msg),
        VolumeError::LeaseHeld { .. } | VolumeError::Fenced(_) => BackendError::Fenced(msg),
        VolumeError::Checksum(_) | VolumeError::Corrupt(_) => BackendError::Data(msg),
        VolumeError::Key(_) => BackendError::Invalid(msg),
        VolumeError::Store(StoreError::Config(_)) => BackendError::Internal(msg),
        VolumeError::Store(_) => BackendError::Unavailable(msg),
        VolumeError::NotFound(_) => BackendError::NotFound(msg),
        VolumeError::AlreadyExists(_) | VolumeError::InUse(_) => BackendError::Conflict(msg),
        _ => BackendError::Internal(msg),
    }
}

/// Opens engine volumes.
pub struct EngineVolumes {
    store: Arc<dyn ObjectStore>,
    settings: VolumeSettings,
}

impl EngineVolumes {
    /// Volumes in `settings.root` backed by `store`.
    pub fn new(store: Arc<dyn ObjectStore>, settings: VolumeSettings) -> EngineVolumes {
        EngineVolumes { store, settings }
    }

    fn cfg(&self, name: &str, size: u64) -> VolumeConfig {
        let s = &self.settings;
        let mut c = VolumeConfig::new(name, size, s.root.join(name));
        c.dirty_limit_bytes = s.dirty_limit_bytes;
        c.flush_interval = s.flush_interval;
        c.flush_mode = s.flush_mode;
        c.compress = s.compress;
        c.lease_ttl = s.lease_ttl;
        c.gc_grace = s.gc_grace;
        c.shared_cache = s.shared_cache.clone();
        c.encryption = s.encryption.clone();
        c.owner = s.owner.clone();
        c.host_label = s.host_label.clone();
        c
    }

    /// Remove `name`'s local cache directory, if there is one, with `remove`
    /// ([`Volume::purge_cache`] sets dirty data aside, [`Volume::discard_cache`]
    /// drops it).
    fn remove_local(
        &self,
        name: &str,
        remove: fn(&VolumeConfig) -> Result<(), VolumeError>,
    ) -> Result<(), BackendError> {
        let cfg = self.cfg(name, 0);
        if !cfg.cache_dir.exists() {
            return Ok(());
        }
        remove(&cfg).map_err(classify)
    }
}

#[async_trait]
impl VolumeFactory for EngineVolumes {
    fn shared_cache(&self) -> Option<Arc<crate::volume::shared_cache::SharedCache>> {
        self.settings.shared_cache.clone()
    }
    async fn fork(
        &self,
        parent: &str,
        snap: &str,
        child: &str,
        size_bytes: u64,
    ) -> Result<u64, BackendError> {
        Volume::fork(
            &self.store,
            parent,
            snap,
            child,
            size_bytes,
            self.settings.encryption.as_deref(),
        )
        .await
        .map_err(classify)
    }
    async fn open(
        &self,
        name: &str,
        size_bytes: u64,
    ) -> Result<Arc<dyn ExportVolume>, BackendError> {
        let v = Volume::open(self.cfg(name, size_bytes), self.store.clone())
            .await
            .map_err(classify)?;
        Ok(Arc::new(EngineVolume(v)))
    }
    async fn exists_in_store(&self, name: &str) -> Result<Option<u64>, BackendError> {
        Volume::exists_in_store(&self.store, name)
            .await
            .map_err(classify)
    }
    async fn purge(&self, name: &str, force: bool) -> Result<(), BackendError> {
        let cfg = self.cfg(name, 0);
        match Volume::purge(
            &self.store,
            name,
            cfg.lease_rules(),
            force,
            self.settings.encryption.as_deref(),
        )
        .await {
            Ok(()) => {}
            Err(VolumeError::LeaseHeld { owner, age_ms }) => {
                return Err(BackendError::Fenced(format!(
                    "volume lease held by {owner}, renewed {}s ago: that host may be serving it; \
                     nothing was deleted. Purge with force=true (CLI: --force) only if that host is gone",
                    age_ms / 1000
                )))
            }
            Err(e) => return Err(classify(e)),
        }
        // Destroyed: dirty data in the cache goes too, never set aside.
        self.remove_local(name, Volume::discard_cache)
    }
    fn list_diverged(&self) -> Result<Vec<crate::volume::diverged::DivergedEntry>, BackendError> {
        let dir = self.cfg("x", 0).set_aside_dir();
        Volume::list_diverged(&crate::volume::RealFs, &dir).map_err(classify)
    }
    async fn forget_local(&self, name: &str) -> Result<(), BackendError> {
        self.remove_local(name, Volume::purge_cache)
    }
}

/// An engine volume as the router sees it.
pub struct EngineVolume(pub Arc<Volume>);

#[async_trait]
impl IoTarget for EngineVolume {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        Ok(self.0.read(offset, buf).await?)
    }
    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        Ok(self.0.write(offset, data, fua).await?)
    }
    async fn flush(&self) -> io::Result<()> {
        Ok(self.0.flush().await?)
    }
    async fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        Ok(self.0.discard(offset, len).await?)
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        Ok(self.0.write_zeroes(offset, len).await?)
    }
    fn cached_file(&self, offset: u64, len: u64) -> Option<Arc<std::fs::File>> {
        self.0.cached_file(offset, len)
    }
}

#[async_trait]
impl ExportVolume for EngineVolume {
    async fn grow(&self, new_size: u64) -> Result<(), BackendError> {
        self.0.grow(new_size).await.map_err(classify)
    }
    async fn drain(&self) -> Result<(), BackendError> {
        self.0.drain().await.map_err(classify)
    }
    async fn snapshot(&self, name: &str) -> Result<SnapshotInfo, BackendError> {
        self.0.snapshot(name).await.map_err(classify)
    }
    async fn snapshots(&self) -> Result<Vec<SnapshotInfo>, BackendError> {
        self.0.snapshots().await.map_err(classify)
    }
    async fn delete_snapshot(&self, name: &str) -> Result<(), BackendError> {
        self.0.delete_snapshot(name).await.map_err(classify)
    }
    async fn close(&self) -> Result<(), BackendError> {
        self.0.close().await.map_err(classify)
    }
    async fn stop_background(&self) {
        self.0.stop_background().await
    }
    fn counters(&self) -> VolumeStats {
        self.0.stats()
    }
}

/// Classify a ublk error.
pub fn classify_ublk(e: UblkError) -> BackendError {
    let msg = e.to_string();
    match e {
        UblkError::NotAvailable | UblkError::ShutDown => BackendError::Unavailable(msg),
        UblkError::Invalid(_) => BackendError::Invalid(msg),
        _ => BackendError::Internal(msg),
    }
}

/// The device layer on a [`UblkServer`].
pub struct UblkDevices {
    server: UblkServer,
}

impl UblkDevices {
    /// Start a ublk server with `opts`.
    pub fn start(opts: UblkOptions) -> Result<UblkDevices, UblkError> {
        Ok(UblkDevices {
            server: UblkServer::start(opts)?,
        })
    }
}

impl DeviceBackend for UblkDevices {
    fn add(
        &self,
        dev_id: Option<u32>,
        target: Arc<dyn IoTarget>,
    ) -> Result<DeviceInfo, BackendError> {
        self.server
            .add_device(dev_id, target)
            .map_err(classify_ublk)
    }
    fn recover(
        &self,
        known: Vec<u32>,
        targets: std::sync::mpsc::Receiver<(u32, Arc<dyn IoTarget>)>,
    ) -> Vec<(u32, Result<DeviceInfo, BackendError>)> {
        self.server
            .recover_devices_stream(known, targets)
            .into_iter()
            .map(|(id, r)| (id, r.map_err(classify_ublk)))
            .collect()
    }
    fn reattach(&self, dev_id: u32, target: Arc<dyn IoTarget>) -> Result<DeviceInfo, BackendError> {
        self.server
            .reattach_device(dev_id, target)
            .map_err(classify_ublk)
    }
    fn delete(&self, dev_id: u32) -> Result<(), BackendError> {
        self.server.delete_device(dev_id).map_err(classify_ublk)
    }
    fn pool(&self) -> Option<PoolStats> {
        Some(self.server.pool_stats())
    }
    fn shutdown(&self, stop_devices: bool) {
        self.server.shutdown(stop_devices);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::router::BackendError;
    use crate::store::mem::MemStore;

    fn settings(cache: &std::path::Path) -> VolumeSettings {
        let mut cfg = Config::default();
        cfg.cache.dir = cache.to_path_buf();
        let host = crate::daemon::HostIdentity::load_or_create(cache).unwrap();
        VolumeSettings::from_config(&cfg, &host).unwrap()
    }

    /// Issue 14 item 2: the appliance gives every host the same hostname and cache
    /// dir path. Host B (a fresh disk mounted at the same path) must not be taken
    /// for host A, which holds the volume.
    #[test]
    fn same_hostname_and_cache_path_are_different_owners() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let a = EngineVolumes::new(store.clone(), settings(&cache));
        let va = smol::block_on(a.open("vm-1", 1 << 20)).unwrap();
        smol::block_on(va.close()).unwrap();
        // Host A's disk goes away; host B's fresh disk has the same path.
        std::fs::rename(&cache, dir.path().join("host-a-disk")).unwrap();
        let b = EngineVolumes::new(store, settings(&cache));
        match smol::block_on(b.open("vm-1", 1 << 20)) {
            Err(BackendError::Fenced(msg)) => assert!(msg.contains("host id"), "{msg}"),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("host B opened host A's volume as its own"),
        }
    }
}
