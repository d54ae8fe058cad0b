//! Ownership when a volume changes hands (issue 14): fencing of late PUTs, host
//! identity, self-fencing, setting aside diverged local data. The randomised
//! multi-host model is tests/volume_multihost.rs.
// Test code: a panic is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod volume_support;

use glidefs::store::{MemStore, ObjectStore};
use glidefs::volume::{SimFs, Volume, VolumeConfig};
use std::sync::Arc;
use std::time::Duration;
use volume_support::fault::{FaultStore, Mode};
use volume_support::*;

const MIB: u64 = 1 << 20;

fn host_cfg(fs: &SimFs, name: &str, host: &str) -> VolumeConfig {
    let mut c = sim_cfg(fs, name, MIB);
    c.cache_dir = format!("/sim/{host}/{name}").into();
    c.owner = format!("id-{host}");
    c.host_label = host.to_string();
    c.checkpoint_every = 1000;
    c
}

async fn read4k(v: &Volume, off: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    v.read(off, &mut b).await.unwrap();
    b
}

/// Issue 14 item 3: host A's segment PUT is delayed past B's takeover and B's
/// manifest; when it lands it must not be applied over B's newer data.
#[test]
fn late_put_of_a_fenced_writer_is_ignored_after_a_newer_manifest() {
    smol::block_on(async {
        let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        let a_net = FaultStore::new(mem.clone());
        let a_store: Arc<dyn ObjectStore> = a_net.clone();
        let fs = SimFs::new();
        let mut a_cfg = host_cfg(&fs, "vm", "a");
        a_cfg.flush_interval = Duration::from_millis(1);
        let a = Volume::open(a_cfg.clone(), a_store.clone()).await.unwrap();
        a.write(0, &pattern(1, 4096), false).await.unwrap();
        a.drain().await.unwrap();
        // A's next uploads never get a reply; the requests land later.
        a.write(0, &pattern(2, 4096), false).await.unwrap();
        a_net.set(Mode::Delay, "/seg/");
        for _ in 0..50 {
            if a_net.delayed_count() >= 3 {
                break;
            }
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        assert!(a_net.delayed_count() >= 1, "A never tried to upload");
        // B takes over and writes a manifest (checkpoint every segment).
        let mut b_cfg = host_cfg(&fs, "vm", "b");
        b_cfg.takeover = true;
        b_cfg.checkpoint_every = 1;
        let b = Volume::open(b_cfg.clone(), mem.clone()).await.unwrap();
        assert!(read4k(&b, 0).await == pattern(1, 4096));
        b.write(0, &pattern(3, 4096), false).await.unwrap();
        b.write(8192, &pattern(4, 4096), false).await.unwrap();
        b.drain().await.unwrap();
        assert!(b.stats().manifests_written >= 1);
        // A's late PUTs land now.
        assert!(a_net.release().await >= 1);
        b.close().await.unwrap();
        a.abandon().await;
        // Whoever opens next sees B's data, not A's late segment.
        let mut c_cfg = host_cfg(&fs, "vm", "c");
        c_cfg.takeover = true;
        let c = Volume::open(c_cfg, mem.clone()).await.unwrap();
        assert!(
            read4k(&c, 0).await == pattern(3, 4096),
            "A's late PUT was applied"
        );
        assert!(read4k(&c, 8192).await == pattern(4, 4096));
        c.close().await.unwrap();
    });
}
