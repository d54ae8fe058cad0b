//! Object stores: one small async trait ([`ObjectStore`]) and two implementations,
//! `S3Store` (rust-s3) and `LocalDirStore` (a directory; the embedded default).
//!
//! CONTRACT (shared with the volume engine; change only with care):
//! - keys are `/`-separated relative paths of `[A-Za-z0-9._/-]`;
//! - `put` replaces atomically: a reader sees the old or the new object, never a mix;
//! - `put_if` is the only conditional operation; a store that cannot honour it
//!   must say so (`StoreError::ConditionalUnsupported`) rather than ignore it.
//!
//! See docs/format.md for the objects the volume engine writes.

pub mod counted;
pub mod key;
pub mod local;
pub mod mem;
pub mod metered;
pub mod options;
pub mod retry;
pub mod s3;
pub mod url;

pub use counted::{CountedStore, StoreTraffic, TrafficCounts};
pub use key::{validate_key, validate_prefix};
pub use local::LocalDirStore;
pub use mem::MemStore;
pub use options::StoreOptions;
pub use retry::RetryPolicy;
pub use s3::S3Store;
pub use url::{open_store, StoreUrl};

use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;

/// Errors from an object store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The key does not exist.
    #[error("object not found: {0}")]
    NotFound(String),
    /// A conditional put lost: the object exists (if-absent) or its etag changed.
    #[error("precondition failed for {0}")]
    PreconditionFailed(String),
    /// The store does not honour conditional writes (e.g. Garage); detected, not trusted.
    #[error("store does not honour conditional writes: {0}")]
    ConditionalUnsupported(String),
    /// Bad store URL or configuration.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// Transient failure (network, 5xx, timeout): retrying may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Local I/O error (LocalDirStore).
    #[error("store I/O error on {path}: {source}")]
    Io {
        /// Path or key involved.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The key (or listing prefix) is not acceptable; see [`key::validate_key`].
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key.
        key: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Any other store-side error (4xx other than the above).
    #[error("store error: {0}")]
    Other(String),
}

/// Condition for [`ObjectStore::put_if`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutCondition {
    /// Succeed only if no object exists at the key (If-None-Match: *).
    IfAbsent,
    /// Succeed only if the current object's etag equals this (If-Match).
    IfMatch(String),
}

/// Create `key` unless an object is there (If-None-Match: *): `Some(etag)` when
/// this call created it, `None` when the key was taken. Every put-if-absent of the
/// engine goes through here.
pub async fn put_new(
    store: &dyn ObjectStore,
    key: &str,
    data: Bytes,
) -> Result<Option<String>, StoreError> {
    match store.put_if(key, data, PutCondition::IfAbsent).await {
        Ok(etag) => Ok(Some(etag)),
        Err(StoreError::PreconditionFailed(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Metadata of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Full key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Opaque version tag, usable with [`PutCondition::IfMatch`].
    pub etag: String,
    /// When the object was last written, on the *store's* clock (ms since the Unix
    /// epoch; S3 Last-Modified, one-second resolution). `head` fills it where the
    /// store reports it; listings may leave it `None`.
    pub modified_ms: Option<u64>,
}

/// The object store interface used by the volume engine.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Write (replace) an object; returns its new etag.
    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError>;
    /// Conditional write; `Err(PreconditionFailed)` when the condition does not hold.
    async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        cond: PutCondition,
    ) -> Result<String, StoreError>;
    /// Read a whole object.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    /// Read `range` (end exclusive) of an object.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError>;
    /// Metadata of one object.
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError>;
    /// All objects whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;
    /// Delete an object; deleting a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Human-readable description for logs (no secrets).
    fn describe(&self) -> String;
    /// The checks a store runs once before its first conditional write (S3: the
    /// conditional-write probe, seconds against a slow service); later calls return
    /// at once. [`put_if`](Self::put_if) runs them itself; a caller that times a
    /// window around a conditional write (the lease) calls this first, so the
    /// checks are not counted in the window. Wrappers forward it.
    async fn prepare(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
