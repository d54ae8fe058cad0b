//! Lineage: where the segments a fork reads through live.
//!
//! A fork of volume `V` at snapshot `s` (manifest seq `S`) starts with `V`'s map as
//! of `S` and numbers its own segments from `S + 1`. Its `meta` lists its ancestors
//! nearest first: `[V@S]` followed by `V`'s own lineage (a fork of a fork reads
//! through both). Sequence numbers along a lineage are therefore disjoint ranges:
//! an ancestor `A@S_A` owns the seqs above the next (older) ancestor's and up to
//! `S_A`; the volume itself owns those above the nearest ancestor's.
//!
//! Invariants: the seqs of the entries strictly do not increase from nearest to
//! oldest ([`Lineage::new`] refuses anything else); a piece with seq at or below
//! [`Lineage::top`] belongs to an ancestor, whose segments this volume never
//! writes, rewrites or deletes.

use super::keys::VolumeKeys;
use serde::{Deserialize, Serialize};

/// One ancestor of a fork, as its `meta` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    /// The ancestor volume's name (its objects live under `volumes/<volume>/`).
    pub volume: String,
    /// Its uuid (hex) when the fork was made.
    pub uuid: String,
    /// The snapshot the fork (or a nearer ancestor) was made from.
    pub snapshot: String,
    /// The snapshot's manifest seq: this ancestor's segments are at or below it.
    pub seq: u64,
}

/// One ancestor with what lookups need of it, computed once.
#[derive(Debug, Clone)]
struct Entry {
    ancestor: Ancestor,
    keys: VolumeKeys,
    uuid: u64,
}

/// A volume's ancestors and the keys of their segments.
#[derive(Debug, Clone, Default)]
pub struct Lineage {
    /// Nearest first.
    entries: Vec<Entry>,
}

impl Lineage {
    /// From `meta`'s list (nearest first).
    pub fn new(ancestors: &[Ancestor]) -> Result<Lineage, String> {
        for w in ancestors.windows(2) {
            if w[1].seq > w[0].seq {
                return Err(format!(
                    "lineage out of order: {}@{} before {}@{}",
                    w[0].volume, w[0].seq, w[1].volume, w[1].seq
                ));
            }
        }
        let mut entries = Vec::with_capacity(ancestors.len());
        for a in ancestors {
            crate::rules::validate_name(&a.volume)?;
            let uuid = u64::from_str_radix(&a.uuid, 16)
                .map_err(|e| format!("ancestor {}: uuid {:?}: {e}", a.volume, a.uuid))?;
            entries.push(Entry {
                ancestor: a.clone(),
                keys: VolumeKeys::new(&a.volume),
                uuid,
            });
        }
        Ok(Lineage { entries })
    }

    /// The ancestor that owns segment `seq` (`None`: the volume's own). Oldest
    /// first: the first ancestor whose range reaches `seq` owns it.
    fn owner(&self, seq: u64) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| seq <= e.ancestor.seq)
    }

    /// The ancestors, nearest first.
    pub fn ancestors(&self) -> impl Iterator<Item = &Ancestor> {
        self.entries.iter().map(|e| &e.ancestor)
    }

    /// The nearest ancestor, for a fork.
    pub fn parent(&self) -> Option<&Ancestor> {
        self.entries.first().map(|e| &e.ancestor)
    }

    /// The nearest ancestor's uuid, for a fork.
    pub fn parent_uuid(&self) -> Option<u64> {
        self.entries.first().map(|e| e.uuid)
    }

    /// Highest seq an ancestor owns (0 for a volume that is no fork): the volume's
    /// own segments are numbered above it.
    pub fn top(&self) -> u64 {
        self.parent().map_or(0, |a| a.seq)
    }

    /// The uuid of the ancestor that owns segment `seq` (`None`: the volume's own).
    pub fn owner_uuid(&self, seq: u64) -> Option<u64> {
        self.owner(seq).map(|e| e.uuid)
    }

    /// The key of segment `seq`: an ancestor's, or `own`'s.
    pub fn segment_key(&self, own: &VolumeKeys, seq: u64) -> String {
        self.owner(seq).map_or(own, |e| &e.keys).segment(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(volume: &str, seq: u64) -> Ancestor {
        Ancestor {
            volume: volume.into(),
            uuid: "1".into(),
            snapshot: "s".into(),
            seq,
        }
    }

    #[test]
    fn seqs_resolve_to_their_owner() {
        let own = VolumeKeys::new("g");
        let l = Lineage::new(&[a("f", 20), a("v", 10)]).unwrap();
        assert_eq!(l.top(), 20);
        assert_eq!(l.segment_key(&own, 1), VolumeKeys::new("v").segment(1));
        assert_eq!(l.segment_key(&own, 10), VolumeKeys::new("v").segment(10));
        assert_eq!(l.segment_key(&own, 11), VolumeKeys::new("f").segment(11));
        assert_eq!(l.segment_key(&own, 20), VolumeKeys::new("f").segment(20));
        assert_eq!(l.segment_key(&own, 21), own.segment(21));
        // A fork of a fork that wrote nothing: the middle range is empty.
        let l = Lineage::new(&[a("f", 10), a("v", 10)]).unwrap();
        assert_eq!(l.segment_key(&own, 10), VolumeKeys::new("v").segment(10));
        assert_eq!(Lineage::default().segment_key(&own, 3), own.segment(3));
    }

    #[test]
    fn bad_lineages_are_refused() {
        assert!(Lineage::new(&[a("v", 10), a("f", 20)]).is_err());
        assert!(Lineage::new(&[a("../x", 10)]).is_err());
    }
}
