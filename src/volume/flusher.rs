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
//! segment if-absent (the commit point) → fencing check again (only a segment that
//! landed while the lease was ours counts) → mark blocks whose generation did not
//! change clean and journal a CLEAN record; rewritten blocks stay dirty. A failed
//! attempt is retried with the same sequence number and bytes ([`Pending`]).

use super::background_cpu;
use super::blockmap::{EntryKind, FULL};
use super::fetch;
use super::fileio;
use super::journal::{self, Journal, LocalState, Record};
use super::lease;
use super::manifest;
use super::segment::{self, SegEntry};
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
    let mut pending: Option<Pending> = None;
    // Wake at least often enough to renew the lease on time.
    let renew_every = inner.cfg.lease_ttl / crate::rules::LEASE_RENEW_DIVISOR;
    let interval = inner.cfg.flush_interval.min(renew_every);
    loop {
        if failures > 0 {
            smol::Timer::after(inner.backoff(failures)).await;
        } else {
            if pending.is_none() {
                wait_while_clean(&inner, interval, renew_every).await;
            }
            let l = inner.kick.listen();
            if !inner.kick_flag.swap(false, Ordering::AcqRel) {
                futures_lite::future::or(l, async {
                    smol::Timer::after(interval).await;
                })
                .await;
                inner.kick_flag.store(false, Ordering::Release);
            }
        }
        bump(&inner.stats.flusher_wakeups, 1);
        if inner.bg_stop.load(Ordering::Acquire) || inner.failed.load(Ordering::Acquire) {
            return;
        }
        let mut r = cycle(&inner, &mut pending).await;
        // Compaction is local: it also runs while the store is away, or rewrites and
        // ZERO records would grow the journal without bound during an outage.
        if !matches!(r, Err(VolumeError::Fenced(_))) && !inner.failed.load(Ordering::Acquire) {
            if let Err(e) = compact_journal_if_due(&inner).await {
                r = r.and(Err(e));
            }
        }
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

/// While nothing is dirty: sleep until a write dirties the volume (the caller then
/// waits the write-back delay), a kick (returns with `kick_flag` still set, so the
/// caller cycles at once) or the lease renewal is due (then the caller's short wait
/// ends it). Thousands of idle exports then cost about one wake-up per renewal
/// period each, not one per `flush_interval`. A renewal that is overdue (one that
/// did not count) is retried after `interval`, as before, never in a tight loop.
async fn wait_while_clean(
    inner: &Inner,
    interval: std::time::Duration,
    renew_every: std::time::Duration,
) {
    let kick = inner.kick.listen();
    let dirtied = inner.dirtied.listen();
    inner.flusher_idle.store(true, Ordering::SeqCst);
    let clean = inner.st.lock().local.dirty_set.is_empty();
    if clean && !inner.kick_flag.load(Ordering::Acquire) {
        let since = inner
            .cfg
            .clock
            .mono_ms()
            .saturating_sub(inner.last_renew.load(Ordering::Acquire));
        let due_in = renew_every
            .saturating_sub(std::time::Duration::from_millis(since))
            .saturating_sub(interval);
        futures_lite::future::or(futures_lite::future::or(kick, dirtied), async {
            smol::Timer::after(due_in).await;
        })
        .await;
    }
    inner.flusher_idle.store(false, Ordering::SeqCst);
}

async fn cycle(inner: &Arc<Inner>, pending: &mut Option<Pending>) -> Result<(), VolumeError> {
    renew_if_due(inner).await?;
    let mut committed = false;
    // An earlier attempt first, under its own sequence number.
    if let Some(p) = pending.as_mut() {
        commit(inner, p).await?;
        if let Some(p) = pending.take() {
            finish(inner, p)?;
            committed = true;
        }
    }
    let dirty: Vec<u64> = inner.st.lock().local.dirty_set.iter().copied().collect();
    let per = ((inner.cfg.max_segment_bytes / BS).max(1)) as usize;
    for batch in dirty.chunks(per) {
        inner.check_bg()?;
        renew_if_due(inner).await?;
        let Some(p) = prepare(inner, batch).await? else {
            continue;
        };
        let p = pending.insert(p);
        commit(inner, p).await?;
        if let Some(p) = pending.take() {
            finish(inner, p)?;
            committed = true;
        }
    }
    if committed {
        maybe_manifest(inner).await?;
    }
    Ok(())
}

/// Journal compaction once the journal grew past `journal_compact_bytes`.
async fn compact_journal_if_due(inner: &Arc<Inner>) -> Result<(), VolumeError> {
    let jsize = inner.st.lock().journal.size();
    if jsize > inner.cfg.journal_compact_bytes {
        checkpoint_local(inner, false, true).await?;
    }
    Ok(())
}

/// Unconfirmed renewal attempts remembered (the first ones count: they began first).
const UNSURE_RENEWALS_KEPT: usize = 16;

/// Renew the lease every TTL/3 (monotonic clock), and drop its fences once a
/// manifest of ours made them redundant (see `fencing.rs`).
async fn renew_if_due(inner: &Inner) -> Result<(), VolumeError> {
    let held = inner.lease.lock().clone();
    let started = inner.cfg.clock.mono_ms();
    let every = (inner.cfg.lease_ttl / crate::rules::LEASE_RENEW_DIVISOR).as_millis() as u64;
    let prune = inner.wrote_manifest.load(Ordering::Acquire) && !held.lease.fences.is_empty();
    if started.saturating_sub(inner.last_renew.load(Ordering::Acquire)) < every && !prune {
        return Ok(());
    }
    let fences = if inner.wrote_manifest.load(Ordering::Acquire) {
        Vec::new()
    } else {
        held.lease.fences.clone()
    };
    let now_ms = inner.cfg.clock.now_ms();
    let r = lease::renew(
        inner.store.as_ref(),
        &inner.keys.lease(),
        &held,
        now_ms,
        fences,
    )
    .await;
    let (new, written) = match r {
        Ok(x) => x,
        Err(e @ VolumeError::Store(_)) => {
            // It may still land (or have landed, its reply lost).
            let mut unsure = inner.unsure_renewals.lock();
            if unsure.len() < UNSURE_RENEWALS_KEPT {
                unsure.push((now_ms, started));
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let unsure = std::mem::take(&mut *inner.unsure_renewals.lock());
    if written {
        inner.renewed(started);
    } else if unsure.iter().any(|u| u.0 == new.lease.renewed_at_ms) {
        // The stored lease is one an earlier, failed-looking attempt wrote: it landed,
        // no earlier than the first of those attempts began (counting from then is
        // on the safe side). Without this, a store that loses the replies of lease
        // writes would leave every renewal unconfirmed until writes self-fence.
        if let Some(began) = unsure.iter().map(|u| u.1).min() {
            inner.renewed(began);
        }
    }
    *inner.lease.lock() = new;
    Ok(())
}

/// A segment built and not yet known to be committed. It is retried with the same
/// sequence number and bytes until it commits: an attempt that failed may still land
/// later, and a retry under a new number could then land an older copy of its blocks
/// above a newer one. It moves to a new number only when a fenced writer's late PUT
/// holds its key.
pub(crate) struct Pending {
    seq: u64,
    epoch: u64,
    items: Vec<(u64, EntryKind, Vec<u8>)>,
    obj: Bytes,
    entries: Vec<SegEntry>,
    /// (block, generation) of the blocks it carries, taken before their data was read.
    snap: Vec<(u64, u32)>,
    snap_seq: u64,
    /// The PUT landed (only the post-commit lease check is left).
    landed: bool,
}

/// Make the blocks fully valid, snapshot generations, read and encode them.
///
/// A partly written block whose stored copy cannot be read (checksum mismatch,
/// malformed or missing object) cannot be made whole: it is left out and stays dirty,
/// recorded in `State::unuploadable` and retried every cycle, so one bad block holds
/// back neither the other blocks nor the writers. Store outages still fail the batch.
async fn prepare(inner: &Arc<Inner>, blocks: &[u64]) -> Result<Option<Pending>, VolumeError> {
    for &b in blocks {
        match fetch::make_fully_valid(inner, b).await {
            Ok(()) => {
                inner.st.lock().unuploadable.remove(&b);
            }
            Err(e @ (VolumeError::Checksum(_) | VolumeError::Corrupt(_)))
            | Err(e @ VolumeError::Store(StoreError::NotFound(_))) => {
                note_unuploadable(inner, b, &e)
            }
            Err(e) => return Err(e),
        }
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
        if snap.is_empty() {
            return Ok(None);
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        (snap, st.write_seq, seq)
    };
    let epoch = inner.lease.lock().lease.epoch;
    let (items, obj, entries) = {
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
            let (obj, entries) = segment::encode(seq, inner2.uuid, epoch, inner2.base_seq, &items);
            Ok((items, obj, entries))
        })
        .await?
    };
    Ok(Some(Pending {
        seq,
        epoch,
        items,
        obj: Bytes::from(obj),
        entries,
        snap,
        snap_seq,
        landed: false,
    }))
}

fn note_unuploadable(inner: &Inner, b: u64, e: &VolumeError) {
    let dirty_sectors = {
        let mut st = inner.st.lock();
        let dirty = st.local.get(b).dirty.count_ones();
        let why = format!("block {b}: its stored copy is unreadable ({e}); its {dirty} written sector(s) stay in the local cache until the whole block is rewritten");
        if st.unuploadable.insert(b, why).is_some() {
            None
        } else {
            Some(dirty)
        }
    };
    if let Some(dirty_sectors) = dirty_sectors {
        tracing::error!(volume = %inner.cfg.name, block = b, dirty_sectors, error = %e, "dirty block cannot be uploaded: its stored copy is unreadable; the other blocks go on");
    }
    // A drain waiting on this block learns it cannot complete.
    inner.changed.notify(usize::MAX);
}

/// Why a drain up to write `target` cannot complete: every block still dirty from
/// before it is unuploadable (and not yet rewritten whole). `None` while the flusher
/// can still make progress.
pub(crate) fn drain_blocked_by(st: &super::State, target: u64) -> Option<String> {
    if st.unuploadable.is_empty() {
        return None;
    }
    let mut why = None;
    for b in &st.local.dirty_set {
        let x = st.local.get(*b);
        if x.dirty_since > target {
            continue;
        }
        match st.unuploadable.get(b) {
            Some(w) if x.valid != FULL => {
                why.get_or_insert_with(|| w.clone());
            }
            _ => return None,
        }
    }
    why
}

/// Whose object holds the key of segment `seq`: ours from an earlier attempt (same
/// incarnation, epoch and seq), or another writer's.
async fn is_our_attempt(inner: &Inner, seq: u64, epoch: u64) -> Result<bool, VolumeError> {
    let hb = match inner
        .store
        .get_range(&inner.keys.segment(seq), 0..segment::HEADER_LEN as u64)
        .await
    {
        Ok(b) => b,
        // Deleted meanwhile (a zombie collected by a newer writer): not ours.
        Err(StoreError::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    Ok(segment::decode_header(&hb)
        .is_ok_and(|h| h.uuid == inner.uuid && h.epoch == epoch && h.seq == seq))
}

/// The commit protocol of one segment: fencing check, PUT if-absent (the commit
/// point), fencing check again. Only a segment that landed while the lease was still
/// ours counts as committed (its blocks may be marked clean); one that lands after
/// another host took over is ignored by every later open (`fencing.rs`).
async fn commit(inner: &Inner, p: &mut Pending) -> Result<(), VolumeError> {
    let held = inner.lease.lock().lease.clone();
    let lease_key = inner.keys.lease();
    // Bounded: each round either commits or moves past a key a late PUT occupies.
    for _ in 0..64 {
        if p.landed {
            break;
        }
        inner.check_bg()?;
        lease::check(inner.store.as_ref(), &lease_key, &held).await?;
        inner.check_bg()?;
        let key = inner.keys.segment(p.seq);
        match inner
            .store
            .put_if(&key, p.obj.clone(), PutCondition::IfAbsent)
            .await
        {
            Ok(_) => p.landed = true,
            Err(StoreError::PreconditionFailed(_)) => {
                if is_our_attempt(inner, p.seq, p.epoch).await? {
                    p.landed = true;
                    continue;
                }
                // Another writer's object: a newer one fences us here; an older
                // one's late PUT took the number - move to a new one.
                lease::check(inner.store.as_ref(), &lease_key, &held).await?;
                tracing::warn!(volume = %inner.cfg.name, %key, "segment key taken by a fenced writer's late PUT; using the next number");
                inner.zombies.lock().push(key);
                let seq = {
                    let mut st = inner.st.lock();
                    let s = st.next_seq;
                    st.next_seq += 1;
                    s
                };
                let (obj, entries) =
                    segment::encode(seq, inner.uuid, p.epoch, inner.base_seq, &p.items);
                p.seq = seq;
                p.obj = Bytes::from(obj);
                p.entries = entries;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !p.landed {
        return Err(VolumeError::Store(StoreError::Unavailable(format!(
            "{}: no free segment number after 64 attempts",
            inner.cfg.name
        ))));
    }
    lease::check(inner.store.as_ref(), &lease_key, &held).await
}

/// Apply a committed segment: store map, clean blocks (unless rewritten since the
/// snapshot), CLEAN record, counters.
fn finish(inner: &Inner, p: Pending) -> Result<(), VolumeError> {
    let seq = p.seq;
    let len = p.obj.len() as u64;
    {
        let mut st = inner.st.lock();
        let mut clean = Vec::with_capacity(p.snap.len());
        for ((b, gen), e) in p.snap.iter().zip(p.entries.iter()) {
            st.store.apply(*b, e.loc(seq));
            let cur = st.local.get(*b);
            if cur.gen == *gen {
                st.local.mark_clean(*b);
                clean.push(*b);
            } else if let Some(x) = st.local.blocks.get_mut(b) {
                x.dirty_since = p.snap_seq + 1;
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
            manifest::encode(
                st.last_committed,
                inner.uuid,
                inner.lease.lock().lease.epoch,
                &st.store,
            ),
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
    // Ours and still ours after it landed: the lease's fences are redundant now.
    inner.wrote_manifest.store(true, Ordering::Release);
    let zombies: Vec<String> = std::mem::take(&mut *inner.zombies.lock());
    for key in zombies {
        inner.store.delete(&key).await?;
        bump(&inner.stats.gc_deleted, 1);
    }
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
