//! Store format 1: a volume written by an older release (the fixture in
//! tests/fixtures/v1-store, made by `make_v1_fixture` at commit 35c5ccf, the last
//! release that wrote format 1) opens, reads back exactly, takes new writes and
//! survives a cold wake. See docs/format.md "Volumes of format 1".
// Test code: a panic is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod volume_support;

use glidefs::store::{LocalDirStore, ObjectStore};
use glidefs::volume::{Volume, VolumeConfig};
use glidefs::BLOCK_SIZE;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use volume_support::pattern;

const NAME: &str = "v1vol";
const SIZE: u64 = 4 << 20;
const BS: u64 = BLOCK_SIZE as u64;

/// One step of the fixture's history.
enum Op {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    Drain,
}

/// What the fixture's volume went through: whole blocks (compressible and not),
/// partial blocks, unaligned writes, zeroed ranges, several segments and manifests.
fn history() -> Vec<Op> {
    let text: Vec<u8> = (0..2 * BLOCK_SIZE).map(|i| b"format1 "[i % 8]).collect();
    vec![
        Op::Write(0, pattern(1, 3 * BLOCK_SIZE)),
        Op::Write(4 * BS, text),
        Op::Drain,
        Op::Write(7 * BS + 8192, pattern(2, 4096)),
        Op::Write(9 * BS - 512, pattern(3, 1536)),
        Op::Write(20 * BS, pattern(4, BLOCK_SIZE)),
        Op::Drain,
        Op::Zero(BS, BS),
        Op::Write(2 * BS + 4096, pattern(5, 8192)),
        Op::Drain,
        Op::Write(31 * BS, pattern(6, BLOCK_SIZE)),
        Op::Zero(31 * BS + 4096, 4096),
        Op::Drain,
        Op::Write(12 * BS + 65536, pattern(7, 8192)),
        Op::Drain,
    ]
}

/// The volume's content after [`history`].
fn expected() -> Vec<u8> {
    let mut img = vec![0u8; SIZE as usize];
    for op in history() {
        match op {
            Op::Write(off, d) => img[off as usize..off as usize + d.len()].copy_from_slice(&d),
            Op::Zero(off, len) => img[off as usize..(off + len) as usize].fill(0),
            Op::Drain => {}
        }
    }
    img
}

fn cfg(cache: &Path) -> VolumeConfig {
    let mut c = VolumeConfig::new(NAME, 0, cache.to_path_buf());
    c.max_segment_bytes = 256 << 10;
    c.checkpoint_every = 2;
    c.seed = 11;
    // The fixture's lease is another host's (the generator's) and looks fresh.
    c.takeover = true;
    c
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-store")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

async fn read_all(v: &Volume) -> Vec<u8> {
    let mut buf = vec![0u8; v.size_bytes() as usize];
    v.read(0, &mut buf).await.unwrap();
    buf
}

/// Writes the fixture. Meaningful only on a release that writes format 1 (run it
/// there with GLIDEFS_V1_FIXTURE_OUT=<dir>); kept so the fixture's history is here.
#[test]
#[ignore = "generator: run on a format-1 release only"]
fn make_v1_fixture() {
    let out = PathBuf::from(std::env::var("GLIDEFS_V1_FIXTURE_OUT").unwrap());
    smol::block_on(async {
        let store: Arc<dyn ObjectStore> = Arc::new(LocalDirStore::open(out.join("store")).unwrap());
        let tmp = tempfile::tempdir().unwrap();
        let mut c = cfg(tmp.path());
        c.size_bytes = SIZE;
        let v = Volume::open(c, store).await.unwrap();
        for op in history() {
            match op {
                Op::Write(off, d) => v.write(off, &d, false).await.unwrap(),
                Op::Zero(off, len) => v.write_zeroes(off, len).await.unwrap(),
                Op::Drain => v.drain().await.unwrap(),
            }
        }
        assert_eq!(read_all(&v).await, expected());
        v.close().await.unwrap();
    });
}

#[test]
fn a_format_1_volume_opens_reads_back_takes_writes_and_wakes_cold() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    copy_tree(&fixture_dir().join("store"), &root);
    smol::block_on(async {
        let store: Arc<dyn ObjectStore> = Arc::new(LocalDirStore::open(&root).unwrap());
        let meta_key = format!("volumes/{NAME}/meta");
        let before: serde_json::Value =
            serde_json::from_slice(&store.get(&meta_key).await.unwrap()).unwrap();
        assert_eq!(before["format"], 1, "the fixture must be a format-1 volume");
        let cache = tmp.path().join("cache");
        let v = Volume::open(cfg(&cache), store.clone()).await.unwrap();
        let mut want = expected();
        assert_eq!(read_all(&v).await, want, "format-1 data misread");
        // New writes over old blocks: partial sectors over a v1 whole block, a new
        // block, a zeroed sector inside a v1 block.
        let a = pattern(40, 4096);
        v.write(BS + 4096, &a, false).await.unwrap();
        want[(BS + 4096) as usize..(BS + 8192) as usize].copy_from_slice(&a);
        let b = pattern(41, 2 * BLOCK_SIZE);
        v.write(10 * BS, &b, false).await.unwrap();
        want[(10 * BS) as usize..(12 * BS) as usize].copy_from_slice(&b);
        v.write_zeroes(4 * BS + 8192, 4096).await.unwrap();
        want[(4 * BS + 8192) as usize..(4 * BS + 12288) as usize].fill(0);
        v.drain().await.unwrap();
        v.close().await.unwrap();
        drop(v);
        let after: serde_json::Value =
            serde_json::from_slice(&store.get(&meta_key).await.unwrap()).unwrap();
        assert_eq!(
            after["format"], 2,
            "an opened format-1 volume is marked format 2"
        );
        std::fs::remove_dir_all(&cache).unwrap();
        let v = Volume::open(cfg(&cache), store.clone()).await.unwrap();
        assert_eq!(read_all(&v).await, want, "cold wake after mixed formats");
        v.close().await.unwrap();
    });
}
