//! The data path of a volume: request checks, read, write, write-zeroes/discard.
//!
//! Reads and writes are split at block boundaries. Writes: cache pwrite, journal
//! record (when a sector becomes dirty) and map update under the state lock, before
//! the acknowledgement; a partial 4 KiB sector not yet cached is merged with the
//! stored sector (fetched first) or zeros (block absent from the store). Reads (the
//! blocks of one request concurrently): valid sectors from the cache, absent blocks
//! as zeros, others fetched (fetch.rs). Writes wait, never fail, while dirty data
//! exceeds the dirty limit.

use super::blockmap::mask;
use super::journal::Record;
use super::{bump, fetch, Inner, Volume, VolumeError, BS, SS};
use crate::{BLOCK_SIZE, LOGICAL_BLOCK_SIZE, SECTOR_SIZE};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Blocks a write-zeroes/discard handles before it lets other tasks of its thread run
/// (each costs a hole punch and a journal record).
const ZERO_BLOCKS_PER_YIELD: u32 = 8;

impl Volume {
    pub(super) fn check_req(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.inner.check_live()?;
        let a = LOGICAL_BLOCK_SIZE as u64;
        if !offset.is_multiple_of(a) || !len.is_multiple_of(a) {
            return Err(VolumeError::Invalid(format!(
                "request offset {offset} len {len} not {a}-byte aligned"
            )));
        }
        let size = self.size_bytes();
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(VolumeError::Invalid(format!(
                "request offset {offset} len {len} beyond size {size}"
            )));
        }
        Ok(())
    }

    /// Read `buf.len()` bytes at `offset`.
    /// The blocks of one request are read concurrently: a cold sequential read
    /// costs one round of GETs per request, not one per block.
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.check_req(offset, buf.len() as u64)?;
        super::readahead::note_read(&self.inner, offset, buf.len() as u64);
        let (b, in_blk) = (offset / BS, (offset % BS) as usize);
        if in_blk + buf.len() <= BLOCK_SIZE {
            return self.read_in_block(b, in_blk, buf).await;
        }
        let mut parts = Vec::new();
        let (mut rest, mut off) = (buf, offset);
        while !rest.is_empty() {
            let (b, in_blk) = (off / BS, (off % BS) as usize);
            let n = (BLOCK_SIZE - in_blk).min(rest.len());
            let (part, tail) = std::mem::take(&mut rest).split_at_mut(n);
            parts.push(self.read_in_block(b, in_blk, part));
            (rest, off) = (tail, off + n as u64);
        }
        crate::parallel::join_all(parts).await.into_iter().collect()
    }

    /// The cache file, when every sector of `[offset, offset+len)` is valid in it
    /// (it holds them at the same offsets): the data plane may then copy the read
    /// from it directly. Counts the read (cache hits, readahead) as [`Volume::read`]
    /// does. `None` when any sector is missing, the request is invalid (the ordinary
    /// read then reports why) or the cache is not an OS file.
    pub fn cached_file(&self, offset: u64, len: u64) -> Option<Arc<std::fs::File>> {
        if len == 0 || self.check_req(offset, len).is_err() {
            return None;
        }
        let file = self.inner.data.os_file()?;
        let (first, last) = (offset / BS, (offset + len - 1) / BS);
        {
            let st = self.inner.st.lock();
            for b in first..=last {
                let a = if b == first {
                    (offset % BS) as usize
                } else {
                    0
                };
                let e = if b == last {
                    ((offset + len - 1) % BS) as usize + 1
                } else {
                    BLOCK_SIZE
                };
                let need = mask(a / SECTOR_SIZE, e.div_ceil(SECTOR_SIZE) - a / SECTOR_SIZE);
                if st.local.get(b).valid & need != need {
                    return None;
                }
            }
        }
        super::readahead::note_read(&self.inner, offset, len);
        bump(&self.inner.stats.cache_hits, last - first + 1);
        Some(file)
    }

    async fn read_in_block(
        &self,
        b: u64,
        in_blk: usize,
        out: &mut [u8],
    ) -> Result<(), VolumeError> {
        let inner = &self.inner;
        let s0 = in_blk / SECTOR_SIZE;
        let s1 = (in_blk + out.len()).div_ceil(SECTOR_SIZE);
        let need = mask(s0, s1 - s0);
        let file_off = b * BS + in_blk as u64;
        let mut missed = false;
        loop {
            let (valid, in_store) = {
                let st = inner.st.lock();
                (st.local.get(b).valid, st.store.map.contains_key(&b))
            };
            if valid & need == need {
                inner
                    .data
                    .read_at(out, file_off)
                    .map_err(|e| inner.fail("cache read", e))?;
            } else if !in_store {
                // Sectors not cached and absent from the store are zeros.
                for s in s0..s1 {
                    let a = (s * SECTOR_SIZE).max(in_blk) - in_blk;
                    let e = ((s + 1) * SECTOR_SIZE).min(in_blk + out.len()) - in_blk;
                    if valid & (1 << s) != 0 {
                        inner
                            .data
                            .read_at(&mut out[a..e], file_off + a as u64)
                            .map_err(|e| inner.fail("cache read", e))?;
                    } else {
                        out[a..e].fill(0);
                    }
                }
            } else {
                missed = true;
                if fetch::read_shared(inner, b, in_blk, out, need).await? {
                    bump(&inner.stats.cache_misses, 1);
                    return Ok(());
                }
                fetch::fetch_block(inner, b, need).await?;
                continue;
            }
            let c = if missed {
                &inner.stats.cache_misses
            } else {
                &inner.stats.cache_hits
            };
            bump(c, 1);
            return Ok(());
        }
    }

    async fn wait_dirty_room(&self, len: u64) -> Result<(), VolumeError> {
        let inner = &self.inner;
        let limit = inner.cfg.dirty_limit_bytes;
        let room = |inner: &Inner| {
            let d = inner.st.lock().local.dirty_sectors * SS;
            d == 0 || d + len <= limit
        };
        while !room(inner) {
            inner.check_live()?;
            let l = inner.changed.listen();
            inner.kick();
            if room(inner) {
                break;
            }
            l.await;
        }
        Ok(())
    }

    /// Write `data` at `offset`; with `fua`, durable (per the flush mode) on return.
    /// Waits (never fails) while the dirty limit is exceeded.
    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), VolumeError> {
        self.check_req(offset, data.len() as u64)?;
        self.inner.check_lease_time()?;
        if data.is_empty() {
            return Ok(());
        }
        self.wait_dirty_room(data.len() as u64).await?;
        let mut pos = 0usize;
        let mut ticket = 0;
        while pos < data.len() {
            let off = offset + pos as u64;
            let (b, in_blk) = (off / BS, (off % BS) as usize);
            let n = (BLOCK_SIZE - in_blk).min(data.len() - pos);
            ticket = self.write_in_block(b, in_blk, &data[pos..pos + n]).await?;
            pos += n;
        }
        // The records must be in the journal file before the acknowledgement.
        self.inner.journal_commit(ticket).await?;
        bump(&self.inner.stats.client_bytes_written, data.len() as u64);
        self.inner.note_dirtied();
        // Start flushing early, before writers have to wait at the limit.
        let dirty = self.inner.st.lock().local.dirty_sectors * SS;
        if dirty >= self.inner.cfg.dirty_limit_bytes / 2
            && !self.inner.kick_flag.load(Ordering::Relaxed)
        {
            self.inner.kick();
        }
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    /// Write one block's part; returns the journal ticket to wait for.
    async fn write_in_block(
        &self,
        b: u64,
        in_blk: usize,
        chunk: &[u8],
    ) -> Result<u64, VolumeError> {
        let inner = &self.inner;
        let s0 = in_blk / SECTOR_SIZE;
        let end = in_blk + chunk.len();
        let s1 = end.div_ceil(SECTOR_SIZE);
        if in_blk.is_multiple_of(SECTOR_SIZE) && end.is_multiple_of(SECTOR_SIZE) {
            let mut st = inner.st.lock();
            return inner.commit_write(&mut st, b, s0, chunk);
        }
        // Partial sectors at the edges: merge with the cached (or stored) sector.
        let mut partial = vec![s0];
        if s1 - 1 != s0 {
            partial.push(s1 - 1);
        }
        partial.retain(|&s| s * SECTOR_SIZE < in_blk || (s + 1) * SECTOR_SIZE > end);
        loop {
            {
                let mut st = inner.st.lock();
                let valid = st.local.get(b).valid;
                let in_store = st.store.map.contains_key(&b);
                let need_fetch = in_store && partial.iter().any(|&s| valid & (1 << s) == 0);
                if !need_fetch {
                    let base = s0 * SECTOR_SIZE;
                    let mut buf = vec![0u8; (s1 - s0) * SECTOR_SIZE];
                    for &s in &partial {
                        if valid & (1 << s) != 0 {
                            let r = s * SECTOR_SIZE - base;
                            inner
                                .data
                                .read_at(
                                    &mut buf[r..r + SECTOR_SIZE],
                                    b * BS + (s * SECTOR_SIZE) as u64,
                                )
                                .map_err(|e| inner.fail("cache read", e))?;
                        }
                    }
                    buf[in_blk - base..end - base].copy_from_slice(chunk);
                    return inner.commit_write(&mut st, b, s0, &buf);
                }
            }
            let need = partial.iter().fold(0u32, |m, &s| m | 1 << s);
            fetch::fetch_block(inner, b, need).await?;
        }
    }

    /// Discard: the range reads back as zeros (holes punched locally; zero blocks
    /// are committed as zero entries without data).
    pub async fn discard(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.write_zeroes(offset, len).await
    }

    /// Write zeros over `[offset, offset+len)`.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.check_req(offset, len)?;
        self.inner.check_lease_time()?;
        let end = offset + len;
        let a = offset.div_ceil(SS) * SS;
        let z = (end / SS) * SS;
        if a >= z {
            let zeros = vec![0u8; len as usize];
            return self.write(offset, &zeros, false).await;
        }
        if a > offset {
            self.write(offset, &vec![0u8; (a - offset) as usize], false)
                .await?;
        }
        if z < end {
            self.write(z, &vec![0u8; (end - z) as usize], false).await?;
        }
        let inner = &self.inner;
        let mut pos = a;
        let mut blocks = 0u32;
        while pos < z {
            // The kernel sends discards of up to 4 GiB: give the worker's executor back
            // every few blocks so its other requests and devices are not starved.
            blocks += 1;
            if blocks.is_multiple_of(ZERO_BLOCKS_PER_YIELD) {
                smol::future::yield_now().await;
            }
            let b = pos / BS;
            let n = (BS - pos % BS).min(z - pos);
            let s0 = ((pos % BS) / SS) as usize;
            let cnt = (n / SS) as usize;
            let mut st = inner.st.lock();
            let cached = st.local.get(b).valid != 0;
            if cached || st.store.map.contains_key(&b) {
                inner
                    .data
                    .punch_hole(pos, n)
                    .map_err(|e| inner.fail("punch hole", e))?;
                st.journal
                    .append(&Record::Zero {
                        first: pos / SS,
                        count: cnt as u32,
                    })
                    .map_err(|e| inner.fail("journal append", e))?;
                st.write_seq += 1;
                let ws = st.write_seq;
                st.local.mark_written(b, mask(s0, cnt), ws);
            }
            drop(st);
            pos += n;
        }
        inner.note_dirtied();
        Ok(())
    }
}
