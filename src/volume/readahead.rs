//! Sequential readahead: once a read starts where the previous one ended, the
//! blocks up to [`READAHEAD_BYTES`] past its end are fetched into the cache in the
//! background, so a cold sequential reader (QD1 direct I/O, `dd`, a 128 KiB stream)
//! finds them cached instead of paying a store round trip per request.
//!
//! Invariants: at most [`READAHEAD_BLOCKS`] prefetches in flight per volume, never
//! past [`READAHEAD_BYTES`] beyond the end of the stream's last read; a prefetch is
//! an ordinary [`fetch::fetch_block`] (one fetch per block, only invalid sectors
//! filled, concurrent writes win), so it never changes what a read returns; its
//! failure is dropped (the reader's own fetch retries and reports it); closing the
//! volume cancels the prefetches in flight and starts no more. A finished prefetch
//! starts the next one itself, so the store keeps [`READAHEAD_BLOCKS`] GETs in flight
//! while the reader waits. A fork that reads its ancestors' extents through the
//! host's shared cache has them read ahead into that cache, as `fetch::read_shared`
//! reads them (held once for every fork, never copied into the fork's cache file);
//! blocks with sectors of its own are fetched as usual.

use super::blockmap::{Loc, FULL};
use super::shared_cache::SharedCache;
use super::{bump, fetch, Inner, BS};
use parking_lot::Mutex;
use std::sync::Arc;

/// How far past the end of a sequential read the cache is filled ahead.
pub const READAHEAD_BYTES: u64 = 8 << 20;

/// Prefetches in flight per volume at most (4 MiB): half the distance, so that
/// finished prefetches can be followed by new ones while the reader still waits for
/// an older block. With distance = cap, a reader faster than the store emptied the
/// window every round trip: each window's prefetches started together, returned
/// together and were decoded while the reader waited, so decoding (an encrypted
/// volume's AEAD) added to every round trip (scripts/bench-results/
/// cold-read-2026-12-04.txt).
pub const READAHEAD_BLOCKS: usize = (4 << 20) / BS as usize;

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
    /// current run of sequential reads; 0 while the reads are not sequential (no
    /// prefetching then: a sequential read never ends in block 0).
    ahead: u64,
    /// Prefetches started and not yet finished (a finishing one counts itself out
    /// before it starts the next).
    in_flight: usize,
    /// Prefetches started and not yet reaped.
    tasks: Vec<smol::Task<()>>,
    /// The volume is closing: start nothing.
    closed: bool,
}

impl Readahead {
    /// Wait for every prefetch in flight, including those started meanwhile (tests).
    pub(crate) async fn settle(&self) {
        loop {
            let tasks = std::mem::take(&mut self.stream.lock().tasks);
            if tasks.is_empty() {
                return;
            }
            for t in tasks {
                t.await;
            }
        }
    }

    /// Cancel every prefetch in flight and start no more (the volume is closing).
    pub(crate) fn cancel(&self) {
        let tasks = {
            let mut s = self.stream.lock();
            s.closed = true;
            std::mem::take(&mut s.tasks)
        };
        drop(tasks);
    }
}

/// Note a read of `len` bytes at `offset` of the volume behind `inner`; when it
/// continues the previous one, start prefetching what lies ahead.
pub(crate) fn note_read(inner: &Arc<Inner>, offset: u64, len: u64) {
    let mut s = inner.readahead.stream.lock();
    let end = offset + len;
    let sequential = offset == s.next && offset != 0;
    s.next = end;
    if !sequential {
        s.ahead = 0;
        return;
    }
    s.ahead = s.ahead.max(end.div_ceil(BS));
    start_prefetches(inner, &mut s);
}

/// A prefetch finished: start the next ones the stream allows.
fn finished(inner: &Arc<Inner>) {
    let mut s = inner.readahead.stream.lock();
    s.in_flight = s.in_flight.saturating_sub(1);
    if s.ahead != 0 {
        start_prefetches(inner, &mut s);
    }
}

/// Start prefetches of the blocks from `s.ahead` up to [`READAHEAD_BYTES`] past the
/// stream's end, while fewer than [`READAHEAD_BLOCKS`] are in flight.
fn start_prefetches(inner: &Arc<Inner>, s: &mut Stream) {
    if s.closed {
        return;
    }
    let top = inner.lineage.top();
    let shared = inner.cfg.shared_cache.as_ref().filter(|_| top != 0);
    let blocks = inner.size_bytes().div_ceil(BS);
    let to = (s.next + READAHEAD_BYTES).div_ceil(BS).min(blocks);
    s.tasks.retain(|t| !t.is_finished());
    let mut b = s.ahead;
    while b < to && s.in_flight < READAHEAD_BLOCKS {
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
                (!locs.is_empty()).then(|| {
                    let (inner, cache) = (inner.clone(), cache.clone());
                    smol::spawn(async move {
                        into_shared(&inner, cache, b, locs).await;
                        finished(&inner);
                    })
                })
            }
            (Some(_), _) => {
                let inner = inner.clone();
                Some(smol::spawn(async move {
                    if let Err(e) = fetch::fetch_block(&inner, b, FULL).await {
                        tracing::debug!(volume = %inner.cfg.name, block = b, error = %e, "readahead fetch failed");
                    }
                    finished(&inner);
                }))
            }
        };
        if let Some(t) = task {
            bump(&inner.stats.readahead_blocks, 1);
            s.in_flight += 1;
            s.tasks.push(t);
        }
        b += 1;
    }
    s.ahead = b;
}

/// Load the ancestors' extents `locs` of block `b` into the host's shared cache.
async fn into_shared(inner: &Inner, cache: Arc<SharedCache>, b: u64, locs: Vec<Loc>) {
    let loads = locs
        .iter()
        .map(|l| fetch::shared_extent(inner, &cache, b, l))
        .collect();
    for r in crate::parallel::join_all(loads).await {
        if let Err(e) = r {
            tracing::debug!(volume = %inner.cfg.name, block = b, error = %e, "readahead into the shared cache failed");
        }
    }
}
