//! In-memory test doubles for the router's backends: [`MemVolumes`] (volumes kept in
//! a map that plays the object store, so cold wake and purge are observable) and
//! [`FakeDevices`] (hands out device ids, no kernel). Used by host tests of the
//! router and the API; failure injection lets tests check that a failed request
//! changes nothing. Compiled only for tests.

use super::backend::{BackendError, DeviceBackend, DeviceInfo, ExportVolume, VolumeFactory};
use crate::ublk::IoTarget;
use crate::ublk::PoolStats;
use crate::volume::{SnapshotInfo, VolumeStats};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A volume held in memory.
pub struct MemVolume {
    data: Mutex<Vec<u8>>,
    drains: AtomicU64,
    closed: AtomicBool,
    snapshots: Mutex<BTreeMap<String, SnapshotInfo>>,
}

impl MemVolume {
    fn new(size: u64) -> MemVolume {
        MemVolume {
            data: Mutex::new(vec![0; size as usize]),
            drains: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            snapshots: Mutex::new(BTreeMap::new()),
        }
    }

    /// Number of completed drains.
    pub fn drains(&self) -> u64 {
        self.drains.load(Ordering::SeqCst)
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn range(&self, offset: u64, len: u64) -> io::Result<std::ops::Range<usize>> {
        let size = self.data.lock().len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }
}

#[async_trait]
impl IoTarget for MemVolume {
    fn size_bytes(&self) -> u64 {
        self.data.lock().len() as u64
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data.lock()[r]);
        Ok(())
    }
    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
        let r = self.range(offset, data.len() as u64)?;
        self.data.lock()[r].copy_from_slice(data);
        Ok(())
    }
    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    async fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let r = self.range(offset, len)?;
        self.data.lock()[r].fill(0);
        Ok(())
    }
}

#[async_trait]
impl ExportVolume for MemVolume {
    async fn grow(&self, new_size: u64) -> Result<(), BackendError> {
        let mut d = self.data.lock();
        if (new_size as usize) < d.len() {
            return Err(BackendError::Invalid("cannot shrink".into()));
        }
        d.resize(new_size as usize, 0);
        Ok(())
    }
    async fn drain(&self) -> Result<(), BackendError> {
        self.drains.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn close(&self) -> Result<(), BackendError> {
        self.closed.store(true, Ordering::SeqCst);
        Ok(())
    }
    async fn snapshot(&self, name: &str) -> Result<SnapshotInfo, BackendError> {
        crate::rules::validate_name_of("snapshot", name).map_err(BackendError::Invalid)?;
        let mut snaps = self.snapshots.lock();
        if snaps.contains_key(name) {
            return Err(BackendError::Conflict(format!("snapshot {name:?} exists")));
        }
        let info = SnapshotInfo {
            name: name.to_owned(),
            seq: snaps.len() as u64,
            size_bytes: self.data.lock().len() as u64,
            uuid: "0".into(),
            created_ms: 0,
        };
        snaps.insert(name.to_owned(), info.clone());
        Ok(info)
    }
    async fn snapshots(&self) -> Result<Vec<SnapshotInfo>, BackendError> {
        Ok(self.snapshots.lock().values().cloned().collect())
    }
    async fn delete_snapshot(&self, name: &str) -> Result<(), BackendError> {
        self.snapshots
            .lock()
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| BackendError::NotFound(format!("snapshot {name:?} not found")))
    }
    fn counters(&self) -> VolumeStats {
        VolumeStats {
            cache_hits: 1,
            ..Default::default()
        }
    }
}

/// Volumes in memory; `store` maps name to volume as the object store would.
#[derive(Default)]
pub struct MemVolumes {
    /// The "object store": every volume ever opened and not purged.
    pub store: Mutex<BTreeMap<String, Arc<MemVolume>>>,
    /// Names whose next operations fail with `Unavailable`.
    pub fail: Mutex<HashSet<String>>,
    /// Names purged so far.
    pub purged: Mutex<Vec<String>>,
    /// Names whose lease another host holds: name -> holder. Open and an unforced
    /// purge fail with `Fenced`.
    pub held_elsewhere: Mutex<BTreeMap<String, String>>,
}

impl MemVolumes {
    fn check(&self, name: &str) -> Result<(), BackendError> {
        if self.fail.lock().contains(name) {
            return Err(BackendError::Unavailable(format!(
                "injected failure for {name}"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl VolumeFactory for MemVolumes {
    async fn open(
        &self,
        name: &str,
        size_bytes: u64,
    ) -> Result<Arc<dyn ExportVolume>, BackendError> {
        self.check(name)?;
        if let Some(holder) = self.held_elsewhere.lock().get(name) {
            return Err(BackendError::Fenced(format!(
                "volume lease held by {holder}"
            )));
        }
        let v = self
            .store
            .lock()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(MemVolume::new(size_bytes)))
            .clone();
        // As the engine: a larger size grows the stored volume, a smaller one (other
        // than 0, "the stored size") is refused.
        let stored = v.size_bytes();
        if size_bytes != 0 && size_bytes < stored {
            return Err(BackendError::Invalid(format!(
                "volume {name} is {stored} bytes; shrinking to {size_bytes} is not supported"
            )));
        }
        v.grow(size_bytes.max(stored)).await?;
        v.closed.store(false, Ordering::SeqCst);
        Ok(v)
    }
    async fn exists_in_store(&self, name: &str) -> Result<Option<u64>, BackendError> {
        self.check(name)?;
        Ok(self.store.lock().get(name).map(|v| v.size_bytes()))
    }
    async fn purge(&self, name: &str, force: bool) -> Result<(), BackendError> {
        self.check(name)?;
        if !force {
            if let Some(holder) = self.held_elsewhere.lock().get(name) {
                return Err(BackendError::Fenced(format!(
                    "volume lease held by {holder}"
                )));
            }
        }
        self.store.lock().remove(name);
        self.purged.lock().push(name.to_string());
        Ok(())
    }
    async fn forget_local(&self, _name: &str) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Devices without a kernel: ids handed out in order, paths `/dev/ublkbN`.
#[derive(Default)]
pub struct FakeDevices {
    /// Live devices: id -> size.
    pub devices: Mutex<BTreeMap<u32, u64>>,
    /// When set, `add` fails.
    pub fail_add: AtomicBool,
    /// Ids whose recovery and re-attach fail (the kernel device stays, quiesced), as
    /// START_USER_RECOVERY does while the old char device is not released.
    pub fail_recover: Mutex<std::collections::HashSet<u32>>,
    /// Set by `shutdown`: `Some(stop_devices)`.
    pub shut: Mutex<Option<bool>>,
}

fn info(dev_id: u32) -> DeviceInfo {
    DeviceInfo::new(dev_id)
}

impl DeviceBackend for FakeDevices {
    fn add(
        &self,
        dev_id: Option<u32>,
        target: Arc<dyn IoTarget>,
    ) -> Result<DeviceInfo, BackendError> {
        if self.fail_add.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable("injected add failure".into()));
        }
        let mut d = self.devices.lock();
        let id = match dev_id {
            Some(id) if d.contains_key(&id) => {
                return Err(BackendError::Invalid(format!("device {id} exists")))
            }
            Some(id) => id,
            None => (0..).find(|i| !d.contains_key(i)).unwrap_or(u32::MAX),
        };
        d.insert(id, target.size_bytes());
        Ok(info(id))
    }
    fn recover(
        &self,
        known: Vec<u32>,
        targets: std::sync::mpsc::Receiver<(u32, Arc<dyn IoTarget>)>,
    ) -> Vec<(u32, Result<DeviceInfo, BackendError>)> {
        let devices: Vec<_> = targets.into_iter().collect();
        let mut d = self.devices.lock();
        // Like the real server: devices not known are orphans and go away; known
        // ones whose target did not arrive wait (quiesced).
        d.retain(|id, _| known.contains(id));
        devices
            .into_iter()
            .map(|(id, t)| {
                if d.contains_key(&id) && self.fail_recover.lock().contains(&id) {
                    let e = BackendError::Internal(format!("injected recovery failure of {id}"));
                    return (id, Err(e));
                }
                // A device still in the kernel keeps its size; a gone one is added.
                d.entry(id).or_insert_with(|| t.size_bytes());
                (id, Ok(info(id)))
            })
            .collect()
    }
    fn reattach(&self, dev_id: u32, target: Arc<dyn IoTarget>) -> Result<DeviceInfo, BackendError> {
        if self.fail_add.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable("injected add failure".into()));
        }
        if self.fail_recover.lock().contains(&dev_id) {
            let e = format!("injected recovery failure of {dev_id}");
            return Err(BackendError::Internal(e));
        }
        // Like the kernel: a waiting device is re-attached with the size it has;
        // only a device that is gone is added at the target's size.
        self.devices
            .lock()
            .entry(dev_id)
            .or_insert_with(|| target.size_bytes());
        Ok(info(dev_id))
    }
    fn delete(&self, dev_id: u32) -> Result<(), BackendError> {
        self.devices.lock().remove(&dev_id);
        Ok(())
    }
    fn pool(&self) -> Option<PoolStats> {
        Some(PoolStats::default())
    }
    fn shutdown(&self, stop_devices: bool) {
        *self.shut.lock() = Some(stop_devices);
        if stop_devices {
            self.devices.lock().clear();
        }
    }
}
