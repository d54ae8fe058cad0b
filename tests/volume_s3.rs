//! The volume engine against a real S3-compatible server (s3s-fs on 127.0.0.1,
//! started by the test harness in tests/common): the model property test, a
//! store outage while writing, and a corrupted stored segment.
//! `GLIDEFS_S3_MODEL_CASES` sets the model cases (default 256) unless `PROPTEST_CASES`
//! is set, which proptest applies over any config: scripts/test runs this test alone
//! with `PROPTEST_CASES` = its smaller count, since each case talks HTTP.
// Test code: a panic is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod volume_support;

use common::servers::TestServer;
use glidefs::store::{ObjectStore, StoreOptions};
use glidefs::volume::keys::VolumeKeys;
use glidefs::volume::{SimFs, Volume, VolumeError};
use glidefs::BLOCK_SIZE;
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use volume_support::model::*;
use volume_support::*;

const MIB: u64 = 1 << 20;

fn store_on(srv: &TestServer, prefix: &str) -> Arc<dyn ObjectStore> {
    // s3s-fs honours conditional writes one at a time; the engine has one writer.
    let opts = StoreOptions {
        allow_racy_conditional: true,
        ..srv.options()
    };
    srv.store_with(prefix, &opts)
}

fn cases() -> u32 {
    proptest_cases(Some("GLIDEFS_S3_MODEL_CASES"), 256)
}

#[test]
fn model_s3s_fs() {
    // One s3s-fs for every case, owned here so that it is killed when the test ends,
    // failed or not. It used to live in a static, which is never dropped: every
    // `cargo test` left an s3s-fs behind, seen using 17 % of a core afterwards.
    let srv = TestServer::s3s_fs();
    let case = AtomicU64::new(0);
    let config = ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(p in params(), ops in prop::collection::vec(op(), 1..24))| {
        let n = case.fetch_add(1, Ordering::Relaxed);
        let store = store_on(&srv, &format!("model{n}"));
        run_case(store, &p, &ops);
    });
    drop(srv);
}

#[test]
fn s3s_outage_while_writing_then_drain_and_cold_wake() {
    smol::block_on(async {
        let mut srv = TestServer::s3s_fs();
        let store = store_on(&srv, "outage");
        let fs = SimFs::new();
        let cfg = sim_cfg(&fs, "out", 2 * MIB);
        let v = open(&cfg, &store).await;
        let mut want = vec![0u8; 2 * MIB as usize];
        let mut put = |v: &Arc<Volume>, i: u64| {
            let d = pattern(200 + i, 24576);
            let off = (i * 53 * 4096) % (2 * MIB - 24576);
            want[off as usize..off as usize + d.len()].copy_from_slice(&d);
            (v.clone(), off, d)
        };
        for i in 0..4 {
            let (v, off, d) = put(&v, i);
            v.write(off, &d, false).await.unwrap();
        }
        v.drain().await.unwrap();
        srv.stop();
        for i in 4..16 {
            let (v, off, d) = put(&v, i);
            v.write(off, &d, false).await.unwrap();
            if i % 4 == 0 {
                v.flush().await.unwrap(); // local durability does not need the store
            }
        }
        let drain = smol::spawn({
            let v = v.clone();
            async move { v.drain().await }
        });
        while v.stats().flush_errors < 1 {
            smol::Timer::after(std::time::Duration::from_millis(20)).await;
        }
        assert!(v.stats().dirty_bytes > 0);
        srv.restart();
        drain.await.unwrap();
        assert_eq!(v.stats().dirty_bytes, 0);
        v.close().await.unwrap();
        drop(v);
        Volume::purge_cache(&cfg).unwrap();
        let v = open(&cfg, &store).await;
        assert_eq!(read_all(&v).await, want);
        v.close().await.unwrap();
    });
}

#[test]
fn s3s_corrupted_segment_file_is_an_io_error() {
    smol::block_on(async {
        let srv = TestServer::s3s_fs();
        let store = store_on(&srv, "corrupt");
        let fs = SimFs::new();
        let mut cfg = sim_cfg(&fs, "c", MIB);
        cfg.compress = false;
        let v = open(&cfg, &store).await;
        let a = pattern(300, BLOCK_SIZE);
        v.write(0, &a, false).await.unwrap();
        v.drain().await.unwrap();
        v.close().await.unwrap();
        drop(v);
        let segs = store.list(&VolumeKeys::new("c").segments()).await.unwrap();
        assert_eq!(segs.len(), 1);
        let path = srv.object_path(&format!("corrupt/{}", segs[0].key));
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 0x80;
        std::fs::write(&path, &bytes).unwrap();
        Volume::purge_cache(&cfg).unwrap();
        let v = open(&cfg, &store).await;
        let mut buf = vec![0u8; 4096];
        let e = v.read(0, &mut buf).await.unwrap_err();
        assert!(matches!(e, VolumeError::Checksum(_)), "{e}");
        assert!(v.stats().checksum_errors >= 1);
        v.close().await.unwrap();
    });
}
