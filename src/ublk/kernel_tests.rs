//! Tests against the real kernel driver. They skip (with a message) when
//! `/dev/ublk-control` is missing, and fail instead under `GLIDEFS_REQUIRE_UBLK=1`
//! (set by the VM tests). Serialized: they share the kernel's device id space.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::MmapMut;
use parking_lot::Mutex;

use super::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn ublk_or_skip(name: &str) -> bool {
    if UblkServer::available() {
        return true;
    }
    if std::env::var("GLIDEFS_REQUIRE_UBLK").is_ok_and(|v| v == "1") {
        panic!("{name}: /dev/ublk-control missing but GLIDEFS_REQUIRE_UBLK=1");
    }
    eprintln!("{name}: skipped, /dev/ublk-control missing (modprobe ublk_drv)");
    false
}

fn opts(bounce: bool) -> UblkOptions {
    UblkOptions {
        workers: 2,
        queues: 2,
        queue_depth: 32,
        pool_slots: 64,
        bounce_mode: bounce,
        owner_tag: 0,
    }
}

fn pattern(len: usize, seed: u8) -> MmapMut {
    let mut m = MmapMut::map_anon(len).unwrap();
    for (i, b) in m.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    m
}

fn write_direct(path: &str, off: u64, data: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(data).unwrap();
    f.sync_data().unwrap();
}

fn read_direct(path: &str, off: u64, len: usize) -> MmapMut {
    let mut buf = MmapMut::map_anon(len).unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.read_exact(&mut buf).unwrap();
    buf
}

fn roundtrip(bounce: bool) {
    let _g = SERIAL.lock();
    let srv = UblkServer::start(opts(bounce)).unwrap();
    assert_eq!(srv.user_copy(), !bounce && !bounce_mode_from_env());
    let target = Arc::new(MemTarget::new(64 << 20));
    let info = srv.add_device(None, target.clone()).unwrap();
    // 1 MiB + 4 KiB at an odd 4 KiB offset: split into pool slots / several requests.
    let data = pattern((1 << 20) + 4096, 7);
    write_direct(&info.block_path, 5 * 4096, &data);
    let back = read_direct(&info.block_path, 5 * 4096, data.len());
    assert!(back[..] == data[..], "read back differs");
    // The data really went through the target.
    let mut direct = vec![0u8; 4096];
    smol::future::block_on(target.read(5 * 4096, &mut direct)).unwrap();
    assert_eq!(&direct[..], &data[..4096]);
    srv.delete_device(info.dev_id).unwrap();
    assert!(!std::path::Path::new(&info.block_path).exists());
    assert!(srv.served_devices().is_empty());
    srv.shutdown(true);
}

#[test]
fn kernel_roundtrip_user_copy() {
    if ublk_or_skip("kernel_roundtrip_user_copy") {
        roundtrip(false);
    }
}

#[test]
fn kernel_roundtrip_bounce() {
    if ublk_or_skip("kernel_roundtrip_bounce") {
        roundtrip(true);
    }
}

#[test]
fn kernel_many_devices_add_and_delete() {
    if !ublk_or_skip("kernel_many_devices_add_and_delete") {
        return;
    }
    let _g = SERIAL.lock();
    let srv = UblkServer::start(opts(false)).unwrap();
    let n = 24;
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(
            srv.add_device(None, Arc::new(MemTarget::null(16 << 20)))
                .unwrap()
                .dev_id,
        );
    }
    let added = t0.elapsed();
    // Every device reads (zeros from the null target) while the others exist.
    for id in &ids {
        let b = read_direct(&format!("/dev/ublkb{id}"), 0, 4096);
        assert!(b.iter().all(|x| *x == 0));
    }
    let t1 = Instant::now();
    let res = srv.delete_devices(ids.clone());
    let deleted = t1.elapsed();
    assert!(res.iter().all(|(_, r)| r.is_ok()), "{res:?}");
    for id in &ids {
        assert!(!std::path::Path::new(&format!("/dev/ublkb{id}")).exists());
    }
    eprintln!("{n} devices: add {added:?}, delete {deleted:?}");
    srv.shutdown(true);
}

#[test]
fn kernel_shutdown_keeps_devices_for_recovery() {
    if !ublk_or_skip("kernel_shutdown_keeps_devices_for_recovery") {
        return;
    }
    let _g = SERIAL.lock();
    let kept = Arc::new(MemTarget::new(32 << 20));
    let a = UblkServer::start(opts(false)).unwrap();
    let d0 = a.add_device(None, kept.clone()).unwrap();
    let orphan = a
        .add_device(None, Arc::new(MemTarget::new(32 << 20)))
        .unwrap();
    let data = pattern(256 << 10, 3);
    write_direct(&d0.block_path, 1 << 20, &data);
    a.shutdown(false);
    drop(a);

    let b = UblkServer::start(opts(false)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let states = b.kernel_devices().unwrap();
        let st = |id| states.iter().find(|(i, _)| *i == id).map(|(_, s)| *s);
        if st(d0.dev_id) == Some(DeviceState::Quiesced)
            && st(orphan.dev_id) == Some(DeviceState::Quiesced)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "devices not QUIESCED: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let res = b.recover_devices(vec![(d0.dev_id, kept.clone() as Arc<dyn IoTarget>)]);
    assert_eq!(res.len(), 1);
    assert_eq!(res[0].1.as_ref().unwrap(), &d0);
    // Same node, same data (the target outlived the first server).
    let back = read_direct(&d0.block_path, 1 << 20, data.len());
    assert!(back[..] == data[..]);
    // The device with no known target was deleted as an orphan.
    assert!(!std::path::Path::new(&orphan.block_path).exists());
    assert!(b
        .kernel_devices()
        .unwrap()
        .iter()
        .all(|(id, _)| *id != orphan.dev_id));
    b.shutdown(true);
    assert!(!std::path::Path::new(&d0.block_path).exists());
}
