//! [`MeteredStore`]: an [`ObjectStore`] decorator that records request counts,
//! outcomes, latency and bytes in the daemon's metrics
//! (`glidefs_store_requests_total{op,result}`, `glidefs_store_request_duration_seconds{op}`,
//! `glidefs_store_bytes_total{direction}`). It changes no behaviour: every call and
//! result passes through untouched.

use super::{ObjectMeta, ObjectStore, PutCondition, StoreError};
use crate::metrics::StoreMetrics;
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

/// Records metrics around every call of the inner store.
pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
    m: StoreMetrics,
}

impl MeteredStore {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, m: StoreMetrics) -> MeteredStore {
        MeteredStore { inner, m }
    }

    fn record<T>(&self, op: &str, start: Instant, r: &Result<T, StoreError>) {
        let result = match r {
            Ok(_) => "ok",
            Err(StoreError::NotFound(_)) => "not_found",
            Err(StoreError::PreconditionFailed(_)) => "precondition_failed",
            Err(_) => "error",
        };
        if let Ok(c) = self.m.requests.get_metric_with_label_values(&[op, result]) {
            c.inc();
        }
        if let Ok(h) = self.m.latency.get_metric_with_label_values(&[op]) {
            h.observe(start.elapsed().as_secs_f64());
        }
    }

    fn bytes(&self, direction: &str, n: usize) {
        if let Ok(c) = self.m.bytes.get_metric_with_label_values(&[direction]) {
            c.inc_by(n as u64);
        }
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        let (n, t) = (data.len(), Instant::now());
        let r = self.inner.put(key, data).await;
        self.record("put", t, &r);
        if r.is_ok() {
            self.bytes("write", n);
        }
        r
    }

    async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        cond: PutCondition,
    ) -> Result<String, StoreError> {
        let (n, t) = (data.len(), Instant::now());
        let r = self.inner.put_if(key, data, cond).await;
        self.record("put_if", t, &r);
        if r.is_ok() {
            self.bytes("write", n);
        }
        r
    }

    async fn prepare(&self) -> Result<(), StoreError> {
        self.inner.prepare().await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let t = Instant::now();
        let r = self.inner.get(key).await;
        self.record("get", t, &r);
        if let Ok(b) = &r {
            self.bytes("read", b.len());
        }
        r
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let t = Instant::now();
        let r = self.inner.get_range(key, range).await;
        self.record("get_range", t, &r);
        if let Ok(b) = &r {
            self.bytes("read", b.len());
        }
        r
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let t = Instant::now();
        let r = self.inner.head(key).await;
        self.record("head", t, &r);
        r
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let t = Instant::now();
        let r = self.inner.list(prefix).await;
        self.record("list", t, &r);
        r
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.inner.delete(key).await;
        self.record("delete", t, &r);
        r
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::MemStore;

    #[test]
    fn counts_requests_outcomes_and_bytes() {
        let m = Metrics::new(true, "v", "s").unwrap();
        let s = MeteredStore::new(Arc::new(MemStore::new()), m.store());
        smol::block_on(async {
            s.put("a/b", Bytes::from_static(b"hello")).await.unwrap();
            assert_eq!(&s.get("a/b").await.unwrap()[..], b"hello");
            assert!(s.get("nope").await.is_err());
        });
        let text = m.render();
        assert!(
            text.contains("glidefs_store_requests_total{op=\"put\",result=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("glidefs_store_requests_total{op=\"get\",result=\"ok\"} 1"));
        assert!(text.contains("glidefs_store_requests_total{op=\"get\",result=\"not_found\"} 1"));
        assert!(text.contains("glidefs_store_bytes_total{direction=\"write\"} 5"));
        assert!(text.contains("glidefs_store_request_duration_seconds_count{op=\"put\"} 1"));
    }
}
