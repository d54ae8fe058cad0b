//! Start-up recovery: load the registry, open every volume with bounded parallelism
//! ([`crate::parallel::map`], `limits.open_concurrency` threads) and re-attach each
//! export's device as soon as its volume is open: the device layer's recovery runs on
//! its own thread alongside the remaining opens, fed through a channel.
//!
//! Exports that fail stay listed as `failed` (a later PUT repairs them); only an
//! unreadable registry is an error. The router is ready only after this returns.
//! Exports whose volume waited for an unavailable store keep their device QUIESCED
//! and are re-opened by a background thread with backoff ([`crate::backoff`]), so a
//! store outage during a restart costs the guests latency, never their disks. The
//! same thread re-attaches, in place, a device whose own recovery failed while its
//! volume opened (the device stays QUIESCED in the kernel meanwhile; a second device
//! beside it would leave the guest's I/O on the first waiting forever).

use super::backend::{BackendError, ExportVolume};
use super::error::{backend, RouterError};
use super::{grow_to, open_registered, Entry, RecoverySummary, Router};
use crate::parallel;
use crate::router::RegEntry;
use crate::ublk::IoTarget;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One registry entry after its open: the volume or why not, the device target to
/// add later (an export without a device yet), and a target error.
type Opened = (
    RegEntry,
    Result<Arc<dyn ExportVolume>, BackendError>,
    Option<Arc<dyn IoTarget>>,
    Option<String>,
);

impl Router {
    /// Start-up: load the registry, open every volume (bounded parallelism) and
    /// re-attach each export's device as soon as its volume is open (device
    /// recovery runs alongside the remaining opens), then become ready. Exports that
    /// fail stay listed as `failed`; only an unreadable registry is an error.
    ///
    /// An export whose volume cannot be opened because the store is unavailable
    /// keeps its device QUIESCED (the guest's I/O waits) and is re-opened in the
    /// background with backoff until the store answers ([`Router::reopen_waiting`]);
    /// then its device is re-attached in place. Other failures (bad data, a lease
    /// another host holds) delete the device, as a failed export has none.
    pub fn recover(self: &Arc<Self>) -> Result<RecoverySummary, RouterError> {
        let t0 = std::time::Instant::now();
        let entries = self.registry.load()?;
        let workers = self.cfg.open_concurrency.clamp(1, entries.len().max(1));
        let known: Vec<u32> = entries.values().filter_map(|e| e.dev_id).collect();
        let names: HashMap<u32, String> = entries
            .values()
            .filter_map(|e| e.dev_id.map(|id| (id, e.name.clone())))
            .collect();
        let (tx, rx) = std::sync::mpsc::channel::<(u32, Arc<dyn IoTarget>)>();
        let mut recovered = Vec::new();
        let mut opened = Vec::new();
        std::thread::scope(|s| {
            // Device recovery runs alongside the opens and gets each target on `tx`.
            let devs = self
                .devices
                .as_ref()
                .map(|d| s.spawn(move || d.recover(known, rx)));
            opened = parallel::map(workers, entries.values().cloned(), |e| {
                self.open_for_recovery(e, &tx)
            });
            drop(tx);
            if let Some(h) = devs {
                recovered = h.join().unwrap_or_default();
            }
        });
        tracing::info!(
            volumes = entries.len(),
            workers,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "recovery: volumes opened and devices attached"
        );
        let mut map = BTreeMap::new();
        let mut to_add = Vec::new();
        let mut give_up = Vec::new();
        for (r, res, target, target_err) in opened {
            let mut entry = Entry {
                size_bytes: r.size_bytes,
                dev_id_hint: r.dev_id,
                volume: None,
                device: None,
                error: target_err,
                parked: false,
                reopen: false,
            };
            match res {
                Ok(v) => {
                    entry.size_bytes = v.size_bytes();
                    if let Some(t) = target {
                        to_add.push((r.name.clone(), t));
                    }
                    entry.volume = Some(v);
                }
                Err(source) => {
                    let waits = matches!(source, BackendError::Unavailable(_));
                    let err = backend(&r.name, "open")(source);
                    if waits {
                        tracing::warn!(export = %r.name, dev_id = ?r.dev_id, error = %err, "volume could not be opened: the store is unavailable; device kept, re-opening in the background");
                        entry.error = Some(format!(
                            "waiting for the store (device kept, re-opening in the background): {err}"
                        ));
                        entry.reopen = true;
                        entry.parked = r.dev_id.is_some() && self.devices.is_some();
                    } else {
                        tracing::error!(export = %r.name, error = %err, "volume could not be opened");
                        entry.error = Some(err.to_string());
                        give_up.extend(r.dev_id);
                    }
                }
            }
            map.insert(r.name.clone(), entry);
        }
        let answered: std::collections::HashSet<u32> =
            recovered.iter().map(|(id, _)| *id).collect();
        for (id, res) in recovered {
            let Some(name) = names.get(&id) else { continue };
            if let Some(e) = map.get_mut(name) {
                match res {
                    Ok(d) => e.device = Some(d),
                    Err(err) => {
                        // The device is still in the kernel, quiesced, with the
                        // guest's I/O waiting on it: re-attach it in place later
                        // (background, or PUT), never a second device beside it.
                        tracing::error!(export = %name, dev_id = id, error = %err, "device could not be recovered; re-attaching it in the background");
                        wait_for_device(
                            e,
                            format!("device {id} kept, re-attaching in the background: {err}"),
                        );
                    }
                }
            }
        }
        if let Some(devs) = &self.devices {
            // A volume that opened but whose device got no answer (the device
            // recovery thread failed) must not look live.
            for (name, e) in map.iter_mut() {
                let id = entries.get(name).and_then(|r| r.dev_id);
                if let Some(id) = id {
                    if e.volume.is_some() && e.error.is_none() && !answered.contains(&id) {
                        wait_for_device(
                            e,
                            format!("device {id}: not recovered; re-attaching in the background"),
                        );
                    }
                }
            }
            // A volume adopted at a larger stored size than registered (a grow
            // interrupted after the store) came back on a device of the old size,
            // which cannot grow live: re-create it with the same id, as the grow would
            // have done.
            for (name, e) in map.iter_mut() {
                let registered = entries.get(name).map(|r| r.size_bytes);
                let (Some(v), Some(d)) = (&e.volume, &e.device) else {
                    continue;
                };
                if registered == Some(e.size_bytes) {
                    continue;
                }
                let id = d.dev_id;
                let res = self.target(name, v).and_then(|t| {
                    devs.delete(id)
                        .and_then(|()| devs.add(Some(id), t))
                        .map_err(backend(name, "re-create device at the adopted size"))
                });
                match res {
                    Ok(nd) => e.device = Some(nd),
                    Err(err) => {
                        tracing::error!(export = %name, error = %err, "device lost while re-creating it at the adopted size");
                        e.device = None;
                        e.error = Some(err.to_string());
                    }
                }
            }
            // Devices of exports that failed for good serve nothing: delete them (as
            // a failed export has no device); those waiting for the store stay.
            for id in give_up {
                if let Err(err) = devs.delete(id) {
                    tracing::warn!(dev_id = id, error = %err, "deleting the device of a failed export");
                }
            }
            for (name, t) in to_add {
                match devs.add(None, t) {
                    Ok(d) => {
                        if let Some(e) = map.get_mut(&name) {
                            e.dev_id_hint = Some(d.dev_id);
                            e.device = Some(d);
                        }
                    }
                    Err(err) => {
                        if let Some(e) = map.get_mut(&name) {
                            e.error = Some(format!("add device: {err}"));
                        }
                    }
                }
            }
        }
        tracing::info!(
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "recovery: devices attached"
        );
        // Record device ids that changed (e.g. re-created devices) and sizes adopted
        // from the store (an interrupted grow).
        let changed: Vec<(String, Option<u32>, u64)> = map
            .iter()
            .filter_map(|(n, e)| {
                let r = entries.get(n)?;
                let id = e.device.as_ref().map(|d| d.dev_id);
                let new_id = (id.is_some() && r.dev_id != id).then_some(id);
                let new_size = e.volume.is_some() && e.size_bytes != r.size_bytes;
                (new_id.is_some() || new_size)
                    .then(|| (n.clone(), new_id.unwrap_or(r.dev_id), e.size_bytes))
            })
            .collect();
        if !changed.is_empty() {
            let names: Vec<String> = changed.iter().map(|(n, _, _)| n.clone()).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            self.persist(&names, |p| {
                for (n, id, size) in changed {
                    if let Some(r) = p.get_mut(&n) {
                        r.dev_id = id;
                        r.size_bytes = size;
                    }
                }
            })?;
        }
        let failed = map.values().filter(|e| e.error.is_some()).count();
        let summary = RecoverySummary {
            recovered: map.len() - failed,
            failed,
        };
        let waiting = map.values().filter(|e| e.reopen).count();
        self.state.write().exports = map;
        self.ready.store(true, Ordering::SeqCst);
        if waiting > 0 {
            self.spawn_reopen();
        }
        Ok(summary)
    }

    /// Start the background re-open of exports waiting for the store (one thread
    /// for all; it ends when none is left waiting, or at shutdown).
    fn spawn_reopen(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let backoff = self.cfg.reopen_backoff;
        let spawned = std::thread::Builder::new()
            .name("reopen".into())
            .spawn(move || {
                let mut retry = 1u32;
                loop {
                    let until = Instant::now() + backoff.delay(retry, rand::random());
                    loop {
                        match weak.upgrade() {
                            Some(r) if !r.closing.load(Ordering::SeqCst) => {}
                            _ => return,
                        }
                        let now = Instant::now();
                        if now >= until {
                            break;
                        }
                        std::thread::sleep((until - now).min(Duration::from_millis(100)));
                    }
                    let Some(r) = weak.upgrade() else { return };
                    if !r.reopen_waiting() {
                        return;
                    }
                    retry = retry.saturating_add(1);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the background re-open; PUT repairs the waiting exports");
        }
    }

    /// One round of the background re-open: try every export still waiting for the
    /// store (bounded parallelism). Returns whether any is still waiting.
    fn reopen_waiting(&self) -> bool {
        let names: Vec<String> = self
            .state
            .read()
            .exports
            .iter()
            .filter(|(_, e)| e.reopen && e.error.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        if names.is_empty() {
            return false;
        }
        let workers = self.cfg.open_concurrency.clamp(1, names.len());
        let still = parallel::map(workers, names, |n| smol::block_on(self.reopen_one(&n)));
        still.into_iter().any(|w| w)
    }

    /// Re-open one waiting export (as a PUT would repair it); returns whether it is
    /// still waiting for the store.
    async fn reopen_one(&self, name: &str) -> bool {
        let Ok(_op) = self.begin_op() else {
            return false;
        };
        let lock = self.name_lock(name);
        let _guard = lock.lock().await;
        let e = match self.entry(name) {
            Ok(e) if e.reopen && e.error.is_some() => e,
            _ => return false,
        };
        let size = e.size_bytes;
        // Open already: only its device is waiting (its start-up recovery failed).
        let device_only = e.volume.is_some();
        match self.repair(name, e, size).await {
            Ok(_) if device_only => {
                tracing::info!(export = name, "device re-attached");
                false
            }
            Ok(_) => {
                tracing::info!(
                    export = name,
                    "store reachable again: export re-opened and its device re-attached"
                );
                false
            }
            Err(RouterError::Backend {
                source: BackendError::Unavailable(_),
                ..
            }) => true,
            Err(err) if device_only => {
                tracing::warn!(export = name, error = %err, "device re-attach failed; retrying");
                true
            }
            Err(err) => {
                tracing::error!(export = name, error = %err, "re-open failed; the export stays failed (PUT retries)");
                self.set_entry(name, |x| x.reopen = false);
                false
            }
        }
    }

    /// Open one registered export's volume (grown to its registered size) and build
    /// its device target: sent on `tx` to the device recovery when the export had a
    /// device, returned for a later `add` when it had none.
    fn open_for_recovery(
        &self,
        e: RegEntry,
        tx: &std::sync::mpsc::Sender<(u32, Arc<dyn IoTarget>)>,
    ) -> Opened {
        let r = smol::block_on(async {
            let v = open_registered(self.volumes.as_ref(), &e.name, e.size_bytes).await?;
            grow_to(&v, e.size_bytes).await?;
            Ok::<_, BackendError>(v)
        });
        let mut target = None;
        let mut target_err = None;
        if let Ok(v) = &r {
            match self.target(&e.name, v) {
                Ok(t) if self.devices.is_some() => match e.dev_id {
                    // Only fails when the recovery thread is gone; the device is
                    // then reported as not recovered.
                    Some(id) => drop(tx.send((id, t))),
                    None => target = Some(t),
                },
                Ok(_) => {}
                Err(err) => target_err = Some(err.to_string()),
            }
        }
        (e, r, target, target_err)
    }
}

/// An export whose volume opened but whose device was not re-attached: failed with
/// `error`, its device kept (parked) for the background thread, or a PUT, to
/// re-attach in place.
fn wait_for_device(e: &mut Entry, error: String) {
    e.error = Some(error);
    if e.volume.is_some() {
        e.parked = true;
        e.reopen = true;
    }
}
