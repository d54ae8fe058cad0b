//! Manifest (checkpoint) objects and the volume metadata object.
//!
//! A manifest is the complete store map as of segment `seq`, written by lease epoch
//! `epoch` (header bytes 12..16, 0 in manifests of older versions: unknown): opening a volume reads
//! the newest manifest plus every segment with a larger seq. Format 2 lists every
//! live extent of every block with its live sectors; format 1 (still read) listed
//! one whole-block entry per block. The volume metadata
//! object (`meta`, JSON) holds size, block size, format version and the volume uuid
//! (segments and the local cache carry the uuid, so a purged and recreated volume
//! never mixes with old data). Formats in docs/format.md.

use super::blockmap::{EntryKind, Loc, Piece, StoreMap, FULL, SECTORS_PER_BLOCK};
use super::crypto::{Aad, FrameKey, FrameKind};
use super::le::{u32_at, u64_at};
use serde::{Deserialize, Serialize};

/// Magic of a manifest object.
pub const MAGIC: &[u8; 8] = b"GLMAN001";
/// Manifest header length.
pub const HEADER_LEN: usize = 40;
/// Manifest entry length.
pub const ENTRY_LEN: usize = 40;
/// Format version this build writes: of manifests, segments and the volume as a
/// whole (`meta`).
pub const FORMAT_VERSION: u32 = 2;
/// The format of whole-block entries, still read (docs/format.md "Volumes of
/// format 1").
pub const FORMAT_WHOLE_BLOCKS: u32 = 1;

/// Version of a sealed manifest (an encrypted volume's): the entries are one sealed
/// frame bound to the header (uuid, seq, epoch, count).
pub const MANIFEST_SEALED: u32 = 3;

fn body_aad(header: &[u8]) -> Aad {
    Aad::new(
        u64_at(header, 24),
        FrameKind::Manifest,
        u64_at(header, 16),
        0,
        &header[..HEADER_LEN],
    )
}

/// Decoded manifest header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestHeader {
    /// [`FORMAT_VERSION`] or [`FORMAT_WHOLE_BLOCKS`].
    pub version: u32,
    /// The map is as of this segment.
    pub seq: u64,
    /// Volume uuid.
    pub uuid: u64,
    /// Lease epoch of the writer (0: unknown, written by an older version).
    pub epoch: u64,
}

/// Encode the map as of segment `seq`, written under lease `epoch` (stored as u32;
/// epochs beyond that saturate, which only weakens fencing after 4 billion opens),
/// sealed with `seal` (an encrypted volume's data key).
pub fn encode(seq: u64, uuid: u64, epoch: u64, map: &StoreMap, seal: Option<&FrameKey>) -> Vec<u8> {
    let mut blocks: Vec<(&u64, &Vec<Piece>)> = map.map.iter().collect();
    blocks.sort_by_key(|(b, _)| **b);
    let count = map.piece_count();
    let mut out = Vec::with_capacity(HEADER_LEN + count * ENTRY_LEN + 4);
    out.extend_from_slice(MAGIC);
    let version = if seal.is_some() {
        MANIFEST_SEALED
    } else {
        FORMAT_VERSION
    };
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&u32::try_from(epoch).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&uuid.to_le_bytes());
    out.extend_from_slice(&(count as u64).to_le_bytes());
    for (b, pieces) in blocks {
        for p in pieces {
            let l = &p.loc;
            out.extend_from_slice(&b.to_le_bytes());
            out.extend_from_slice(&l.seq.to_le_bytes());
            out.extend_from_slice(&l.off.to_le_bytes());
            out.extend_from_slice(&l.len.to_le_bytes());
            out.extend_from_slice(&l.crc.to_le_bytes());
            out.extend_from_slice(&[l.kind as u8, l.first, l.count, 0]);
            out.extend_from_slice(&p.live.to_le_bytes());
        }
    }
    if let Some(key) = seal {
        let sealed = key.seal(&body_aad(&out), &out[HEADER_LEN..]);
        out.truncate(HEADER_LEN);
        out.extend_from_slice(&sealed);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decode the header (the first [`HEADER_LEN`] bytes; not checksummed on its own:
/// [`decode`] verifies the whole object before its map is used).
pub fn decode_header(b: &[u8]) -> Result<ManifestHeader, String> {
    if b.len() < HEADER_LEN || &b[0..8] != MAGIC {
        return Err("bad manifest magic or length".into());
    }
    let version = u32_at(b, 8);
    if version != FORMAT_VERSION && version != FORMAT_WHOLE_BLOCKS && version != MANIFEST_SEALED {
        return Err(format!("unsupported manifest version {version}"));
    }
    Ok(ManifestHeader {
        version,
        seq: u64_at(b, 16),
        uuid: u64_at(b, 24),
        epoch: u64::from(u32_at(b, 12)),
    })
}

/// Decode and verify a manifest: (header, map). A sealed manifest needs `key` (the
/// data key of the volume that wrote it); a plaintext one must come without.
pub fn decode(b: &[u8], key: Option<&FrameKey>) -> Result<(ManifestHeader, StoreMap), String> {
    if b.len() < HEADER_LEN + 4 || &b[0..8] != MAGIC {
        return Err("bad manifest magic or length".into());
    }
    let body = &b[..b.len() - 4];
    if crc32c::crc32c(body) != u32_at(b, b.len() - 4) {
        return Err("manifest checksum mismatch".into());
    }
    let header = decode_header(b)?;
    let opened;
    let entries = match (header.version == MANIFEST_SEALED, key) {
        (true, Some(k)) => {
            opened = k
                .open(&body_aad(b), &body[HEADER_LEN..], "manifest")
                .map_err(|e| e.to_string())?;
            &opened[..]
        }
        (true, None) => return Err("sealed manifest, and no data key for it".into()),
        (false, Some(_)) => return Err("plaintext manifest in an encrypted volume".into()),
        (false, None) => &body[HEADER_LEN..],
    };
    let count = u64_at(b, 32) as usize;
    if entries.len() != count.saturating_mul(ENTRY_LEN) {
        return Err("manifest length does not match its entry count".into());
    }
    let b = entries;
    let mut map = StoreMap::default();
    for i in 0..count {
        let p = i * ENTRY_LEN;
        let kind = EntryKind::from_u8(b[p + 32]).ok_or("bad manifest entry kind")?;
        let (first, n, live) = if header.version == FORMAT_WHOLE_BLOCKS {
            (0, SECTORS_PER_BLOCK as u8, FULL)
        } else {
            (b[p + 33], b[p + 34], u32_at(b, p + 36))
        };
        let loc = Loc {
            seq: u64_at(b, p + 8),
            off: u64_at(b, p + 16),
            len: u32_at(b, p + 24),
            crc: u32_at(b, p + 28),
            kind,
            first,
            count: n,
        };
        if kind == EntryKind::Zero
            || !Loc::in_block(u64::from(first), u64::from(n))
            || live == 0
            || live & !loc.mask() != 0
        {
            return Err(format!("manifest entry {i} is malformed"));
        }
        map.restore(u64_at(b, p), Piece { loc, live });
    }
    Ok((header, map))
}

/// The volume metadata object (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    /// Format version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// Block size in bytes (must equal `crate::BLOCK_SIZE`).
    pub block_size: u64,
    /// Volume size in bytes.
    pub size_bytes: u64,
    /// Random identity of this incarnation of the volume (hex).
    pub uuid: String,
    /// A fork's ancestors, nearest first (absent for other volumes); see
    /// `lineage.rs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<super::lineage::Ancestor>,
    /// The volume was purged while forks still read its snapshots: only what they
    /// need is left, and the name cannot be used again until they are gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub purged: bool,
    /// The volume's objects are sealed (see `crypto.rs`); stays true after a
    /// crypto-erase removed `keys`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    /// The wrapped data keys of an encrypted volume (`None` once crypto-erased).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<super::keyring::WrappedKeys>,
}

impl VolumeMeta {
    /// The uuid as a number.
    pub fn uuid_u64(&self) -> Result<u64, String> {
        u64::from_str_radix(&self.uuid, 16).map_err(|e| format!("bad uuid {:?}: {e}", self.uuid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption() {
        let mut m = StoreMap::default();
        for b in [3u64, 1, 99] {
            let loc = |seq, first, count| Loc {
                seq,
                off: 40,
                len: 100,
                crc: 5,
                kind: EntryKind::Zstd,
                first,
                count,
            };
            m.apply(b, loc(b + 10, 0, 32));
            m.apply(b, loc(b + 11, 3, 2));
        }
        assert_eq!(m.piece_count(), 6);
        let enc = encode(12, 34, 5, &m, None);
        let (h, back) = decode(&enc, None).unwrap();
        assert_eq!((h.version, h.seq, h.uuid, h.epoch), (2, 12, 34, 5));
        assert_eq!(back.map, m.map);
        assert_eq!(back.map[&3][0].live, !(0b11 << 3));
        let mut bad = enc.clone();
        bad[50] ^= 1;
        assert!(decode(&bad, None).is_err());
        // Sealed: the map comes back with the key only, and not in the clear.
        let dk = crate::volume::crypto::DataKey::random();
        let key = dk.frames();
        let enc = encode(12, 34, 5, &m, Some(key));
        let (h, back) = decode(&enc, Some(key)).unwrap();
        assert_eq!(
            (h.version, h.seq, h.uuid, h.epoch),
            (MANIFEST_SEALED, 12, 34, 5)
        );
        assert_eq!(back.map, m.map);
        assert!(decode(&enc, None).is_err());
        assert!(decode(
            &enc,
            Some(crate::volume::crypto::DataKey::random().frames())
        )
        .is_err());
        let plain = encode(12, 34, 5, &m, None);
        assert!(
            decode(&plain, Some(key)).is_err(),
            "plaintext in an encrypted volume"
        );
        // A header edited under the sealed body (seq 12 -> 13, crc fixed) is refused.
        let mut moved = enc.clone();
        moved[16] = 13;
        let n = moved.len() - 4;
        let crc = crc32c::crc32c(&moved[..n]);
        moved[n..].copy_from_slice(&crc.to_le_bytes());
        assert!(decode(&moved, Some(key)).is_err());
    }
}
