//! The router's backends on the real layers: [`EngineVolumes`] opens
//! [`crate::volume::Volume`]s in `<cache dir>/volumes/<name>` against the (metered)
//! object store, and maps [`VolumeError`] to the router's error kinds.

use super::backend::{BackendError, ExportVolume, VolumeFactory};
use crate::config::{Config, FlushMode as CfgFlushMode};
use crate::metrics::VolumeCounters;
use crate::store::{ObjectStore, StoreError};
use crate::ublk::IoTarget;
use crate::volume::{FlushMode, Volume, VolumeConfig, VolumeError};
use async_trait::async_trait;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Classify a volume error.
pub fn classify(e: VolumeError) -> BackendError {
    let msg = e.to_string();
    match e {
        VolumeError::Invalid(_) | VolumeError::Unsupported(_) => BackendError::Invalid(msg),
        VolumeError::LeaseHeld { .. } | VolumeError::Fenced(_) => BackendError::Fenced(msg),
        VolumeError::Checksum(_) | VolumeError::Corrupt(_) => BackendError::Data(msg),
        VolumeError::Store(StoreError::Config(_)) => BackendError::Internal(msg),
        VolumeError::Store(_) => BackendError::Unavailable(msg),
        _ => BackendError::Internal(msg),
    }
}

/// Per-volume settings taken from the config.
#[derive(Debug, Clone)]
pub struct VolumeSettings {
    /// Parent of the per-volume cache directories.
    pub root: PathBuf,
    /// `cache.dirty_limit`.
    pub dirty_limit_bytes: u64,
    /// `cache.flush_interval`.
    pub flush_interval: Duration,
    /// `cache.flush_mode`.
    pub flush_mode: FlushMode,
    /// `cache.compress`.
    pub compress: bool,
}

impl VolumeSettings {
    /// From the daemon config: volumes live in `<cache.dir>/volumes/<name>`.
    pub fn from_config(cfg: &Config) -> VolumeSettings {
        VolumeSettings {
            root: cfg.cache.dir.join("volumes"),
            dirty_limit_bytes: cfg.cache.dirty_limit.0,
            flush_interval: cfg.cache.flush_interval,
            flush_mode: match cfg.cache.flush_mode {
                CfgFlushMode::Local => FlushMode::Local,
                CfgFlushMode::Store => FlushMode::Store,
            },
            compress: cfg.cache.compress,
        }
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
        c
    }
}

#[async_trait]
impl VolumeFactory for EngineVolumes {
    async fn open(&self, name: &str, size_bytes: u64) -> Result<Arc<dyn ExportVolume>, BackendError> {
        let v = Volume::open(self.cfg(name, size_bytes), self.store.clone())
            .await
            .map_err(classify)?;
        Ok(Arc::new(EngineVolume(v)))
    }
    async fn exists_in_store(&self, name: &str) -> Result<Option<u64>, BackendError> {
        Volume::exists_in_store(&self.store, name).await.map_err(classify)
    }
    async fn purge(&self, name: &str) -> Result<(), BackendError> {
        Volume::purge(&self.store, name).await.map_err(classify)?;
        self.forget_local(name).await
    }
    async fn forget_local(&self, name: &str) -> Result<(), BackendError> {
        let cfg = self.cfg(name, 0);
        if !cfg.cache_dir.exists() {
            return Ok(());
        }
        Volume::purge_cache(&cfg).map_err(classify)
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
}

#[async_trait]
impl ExportVolume for EngineVolume {
    async fn grow(&self, new_size: u64) -> Result<(), BackendError> {
        self.0.grow(new_size).await.map_err(classify)
    }
    async fn drain(&self) -> Result<(), BackendError> {
        self.0.drain().await.map_err(classify)
    }
    async fn close(&self) -> Result<(), BackendError> {
        self.0.close().await.map_err(classify)
    }
    fn counters(&self) -> VolumeCounters {
        let s = self.0.stats();
        VolumeCounters {
            dirty_bytes: s.dirty_bytes,
            cache_hits: s.cache_hits,
            cache_misses: s.cache_misses,
            flush_errors: s.flush_errors,
        }
    }
}
