//! Master-key rotation for volumes nobody has open: re-wrap the data keys in a
//! volume's `meta` under the current master key (no data is rewritten).
//!
//! An open re-wraps its own volume (open.rs); this covers the volumes no daemon
//! opens, so that after `glidefs keys rewrap` no meta in the store needs an old
//! master key. Invariants: a volume whose lease another holder renews (not stale) is
//! never touched, because its daemon keeps meta's etag and rewrites meta itself (it
//! re-wraps at its next open); the write is conditional on the etag read, and a
//! meta changed meanwhile is read again, so no concurrent change is lost.

use super::crypto::MasterKeys;
use super::keyring::Keyring;
use super::keys::VolumeKeys;
use super::lease::{inspect, Holder, Rules};
use super::manifest::VolumeMeta;
use super::meta_io::{check_name, meta_bytes, read_meta};
use super::VolumeError;
use crate::store::{ObjectStore, PutCondition, StoreError};

/// What re-wrapping one volume found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrap {
    /// Its data keys were wrapped by master key `from`; now by the current one.
    Rewrapped {
        /// The old key's id.
        from: String,
    },
    /// Dry run: they are wrapped by master key `from` and would be re-wrapped.
    Stale {
        /// The old key's id.
        from: String,
    },
    /// Wrapped by the current master key already.
    Current,
    /// No data key: a plaintext or crypto-erased volume.
    NoKey,
    /// Wrapped by an old key, but `holder` serves the volume (its lease is not
    /// stale): its daemon re-wraps it when it next opens it with the new key.
    Held {
        /// Who holds the lease.
        holder: String,
        /// The old key's id.
        from: String,
    },
}

/// Re-wrap volume `name`'s data keys under `masters.current` (`dry_run`: only say
/// what would happen). `rules` judges its lease (any live holder counts, ours too).
/// A wrong master key is [`VolumeError::Key`] naming the key ids, a missing volume
/// [`VolumeError::NotFound`].
pub(crate) async fn rewrap(
    store: &dyn ObjectStore,
    name: &str,
    masters: &MasterKeys,
    rules: Rules<'_>,
    dry_run: bool,
) -> Result<Rewrap, VolumeError> {
    check_name(name)?;
    let keys = VolumeKeys::new(name);
    let meta = keys.meta();
    loop {
        let Some((m, etag)) = read_meta(store, &meta).await? else {
            return Err(VolumeError::NotFound(format!("volume {name:?}")));
        };
        let Some(wrapped) = &m.keys else {
            return Ok(Rewrap::NoKey);
        };
        if wrapped.key_id == masters.current.id {
            return Ok(Rewrap::Current);
        }
        let from = wrapped.key_id.clone();
        match inspect(store, &keys, rules).await? {
            Holder::Ours(lease)
            | Holder::Other {
                lease,
                stale: false,
                ..
            } => {
                return Ok(Rewrap::Held {
                    holder: lease.holder(),
                    from,
                })
            }
            Holder::Absent | Holder::Other { stale: true, .. } => {}
        }
        let uuid = m.uuid_u64().map_err(VolumeError::Corrupt)?;
        let ring = Keyring::unwrap(name, uuid, m.encrypted, Some(wrapped), Some(masters))?;
        if dry_run {
            return Ok(Rewrap::Stale { from });
        }
        let new = VolumeMeta {
            keys: Some(ring.wrap(&masters.current, uuid)),
            ..m.clone()
        };
        match store
            .put_if(&meta, meta_bytes(&new)?, PutCondition::IfMatch(etag))
            .await
        {
            Ok(_) => {
                tracing::info!(volume = name, from = %from, to = %masters.current.id, "data keys re-wrapped");
                return Ok(Rewrap::Rewrapped { from });
            }
            // Changed meanwhile (an open, a grow, a purge): look again.
            Err(StoreError::PreconditionFailed(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The names of every volume with a `meta` object in the store (one listing of
/// the whole volumes prefix).
pub(crate) async fn volume_names(store: &dyn ObjectStore) -> Result<Vec<String>, VolumeError> {
    let mut names: Vec<String> = store
        .list(super::keys::VOLUMES)
        .await?
        .iter()
        .filter_map(|o| super::keys::meta_owner(&o.key).map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}
