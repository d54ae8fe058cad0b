//! Sequential readahead: once a read starts where the previous one ended, the
//! blocks up to [`READAHEAD_BYTES`] past its end are fetched into the cache in the
//! background, so a cold sequential reader (QD1 direct I/O, `dd`, a 128 KiB stream)
//! finds them cached instead of paying a store round trip per request.
//!
//! Invariants: at most [`READAHEAD_BLOCKS`] prefetches in flight per volume; a
//! prefetch is an ordinary [`fetch::fetch_block`] (one fetch per block, only invalid
//! sectors filled, concurrent writes win), so it never changes what a read returns;
//! its failure is dropped (the reader's own fetch retries and reports it); closing
//! the volume cancels the prefetches in flight. Forks that read their ancestors'
//! extents through the host's shared cache get no readahead: those extents are
//! kept once in the shared cache, never copied into the fork's cache file.

use super::blockmap::FULL;
use super::{bump, fetch, Inner, BS};
use parking_lot::Mutex;
use std::sync::Arc;

/// How far past the end of a sequential read the cache is filled ahead.
pub const READAHEAD_BYTES: u64 = 4 << 20;

/// Prefetches in flight per volume at most.
pub const READAHEAD_BLOCKS: usize = (READAHEAD_BYTES / BS) as usize;

/// One volume's read stream and its prefetches.
#[derive(Default)]
pub(crate) struct Readahead {
    stream: Mutex<Stream>,
}

#[derive(Default)]
struct Stream {
    /// Where the last read ended (bytes).
    next: u64,
    /// Blocks below this one were prefetched (or judged not to need it) in the
    /// current run of sequential reads.
    ahead: u64,
    /// Prefetches started and not yet reaped.
    tasks: Vec<smol::Task<()>>,
}

impl Readahead {
    /// Wait for every prefetch in flight (tests).
    pub(crate) async fn settle(&self) {
        let tasks = std::mem::take(&mut self.stream.lock().tasks);
        for t in tasks {
            t.await;
        }
    }

    /// Cancel every prefetch in flight (the volume is closing).
    pub(crate) fn cancel(&self) {
        let tasks = std::mem::take(&mut self.stream.lock().tasks);
        drop(tasks);
    }
}

/// Note a read of `len` bytes at `offset` of the volume behind `inner`; when it
/// continues the previous one, start prefetching what lies ahead.
pub(crate) fn note_read(inner: &Arc<Inner>, offset: u64, len: u64) {
    if inner.cfg.shared_cache.is_some() && inner.lineage.top() != 0 {
        return;
    }
    let ra = &inner.readahead;
    let mut s = ra.stream.lock();
    let end = offset + len;
    let sequential = offset == s.next && offset != 0;
    s.next = end;
    if !sequential {
        s.ahead = 0;
        return;
    }
    let blocks = inner.size_bytes().div_ceil(BS);
    let from = s.ahead.max(end.div_ceil(BS));
    let to = (end + READAHEAD_BYTES).div_ceil(BS).min(blocks);
    s.tasks.retain(|t| !t.is_finished());
    let mut b = from;
    while b < to && s.tasks.len() < READAHEAD_BLOCKS {
        let wanted = {
            let st = inner.st.lock();
            st.local.get(b).valid != FULL
                && st.store.map.contains_key(&b)
                && !st.fetching.contains_key(&b)
        };
        if wanted {
            bump(&inner.stats.readahead_blocks, 1);
            let inner = inner.clone();
            s.tasks.push(smol::spawn(async move {
                if let Err(e) = fetch::fetch_block(&inner, b, FULL).await {
                    tracing::debug!(volume = %inner.cfg.name, block = b, error = %e, "readahead fetch failed");
                }
            }));
        }
        b += 1;
    }
    s.ahead = b;
}
