//! Cache misses: fetch one block's entry from the store (ranged GET), verify it,
//! and fill the block's not-yet-valid sectors in the cache file.
//!
//! Invariants: at most one fetch per block is in flight (`State::fetching`; waiters
//! listen on its event, and a cancelled fetch still wakes them via [`FetchGuard`]);
//! only invalid sectors are filled, under the state lock, so a concurrent write is
//! never overwritten; a checksum mismatch is an error plus a counter, never data.

use super::blockmap::{Loc, FULL, SECTORS_PER_BLOCK};
use super::segment;
use super::{bump, Inner, VolumeError, BS, SS};
use crate::store::StoreError;
use event_listener::Event;
use std::sync::Arc;

struct FetchGuard<'a> {
    inner: &'a Inner,
    b: u64,
}

impl Drop for FetchGuard<'_> {
    fn drop(&mut self) {
        let ev = self.inner.st.lock().fetching.remove(&self.b);
        if let Some(ev) = ev {
            ev.notify(usize::MAX);
        }
    }
}

/// GET and decode one committed block copy (with retries for transient errors).
pub(crate) async fn get_block(inner: &Inner, b: u64, loc: &Loc) -> Result<Vec<u8>, VolumeError> {
    let key = inner.keys.segment(loc.seq);
    let attempts = inner.cfg.read_attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match inner
            .store
            .get_range(&key, loc.off..loc.off + u64::from(loc.len))
            .await
        {
            Ok(bytes) => {
                bump(&inner.stats.bytes_fetched, bytes.len() as u64);
                return segment::decode_payload(loc, &bytes).map_err(|m| {
                    bump(&inner.stats.checksum_errors, 1);
                    tracing::error!(volume = %inner.cfg.name, block = b, %key, %m, "stored block failed verification");
                    VolumeError::Checksum(format!("block {b} in {key}: {m}"))
                });
            }
            Err(e @ (StoreError::Unavailable(_) | StoreError::Io { .. })) if attempt < attempts => {
                tracing::warn!(volume = %inner.cfg.name, block = b, error = %e, "miss fetch failed; retrying");
                smol::Timer::after(inner.backoff(attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Make every sector of block `b` valid from the store copy. Returns without
/// change if the block is fully valid or absent from the store (zeros).
pub(crate) async fn fetch_block(inner: &Inner, b: u64) -> Result<(), VolumeError> {
    loop {
        let (loc, waiter) = {
            let mut st = inner.st.lock();
            if st.local.get(b).valid == FULL {
                return Ok(());
            }
            let Some(loc) = st.store.map.get(&b).copied() else {
                return Ok(());
            };
            match st.fetching.get(&b) {
                Some(ev) => (loc, Some(ev.listen())),
                None => {
                    st.fetching.insert(b, Arc::new(Event::new()));
                    (loc, None)
                }
            }
        };
        if let Some(l) = waiter {
            l.await;
            continue;
        }
        let guard = FetchGuard { inner, b };
        let res = get_block(inner, b, &loc).await;
        let block = match res {
            Ok(v) => v,
            Err(VolumeError::Store(StoreError::NotFound(_)))
                if inner.st.lock().store.map.get(&b) != Some(&loc) =>
            {
                // The segment was superseded and collected meanwhile: look again.
                drop(guard);
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut st = inner.st.lock();
        if st.store.map.get(&b) != Some(&loc) {
            drop(st);
            drop(guard);
            continue;
        }
        let inval = FULL & !st.local.get(b).valid;
        let mut s = 0;
        while s < SECTORS_PER_BLOCK {
            if inval & (1 << s) == 0 {
                s += 1;
                continue;
            }
            let start = s;
            while s < SECTORS_PER_BLOCK && inval & (1 << s) != 0 {
                s += 1;
            }
            let (a, e) = (start * SS as usize, s * SS as usize);
            inner
                .data
                .write_at(&block[a..e], b * BS + a as u64)
                .map_err(|e| inner.fail("cache fill", e))?;
        }
        st.local.mark_filled(b, inval);
        drop(st);
        drop(guard);
        return Ok(());
    }
}

/// Make block `b` fully valid for an upload: fetch the stored copy, or zero-fill
/// (punch) the invalid sectors of a block absent from the store.
pub(crate) async fn make_fully_valid(inner: &Inner, b: u64) -> Result<(), VolumeError> {
    loop {
        {
            let mut st = inner.st.lock();
            let valid = st.local.get(b).valid;
            if valid == FULL {
                return Ok(());
            }
            if !st.store.map.contains_key(&b) {
                let inval = FULL & !valid;
                let mut s = 0;
                while s < SECTORS_PER_BLOCK {
                    if inval & (1 << s) == 0 {
                        s += 1;
                        continue;
                    }
                    let start = s;
                    while s < SECTORS_PER_BLOCK && inval & (1 << s) != 0 {
                        s += 1;
                    }
                    inner
                        .data
                        .punch_hole(b * BS + start as u64 * SS, (s - start) as u64 * SS)
                        .map_err(|e| inner.fail("punch hole", e))?;
                }
                st.local.mark_filled(b, inval);
                return Ok(());
            }
        }
        fetch_block(inner, b).await?;
    }
}
