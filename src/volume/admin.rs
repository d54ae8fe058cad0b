//! Store-level operations on a volume that need no open volume (exists, purge) and
//! growing an open one: everything that changes the meta object after creation.
//! Purge obeys the lease: it never deletes a volume another host holds, unless forced.

use super::crypto::MasterKeys;
use super::keyring::Keyring;
use super::keys::VolumeKeys;
use super::lease::{inspect, Holder, Rules};
use super::manifest::VolumeMeta;
use super::meta_io::{check_name, meta_bytes, read_meta};
use super::{Inner, VolumeConfig, VolumeError};
use crate::store::{ObjectStore, PutCondition};
use std::sync::atomic::Ordering;

pub(crate) async fn exists_in_store(
    store: &dyn ObjectStore,
    name: &str,
) -> Result<Option<u64>, VolumeError> {
    check_name(name)?;
    Ok(read_meta(store, &VolumeKeys::new(name).meta())
        .await?
        .map(|(m, _)| m.size_bytes))
}

/// Delete every object of `name`, the lease last. First asks who holds the lease:
/// another owner whose lease is not stale may be serving the volume right now, so
/// unless `force` (an operator who knows that host is gone) this deletes nothing and
/// returns [`VolumeError::LeaseHeld`] naming the holder.
pub(crate) async fn purge(
    store: &dyn ObjectStore,
    name: &str,
    rules: Rules<'_>,
    force: bool,
    masters: Option<&MasterKeys>,
) -> Result<(), VolumeError> {
    check_name(name)?;
    let keys = VolumeKeys::new(name);
    if let Holder::Other {
        lease,
        age_ms,
        stale,
    } = inspect(store, &keys, rules).await?
    {
        if !stale && !force {
            return Err(VolumeError::LeaseHeld {
                owner: lease.holder(),
                age_ms,
            });
        }
        tracing::warn!(
            volume = name,
            holder = %lease.holder(),
            age_ms,
            stale,
            force,
            "purging a volume whose lease another host held"
        );
    }
    let (meta, lease) = (keys.meta(), keys.lease());
    let mut stored = read_meta(store, &meta).await?;
    // Crypto-erase before anything else: once meta holds no wrapped data key,
    // nothing of the volume opens again, whatever GC or this purge leave behind.
    // The key stays in memory only to read its snapshots for the forks below.
    let mut ring = None;
    if let Some((m, etag)) = stored.as_mut().filter(|(m, _)| m.keys.is_some()) {
        let uuid = m.uuid_u64().map_err(VolumeError::Corrupt)?;
        ring = Keyring::unwrap(name, uuid, m.encrypted, m.keys.as_ref(), masters).ok();
        let erased = VolumeMeta {
            keys: None,
            ..m.clone()
        };
        *etag = store
            .put_if(
                &meta,
                meta_bytes(&erased)?,
                PutCondition::IfMatch(etag.clone()),
            )
            .await?;
        *m = erased;
        tracing::info!(
            volume = name,
            "data key destroyed (crypto-erase); deleting its objects"
        );
    }
    let stored = stored.map(|(m, _)| m);
    let key = ring.as_ref().and_then(Keyring::own);
    let keep = match &stored {
        Some(m) => super::fork::still_needed(store, name, m, key).await?,
        None => None,
    };
    if let (Some(keep), Some(m)) = (&keep, &stored) {
        // Forks read some of its snapshots: keep what they need, mark it purged.
        for o in store.list(keys.root()).await? {
            if !keep.contains(&o.key) && o.key != lease {
                store.delete(&o.key).await?;
            }
        }
        let purged = VolumeMeta {
            purged: true,
            ..m.clone()
        };
        store.put(&meta, meta_bytes(&purged)?).await?;
        store.delete(&lease).await?;
        tracing::info!(
            volume = name,
            kept = keep.len(),
            "volume purged; the objects its forks read are kept"
        );
        return Ok(());
    }
    for o in store.list(keys.root()).await? {
        if o.key != meta && o.key != lease {
            store.delete(&o.key).await?;
        }
    }
    store.delete(&meta).await?;
    store.delete(&lease).await?;
    if let Some(m) = &stored {
        super::fork::release_parent(store, m, name).await?;
    }
    Ok(())
}

pub(crate) async fn grow(inner: &Inner, new_size: u64) -> Result<(), VolumeError> {
    crate::rules::check_aligned(new_size).map_err(VolumeError::Invalid)?;
    let mut g = inner.meta.lock().await;
    if new_size < g.0.size_bytes {
        return Err(VolumeError::Unsupported("shrinking a volume".into()));
    }
    if new_size == g.0.size_bytes {
        return Ok(());
    }
    // The cache file first: a size the cache filesystem cannot hold is refused
    // before the store hears of it, and the volume keeps serving at its old size.
    let old_size = g.0.size_bytes;
    inner
        .data
        .set_len(new_size)
        .map_err(|e| too_large_or_io(&inner.cfg, new_size, e))?;
    let m = VolumeMeta {
        size_bytes: new_size,
        ..g.0.clone()
    };
    let key = inner.keys.meta();
    let etag = match inner
        .store
        .put_if(&key, meta_bytes(&m)?, PutCondition::IfMatch(g.1.clone()))
        .await
    {
        Ok(etag) => etag,
        Err(e) => {
            // Nothing beyond the old size holds data: give the space back.
            if let Err(err) = inner.data.set_len(old_size) {
                tracing::warn!(volume = %inner.cfg.name, error = %err, "shrinking the cache file back after a failed grow");
            }
            return Err(e.into());
        }
    };
    *g = (m, etag);
    inner.size.store(new_size, Ordering::Release);
    Ok(())
}

/// A cache file that cannot be `size` bytes long: EFBIG (or EINVAL) means the cache
/// filesystem's file size limit, an invalid size for this host; anything else is an
/// I/O error.
fn too_large_or_io(cfg: &VolumeConfig, size: u64, e: std::io::Error) -> VolumeError {
    match e.raw_os_error() {
        Some(libc::EFBIG) | Some(libc::EINVAL) => VolumeError::Invalid(format!(
            "the cache filesystem of {} cannot hold a {} cache file ({e}); ext4 holds at most 16T per file: use a smaller size or put cache.dir on XFS",
            cfg.cache_dir.display(),
            crate::size::format_size(size)
        )),
        _ => VolumeError::io(
            format!("sizing the cache file in {}", cfg.cache_dir.display()),
            e,
        ),
    }
}

/// Name of the probe file [`check_cache_capacity`] sizes and removes.
const CAPACITY_PROBE: &str = "capacity-probe";

/// Check, before anything is written to the store, that the cache filesystem can
/// hold this volume's cache file at `size` bytes: create the cache dir, size a
/// sparse probe file in it to `size` (no space is allocated) and remove it. Fails
/// with [`VolumeError::Invalid`] naming the size when the filesystem's file size
/// limit is lower (ext4: 16 TiB; exports allow 64 TiB).
pub(crate) fn check_cache_capacity(cfg: &VolumeConfig, size: u64) -> Result<(), VolumeError> {
    let dir = &cfg.cache_dir;
    let fs = &cfg.fileio;
    fs.create_dir_all(dir)
        .map_err(|e| VolumeError::io(format!("creating cache dir {}", dir.display()), e))?;
    let probe = dir.join(CAPACITY_PROBE);
    let f = fs
        .open(&probe, true)
        .map_err(|e| VolumeError::io(format!("creating {}", probe.display()), e))?;
    let sized = f.set_len(size);
    drop(f);
    let removed = fs.remove_file(&probe);
    sized.map_err(|e| too_large_or_io(cfg, size, e))?;
    removed.map_err(|e| VolumeError::io(format!("removing {}", probe.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{FileIo, SimFs};
    use std::sync::Arc;

    #[test]
    fn capacity_is_probed_without_leaving_a_file() {
        let fs = SimFs::new();
        fs.fail_set_len_above(1 << 20);
        let mut cfg = VolumeConfig::new("v", 0, "/sim/cache/v");
        cfg.fileio = Arc::new(fs.clone());
        check_cache_capacity(&cfg, 1 << 20).unwrap();
        let err = check_cache_capacity(&cfg, 2 << 20).unwrap_err();
        assert!(matches!(err, VolumeError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("2M"), "{err}");
        assert!(!fs.exists(&cfg.cache_dir.join(CAPACITY_PROBE)));
    }
}
