//! [`UblkServer`]: the public face of the ublk layer. It owns the control thread and
//! the worker pool, and the table of devices it serves.
//!
//! Device life cycle (add): ADD_DEV (flags USER_RECOVERY | USER_RECOVERY_REISSUE
//! [| USER_COPY], marker in `ublksrv_flags`) → SET_PARAMS → open `/dev/ublkcN` →
//! attach every queue to the least-loaded worker (its tags FETCH) → START_DEV (blocks
//! until all queues fetched and the partition scan was served by those workers).
//! Delete: STOP_DEV (the kernel aborts the queues' commands) → detach every queue
//! (tasks end, file slot and mapping released) → close the char device → DEL_DEV.
//!
//! Lock order: `devices` is never held while waiting on a worker or the kernel.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stage_timers::{self, Stage};
use libublk::sys;
use parking_lot::Mutex;

use super::buffer_pool::{PoolGroup, PoolStats};
use super::ctrl::{self, AddSpec, Ctrl};
use super::error::UblkError;
use super::file_map::FileMap;
use super::params;
use super::queue::QueueSpec;
use super::target::IoTarget;
use super::worker::{self, WorkerHandle};
use super::{DeviceInfo, DeviceState, UblkOptions, LEGACY_DEV_MARKER};

/// Parallelism of bulk operations (recovery, mass deletion).
pub(crate) const BULK_PARALLELISM: usize = 8;
/// Largest fixed-file table per worker.
const MAX_FILES_PER_WORKER: u64 = 32768;

pub(crate) struct Device {
    pub(crate) fd: Arc<OwnedFd>,
    /// Worker index serving each queue (index = qid).
    pub(crate) placements: Vec<usize>,
}

/// A ublk server: control thread + pinned worker pool + the devices it serves.
/// `Send + Sync`; share it with `Arc`.
pub struct UblkServer {
    pub(crate) opts: UblkOptions,
    pub(crate) user_copy: bool,
    pub(crate) ctrl: Ctrl,
    workers: Vec<WorkerHandle>,
    /// The workers' buffer pools: slot count and counters (built from `opts`).
    pools: Arc<PoolGroup>,
    pub(crate) devices: Mutex<HashMap<u32, Device>>,
    shut: AtomicBool,
}

impl UblkServer {
    /// Whether a device with `ublksrv_flags` was created by this daemon (its marker,
    /// or the untagged marker of earlier versions).
    pub(crate) fn is_ours(&self, ublksrv_flags: u64) -> bool {
        ublksrv_flags == super::device_marker(self.opts.owner_tag)
            || ublksrv_flags == LEGACY_DEV_MARKER
    }

    /// Whether the kernel offers ublk (`/dev/ublk-control` exists).
    pub fn available() -> bool {
        std::path::Path::new(ctrl::CTRL_DEV).exists()
    }

    /// Start the control thread and the workers. Chooses USER_COPY unless bounce mode
    /// is asked for (option or `GLIDEFS_BOUNCE_MODE=1`) or the kernel lacks it.
    pub fn start(mut opts: UblkOptions) -> Result<UblkServer, UblkError> {
        if !Self::available() {
            return Err(UblkError::NotAvailable);
        }
        let queues = u32::from(opts.queues);
        crate::rules::check_range(queues, &crate::rules::QUEUES_RANGE)
            .map_err(|m| UblkError::Invalid(format!("queues = {queues}: {m}")))?;
        let depth = u32::from(opts.queue_depth);
        crate::rules::check_range(depth, &crate::rules::QUEUE_DEPTH_RANGE)
            .map_err(|m| UblkError::Invalid(format!("queue_depth = {depth}: {m}")))?;
        if opts.workers == 0 {
            opts.workers = UblkOptions::default().workers;
        }
        if opts.pool_slots == 0 {
            return Err(UblkError::Invalid("pool_slots = 0".into()));
        }
        let files = raise_nofile().min(MAX_FILES_PER_WORKER) as u32;
        let ctrl = Ctrl::start()?;
        let features = match ctrl.features() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("GET_FEATURES failed ({e}); assuming a kernel without USER_COPY");
                0
            }
        };
        let mut bounce = opts.bounce_mode || super::bounce_mode_from_env();
        if bounce {
            tracing::info!("ublk: bounce mode (per-tag buffers, no USER_COPY) requested");
        } else if features & u64::from(sys::UBLK_F_USER_COPY) == 0 {
            tracing::warn!(
                "ublk: kernel lacks UBLK_F_USER_COPY (features {features:#x}); using bounce mode"
            );
            bounce = true;
        }
        opts.bounce_mode = bounce;
        let cpus = worker::allowed_cpus();
        let mut workers = Vec::with_capacity(opts.workers);
        for i in 0..opts.workers {
            let cpu = if cpus.is_empty() {
                None
            } else {
                Some(cpus[i % cpus.len()])
            };
            match worker::spawn_worker(i, cpu, files) {
                Ok(w) => workers.push(w),
                Err(e) => {
                    for w in &workers {
                        w.exit();
                    }
                    ctrl.shutdown();
                    return Err(e);
                }
            }
        }
        tracing::info!(
            workers = workers.len(),
            user_copy = !bounce,
            features = format!("{features:#x}"),
            "ublk server started"
        );
        let pools = PoolGroup::new(opts.pool_slots);
        Ok(UblkServer {
            opts,
            user_copy: !bounce,
            ctrl,
            workers,
            pools,
            devices: Mutex::new(HashMap::new()),
            shut: AtomicBool::new(false),
        })
    }

    /// Whether devices are served with USER_COPY (false: bounce mode).
    pub fn user_copy(&self) -> bool {
        self.user_copy
    }

    /// Create a device (with id `dev_id`, or one the kernel picks) served by `target`,
    /// and start it. Returns once `/dev/ublkbN` exists and is served.
    pub fn add_device(
        &self,
        dev_id: Option<u32>,
        target: Arc<dyn IoTarget>,
    ) -> Result<DeviceInfo, UblkError> {
        self.check_running()?;
        let size = target.size_bytes();
        if size == 0 || !size.is_multiple_of(crate::SECTOR_SIZE as u64) {
            return Err(UblkError::Invalid(format!(
                "device size {size} is not a positive multiple of {}",
                crate::SECTOR_SIZE
            )));
        }
        let max_io_bytes = if self.user_copy {
            params::MAX_IO_BYTES_USER_COPY
        } else {
            params::MAX_IO_BYTES_BOUNCE
        };
        let mut flags = u64::from(sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE);
        if self.user_copy {
            flags |= u64::from(sys::UBLK_F_USER_COPY);
        }
        let add = stage_timers::start();
        let info = self.ctrl.add(AddSpec {
            dev_id,
            queues: self.opts.queues,
            depth: self.opts.queue_depth,
            max_io_bytes,
            flags,
            marker: super::device_marker(self.opts.owner_tag),
        })?;
        let id = info.dev_id;
        let res = self
            .ctrl
            .set_params(id, params::device_params(size, info.max_io_buf_bytes))
            .and_then(|_| {
                add.stop(Stage::DeviceAdd);
                stage_timers::time(Stage::DeviceAttach, || {
                    self.attach_device(
                        id,
                        info.nr_hw_queues,
                        info.queue_depth,
                        info.max_io_buf_bytes,
                        self.user_copy,
                        target,
                    )
                })
            })
            .and_then(|_| stage_timers::time(Stage::DeviceStart, || self.ctrl.start_dev(id)));
        match res {
            Ok(()) => {
                tracing::info!(dev_id = id, size, "ublk device started");
                Ok(DeviceInfo::new(id))
            }
            Err(e) => {
                tracing::error!(dev_id = id, "adding device failed: {e}; removing it");
                if let Err(e2) = self.teardown(id) {
                    tracing::error!(dev_id = id, "cleanup failed: {e2}");
                }
                Err(e)
            }
        }
    }

    /// Open the char device and attach every queue to a worker; records the device.
    pub(crate) fn attach_device(
        &self,
        dev_id: u32,
        queues: u16,
        depth: u16,
        max_io_bytes: u32,
        user_copy: bool,
        target: Arc<dyn IoTarget>,
    ) -> Result<(), UblkError> {
        let fd = Arc::new(open_char_dev(dev_id)?);
        let mut placements = Vec::with_capacity(usize::from(queues));
        let file_map = Arc::new(FileMap::default());
        let mut result = Ok(());
        for qid in 0..queues {
            let w = self.least_loaded();
            let spec = QueueSpec {
                dev_id,
                qid,
                depth,
                char_fd: fd.clone(),
                target: target.clone(),
                user_copy,
                max_io_bytes,
                pools: self.pools.clone(),
                file_map: file_map.clone(),
            };
            match self.workers[w].attach(spec) {
                Ok(()) => placements.push(w),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Record even a partial attach so that teardown can find and detach it.
        self.devices
            .lock()
            .insert(dev_id, Device { fd, placements });
        result
    }

    fn least_loaded(&self) -> usize {
        self.workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.load.load(Ordering::Relaxed))
            .map(|(i, _)| i)
            .unwrap_or(0)
    }

    /// STOP_DEV → detach queues → close → DEL_DEV. Works for devices we serve and
    /// for devices of ours that nobody serves.
    pub(crate) fn teardown(&self, dev_id: u32) -> Result<(), UblkError> {
        let dev = self.devices.lock().remove(&dev_id);
        let t0 = Instant::now();
        let stop = stage_timers::time(Stage::DeviceStop, || {
            self.ctrl
                .raw_ctrl_cmd("STOP_DEV", sys::UBLK_U_CMD_STOP_DEV, dev_id, 0)
        });
        match &stop {
            Err(e) => tracing::warn!(dev_id, "STOP_DEV: {e}"),
            Ok(_) => tracing::debug!(
                dev_id,
                elapsed_ms = t0.elapsed().as_millis() as u64,
                "STOP_DEV done"
            ),
        }
        let mut detach_err = None;
        let detach = stage_timers::start();
        if let Some(dev) = dev {
            for (qid, w) in dev.placements.iter().enumerate() {
                if let Err(e) = self.workers[*w].detach(dev_id, qid as u16) {
                    tracing::error!(dev_id, qid, "detach: {e}");
                    detach_err = Some(e);
                }
            }
            drop(dev.fd);
            tracing::debug!(
                dev_id,
                elapsed_ms = t0.elapsed().as_millis() as u64,
                "queues detached"
            );
        }
        detach.stop(Stage::DeviceDetach);
        stage_timers::time(Stage::DeviceDel, || self.ctrl.del(dev_id))?;
        ctrl::remove_run_json(dev_id);
        match detach_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stop and delete a device.
    pub fn delete_device(&self, dev_id: u32) -> Result<(), UblkError> {
        self.check_running()?;
        if !self.devices.lock().contains_key(&dev_id) {
            let info = self
                .ctrl
                .dev_info(dev_id)
                .map_err(|_| UblkError::UnknownDevice(dev_id))?;
            if !self.is_ours(info.ublksrv_flags) {
                return Err(UblkError::NotOurs(dev_id));
            }
        }
        let t0 = Instant::now();
        let r = self.teardown(dev_id);
        tracing::info!(
            dev_id,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "ublk device deleted"
        );
        r
    }

    /// Delete many devices, [`BULK_PARALLELISM`] at a time (STOP_DEV runs in parallel;
    /// DEL_DEV is serialized by the kernel anyway).
    pub fn delete_devices(&self, ids: Vec<u32>) -> Vec<(u32, Result<(), UblkError>)> {
        parallel_map(ids, |id| self.delete_device(id))
    }

    /// Every ublk device created by glidefs that the kernel knows, with its state.
    pub fn kernel_devices(&self) -> Result<Vec<(u32, DeviceState)>, UblkError> {
        self.check_running()?;
        let mut out = Vec::new();
        for id in ctrl::list_dev_ids() {
            match self.ctrl.dev_info(id) {
                Ok(info) if self.is_ours(info.ublksrv_flags) => {
                    out.push((id, DeviceState::from_raw(info.state)))
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(dev_id = id, "GET_DEV_INFO: {e}"),
            }
        }
        Ok(out)
    }

    /// Ids of the devices this server serves.
    pub fn served_devices(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.devices.lock().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Counters of this server's data-plane buffer pools.
    pub fn pool_stats(&self) -> PoolStats {
        self.pools.stats()
    }

    /// Stop serving. With `stop_devices`, every device is stopped and deleted first;
    /// without, the workers drop their tasks and keep their rings until the process
    /// exits, which the kernel handles as it does kill -9: the devices go QUIESCED
    /// for the next daemon to recover. Idempotent.
    pub fn shutdown(&self, stop_devices: bool) {
        if self.shut.swap(true, Ordering::SeqCst) {
            return;
        }
        if stop_devices {
            let ids = self.served_devices();
            for (id, r) in parallel_map(ids, |id| self.teardown(id)) {
                if let Err(e) = r {
                    tracing::error!(dev_id = id, "delete on shutdown: {e}");
                }
            }
        }
        for w in &self.workers {
            w.exit();
        }
        self.devices.lock().clear();
        self.ctrl.shutdown();
    }

    pub(crate) fn check_running(&self) -> Result<(), UblkError> {
        if self.shut.load(Ordering::SeqCst) {
            Err(UblkError::ShutDown)
        } else {
            Ok(())
        }
    }
}

impl Drop for UblkServer {
    fn drop(&mut self) {
        self.shutdown(false);
    }
}

/// Run `f` over device ids with at most [`BULK_PARALLELISM`] threads; the results
/// sorted by id.
pub(crate) fn parallel_map<R: Send>(ids: Vec<u32>, f: impl Fn(u32) -> R + Sync) -> Vec<(u32, R)> {
    let mut v = crate::parallel::map(BULK_PARALLELISM, ids, |id| (id, f(id)));
    v.sort_by_key(|(id, _)| *id);
    v
}

/// Open `/dev/ublkcN`, waiting briefly for the node to appear.
fn open_char_dev(dev_id: u32) -> Result<OwnedFd, UblkError> {
    let path = format!("/dev/ublkc{dev_id}");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => return Ok(OwnedFd::from(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(UblkError::io(format!("open {path}"), e)),
        }
    }
}

/// Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the soft limit now.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read/write the local struct only.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    lim.rlim_cur
}
