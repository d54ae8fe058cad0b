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
use super::blockmap::Piece;
use super::compaction;
use super::fetch;
use super::fileio;
use super::journal::{self, Journal, LocalState, Record};
use super::lease;
use super::manifest;
use super::segment::{self, Extent, SegEntry};
use super::{bump, snapshot, Inner, VolumeError, BS, SS};
use crate::store::{put_new, StoreError};
use crate::{BLOCK_SIZE, SECTOR_SIZE};
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
    let mut clock = DirtyClock::default();
    let mut end = CycleEnd::default();
    // Wake at least often enough to renew the lease on time.
    let renew_every = inner.cfg.lease_ttl / crate::rules::LEASE_RENEW_DIVISOR;
    let interval = inner.cfg.flush_interval.min(renew_every);
    loop {
        // A kick (drain, dirty limit, store-mode FLUSH, close) uploads a partial
        // segment at once; a timer wake-up only full ones and data that is due.
        let forced;
        if failures > 0 {
            smol::Timer::after(inner.backoff(failures)).await;
            inner.kick_flag.store(false, Ordering::Release);
            forced = true;
        } else if end.more_compaction {
            smol::future::yield_now().await;
            forced = inner.kick_flag.swap(false, Ordering::AcqRel);
        } else {
            if pending.is_none() {
                wait_while_clean(&inner, interval, renew_every).await;
                clock.sample(inner.st.lock().write_seq, inner.cfg.clock.mono_ms());
            }
            let l = inner.kick.listen();
            let mut kicked = inner.kick_flag.swap(false, Ordering::AcqRel);
            if !kicked {
                // Data that waits for its age is looked at four times per interval.
                let wait = if end.waiting { interval / 4 } else { interval };
                futures_lite::future::or(l, async {
                    smol::Timer::after(wait).await;
                })
                .await;
                kicked = inner.kick_flag.swap(false, Ordering::AcqRel);
            }
            forced = kicked;
        }
        bump(&inner.stats.flusher_wakeups, 1);
        if inner.bg_stop.load(Ordering::Acquire) || inner.failed.load(Ordering::Acquire) {
            return;
        }
        let mut r = cycle(&inner, &mut pending, forced, &mut clock)
            .await
            .map(|e| end = e);
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

/// When the flusher last woke, by write sequence number: the age of the oldest
/// dirty data without a timestamp per block. A sample `(w, t)` says every write up
/// to `w` happened before `t`.
#[derive(Default)]
pub(crate) struct DirtyClock {
    samples: std::collections::VecDeque<(u64, u64)>,
}

/// Samples kept (one per wake-up; older ones are dropped, which can only make the
/// oldest data look younger, so a partial segment waits at most a wake-up longer).
const DIRTY_CLOCK_SAMPLES: usize = 1024;

impl DirtyClock {
    fn sample(&mut self, write_seq: u64, now_ms: u64) {
        if self.samples.back().is_some_and(|s| s.0 == write_seq) {
            return;
        }
        if self.samples.len() >= DIRTY_CLOCK_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((write_seq, now_ms));
    }

    /// Whether dirty data as old as write `oldest` has reached `max_age_ms`.
    fn due(&mut self, oldest: u64, now_ms: u64, max_age_ms: u64) -> bool {
        // Samples no dirty data is older than are of no more use (keep the last).
        while self.samples.len() > 1 && self.samples[0].0 < oldest && self.samples[1].0 < oldest {
            self.samples.pop_front();
        }
        // Timers fire a little early or late: a tenth of the age counts as reached.
        let slack = max_age_ms / 10;
        self.samples
            .iter()
            .find(|s| s.0 >= oldest)
            .is_some_and(|s| now_ms.saturating_sub(s.1) + slack >= max_age_ms)
    }
}

/// What one cycle left to do.
#[derive(Default)]
pub(crate) struct CycleEnd {
    /// Compaction candidates remain: cycle again without waiting.
    pub more_compaction: bool,
    /// Dirty data was left for a fuller segment (not yet due).
    pub waiting: bool,
}

async fn cycle(
    inner: &Arc<Inner>,
    pending: &mut Option<Pending>,
    forced: bool,
    clock: &mut DirtyClock,
) -> Result<CycleEnd, VolumeError> {
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
    let now = inner.cfg.clock.mono_ms();
    let due = {
        let st = inner.st.lock();
        clock.sample(st.write_seq, now);
        let max_age = inner.cfg.flush_interval.as_millis() as u64;
        forced
            || st.local.dirty_sectors * SS >= inner.cfg.dirty_limit_bytes / 2
            || st
                .local
                .oldest_dirty()
                .is_some_and(|o| clock.due(o, now, max_age))
    };
    let (batches, waiting) = plan(inner, due);
    for batch in batches {
        inner.check_bg()?;
        renew_if_due(inner).await?;
        let Some(p) = prepare(inner, &batch).await? else {
            continue;
        };
        let p = pending.insert(p);
        commit(inner, p).await?;
        if let Some(p) = pending.take() {
            finish(inner, p)?;
            committed = true;
        }
    }
    let (compacted, more_compaction) = compaction::round(inner, pending).await?;
    // Once compaction has no candidates left, a manifest lets GC delete what it
    // emptied (also when the round that emptied the last one was an earlier cycle's).
    let settled = !more_compaction && inner.st.lock().compacted_since_manifest;
    if committed || compacted || settled {
        maybe_manifest(inner, settled).await?;
    }
    collect_if_due(inner).await?;
    Ok(CycleEnd {
        more_compaction,
        waiting,
    })
}

/// Split the dirty blocks into segments of about `max_segment_bytes` of dirty
/// sectors each; the last, smaller one only when `due` (its oldest data reached the
/// flush interval, or something waits for the store). Returns the batches and
/// whether data was left for a fuller segment.
fn plan(inner: &Inner, due: bool) -> (Vec<Vec<u64>>, bool) {
    let st = inner.st.lock();
    let target = inner.cfg.max_segment_bytes.max(BS);
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0u64;
    for &b in &st.local.dirty_set {
        bytes += u64::from(st.local.get(b).dirty.count_ones()) * SS;
        cur.push(b);
        if bytes >= target {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
    }
    let waiting = !cur.is_empty() && !due;
    if due && !cur.is_empty() {
        out.push(cur);
    }
    (out, waiting)
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
/// later, and a retry under a new number could then land an older copy of its data
/// above a newer one. It moves to a new number only when a fenced writer's late PUT
/// holds its key.
pub(crate) struct Pending {
    pub(super) seq: u64,
    pub(super) epoch: u64,
    pub(super) obj: Bytes,
    pub(super) entries: Vec<SegEntry>,
    /// (block, generation, sectors uploaded) of the blocks it carries, the
    /// generation taken before their data was read. Empty for a compaction segment.
    pub(super) snap: Vec<(u64, u32, u32)>,
    pub(super) snap_seq: u64,
    /// A compaction segment: the pieces each rewritten block had when it was read
    /// (its entries are applied only while they are still the same; nothing
    /// becomes clean).
    pub(super) rewrites: Vec<(u64, Vec<Piece>)>,
    /// The PUT landed (only the post-commit lease check is left).
    pub(super) landed: bool,
}

/// Snapshot generations, read and encode the dirty sectors of `blocks` as
/// extents (a fully dirty block is one whole-block extent). Nothing is fetched: the
/// dirty sectors are in the cache, and the store keeps the block's other sectors.
async fn prepare(inner: &Arc<Inner>, blocks: &[u64]) -> Result<Option<Pending>, VolumeError> {
    // Snapshot generations before reading the data.
    let (snap, snap_seq, seq) = {
        let mut st = inner.st.lock();
        let snap: Vec<(u64, u32, u32)> = blocks
            .iter()
            .filter_map(|&b| {
                let x = st.local.get(b);
                (x.dirty != 0).then_some((b, x.gen, x.dirty))
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
    let (obj, entries) = {
        let inner2 = inner.clone();
        let list: Vec<(u64, u32)> = snap.iter().map(|x| (x.0, x.2)).collect();
        // At a lower CPU priority than the ublk workers (see background_cpu).
        background_cpu::run(move || -> Result<_, VolumeError> {
            let mut items = Vec::with_capacity(list.len());
            let mut buf = vec![0u8; BLOCK_SIZE];
            for (b, m) in list {
                for (first, count) in fetch::runs(m) {
                    let data = &mut buf[..count * SECTOR_SIZE];
                    inner2
                        .data
                        .read_at(data, b * BS + (first * SECTOR_SIZE) as u64)
                        .map_err(|e| inner2.fail("cache read for upload", e))?;
                    let (kind, payload) = segment::encode_extent(data, inner2.cfg.compress);
                    items.push(Extent {
                        block: b,
                        first: first as u8,
                        count: count as u8,
                        kind,
                        payload,
                    });
                }
            }
            Ok(segment::encode(
                seq,
                inner2.uuid,
                epoch,
                inner2.base_seq,
                &items,
                inner2.seal_key(),
            ))
        })
        .await?
    };
    Ok(Some(Pending {
        seq,
        epoch,
        obj: Bytes::from(obj),
        entries,
        snap,
        snap_seq,
        rewrites: Vec::new(),
        landed: false,
    }))
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
pub(super) async fn commit(inner: &Inner, p: &mut Pending) -> Result<(), VolumeError> {
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
        match put_new(inner.store.as_ref(), &key, p.obj.clone()).await {
            Ok(Some(_)) => p.landed = true,
            Ok(None) => {
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
                let obj = segment::renumber(&p.obj, seq, inner.seal_key())
                    .map_err(VolumeError::Corrupt)?;
                p.seq = seq;
                p.obj = Bytes::from(obj);
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

/// Apply a committed segment: store map, clean the uploaded sectors of blocks not
/// rewritten since the snapshot, UPLOADED record, counters. A compaction segment
/// only moves pieces (and only of blocks whose pieces did not change meanwhile).
pub(super) fn finish(inner: &Inner, p: Pending) -> Result<(), VolumeError> {
    let seq = p.seq;
    let len = p.obj.len() as u64;
    {
        let mut st = inner.st.lock();
        let st = &mut *st;
        st.store.note_segment(seq, len);
        if p.rewrites.is_empty() {
            for e in &p.entries {
                st.store.apply(e.block, e.loc(seq));
            }
        } else {
            let same: HashSet<u64> = p
                .rewrites
                .iter()
                .filter(|(b, was)| st.store.map.get(b) == Some(was))
                .map(|(b, _)| *b)
                .collect();
            for e in p.entries.iter().filter(|e| same.contains(&e.block)) {
                st.store.apply(e.block, e.loc(seq));
            }
        }
        let mut clean = Vec::with_capacity(p.snap.len());
        for &(b, gen, m) in &p.snap {
            let cur = st.local.get(b);
            if cur.gen == gen {
                st.local.mark_uploaded(b, m);
                clean.push((b, m));
            } else if let Some(x) = st.local.blocks.get_mut(&b) {
                x.dirty_since = p.snap_seq + 1;
            }
        }
        if !clean.is_empty() {
            st.journal
                .append(&Record::Uploaded { blocks: clean })
                .map_err(|e| inner.fail("journal append", e))?;
        }
        st.last_committed = st.last_committed.max(seq);
        st.segs_since_manifest += 1;
        if p.rewrites.is_empty() {
            // The volume's own writes: they earn merge budget and keep their
            // blocks warm for `merge_cold_after`.
            st.merge_credit += len * crate::rules::MERGE_BUDGET_PCT / 100;
            st.recent_uploads
                .push_back((seq, inner.cfg.clock.mono_ms()));
        }
    }
    bump(&inner.stats.segments_written, 1);
    bump(&inner.stats.bytes_uploaded, len);
    inner.changed.notify(usize::MAX);
    Ok(())
}

/// Write a manifest every `checkpoint_every` segments, or with `settled` (a
/// compaction finished: collect what it freed now), then collect garbage.
async fn maybe_manifest(inner: &Inner, settled: bool) -> Result<(), VolumeError> {
    let (seq, obj, live) = {
        let mut st = inner.st.lock();
        let n = st.segs_since_manifest;
        if n == 0 || (n < inner.cfg.checkpoint_every.max(1) && !settled) {
            return Ok(());
        }
        st.segs_since_manifest = 0;
        st.compacted_since_manifest = false;
        let live: HashSet<u64> = st.store.live_segments();
        (
            st.last_committed,
            manifest::encode(
                st.last_committed,
                inner.uuid,
                inner.lease.lock().lease.epoch,
                &st.store,
                inner.seal_key(),
            ),
            live,
        )
    };
    inner.check_bg()?;
    let held = inner.lease.lock().lease.clone();
    lease::check(inner.store.as_ref(), &inner.keys.lease(), &held).await?;
    inner.check_bg()?;
    let mkey = inner.keys.manifest(seq);
    if put_new(inner.store.as_ref(), &mkey, Bytes::from(obj))
        .await?
        .is_none()
    {
        tracing::warn!(volume = %inner.cfg.name, %mkey, "manifest exists already; skipped");
        return Ok(());
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
    // Snapshots pin manifests and segments: deletions wait for their pins and
    // exclude snapshots being taken (see `snapshot.rs`).
    let _gc = inner.gc_lock.lock().await;
    snapshot::ensure_pins(inner).await?;
    for m in inner.store.list(&inner.keys.manifests()).await? {
        let Some(s) = inner.keys.manifest_seq(&m.key) else {
            continue;
        };
        if s < seq && !pinned(inner, |p| p.manifest(s)) {
            inner.store.delete(&m.key).await?;
            bump(&inner.stats.gc_deleted, 1);
        }
    }
    let now = inner.cfg.clock.mono_ms();
    for o in inner.store.list(&inner.keys.segments()).await? {
        if let Some(s) = inner.keys.segment_seq(&o.key) {
            if s <= seq && !live.contains(&s) && !pinned(inner, |p| p.segment(s)) {
                inner.st.lock().gc_pending.entry(s).or_insert(now);
            }
        }
    }
    delete_expired(inner).await
}

/// Whether the snapshots' pins (unknown until loaded: then everything) hold `what`.
fn pinned(inner: &Inner, what: impl Fn(&snapshot::Pins) -> bool) -> bool {
    inner.st.lock().pins.as_ref().is_none_or(what)
}

/// Delete the segments garbage collection found dead at least `gc_grace` ago and
/// no snapshot pins. The caller checked the lease after its last manifest landed
/// (a fenced writer never deletes) and holds `gc_lock`; [`collect_if_due`] does
/// both itself.
async fn delete_expired(inner: &Inner) -> Result<(), VolumeError> {
    for s in expired(inner) {
        if pinned(inner, |p| p.segment(s)) {
            continue;
        }
        match inner.store.delete(&inner.keys.segment(s)).await {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        bump(&inner.stats.gc_deleted, 1);
        let mut st = inner.st.lock();
        st.gc_pending.remove(&s);
        st.store.forget_segment(s);
    }
    Ok(())
}

/// Segments whose grace period is over.
fn expired(inner: &Inner) -> Vec<u64> {
    let grace = inner.cfg.gc_grace.as_millis() as u64;
    let now = inner.cfg.clock.mono_ms();
    let st = inner.st.lock();
    st.gc_pending
        .iter()
        .filter(|(_, since)| now.saturating_sub(**since) >= grace)
        .map(|(s, _)| *s)
        .collect()
}

/// Delete the dead segments whose grace period ended since the last manifest
/// (nothing to do, and no request, when none did).
async fn collect_if_due(inner: &Inner) -> Result<(), VolumeError> {
    if expired(inner).is_empty() {
        return Ok(());
    }
    inner.check_bg()?;
    let held = inner.lease.lock().lease.clone();
    lease::check(inner.store.as_ref(), &inner.keys.lease(), &held).await?;
    let _gc = inner.gc_lock.lock().await;
    snapshot::ensure_pins(inner).await?;
    delete_expired(inner).await
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
        journal::remove_older(&*fs, &dir, gen)
    })
    .await;
    r.map_err(|e| inner.fail("writing local state", e))
}
