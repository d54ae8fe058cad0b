//! The host's shared cache of ancestors' data: the decoded extents forks read
//! through to their ancestors' segments, held once per host however many forks
//! read them.
//!
//! A fork's sector whose newest copy is an ancestor's extent (and that the fork has
//! not written or cached itself) is read from here, not filled into the fork's own
//! cache file: 32 forks booting from one snapshot fetch each extent from the store
//! once and hold it once. Extents are immutable (a segment never changes), so an
//! entry never goes stale; it is keyed by its segment's key and offset.
//!
//! Invariants: at most one load per extent is in flight (waiters listen on its
//! event; a cancelled load still wakes them); the entries' bytes stay within the
//! capacity (least recently used go first; an extent larger than the whole capacity
//! is returned but not kept); a load that fails caches nothing.

use event_listener::Event;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// (segment key, payload offset): one stored extent.
type Key = (String, u64);

#[derive(Default)]
struct State {
    /// Key → (decoded extent, last use).
    ready: HashMap<Key, (Arc<Vec<u8>>, u64)>,
    /// Last use → key (the eviction order).
    lru: BTreeMap<u64, Key>,
    loading: HashMap<Key, Arc<Event>>,
    bytes: u64,
    tick: u64,
}

/// Counters of the shared cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SharedCacheStats {
    /// Bytes held.
    pub bytes: u64,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Reads served from it.
    pub hits: u64,
    /// Extents loaded from the store into it.
    pub misses: u64,
}

/// The shared cache of one host.
pub struct SharedCache {
    capacity: u64,
    st: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache")
            .field("stats", &self.stats())
            .finish()
    }
}

struct LoadGuard<'a> {
    cache: &'a SharedCache,
    key: Key,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        if let Some(ev) = self.cache.st.lock().loading.remove(&self.key) {
            ev.notify(usize::MAX);
        }
    }
}

impl SharedCache {
    /// A cache of at most `capacity` bytes.
    pub fn new(capacity: u64) -> Arc<SharedCache> {
        Arc::new(SharedCache {
            capacity,
            st: Mutex::new(State::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// Its counters.
    pub fn stats(&self) -> SharedCacheStats {
        SharedCacheStats {
            bytes: self.st.lock().bytes,
            capacity: self.capacity,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Whether the extent at (`seg_key`, `off`) is held or being loaded (readahead
    /// skips it; asking [`extent`](Self::extent) would count a hit).
    pub(crate) fn holds(&self, seg_key: &str, off: u64) -> bool {
        let key = (seg_key.to_owned(), off);
        let st = self.st.lock();
        st.ready.contains_key(&key) || st.loading.contains_key(&key)
    }

    /// The extent at (`seg_key`, `off`), loaded with `load` (GET and verify) if
    /// nobody holds or loads it.
    pub(crate) async fn extent<E, F>(
        &self,
        seg_key: String,
        off: u64,
        load: impl FnOnce() -> F,
    ) -> Result<Arc<Vec<u8>>, E>
    where
        F: Future<Output = Result<Vec<u8>, E>>,
    {
        let key = (seg_key, off);
        loop {
            let waiter = {
                let mut st = self.st.lock();
                st.tick += 1;
                let tick = st.tick;
                if let Some((data, used)) = st.ready.get_mut(&key) {
                    let (data, old) = (data.clone(), std::mem::replace(used, tick));
                    st.lru.remove(&old);
                    st.lru.insert(tick, key.clone());
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(data);
                }
                match st.loading.get(&key) {
                    Some(ev) => Some(ev.listen()),
                    None => {
                        st.loading.insert(key.clone(), Arc::new(Event::new()));
                        None
                    }
                }
            };
            if let Some(l) = waiter {
                l.await;
                continue;
            }
            let guard = LoadGuard {
                cache: self,
                key: key.clone(),
            };
            self.misses.fetch_add(1, Ordering::Relaxed);
            let data = Arc::new(load().await?);
            self.insert(key, data.clone());
            drop(guard);
            return Ok(data);
        }
    }

    fn insert(&self, key: Key, data: Arc<Vec<u8>>) {
        let len = data.len() as u64;
        if len > self.capacity {
            return;
        }
        let mut st = self.st.lock();
        while st.bytes + len > self.capacity {
            let Some((_, k)) = st.lru.pop_first() else {
                break;
            };
            if let Some((d, _)) = st.ready.remove(&k) {
                st.bytes -= d.len() as u64;
            }
        }
        st.tick += 1;
        let tick = st.tick;
        st.lru.insert(tick, key.clone());
        st.bytes += len;
        if let Some((old, used)) = st.ready.insert(key, (data, tick)) {
            st.bytes -= old.len() as u64;
            st.lru.remove(&used);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(c: &SharedCache, seg: &str, off: u64, len: usize) -> Arc<Vec<u8>> {
        smol::block_on(c.extent(seg.to_owned(), off, || async {
            Ok::<_, ()>(vec![off as u8; len])
        }))
        .unwrap_or_default()
    }

    #[test]
    fn holds_each_extent_once_within_its_capacity() {
        let c = SharedCache::new(10);
        get(&c, "a", 1, 4);
        get(&c, "a", 1, 4);
        assert_eq!(
            (c.stats().hits, c.stats().misses, c.stats().bytes),
            (1, 1, 4)
        );
        get(&c, "a", 2, 4);
        // "a"/1 was used last before "a"/2: a third extent evicts it first.
        get(&c, "a", 3, 4);
        assert_eq!(c.stats().bytes, 8);
        get(&c, "a", 2, 4);
        assert_eq!(c.stats().hits, 2);
        get(&c, "a", 1, 4);
        assert_eq!(c.stats().misses, 4, "evicted, loaded again");
        // Larger than the whole cache: served, not kept.
        assert_eq!(get(&c, "b", 9, 11).len(), 11);
        assert!(c.stats().bytes <= 10);
    }

    #[test]
    fn a_failed_load_caches_nothing() {
        let c = SharedCache::new(100);
        let r = smol::block_on(c.extent("x".to_owned(), 0, || async { Err::<Vec<u8>, _>("down") }));
        assert_eq!(r, Err("down"));
        assert_eq!(get(&c, "x", 0, 3).len(), 3);
        assert_eq!(c.stats().misses, 2);
    }
}
