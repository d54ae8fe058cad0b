//! Sequential readahead: once a read starts where the previous one ended, the
//! blocks up to [`READAHEAD_BYTES`] past its end are fetched into the cache in the
//! background, so a cold sequential reader (QD1 direct I/O, `dd`, a 128 KiB stream)
//! finds them cached instead of paying a store round trip per request.
//!
//! Invariants: at most [`READAHEAD_BLOCKS`] prefetches in flight per volume; a
//! prefetch is an ordinary [`fetch::fetch_block`] (one fetch per block, only invalid
//! sectors filled, concurrent writes win), so it never changes what a read returns;
//! its failure is dropped (the reader's own fetch retries and reports it); closing
//! the volume cancels the prefetches in flight. A fork that reads its ancestors'
//! extents through the host's shared cache has them read ahead into that cache, as
//! `fetch::read_shared` reads them (held once for every fork, never copied into the
//! fork's cache file); blocks with sectors of its own are fetched as usual.

use super::blockmap::{Loc, FULL};
use super::shared_cache::SharedCache;
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
    let top = inner.lineage.top();
    let shared = inner.cfg.shared_cache.as_ref().filter(|_| top != 0);
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
        let missing = {
            let st = inner.st.lock();
            let valid = st.local.get(b).valid;
            match st.store.map.get(&b) {
                Some(pieces) if valid != FULL && !st.fetching.contains_key(&b) => Some(
                    pieces
                        .iter()
                        .filter(|p| p.live & !valid != 0)
                        .map(|p| p.loc)
                        .collect::<Vec<Loc>>(),
                ),
                _ => None,
            }
        };
        let task = match (missing, shared) {
            (None, _) => None,
            // Only ancestors' extents missing: into the shared cache.
            (Some(locs), Some(cache)) if locs.iter().all(|l| l.seq <= top) => {
                let locs: Vec<Loc> = locs
                    .into_iter()
                    .filter(|l| !cache.holds(&inner.segment_key(l.seq), l.off))
                    .collect();
                (!locs.is_empty())
                    .then(|| smol::spawn(into_shared(inner.clone(), cache.clone(), b, locs)))
            }
            (Some(_), _) => {
                let inner = inner.clone();
                Some(smol::spawn(async move {
                    if let Err(e) = fetch::fetch_block(&inner, b, FULL).await {
                        tracing::debug!(volume = %inner.cfg.name, block = b, error = %e, "readahead fetch failed");
                    }
                }))
            }
        };
        if let Some(t) = task {
            bump(&inner.stats.readahead_blocks, 1);
            s.tasks.push(t);
        }
        b += 1;
    }
    s.ahead = b;
}

/// Load the ancestors' extents `locs` of block `b` into the host's shared cache.
async fn into_shared(inner: Arc<Inner>, cache: Arc<SharedCache>, b: u64, locs: Vec<Loc>) {
    let loads = locs
        .iter()
        .map(|l| fetch::shared_extent(&inner, &cache, b, l))
        .collect();
    for r in crate::parallel::join_all(loads).await {
        if let Err(e) = r {
            tracing::debug!(volume = %inner.cfg.name, block = b, error = %e, "readahead into the shared cache failed");
        }
    }
}
