//! Snapshots: an immutable, named image of a volume as of a committed segment.
//!
//! A snapshot is two objects: the manifest `manifest/<seq>` of the store map as of
//! segment `seq` (written by the snapshot if the flusher had not written that one)
//! and `snap/<name>` (JSON [`SnapshotInfo`]) that pins it. Taking one drains the
//! volume first, so it holds everything acknowledged before the call (writes
//! acknowledged meanwhile may or may not be in it).
//!
//! Invariants:
//! - while `snap/<name>` exists, garbage collection deletes neither its manifest
//!   nor any segment that manifest points into, and compaction does not rewrite
//!   such a segment (rewriting would only add bytes: the snapshot keeps the old
//!   copy alive);
//! - the pins are loaded from the store before the first deletion or compaction
//!   of an opened volume; a snapshot whose objects cannot be read is logged and
//!   makes garbage collection delete nothing (never a guess);
//! - creating and deleting a snapshot, and every deletion pass of garbage
//!   collection, run under `Inner::gc_lock`, so a pass never deletes what a
//!   snapshot being created is about to pin;
//! - only the lease holder creates or deletes snapshots (lease checked before the
//!   writes, as for any commit).

use super::keys::VolumeKeys;
use super::{lease, manifest, Inner, VolumeError};
use crate::store::{put_new, ObjectStore};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// The `snap/<name>` object, and what the API lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Snapshot name (the rules of export names).
    pub name: String,
    /// The manifest it pins: the volume as of this segment.
    pub seq: u64,
    /// Volume size in bytes when it was taken.
    pub size_bytes: u64,
    /// Volume uuid (hex), so a snapshot never outlives into a recreated volume.
    pub uuid: String,
    /// Wall-clock time it was taken (ms since the epoch).
    pub created_ms: u64,
}

/// The pins of one volume's snapshots.
#[derive(Debug, Default)]
pub(crate) struct Pins {
    snaps: BTreeMap<String, (SnapshotInfo, HashSet<u64>)>,
    /// Some snapshot could not be read: nothing may be deleted.
    broken: bool,
}

impl Pins {
    /// Whether segment `seq` may not be deleted or rewritten.
    pub fn segment(&self, seq: u64) -> bool {
        self.broken || self.snaps.values().any(|(_, s)| s.contains(&seq))
    }

    /// Whether manifest `seq` may not be deleted.
    pub fn manifest(&self, seq: u64) -> bool {
        self.broken || self.snaps.values().any(|(i, _)| i.seq == seq)
    }
}

fn check_snapshot_name(name: &str) -> Result<(), VolumeError> {
    crate::rules::validate_name_of("snapshot", name).map_err(VolumeError::Invalid)
}

/// Load one snapshot: its info and the segments its manifest points into.
async fn load_one(
    store: &dyn ObjectStore,
    keys: &VolumeKeys,
    key: &str,
    seal: Option<&super::crypto::FrameKey>,
) -> Result<(SnapshotInfo, HashSet<u64>), VolumeError> {
    let corrupt = |m: String| VolumeError::Corrupt(format!("{key}: {m}"));
    let info: SnapshotInfo =
        serde_json::from_slice(&store.get(key).await?).map_err(|e| corrupt(e.to_string()))?;
    let mkey = keys.manifest(info.seq);
    let b = store
        .get(&mkey)
        .await
        .map_err(|e| corrupt(format!("its manifest {mkey}: {e}")))?;
    let (_, map) = manifest::decode(&b, seal).map_err(|e| corrupt(format!("{mkey}: {e}")))?;
    Ok((info, map.live_segments()))
}

/// Load the pins from the store unless they are loaded. The caller holds
/// `gc_lock`.
pub(super) async fn ensure_pins(inner: &Inner) -> Result<(), VolumeError> {
    if inner.st.lock().pins.is_some() {
        return Ok(());
    }
    let mut pins = Pins::default();
    for o in inner.store.list(&inner.keys.snapshots()).await? {
        let Some(name) = inner.keys.snapshot_name(&o.key) else {
            continue;
        };
        match load_one(inner.store.as_ref(), &inner.keys, &o.key, inner.seal_key()).await {
            Ok((info, segs)) if info.uuid == inner.uuid_hex() => {
                pins.snaps.insert(name.to_owned(), (info, segs));
            }
            Ok(_) => {
                tracing::warn!(volume = %inner.cfg.name, key = %o.key, "snapshot of an earlier volume of this name; ignored");
            }
            Err(e @ VolumeError::Corrupt(_)) => {
                tracing::error!(volume = %inner.cfg.name, error = %e, "snapshot unreadable: garbage collection deletes nothing until it is fixed or deleted");
                pins.broken = true;
            }
            Err(e) => return Err(e),
        }
    }
    inner.st.lock().pins = Some(pins);
    Ok(())
}

/// Take snapshot `name` of everything committed now (the caller drained).
pub(super) async fn create(inner: &Inner, name: &str) -> Result<SnapshotInfo, VolumeError> {
    check_snapshot_name(name)?;
    let _gc = inner.gc_lock.lock().await;
    ensure_pins(inner).await?;
    let epoch = inner.lease.lock().lease.epoch;
    let (seq, obj, segs) = {
        let st = inner.st.lock();
        if st.pins.as_ref().is_some_and(|p| p.snaps.contains_key(name)) {
            return Err(VolumeError::AlreadyExists(format!(
                "snapshot {name:?} of volume {:?}",
                inner.cfg.name
            )));
        }
        let seq = st.last_committed;
        let obj = manifest::encode(seq, inner.uuid, epoch, &st.store, inner.seal_key());
        (seq, obj, st.store.live_segments())
    };
    inner.check_bg()?;
    let held = inner.lease.lock().lease.clone();
    lease::check(inner.store.as_ref(), &inner.keys.lease(), &held).await?;
    // Taken: the flusher wrote the manifest of this seq already, the same map.
    put_new(
        inner.store.as_ref(),
        &inner.keys.manifest(seq),
        Bytes::from(obj),
    )
    .await?;
    let info = SnapshotInfo {
        name: name.to_owned(),
        seq,
        size_bytes: inner.size_bytes(),
        uuid: inner.uuid_hex(),
        created_ms: inner.cfg.clock.now_ms(),
    };
    let body = serde_json::to_vec(&info)
        .map_err(|e| VolumeError::Corrupt(format!("snapshot encoding: {e}")))?;
    if put_new(
        inner.store.as_ref(),
        &inner.keys.snapshot(name),
        Bytes::from(body),
    )
    .await?
    .is_none()
    {
        return Err(VolumeError::AlreadyExists(format!(
            "snapshot {name:?} of volume {:?}",
            inner.cfg.name
        )));
    }
    if let Some(p) = inner.st.lock().pins.as_mut() {
        p.snaps.insert(name.to_owned(), (info.clone(), segs));
    }
    tracing::info!(volume = %inner.cfg.name, snapshot = name, seq, "snapshot taken");
    Ok(info)
}

/// The volume's snapshots, by name.
pub(super) async fn list(inner: &Inner) -> Result<Vec<SnapshotInfo>, VolumeError> {
    let _gc = inner.gc_lock.lock().await;
    ensure_pins(inner).await?;
    let st = inner.st.lock();
    Ok(st
        .pins
        .as_ref()
        .map(|p| p.snaps.values().map(|(i, _)| i.clone()).collect())
        .unwrap_or_default())
}

/// Delete snapshot `name`: what only it pinned is collected by a later garbage
/// collection (after `gc_grace`).
pub(super) async fn delete(inner: &Inner, name: &str) -> Result<(), VolumeError> {
    check_snapshot_name(name)?;
    let _gc = inner.gc_lock.lock().await;
    ensure_pins(inner).await?;
    let known = inner
        .st
        .lock()
        .pins
        .as_ref()
        .is_some_and(|p| p.snaps.contains_key(name));
    if !known {
        return Err(VolumeError::NotFound(format!(
            "snapshot {name:?} of volume {:?}",
            inner.cfg.name
        )));
    }
    let in_use = |forks: Vec<(String, String)>| {
        let names: Vec<String> = forks.into_iter().map(|(_, c)| c).collect();
        VolumeError::InUse(format!(
            "snapshot {name:?} of volume {:?} has forks: {}; delete them first",
            inner.cfg.name,
            names.join(", ")
        ))
    };
    let forks = super::fork::markers(inner.store.as_ref(), &inner.keys, Some(name)).await?;
    if !forks.is_empty() {
        return Err(in_use(forks));
    }
    inner.check_bg()?;
    let held = inner.lease.lock().lease.clone();
    lease::check(inner.store.as_ref(), &inner.keys.lease(), &held).await?;
    let key = inner.keys.snapshot(name);
    let body = inner.store.get(&key).await?;
    inner.store.delete(&key).await?;
    // A fork made meanwhile wrote its marker before it looks at the snapshot again:
    // put the snapshot back for it (see `fork.rs`). The pins are unchanged so far.
    let forks = super::fork::markers(inner.store.as_ref(), &inner.keys, Some(name)).await?;
    if !forks.is_empty() {
        inner.store.put(&key, body).await?;
        return Err(in_use(forks));
    }
    if let Some(p) = inner.st.lock().pins.as_mut() {
        p.snaps.remove(name);
    }
    tracing::info!(volume = %inner.cfg.name, snapshot = name, "snapshot deleted");
    Ok(())
}
