//! Compaction: segments whose live bytes fell below `compact_below_live_pct` of
//! their size have their live extents rewritten into a new segment, after which
//! they hold nothing live and garbage collection deletes them (after
//! `gc_grace`). When no segment is a candidate, cold fragmented blocks are merged.
//!
//! Invariants:
//! - only live sectors move: each is its block's newest committed copy, so placing
//!   it in a segment with a higher number changes no block's content (replay
//!   order stays correct);
//! - a block whose pieces would exceed [`MAX_PIECES`] is merged into one whole-block
//!   extent instead (reads of it stay one GET);
//! - a *merge* rewrites a block whose extents need more than one GET into one
//!   whole-block extent, only when the block is cold (no extent of it in a segment
//!   of the volume's own writes committed within `merge_cold_after`, nothing dirty)
//!   and only within the merge budget: merges rewrite at most
//!   [`crate::rules::MERGE_BUDGET_PCT`] % of the bytes the volume's writes uploaded
//!   since it opened; most fragmented blocks first;
//! - a round runs inside the flusher (the only writer of the store map), commits
//!   through the same fenced protocol as any segment (a fenced writer never
//!   rewrites or deletes), and rewrites at most about `max_segment_bytes`; rounds
//!   follow each other while candidates (and budget) remain; pieces of a block that
//!   changed meanwhile are not replaced (`flusher::finish`);
//! - an extent that fails verification is left where it is (its block is skipped,
//!   counted in `checksum_errors`), never rewritten as other data;
//! - compaction is off when `compact_below_live_pct` is 0 (merges too);
//! - a segment a snapshot pins is never a candidate (see `snapshot.rs`), nor is an
//!   ancestor's segment in a fork (see `lineage.rs`), and a fork's block that
//!   reads through to an ancestor is not merged.

use super::background_cpu;
use super::blockmap::{Piece, SegUse, FULL, SECTORS_PER_BLOCK};
use super::fetch;
use super::flusher::{self, Pending};
use super::segment::{self, Extent};
use super::snapshot;
use super::{bump, Inner, VolumeError};
use crate::store::StoreError;
use crate::{BLOCK_SIZE, SECTOR_SIZE};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Most pieces (extents) a block keeps after compaction touched it; beyond this it
/// is merged into one whole-block extent. Uploads add one piece per run of dirty
/// sectors, so before compaction a block has at most 32 (one per sector).
pub(crate) const MAX_PIECES: usize = 8;

/// Bytes of segment `u` that no live piece needs (header, index of live pieces and
/// live payload excluded).
fn dead_bytes(u: &SegUse) -> u64 {
    u.size
        .saturating_sub(segment::HEADER_LEN as u64 + u.pieces * segment::ENTRY_LEN as u64 + u.live)
}

/// Whether a segment is worth compacting at `pct` percent: more than `100 - pct`
/// percent of it dead, and at least one sector's worth (rounding never churns).
fn is_candidate(u: &SegUse, pct: u8) -> bool {
    let dead = dead_bytes(u);
    // A segment nothing points into waits for garbage collection, not compaction.
    u.pieces > 0
        && u.size > 0
        && dead >= SECTOR_SIZE as u64
        && dead * 100 > u.size * (100 - u64::from(pct))
}

/// One compaction round: reclaim space if a segment is a candidate, else merge
/// cold fragmented blocks. Returns (a segment was written, candidates remain).
pub(super) async fn round(
    inner: &Arc<Inner>,
    pending: &mut Option<Pending>,
) -> Result<(bool, bool), VolumeError> {
    let pct = inner.cfg.compact_below_live_pct.min(100);
    if pct == 0 {
        return Ok((false, false));
    }
    match reclaim(inner, pending, pct).await? {
        (false, false) => merge(inner, pending).await,
        r => Ok(r),
    }
}

/// Rewrite the live extents of the emptiest candidate segments.
async fn reclaim(
    inner: &Arc<Inner>,
    pending: &mut Option<Pending>,
    pct: u8,
) -> Result<(bool, bool), VolumeError> {
    let budget = inner.cfg.max_segment_bytes.max(BLOCK_SIZE as u64);
    let any = {
        let st = inner.st.lock();
        st.store.segs.values().any(|u| is_candidate(u, pct))
    };
    if !any {
        return Ok((false, false));
    }
    {
        // Segments a snapshot pins are not rewritten (the copy would only add).
        let _gc = inner.gc_lock.lock().await;
        snapshot::ensure_pins(inner).await?;
    }
    let (chosen, more) = {
        let st = inner.st.lock();
        let mut c: Vec<(u64, SegUse)> = st
            .store
            .segs
            .iter()
            .filter(|(s, u)| {
                **s <= st.last_committed
                    && **s > inner.lineage.top()
                    && is_candidate(u, pct)
                    && !st.pins.as_ref().is_none_or(|p| p.segment(**s))
            })
            .map(|(s, u)| (*s, *u))
            .collect();
        // Emptiest first: the most space back per byte rewritten.
        c.sort_by_key(|(_, u)| (u.live * 1000).checked_div(u.size).unwrap_or(0));
        let mut chosen = Vec::new();
        let mut live = 0u64;
        for (s, u) in &c {
            if !chosen.is_empty() && live + u.live > budget {
                break;
            }
            live += u.live;
            chosen.push(*s);
        }
        let more = c.len() > chosen.len();
        (chosen, more)
    };
    if chosen.is_empty() {
        return Ok((false, false));
    }
    inner.check_bg()?;
    // The chosen segments whole: one GET each instead of one per extent.
    let mut objects: HashMap<u64, Bytes> = HashMap::new();
    for &s in &chosen {
        match inner.store.get(&inner.segment_key(s)).await {
            Ok(b) => {
                bump(&inner.stats.bytes_fetched, b.len() as u64);
                objects.insert(s, b);
            }
            // Collected meanwhile (it held nothing live after all): nothing to move.
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let blocks: Vec<(u64, Vec<Piece>)> = {
        let st = inner.st.lock();
        st.store
            .map
            .iter()
            .filter(|(_, ps)| ps.iter().any(|p| objects.contains_key(&p.loc.seq)))
            .map(|(b, ps)| (*b, ps.clone()))
            .collect()
    };
    let mut items = Vec::new();
    let mut rewrites = Vec::new();
    for (b, pieces) in blocks {
        match rewrite_block(inner, b, &pieces, &objects).await {
            Ok(mut x) => {
                items.append(&mut x);
                rewrites.push((b, pieces));
            }
            Err(VolumeError::Checksum(m)) => {
                tracing::error!(volume = %inner.cfg.name, block = b, error = %m, "compaction skipped a block whose stored extent failed verification");
            }
            Err(e) => return Err(e),
        }
    }
    if rewrites.is_empty() {
        // Nothing could move (objects gone, extents unreadable): no round follows at
        // once, or the flusher would spin; the next cycle looks again.
        return Ok((false, false));
    }
    let seq = write_segment(inner, pending, items, rewrites).await?;
    tracing::debug!(volume = %inner.cfg.name, segments = ?chosen, seq, "compacted");
    Ok((true, more))
}

/// Merge the cold blocks whose extents need the most GETs, within the budget.
async fn merge(
    inner: &Arc<Inner>,
    pending: &mut Option<Pending>,
) -> Result<(bool, bool), VolumeError> {
    let bs = BLOCK_SIZE as u64;
    let (chosen, more) = {
        let mut st = inner.st.lock();
        let st = &mut *st;
        let now = inner.cfg.clock.mono_ms();
        let cold = inner.cfg.merge_cold_after.as_millis() as u64;
        while st
            .recent_uploads
            .front()
            .is_some_and(|(_, t)| now.saturating_sub(*t) >= cold)
        {
            st.recent_uploads.pop_front();
        }
        let max = (st.merge_credit / bs).min(inner.cfg.max_segment_bytes.max(bs) / bs) as usize;
        if max == 0 || st.store.fragmented.is_empty() {
            return Ok((false, false));
        }
        let hot: HashSet<u64> = st.recent_uploads.iter().map(|(s, _)| *s).collect();
        let mut c: Vec<(usize, u64)> = st
            .store
            .fragmented
            .iter()
            .filter(|b| st.local.get(**b).dirty == 0)
            .filter_map(|b| {
                let ps = st.store.map.get(b)?;
                // Hot, or (a fork) partly read through from an ancestor, whose
                // copy is shared: a merge would duplicate it.
                if ps
                    .iter()
                    .any(|p| hot.contains(&p.loc.seq) || p.loc.seq <= inner.lineage.top())
                {
                    return None;
                }
                let g = fetch::gets(ps);
                (g > 1).then_some((g, *b))
            })
            .collect();
        // Most GETs first; block order among equals (deterministic).
        c.sort_by_key(|(g, b)| (std::cmp::Reverse(*g), *b));
        let more = c.len() > max;
        c.truncate(max);
        let chosen: Vec<(u64, Vec<Piece>)> = c
            .into_iter()
            .filter_map(|(_, b)| Some((b, st.store.map.get(&b)?.clone())))
            .collect();
        st.merge_credit -= chosen.len() as u64 * bs;
        (chosen, more)
    };
    if chosen.is_empty() {
        return Ok((false, false));
    }
    inner.check_bg()?;
    let mut items = Vec::new();
    let mut rewrites = Vec::new();
    for (b, pieces) in chosen {
        let block = match fetch::compose(inner, b, &pieces, FULL).await {
            Ok(v) => v,
            Err(VolumeError::Checksum(m)) => {
                tracing::error!(volume = %inner.cfg.name, block = b, error = %m, "merge skipped a block whose stored extent failed verification");
                continue;
            }
            Err(e) => return Err(e),
        };
        let (kind, payload) = segment::encode_extent(&block, inner.cfg.compress);
        items.push(Extent {
            block: b,
            first: 0,
            count: SECTORS_PER_BLOCK as u8,
            kind,
            payload,
        });
        rewrites.push((b, pieces));
    }
    if rewrites.is_empty() {
        return Ok((false, false));
    }
    let n = rewrites.len();
    let seq = write_segment(inner, pending, items, rewrites).await?;
    tracing::debug!(volume = %inner.cfg.name, blocks = n, seq, "merged fragmented blocks");
    Ok((true, more))
}

/// Commit a segment of moved extents (`rewrites`: the pieces they replace) like
/// any other; returns its seq. The bytes count in `compacted_bytes`.
async fn write_segment(
    inner: &Arc<Inner>,
    pending: &mut Option<Pending>,
    items: Vec<Extent>,
    rewrites: Vec<(u64, Vec<Piece>)>,
) -> Result<u64, VolumeError> {
    let moved: u64 = items.iter().map(|x| x.payload.len() as u64).sum();
    let (seq, epoch) = {
        let mut st = inner.st.lock();
        let s = st.next_seq;
        st.next_seq += 1;
        (s, inner.lease.lock().lease.epoch)
    };
    let (uuid, base_seq, key) = (inner.uuid, inner.base_seq, inner.seal_key().cloned());
    let (obj, entries) = background_cpu::run(move || {
        Ok::<_, VolumeError>(segment::encode(
            seq,
            uuid,
            epoch,
            base_seq,
            &items,
            key.as_ref(),
        ))
    })
    .await?;
    let p = pending.insert(Pending {
        seq,
        epoch,
        obj: Bytes::from(obj),
        entries,
        snap: Vec::new(),
        snap_seq: 0,
        rewrites,
        landed: false,
    });
    flusher::commit(inner, p).await?;
    if let Some(p) = pending.take() {
        flusher::finish(inner, p)?;
        inner.st.lock().compacted_since_manifest = true;
    }
    bump(&inner.stats.compacted_bytes, moved);
    Ok(seq)
}

/// The extents that replace block `b`'s pieces in the chosen segments: their live
/// sectors, or the whole block when that would leave too many pieces.
async fn rewrite_block(
    inner: &Inner,
    b: u64,
    pieces: &[Piece],
    objects: &HashMap<u64, Bytes>,
) -> Result<Vec<Extent>, VolumeError> {
    let moving: u32 = pieces
        .iter()
        .filter(|p| objects.contains_key(&p.loc.seq))
        .fold(0, |m, p| m | p.live);
    let staying = pieces
        .iter()
        .filter(|p| !objects.contains_key(&p.loc.seq))
        .count();
    let runs: Vec<(usize, usize)> = fetch::runs(moving).collect();
    let whole = staying + runs.len() > MAX_PIECES;
    let mut block = vec![0u8; BLOCK_SIZE];
    let want = if whole { FULL } else { moving };
    for p in pieces {
        let take = p.live & want;
        if take == 0 {
            continue;
        }
        let data = match objects.get(&p.loc.seq) {
            Some(obj) => {
                let (a, z) = (p.loc.off as usize, p.loc.off as usize + p.loc.len as usize);
                fetch::decode(inner, b, &p.loc, obj.get(a..z).unwrap_or_default())?
            }
            None => fetch::get_extent(inner, b, &p.loc).await?,
        };
        fetch::place(&mut block, &p.loc, &data, take);
    }
    let runs = if whole {
        vec![(0, SECTORS_PER_BLOCK)]
    } else {
        runs
    };
    let mut out = Vec::with_capacity(runs.len());
    for (first, count) in runs {
        let data = &block[first * SECTOR_SIZE..(first + count) * SECTOR_SIZE];
        let (kind, payload) = segment::encode_extent(data, inner.cfg.compress);
        out.push(Extent {
            block: b,
            first: first as u8,
            count: count as u8,
            kind,
            payload,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_need_dead_bytes_beyond_the_threshold_and_one_sector() {
        let u = |size, live, pieces| SegUse { size, live, pieces };
        // Nothing live: garbage collection's, not compaction's.
        assert!(!is_candidate(&u(1 << 20, 0, 0), 70));
        // Fresh compaction output: header + live index + live payload only.
        assert!(!is_candidate(&u(56 + 32 + 100, 100, 1), 70));
        // 60 % dead of 1 MiB.
        assert!(is_candidate(&u(1 << 20, 400 << 10, 10), 70));
        // 20 % dead: below the threshold's 30 %.
        assert!(!is_candidate(&u(1 << 20, 800 << 10, 10), 70));
        // Tiny segment, mostly dead but less than a sector: not worth it.
        assert!(!is_candidate(&u(3000, 100, 1), 70));
        assert!(!is_candidate(&u(0, 0, 0), 70));
    }
}
