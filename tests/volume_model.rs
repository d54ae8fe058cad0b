//! Model-based property test of the volume engine: random write/read/flush/discard/
//! drain sequences with three failures - process crash (kill -9: page cache kept),
//! power loss (unsynced data discarded, or a random subset of unsynced writes
//! reached the disk first, as background writeback does) and cold wake (cache dir deleted) - checked
//! against an in-memory model. Runs against MemStore and LocalDirStore (and s3s-fs in
//! tests/volume_s3.rs). `PROPTEST_CASES` sets the number of cases (default 256).
// Test code: a panic is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod volume_support;

use glidefs::store::{LocalDirStore, MemStore, ObjectStore};
use proptest::prelude::*;
use std::sync::Arc;
use volume_support::model::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn model_memstore(p in params(), ops in prop::collection::vec(op(), 1..24)) {
        run_case(Arc::new(MemStore::new()), &p, &ops);
    }

    #[test]
    fn model_localdir(p in params(), ops in prop::collection::vec(op(), 1..24)) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalDirStore::open(dir.path()).unwrap());
        run_case(store, &p, &ops);
    }
}

/// A fixed case that surely purges parents: a chain of forks whose parents are
/// purged one after another (forks of forks of a purged volume), with crash,
/// power loss and cold wake of the volume that took over, plaintext and encrypted.
#[test]
fn model_purged_parents_chain() {
    let ops = [
        Op::Write {
            at: 0,
            len: 300,
            fua: false,
        },
        Op::Snapshot,
        Op::Fork { at: 16, len: 64 },
        Op::Write {
            at: 8,
            len: 40,
            fua: false,
        },
        Op::Snapshot,
        Op::Fork { at: 200, len: 100 },
        Op::DeleteParent,
        Op::Write {
            at: 100,
            len: 80,
            fua: false,
        },
        Op::Crash,
        Op::Snapshot,
        Op::Fork { at: 40, len: 8 },
        Op::DeleteParent,
        Op::Write {
            at: 0,
            len: 8,
            fua: false,
        },
        Op::PowerLoss { writeback: 3 },
        Op::ColdWake,
        Op::DeleteParent,
    ];
    for encrypted in [false, true] {
        let p = Params {
            fast_flusher: true,
            small_dirty_limit: false,
            compress: true,
            store_mode: false,
            compact_pct: 99,
            gc_grace: false,
            encrypted,
        };
        run_case(Arc::new(MemStore::new()), &p, &ops);
    }
}
