//! Little-endian field readers shared by the journal, segment and manifest decoders.
//!
//! Callers check the length of the buffer first (each format has a header length or a
//! length field verified before its fields are read); an out-of-range read is a bug
//! in that check and panics like any slice index.

/// The `u32` at byte `p` of `b`.
pub(crate) fn u32_at(b: &[u8], p: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[p..p + 4]);
    u32::from_le_bytes(a)
}

/// The `u64` at byte `p` of `b`.
pub(crate) fn u64_at(b: &[u8], p: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[p..p + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_little_endian() {
        let b = [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(super::u32_at(&b, 0), 1);
        assert_eq!(super::u64_at(&b, 4), 2);
    }
}
