//! What the engine benchmarks in examples/ share: knobs from the environment and a
//! store whose GETs wait a modelled latency (an S3 first byte). Included by each
//! example with `mod support;` (not an example of its own: no main).

use async_trait::async_trait;
use bytes::Bytes;
use glidefs::store::{ObjectMeta, ObjectStore, PutCondition, StoreError};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// The number in environment variable `name`, or `default`.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every GET waits `ms` first (the store's latency), then goes to `inner`.
pub struct Latency {
    /// The store underneath.
    pub inner: Arc<dyn ObjectStore>,
    /// Milliseconds each GET waits.
    pub ms: u64,
}

#[async_trait]
impl ObjectStore for Latency {
    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        self.inner.put(key, data).await
    }
    async fn put_if(&self, key: &str, data: Bytes, c: PutCondition) -> Result<String, StoreError> {
        self.inner.put_if(key, data, c).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        smol::Timer::after(Duration::from_millis(self.ms)).await;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        smol::Timer::after(Duration::from_millis(self.ms)).await;
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        format!("latency {} ms over {}", self.ms, self.inner.describe())
    }
}
