//! Segment objects: the immutable, self-describing unit a flush commits.
//!
//! Layout (little endian, byte by byte in docs/format.md):
//! header (56 B) | index: `count` entries of 32 B | payloads.
//! The header carries a crc32c of itself and of the index; every entry carries the
//! crc32c of its payload, so one ranged GET of an entry can be verified alone.
//! A segment is written once (conditional PUT if-absent) and never modified.

use super::blockmap::{EntryKind, Loc};
use super::le::{u32_at, u64_at};
use crate::BLOCK_SIZE;

/// Magic of a segment object.
pub const MAGIC: &[u8; 8] = b"GLSEG001";
/// Header length.
pub const HEADER_LEN: usize = 56;
/// Index entry length.
pub const ENTRY_LEN: usize = 32;
/// Format version.
pub const VERSION: u32 = 1;

/// One index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegEntry {
    /// Block index in the volume.
    pub block: u64,
    /// Payload offset from the start of the object.
    pub off: u64,
    /// Payload length (0 for zero blocks).
    pub len: u32,
    /// crc32c of the payload.
    pub crc: u32,
    /// Payload encoding.
    pub kind: EntryKind,
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
        }
    }
}

/// Decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegHeader {
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

/// Bytes of a block compressed first to decide whether compressing it pays.
const PROBE_BYTES: usize = 8 * 1024;

/// Whether zstd is worth running on `data`: its first [`PROBE_BYTES`] must shrink by
/// at least 1/8. Incompressible data (random, encrypted, already compressed) then
/// costs one small attempt instead of a whole-block one; the price is that a block
/// whose start does not compress but whose rest would is stored raw.
fn worth_compressing(data: &[u8]) -> bool {
    if data.len() <= 2 * PROBE_BYTES {
        return true;
    }
    let probe = &data[..PROBE_BYTES];
    zstd::bulk::compress(probe, 1).is_ok_and(|c| c.len() < probe.len() - probe.len() / 8)
}

/// Encode one block for a segment: zero detection, optional zstd.
pub fn encode_block(data: &[u8], compress: bool) -> (EntryKind, Vec<u8>) {
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

/// Decode a fetched payload into one block, verifying its checksum.
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
    match loc.kind {
        EntryKind::Zero => Ok(vec![0u8; BLOCK_SIZE]),
        EntryKind::Raw if payload.len() == BLOCK_SIZE => Ok(payload.to_vec()),
        EntryKind::Raw => Err(format!("raw entry of {} bytes", payload.len())),
        EntryKind::Zstd => match zstd::bulk::decompress(payload, BLOCK_SIZE) {
            Ok(v) if v.len() == BLOCK_SIZE => Ok(v),
            Ok(v) => Err(format!("zstd entry decodes to {} bytes", v.len())),
            Err(e) => Err(format!("zstd: {e}")),
        },
    }
}

/// Build a segment object from encoded blocks. Returns the object and its index.
pub fn encode(
    seq: u64,
    uuid: u64,
    epoch: u64,
    base_seq: u64,
    items: &[(u64, EntryKind, Vec<u8>)],
) -> (Vec<u8>, Vec<SegEntry>) {
    let count = items.len();
    let data_start = HEADER_LEN + count * ENTRY_LEN;
    let total = data_start + items.iter().map(|i| i.2.len()).sum::<usize>();
    let mut out = vec![0u8; data_start];
    out.reserve(total - data_start);
    let mut entries = Vec::with_capacity(count);
    let mut off = data_start as u64;
    for (i, (block, kind, payload)) in items.iter().enumerate() {
        let e = SegEntry {
            block: *block,
            off,
            len: payload.len() as u32,
            crc: crc32c::crc32c(payload),
            kind: *kind,
        };
        let p = HEADER_LEN + i * ENTRY_LEN;
        out[p..p + 8].copy_from_slice(&e.block.to_le_bytes());
        out[p + 8..p + 16].copy_from_slice(&e.off.to_le_bytes());
        out[p + 16..p + 20].copy_from_slice(&e.len.to_le_bytes());
        out[p + 20..p + 24].copy_from_slice(&e.crc.to_le_bytes());
        out[p + 24] = e.kind as u8;
        off += payload.len() as u64;
        entries.push(e);
    }
    for (_, _, payload) in items {
        out.extend_from_slice(payload);
    }
    let index_crc = crc32c::crc32c(&out[HEADER_LEN..data_start]);
    out[0..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(count as u32).to_le_bytes());
    out[16..24].copy_from_slice(&seq.to_le_bytes());
    out[24..32].copy_from_slice(&uuid.to_le_bytes());
    out[32..40].copy_from_slice(&epoch.to_le_bytes());
    out[40..48].copy_from_slice(&base_seq.to_le_bytes());
    out[48..52].copy_from_slice(&index_crc.to_le_bytes());
    let hcrc = crc32c::crc32c(&out[0..52]);
    out[52..56].copy_from_slice(&hcrc.to_le_bytes());
    (out, entries)
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
    if version != VERSION {
        return Err(format!("unsupported segment version {version}"));
    }
    Ok(SegHeader {
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
        out.push(SegEntry {
            block: u64_at(b, p),
            off: u64_at(b, p + 8),
            len: u32_at(b, p + 16),
            crc: u32_at(b, p + 20),
            kind,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incompressible_blocks_are_stored_raw_compressible_ones_zstd() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let rnd: Vec<u8> = (0..BLOCK_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (k, p) = encode_block(&rnd, true);
        assert_eq!((k, p.as_slice()), (EntryKind::Raw, rnd.as_slice()));
        let text: Vec<u8> = (0..BLOCK_SIZE).map(|i| b"glidefs "[i % 8]).collect();
        let (k, p) = encode_block(&text, true);
        assert_eq!(k, EntryKind::Zstd);
        assert!(p.len() < BLOCK_SIZE / 8);
        let loc = SegEntry {
            block: 0,
            off: 0,
            len: p.len() as u32,
            crc: crc32c::crc32c(&p),
            kind: k,
        }
        .loc(1);
        assert_eq!(decode_payload(&loc, &p).unwrap(), text);
    }

    #[test]
    fn roundtrip() {
        let mut blk = vec![0u8; BLOCK_SIZE];
        blk[100] = 9;
        let rnd: Vec<u8> = (0..BLOCK_SIZE).map(|i| (i * 7919 % 251) as u8).collect();
        let items = vec![
            (5, EntryKind::Zero, Vec::new()),
            {
                let (k, p) = encode_block(&blk, true);
                (7, k, p)
            },
            {
                let (k, p) = encode_block(&rnd, false);
                (9, k, p)
            },
        ];
        let (obj, entries) = encode(42, 77, 3, 40, &items);
        let h = decode_header(&obj).unwrap();
        assert_eq!(
            (h.count, h.seq, h.uuid, h.epoch, h.base_seq),
            (3, 42, 77, 3, 40)
        );
        let idx = decode_index(&h, &obj[HEADER_LEN..HEADER_LEN + 3 * ENTRY_LEN]).unwrap();
        assert_eq!(idx, entries);
        assert_eq!(idx[1].kind, EntryKind::Zstd);
        let l = idx[1].loc(42);
        let got =
            decode_payload(&l, &obj[l.off as usize..(l.off + l.len as u64) as usize]).unwrap();
        assert_eq!(got, blk);
        let l = idx[2].loc(42);
        let mut p = obj[l.off as usize..(l.off + l.len as u64) as usize].to_vec();
        assert_eq!(decode_payload(&l, &p).unwrap(), rnd);
        p[17] ^= 1;
        assert!(decode_payload(&l, &p).is_err());
        let mut bad = obj.clone();
        bad[HEADER_LEN + 3] ^= 1;
        assert!(decode_index(&h, &bad[HEADER_LEN..HEADER_LEN + 3 * ENTRY_LEN]).is_err());
    }
}
