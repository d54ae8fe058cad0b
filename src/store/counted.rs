//! [`CountedStore`]: an [`ObjectStore`] decorator that counts one user's requests
//! and bytes into a shared [`StoreTraffic`]. The volume engine wraps its store in
//! one at open, so every request a volume makes (meta, lease, segments, manifests,
//! fetches, GC) is counted per export; [`super::metered::MeteredStore`] keeps the
//! daemon-wide view with outcomes and latency.
//!
//! Invariants: it changes no behaviour (every call and result passes through); a
//! request is counted when it is made, whatever its outcome (a failed request is
//! still a request the provider bills); bytes are counted only when they moved
//! (a PUT that succeeded, a GET that returned data). A store layer below this one
//! may retry a call; such retries are not seen here.

use super::{ObjectMeta, ObjectStore, PutCondition, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Running totals of one user's store requests.
#[derive(Debug, Default)]
pub struct StoreTraffic {
    puts: AtomicU64,
    gets: AtomicU64,
    heads: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    bytes_written: AtomicU64,
    bytes_read: AtomicU64,
}

/// A snapshot of [`StoreTraffic`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrafficCounts {
    /// PUT requests, conditional or not.
    pub puts: u64,
    /// GET requests, whole or ranged.
    pub gets: u64,
    /// HEAD requests.
    pub heads: u64,
    /// LIST requests (one per `list` call; a store may page internally).
    pub lists: u64,
    /// DELETE requests.
    pub deletes: u64,
    /// Bytes of objects written by successful PUTs.
    pub bytes_written: u64,
    /// Bytes returned by successful GETs.
    pub bytes_read: u64,
}

impl TrafficCounts {
    /// Every request, of any kind.
    pub fn requests(&self) -> u64 {
        self.puts + self.gets + self.heads + self.lists + self.deletes
    }

    /// `(op label, count)` per request kind, in a fixed order (the metrics' `op`).
    pub fn by_op(&self) -> [(&'static str, u64); 5] {
        [
            ("put", self.puts),
            ("get", self.gets),
            ("head", self.heads),
            ("list", self.lists),
            ("delete", self.deletes),
        ]
    }

    /// The sum of two snapshots (saturating).
    pub fn plus(&self, o: &TrafficCounts) -> TrafficCounts {
        TrafficCounts {
            puts: self.puts.saturating_add(o.puts),
            gets: self.gets.saturating_add(o.gets),
            heads: self.heads.saturating_add(o.heads),
            lists: self.lists.saturating_add(o.lists),
            deletes: self.deletes.saturating_add(o.deletes),
            bytes_written: self.bytes_written.saturating_add(o.bytes_written),
            bytes_read: self.bytes_read.saturating_add(o.bytes_read),
        }
    }
}

impl StoreTraffic {
    /// The totals so far.
    pub fn snapshot(&self) -> TrafficCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TrafficCounts {
            puts: l(&self.puts),
            gets: l(&self.gets),
            heads: l(&self.heads),
            lists: l(&self.lists),
            deletes: l(&self.deletes),
            bytes_written: l(&self.bytes_written),
            bytes_read: l(&self.bytes_read),
        }
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Counts the requests made through it into a [`StoreTraffic`].
pub struct CountedStore {
    inner: Arc<dyn ObjectStore>,
    traffic: Arc<StoreTraffic>,
}

impl CountedStore {
    /// Wrap `inner`, counting into `traffic`.
    pub fn new(inner: Arc<dyn ObjectStore>, traffic: Arc<StoreTraffic>) -> CountedStore {
        CountedStore { inner, traffic }
    }

    fn wrote<T>(&self, n: usize, r: &Result<T, StoreError>) {
        add(&self.traffic.puts, 1);
        if r.is_ok() {
            add(&self.traffic.bytes_written, n as u64);
        }
    }

    fn read(&self, r: &Result<Bytes, StoreError>) {
        add(&self.traffic.gets, 1);
        if let Ok(b) = r {
            add(&self.traffic.bytes_read, b.len() as u64);
        }
    }
}

#[async_trait]
impl ObjectStore for CountedStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        let n = data.len();
        let r = self.inner.put(key, data).await;
        self.wrote(n, &r);
        r
    }

    async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        cond: PutCondition,
    ) -> Result<String, StoreError> {
        let n = data.len();
        let r = self.inner.put_if(key, data, cond).await;
        self.wrote(n, &r);
        r
    }

    async fn prepare(&self) -> Result<(), StoreError> {
        self.inner.prepare().await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let r = self.inner.get(key).await;
        self.read(&r);
        r
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let r = self.inner.get_range(key, range).await;
        self.read(&r);
        r
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        add(&self.traffic.heads, 1);
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        add(&self.traffic.lists, 1);
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        add(&self.traffic.deletes, 1);
        self.inner.delete(key).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn counts_every_request_and_only_the_bytes_that_moved() {
        let t = Arc::new(StoreTraffic::default());
        let s = CountedStore::new(Arc::new(MemStore::new()), t.clone());
        smol::block_on(async {
            s.put("a/b", Bytes::from_static(b"hello")).await.unwrap();
            // A lost condition is a request but moves no bytes.
            let lost = s
                .put_if("a/b", Bytes::from_static(b"xx"), PutCondition::IfAbsent)
                .await;
            assert!(matches!(lost, Err(StoreError::PreconditionFailed(_))));
            assert_eq!(&s.get_range("a/b", 1..3).await.unwrap()[..], b"el");
            assert!(s.get("nope").await.is_err());
            s.head("a/b").await.unwrap();
            s.list("a/").await.unwrap();
            s.delete("a/b").await.unwrap();
        });
        let c = t.snapshot();
        assert_eq!(
            c,
            TrafficCounts {
                puts: 2,
                gets: 2,
                heads: 1,
                lists: 1,
                deletes: 1,
                bytes_written: 5,
                bytes_read: 2,
            }
        );
        assert_eq!(c.requests(), 7);
    }
}
