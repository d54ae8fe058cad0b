//! Store URLs: [`open_store`] turns `file:///abs/path` or
//! `s3://bucket[/prefix]` plus [`StoreOptions`] into an `Arc<dyn ObjectStore>`.
//!
//! [`StoreUrl::parse`] is the only store URL parser: `check-config` (through
//! `Config::validate`) and the daemon's start use it, so a URL that passes the check
//! opens.
//!
//! Unset S3 options fall back to the standard AWS environment variables (see
//! docs/stores.md); secrets never appear in `Debug` output or error messages.

use super::local::LocalDirStore;
use super::options::StoreOptions;
use super::s3::S3Store;
use super::{ObjectStore, StoreError};
use std::sync::Arc;

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `file:///abs/path`
    Local(std::path::PathBuf),
    /// `s3://bucket[/prefix]`
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without trailing `/` (may be empty).
        prefix: String,
    },
}

fn bad_url(url: &str, why: &str) -> StoreError {
    StoreError::Config(format!(
        "bad store URL {url:?}: {why} (expected file:///absolute/path or s3://bucket[/prefix])"
    ))
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

impl StoreUrl {
    /// Parse a store URL; the error names the URL.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad_url(
                    url,
                    "file:// URLs need an absolute path (three slashes)",
                ));
            }
            if path.contains('%') || path.contains('?') || path.contains('#') {
                return Err(bad_url(
                    url,
                    "percent-encoding, queries and fragments are not supported",
                ));
            }
            if path.split('/').any(|c| c == "..") {
                return Err(bad_url(url, "file:// paths must not contain `..`"));
            }
            return Ok(Self::Local(path.into()));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if !valid_bucket(bucket) {
                return Err(bad_url(
                    url,
                    "bucket names are 3-63 characters of [a-z0-9.-], starting and ending with a letter or digit",
                ));
            }
            let prefix = prefix.trim_end_matches('/');
            if !prefix.is_empty() {
                super::validate_key(prefix).map_err(|e| bad_url(url, &format!("prefix: {e}")))?;
            }
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        Err(bad_url(url, "unknown scheme"))
    }
}

/// Open the store named by `url` (`file:///abs/path` or `s3://bucket[/prefix]`).
///
/// No network traffic happens here; an S3 store checks that conditional writes are
/// honoured on its first `put_if` (or call `S3Store::probe_conditional` explicitly).
pub fn open_store(url: &str, opts: &StoreOptions) -> Result<Arc<dyn ObjectStore>, StoreError> {
    match StoreUrl::parse(url)? {
        StoreUrl::Local(path) => Ok(Arc::new(LocalDirStore::open(path)?)),
        StoreUrl::S3 { bucket, prefix } => Ok(Arc::new(S3Store::open(&bucket, &prefix, opts)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_urls() {
        assert_eq!(
            StoreUrl::parse("file:///var/lib/x").unwrap(),
            StoreUrl::Local("/var/lib/x".into())
        );
        assert_eq!(
            StoreUrl::parse("s3://my-bucket").unwrap(),
            StoreUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            StoreUrl::parse("s3://my.bucket/a/b/").unwrap(),
            StoreUrl::S3 {
                bucket: "my.bucket".into(),
                prefix: "a/b".into()
            }
        );
    }

    #[test]
    fn bad_urls_are_named() {
        for url in [
            "file://rel/path",
            "http://x/y",
            "s3://",
            "s3://Upper",
            "s3://ab",
            "s3://bucket/a/../b",
            "s3://-bkt-",
            "file:///a/../b",
            "s3://bk/p@q",
            "/abs",
            "",
        ] {
            let err = StoreUrl::parse(url).unwrap_err();
            assert!(matches!(err, StoreError::Config(_)), "{url}: {err}");
            assert!(
                err.to_string().contains(&format!("{url:?}")),
                "{err} must name {url:?}"
            );
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let o = StoreOptions {
            secret_key: Some("TOPSECRET".into()),
            session_token: Some("TOK".into()),
            ..Default::default()
        };
        let s = format!("{o:?}");
        assert!(!s.contains("TOPSECRET") && !s.contains("TOK\""), "{s}");
    }

    #[test]
    fn open_store_file_url() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("s").display());
        let s = open_store(&url, &StoreOptions::default()).unwrap();
        assert!(s.describe().starts_with("file:///"));
    }
}
