//! Segment objects: the immutable, self-describing unit a flush commits.
//!
//! Layout (little endian, byte by byte in docs/format.md):
//! header (56 B) | index: `count` entries of 32 B | payloads.
//! Format 2 entries are extents: a run of sectors of one block (format 1 entries,
//! still read, are whole blocks). The header carries a crc32c of itself and of the
//! index; every entry carries the crc32c of its payload, so one ranged GET of an
//! entry can be verified alone. A segment is written once (conditional PUT
//! if-absent) and never modified.
//!
//! Format 3 is format 2 sealed (an encrypted volume's, see `crypto.rs`): the index is
//! one sealed frame bound to the header's fields, every payload a sealed frame bound
//! to (uuid, seq, its offset, its entry's block, sectors and kind); entry crcs and
//! lengths are of the sealed bytes. Compress first, then seal.

use super::blockmap::{EntryKind, Loc, SECTORS_PER_BLOCK};
use super::crypto::{Aad, FrameKey, FrameKind, OVERHEAD};
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
/// Version of sealed segments (encrypted volumes): format 2 with sealed frames.
pub const VERSION_SEALED: u32 = 3;

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

/// Associated data of extent `e`'s payload at offset `off` of segment `seq` of
/// volume `uuid`.
pub fn extent_aad(uuid: u64, seq: u64, loc: &Loc, block: u64) -> Aad {
    let mut extra = [0u8; 11];
    extra[0..8].copy_from_slice(&block.to_le_bytes());
    extra[8] = loc.first;
    extra[9] = loc.count;
    extra[10] = loc.kind as u8;
    Aad::new(uuid, FrameKind::Extent, seq, loc.off, &extra)
}

/// How a payload is opened: plain, or sealed with this key for (volume uuid, block).
#[derive(Debug, Clone, Copy)]
pub enum Opener<'a> {
    /// A plaintext volume's payload.
    Plain,
    /// A sealed payload of block `block` of volume `uuid`.
    Sealed {
        /// The data key of the volume that wrote the segment.
        key: &'a FrameKey,
        /// That volume's uuid.
        uuid: u64,
        /// The block the payload belongs to.
        block: u64,
    },
}

impl<'a> Opener<'a> {
    /// Sealed with `key` (the writing volume's data key) when there is one, else
    /// plain.
    pub fn new(key: Option<&'a FrameKey>, uuid: u64, block: u64) -> Opener<'a> {
        match key {
            Some(key) => Opener::Sealed { key, uuid, block },
            None => Opener::Plain,
        }
    }
}

/// Decode a fetched payload into the extent's sectors, verifying its checksum (and,
/// sealed, its authenticity).
///
/// A sealed payload's crc32c is not checked: its tag authenticates every byte of it
/// (and its place), so the crc would repeat a weaker check over the same bytes, and
/// under emulation it costs a third of the cipher. Opened in place: a raw payload
/// is returned in the buffer it was opened into.
pub fn decode_payload(loc: &Loc, payload: &[u8], opener: Opener) -> Result<Vec<u8>, String> {
    if payload.len() != loc.len as usize {
        return Err(format!(
            "entry length {} != expected {}",
            payload.len(),
            loc.len
        ));
    }
    let n = loc.decoded_len();
    let opened = match (opener, loc.kind) {
        (_, EntryKind::Zero) | (Opener::Plain, _) => {
            let crc = crc32c::crc32c(payload);
            if crc != loc.crc {
                return Err(format!("crc {crc:08x} != expected {:08x}", loc.crc));
            }
            std::borrow::Cow::Borrowed(payload)
        }
        (Opener::Sealed { key, uuid, block }, _) => std::borrow::Cow::Owned(
            key.open(&extent_aad(uuid, loc.seq, loc, block), payload, "extent")
                .map_err(|e| e.to_string())?,
        ),
    };
    match loc.kind {
        EntryKind::Zero => Ok(vec![0u8; n]),
        EntryKind::Raw if opened.len() == n => Ok(opened.into_owned()),
        EntryKind::Raw => Err(format!("raw entry of {} bytes, expected {n}", opened.len())),
        EntryKind::Zstd => match zstd::bulk::decompress(&opened, n) {
            Ok(v) if v.len() == n => Ok(v),
            Ok(v) => Err(format!(
                "zstd entry decodes to {} bytes, expected {n}",
                v.len()
            )),
            Err(e) => Err(format!("zstd: {e}")),
        },
    }
}

/// Bytes of the index of a segment with this header (sealed: one frame).
pub fn index_len(h: &SegHeader) -> usize {
    h.count as usize * ENTRY_LEN
        + if h.version == VERSION_SEALED {
            OVERHEAD
        } else {
            0
        }
}

/// Associated data of a sealed index: the header's fields before its checksums.
fn index_aad(header: &[u8]) -> Aad {
    Aad::new(
        u64_at(header, 24),
        FrameKind::SegmentIndex,
        u64_at(header, 16),
        HEADER_LEN as u64,
        &header[0..48],
    )
}

/// Write the header and the index of `obj`, whose first [`HEADER_LEN`] bytes plus
/// the index's length are reserved: `h`'s count, seq, uuid, epoch and base_seq
/// (its version and index crc follow from `seal`), then `index` (the plain entries),
/// sealed with `seal` bound to the header when a key is given.
fn write_header(obj: &mut [u8], h: &SegHeader, index: &[u8], seal: Option<&FrameKey>) {
    obj[0..8].copy_from_slice(MAGIC);
    let version = if seal.is_some() {
        VERSION_SEALED
    } else {
        VERSION
    };
    obj[8..12].copy_from_slice(&version.to_le_bytes());
    obj[12..16].copy_from_slice(&h.count.to_le_bytes());
    obj[16..24].copy_from_slice(&h.seq.to_le_bytes());
    obj[24..32].copy_from_slice(&h.uuid.to_le_bytes());
    obj[32..40].copy_from_slice(&h.epoch.to_le_bytes());
    obj[40..48].copy_from_slice(&h.base_seq.to_le_bytes());
    let sealed;
    let index = match seal {
        Some(key) => {
            sealed = key.seal(&index_aad(&obj[0..48]), index);
            &sealed[..]
        }
        None => index,
    };
    let ilen = index.len();
    obj[HEADER_LEN..HEADER_LEN + ilen].copy_from_slice(index);
    let index_crc = crc32c::crc32c(&obj[HEADER_LEN..HEADER_LEN + ilen]);
    obj[48..52].copy_from_slice(&index_crc.to_le_bytes());
    let hcrc = crc32c::crc32c(&obj[0..52]);
    obj[52..56].copy_from_slice(&hcrc.to_le_bytes());
}

fn put_entry(out: &mut [u8], e: &SegEntry) {
    out[0..8].copy_from_slice(&e.block.to_le_bytes());
    out[8..16].copy_from_slice(&e.off.to_le_bytes());
    out[16..20].copy_from_slice(&e.len.to_le_bytes());
    out[20..24].copy_from_slice(&e.crc.to_le_bytes());
    out[24] = e.kind as u8;
    out[25] = e.first;
    out[26] = e.count;
}

/// Build a segment object from encoded extents, sealed with `seal` (an encrypted
/// volume's data key). Returns the object and its index.
pub fn encode(
    seq: u64,
    uuid: u64,
    epoch: u64,
    base_seq: u64,
    items: &[Extent],
    seal: Option<&FrameKey>,
) -> (Vec<u8>, Vec<SegEntry>) {
    let count = items.len();
    let extra = if seal.is_some() { OVERHEAD } else { 0 };
    let data_start = HEADER_LEN + count * ENTRY_LEN + extra;
    let mut out = vec![0u8; data_start];
    let mut index = vec![0u8; count * ENTRY_LEN];
    let mut entries = Vec::with_capacity(count);
    let mut off = data_start as u64;
    for (i, x) in items.iter().enumerate() {
        let mut e = SegEntry {
            block: x.block,
            off,
            len: 0,
            crc: 0,
            kind: x.kind,
            first: x.first,
            count: x.count,
        };
        let sealed;
        let payload = match seal {
            Some(key) if x.kind != EntryKind::Zero => {
                sealed = key.seal(&extent_aad(uuid, seq, &e.loc(seq), x.block), &x.payload);
                &sealed[..]
            }
            _ => &x.payload[..],
        };
        e.len = payload.len() as u32;
        e.crc = crc32c::crc32c(payload);
        put_entry(&mut index[i * ENTRY_LEN..(i + 1) * ENTRY_LEN], &e);
        out.extend_from_slice(payload);
        off += payload.len() as u64;
        entries.push(e);
    }
    let header = SegHeader {
        version: 0,
        count: count as u32,
        seq,
        uuid,
        epoch,
        base_seq,
        index_crc: 0,
    };
    write_header(&mut out, &header, &index, seal);
    (out, entries)
}

/// The same segment under another sequence number (a retry that must move past a
/// key a fenced writer's late PUT holds). Offsets do not depend on the number; a
/// sealed segment's frames are bound to it, so they are opened and sealed again.
pub fn renumber(obj: &[u8], seq: u64, seal: Option<&FrameKey>) -> Result<Vec<u8>, String> {
    let h = decode_header(obj)?;
    let ilen = index_len(&h);
    if obj.len() < HEADER_LEN + ilen {
        return Err("segment shorter than its index".into());
    }
    let renumbered = SegHeader { seq, ..h };
    let mut out = obj.to_vec();
    if h.version != VERSION_SEALED {
        let index = &obj[HEADER_LEN..HEADER_LEN + ilen];
        write_header(&mut out, &renumbered, index, None);
        return Ok(out);
    }
    let key = seal.ok_or("a sealed segment, and no key to seal it again")?;
    let entries = decode_index(
        &h,
        &obj[HEADER_LEN..HEADER_LEN + ilen],
        Some(key),
        &obj[0..48],
    )?;
    let mut index = vec![0u8; entries.len() * ENTRY_LEN];
    for (i, mut e) in entries.into_iter().enumerate() {
        if e.kind != EntryKind::Zero {
            let r = e.off as usize..e.off as usize + e.len as usize;
            let frame = obj.get(r.clone()).ok_or("entry beyond the segment's end")?;
            let plain = key
                .open(
                    &extent_aad(h.uuid, h.seq, &e.loc(h.seq), e.block),
                    frame,
                    "extent",
                )
                .map_err(|e| e.to_string())?;
            let sealed = key.seal(&extent_aad(h.uuid, seq, &e.loc(seq), e.block), &plain);
            e.crc = crc32c::crc32c(&sealed);
            out[r].copy_from_slice(&sealed);
        }
        put_entry(&mut index[i * ENTRY_LEN..(i + 1) * ENTRY_LEN], &e);
    }
    write_header(&mut out, &renumbered, &index, Some(key));
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
    if version != VERSION && version != VERSION_WHOLE_BLOCKS && version != VERSION_SEALED {
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

/// Decode and verify the index bytes ([`index_len`] bytes after the header `hb`,
/// the first 48 bytes of which a sealed index is bound to). A sealed index needs
/// `key`; a plaintext one must come without (an encrypted volume takes no
/// plaintext object as its own).
pub fn decode_index(
    h: &SegHeader,
    b: &[u8],
    key: Option<&FrameKey>,
    hb: &[u8],
) -> Result<Vec<SegEntry>, String> {
    let n = h.count as usize;
    if b.len() != index_len(h) {
        return Err(format!(
            "segment index has {} bytes, expected {}",
            b.len(),
            index_len(h)
        ));
    }
    if crc32c::crc32c(b) != h.index_crc {
        return Err("segment index checksum mismatch".into());
    }
    let opened;
    let b = match (h.version == VERSION_SEALED, key) {
        (true, Some(k)) => {
            if hb.len() < 48 {
                return Err("segment header too short".into());
            }
            opened = k
                .open(&index_aad(hb), b, "segment index")
                .map_err(|e| e.to_string())?;
            &opened[..]
        }
        (true, None) => return Err("sealed segment, and the volume has no data key".into()),
        (false, Some(_)) => return Err("plaintext segment in an encrypted volume".into()),
        (false, None) => b,
    };
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
        let (obj, entries) = encode(42, 77, 3, 40, &items, None);
        let h = decode_header(&obj).unwrap();
        assert_eq!(
            (h.version, h.count, h.seq, h.uuid, h.epoch, h.base_seq),
            (VERSION, 3, 42, 77, 3, 40)
        );
        let idx =
            decode_index(&h, &obj[HEADER_LEN..HEADER_LEN + 3 * ENTRY_LEN], None, &obj).unwrap();
        assert_eq!(idx, entries);
        assert_eq!(
            (idx[1].first, idx[1].count, idx[1].kind),
            (4, 1, EntryKind::Zstd)
        );
        let l = idx[1].loc(42);
        assert_eq!(
            decode_payload(&l, payload(&obj, &l), Opener::Plain).unwrap(),
            one
        );
        let l = idx[2].loc(42);
        assert_eq!(l.mask(), 0b111 << 29);
        let mut p = payload(&obj, &l).to_vec();
        assert_eq!(decode_payload(&l, &p, Opener::Plain).unwrap(), rnd);
        p[17] ^= 1;
        assert!(decode_payload(&l, &p, Opener::Plain).is_err());
        let mut bad = obj.clone();
        bad[HEADER_LEN + 3] ^= 1;
        assert!(
            decode_index(&h, &bad[HEADER_LEN..HEADER_LEN + 3 * ENTRY_LEN], None, &bad).is_err()
        );
        // Renumbered: same index and payloads, new number, valid checksums.
        let moved = renumber(&obj, 43, None).unwrap();
        let h2 = decode_header(&moved).unwrap();
        assert_eq!((h2.seq, h2.count, h2.epoch), (43, 3, 3));
        assert_eq!(moved[HEADER_LEN..], obj[HEADER_LEN..]);
    }

    #[test]
    fn format_1_entries_are_whole_blocks_and_extents_past_a_block_are_refused() {
        let data = vec![7u8; BLOCK_SIZE];
        let (mut obj, _) = encode(1, 2, 3, 0, &[ext(4, 0, &data, false)], None);
        // A format-1 object: version 1, reserved bytes 0.
        obj[HEADER_LEN + 25] = 0;
        obj[HEADER_LEN + 26] = 0;
        obj[8..12].copy_from_slice(&VERSION_WHOLE_BLOCKS.to_le_bytes());
        let icrc = crc32c::crc32c(&obj[HEADER_LEN..HEADER_LEN + ENTRY_LEN]);
        obj[48..52].copy_from_slice(&icrc.to_le_bytes());
        let hcrc = crc32c::crc32c(&obj[0..52]);
        obj[52..56].copy_from_slice(&hcrc.to_le_bytes());
        let h = decode_header(&obj).unwrap();
        let idx = decode_index(&h, &obj[HEADER_LEN..HEADER_LEN + ENTRY_LEN], None, &obj).unwrap();
        assert_eq!((idx[0].first, idx[0].count), (0, WHOLE));
        let l = idx[0].loc(1);
        assert_eq!(
            decode_payload(&l, payload(&obj, &l), Opener::Plain).unwrap(),
            data
        );
        // Version 2 with an extent that runs past the block.
        let (obj, _) = encode(
            1,
            2,
            3,
            0,
            &[ext(4, 31, &data[..2 * SECTOR_SIZE], false)],
            None,
        );
        let h = decode_header(&obj).unwrap();
        assert!(decode_index(&h, &obj[HEADER_LEN..HEADER_LEN + ENTRY_LEN], None, &obj).is_err());
    }

    #[test]
    fn sealed_segments_bind_every_frame_to_its_place() {
        use crate::volume::crypto::DataKey;
        let dk = DataKey::random();
        let key = dk.frames();
        let a = vec![3u8; 2 * SECTOR_SIZE];
        let b: Vec<u8> = (0..SECTOR_SIZE).map(|i| (i * 31 % 251) as u8).collect();
        let items = vec![
            ext(5, 0, &a, true),
            ext(6, 2, &b, false),
            ext(7, 0, &[0u8; SECTOR_SIZE], true),
        ];
        let (obj, entries) = encode(42, 77, 3, 40, &items, Some(key));
        let h = decode_header(&obj).unwrap();
        assert_eq!(h.version, VERSION_SEALED);
        let ib = &obj[HEADER_LEN..HEADER_LEN + index_len(&h)];
        assert!(decode_index(&h, ib, None, &obj).is_err(), "no key");
        assert!(
            decode_index(&h, ib, Some(DataKey::random().frames()), &obj).is_err(),
            "other key"
        );
        let idx = decode_index(&h, ib, Some(key), &obj).unwrap();
        assert_eq!(idx, entries);
        // The plaintext is nowhere in the object.
        assert!(!obj.windows(64).any(|w| w == &b[..64]));
        let open = |l: &Loc, p: &[u8], block| {
            decode_payload(
                l,
                p,
                Opener::Sealed {
                    key,
                    uuid: 77,
                    block,
                },
            )
        };
        let l0 = idx[0].loc(42);
        assert_eq!(open(&l0, payload(&obj, &l0), 5).unwrap(), a);
        let l1 = idx[1].loc(42);
        assert_eq!(open(&l1, payload(&obj, &l1), 6).unwrap(), b);
        // Wrong block, uuid or seq; a swapped frame: all refused.
        assert!(open(&l1, payload(&obj, &l1), 5).is_err());
        assert!(decode_payload(
            &l1,
            payload(&obj, &l1),
            Opener::Sealed {
                key,
                uuid: 78,
                block: 6
            }
        )
        .is_err());
        assert!(open(&idx[1].loc(43), payload(&obj, &l1), 6).is_err());
        // A flipped byte is refused by the tag, with or without its crc fixed up.
        let mut flipped = payload(&obj, &l1).to_vec();
        flipped[crate::volume::crypto::NONCE_LEN + 7] ^= 1;
        assert!(open(&l1, &flipped, 6).is_err());
        let fixed = Loc {
            crc: crc32c::crc32c(&flipped),
            ..l1
        };
        assert!(open(&fixed, &flipped, 6).is_err());
        let l2 = idx[2].loc(42);
        assert_eq!(
            open(&l2, payload(&obj, &l2), 7).unwrap(),
            vec![0u8; SECTOR_SIZE]
        );
        // Renumbered: frames sealed again for the new number, old number refused.
        let moved = renumber(&obj, 43, Some(key)).unwrap();
        let h2 = decode_header(&moved).unwrap();
        let idx2 = decode_index(
            &h2,
            &moved[HEADER_LEN..HEADER_LEN + index_len(&h2)],
            Some(key),
            &moved,
        )
        .unwrap();
        let m1 = idx2[1].loc(43);
        assert_eq!(open(&m1, payload(&moved, &m1), 6).unwrap(), b);
        let stale = Loc {
            crc: m1.crc,
            ..idx[1].loc(42)
        };
        assert!(open(&stale, payload(&moved, &m1), 6).is_err());
        // A header edited under a sealed index is refused.
        let mut bad = obj.clone();
        bad[32] ^= 1; // epoch
        let hcrc = crc32c::crc32c(&bad[0..52]);
        bad[52..56].copy_from_slice(&hcrc.to_le_bytes());
        let hb = decode_header(&bad).unwrap();
        assert!(decode_index(
            &hb,
            &bad[HEADER_LEN..HEADER_LEN + index_len(&hb)],
            Some(key),
            &bad
        )
        .is_err());
    }
}
