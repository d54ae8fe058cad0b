//! Key and prefix validation shared by every store.
//!
//! A key is a `/`-separated relative path: non-empty, at most [`MAX_KEY_LEN`] bytes,
//! characters `[A-Za-z0-9._/-]` only, no leading or trailing `/`, no empty, `.` or
//! `..` component, and no component starting with `.glidefs` (reserved for the local
//! store's temp and lock files). Every error names the offending key.

use super::StoreError;

/// Longest accepted key in bytes (S3's limit).
pub const MAX_KEY_LEN: usize = 1024;

/// Component prefix reserved for store-internal files (temp files, lock file).
pub const RESERVED_PREFIX: &str = ".glidefs";

fn bad(key: &str, reason: &str) -> StoreError {
    StoreError::InvalidKey {
        key: key.to_owned(),
        reason: reason.to_owned(),
    }
}

fn check_charset(key: &str) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_LEN {
        return Err(bad(key, "longer than 1024 bytes"));
    }
    match key
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-')))
    {
        Some(_) => Err(bad(key, "characters must be [A-Za-z0-9._/-]")),
        None => Ok(()),
    }
}

fn check_component(key: &str, comp: &str) -> Result<(), StoreError> {
    match comp {
        "" => Err(bad(
            key,
            "empty path component (leading, trailing or double '/')",
        )),
        "." | ".." => Err(bad(key, "'.' and '..' components are not allowed")),
        c if c.starts_with(RESERVED_PREFIX) => {
            Err(bad(key, "components starting with '.glidefs' are reserved"))
        }
        _ => Ok(()),
    }
}

/// Validate an object key.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(bad(key, "empty key"));
    }
    check_charset(key)?;
    for comp in key.split('/') {
        check_component(key, comp)?;
    }
    Ok(())
}

/// Validate a listing prefix: empty, or a key prefix whose complete components
/// (all but the last, which may be partial or empty after a trailing `/`) are valid.
pub fn validate_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.is_empty() {
        return Ok(());
    }
    check_charset(prefix)?;
    let comps: Vec<&str> = prefix.split('/').collect();
    let (last, full) = comps.split_last().unwrap_or((&"", &[]));
    for comp in full {
        check_component(prefix, comp)?;
    }
    if *last == ".." {
        return Err(bad(prefix, "'..' components are not allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_keys() {
        for k in ["a", "vol/seg/0001.seg", "a-b_c.d/e", "x/.hidden", "A/B/C"] {
            validate_key(k).unwrap();
        }
    }

    #[test]
    fn rejects_bad_keys_and_names_them() {
        for k in [
            "",
            "/abs",
            "a/../b",
            "..",
            "a//b",
            "a/",
            "./a",
            "sp ace",
            "é",
            "a\\b",
            ".glidefs-lock",
            "a/.glidefs-tmp.1",
        ] {
            let err = validate_key(k).unwrap_err();
            assert!(matches!(err, StoreError::InvalidKey { .. }), "{k}: {err}");
            assert!(
                err.to_string().contains(&format!("{k:?}")),
                "{err} must name {k:?}"
            );
        }
        assert!(validate_key(&"a".repeat(MAX_KEY_LEN + 1)).is_err());
        validate_key(&"a".repeat(MAX_KEY_LEN)).unwrap();
    }

    #[test]
    fn prefixes() {
        for p in ["", "a", "a/", "vol/seg/00", "a/b/"] {
            validate_prefix(p).unwrap();
        }
        for p in ["/", "/a", "a//", "../", "a/..", "a b"] {
            assert!(validate_prefix(p).is_err(), "{p}");
        }
    }
}
