//! In-memory block state: the local cache map ([`LocalMap`]) and the store map
//! ([`StoreMap`]: where the newest committed copy of each block lives).
//!
//! Both are sparse (only touched blocks cost memory, ~40 bytes each), so thousands
//! of mostly idle volumes fit in a host. Invariants of [`Blk`]:
//! - `dirty ⊆ valid` (a dirty sector always holds its data in the cache file);
//! - `gen` increases on every change of the block's data, so the flusher can tell
//!   whether a block was rewritten while its upload was in flight;
//! - `dirty_sectors` equals the sum of `dirty.count_ones()` over all blocks, and
//!   `dirty_set` holds exactly the blocks with `dirty != 0`.

use crate::{BLOCK_SIZE, SECTOR_SIZE};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Sectors per block (32 with 128 KiB blocks and 4 KiB sectors).
pub const SECTORS_PER_BLOCK: usize = BLOCK_SIZE / SECTOR_SIZE;
const _: () = assert!(SECTORS_PER_BLOCK <= 32 && BLOCK_SIZE.is_multiple_of(SECTOR_SIZE));

/// All sectors of a block.
pub const FULL: u32 = if SECTORS_PER_BLOCK == 32 {
    u32::MAX
} else {
    (1u32 << SECTORS_PER_BLOCK) - 1
};

/// Mask of sectors `[first, first+count)` within one block.
pub fn mask(first: usize, count: usize) -> u32 {
    if count == 0 {
        return 0;
    }
    let m = if count >= 32 {
        u32::MAX
    } else {
        (1u32 << count) - 1
    };
    m << first
}

/// Local state of one block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Blk {
    /// Sectors whose current content is in the cache file.
    pub valid: u32,
    /// Sectors newer than the store's copy.
    pub dirty: u32,
    /// Change counter.
    pub gen: u32,
    /// Write sequence number at which the block's oldest unflushed change happened.
    pub dirty_since: u64,
}

/// The local cache map.
#[derive(Debug, Default)]
pub struct LocalMap {
    /// Block index → state (blocks with no valid sector may be absent).
    pub blocks: HashMap<u64, Blk>,
    /// Blocks with dirty sectors, in block order.
    pub dirty_set: BTreeSet<u64>,
    /// Number of dirty sectors.
    pub dirty_sectors: u64,
}

impl LocalMap {
    /// No sector is valid: the cache vouches for no data.
    pub fn holds_nothing(&self) -> bool {
        self.blocks.values().all(|b| b.valid == 0)
    }

    /// State of a block (default if untouched).
    pub fn get(&self, b: u64) -> Blk {
        self.blocks.get(&b).copied().unwrap_or_default()
    }

    /// Mark sectors `m` of block `b` valid and dirty (a write), at write seq `wseq`.
    pub fn mark_written(&mut self, b: u64, m: u32, wseq: u64) {
        let blk = self.blocks.entry(b).or_default();
        if blk.dirty == 0 {
            blk.dirty_since = wseq;
            self.dirty_set.insert(b);
        }
        self.dirty_sectors += u64::from((m & !blk.dirty).count_ones());
        blk.valid |= m;
        blk.dirty |= m;
        blk.gen = blk.gen.wrapping_add(1);
    }

    /// Mark sectors `m` valid (filled from the store or zero-filled), not dirty.
    pub fn mark_filled(&mut self, b: u64, m: u32) {
        let blk = self.blocks.entry(b).or_default();
        blk.valid |= m;
    }

    /// The block was uploaded: it is fully valid and clean.
    pub fn mark_clean(&mut self, b: u64) {
        let blk = self.blocks.entry(b).or_default();
        self.dirty_sectors -= u64::from(blk.dirty.count_ones());
        blk.dirty = 0;
        blk.valid = FULL;
        self.dirty_set.remove(&b);
    }

    /// Sectors `m` of block `b` were committed from the cache (which holds them):
    /// they are clean. Other sectors keep their state.
    pub fn mark_uploaded(&mut self, b: u64, m: u32) {
        let blk = self.blocks.entry(b).or_default();
        self.dirty_sectors -= u64::from((blk.dirty & m).count_ones());
        blk.dirty &= !m;
        blk.valid |= m;
        if blk.dirty == 0 {
            self.dirty_set.remove(&b);
        }
    }

    /// Forget sectors `m` (neither valid nor dirty): they will be read from the store.
    pub fn invalidate(&mut self, b: u64, m: u32) {
        if let Some(blk) = self.blocks.get_mut(&b) {
            self.dirty_sectors -= u64::from((blk.dirty & m).count_ones());
            blk.valid &= !m;
            blk.dirty &= !m;
            blk.gen = blk.gen.wrapping_add(1);
            if blk.dirty == 0 {
                self.dirty_set.remove(&b);
            }
            if blk.valid == 0 {
                self.blocks.remove(&b);
            }
        }
    }

    /// Set a block's masks directly (replay); keeps the counters consistent.
    pub fn set(&mut self, b: u64, valid: u32, dirty: u32, wseq: u64) {
        let old = self.get(b);
        self.dirty_sectors -= u64::from(old.dirty.count_ones());
        self.dirty_set.remove(&b);
        let dirty = dirty & valid;
        if valid == 0 {
            self.blocks.remove(&b);
            return;
        }
        self.dirty_sectors += u64::from(dirty.count_ones());
        if dirty != 0 {
            self.dirty_set.insert(b);
        }
        self.blocks.insert(
            b,
            Blk {
                valid,
                dirty,
                gen: old.gen.wrapping_add(1),
                dirty_since: wseq,
            },
        );
    }

    /// Smallest `dirty_since` over dirty blocks.
    pub fn oldest_dirty(&self) -> Option<u64> {
        self.dirty_set
            .iter()
            .filter_map(|b| self.blocks.get(b).map(|x| x.dirty_since))
            .min()
    }
}

/// How a segment entry is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryKind {
    /// Raw sector bytes.
    Raw = 0,
    /// zstd frame that decompresses to the entry's sectors.
    Zstd = 1,
    /// The sectors are all zeros; no payload.
    Zero = 2,
}

impl EntryKind {
    /// Decode.
    pub fn from_u8(v: u8) -> Option<EntryKind> {
        match v {
            0 => Some(EntryKind::Raw),
            1 => Some(EntryKind::Zstd),
            2 => Some(EntryKind::Zero),
            _ => None,
        }
    }
}

/// Location of a committed copy of the sectors `first..first+count` of one block
/// (an extent; format 1 stored whole blocks only: `first` 0, `count` 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Segment sequence number.
    pub seq: u64,
    /// Byte offset of the payload within the segment object.
    pub off: u64,
    /// Payload length.
    pub len: u32,
    /// crc32c of the payload.
    pub crc: u32,
    /// Raw or zstd (zero entries are not stored in the map).
    pub kind: EntryKind,
    /// First sector of the block the extent covers.
    pub first: u8,
    /// Sectors it covers (1..=[`SECTORS_PER_BLOCK`]).
    pub count: u8,
}

impl Loc {
    /// The sectors of its block this extent covers.
    pub fn mask(&self) -> u32 {
        mask(usize::from(self.first), usize::from(self.count))
    }

    /// Bytes the payload decodes to.
    pub fn decoded_len(&self) -> usize {
        usize::from(self.count) * SECTOR_SIZE
    }

    /// Whether `first`/`count` describe sectors inside one block.
    pub fn in_block(first: u64, count: u64) -> bool {
        count >= 1 && first + count <= SECTORS_PER_BLOCK as u64
    }
}

/// One committed extent of a block and the sectors for which it is still the newest
/// copy (`live`, never 0 in a [`StoreMap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Where the extent is stored.
    pub loc: Loc,
    /// Sectors this extent still provides (a subset of `loc.mask()`).
    pub live: u32,
}

impl Piece {
    /// Stored bytes that are still live, counted in proportion to live sectors.
    pub fn live_bytes(&self) -> u64 {
        let count = u64::from(self.loc.count.max(1));
        u64::from(self.loc.len) * u64::from((self.live & self.loc.mask()).count_ones()) / count
    }
}

/// Use of one segment object: its size and the bytes of it still live.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SegUse {
    /// Object size in bytes (0 while unknown).
    pub size: u64,
    /// Payload bytes still providing some block's newest copy (an estimate:
    /// partly overwritten extents count in proportion to their live sectors).
    pub live: u64,
    /// Pieces pointing into the segment (it may be deleted only at 0).
    pub pieces: u64,
}

/// Block → the extents that together hold its newest committed copy. Sectors no
/// live extent provides read as zeros; absent blocks read as zeros. Invariants: the
/// pieces of a block have disjoint, non-zero `live` masks, listed oldest first;
/// `segs[s].live` is the sum of `live_bytes` over the pieces in segment `s`;
/// `fragmented` holds exactly the blocks with more than one piece.
#[derive(Debug, Default, Clone)]
pub struct StoreMap {
    /// The map.
    pub map: HashMap<u64, Vec<Piece>>,
    /// Blocks made of more than one piece (merge candidates).
    pub fragmented: BTreeSet<u64>,
    /// Live bytes (and size, once known) of every segment a piece points into.
    pub segs: BTreeMap<u64, SegUse>,
}

impl StoreMap {
    /// Apply one committed extent (later segments override earlier ones).
    pub fn apply(&mut self, block: u64, loc: Loc) {
        let m = loc.mask();
        if let Some(ps) = self.map.get_mut(&block) {
            for p in ps.iter_mut() {
                let before = p.live_bytes();
                p.live &= !m;
                let lost = before - p.live_bytes();
                if let Some(u) = self.segs.get_mut(&p.loc.seq) {
                    u.live = u.live.saturating_sub(lost);
                    if p.live == 0 {
                        u.pieces = u.pieces.saturating_sub(1);
                    }
                }
            }
            ps.retain(|p| p.live != 0);
            if ps.len() < 2 {
                self.fragmented.remove(&block);
            }
            if ps.is_empty() {
                self.map.remove(&block);
            }
        }
        if loc.kind != EntryKind::Zero {
            self.restore(block, Piece { loc, live: m });
        }
    }

    /// Add a piece as a manifest recorded it (no older piece is touched).
    pub fn restore(&mut self, block: u64, piece: Piece) {
        if piece.live == 0 {
            return;
        }
        let u = self.segs.entry(piece.loc.seq).or_default();
        u.live += piece.live_bytes();
        u.pieces += 1;
        let ps = self.map.entry(block).or_default();
        ps.push(piece);
        if ps.len() > 1 {
            self.fragmented.insert(block);
        }
    }

    /// Record the size of segment `seq` (from a listing or its upload).
    pub fn note_segment(&mut self, seq: u64, size: u64) {
        self.segs.entry(seq).or_default().size = size;
    }

    /// Forget a segment that holds nothing live (deleted, or about to be).
    pub fn forget_segment(&mut self, seq: u64) {
        if self.segs.get(&seq).is_some_and(|u| u.pieces == 0) {
            self.segs.remove(&seq);
        }
    }

    /// Segments some piece still points into.
    pub fn live_segments(&self) -> HashSet<u64> {
        self.segs
            .iter()
            .filter(|(_, u)| u.pieces > 0)
            .map(|(s, _)| *s)
            .collect()
    }

    /// Number of pieces (manifest entries).
    pub fn piece_count(&self) -> usize {
        self.map.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask(0, 32), u32::MAX);
        assert_eq!(mask(1, 2), 0b110);
        assert_eq!(mask(5, 0), 0);
    }

    #[test]
    fn dirty_accounting() {
        let mut m = LocalMap::default();
        m.mark_written(3, 0b11, 1);
        m.mark_written(3, 0b110, 2);
        assert_eq!(m.dirty_sectors, 3);
        assert_eq!(m.oldest_dirty(), Some(1));
        m.invalidate(3, 0b1);
        assert_eq!(m.dirty_sectors, 2);
        m.mark_clean(3);
        assert_eq!(m.dirty_sectors, 0);
        assert!(m.dirty_set.is_empty());
        assert_eq!(m.get(3).valid, FULL);
    }

    #[test]
    fn fragmented_blocks_are_tracked() {
        let loc = |seq, first, count| Loc {
            seq,
            off: 0,
            len: 1,
            kind: EntryKind::Raw,
            crc: 0,
            first,
            count,
        };
        let mut m = StoreMap::default();
        m.apply(1, loc(1, 0, 32));
        assert!(m.fragmented.is_empty());
        m.apply(1, loc(2, 3, 1));
        assert!(m.fragmented.contains(&1));
        // A whole-block extent replaces both pieces.
        m.apply(1, loc(3, 0, 32));
        assert!(m.fragmented.is_empty());
        m.apply(1, loc(4, 5, 2));
        m.apply(
            1,
            Loc {
                kind: EntryKind::Zero,
                ..loc(5, 0, 32)
            },
        );
        assert!(m.fragmented.is_empty() && m.map.is_empty());
    }
}
