//! `MemStore`: an in-memory [`ObjectStore`] for unit tests of other modules.
//!
//! A `BTreeMap` behind one mutex, so every operation (including the check and the
//! write of `put_if`) is atomic. Etags are a per-store write counter: every write gets
//! a fresh etag. `set_offline(true)` makes every operation fail with
//! [`StoreError::Unavailable`] to simulate an outage; counters let tests see traffic.
//! Objects carry a modification time from the store's own clock (injectable with
//! [`MemStore::with_clock`]), as S3's Last-Modified does.

use super::{validate_key, validate_prefix, ObjectMeta, ObjectStore, PutCondition, StoreError};
use crate::clock::{Clock, SystemClock};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Default)]
struct Inner {
    /// key → (bytes, etag, modified_ms on the store's clock).
    objects: BTreeMap<String, (Bytes, String, u64)>,
    next_gen: u64,
}

/// In-memory object store (tests and examples).
pub struct MemStore {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
    offline: AtomicBool,
    puts: AtomicU64,
    gets: AtomicU64,
}

/// Clamp `range` to an object of `len` bytes (end exclusive; empty if out of bounds).
pub(crate) fn clamp_range(range: &Range<u64>, len: u64) -> Range<usize> {
    let end = range.end.min(len);
    let start = range.start.min(end);
    // Both are <= len, which is a usize-sized in-memory length here.
    start as usize..end as usize
}

impl Default for MemStore {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose object modification times come from `clock` (the
    /// store's clock in simulations with skewed host clocks).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemStore {
            inner: Mutex::default(),
            clock,
            offline: AtomicBool::new(false),
            puts: AtomicU64::new(0),
            gets: AtomicU64::new(0),
        }
    }

    /// While `true`, every operation fails with [`StoreError::Unavailable`].
    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
    }

    /// Number of successful `put`/`put_if` calls so far.
    pub fn put_count(&self) -> u64 {
        self.puts.load(Ordering::SeqCst)
    }

    /// Number of successful `get`/`get_range` calls so far.
    pub fn get_count(&self) -> u64 {
        self.gets.load(Ordering::SeqCst)
    }

    /// Replace an object's bytes without changing its etag (corruption tests).
    pub fn corrupt(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        match inner.objects.get_mut(key) {
            Some(obj) => {
                obj.0 = data;
                Ok(())
            }
            None => Err(StoreError::NotFound(key.to_owned())),
        }
    }

    fn check_online(&self, key: &str) -> Result<(), StoreError> {
        if self.offline.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(format!(
                "MemStore is offline ({key})"
            )));
        }
        Ok(())
    }

    fn write(
        &self,
        key: &str,
        data: Bytes,
        cond: Option<PutCondition>,
    ) -> Result<String, StoreError> {
        validate_key(key)?;
        self.check_online(key)?;
        let mut inner = self.inner.lock();
        let current = inner.objects.get(key).map(|(_, etag, _)| etag.as_str());
        let ok = match (&cond, current) {
            (None, _) => true,
            (Some(PutCondition::IfAbsent), cur) => cur.is_none(),
            (Some(PutCondition::IfMatch(want)), Some(cur)) => cur == want,
            (Some(PutCondition::IfMatch(_)), None) => false,
        };
        if !ok {
            return Err(StoreError::PreconditionFailed(key.to_owned()));
        }
        inner.next_gen += 1;
        let etag = format!("mem-{:016x}", inner.next_gen);
        // Whole seconds, like S3's Last-Modified.
        let modified = self.clock.now_ms() / 1000 * 1000;
        inner
            .objects
            .insert(key.to_owned(), (data, etag.clone(), modified));
        self.puts.fetch_add(1, Ordering::SeqCst);
        Ok(etag)
    }
}

#[async_trait]
impl ObjectStore for MemStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        self.write(key, data, None)
    }

    async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        cond: PutCondition,
    ) -> Result<String, StoreError> {
        self.write(key, data, Some(cond))
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.get_range(key, 0..u64::MAX).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        self.check_online(key)?;
        let inner = self.inner.lock();
        let (data, _, _) = inner
            .objects
            .get(key)
            .ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
        let r = clamp_range(&range, data.len() as u64);
        self.gets.fetch_add(1, Ordering::SeqCst);
        Ok(data.slice(r))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        validate_key(key)?;
        self.check_online(key)?;
        let inner = self.inner.lock();
        let (data, etag, modified) = inner
            .objects
            .get(key)
            .ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: data.len() as u64,
            etag: etag.clone(),
            modified_ms: Some(*modified),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        validate_prefix(prefix)?;
        self.check_online(prefix)?;
        let inner = self.inner.lock();
        Ok(inner
            .objects
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (data, etag, modified))| ObjectMeta {
                key: k.clone(),
                size: data.len() as u64,
                etag: etag.clone(),
                modified_ms: Some(*modified),
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        self.check_online(key)?;
        self.inner.lock().objects.remove(key);
        Ok(())
    }

    fn describe(&self) -> String {
        "mem:".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_puts_and_offline() {
        smol::block_on(async {
            let s = MemStore::new();
            let e1 = s
                .put_if("a/b", Bytes::from_static(b"1"), PutCondition::IfAbsent)
                .await
                .unwrap();
            assert!(matches!(
                s.put_if("a/b", Bytes::from_static(b"2"), PutCondition::IfAbsent)
                    .await,
                Err(StoreError::PreconditionFailed(_))
            ));
            let e2 = s
                .put_if(
                    "a/b",
                    Bytes::from_static(b"2"),
                    PutCondition::IfMatch(e1.clone()),
                )
                .await
                .unwrap();
            assert_ne!(e1, e2);
            assert!(matches!(
                s.put_if("a/b", Bytes::from_static(b"3"), PutCondition::IfMatch(e1))
                    .await,
                Err(StoreError::PreconditionFailed(_))
            ));
            assert_eq!(s.get("a/b").await.unwrap(), Bytes::from_static(b"2"));
            assert_eq!(
                s.get_range("a/b", 0..10).await.unwrap(),
                Bytes::from_static(b"2")
            );
            assert_eq!(s.list("a/").await.unwrap().len(), 1);
            assert!(s.list("b").await.unwrap().is_empty());
            s.set_offline(true);
            assert!(matches!(
                s.get("a/b").await,
                Err(StoreError::Unavailable(_))
            ));
            s.set_offline(false);
            s.delete("a/b").await.unwrap();
            s.delete("a/b").await.unwrap();
            assert!(matches!(s.head("a/b").await, Err(StoreError::NotFound(_))));
        });
    }
}
