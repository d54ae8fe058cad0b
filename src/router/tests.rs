//! Router behaviour against in-memory fakes.

use super::fake::{FakeDevices, MemVolumes};
use super::*;
use async_trait::async_trait;
use smol::block_on;

struct Fixture {
    dir: tempfile::TempDir,
    vols: Arc<MemVolumes>,
    devs: Arc<FakeDevices>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            vols: Arc::new(MemVolumes::default()),
            devs: Arc::new(FakeDevices::default()),
        }
    }

    /// A recovered router; exports waiting for the store are re-opened only after
    /// an hour (tests of the re-open use [`Fixture::router_with`]).
    fn router(&self, max: usize, with_devices: bool) -> Arc<Router> {
        let hour = std::time::Duration::from_secs(3600);
        let backoff = crate::backoff::Backoff {
            base: hour,
            max: hour,
        };
        self.router_with(max, with_devices, backoff)
    }

    fn router_with(
        &self,
        max: usize,
        with_devices: bool,
        reopen_backoff: crate::backoff::Backoff,
    ) -> Arc<Router> {
        let cfg = RouterConfig {
            cache_dir: self.dir.path().join("cache"),
            max_exports: max,
            open_concurrency: 4,
            reopen_backoff,
        };
        let devs: Option<Arc<dyn DeviceBackend>> = with_devices.then(|| self.devs.clone() as _);
        let r = Router::new(
            cfg,
            self.vols.clone(),
            devs,
            Metrics::new(true, "v", "s").unwrap(),
        )
        .unwrap();
        r.recover().unwrap();
        r
    }

    fn registry(&self) -> BTreeMap<String, RegEntry> {
        Registry::new(&self.dir.path().join("cache"))
            .load()
            .unwrap()
    }
}

#[test]
fn create_get_list_grow_and_idempotence() {
    let f = Fixture::new();
    let r = f.router(10, true);
    let (info, out) = block_on(r.put("vm-1", 1 << 20)).unwrap();
    assert_eq!(out, PutOutcome::Created);
    assert_eq!(info.device.as_deref(), Some("/dev/ublkb0"));
    assert_eq!(info.state, ExportState::Live);
    let (again, out) = block_on(r.put("vm-1", 1 << 20)).unwrap();
    assert_eq!((again.clone(), out), (info.clone(), PutOutcome::Unchanged));
    assert!(matches!(
        block_on(r.put("vm-1", 1 << 19)),
        Err(RouterError::Conflict(_))
    ));
    let (grown, out) = block_on(r.put("vm-1", 2 << 20)).unwrap();
    assert_eq!((grown.size_bytes, out), (2 << 20, PutOutcome::Grown));
    assert_eq!(f.devs.devices.lock().get(&0), Some(&(2 << 20)));
    assert_eq!(f.registry()["vm-1"].size_bytes, 2 << 20);
    assert_eq!(r.get("vm-1").unwrap().size_bytes, 2 << 20);
    block_on(r.put("vm-0", 4096)).unwrap();
    let names: Vec<_> = r.list().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["vm-0", "vm-1"]);
    assert!(matches!(r.get("nope"), Err(RouterError::NotFound(_))));
    assert!(matches!(r.get("../x"), Err(RouterError::InvalidName(_))));
}

#[test]
fn bad_input_is_rejected_before_anything_happens() {
    let f = Fixture::new();
    let r = f.router(10, true);
    for bad in ["", "../x", "A", "é", &"a".repeat(65)] {
        assert!(
            matches!(block_on(r.put(bad, 4096)), Err(RouterError::InvalidName(_))),
            "{bad:?}"
        );
    }
    for size in [0, 4095, 1 << 60] {
        assert!(matches!(
            block_on(r.put("a", size)),
            Err(RouterError::InvalidSize(_))
        ));
    }
    assert!(r.is_empty());
    assert!(f.vols.store.lock().is_empty());
}

#[test]
fn limit_is_enforced_and_freed_by_delete() {
    let f = Fixture::new();
    let r = f.router(2, false);
    block_on(r.put("a", 4096)).unwrap();
    block_on(r.put("b", 4096)).unwrap();
    let err = block_on(r.put("c", 4096)).unwrap_err();
    assert!(matches!(err, RouterError::LimitReached(2)));
    assert_eq!(err.kind(), ErrorKind::Limit);
    assert!(!f.vols.store.lock().contains_key("c"));
    // Existing exports may still be grown at the limit.
    block_on(r.put("a", 8192)).unwrap();
    block_on(r.delete("a", false, false)).unwrap();
    block_on(r.put("c", 4096)).unwrap();
}

#[test]
fn delete_drains_or_purges() {
    let f = Fixture::new();
    let r = f.router(10, true);
    block_on(r.put("keep", 4096)).unwrap();
    block_on(r.put("gone", 4096)).unwrap();
    let keep = f.vols.store.lock()["keep"].clone();
    block_on(r.delete("keep", false, false)).unwrap();
    assert_eq!(keep.drains(), 1);
    assert!(keep.is_closed());
    assert!(
        f.vols.store.lock().contains_key("keep"),
        "non-purge delete keeps the store copy"
    );
    block_on(r.delete("gone", true, false)).unwrap();
    assert!(!f.vols.store.lock().contains_key("gone"));
    assert!(f.devs.devices.lock().is_empty());
    assert!(f.registry().is_empty());
    assert!(matches!(
        block_on(r.delete("gone", false, false)),
        Err(RouterError::NotFound(_))
    ));
}

#[test]
fn cold_wake_opens_the_stored_volume() {
    let f = Fixture::new();
    {
        let r = f.router(10, false);
        let (_, out) = block_on(r.put("moved", 8192)).unwrap();
        assert_eq!(out, PutOutcome::Created);
        block_on(r.delete("moved", false, false)).unwrap();
    }
    // Lost cache: a fresh cache dir, same "store".
    let g = Fixture {
        dir: tempfile::tempdir().unwrap(),
        vols: f.vols.clone(),
        devs: f.devs.clone(),
    };
    let r = g.router(10, false);
    assert!(matches!(
        block_on(r.put("moved", 4096)),
        Err(RouterError::Conflict(_))
    ));
    assert!(r.is_empty());
    let (info, out) = block_on(r.put("moved", 8192)).unwrap();
    assert_eq!((out, info.size_bytes), (PutOutcome::Woken, 8192));
}

#[test]
fn failed_create_changes_nothing() {
    let f = Fixture::new();
    let r = f.router(1, true);
    f.devs.fail_add.store(true, Ordering::SeqCst);
    let err = block_on(r.put("x", 4096)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(r.is_empty());
    assert!(f.registry().is_empty());
    assert!(
        !f.vols.store.lock().contains_key("x"),
        "a new volume is purged on failure"
    );
    f.devs.fail_add.store(false, Ordering::SeqCst);
    // The reservation was released: the single slot is still free.
    block_on(r.put("x", 4096)).unwrap();
}

#[test]
fn restart_recovers_the_same_devices() {
    let f = Fixture::new();
    {
        let r = f.router(10, true);
        block_on(r.put("a", 4096)).unwrap();
        block_on(r.put("b", 8192)).unwrap();
        block_on(r.put("c", 4096)).unwrap();
        block_on(r.delete("b", true, false)).unwrap();
        r.shutdown(false);
        assert_eq!(*f.devs.shut.lock(), Some(false));
    }
    let r = f.router(10, true);
    assert!(r.is_ready());
    let list = r.list();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].device.as_deref(), Some("/dev/ublkb0"));
    assert_eq!(list[1].device.as_deref(), Some("/dev/ublkb2"));
}

#[test]
fn failed_recovery_is_reported_and_repaired_by_put() {
    let f = Fixture::new();
    {
        let r = f.router(10, true);
        block_on(r.put("a", 4096)).unwrap();
        block_on(r.put("b", 4096)).unwrap();
        r.shutdown(false);
    }
    f.vols.fail.lock().insert("b".into());
    let r = f.router(10, true);
    let b = r.get("b").unwrap();
    assert_eq!(b.state, ExportState::Failed);
    assert!(b.error.unwrap().contains("injected"));
    assert_eq!(r.get("a").unwrap().state, ExportState::Live);
    assert!(matches!(
        block_on(r.drain("b")),
        Err(RouterError::Conflict(_))
    ));
    f.vols.fail.lock().clear();
    let (info, out) = block_on(r.put("b", 4096)).unwrap();
    assert_eq!(out, PutOutcome::Repaired);
    assert_eq!(info.device.as_deref(), Some("/dev/ublkb1"));
}

#[test]
fn not_ready_before_recovery() {
    let f = Fixture::new();
    let cfg = RouterConfig {
        cache_dir: f.dir.path().into(),
        max_exports: 1,
        open_concurrency: 1,
        reopen_backoff: crate::rules::REOPEN_BACKOFF,
    };
    let r = Router::new(
        cfg,
        f.vols.clone(),
        None,
        Metrics::new(true, "v", "s").unwrap(),
    )
    .unwrap();
    assert!(!r.is_ready());
    assert!(matches!(
        block_on(r.put("a", 4096)),
        Err(RouterError::NotReady)
    ));
    r.recover().unwrap();
    block_on(r.put("a", 4096)).unwrap();
    r.shutdown(false);
    assert!(matches!(
        block_on(r.put("b", 4096)),
        Err(RouterError::ShuttingDown)
    ));
}

/// A factory whose `open` of "slow" blocks until released.
struct Gated {
    inner: MemVolumes,
    entered: smol::channel::Sender<()>,
    release: smol::channel::Receiver<()>,
}

#[async_trait]
impl VolumeFactory for Gated {
    async fn open(&self, name: &str, size: u64) -> Result<Arc<dyn ExportVolume>, BackendError> {
        if name == "slow" {
            let _ = self.entered.send(()).await;
            let _ = self.release.recv().await;
        }
        self.inner.open(name, size).await
    }
    async fn exists_in_store(&self, name: &str) -> Result<Option<u64>, BackendError> {
        self.inner.exists_in_store(name).await
    }
    async fn purge(&self, name: &str, force: bool) -> Result<(), BackendError> {
        self.inner.purge(name, force).await
    }
    async fn forget_local(&self, name: &str) -> Result<(), BackendError> {
        self.inner.forget_local(name).await
    }
}

#[test]
fn a_slow_create_does_not_block_other_exports() {
    let dir = tempfile::tempdir().unwrap();
    let (etx, erx) = smol::channel::unbounded();
    let (rtx, rrx) = smol::channel::unbounded();
    let gated = Arc::new(Gated {
        inner: MemVolumes::default(),
        entered: etx,
        release: rrx,
    });
    let cfg = RouterConfig {
        cache_dir: dir.path().into(),
        max_exports: 10,
        open_concurrency: 1,
        reopen_backoff: crate::rules::REOPEN_BACKOFF,
    };
    let r = Router::new(cfg, gated, None, Metrics::new(true, "v", "s").unwrap()).unwrap();
    r.recover().unwrap();
    block_on(r.put("busy", 4096)).unwrap();
    let r2 = r.clone();
    let slow = std::thread::spawn(move || block_on(r2.put("slow", 4096)));
    block_on(erx.recv()).unwrap(); // "slow" is inside open, holding its name lock
                                   // Other names: create, grow, drain, delete, list all complete meanwhile.
    block_on(r.put("fast", 4096)).unwrap();
    block_on(r.put("busy", 8192)).unwrap();
    block_on(r.drain("busy")).unwrap();
    block_on(r.delete("fast", true, false)).unwrap();
    assert_eq!(r.list().len(), 1);
    rtx.send_blocking(()).unwrap();
    slow.join().unwrap().unwrap();
    assert_eq!(r.list().len(), 2);
}

#[test]
fn metrics_follow_exports() {
    let f = Fixture::new();
    let cfg = RouterConfig {
        cache_dir: f.dir.path().into(),
        max_exports: 10,
        open_concurrency: 1,
        reopen_backoff: crate::rules::REOPEN_BACKOFF,
    };
    let m = Metrics::new(true, "v", "s").unwrap();
    let r = Router::new(cfg, f.vols.clone(), None, m.clone()).unwrap();
    assert!(m.render().contains("glidefs_ready 0"), "before recovery");
    r.recover().unwrap();
    assert!(m.render().contains("glidefs_ready 1"), "after recovery");
    block_on(r.put("m1", 1 << 20)).unwrap();
    // Drive I/O through the metered target the router built for the device.
    let t = r.io_target("m1").unwrap();
    block_on(t.write(0, &[7u8; 8192], false)).unwrap();
    let mut buf = [0u8; 4096];
    block_on(t.read(4096, &mut buf)).unwrap();
    assert_eq!(buf, [7u8; 4096]);
    let text = m.render();
    assert!(
        text.contains("glidefs_write_io_size_bytes_bucket{export=\"m1\",le=\"8192\"} 1"),
        "{text}"
    );
    assert!(text.contains("glidefs_io_bytes_total{export=\"m1\",op=\"read\"} 4096"));
    assert!(text.contains("glidefs_exports 1"));
    assert!(text.contains("glidefs_cache_hits_total{export=\"m1\"} 1"));
    block_on(r.delete("m1", true, false)).unwrap();
    assert!(!m.render().contains("export=\"m1\""));
    r.shutdown(false);
    assert!(m.render().contains("glidefs_ready 0"), "stopping");
}

#[test]
fn shutdown_waits_for_operations_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (etx, erx) = smol::channel::unbounded();
    let (rtx, rrx) = smol::channel::unbounded();
    let gated = Arc::new(Gated {
        inner: MemVolumes::default(),
        entered: etx,
        release: rrx,
    });
    let cfg = RouterConfig {
        cache_dir: dir.path().into(),
        max_exports: 10,
        open_concurrency: 1,
        reopen_backoff: crate::rules::REOPEN_BACKOFF,
    };
    let r = Router::new(
        cfg,
        gated.clone(),
        None,
        Metrics::new(true, "v", "s").unwrap(),
    )
    .unwrap();
    r.recover().unwrap();
    let r2 = r.clone();
    let slow = std::thread::spawn(move || block_on(r2.put("slow", 4096)));
    block_on(erx.recv()).unwrap();
    let r3 = r.clone();
    let stopper = std::thread::spawn(move || r3.shutdown(false));
    while r.is_ready() {
        std::thread::yield_now();
    }
    // New operations are refused while shutdown waits...
    assert!(matches!(
        block_on(r.put("late", 4096)),
        Err(RouterError::ShuttingDown)
    ));
    // ...and the one in flight completes and is then closed by shutdown.
    rtx.send_blocking(()).unwrap();
    slow.join().unwrap().unwrap();
    stopper.join().unwrap();
    assert!(gated.inner.store.lock()["slow"].is_closed());
}

#[test]
fn grow_that_loses_the_device_is_repaired_by_put() {
    let f = Fixture::new();
    let r = f.router(10, true);
    block_on(r.put("g", 4096)).unwrap();
    f.devs.fail_add.store(true, Ordering::SeqCst);
    assert!(block_on(r.put("g", 8192)).is_err());
    let g = r.get("g").unwrap();
    assert_eq!((g.state, g.device), (ExportState::Failed, None));
    f.devs.fail_add.store(false, Ordering::SeqCst);
    let (info, out) = block_on(r.put("g", 8192)).unwrap();
    assert_eq!(out, PutOutcome::Repaired);
    assert_eq!(
        (info.device.as_deref(), info.size_bytes),
        (Some("/dev/ublkb0"), 8192)
    );
    assert_eq!(f.registry()["g"].size_bytes, 8192);
    assert_eq!(f.devs.devices.lock().get(&0), Some(&8192));
}

#[test]
fn purge_of_a_failed_export_another_host_holds_changes_nothing_unless_forced() {
    let f = Fixture::new();
    let r = f.router(10, true);
    block_on(r.put("vm-1", 4096)).unwrap();
    r.shutdown(false);
    // While this daemon is down, host B takes vm-1: the restart leaves it failed.
    f.vols
        .held_elsewhere
        .lock()
        .insert("vm-1".into(), "host-b".into());
    let r = f.router(10, true);
    assert_eq!(r.get("vm-1").unwrap().state, ExportState::Failed);
    let before = r.get("vm-1").unwrap();
    let err = block_on(r.delete("vm-1", true, false)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("host-b"), "{err}");
    assert!(
        f.vols.store.lock().contains_key("vm-1"),
        "B's volume purged"
    );
    assert_eq!(r.get("vm-1").unwrap(), before, "export changed");
    assert!(f.registry().contains_key("vm-1"));
    let err = block_on(r.delete("vm-1", false, true)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "force without purge: {err}");
    block_on(r.delete("vm-1", true, true)).unwrap();
    assert!(!f.vols.store.lock().contains_key("vm-1"));
    assert!(r.get("vm-1").is_err() && !f.registry().contains_key("vm-1"));
}

/// Issue 14 item 7: a crash between growing the volume in the store and recording
/// the new size in the registry (the store is then larger than the registry).
fn crash_during_grow(f: &Fixture, name: &str) {
    let r = f.router(10, true);
    block_on(r.put(name, 4096)).unwrap();
    r.shutdown(false);
    let v = f.vols.store.lock()[name].clone();
    block_on(v.grow(8192)).unwrap();
    assert_eq!(f.registry()[name].size_bytes, 4096);
}

#[test]
fn a_crash_during_grow_is_recovered_at_the_larger_size() {
    let f = Fixture::new();
    crash_during_grow(&f, "g");
    let r = f.router(10, true);
    let info = r.get("g").unwrap();
    assert_eq!(info.state, ExportState::Live, "{info:?}");
    assert_eq!(info.size_bytes, 8192);
    assert_eq!(f.registry()["g"].size_bytes, 8192, "registry fixed");
    assert_eq!(f.devs.devices.lock().get(&0), Some(&8192));
}

#[test]
fn a_crash_during_grow_is_repaired_by_put() {
    let f = Fixture::new();
    crash_during_grow(&f, "g");
    // The store is unreachable at restart; the export fails, then PUT repairs it.
    f.vols.fail.lock().insert("g".into());
    let r = f.router(10, true);
    assert_eq!(r.get("g").unwrap().state, ExportState::Failed);
    f.vols.fail.lock().clear();
    let (info, out) = block_on(r.put("g", 8192)).unwrap();
    assert_eq!(
        (out, info.size_bytes, info.state),
        (PutOutcome::Repaired, 8192, ExportState::Live)
    );
    assert_eq!(f.registry()["g"].size_bytes, 8192);
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Issue 14 item 9: the store is down while the daemon restarts (after kill -9).
#[test]
fn a_store_outage_at_restart_keeps_devices_and_reattaches_them() {
    let f = Fixture::new();
    let r = f.router(10, true);
    block_on(r.put("a", 4096)).unwrap();
    block_on(r.put("b", 8192)).unwrap();
    block_on(r.put("moved", 4096)).unwrap();
    r.shutdown(false);
    drop(r);
    f.vols
        .fail
        .lock()
        .extend(["a".to_string(), "b".to_string()]);
    f.vols
        .held_elsewhere
        .lock()
        .insert("moved".into(), "host-b".into());
    let fast = crate::backoff::Backoff {
        base: std::time::Duration::from_millis(20),
        max: std::time::Duration::from_millis(100),
    };
    let r = f.router_with(10, true, fast);
    for n in ["a", "b", "moved"] {
        assert_eq!(r.get(n).unwrap().state, ExportState::Failed, "{n}");
        assert!(f.registry().contains_key(n), "{n} left the registry");
    }
    // The devices of exports waiting for the store stay (quiesced); the device of
    // the volume another host holds goes, as before.
    let ids: Vec<u32> = f.devs.devices.lock().keys().copied().collect();
    assert_eq!(ids, [0, 1], "devices of a, b kept, moved's deleted");
    // The store comes back: both are re-attached on their own, same devices.
    f.vols.fail.lock().clear();
    wait_until("a and b live again", || {
        ["a", "b"]
            .iter()
            .all(|n| r.get(n).unwrap().state == ExportState::Live)
    });
    assert_eq!(r.get("a").unwrap().device.as_deref(), Some("/dev/ublkb0"));
    assert_eq!(r.get("b").unwrap().device.as_deref(), Some("/dev/ublkb1"));
    assert_eq!(f.devs.devices.lock().get(&1), Some(&8192));
    assert_eq!(r.get("moved").unwrap().state, ExportState::Failed);
    assert_eq!(f.registry()["a"].dev_id, Some(0));
}

/// A device whose start-up recovery fails (the kernel's START_USER_RECOVERY
/// refused past its patience) stays in the kernel, quiesced, with the guest's I/O
/// waiting on it: it is re-attached in place in the background, and a PUT re-attaches
/// it rather than adding a second device beside the stuck one (the old code marked
/// the export failed for good, and its PUT left the first device waiting forever).
#[test]
fn a_device_whose_recovery_fails_is_reattached_in_place() {
    let f = Fixture::new();
    let r = f.router(10, true);
    block_on(r.put("a", 4096)).unwrap();
    block_on(r.put("b", 8192)).unwrap();
    r.shutdown(false);
    drop(r);
    f.devs.fail_recover.lock().insert(1);
    // Re-attached by PUT, in place.
    let r = f.router(10, true);
    let b = r.get("b").unwrap();
    assert_eq!(b.state, ExportState::Failed);
    assert!(b.error.unwrap().contains("injected recovery failure"));
    assert_eq!(r.get("a").unwrap().state, ExportState::Live);
    f.devs.fail_recover.lock().clear();
    let (info, out) = block_on(r.put("b", 8192)).unwrap();
    assert_eq!(out, PutOutcome::Repaired);
    assert_eq!(info.device.as_deref(), Some("/dev/ublkb1"));
    let ids: Vec<u32> = f.devs.devices.lock().keys().copied().collect();
    assert_eq!(ids, [0, 1], "no second device beside the waiting one");
    r.shutdown(false);
    drop(r);
    // Re-attached in the background once the kernel lets it.
    f.devs.fail_recover.lock().insert(1);
    let fast = crate::backoff::Backoff {
        base: std::time::Duration::from_millis(20),
        max: std::time::Duration::from_millis(100),
    };
    let r = f.router_with(10, true, fast);
    assert_eq!(r.get("b").unwrap().state, ExportState::Failed);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        r.get("b").unwrap().state,
        ExportState::Failed,
        "still refused"
    );
    f.devs.fail_recover.lock().clear();
    wait_until("b live again", || {
        r.get("b").unwrap().state == ExportState::Live
    });
    assert_eq!(r.get("b").unwrap().device.as_deref(), Some("/dev/ublkb1"));
    let ids: Vec<u32> = f.devs.devices.lock().keys().copied().collect();
    assert_eq!(ids, [0, 1]);
    assert_eq!(f.registry()["b"].dev_id, Some(1));
}

#[test]
fn a_waiting_export_keeps_its_device_until_deleted() {
    let f = Fixture::new();
    let r = f.router(10, true);
    block_on(r.put("a", 4096)).unwrap();
    block_on(r.put("b", 4096)).unwrap();
    r.shutdown(false);
    f.vols
        .fail
        .lock()
        .extend(["a".to_string(), "b".to_string()]);
    let r = f.router(10, true);
    assert_eq!(f.devs.devices.lock().len(), 2);
    // Deleting a waiting export deletes its device (the purge needs the store).
    f.vols.fail.lock().remove("a");
    block_on(r.delete("a", true, false)).unwrap();
    assert_eq!(
        f.devs.devices.lock().keys().copied().collect::<Vec<_>>(),
        [1]
    );
    // A PUT repairs the other one in place, before the background re-open does.
    f.vols.fail.lock().clear();
    let (info, out) = block_on(r.put("b", 4096)).unwrap();
    assert_eq!(
        (out, info.device.as_deref()),
        (PutOutcome::Repaired, Some("/dev/ublkb1"))
    );
    r.shutdown(true);
    assert!(f.devs.devices.lock().is_empty());
}

#[test]
fn a_waiting_export_grown_by_put_gets_a_device_of_the_new_size() {
    let f = Fixture::new();
    let r = f.router(10, true);
    block_on(r.put("a", 4096)).unwrap();
    r.shutdown(false);
    f.vols.fail.lock().insert("a".into());
    let r = f.router(10, true);
    assert_eq!(f.devs.devices.lock().get(&0), Some(&4096), "device waits");
    f.vols.fail.lock().clear();
    let (info, out) = block_on(r.put("a", 8192)).unwrap();
    assert_eq!((out, info.size_bytes), (PutOutcome::Repaired, 8192));
    assert_eq!(info.device.as_deref(), Some("/dev/ublkb0"));
    assert_eq!(f.devs.devices.lock().get(&0), Some(&8192));
    assert_eq!(f.registry()["a"].size_bytes, 8192);
}
