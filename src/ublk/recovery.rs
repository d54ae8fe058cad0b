//! Crash recovery: a new daemon re-attaches the devices a killed one left behind.
//!
//! Per device of ours (marker in `ublksrv_flags`) that the caller knows a target for:
//! - QUIESCED / FAIL_IO: START_USER_RECOVERY (retried while EBUSY: the dead server's
//!   char device is not fully released yet) → open `/dev/ublkcN`, attach every queue
//!   (all tags FETCH) → END_USER_RECOVERY. Same id, same `/dev/ublkbN`; the data mode
//!   (USER_COPY or bounce) follows the device's own flags, not this daemon's option.
//! - LIVE with a dead server pid: wait for the kernel to quiesce it, until no device
//!   of this recovery has turned QUIESCED for [`PATIENCE`] (after a kill -9 at
//!   5,025 devices the kernel released the dead server's devices over more than
//!   30 s, so a fixed wait per device gave up on the first ones it waited for).
//! - DEAD (added but never started): deleted and added again with the same id.
//! - absent: added with the same id.
//!
//! Devices of ours with no known target (orphans) are deleted with a log line; other
//! programs' devices are never touched. Known devices whose target does not arrive
//! (the volume could not be opened: e.g. the store is down) are left QUIESCED, so the
//! guest's I/O waits instead of failing; [`UblkServer::reattach_device`] recovers one
//! later, and the caller deletes those it gives up on. Devices are handled in parallel, bounded by
//! [`BULK_PARALLELISM`], each as soon as its target is known
//! ([`recover_devices_stream`]: the router hands targets over as volumes open).
//!
//! The kernel scan uses raw GET_DEV_INFO on per-thread control rings, in parallel;
//! per-step times are summed and logged with the "ublk recovery finished" line.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use libublk::sys;

use super::ctrl;
use super::error::UblkError;
use super::server::{parallel_map, UblkServer, BULK_PARALLELISM};
use super::target::IoTarget;
use super::{DeviceInfo, DeviceState};

/// How long to wait for the old char device to be released / a LIVE device with a
/// dead server to turn QUIESCED.
const PATIENCE: Duration = Duration::from_secs(30);

/// Recovery is part of the server's interface; it lives here, with the recovery
/// steps, so that server.rs does not depend on this file.
impl UblkServer {
    /// Re-attach the devices of a previous daemon: `known` lists the ids this daemon
    /// has targets for. QUIESCED (or FAIL_IO) ones are recovered in place (same
    /// `/dev/ublkbN`; with REISSUE the requests the dead server held are re-sent),
    /// absent ones are added with the same id, DEAD ones are re-created, and devices
    /// of ours that are not in `known` (orphans) are deleted with a log line.
    /// Devices not created by glidefs are never touched. Runs in parallel (bounded).
    pub fn recover_devices(
        &self,
        known: Vec<(u32, Arc<dyn IoTarget>)>,
    ) -> Vec<(u32, Result<DeviceInfo, UblkError>)> {
        recover_devices(self, known)
    }

    /// [`recover_devices`](Self::recover_devices) with the targets arriving one by
    /// one on `targets` (e.g. as their volumes open): each device is recovered as
    /// soon as its target arrives. `known` lists every id that may arrive; known ids
    /// whose target never arrives are left as they are (QUIESCED) for a later
    /// [`reattach_device`](Self::reattach_device) or delete.
    pub fn recover_devices_stream(
        &self,
        known: Vec<u32>,
        targets: std::sync::mpsc::Receiver<(u32, Arc<dyn IoTarget>)>,
    ) -> Vec<(u32, Result<DeviceInfo, UblkError>)> {
        recover_devices_stream(self, known, targets)
    }

    /// Recover one device of ours after start-up recovery (its volume opened late):
    /// QUIESCED → re-attached in place with `target`, absent → added with the same
    /// id. Unlike recovery, nothing else is touched.
    pub fn reattach_device(
        &self,
        dev_id: u32,
        target: Arc<dyn IoTarget>,
    ) -> Result<DeviceInfo, UblkError> {
        self.check_running()?;
        let info = self.ctrl.raw_dev_info(dev_id).ok();
        recover_one(self, dev_id, info, target, &StepTimes::default())
    }
}

pub(crate) fn recover_devices(
    server: &UblkServer,
    known: Vec<(u32, Arc<dyn IoTarget>)>,
) -> Vec<(u32, Result<DeviceInfo, UblkError>)> {
    let ids = known.iter().map(|(id, _)| *id).collect();
    let (tx, rx) = mpsc::channel();
    for k in known {
        // Cannot fail: `rx` is alive.
        let _ = tx.send(k);
    }
    drop(tx);
    recover_devices_stream(server, ids, rx)
}

/// [`recover_devices`] with the targets arriving on `targets` (e.g. as their volumes
/// open), each device recovered as soon as its target arrives. `known` lists every
/// id that may arrive: devices of ours outside it are orphans, deleted first; known
/// ids whose target never arrives (the channel closed without it) are left QUIESCED
/// for the caller to re-attach or delete (a store outage must not cost the devices).
pub(crate) fn recover_devices_stream(
    server: &UblkServer,
    known: Vec<u32>,
    targets: mpsc::Receiver<(u32, Arc<dyn IoTarget>)>,
) -> Vec<(u32, Result<DeviceInfo, UblkError>)> {
    if server.check_running().is_err() {
        return targets
            .into_iter()
            .map(|(id, _)| (id, Err(UblkError::ShutDown)))
            .collect();
    }
    let t0 = Instant::now();
    let steps = StepTimes::default();
    let mut in_kernel = HashMap::new();
    for (id, r) in parallel_map(ctrl::list_dev_ids(), |id| server.ctrl.raw_dev_info(id)) {
        match r {
            Ok(info) => {
                in_kernel.insert(id, info);
            }
            Err(e) => tracing::warn!(dev_id = id, "GET_DEV_INFO: {e}"),
        }
    }
    let scan_ms = t0.elapsed().as_millis() as u64;
    let known: HashSet<u32> = known.into_iter().collect();
    let served = server.served_devices();
    let ours_unserved = |id: &u32| {
        in_kernel
            .get(id)
            .is_some_and(|info| server.is_ours(info.ublksrv_flags))
            && !served.contains(id)
    };
    let orphans: Vec<u32> = in_kernel
        .keys()
        .filter(|id| !known.contains(id) && ours_unserved(id))
        .copied()
        .collect();
    delete_orphans(server, orphans);
    let orphans_ms = t0.elapsed().as_millis() as u64 - scan_ms;
    let mut results = crate::parallel::map(BULK_PARALLELISM, targets, |(id, target)| {
        let r = recover_one(server, id, in_kernel.get(&id).copied(), target, &steps);
        (id, r)
    });
    results.sort_by_key(|(id, _)| *id);
    let arrived: HashSet<u32> = results.iter().map(|(id, _)| *id).collect();
    let waiting = known
        .iter()
        .filter(|id| !arrived.contains(id) && ours_unserved(id))
        .count();
    if waiting > 0 {
        tracing::warn!(
            devices = waiting,
            "ublk devices left quiesced: their volumes did not open"
        );
    }
    let ok = results.iter().filter(|(_, r)| r.is_ok()).count();
    tracing::info!(
        devices = results.len(),
        ok,
        elapsed_ms = t0.elapsed().as_millis() as u64,
        scan_ms,
        orphans_ms,
        quiesce_wait_ms_sum = steps.quiesce.load(Ordering::Relaxed),
        start_recovery_ms_sum = steps.start.load(Ordering::Relaxed),
        attach_ms_sum = steps.attach.load(Ordering::Relaxed),
        end_recovery_ms_sum = steps.end.load(Ordering::Relaxed),
        "ublk recovery finished"
    );
    results
}

fn delete_orphans(server: &UblkServer, ids: Vec<u32>) {
    for (id, r) in parallel_map(ids, |id| server.teardown(id)) {
        match r {
            Ok(()) => tracing::warn!(
                dev_id = id,
                "deleted orphan ublk device (ours, no known volume)"
            ),
            Err(e) => tracing::error!(dev_id = id, "deleting orphan ublk device failed: {e}"),
        }
    }
}

/// Time spent in each step of [`recover_one`], summed over devices (milliseconds),
/// and when the kernel last quiesced one of them.
struct StepTimes {
    quiesce: AtomicU64,
    start: AtomicU64,
    attach: AtomicU64,
    end: AtomicU64,
    origin: Instant,
    /// Milliseconds after `origin` when a device was last found QUIESCED (0: none yet).
    last_quiesced_ms: AtomicU64,
}

impl Default for StepTimes {
    fn default() -> Self {
        StepTimes {
            quiesce: AtomicU64::new(0),
            start: AtomicU64::new(0),
            attach: AtomicU64::new(0),
            end: AtomicU64::new(0),
            origin: Instant::now(),
            last_quiesced_ms: AtomicU64::new(0),
        }
    }
}

impl StepTimes {
    fn note_quiesced(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_quiesced_ms
            .fetch_max(ms.max(1), Ordering::Relaxed);
    }

    fn last_quiesced(&self) -> Option<Instant> {
        match self.last_quiesced_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.origin + Duration::from_millis(ms)),
        }
    }
}

/// Whether a device that started waiting at `waiting_since` has waited long enough:
/// [`PATIENCE`] with no device of the recovery quiesced (`last_quiesced`) meanwhile.
fn out_of_patience(waiting_since: Instant, last_quiesced: Option<Instant>, now: Instant) -> bool {
    let progress = last_quiesced.map_or(waiting_since, |q| q.max(waiting_since));
    now >= progress + PATIENCE
}

fn add_ms(sum: &AtomicU64, since: Instant) -> Instant {
    let now = Instant::now();
    sum.fetch_add((now - since).as_millis() as u64, Ordering::Relaxed);
    now
}

fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for the process's existence.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn recover_one(
    server: &UblkServer,
    id: u32,
    info: Option<sys::ublksrv_ctrl_dev_info>,
    target: Arc<dyn IoTarget>,
    steps: &StepTimes,
) -> Result<DeviceInfo, UblkError> {
    if server.served_devices().contains(&id) {
        return Ok(DeviceInfo::new(id));
    }
    let Some(mut info) = info else {
        return server.add_device(Some(id), target);
    };
    if !server.is_ours(info.ublksrv_flags) {
        return Err(UblkError::NotOurs(id));
    }
    let t_wait = Instant::now();
    loop {
        match DeviceState::from_raw(info.state) {
            DeviceState::Quiesced | DeviceState::FailIo => {
                steps.note_quiesced();
                break;
            }
            DeviceState::Dead => {
                tracing::warn!(dev_id = id, "device was never started; re-creating it");
                server.teardown(id)?;
                return server.add_device(Some(id), target);
            }
            DeviceState::Live
                if pid_alive(info.ublksrv_pid) && info.ublksrv_pid != std::process::id() as i32 =>
            {
                return Err(UblkError::Kernel {
                    cmd: "recover (served by a live process)",
                    dev_id: Some(id),
                    errno: libc::EBUSY,
                });
            }
            _ if out_of_patience(t_wait, steps.last_quiesced(), Instant::now()) => {
                return Err(UblkError::Kernel {
                    cmd: "recover (device did not quiesce)",
                    dev_id: Some(id),
                    errno: libc::ETIMEDOUT,
                });
            }
            _ => {
                std::thread::sleep(Duration::from_millis(50));
                info = server.ctrl.raw_dev_info(id)?;
            }
        }
    }
    let t0 = add_ms(&steps.quiesce, t_wait);
    server.ctrl.start_user_recovery(id, PATIENCE)?;
    let t1 = add_ms(&steps.start, t0);
    let user_copy = info.flags & u64::from(sys::UBLK_F_USER_COPY) != 0;
    let res = server
        .attach_device(
            id,
            info.nr_hw_queues,
            info.queue_depth,
            info.max_io_buf_bytes,
            user_copy,
            target,
        )
        .and_then(|_| {
            let t2 = add_ms(&steps.attach, t1);
            let r = server.ctrl.end_user_recovery(id);
            add_ms(&steps.end, t2);
            r
        });
    match res {
        Ok(()) => {
            tracing::info!(
                dev_id = id,
                user_copy,
                elapsed_ms = t0.elapsed().as_millis() as u64,
                "ublk device recovered"
            );
            Ok(DeviceInfo::new(id))
        }
        Err(e) => {
            tracing::error!(dev_id = id, "recovery failed: {e}");
            // The device stays QUIESCED for another attempt. Queues already attached
            // keep their commands until the daemon exits: the kernel offers no way
            // to abort one queue's FETCH_REQs short of STOP_DEV.
            server.devices.lock().remove(&id);
            Err(e)
        }
    }
}

#[cfg(test)]
mod patience_tests {
    use super::*;

    /// A device keeps waiting while others of the same recovery turn QUIESCED, and
    /// gives up only after PATIENCE without any.
    #[test]
    fn a_device_waits_while_the_kernel_quiesces_others() {
        let t = Instant::now();
        let s = Duration::from_secs;
        assert!(!out_of_patience(t, None, t + s(29)));
        assert!(out_of_patience(t, None, t + PATIENCE));
        // Waiting 40 s, but another device quiesced 5 s ago: keep waiting.
        assert!(!out_of_patience(t, Some(t + s(35)), t + s(40)));
        assert!(out_of_patience(t, Some(t + s(35)), t + s(35) + PATIENCE));
        // Progress before this device started waiting does not shorten its wait.
        let later = t + s(100);
        assert!(!out_of_patience(later, Some(t), later + s(29)));
    }
}
