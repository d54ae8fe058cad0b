//! The daemon's assembly: the only place where the [`Config`] is translated into the
//! layers' own settings ([`StoreOptions`], [`VolumeSettings`], [`UblkOptions`]), and
//! the real backends the router drives ([`backends`]).
//!
//! Every default and bound these settings start from is in [`crate::rules`]; this
//! module copies values, it never decides one.

pub mod backends;
pub mod host_identity;
pub mod key_rotation;

pub use backends::{EngineVolume, EngineVolumes, UblkDevices};
pub use host_identity::{CacheDirLock, HostIdentity, IdentityError};

use crate::config::{Config, Credentials};
use crate::store::StoreOptions;
use crate::ublk::UblkOptions;
use crate::volume::crypto::{CryptoError, MasterKeys};
use crate::volume::shared_cache::SharedCache;
use crate::volume::FlushMode;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Store options from the config and the resolved credentials.
pub fn store_options(cfg: &Config, creds: Option<&Credentials>) -> StoreOptions {
    StoreOptions {
        endpoint: cfg.store.endpoint.clone(),
        region: cfg.store.region.clone(),
        path_style: cfg.store.path_style,
        access_key: creds.map(|c| c.access_key.clone()),
        secret_key: creds.map(|c| c.secret_key.clone()),
        session_token: creds.and_then(|c| c.session_token.clone()),
        timeout: cfg.store.timeout,
        retries: cfg.store.retries,
        allow_racy_conditional: cfg.store.allow_racy_conditional,
        ..StoreOptions::default()
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
    /// `cache.lease_ttl`.
    pub lease_ttl: Duration,
    /// `cache.gc_grace`.
    pub gc_grace: Duration,
    /// The shared cache of forks' base data (`cache.shared_cache`; `None` at 0).
    pub shared_cache: Option<Arc<SharedCache>>,
    /// Lease owner of every volume: this host's random id ([`HostIdentity`]).
    pub owner: String,
    /// Hostname written beside the owner, for display.
    pub host_label: String,
    /// Master keys (`[store.encryption]`; `None`: new volumes are plaintext).
    pub encryption: Option<Arc<MasterKeys>>,
}

impl VolumeSettings {
    /// From the daemon config and this host's identity (read from the same
    /// `cache.dir`): volumes live in `<cache.dir>/volumes/<name>`.
    /// Fails when a master key file cannot be read (the error names the file).
    pub fn from_config(cfg: &Config, host: &HostIdentity) -> Result<VolumeSettings, CryptoError> {
        let env = |k: &str| std::env::var(k).ok();
        let encryption = match &cfg.store.encryption {
            Some(e) => Some(Arc::new(e.load(&env)?)),
            None => None,
        };
        Ok(VolumeSettings {
            root: cfg.cache.dir.join("volumes"),
            dirty_limit_bytes: cfg.cache.dirty_limit.0,
            flush_interval: cfg.cache.flush_interval,
            flush_mode: cfg.cache.flush_mode,
            compress: cfg.cache.compress,
            lease_ttl: cfg.cache.lease_ttl,
            gc_grace: cfg.cache.gc_grace,
            shared_cache: (cfg.cache.shared_cache.0 > 0)
                .then(|| SharedCache::new(cfg.cache.shared_cache.0)),
            owner: host.id.clone(),
            host_label: host.label.clone(),
            encryption,
        })
    }
}

/// ublk server options from the config.
pub fn ublk_options(cfg: &Config, host: &HostIdentity) -> UblkOptions {
    let u = &cfg.ublk;
    let mut o = UblkOptions {
        owner_tag: host.device_tag(),
        ..UblkOptions::default()
    };
    if u.workers > 0 {
        o.workers = u.workers as usize;
    }
    // Ranges are validated by `Config::validate` against `crate::rules`.
    o.queues = u16::try_from(u.queues).unwrap_or(u16::MAX);
    o.queue_depth = u16::try_from(u.queue_depth).unwrap_or(u16::MAX);
    o.pool_slots = u.pool_slots as usize;
    o.bounce_mode = u.bounce_mode;
    o
}
