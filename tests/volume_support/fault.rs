//! A fault-injecting view of one shared store, one per simulated host: partitions,
//! PUTs the client gives up on that land later ("delayed"), PUTs that commit but
//! report failure, duplicated PUTs. Deterministic: nothing happens on a timer; the
//! test decides when delayed PUTs land.

use async_trait::async_trait;
use bytes::Bytes;
use glidefs::store::{ObjectMeta, ObjectStore, PutCondition, StoreError};
use parking_lot::Mutex;
use std::ops::Range;
use std::sync::Arc;

/// What happens to this host's next writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Pass through.
    #[default]
    Normal,
    /// Every operation fails with Unavailable (network partition).
    Partitioned,
    /// Writes of keys containing `filter` are queued (to land at `release`) and fail
    /// with Unavailable now; other operations pass.
    Delay,
    /// Writes of matching keys commit, then report Unavailable.
    CommitThenFail,
    /// Writes of matching keys are applied twice (a duplicated request).
    Duplicate,
    /// Deletes of matching keys fail with Unavailable; everything else passes.
    FailDeletes,
}

/// A queued write.
#[derive(Clone)]
pub struct Delayed {
    pub key: String,
    pub data: Bytes,
    pub cond: Option<PutCondition>,
}

pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    mode: Mutex<Mode>,
    filter: Mutex<String>,
    delayed: Mutex<Vec<Delayed>>,
}

impl FaultStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<FaultStore> {
        Arc::new(FaultStore {
            inner,
            mode: Mutex::new(Mode::Normal),
            filter: Mutex::new(String::new()),
            delayed: Mutex::new(Vec::new()),
        })
    }
    /// Set the mode for keys containing `filter` ("" = every key).
    pub fn set(&self, mode: Mode, filter: &str) {
        *self.mode.lock() = mode;
        *self.filter.lock() = filter.to_string();
    }
    pub fn delayed_count(&self) -> usize {
        self.delayed.lock().len()
    }
    /// Land every delayed write now (in order), ignoring their outcome, as a late
    /// request would.
    pub async fn release(&self) -> usize {
        let all: Vec<Delayed> = std::mem::take(&mut *self.delayed.lock());
        let n = all.len();
        for d in all {
            let _ = match d.cond {
                None => self.inner.put(&d.key, d.data).await,
                Some(c) => self.inner.put_if(&d.key, d.data, c).await,
            };
        }
        n
    }
    /// Drop delayed writes (they never land).
    pub fn forget(&self) {
        self.delayed.lock().clear();
    }
    fn down(&self, key: &str) -> Result<(), StoreError> {
        if *self.mode.lock() == Mode::Partitioned {
            return Err(StoreError::Unavailable(format!("partitioned ({key})")));
        }
        Ok(())
    }
    fn matches(&self, key: &str) -> Option<Mode> {
        let m = *self.mode.lock();
        (key.contains(self.filter.lock().as_str())).then_some(m)
    }
    async fn write(
        &self,
        key: &str,
        data: Bytes,
        cond: Option<PutCondition>,
    ) -> Result<String, StoreError> {
        self.down(key)?;
        let run = |d: Bytes| {
            let c = cond.clone();
            let inner = self.inner.clone();
            let key = key.to_string();
            async move {
                match c {
                    None => inner.put(&key, d).await,
                    Some(c) => inner.put_if(&key, d, c).await,
                }
            }
        };
        match self.matches(key) {
            Some(Mode::Delay) => {
                self.delayed.lock().push(Delayed {
                    key: key.to_string(),
                    data,
                    cond,
                });
                Err(StoreError::Unavailable(format!("delayed ({key})")))
            }
            Some(Mode::CommitThenFail) => {
                // The request commits, its reply is lost (a retry then sees the
                // object: If-None-Match fails, If-Match finds a new etag).
                run(data).await?;
                Err(StoreError::Unavailable(format!("lost reply ({key})")))
            }
            Some(Mode::Duplicate) => {
                let r = run(data.clone()).await;
                let _ = run(data).await;
                r
            }
            _ => run(data).await,
        }
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        self.write(key, data, None).await
    }
    async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        cond: PutCondition,
    ) -> Result<String, StoreError> {
        self.write(key, data, Some(cond)).await
    }
    async fn prepare(&self) -> Result<(), StoreError> {
        self.down("")?;
        self.inner.prepare().await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.down(key)?;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.down(key)?;
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.down(key)?;
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.down(prefix)?;
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.down(key)?;
        if self.matches(key) == Some(Mode::FailDeletes) {
            return Err(StoreError::Unavailable(format!("delete refused ({key})")));
        }
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        format!("fault({})", self.inner.describe())
    }
}
