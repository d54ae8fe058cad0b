//! Export names and sizes: the only forms that reach a path or the object store.
//!
//! A name is `[a-z0-9][a-z0-9._-]{0,63}`: 1 to 64 bytes, lowercase ASCII, no `/`,
//! never starting with `.` or `-`, so it is safe as a file name and an object key
//! component. A size is a positive multiple of 4 KiB, at most [`MAX_EXPORT_SIZE`].

/// Largest export (64 TiB).
pub const MAX_EXPORT_SIZE: u64 = 64 << 40;

/// Export sizes are multiples of this.
pub const SIZE_ALIGN: u64 = crate::SECTOR_SIZE as u64;

/// Check an export name; the error says what is wrong.
pub fn validate_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    if b.is_empty() {
        return Err("export name is empty".to_string());
    }
    if b.len() > 64 {
        return Err(format!("export name is {} bytes; at most 64", b.len()));
    }
    let first_ok = b[0].is_ascii_lowercase() || b[0].is_ascii_digit();
    let rest_ok = b.iter().all(|&c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'_' || c == b'-'
    });
    if !first_ok || !rest_ok {
        return Err(
            "invalid export name: use 1-64 of a-z 0-9 . _ - starting with a letter or digit"
                .to_string(),
        );
    }
    Ok(())
}

/// Check an export size in bytes.
pub fn validate_size(size: u64) -> Result<(), String> {
    if size == 0 {
        return Err("size must be greater than 0".to_string());
    }
    if !size.is_multiple_of(SIZE_ALIGN) {
        return Err(format!("size {size} is not a multiple of 4 KiB"));
    }
    if size > MAX_EXPORT_SIZE {
        return Err(format!(
            "size {} exceeds the maximum of {}",
            crate::size::format_size(size),
            crate::size::format_size(MAX_EXPORT_SIZE)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "0", "vm-1", "a.b_c-d", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "..",
            ".a",
            "-a",
            "_a",
            "A",
            "vmA",
            "a/b",
            "a b",
            "é",
            "a\0",
            &"x".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes() {
        assert!(validate_size(4096).is_ok());
        assert!(validate_size(MAX_EXPORT_SIZE).is_ok());
        assert!(validate_size(0).is_err());
        assert!(validate_size(4095).is_err());
        assert!(validate_size(MAX_EXPORT_SIZE + 4096).is_err());
        assert!(validate_size(1 << 60).is_err());
    }
}
