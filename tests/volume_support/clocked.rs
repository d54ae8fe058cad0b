//! `ClockedStore`: a real store (moto in tests/volume_multihost_s3.rs) whose objects'
//! modification times come from a test clock instead of the server's, with every key
//! under a per-case prefix (one S3 store serves all cases, so its conditional-write
//! probe - most of a case's requests otherwise - runs once per server).
//!
//! The engine judges lease staleness on the store's clock (`ObjectMeta.modified_ms`,
//! S3 Last-Modified; see src/volume/lease.rs), while the multi-host model moves a
//! virtual `ManualClock`. This wrapper forwards every call unchanged (conditional
//! writes, etags, 412s, listings, ranged GETs stay the server's) and rewrites only
//! `modified_ms` in `head` and `list` results, with the same rule as
//! `MemStore::with_clock`:
//! - a version is stamped with the clock's time, in whole seconds, at the moment its
//!   `put`/`put_if` returned success to this wrapper (a delayed PUT of a
//!   `FaultStore` is stamped when it finally lands);
//! - versions are told apart by key and etag; a version this wrapper never saw
//!   written (not expected: each case uses a fresh prefix and every write goes
//!   through here; possible if the S3 store reports an error for a conditional PUT
//!   that landed) counts as written when first seen, at the current clock time -
//!   a fresh stamp, never the server's real-time value, which would be years away
//!   from the model's clock.

use async_trait::async_trait;
use bytes::Bytes;
use glidefs::clock::Clock;
use glidefs::store::{ObjectMeta, ObjectStore, PutCondition, StoreError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

pub struct ClockedStore {
    inner: Arc<dyn ObjectStore>,
    /// Prepended to every key ("" or ending with `/`).
    prefix: String,
    clock: Arc<dyn Clock>,
    /// (key, etag) → clock time (whole seconds, in ms) the version was written.
    written: Mutex<HashMap<(String, String), u64>>,
}

impl ClockedStore {
    /// `inner` seen with keys under `prefix` (`""` for all of it; else ending with
    /// `/`), object times on `clock`.
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        prefix: &str,
        clock: Arc<dyn Clock>,
    ) -> Arc<ClockedStore> {
        assert!(
            prefix.is_empty() || prefix.ends_with('/'),
            "prefix {prefix:?}"
        );
        Arc::new(ClockedStore {
            inner,
            prefix: prefix.to_string(),
            clock,
            written: Mutex::new(HashMap::new()),
        })
    }

    /// Now on the test clock, in whole seconds like S3's Last-Modified.
    fn now(&self) -> u64 {
        self.clock.now_ms() / 1000 * 1000
    }

    fn wrote(&self, key: &str, r: Result<String, StoreError>) -> Result<String, StoreError> {
        if let Ok(etag) = &r {
            let now = self.now();
            self.written
                .lock()
                .insert((key.to_string(), etag.clone()), now);
        }
        r
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// `meta` of the inner store as this view reports it: key without the prefix,
    /// modification time from the clock.
    fn stamp(&self, mut meta: ObjectMeta) -> ObjectMeta {
        if let Some(k) = meta.key.strip_prefix(self.prefix.as_str()) {
            meta.key = k.to_string();
        }
        let now = self.now();
        let t = *self
            .written
            .lock()
            .entry((meta.key.clone(), meta.etag.clone()))
            .or_insert_with(|| {
                tracing::debug!(key = %meta.key, etag = %meta.etag, "clocked: a version not seen written");
                now
            });
        meta.modified_ms = Some(t);
        meta
    }
}

#[async_trait]
impl ObjectStore for ClockedStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        let r = self.inner.put(&self.full(key), data).await;
        self.wrote(key, r)
    }
    async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        cond: PutCondition,
    ) -> Result<String, StoreError> {
        let r = self.inner.put_if(&self.full(key), data, cond).await;
        self.wrote(key, r)
    }
    async fn prepare(&self) -> Result<(), StoreError> {
        self.inner.prepare().await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get(&self.full(key)).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.inner.get_range(&self.full(key), range).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        Ok(self.stamp(self.inner.head(&self.full(key)).await?))
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let all = self.inner.list(&self.full(prefix)).await?;
        Ok(all.into_iter().map(|m| self.stamp(m)).collect())
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(&self.full(key)).await?;
        self.written.lock().retain(|(k, _), _| k != key);
        Ok(())
    }
    fn describe(&self) -> String {
        format!("clocked({}, {})", self.inner.describe(), self.prefix)
    }
}
