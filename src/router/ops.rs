//! The API's operations on one export: create or cold-wake, grow, repair (`put`),
//! `delete` and `drain`.
//!
//! Each runs under the export's name lock (see the lock order in `mod.rs`), takes an
//! in-flight guard that shutdown waits for, and undoes what it did when a later step
//! fails: a failed request leaves device, volume and registry as they were.

use super::backend::{BackendError, DeviceInfo, ExportVolume};
use super::error::{backend, RouterError};
use super::{
    grow_to, open_registered, refuse_shrink, Entry, ExportInfo, OpGuard, PutOutcome, Reservation,
    Router,
};
use crate::rules::{validate_name, validate_size};
use crate::size::format_size;
use crate::stage_timers::{self, timed, Stage};
use crate::volume::SnapshotInfo;
use std::sync::Arc;

/// An operation in flight on one export: its in-flight guard and name lock.
pub(super) struct NameGuard<'a> {
    _op: OpGuard<'a>,
    _name: async_lock::MutexGuardArc<()>,
}

impl Router {
    /// Create (or cold-wake) `name` with `size` bytes, grow it, or repair it.
    /// Idempotent: the same request again returns the same state.
    pub async fn put(
        &self,
        name: &str,
        size: u64,
    ) -> Result<(ExportInfo, PutOutcome), RouterError> {
        validate_name(name).map_err(RouterError::InvalidName)?;
        validate_size(size).map_err(RouterError::InvalidSize)?;
        let _op = self.begin_op()?;
        let lock = self.name_lock(name);
        let _guard = lock.lock().await;
        self.check_open()?;
        let existing = self.state.read().exports.get(name).cloned();
        match existing {
            Some(e) if e.error.is_none() => self.resize(name, e, size).await,
            Some(e) => self.repair(name, e, size).await,
            None => timed(Stage::CreateRequest, self.create(name, size)).await,
        }
    }

    /// Create export `name` as a copy-on-write fork of snapshot `snap` of volume
    /// `parent` (`size` 0: the snapshot's size). A name in use is a conflict; if
    /// the export cannot be created after the fork was made, the fork is purged.
    pub async fn fork(
        &self,
        name: &str,
        parent: &str,
        snap: &str,
        size: u64,
    ) -> Result<(ExportInfo, PutOutcome), RouterError> {
        validate_name(name).map_err(RouterError::InvalidName)?;
        validate_name(parent).map_err(RouterError::InvalidName)?;
        if size != 0 {
            validate_size(size).map_err(RouterError::InvalidSize)?;
        }
        let _op = self.begin_op()?;
        let lock = self.name_lock(name);
        let _guard = lock.lock().await;
        self.check_open()?;
        {
            let st = self.state.read();
            if st.exports.contains_key(name) {
                return Err(RouterError::Conflict(format!(
                    "export {name:?} exists; a fork needs a new name"
                )));
            }
            if st.exports.len() + st.pending >= self.cfg.max_exports {
                return Err(RouterError::LimitReached(self.cfg.max_exports));
            }
        }
        let size = self
            .volumes
            .fork(parent, snap, name, size)
            .await
            .map_err(backend(name, "fork"))?;
        match self.create(name, size).await {
            Ok((info, _)) => Ok((info, PutOutcome::Created)),
            Err(e) => {
                if let Err(p) = self.volumes.purge(name, false).await {
                    tracing::error!(export = name, error = %p, "could not remove the fork of a failed create");
                }
                Err(e)
            }
        }
    }

    async fn resize(
        &self,
        name: &str,
        e: Entry,
        size: u64,
    ) -> Result<(ExportInfo, PutOutcome), RouterError> {
        if size == e.size_bytes {
            return Ok((Self::info(name, &e), PutOutcome::Unchanged));
        }
        refuse_shrink(name, e.size_bytes, size)?;
        let volume = e
            .volume
            .clone()
            .ok_or_else(|| RouterError::Conflict("export has no volume".into()))?;
        volume.grow(size).await.map_err(backend(name, "grow"))?;
        let mut device = e.device.clone();
        if let (Some(devs), Some(d)) = (&self.devices, &e.device) {
            // ublk devices cannot change size while live on the kernels we target
            // (no UPDATE_SIZE before 6.16): re-create the device with the same id.
            let target = self.target(name, &volume)?;
            devs.delete(d.dev_id)
                .map_err(backend(name, "delete device for resize"))?;
            match devs.add(Some(d.dev_id), target) {
                Ok(nd) => device = Some(nd),
                Err(err) => {
                    self.set_entry(name, |x| {
                        x.device = None;
                        x.error = Some(format!("device lost during resize: {err}"));
                    });
                    return Err(backend(name, "re-add device for resize")(err));
                }
            }
        }
        self.persist(&[name], |p| {
            if let Some(r) = p.get_mut(name) {
                r.size_bytes = size;
            }
        })?;
        let mut st = self.state.write();
        let entry = st
            .exports
            .get_mut(name)
            .ok_or_else(|| RouterError::NotFound(name.to_string()))?;
        entry.size_bytes = size;
        entry.device = device;
        Ok((Self::info(name, entry), PutOutcome::Grown))
    }

    async fn create(&self, name: &str, size: u64) -> Result<(ExportInfo, PutOutcome), RouterError> {
        let mut reservation = {
            let mut st = self.state.write();
            if st.exports.len() + st.pending >= self.cfg.max_exports {
                return Err(RouterError::LimitReached(self.cfg.max_exports));
            }
            st.pending += 1;
            Reservation {
                router: self,
                live: true,
            }
        };
        let stored = timed(Stage::CreateLookup, self.volumes.exists_in_store(name))
            .await
            .map_err(backend(name, "look up"))?;
        if let Some(stored) = stored {
            if size < stored {
                return Err(RouterError::Conflict(format!(
                    "volume {name:?} already exists in the store with size {}; ask for at least that",
                    format_size(stored)
                )));
            }
        }
        let volume = timed(Stage::CreateOpen, self.volumes.open(name, size))
            .await
            .map_err(backend(name, "open"))?;
        let mut device = None;
        let attached: Result<(), RouterError> = async {
            grow_to(&volume, size)
                .await
                .map_err(backend(name, "grow"))?;
            let target = self.target(name, &volume)?;
            if let Some(devs) = &self.devices {
                device = Some(
                    stage_timers::time(Stage::CreateDevice, || devs.add(None, target))
                        .map_err(backend(name, "add device"))?,
                );
            }
            stage_timers::time(Stage::CreatePersist, || {
                self.persist_entry(name, size, device.as_ref())
            })
        }
        .await;
        if let Err(err) = attached {
            self.undo_create(name, &volume, device.as_ref(), stored.is_none())
                .await;
            return Err(err);
        }
        let entry = Entry {
            size_bytes: volume.size_bytes(),
            dev_id_hint: device.as_ref().map(|d| d.dev_id),
            volume: Some(volume),
            device,
            error: None,
            parked: false,
            reopen: false,
        };
        let info = Self::info(name, &entry);
        {
            let mut st = self.state.write();
            st.pending -= 1;
            reservation.live = false;
            st.exports.insert(name.to_string(), entry);
        }
        tracing::info!(export = name, size = size, device = ?info.device, "export created");
        let outcome = if stored.is_some() {
            PutOutcome::Woken
        } else {
            PutOutcome::Created
        };
        Ok((info, outcome))
    }

    async fn undo_create(
        &self,
        name: &str,
        volume: &Arc<dyn ExportVolume>,
        device: Option<&DeviceInfo>,
        fresh: bool,
    ) {
        if let (Some(devs), Some(d)) = (&self.devices, device) {
            if let Err(e) = devs.delete(d.dev_id) {
                tracing::warn!(export = name, error = %e, "undo: device delete failed");
            }
        }
        if let Err(e) = volume.close().await {
            tracing::warn!(export = name, error = %e, "undo: volume close failed");
        }
        if fresh {
            if let Err(e) = self.volumes.purge(name, false).await {
                tracing::warn!(export = name, error = %e, "undo: purge of new volume failed");
            }
        }
        self.metrics.remove_export(name);
    }

    pub(super) async fn repair(
        &self,
        name: &str,
        e: Entry,
        size: u64,
    ) -> Result<(ExportInfo, PutOutcome), RouterError> {
        refuse_shrink(name, e.size_bytes, size)?;
        let volume = match &e.volume {
            Some(v) => v.clone(),
            None => open_registered(self.volumes.as_ref(), name, e.size_bytes)
                .await
                .map_err(backend(name, "open"))?,
        };
        let fixed: Result<Entry, RouterError> = async {
            grow_to(&volume, size).await.map_err(backend(name, "grow"))?;
            let mut device = e.device.clone();
            if let (Some(devs), None) = (&self.devices, &device) {
                let target = self.target(name, &volume)?;
                // A device start-up recovery left waiting is re-attached in place;
                // otherwise the same id when it is free (`recover` is start-up only:
                // it treats unlisted devices as orphans).
                let d = match e.dev_id_hint {
                    Some(id) if e.parked && volume.size_bytes() == e.size_bytes => {
                        devs.reattach(id, target)
                    }
                    // The volume grew (this PUT, or a grow interrupted earlier): the
                    // waiting device has the old size and cannot be resized live, so
                    // it is re-created with the same id, as a grow does.
                    Some(id) if e.parked => devs
                        .delete(id)
                        .and_then(|()| devs.add(Some(id), target)),
                    Some(id) => devs.add(Some(id), target.clone()).or_else(|err| {
                        tracing::warn!(export = name, dev_id = id, error = %err, "previous device id unavailable");
                        devs.add(None, target)
                    }),
                    None => devs.add(None, target),
                };
                device = Some(d.map_err(backend(name, "attach device"))?);
            }
            self.persist_entry(name, volume.size_bytes(), device.as_ref())?;
            Ok(Entry {
                size_bytes: volume.size_bytes(),
                dev_id_hint: device.as_ref().map(|d| d.dev_id),
                volume: Some(volume.clone()),
                device,
                error: None,
                parked: false,
                reopen: false,
            })
        }
        .await;
        let mut st = self.state.write();
        match fixed {
            Ok(entry) => {
                let info = Self::info(name, &entry);
                st.exports.insert(name.to_string(), entry);
                tracing::info!(export = name, "failed export repaired");
                Ok((info, PutOutcome::Repaired))
            }
            Err(err) => {
                // Keep the volume open if we opened it: the export stays failed, but a
                // later attempt does not need to reopen.
                if let Some(cur) = st.exports.get_mut(name) {
                    cur.volume = Some(volume);
                    cur.error = Some(err.to_string());
                }
                Err(err)
            }
        }
    }

    /// Delete `name`: detach the device, then (without `purge`) drain everything to
    /// the store and drop the local cache; with `purge` also delete its objects.
    ///
    /// A purge of a volume whose lease another host holds (e.g. an export that failed
    /// with "lease held" because the volume moved) is refused with a conflict naming
    /// the holder, and nothing is deleted, unless `force` (only with `purge`).
    pub async fn delete(&self, name: &str, purge: bool, force: bool) -> Result<(), RouterError> {
        validate_name(name).map_err(RouterError::InvalidName)?;
        if force && !purge {
            return Err(RouterError::InvalidRequest(
                "force only applies to a purge (purge=true)".into(),
            ));
        }
        let _op = self.begin_op()?;
        let lock = self.name_lock(name);
        let _guard = lock.lock().await;
        timed(Stage::DeleteRequest, self.delete_locked(name, purge, force)).await
    }

    /// [`Router::delete`] under the export's name lock.
    async fn delete_locked(&self, name: &str, purge: bool, force: bool) -> Result<(), RouterError> {
        let e = self.entry(name)?;
        // A failed export has no volume open here, so nothing tells us the volume is
        // still ours: purge first, and a refusal (another host holds it) leaves the
        // export, its device and its registry entry exactly as they were.
        let purged_early = purge && e.volume.is_none();
        if purged_early {
            self.volumes
                .purge(name, force)
                .await
                .map_err(backend(name, "purge"))?;
        }
        if let (Some(devs), Some(d)) = (&self.devices, &e.device) {
            stage_timers::time(Stage::DeleteDevice, || devs.delete(d.dev_id))
                .map_err(backend(name, "delete device"))?;
            self.set_entry(name, |x| x.device = None);
        } else if let (Some(devs), Some(id), true) = (&self.devices, e.dev_id_hint, e.parked) {
            devs.delete(id)
                .map_err(backend(name, "delete waiting device"))?;
            self.set_entry(name, |x| x.parked = false);
        }
        if let Some(volume) = &e.volume {
            if !purge {
                match timed(Stage::DeleteDrain, volume.drain()).await {
                    Ok(()) => {}
                    // Another host owns the volume: nothing more can be uploaded; the
                    // dirty data is set aside below (forget_local), never deleted.
                    Err(err @ BackendError::Fenced(_)) => {
                        tracing::warn!(export = name, error = %err, "deleting a fenced export: its dirty data is set aside, not uploaded");
                    }
                    Err(err) => {
                        self.reattach(name, volume, &e).await;
                        return Err(backend(name, "drain")(err));
                    }
                }
            }
            if let Err(err) = timed(Stage::DeleteClose, volume.close()).await {
                tracing::warn!(export = name, error = %err, "close failed during delete");
            }
            self.set_entry(name, |x| {
                x.volume = None;
                x.error = Some("deleting".into());
            });
            if !purge {
                if let Err(err) = timed(Stage::DeleteForget, self.volumes.forget_local(name)).await
                {
                    tracing::warn!(export = name, error = %err, "removing local cache failed");
                }
            }
        } else if !purge {
            // A failed export's cache may hold data never uploaded: forget_local sets
            // any dirty data aside (listed by GET /api/diverged) and removes the rest.
            tracing::warn!(
                export = name,
                "deleting a failed export: dirty data in its cache is set aside"
            );
            if let Err(err) = self.volumes.forget_local(name).await {
                tracing::warn!(export = name, error = %err, "removing local cache failed");
            }
        }
        if purge && !purged_early {
            if let Err(err) = self.volumes.purge(name, force).await {
                self.set_entry(name, |x| x.error = Some(format!("purge failed: {err}")));
                return Err(backend(name, "purge")(err));
            }
        }
        stage_timers::time(Stage::DeletePersist, || {
            self.persist(&[name], |p| {
                p.remove(name);
            })
        })?;
        self.state.write().exports.remove(name);
        self.metrics.remove_export(name);
        tracing::info!(export = name, purge, "export deleted");
        Ok(())
    }

    async fn reattach(&self, name: &str, volume: &Arc<dyn ExportVolume>, e: &Entry) {
        let (Some(devs), Some(d)) = (&self.devices, &e.device) else {
            return;
        };
        let res = self.target(name, volume).and_then(|t| {
            devs.add(Some(d.dev_id), t)
                .map_err(backend(name, "re-add device"))
        });
        match res {
            Ok(dev) => self.set_entry(name, |x| x.device = Some(dev)),
            Err(err) => {
                tracing::error!(export = name, error = %err, "device could not be re-attached");
                self.set_entry(name, |x| x.error = Some(err.to_string()));
            }
        }
    }

    /// Return once everything acknowledged on `name` is in the object store.
    pub async fn drain(&self, name: &str) -> Result<ExportInfo, RouterError> {
        let (e, volume, _guard) = self.live_volume(name).await?;
        volume.drain().await.map_err(backend(name, "drain"))?;
        Ok(Self::info(name, &e))
    }

    /// Take snapshot `snap` of export `name` (everything acknowledged before).
    pub async fn snapshot(&self, name: &str, snap: &str) -> Result<SnapshotInfo, RouterError> {
        self.with_volume(name, "snapshot", |v| async move { v.snapshot(snap).await })
            .await
    }

    /// The snapshots of export `name`.
    pub async fn snapshots(&self, name: &str) -> Result<Vec<SnapshotInfo>, RouterError> {
        self.with_volume(
            name,
            "list snapshots of",
            |v| async move { v.snapshots().await },
        )
        .await
    }

    /// Delete snapshot `snap` of export `name`.
    pub async fn delete_snapshot(&self, name: &str, snap: &str) -> Result<(), RouterError> {
        self.with_volume(name, "delete a snapshot of", |v| async move {
            v.delete_snapshot(snap).await
        })
        .await
    }

    /// Run `f` on the volume of `name`: the export's, or, for a volume in the store
    /// that is no export here, the volume opened for `f` alone (its lease taken as
    /// for a cold wake: a volume another host serves is a conflict naming it) and
    /// closed again, its local cache dropped.
    async fn with_volume<T, F, Fut>(
        &self,
        name: &str,
        op: &'static str,
        f: F,
    ) -> Result<T, RouterError>
    where
        F: FnOnce(Arc<dyn ExportVolume>) -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        match self.live_volume(name).await {
            Ok((_, volume, _guard)) => return f(volume).await.map_err(backend(name, op)),
            Err(RouterError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let _op = self.begin_op()?;
        let lock = self.name_lock(name);
        let _guard = lock.lock().await;
        if self.state.read().exports.contains_key(name) {
            return Err(RouterError::Conflict(format!(
                "export {name:?} was created meanwhile; retry"
            )));
        }
        if self
            .volumes
            .exists_in_store(name)
            .await
            .map_err(backend(name, "look up"))?
            .is_none()
        {
            return Err(RouterError::NotFound(name.to_string()));
        }
        let volume = self
            .volumes
            .open(name, 0)
            .await
            .map_err(backend(name, "open (no export here)"))?;
        let r = f(volume.clone()).await.map_err(backend(name, op));
        let closed = volume.close().await;
        drop(volume);
        if closed.is_ok() {
            if let Err(e) = self.volumes.forget_local(name).await {
                tracing::warn!(volume = name, error = %e, "could not drop the cache of a volume opened for one operation");
            }
        }
        r
    }

    /// The entry and open volume of export `name`, under its name lock (a failed
    /// export is a conflict naming its error).
    async fn live_volume(
        &self,
        name: &str,
    ) -> Result<(Entry, Arc<dyn ExportVolume>, NameGuard<'_>), RouterError> {
        validate_name(name).map_err(RouterError::InvalidName)?;
        let op = self.begin_op()?;
        let lock = self.name_lock(name);
        let guard = lock.lock_arc().await;
        let e = self.entry(name)?;
        let volume = e.volume.clone().ok_or_else(|| {
            RouterError::Conflict(format!(
                "export {name:?} has failed: {}",
                e.error.clone().unwrap_or_default()
            ))
        })?;
        Ok((
            e,
            volume,
            NameGuard {
                _op: op,
                _name: guard,
            },
        ))
    }
}
