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
use std::collections::{BTreeSet, HashMap};

/// Sectors per block (32 with 128 KiB blocks and 4 KiB sectors).
pub const SECTORS_PER_BLOCK: usize = BLOCK_SIZE / SECTOR_SIZE;
const _: () = assert!(SECTORS_PER_BLOCK <= 32 && BLOCK_SIZE % SECTOR_SIZE == 0);

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
    /// Raw block bytes.
    Raw = 0,
    /// zstd frame that decompresses to one block.
    Zstd = 1,
    /// The block is all zeros; no payload.
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

/// Location of a committed block copy.
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
}

/// Block → newest committed copy. Absent blocks read as zeros.
#[derive(Debug, Default, Clone)]
pub struct StoreMap {
    /// The map.
    pub map: HashMap<u64, Loc>,
}

impl StoreMap {
    /// Apply one committed entry (later segments override earlier ones).
    pub fn apply(&mut self, block: u64, loc: Loc) {
        if loc.kind == EntryKind::Zero {
            self.map.remove(&block);
        } else {
            self.map.insert(block, loc);
        }
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
}
