//! Cache misses: fetch the stored extents that hold a block's wanted sectors
//! (one ranged GET per extent), verify them, and fill the cache file.
//!
//! Invariants: at most one fetch per block is in flight (`State::fetching`; waiters
//! listen on its event, and a cancelled fetch still wakes them via [`FetchGuard`]);
//! only invalid sectors are filled, under the state lock, so a concurrent write is
//! never overwritten; a checksum mismatch is an error plus a counter, never data.
//! The live extents of a block are disjoint, so one wanted sector costs one GET;
//! a whole block costs one GET per group of its extents that lie back to back in
//! one segment (the extents one upload wrote for a block do): at most 32 before
//! compaction, at most [`super::compaction::MAX_PIECES`] after a compaction moved
//! it, one after a merge (see `compaction.rs`). The GETs of one block run
//! concurrently.

use super::blockmap::{EntryKind, Loc, Piece, FULL, SECTORS_PER_BLOCK};
use super::segment;
use super::shared_cache::SharedCache;
use super::{bump, Inner, VolumeError, BS, SS};
use crate::store::StoreError;
use crate::{BLOCK_SIZE, SECTOR_SIZE};
use event_listener::Event;
use std::sync::Arc;

/// Spans at least this long whose decoding is real work (sealed or compressed) are
/// decoded on the blocking pool (see [`decode_span`]).
const OFFLOAD_DECODE_BYTES: usize = 32 << 10;

struct FetchGuard<'a> {
    inner: &'a Inner,
    b: u64,
}

impl Drop for FetchGuard<'_> {
    fn drop(&mut self) {
        let ev = self.inner.st.lock().fetching.remove(&self.b);
        if let Some(ev) = ev {
            ev.notify(usize::MAX);
        }
    }
}

/// GET bytes `range` of segment `seq` (with retries for transient errors).
async fn get_span(
    inner: &Inner,
    b: u64,
    seq: u64,
    range: std::ops::Range<u64>,
) -> Result<bytes::Bytes, VolumeError> {
    let key = inner.segment_key(seq);
    let attempts = inner.cfg.read_attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match inner.store.get_range(&key, range.clone()).await {
            Ok(bytes) => {
                bump(&inner.stats.bytes_fetched, bytes.len() as u64);
                return Ok(bytes);
            }
            Err(e @ (StoreError::Unavailable(_) | StoreError::Io { .. })) if attempt < attempts => {
                tracing::warn!(volume = %inner.cfg.name, block = b, error = %e, "miss fetch failed; retrying");
                smol::Timer::after(inner.backoff(attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Verify and decode one extent's payload: the bytes of its `loc.count` sectors.
/// A mismatch is counted in `checksum_errors` and logged with the segment key.
pub(crate) fn decode(
    inner: &Inner,
    b: u64,
    loc: &Loc,
    payload: &[u8],
) -> Result<Vec<u8>, VolumeError> {
    segment::decode_payload(loc, payload, inner.opener(loc.seq, b))
        .map_err(|m| failed_verification(inner, b, loc, m))
}

/// A stored extent that failed verification: counted, logged with its segment key.
fn failed_verification(inner: &Inner, b: u64, loc: &Loc, m: String) -> VolumeError {
    bump(&inner.stats.checksum_errors, 1);
    let key = inner.segment_key(loc.seq);
    tracing::error!(volume = %inner.cfg.name, block = b, %key, %m, "stored extent failed verification");
    VolumeError::Checksum(format!("block {b} in {key}: {m}"))
}

/// Decode the extents of one ranged GET (`span`, starting at byte `start` of its
/// segment). A span whose decoding is real work (sealed or compressed, at least
/// [`OFFLOAD_DECODE_BYTES`]) is decoded on the blocking pool, so the blocks of one
/// request open in parallel and the queue thread keeps serving other requests; a
/// plain raw span (a checksum and a copy) is decoded in place.
async fn decode_span(
    inner: &Inner,
    b: u64,
    start: u64,
    group: &[&Piece],
    span: bytes::Bytes,
) -> Result<Vec<Vec<u8>>, VolumeError> {
    let (uuid, key) = inner.frame_key(group.first().map_or(0, |p| p.loc.seq));
    let key = key.cloned();
    let locs: Vec<Loc> = group.iter().map(|p| p.loc).collect();
    let heavy = span.len() >= OFFLOAD_DECODE_BYTES
        && (key.is_some() || locs.iter().any(|l| l.kind == EntryKind::Zstd));
    let work = move || {
        locs.iter()
            .map(|loc| {
                let a = (loc.off - start) as usize;
                let payload = span.get(a..a + loc.len as usize).unwrap_or_default();
                segment::decode_payload(loc, payload, segment::Opener::new(key.as_ref(), uuid, b))
                    .map_err(|m| (*loc, m))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let decoded = if heavy {
        smol::unblock(work).await
    } else {
        work()
    };
    decoded.map_err(|(loc, m)| failed_verification(inner, b, &loc, m))
}

/// GET, verify and decode one committed extent.
pub(crate) async fn get_extent(inner: &Inner, b: u64, loc: &Loc) -> Result<Vec<u8>, VolumeError> {
    let bytes = get_span(inner, b, loc.seq, loc.off..loc.off + u64::from(loc.len)).await?;
    decode(inner, b, loc, &bytes)
}

/// Groups of extents that lie back to back in one segment (one ranged GET each):
/// (segment, byte range, the extents in order). `needed` is sorted by
/// (seq, offset).
type Group<'a> = (u64, std::ops::Range<u64>, &'a [&'a Piece]);

fn groups<'a>(needed: &'a [&'a Piece]) -> Vec<Group<'a>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < needed.len() {
        let (seq, start) = (needed[i].loc.seq, needed[i].loc.off);
        let mut end = start + u64::from(needed[i].loc.len);
        let mut j = i + 1;
        while j < needed.len() && needed[j].loc.seq == seq && needed[j].loc.off == end {
            end += u64::from(needed[j].loc.len);
            j += 1;
        }
        out.push((seq, start..end, &needed[i..j]));
        i = j;
    }
    out
}

fn sorted(pieces: &[Piece], want: u32) -> Vec<&Piece> {
    let mut needed: Vec<&Piece> = pieces.iter().filter(|p| p.live & want != 0).collect();
    needed.sort_by_key(|p| (p.loc.seq, p.loc.off));
    needed
}

/// GETs a cold read of the whole block costs.
pub(crate) fn gets(pieces: &[Piece]) -> usize {
    groups(&sorted(pieces, FULL)).len()
}

/// The committed content of the sectors `want` of block `b` (others left zero).
/// Pieces that lie back to back in one segment are fetched with one ranged GET;
/// the GETs of one block run concurrently, so a fragmented block costs one
/// round trip, not one per extent.
pub(crate) async fn compose(
    inner: &Inner,
    b: u64,
    pieces: &[Piece],
    want: u32,
) -> Result<Vec<u8>, VolumeError> {
    let needed = sorted(pieces, want);
    let groups = groups(&needed);
    let spans = crate::parallel::join_all(
        groups
            .iter()
            .map(|(seq, range, _)| get_span(inner, b, *seq, range.clone()))
            .collect(),
    )
    .await;
    // Allocated only when pieces are placed: an extent that is the whole block (a
    // sequential writer's) becomes the block, with no zeroed buffer and no copy.
    let mut block = None;
    for ((_, range, group), span) in groups.iter().zip(spans) {
        let decoded = decode_span(inner, b, range.start, group, span?).await?;
        for (p, data) in group.iter().zip(decoded) {
            if p.loc.first == 0 && data.len() == BLOCK_SIZE && p.live & want == FULL {
                block = Some(data);
            } else {
                let block = block.get_or_insert_with(|| vec![0u8; BLOCK_SIZE]);
                place(block, &p.loc, &data, p.live & want);
            }
        }
    }
    Ok(block.unwrap_or_else(|| vec![0u8; BLOCK_SIZE]))
}

/// Read the sectors of `out` (at `in_blk` within block `b`) of a fork whose
/// missing ones are all its ancestors' (or nobody's): the ancestors' extents come
/// from the host's shared cache, nothing is filled into the fork's cache file, and
/// the fork's own valid sectors from its cache file. Returns false (nothing read)
/// when there is no shared cache, the volume is no fork, or a missing sector is
/// the fork's own (the caller fetches as usual).
pub(crate) async fn read_shared(
    inner: &Inner,
    b: u64,
    in_blk: usize,
    out: &mut [u8],
    need: u32,
) -> Result<bool, VolumeError> {
    let (Some(cache), top) = (inner.cfg.shared_cache.as_ref(), inner.lineage.top()) else {
        return Ok(false);
    };
    if top == 0 {
        return Ok(false);
    }
    let (valid, pieces) = {
        let st = inner.st.lock();
        let pieces = st.store.map.get(&b).cloned().unwrap_or_default();
        (st.local.get(b).valid, pieces)
    };
    let missing = need & !valid;
    let wanted: Vec<&Piece> = pieces.iter().filter(|p| p.live & missing != 0).collect();
    if wanted.iter().any(|p| p.loc.seq > top) {
        return Ok(false);
    }
    let loads = wanted
        .iter()
        .map(|p| shared_extent(inner, cache, b, &p.loc))
        .collect();
    let mut block = vec![0u8; BLOCK_SIZE];
    for (p, data) in wanted.iter().zip(crate::parallel::join_all(loads).await) {
        place(&mut block, &p.loc, &data?, p.live & missing);
    }
    for (first, count) in runs(need & valid) {
        let (a, e) = (first * SECTOR_SIZE, (first + count) * SECTOR_SIZE);
        inner
            .data
            .read_at(&mut block[a..e], b * BS + a as u64)
            .map_err(|e| inner.fail("cache read", e))?;
    }
    out.copy_from_slice(&block[in_blk..in_blk + out.len()]);
    Ok(true)
}

/// Extent `loc` of block `b` through the host's shared cache: held there, or
/// fetched, verified and kept there (one load however many forks ask at once).
pub(crate) async fn shared_extent(
    inner: &Inner,
    cache: &SharedCache,
    b: u64,
    loc: &Loc,
) -> Result<Arc<Vec<u8>>, VolumeError> {
    cache
        .extent(inner.segment_key(loc.seq), loc.off, || {
            get_extent(inner, b, loc)
        })
        .await
}

/// Copy the sectors `take` of a decoded extent (`data`, starting at sector
/// `loc.first`) to their places in `block`.
pub(crate) fn place(block: &mut [u8], loc: &Loc, data: &[u8], take: u32) {
    let first = usize::from(loc.first);
    for (s, n) in runs(take) {
        let src = (s - first) * SECTOR_SIZE;
        block[s * SECTOR_SIZE..(s + n) * SECTOR_SIZE]
            .copy_from_slice(&data[src..src + n * SECTOR_SIZE]);
    }
}

/// Runs of set bits of `m`: (first, count).
pub(crate) fn runs(m: u32) -> impl Iterator<Item = (usize, usize)> {
    let mut s = 0usize;
    std::iter::from_fn(move || {
        while s < SECTORS_PER_BLOCK && m & (1 << s) == 0 {
            s += 1;
        }
        if s >= SECTORS_PER_BLOCK {
            return None;
        }
        let start = s;
        while s < SECTORS_PER_BLOCK && m & (1 << s) != 0 {
            s += 1;
        }
        Some((start, s - start))
    })
}

/// Make the sectors `need` of block `b` valid from the store's copy (sectors no
/// stored extent provides are zeros), with every other sector of the extents that
/// had to be fetched. Returns without change if they are valid or
/// the block is absent from the store (the caller reads zeros).
pub(crate) async fn fetch_block(inner: &Inner, b: u64, need: u32) -> Result<(), VolumeError> {
    loop {
        let (pieces, waiter) = {
            let mut st = inner.st.lock();
            if st.local.get(b).valid & need == need {
                return Ok(());
            }
            let Some(pieces) = st.store.map.get(&b).cloned() else {
                return Ok(());
            };
            match st.fetching.get(&b) {
                Some(ev) => (pieces, Some(ev.listen())),
                None => {
                    st.fetching.insert(b, Arc::new(Event::new()));
                    (pieces, None)
                }
            }
        };
        if let Some(l) = waiter {
            l.await;
            continue;
        }
        let guard = FetchGuard { inner, b };
        // Every extent that holds a wanted sector is fetched once and all of its
        // live sectors are filled (a sequential reader then finds the rest of the
        // block cached, as with whole-block entries), and so are the sectors no
        // extent holds (zeros, free).
        let invalid = FULL & !inner.st.lock().local.get(b).valid;
        let covered = pieces.iter().fold(0u32, |m, p| m | p.live);
        let hit = pieces
            .iter()
            .filter(|p| p.live & need & invalid != 0)
            .fold(0u32, |m, p| m | p.live);
        let want = (hit | !covered) & invalid;
        let block = match compose(inner, b, &pieces, want).await {
            Ok(v) => v,
            Err(VolumeError::Store(StoreError::NotFound(_)))
                if inner.st.lock().store.map.get(&b) != Some(&pieces) =>
            {
                // The segment was compacted and collected meanwhile: look again.
                drop(guard);
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut st = inner.st.lock();
        if st.store.map.get(&b) != Some(&pieces) {
            drop(st);
            drop(guard);
            continue;
        }
        // Sectors written meanwhile are valid now and are not overwritten.
        let fill = want & !st.local.get(b).valid;
        for (first, count) in runs(fill) {
            let (a, e) = (first * SS as usize, (first + count) * SS as usize);
            inner
                .data
                .write_at(&block[a..e], b * BS + a as u64)
                .map_err(|e| inner.fail("cache fill", e))?;
        }
        st.local.mark_filled(b, fill);
        drop(st);
        drop(guard);
        return Ok(());
    }
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn runs_of_a_mask() {
        assert_eq!(runs(0).count(), 0);
        assert_eq!(runs(u32::MAX).collect::<Vec<_>>(), vec![(0, 32)]);
        assert_eq!(
            runs(0b1011_0001 | 1 << 31).collect::<Vec<_>>(),
            vec![(0, 1), (4, 2), (7, 1), (31, 1)]
        );
    }
}
