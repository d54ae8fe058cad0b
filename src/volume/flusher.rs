//! The background flusher (one task per volume on smol's global executor).
//!
//! Loop: wait for a kick (drain, dirty limit) or `flush_interval`; renew the lease
//! when due; upload every dirty block in batches of `max_segment_bytes`, one
//! segment per batch; on failure retry with exponential backoff plus jitter while
//! writes keep landing locally; after success write a manifest every
//! `checkpoint_every` segments (then garbage-collect dead segments and older
//! manifests) and compact the journal when it grew past `journal_compact_bytes`.
//!
//! Commit protocol of one batch: make each block fully valid (fetch or zero-fill) →
//! snapshot generations → read and encode → fencing check of the lease → PUT the
//! segment if-absent (the commit point) → mark blocks whose generation did not change
//! clean and journal a CLEAN record; rewritten blocks stay dirty.

use super::background_cpu;
use super::blockmap::FULL;
use super::fetch;
use super::fileio;
use super::journal::{self, Journal, LocalState, Record};
use super::lease;
use super::manifest;
use super::segment;
use super::{bump, Inner, VolumeError, BS};
use crate::store::{PutCondition, StoreError};
use crate::BLOCK_SIZE;
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Start the flusher of a volume.
pub(crate) fn spawn(inner: Arc<Inner>) -> smol::Task<()> {
    smol::spawn(run(inner))
}

async fn run(inner: Arc<Inner>) {
    let mut failures = 0u32;
    loop {
        if failures > 0 {
            smol::Timer::after(inner.backoff(failures)).await;
        } else {
            let l = inner.kick.listen();
            if !inner.kick_flag.swap(false, Ordering::AcqRel) {
                let interval = inner.cfg.flush_interval;
                futures_lite::future::or(l, async {
                    smol::Timer::after(interval).await;
                })
                .await;
                inner.kick_flag.store(false, Ordering::Release);
            }
        }
        if inner.bg_stop.load(Ordering::Acquire) || inner.failed.load(Ordering::Acquire) {
            return;
        }
        let r = cycle(&inner).await;
        match r {
            Ok(()) => failures = 0,
            Err(VolumeError::Fenced(m)) => {
                inner.set_fenced(m);
                return;
            }
            Err(_) if inner.bg_stop.load(Ordering::Acquire) => return,
            Err(e) => {
                failures = failures.saturating_add(1);
                bump(&inner.stats.flush_errors, 1);
                tracing::warn!(volume = %inner.cfg.name, error = %e, failures, "flush failed; will retry");
                if inner.failed.load(Ordering::Acquire) {
                    return;
                }
            }
        }
    }
}

async fn cycle(inner: &Arc<Inner>) -> Result<(), VolumeError> {
    renew_if_due(inner).await?;
    let dirty: Vec<u64> = inner.st.lock().local.dirty_set.iter().copied().collect();
    let per = ((inner.cfg.max_segment_bytes / BS).max(1)) as usize;
    for batch in dirty.chunks(per) {
        inner.check_bg()?;
        flush_batch(inner, batch).await?;
    }
    if !dirty.is_empty() {
        maybe_manifest(inner).await?;
    }
    let jsize = inner.st.lock().journal.size();
    if jsize > inner.cfg.journal_compact_bytes {
        checkpoint_local(inner, false, true).await?;
    }
    Ok(())
}

async fn renew_if_due(inner: &Inner) -> Result<(), VolumeError> {
    let held = inner.lease.lock().clone();
    let now = inner.cfg.clock.now_ms();
    let ttl = inner.cfg.lease_ttl.as_millis() as u64;
    if now.saturating_sub(held.lease.renewed_at_ms) < ttl / 3 {
        return Ok(());
    }
    let new = lease::renew(inner.store.as_ref(), &inner.keys.lease(), &held, now).await?;
    *inner.lease.lock() = new;
    Ok(())
}

async fn flush_batch(inner: &Arc<Inner>, blocks: &[u64]) -> Result<(), VolumeError> {
    for &b in blocks {
        fetch::make_fully_valid(inner, b).await?;
    }
    // Snapshot generations before reading the data.
    let (snap, snap_seq, seq) = {
        let mut st = inner.st.lock();
        let snap: Vec<(u64, u32)> = blocks
            .iter()
            .filter_map(|&b| {
                let x = st.local.get(b);
                (x.dirty != 0 && x.valid == FULL).then_some((b, x.gen))
            })
            .collect();
        let seq = st.next_seq;
        st.next_seq += 1;
        (snap, st.write_seq, seq)
    };
    if snap.is_empty() {
        return Ok(());
    }
    let epoch = inner.lease.lock().lease.epoch;
    let (obj, entries) = {
        let inner2 = inner.clone();
        let list: Vec<u64> = snap.iter().map(|x| x.0).collect();
        // At a lower CPU priority than the ublk workers (see background_cpu).
        background_cpu::run(move || -> Result<_, VolumeError> {
            let mut items = Vec::with_capacity(list.len());
            let mut buf = vec![0u8; BLOCK_SIZE];
            for b in list {
                inner2
                    .data
                    .read_at(&mut buf, b * BS)
                    .map_err(|e| inner2.fail("cache read for upload", e))?;
                let (k, p) = segment::encode_block(&buf, inner2.cfg.compress);
                items.push((b, k, p));
            }
            Ok(segment::encode(
                seq,
                inner2.uuid,
                epoch,
                inner2.base_seq,
                &items,
            ))
        })
        .await?
    };
    inner.check_bg()?;
    let held = inner.lease.lock().lease.clone();
    lease::check(inner.store.as_ref(), &inner.keys.lease(), &held).await?;
    inner.check_bg()?;
    let len = obj.len() as u64;
    match inner
        .store
        .put_if(
            &inner.keys.segment(seq),
            Bytes::from(obj),
            PutCondition::IfAbsent,
        )
        .await
    {
        Ok(_) => {}
        Err(StoreError::PreconditionFailed(k)) => {
            // Either another writer (the lease check says so) or a late PUT of an
            // earlier instance of ours: skip that sequence number and retry.
            lease::check(inner.store.as_ref(), &inner.keys.lease(), &held).await?;
            return Err(VolumeError::Store(StoreError::PreconditionFailed(k)));
        }
        Err(e) => return Err(e.into()),
    }
    {
        let mut st = inner.st.lock();
        let mut clean = Vec::with_capacity(snap.len());
        for ((b, gen), e) in snap.iter().zip(entries.iter()) {
            st.store.apply(*b, e.loc(seq));
            let cur = st.local.get(*b);
            if cur.gen == *gen {
                st.local.mark_clean(*b);
                clean.push(*b);
            } else if let Some(x) = st.local.blocks.get_mut(b) {
                x.dirty_since = snap_seq + 1;
            }
        }
        if !clean.is_empty() {
            st.journal
                .append(&Record::Clean { blocks: clean })
                .map_err(|e| inner.fail("journal append", e))?;
        }
        st.last_committed = st.last_committed.max(seq);
        st.segs_since_manifest += 1;
    }
    bump(&inner.stats.segments_written, 1);
    bump(&inner.stats.bytes_uploaded, len);
    inner.changed.notify(usize::MAX);
    Ok(())
}

async fn maybe_manifest(inner: &Inner) -> Result<(), VolumeError> {
    let (seq, obj, live) = {
        let mut st = inner.st.lock();
        if st.segs_since_manifest < inner.cfg.checkpoint_every.max(1) {
            return Ok(());
        }
        st.segs_since_manifest = 0;
        let live: HashSet<u64> = st.store.map.values().map(|l| l.seq).collect();
        (
            st.last_committed,
            manifest::encode(st.last_committed, inner.uuid, &st.store),
            live,
        )
    };
    inner.check_bg()?;
    let held = inner.lease.lock().lease.clone();
    lease::check(inner.store.as_ref(), &inner.keys.lease(), &held).await?;
    inner.check_bg()?;
    let mkey = inner.keys.manifest(seq);
    match inner
        .store
        .put_if(&mkey, Bytes::from(obj), PutCondition::IfAbsent)
        .await
    {
        Ok(_) => {}
        Err(StoreError::PreconditionFailed(_)) => {
            tracing::warn!(volume = %inner.cfg.name, %mkey, "manifest exists already; skipped");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    bump(&inner.stats.manifests_written, 1);
    // Garbage collection: older manifests, and segments the manifest covers that hold
    // no live entry. Re-check the lease: a fenced writer must not delete anything.
    inner.check_bg()?;
    lease::check(inner.store.as_ref(), &inner.keys.lease(), &held).await?;
    for m in inner.store.list(&inner.keys.manifests()).await? {
        if inner.keys.manifest_seq(&m.key).is_some_and(|s| s < seq) {
            inner.store.delete(&m.key).await?;
            bump(&inner.stats.gc_deleted, 1);
        }
    }
    for o in inner.store.list(&inner.keys.segments()).await? {
        if let Some(s) = inner.keys.segment_seq(&o.key) {
            if s <= seq && !live.contains(&s) {
                inner.store.delete(&o.key).await?;
                bump(&inner.stats.gc_deleted, 1);
            }
        }
    }
    Ok(())
}

/// Write the local state file and start a new journal generation (journal
/// compaction). With `clean_close`, the state is marked as written by a clean close.
/// `background` jobs are skipped once the flusher is being stopped.
pub(crate) async fn checkpoint_local(
    inner: &Arc<Inner>,
    clean_close: bool,
    background: bool,
) -> Result<(), VolumeError> {
    let _g = inner.sync_lock.lock().await;
    let gen = inner.st.lock().journal.gen + 1;
    let (fs, dir, uuid) = (
        inner.cfg.fileio.clone(),
        inner.cfg.cache_dir.clone(),
        inner.uuid,
    );
    let newj: Option<Journal> = {
        let (fs, dir, i2) = (fs.clone(), dir.clone(), inner.clone());
        smol::unblock(move || {
            let _ops = i2.file_ops.lock();
            if background && i2.bg_stop.load(Ordering::Acquire) {
                return Ok(None);
            }
            Journal::create(&*fs, &dir, gen, uuid).map(Some)
        })
        .await
        .map_err(|e| inner.fail("creating journal", e))?
    };
    let Some(newj) = newj else {
        return Ok(());
    };
    let state = {
        let mut st = inner.st.lock();
        st.journal
            .rotate(newj)
            .map_err(|e| inner.fail("journal append", e))?;
        LocalState::from_map(uuid, gen, clean_close, inner.boot_id.clone(), &st.local)
    };
    let (data, i2) = (inner.data.clone(), inner.clone());
    let r = smol::unblock(move || -> std::io::Result<()> {
        let _ops = i2.file_ops.lock();
        if background && i2.bg_stop.load(Ordering::Acquire) {
            return Ok(());
        }
        data.sync_data()?;
        fileio::write_atomic(&*fs, &journal::state_path(&dir), &state.encode())?;
        for g in journal::list_journals(&*fs, &dir)? {
            if g < gen {
                fs.remove_file(&journal::journal_path(&dir, g))?;
            }
        }
        Ok(())
    })
    .await;
    r.map_err(|e| inner.fail("writing local state", e))
}
