//! Compaction: segments whose live bytes fell below `compact_below_live_pct` of
//! their size have their live extents rewritten into a new segment, after which
//! they hold nothing live and the next manifest's garbage collection deletes them.
//!
//! Invariants:
//! - only live sectors move: each is its block's newest committed copy, so placing
//!   it in a segment with a higher number changes no block's content (replay
//!   order stays correct);
//! - a block whose pieces would exceed [`MAX_PIECES`] is merged into one whole-block
//!   extent instead (reads of it stay one GET);
//! - a round runs inside the flusher (the only writer of the store map), commits
//!   through the same fenced protocol as any segment (a fenced writer never
//!   rewrites or deletes), and rewrites at most about `max_segment_bytes` of live
//!   data; rounds follow each other while candidates remain;
//! - an extent that fails verification is left where it is (its block is skipped,
//!   counted in `checksum_errors`), never rewritten as other data.

use super::background_cpu;
use super::blockmap::{Piece, SegUse, FULL, SECTORS_PER_BLOCK};
use super::fetch;
use super::flusher::{self, Pending};
use super::segment::{self, Extent};
use super::{bump, Inner, VolumeError};
use crate::store::StoreError;
use crate::{BLOCK_SIZE, SECTOR_SIZE};
use bytes::Bytes;
use std::collections::HashMap;
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
    u.size > 0 && dead >= SECTOR_SIZE as u64 && dead * 100 > u.size * (100 - u64::from(pct))
}

/// One compaction round. Returns (a segment was written, candidates remain).
pub(super) async fn round(
    inner: &Arc<Inner>,
    pending: &mut Option<Pending>,
) -> Result<(bool, bool), VolumeError> {
    let pct = inner.cfg.compact_below_live_pct.min(100);
    if pct == 0 {
        return Ok((false, false));
    }
    let budget = inner.cfg.max_segment_bytes.max(BLOCK_SIZE as u64);
    let (chosen, more) = {
        let st = inner.st.lock();
        let mut c: Vec<(u64, SegUse)> = st
            .store
            .segs
            .iter()
            .filter(|(s, u)| **s <= st.last_committed && is_candidate(u, pct))
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
        match inner.store.get(&inner.keys.segment(s)).await {
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
    let moved: u64 = items.iter().map(|x| x.payload.len() as u64).sum();
    let (seq, epoch) = {
        let mut st = inner.st.lock();
        let s = st.next_seq;
        st.next_seq += 1;
        (s, inner.lease.lock().lease.epoch)
    };
    let (uuid, base_seq) = (inner.uuid, inner.base_seq);
    let (obj, entries) = background_cpu::run(move || {
        Ok::<_, VolumeError>(segment::encode(seq, uuid, epoch, base_seq, &items))
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
    tracing::debug!(volume = %inner.cfg.name, segments = ?chosen, seq, moved, "compacted");
    Ok((true, more))
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
