//! Store-level operations on a volume that need no open volume (exists, purge) and
//! growing an open one: everything that changes the meta object after creation.
//! Purge obeys the lease: it never deletes a volume another host holds, unless forced.

use super::keys::VolumeKeys;
use super::lease::{inspect, Holder, Rules};
use super::manifest::VolumeMeta;
use super::meta_io::{check_name, meta_bytes, read_meta};
use super::{Inner, VolumeError};
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
    for o in store.list(keys.root()).await? {
        if o.key != meta && o.key != lease {
            store.delete(&o.key).await?;
        }
    }
    store.delete(&meta).await?;
    store.delete(&lease).await?;
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
    let m = VolumeMeta {
        size_bytes: new_size,
        ..g.0.clone()
    };
    let key = inner.keys.meta();
    let etag = inner
        .store
        .put_if(&key, meta_bytes(&m)?, PutCondition::IfMatch(g.1.clone()))
        .await?;
    inner
        .data
        .set_len(new_size)
        .map_err(|e| inner.fail("growing cache file", e))?;
    *g = (m, etag);
    inner.size.store(new_size, Ordering::Release);
    Ok(())
}
