//! Segment objects: the immutable, self-describing unit a flush commits.
//!
//! Layout (little endian, byte by byte in docs/format.md):
//! header (56 B) | index: `count` entries of 32 B | payloads.
//! Format 2 entries are extents: a run of sectors of one block (format 1 entries,
//! still read, are whole blocks). The header carries a crc32c of itself and of the
//! index; every entry carries the crc32c of its payload, so one ranged GET of an
//! entry can be verified alone. A segment is written once (conditional PUT
//! if-absent) and never modified.

use super::blockmap::{EntryKind, Loc, SECTORS_PER_BLOCK};
use super::le::{u32_at, u64_at};

/// Magic of a segment object (both versions).
pub const MAGIC: &[u8; 8] = b"GLSEG001";
/// Header length.
pub const HEADER_LEN: usize = 56;
/// Index entry length.
pub const ENTRY_LEN: usize = 32;
/// Version this build writes: entries are sector extents.
pub const VERSION: u32 = 2;
/// Version of whole-block entries (read only).
pub const VERSION_WHOLE_BLOCKS: u32 = 1;

/// One index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegEntry {
    /// Block index in the volume.
    pub block: u64,
    /// Payload offset from the start of the object.
    pub off: u64,
    /// Payload length (0 for zero extents).
    pub len: u32,
    /// crc32c of the payload.
    pub crc: u32,
    /// Payload encoding.
    pub kind: EntryKind,
    /// First sector of the block.
    pub first: u8,
    /// Sectors covered.
    pub count: u8,
}

impl SegEntry {
    /// Location of this entry in segment `seq`.
    pub fn loc(&self, seq: u64) -> Loc {
        Loc {
            seq,
            off: self.off,
            len: self.len,
            crc: self.crc,
            kind: self.kind,
            first: self.first,
            count: self.count,
        }
    }
}

/// One extent to put into a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Block index.
    pub block: u64,
    /// First sector of the block.
    pub first: u8,
    /// Sectors covered.
    pub count: u8,
    /// Encoding of `payload`.
    pub kind: EntryKind,
    /// Encoded bytes.
    pub payload: Vec<u8>,
}

/// Decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegHeader {
    /// Entry format ([`VERSION`] or [`VERSION_WHOLE_BLOCKS`]).
    pub version: u32,
    /// Number of entries.
    pub count: u32,
    /// Sequence number.
    pub seq: u64,
    /// Volume uuid.
    pub uuid: u64,
    /// Lease epoch of the writer.
    pub epoch: u64,
    /// Highest segment seq the writer listed when it opened the volume.
    pub base_seq: u64,
    /// crc32c of the index bytes.
    pub index_crc: u32,
}

/// Bytes of an extent compressed first to decide whether compressing it pays.
const PROBE_BYTES: usize = 8 * 1024;

/// Whether zstd is worth running on `data`: its first [`PROBE_BYTES`] must shrink by
/// at least 1/8. Incompressible data (random, encrypted, already compressed) then
/// costs one small attempt instead of a whole-block one; the price is that an extent
/// whose start does not compress but whose rest would is stored raw.
fn worth_compressing(data: &[u8]) -> bool {
    if data.len() <= 2 * PROBE_BYTES {
        return true;
    }
    let probe = &data[..PROBE_BYTES];
    zstd::bulk::compress(probe, 1).is_ok_and(|c| c.len() < probe.len() - probe.len() / 8)
}

/// Encode the sectors of one extent: zero detection, optional zstd.
pub fn encode_extent(data: &[u8], compress: bool) -> (EntryKind, Vec<u8>) {
    if data.iter().all(|&b| b == 0) {
        return (EntryKind::Zero, Vec::new());
    }
    if compress && worth_compressing(data) {
        if let Ok(c) = zstd::bulk::compress(data, 1) {
            if c.len() < data.len() - data.len() / 8 {
                return (EntryKind::Zstd, c);
            }
        }
    }
    (EntryKind::Raw, data.to_vec())
}

/// Decode a fetched payload into the extent's sectors, verifying its checksum.
pub fn decode_payload(loc: &Loc, payload: &[u8]) -> Result<Vec<u8>, String> {
    if payload.len() != loc.len as usize {
        return Err(format!(
            "entry length {} != expected {}",
            payload.len(),
            loc.len
        ));
    }
    let crc = crc32c::crc32c(payload);
    if crc != loc.crc {
        return Err(format!("crc {crc:08x} != expected {:08x}", loc.crc));
    }
    let n = loc.decoded_len();
    match loc.kind {
        EntryKind::Zero => Ok(vec![0u8; n]),
        EntryKind::Raw if payload.len() == n => Ok(payload.to_vec()),
        EntryKind::Raw => Err(format!(
            "raw entry of {} bytes, expected {n}",
            payload.len()
        )),
        EntryKind::Zstd => match zstd::bulk::decompress(payload, n) {
            Ok(v) if v.len() == n => Ok(v),
            Ok(v) => Err(format!(
                "zstd entry decodes to {} bytes, expected {n}",
                v.len()
            )),
            Err(e) => Err(format!("zstd: {e}")),
        },
    }
}

/// Write the header fields of `obj` (whose index is in place).
fn write_header(obj: &mut [u8], count: usize, seq: u64, uuid: u64, epoch: u64, base_seq: u64) {
    let index_crc = crc32c::crc32c(&obj[HEADER_LEN..HEADER_LEN + count * ENTRY_LEN]);
    obj[0..8].copy_from_slice(MAGIC);
    obj[8..12].copy_from_slice(&VERSION.to_le_bytes());
    obj[12..16].copy_from_slice(&(count as u32).to_le_bytes());
    obj[16..24].copy_from_slice(&seq.to_le_bytes());
    obj[24..32].copy_from_slice(&uuid.to_le_bytes());
    obj[32..40].copy_from_slice(&epoch.to_le_bytes());
    obj[40..48].copy_from_slice(&base_seq.to_le_bytes());
    obj[48..52].copy_from_slice(&index_crc.to_le_bytes());
    let hcrc = crc32c::crc32c(&obj[0..52]);
    obj[52..56].copy_from_slice(&hcrc.to_le_bytes());
}

/// Build a segment object from encoded extents. Returns the object and its index.
pub fn encode(
    seq: u64,
    uuid: u64,
    epoch: u64,
    base_seq: u64,
    items: &[Extent],
) -> (Vec<u8>, Vec<SegEntry>) {
    let count = items.len();
    let data_start = HEADER_LEN + count * ENTRY_LEN;
    let total = data_start + items.iter().map(|i| i.payload.len()).sum::<usize>();
    let mut out = vec![0u8; data_start];
    out.reserve(total - data_start);
    let mut entries = Vec::with_capacity(count);
    let mut off = data_start as u64;
    for (i, x) in items.iter().enumerate() {
        let e = SegEntry {
            block: x.block,
            off,
            len: x.payload.len() as u32,
            crc: crc32c::crc32c(&x.payload),
            kind: x.kind,
            first: x.first,
            count: x.count,
        };
        let p = HEADER_LEN + i * ENTRY_LEN;
        out[p..p + 8].copy_from_slice(&e.block.to_le_bytes());
        out[p + 8..p + 16].copy_from_slice(&e.off.to_le_bytes());
        out[p + 16..p + 20].copy_from_slice(&e.len.to_le_bytes());
        out[p + 20..p + 24].copy_from_slice(&e.crc.to_le_bytes());
        out[p + 24] = e.kind as u8;
        out[p + 25] = e.first;
        out[p + 26] = e.count;
        off += x.payload.len() as u64;
        entries.push(e);
    }
    for x in items {
        out.extend_from_slice(&x.payload);
    }
    write_header(&mut out, count, seq, uuid, epoch, base_seq);
    (out, entries)
}

/// The same segment under another sequence number (a retry that must move past a
/// key a fenced writer's late PUT holds). Offsets do not depend on the number.
pub fn renumber(obj: &[u8], seq: u64) -> Result<Vec<u8>, String> {
    let h = decode_header(obj)?;
    let mut out = obj.to_vec();
    write_header(&mut out, h.count as usize, seq, h.uuid, h.epoch, h.base_seq);
    Ok(out)
}

/// Decode and verify a header (the first [`HEADER_LEN`] bytes).
pub fn decode_header(b: &[u8]) -> Result<SegHeader, String> {
    if b.len() < HEADER_LEN {
        return Err(format!("segment header too short ({} bytes)", b.len()));
    }
    if &b[0..8] != MAGIC {
        return Err("bad segment magic".into());
    }
    if crc32c::crc32c(&b[0..52]) != u32_at(b, 52) {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32_at(b, 8);
    if version != VERSION && version != VERSION_WHOLE_BLOCKS {
        return Err(format!("unsupported segment version {version}"));
    }
    Ok(SegHeader {
        version,
        count: u32_at(b, 12),
        seq: u64_at(b, 16),
        uuid: u64_at(b, 24),
        epoch: u64_at(b, 32),
        base_seq: u64_at(b, 40),
        index_crc: u32_at(b, 48),
    })
}

/// Decode and verify the index bytes (`count * ENTRY_LEN` bytes after the header).
pub fn decode_index(h: &SegHeader, b: &[u8]) -> Result<Vec<SegEntry>, String> {
    let n = h.count as usize;
    if b.len() != n * ENTRY_LEN {
        return Err(format!(
            "segment index has {} bytes, expected {}",
            b.len(),
            n * ENTRY_LEN
        ));
    }
    if crc32c::crc32c(b) != h.index_crc {
        return Err("segment index checksum mismatch".into());
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let p = i * ENTRY_LEN;
        let kind = EntryKind::from_u8(b[p + 24]).ok_or("bad entry kind")?;
        let (first, count) = if h.version == VERSION_WHOLE_BLOCKS {
            (0, SECTORS_PER_BLOCK as u8)
        } else {
            (b[p + 25], b[p + 26])
        };
        if !Loc::in_block(u64::from(first), u64::from(count)) {
            return Err(format!(
                "entry {i}: sectors {first}+{count} outside a block"
            ));
        }
        out.push(SegEntry {
            block: u64_at(b, p),
            off: u64_at(b, p + 8),
            len: u32_at(b, p + 16),
            crc: u32_at(b, p + 20),
            kind,
            first,
            count,
        });
    }
    Ok(out)
}

/// Sectors per block as the u8 an entry stores.
pub const WHOLE: u8 = SECTORS_PER_BLOCK as u8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BLOCK_SIZE, SECTOR_SIZE};

    fn ext(block: u64, first: u8, data: &[u8], compress: bool) -> Extent {
        let (kind, payload) = encode_extent(data, compress);
        Extent {
            block,
            first,
            count: (data.len() / SECTOR_SIZE) as u8,
            kind,
            payload,
        }
    }

    fn payload<'a>(obj: &'a [u8], l: &Loc) -> &'a [u8] {
        &obj[l.off as usize..(l.off + u64::from(l.len)) as usize]
    }

    #[test]
    fn incompressible_extents_are_stored_raw_compressible_ones_zstd() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let rnd: Vec<u8> = (0..BLOCK_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (k, p) = encode_extent(&rnd, true);
        assert_eq!((k, p.as_slice()), (EntryKind::Raw, rnd.as_slice()));
        let text: Vec<u8> = (0..BLOCK_SIZE).map(|i| b"glidefs "[i % 8]).collect();
        let (k, p) = encode_extent(&text, true);
        assert_eq!(k, EntryKind::Zstd);
        assert!(p.len() < BLOCK_SIZE / 8);
    }

    #[test]
    fn extents_roundtrip_and_corruption_is_detected() {
        let mut one = vec![0u8; SECTOR_SIZE];
        one[100] = 9;
        let rnd: Vec<u8> = (0..3 * SECTOR_SIZE)
            .map(|i| (i * 7919 % 251) as u8)
            .collect();
        let items = vec![
            ext(5, 0, &[0u8; BLOCK_SIZE], true),
            ext(7, 4, &one, true),
            ext(9, 29, &rnd, false),
        ];
        assert_eq!(items[0].kind, EntryKind::Zero);
        let (obj, entries) = encode(42, 77, 3, 40, &items);
        let h = decode_header(&obj).unwrap();
        assert_eq!(
            (h.version, h.count, h.seq, h.uuid, h.epoch, h.base_seq),
            (VERSION, 3, 42, 77, 3, 40)
        );
        let idx = decode_index(&h, &obj[HEADER_LEN..HEADER_LEN + 3 * ENTRY_LEN]).unwrap();
        assert_eq!(idx, entries);
        assert_eq!(
            (idx[1].first, idx[1].count, idx[1].kind),
            (4, 1, EntryKind::Zstd)
        );
        let l = idx[1].loc(42);
        assert_eq!(decode_payload(&l, payload(&obj, &l)).unwrap(), one);
        let l = idx[2].loc(42);
        assert_eq!(l.mask(), 0b111 << 29);
        let mut p = payload(&obj, &l).to_vec();
        assert_eq!(decode_payload(&l, &p).unwrap(), rnd);
        p[17] ^= 1;
        assert!(decode_payload(&l, &p).is_err());
        let mut bad = obj.clone();
        bad[HEADER_LEN + 3] ^= 1;
        assert!(decode_index(&h, &bad[HEADER_LEN..HEADER_LEN + 3 * ENTRY_LEN]).is_err());
        // Renumbered: same index and payloads, new number, valid checksums.
        let moved = renumber(&obj, 43).unwrap();
        let h2 = decode_header(&moved).unwrap();
        assert_eq!((h2.seq, h2.count, h2.epoch), (43, 3, 3));
        assert_eq!(moved[HEADER_LEN..], obj[HEADER_LEN..]);
    }

    #[test]
    fn format_1_entries_are_whole_blocks_and_extents_past_a_block_are_refused() {
        let data = vec![7u8; BLOCK_SIZE];
        let (mut obj, _) = encode(1, 2, 3, 0, &[ext(4, 0, &data, false)]);
        // A format-1 object: version 1, reserved bytes 0.
        obj[HEADER_LEN + 25] = 0;
        obj[HEADER_LEN + 26] = 0;
        obj[8..12].copy_from_slice(&VERSION_WHOLE_BLOCKS.to_le_bytes());
        let icrc = crc32c::crc32c(&obj[HEADER_LEN..HEADER_LEN + ENTRY_LEN]);
        obj[48..52].copy_from_slice(&icrc.to_le_bytes());
        let hcrc = crc32c::crc32c(&obj[0..52]);
        obj[52..56].copy_from_slice(&hcrc.to_le_bytes());
        let h = decode_header(&obj).unwrap();
        let idx = decode_index(&h, &obj[HEADER_LEN..HEADER_LEN + ENTRY_LEN]).unwrap();
        assert_eq!((idx[0].first, idx[0].count), (0, WHOLE));
        let l = idx[0].loc(1);
        assert_eq!(decode_payload(&l, payload(&obj, &l)).unwrap(), data);
        // Version 2 with an extent that runs past the block.
        let (obj, _) = encode(1, 2, 3, 0, &[ext(4, 31, &data[..2 * SECTOR_SIZE], false)]);
        let h = decode_header(&obj).unwrap();
        assert!(decode_index(&h, &obj[HEADER_LEN..HEADER_LEN + ENTRY_LEN]).is_err());
    }
}
