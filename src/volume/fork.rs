//! Forks: a new volume that starts as another volume's snapshot and stores only
//! what it writes itself (copy-on-write); its reads of everything else go to the
//! snapshot's segments, under the parent's name (see `lineage.rs`).
//!
//! Making a fork writes two small objects and copies no data:
//! 1. the marker `volumes/<parent>/forks/<snap>/<child>` (the snapshot cannot be
//!    deleted while a marker exists, see `snapshot::delete`);
//! 2. the child's `meta` (put-if-absent), whose lineage names the snapshot.
//!
//! Then it reads the snapshot object again: if a concurrent delete removed it, the
//! fork is undone. The delete lists the markers again after removing the object and
//! puts it back if one appeared, so either the fork fails or the snapshot stays.
//! A fork never needs its parent's lease: the snapshot is immutable.
//!
//! Purging a volume whose snapshots have forks keeps those snapshots, their
//! manifests and the segments they point into, and marks `meta` purged (the name
//! stays taken). Purging a fork removes its marker; when the parent is purged and
//! no marker is left, the parent's leftovers go too, up the lineage.

use super::crypto::{FrameKey, MasterKeys};
use super::keyring::Keyring;
use super::keys::{Key, VolumeKeys};
use super::lineage::Ancestor;
use super::manifest::{self, VolumeMeta, FORMAT_VERSION};
use super::meta_io::{check_name, meta_bytes, read_meta};
use super::snapshot::SnapshotInfo;
use super::VolumeError;
use crate::store::{put_new, ObjectStore, StoreError};
use crate::BLOCK_SIZE;
use bytes::Bytes;
use std::collections::HashSet;

/// Read snapshot `snap` of `parent`, or `None`.
pub(super) async fn read_snapshot(
    store: &dyn ObjectStore,
    parent: &str,
    snap: &str,
) -> Result<Option<SnapshotInfo>, VolumeError> {
    let key = VolumeKeys::new(parent).snapshot(snap);
    match store.get(&key).await {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| VolumeError::Corrupt(format!("{key}: {e}"))),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Which snapshot a fork is made of.
pub(crate) struct ForkOf<'a> {
    /// The parent volume.
    pub parent: &'a str,
    /// Its snapshot.
    pub snap: &'a str,
}

/// Make volume `child` a fork of snapshot `snap` of `parent`, `size_bytes` large
/// (0: the snapshot's size; never smaller), encrypted when `masters` are given.
/// Returns the child's size.
pub(crate) async fn create(
    store: &dyn ObjectStore,
    of: ForkOf<'_>,
    child: &str,
    size_bytes: u64,
    uuid: u64,
    masters: Option<&MasterKeys>,
) -> Result<u64, VolumeError> {
    let ForkOf { parent, snap } = of;
    check_name(parent)?;
    check_name(child)?;
    crate::rules::validate_name_of("snapshot", snap).map_err(VolumeError::Invalid)?;
    crate::rules::check_aligned(size_bytes).map_err(VolumeError::Invalid)?;
    let ckeys = VolumeKeys::new(child);
    if read_meta(store, &ckeys.meta()).await?.is_some() {
        return Err(VolumeError::AlreadyExists(format!("volume {child:?}")));
    }
    let missing = || VolumeError::NotFound(format!("snapshot {snap:?} of volume {parent:?}"));
    let info = read_snapshot(store, parent, snap)
        .await?
        .ok_or_else(missing)?;
    let (pmeta, _) = read_meta(store, &VolumeKeys::new(parent).meta())
        .await?
        .ok_or_else(missing)?;
    if pmeta.uuid != info.uuid {
        return Err(missing());
    }
    if size_bytes != 0 && size_bytes < info.size_bytes {
        return Err(VolumeError::Invalid(format!(
            "a fork of {parent}@{snap} is at least {} bytes (the snapshot's size), not {size_bytes}",
            info.size_bytes
        )));
    }
    let mut lineage = vec![Ancestor {
        volume: parent.to_owned(),
        uuid: info.uuid.clone(),
        snapshot: snap.to_owned(),
        seq: info.seq,
    }];
    lineage.extend(pmeta.lineage.iter().cloned());
    // The fork's keys: its own and a copy of every encrypted ancestor's, so what it
    // shares stays readable when an ancestor is crypto-erased.
    let puuid = pmeta.uuid_u64().map_err(VolumeError::Corrupt)?;
    let pring = Keyring::unwrap(parent, puuid, pmeta.encrypted, pmeta.keys.as_ref(), masters)?;
    let keys = masters.map(|m| Keyring::create(m, uuid, Some((puuid, &pring))).1);
    let meta = VolumeMeta {
        format: FORMAT_VERSION,
        block_size: BLOCK_SIZE as u64,
        size_bytes: size_bytes.max(info.size_bytes),
        uuid: format!("{uuid:016x}"),
        lineage,
        purged: false,
        encrypted: keys.is_some(),
        keys,
    };
    let marker = VolumeKeys::new(parent).fork_marker(snap, child);
    store.put(&marker, Bytes::from(meta.uuid.clone())).await?;
    match put_new(store, &ckeys.meta(), meta_bytes(&meta)?).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            // Another request made `child` meanwhile (its marker is the same key:
            // leave it, it names that fork now).
            return Err(VolumeError::AlreadyExists(format!("volume {child:?}")));
        }
        Err(e) => {
            store.delete(&marker).await.ok();
            return Err(e.into());
        }
    }
    if read_snapshot(store, parent, snap).await?.as_ref() != Some(&info) {
        // Deleted meanwhile (see the module comment): undo.
        store.delete(&ckeys.meta()).await?;
        store.delete(&marker).await?;
        return Err(VolumeError::NotFound(format!(
            "snapshot {snap:?} of volume {parent:?} (deleted while the fork was made)"
        )));
    }
    tracing::info!(
        volume = child,
        parent,
        snapshot = snap,
        seq = info.seq,
        "fork created"
    );
    Ok(meta.size_bytes)
}

/// The children (fork names) of each snapshot of volume `keys` that has any.
pub(super) async fn markers(
    store: &dyn ObjectStore,
    keys: &VolumeKeys,
    snap: Option<&str>,
) -> Result<Vec<(String, String)>, VolumeError> {
    Ok(store
        .list(&keys.fork_markers(snap))
        .await?
        .iter()
        .filter_map(|o| match keys.parse(&o.key) {
            Some(Key::ForkMarker(s, c)) => Some((s.to_owned(), c.to_owned())),
            _ => None,
        })
        .collect())
}

/// What a purge must leave of volume `keys` for the forks of its snapshots: the
/// snapshots that have forks, their manifests, the segments those point into
/// (the volume's own: an ancestor's are its ancestor's business), the markers and
/// `meta`. `None` when no fork needs anything (everything may go). An encrypted
/// volume's manifests need its data key `key`; without it every own segment up to a
/// snapshot is kept.
pub(super) async fn still_needed(
    store: &dyn ObjectStore,
    name: &str,
    meta: &VolumeMeta,
    key: Option<&FrameKey>,
) -> Result<Option<HashSet<String>>, VolumeError> {
    let keys = &VolumeKeys::new(name);
    let marks = markers(store, keys, None).await?;
    if marks.is_empty() {
        return Ok(None);
    }
    let top = meta.lineage.first().map_or(0, |a| a.seq);
    let mut keep: HashSet<String> = HashSet::new();
    keep.insert(keys.meta());
    for (snap, child) in &marks {
        keep.insert(keys.fork_marker(snap, child));
        if !keep.insert(keys.snapshot(snap)) {
            continue;
        }
        let Some(info) = read_snapshot(store, name, snap).await? else {
            continue;
        };
        let mkey = keys.manifest(info.seq);
        keep.insert(mkey.clone());
        if meta.encrypted && key.is_none() {
            for o in store.list(&keys.segments()).await? {
                if keys
                    .segment_seq(&o.key)
                    .is_some_and(|s| s > top && s <= info.seq)
                {
                    keep.insert(o.key);
                }
            }
            continue;
        }
        let b = store.get(&mkey).await?;
        let (_, map) =
            manifest::decode(&b, key).map_err(|e| VolumeError::Corrupt(format!("{mkey}: {e}")))?;
        for s in map.live_segments() {
            if s > top {
                keep.insert(keys.segment(s));
            }
        }
    }
    Ok(Some(keep))
}

/// After fork `child` (with `meta`) was purged: drop its marker in its parent and,
/// when the parent was purged and no marker is left, the parent's leftovers (and so
/// on up the lineage).
pub(super) async fn release_parent(
    store: &dyn ObjectStore,
    meta: &VolumeMeta,
    child: &str,
) -> Result<(), VolumeError> {
    let mut child = child.to_owned();
    let mut lineage = meta.lineage.clone();
    while let Some(p) = lineage.first().cloned() {
        let pkeys = VolumeKeys::new(&p.volume);
        store
            .delete(&pkeys.fork_marker(&p.snapshot, &child))
            .await?;
        let Some((pmeta, _)) = read_meta(store, &pkeys.meta()).await? else {
            return Ok(());
        };
        if !pmeta.purged || !markers(store, &pkeys, None).await?.is_empty() {
            return Ok(());
        }
        tracing::info!(volume = %p.volume, "the last fork of a deleted volume is gone: deleting what was kept for it");
        for o in store.list(pkeys.root()).await? {
            if o.key != pkeys.meta() {
                store.delete(&o.key).await?;
            }
        }
        store.delete(&pkeys.meta()).await?;
        child = p.volume.clone();
        lineage = pmeta.lineage.clone();
    }
    Ok(())
}
