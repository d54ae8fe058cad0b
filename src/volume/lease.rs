//! The volume lease: one writer per volume, fenced at every commit.
//!
//! Object `volumes/<name>/lease` (JSON `{owner, host, epoch, renewed_at_ms}`), written
//! only with conditional PUTs:
//! - `owner` is the writer's identity: the daemon's random host id (one per cache
//!   directory, `daemon::host_identity`); `host` is the hostname, for people only;
//! - acquire: if absent, put-if-absent with epoch 1; if present and ours (same
//!   owner), stale or `takeover` is set, put-if-match(etag) with `epoch + 1`;
//!   otherwise `LeaseHeld`;
//! - every open increments the epoch, so an older instance of the same owner is
//!   fenced too;
//! - the flusher re-reads the lease before and after each commit and requires
//!   `(owner, epoch)` to be ours (fencing); renewals are put-if-match.
//!
//! Staleness is judged on the *store's* clock: the lease object's Last-Modified
//! against the Last-Modified of the volume's `clock` object, rewritten for the
//! purpose. Host clocks may be set arbitrarily wrong; only their rates must agree with
//! the store's within 10 % (the holder self-fences that much early, see
//! [`self_fence_after_ms`]). A store that reports no modification time falls back to
//! `renewed_at_ms` against this host's wall clock, which assumes synchronised clocks.
//!
//! The lease is never released (close releases nothing remote): another host takes
//! the volume once the lease is stale, or immediately with `takeover`.

use super::keys::VolumeKeys;
use super::VolumeError;
use crate::clock::Clock;
use crate::rules::{LEASE_CLOCK_SLACK, LEASE_SELF_FENCE_DIVISOR};
use crate::store::{put_new, ObjectMeta, ObjectStore, PutCondition, StoreError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A fence: `epoch` opened the volume having listed every segment up to `base`.
/// Any object of an older epoch with a larger sequence number landed after that
/// point (a late PUT of a fenced writer) and is ignored (see `fencing.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The epoch that fenced.
    pub epoch: u64,
    /// Highest segment seq it had listed.
    pub base: u64,
}

/// The lease object's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Owner identity (the writer's host id).
    pub owner: String,
    /// The owner's hostname, for display (absent in leases of older versions).
    #[serde(default)]
    pub host: String,
    /// Incremented at every acquisition.
    pub epoch: u64,
    /// Last acquisition or renewal (ms since the Unix epoch, the holder's clock;
    /// for display, and staleness only on stores without modification times).
    pub renewed_at_ms: u64,
    /// Fences of the epochs that opened the volume since the newest manifest that
    /// makes them redundant (carried from holder to holder; see `fencing.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fences: Vec<Fence>,
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
    /// Epoch before ours (0 if there was no lease object).
    pub prev_epoch: u64,
}

impl Lease {
    /// `host (owner)` for messages: who holds it, in words an operator can act on.
    pub fn holder(&self) -> String {
        if self.host.is_empty() {
            self.owner.clone()
        } else {
            format!("{} (host id {})", self.host, self.owner)
        }
    }
}

/// Who holds a volume's lease, as seen by `owner` (see [`inspect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// No lease object: nobody has opened the volume (or it was purged).
    Absent,
    /// `owner` holds it (possibly an earlier process of ours).
    Ours(Lease),
    /// Another owner; `stale` once not renewed for longer than the TTL.
    Other {
        /// The lease.
        lease: Lease,
        /// Time since its last renewal (store clock where available).
        age_ms: u64,
        /// `age_ms` exceeds the TTL plus [`LEASE_CLOCK_SLACK`].
        stale: bool,
    },
}

/// Identity and timing rules of one lease user.
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    /// Our owner id.
    pub owner: &'a str,
    /// Our hostname (display).
    pub host: &'a str,
    /// Lease TTL.
    pub ttl_ms: u64,
    /// Our clock (fallback age, renewal timestamps).
    pub clock: &'a dyn Clock,
}

/// How long after a renewal *began* (monotonic ms) its holder may still acknowledge
/// writes: TTL minus a tenth (clock-rate margin) minus [`LEASE_CLOCK_SLACK`].
pub fn self_fence_after_ms(ttl_ms: u64) -> u64 {
    ttl_ms
        .saturating_sub(ttl_ms / u64::from(LEASE_SELF_FENCE_DIVISOR))
        .saturating_sub(LEASE_CLOCK_SLACK.as_millis() as u64)
}

/// Time since `lease` (object `meta`) was last written: on the store's clock when it
/// reports modification times, else on `clock` against `renewed_at_ms`.
async fn age_ms(
    store: &dyn ObjectStore,
    keys: &VolumeKeys,
    meta: &ObjectMeta,
    lease: &Lease,
    clock: &dyn Clock,
) -> Result<u64, VolumeError> {
    if let Some(written) = meta.modified_ms {
        let probe = keys.clock_probe();
        store.put(&probe, Bytes::new()).await?;
        if let Some(now) = store.head(&probe).await?.modified_ms {
            return Ok(now.saturating_sub(written));
        }
    }
    Ok(clock.now_ms().saturating_sub(lease.renewed_at_ms))
}

/// Who holds the lease of the volume with `keys`, as `rules.owner` sees it.
pub async fn inspect(
    store: &dyn ObjectStore,
    keys: &VolumeKeys,
    rules: Rules<'_>,
) -> Result<Holder, VolumeError> {
    let key = keys.lease();
    let meta = match store.head(&key).await {
        Ok(m) => m,
        Err(StoreError::NotFound(_)) => return Ok(Holder::Absent),
        Err(e) => return Err(e.into()),
    };
    let lease = match store.get(&key).await {
        Ok(b) => decode(&b)?,
        Err(StoreError::NotFound(_)) => return Ok(Holder::Absent),
        Err(e) => return Err(e.into()),
    };
    if lease.owner == rules.owner {
        return Ok(Holder::Ours(lease));
    }
    let age = age_ms(store, keys, &meta, &lease, rules.clock).await?;
    Ok(Holder::Other {
        stale: age > rules.ttl_ms + LEASE_CLOCK_SLACK.as_millis() as u64,
        lease,
        age_ms: age,
    })
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
    keys: &VolumeKeys,
    rules: Rules<'_>,
    takeover: bool,
) -> Result<Acquired, VolumeError> {
    let key = keys.lease();
    let mine = |epoch, fences| Lease {
        owner: rules.owner.to_string(),
        host: rules.host.to_string(),
        epoch,
        renewed_at_ms: rules.clock.now_ms(),
        fences,
    };
    for _ in 0..5 {
        let meta = match store.head(&key).await {
            Ok(m) => Some(m),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(meta) = meta else {
            let lease = mine(1, Vec::new());
            match put_new(store, &key, encode(&lease)?).await? {
                Some(etag) => {
                    return Ok(Acquired {
                        held: Held { lease, etag },
                        prev_owner: None,
                        prev_epoch: 0,
                    })
                }
                None => continue,
            }
        };
        let cur = match store.get(&key).await {
            Ok(b) => decode(&b)?,
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        if cur.owner != rules.owner && !takeover {
            let age = age_ms(store, keys, &meta, &cur, rules.clock).await?;
            if age <= rules.ttl_ms + LEASE_CLOCK_SLACK.as_millis() as u64 {
                return Err(VolumeError::LeaseHeld {
                    owner: cur.holder(),
                    age_ms: age,
                });
            }
            tracing::warn!(%key, holder = %cur.holder(), age_ms = age, "taking over a stale lease");
        }
        let lease = mine(cur.epoch + 1, cur.fences.clone());
        match store
            .put_if(&key, encode(&lease)?, PutCondition::IfMatch(meta.etag))
            .await
        {
            Ok(etag) => {
                return Ok(Acquired {
                    held: Held { lease, etag },
                    prev_owner: Some(cur.owner),
                    prev_epoch: cur.epoch,
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
            cur.holder(),
            cur.epoch,
            held.epoch
        )));
    }
    Ok(())
}

/// Rewrite our lease (renewal, new fences): put-if-match on our etag. Returns the
/// held lease and whether `lease` was written; `false` when the etag changed while
/// the lease is still ours (an ambiguous earlier attempt): nothing is renewed then.
pub async fn rewrite(
    store: &dyn ObjectStore,
    key: &str,
    held: &Held,
    lease: Lease,
) -> Result<(Held, bool), VolumeError> {
    match store
        .put_if(
            key,
            encode(&lease)?,
            PutCondition::IfMatch(held.etag.clone()),
        )
        .await
    {
        Ok(etag) => Ok((Held { lease, etag }, true)),
        Err(StoreError::PreconditionFailed(_)) => {
            check(store, key, &held.lease).await?;
            // Still ours (an earlier attempt landed, or the store changed the etag on
            // its own): adopt the stored object as it is.
            let etag = store.head(key).await?.etag;
            let cur = decode(&store.get(key).await?)?;
            Ok((Held { lease: cur, etag }, false))
        }
        Err(e) => Err(e.into()),
    }
}

/// Renew: [`rewrite`] with a new timestamp and `fences`.
pub async fn renew(
    store: &dyn ObjectStore,
    key: &str,
    held: &Held,
    now_ms: u64,
    fences: Vec<Fence>,
) -> Result<(Held, bool), VolumeError> {
    let lease = Lease {
        renewed_at_ms: now_ms,
        fences,
        ..held.lease.clone()
    };
    rewrite(store, key, held, lease).await
}
