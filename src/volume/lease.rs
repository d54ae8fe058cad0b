//! The volume lease: one writer per volume, fenced at every commit.
//!
//! Object `volumes/<name>/lease` (JSON `{owner, epoch, renewed_at_ms}`), written only
//! with conditional PUTs:
//! - acquire: if absent, put-if-absent with epoch 1; if present and ours (same owner
//!   string: by default `<hostname>:<cache_dir>`), stale (not renewed for `lease_ttl`)
//!   or `takeover` is set, put-if-match(etag) with `epoch + 1`; otherwise `LeaseHeld`.
//! - every open increments the epoch, so an older instance of the same owner is
//!   fenced too;
//! - before each segment commit the flusher re-reads the lease and requires
//!   `(owner, epoch)` to be ours (fencing); renewals are put-if-match.
//!
//! The lease is never released (close releases nothing remote): another host takes
//! the volume once the lease is stale, or immediately with `takeover`.

use super::VolumeError;
use crate::store::{ObjectStore, PutCondition, StoreError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The lease object's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Owner identity.
    pub owner: String,
    /// Incremented at every acquisition.
    pub epoch: u64,
    /// Last acquisition or renewal (ms since the Unix epoch).
    pub renewed_at_ms: u64,
}

/// A lease we hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Our lease content.
    pub lease: Lease,
    /// Etag of the object we wrote.
    pub etag: String,
}

/// Outcome of [`acquire`].
#[derive(Debug, Clone)]
pub struct Acquired {
    /// The lease now held.
    pub held: Held,
    /// Owner before us (None if there was no lease object).
    pub prev_owner: Option<String>,
}

fn encode(l: &Lease) -> Result<Bytes, VolumeError> {
    serde_json::to_vec(l)
        .map(Bytes::from)
        .map_err(|e| VolumeError::Corrupt(format!("lease encoding: {e}")))
}

fn decode(b: &[u8]) -> Result<Lease, VolumeError> {
    serde_json::from_slice(b).map_err(|e| VolumeError::Corrupt(format!("lease object: {e}")))
}

/// Take the lease (see the module doc for the rules).
pub async fn acquire(
    store: &dyn ObjectStore,
    key: &str,
    owner: &str,
    now_ms: u64,
    ttl_ms: u64,
    takeover: bool,
) -> Result<Acquired, VolumeError> {
    for _ in 0..5 {
        let meta = match store.head(key).await {
            Ok(m) => Some(m),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(meta) = meta else {
            let lease = Lease {
                owner: owner.to_string(),
                epoch: 1,
                renewed_at_ms: now_ms,
            };
            match store
                .put_if(key, encode(&lease)?, PutCondition::IfAbsent)
                .await
            {
                Ok(etag) => {
                    return Ok(Acquired {
                        held: Held { lease, etag },
                        prev_owner: None,
                    })
                }
                Err(StoreError::PreconditionFailed(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let cur = match store.get(key).await {
            Ok(b) => decode(&b)?,
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let age = now_ms.saturating_sub(cur.renewed_at_ms);
        if cur.owner != owner && age <= ttl_ms && !takeover {
            return Err(VolumeError::LeaseHeld {
                owner: cur.owner,
                age_ms: age,
            });
        }
        let lease = Lease {
            owner: owner.to_string(),
            epoch: cur.epoch + 1,
            renewed_at_ms: now_ms,
        };
        match store
            .put_if(key, encode(&lease)?, PutCondition::IfMatch(meta.etag))
            .await
        {
            Ok(etag) => {
                return Ok(Acquired {
                    held: Held { lease, etag },
                    prev_owner: Some(cur.owner),
                })
            }
            Err(StoreError::PreconditionFailed(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(VolumeError::LeaseHeld {
        owner: "(contended)".into(),
        age_ms: 0,
    })
}

/// Fencing check: the stored lease must still be `held`'s owner and epoch.
pub async fn check(store: &dyn ObjectStore, key: &str, held: &Lease) -> Result<(), VolumeError> {
    let cur = match store.get(key).await {
        Ok(b) => decode(&b)?,
        Err(StoreError::NotFound(_)) => {
            return Err(VolumeError::Fenced("lease object deleted".into()))
        }
        Err(e) => return Err(e.into()),
    };
    if cur.owner != held.owner || cur.epoch != held.epoch {
        return Err(VolumeError::Fenced(format!(
            "lease now held by {} (epoch {}), ours was epoch {}",
            cur.owner, cur.epoch, held.epoch
        )));
    }
    Ok(())
}

/// Renew: put-if-match with a new timestamp. Returns the new held lease.
pub async fn renew(
    store: &dyn ObjectStore,
    key: &str,
    held: &Held,
    now_ms: u64,
) -> Result<Held, VolumeError> {
    let lease = Lease {
        renewed_at_ms: now_ms,
        ..held.lease.clone()
    };
    match store
        .put_if(
            key,
            encode(&lease)?,
            PutCondition::IfMatch(held.etag.clone()),
        )
        .await
    {
        Ok(etag) => Ok(Held { lease, etag }),
        Err(StoreError::PreconditionFailed(_)) => {
            check(store, key, &held.lease).await?;
            // Still ours (the store changed the etag on its own): adopt it.
            let etag = store.head(key).await?.etag;
            Ok(Held {
                lease: held.lease.clone(),
                etag,
            })
        }
        Err(e) => Err(e.into()),
    }
}
