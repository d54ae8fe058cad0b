//! The per-worker buffer pool: the only memory the USER_COPY data plane copies request
//! data through, so its size is a hard cap on data-plane RSS.
//!
//! Invariants:
//! - One pool per worker thread, created lazily on the worker (after it is pinned, so
//!   first-touch places the pages on the worker's NUMA node) and pre-faulted page by
//!   page with volatile writes. It is `!Send`: slots never cross threads.
//! - POOL_SLOTS × SLOT_SIZE bytes in one anonymous `memmap2` region; SLOT_SIZE is
//!   [`IO_BUF_BYTES`](super::IO_BUF_BYTES), i.e. the volume block size.
//! - The free list is LIFO (the most recently released, cache-hot slot is reused first).
//! - When empty, acquirers wait in FIFO order. Each waiter holds exactly one queue
//!   entry for its whole life (re-polling only refreshes its waker). A released slot
//!   is handed directly to the oldest waiter, so a new arrival can never jump the
//!   queue. A waiter dropped after it was handed a slot passes the slot (and so the
//!   wake) on to the next waiter; a waiter dropped before leaves the queue.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use memmap2::MmapMut;

/// Size of one slot.
pub const SLOT_SIZE: usize = super::IO_BUF_BYTES;

/// The counters of a server's worker pools, as read by metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Slots handed out (fast path and after waiting).
    pub acquires: u64,
    /// Acquisitions that had to wait because the pool was empty.
    pub backpressure_waits: u64,
    /// Worker pools created so far.
    pub workers_initialized: u64,
    /// Slots per worker pool.
    pub slots: usize,
    /// Bytes per slot.
    pub slot_size: usize,
}

/// The pools of one server: the slot count every worker's pool is created with and
/// the counters they all add to. Owned by the server (`Arc`), built from its options;
/// nothing about the pools is process-wide.
#[derive(Debug)]
pub struct PoolGroup {
    slots: usize,
    acquires: AtomicU64,
    backpressure_waits: AtomicU64,
    workers_initialized: AtomicU64,
}

impl PoolGroup {
    /// Pools of `slots` slots each (at least one).
    pub fn new(slots: usize) -> Arc<PoolGroup> {
        Arc::new(PoolGroup {
            slots: slots.max(1),
            acquires: AtomicU64::new(0),
            backpressure_waits: AtomicU64::new(0),
            workers_initialized: AtomicU64::new(0),
        })
    }

    /// The counters of every pool of the group.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            acquires: self.acquires.load(Ordering::Relaxed),
            backpressure_waits: self.backpressure_waits.load(Ordering::Relaxed),
            workers_initialized: self.workers_initialized.load(Ordering::Relaxed),
            slots: self.slots,
            slot_size: SLOT_SIZE,
        }
    }
}

thread_local! {
    static WORKER_POOL: RefCell<Option<Rc<BufferPool>>> = const { RefCell::new(None) };
}

/// This worker thread's pool, created on first use (after the worker is pinned) as a
/// member of `group`. A worker thread belongs to one server, so to one group.
pub(crate) fn worker_pool(group: &Arc<PoolGroup>) -> io::Result<Rc<BufferPool>> {
    WORKER_POOL.with(|p| {
        let mut p = p.borrow_mut();
        if let Some(pool) = p.as_ref() {
            return Ok(pool.clone());
        }
        let pool = BufferPool::in_group(group.clone(), SLOT_SIZE)?;
        group.workers_initialized.fetch_add(1, Ordering::Relaxed);
        *p = Some(pool.clone());
        Ok(pool)
    })
}

struct Waiter {
    waker: Option<Waker>,
    granted: Option<u32>,
}

struct State {
    free: Vec<u32>,
    queue: VecDeque<u64>,
    waiters: HashMap<u64, Waiter>,
    next_id: u64,
    acquires: u64,
    waits: u64,
}

/// A pool of equally sized buffers in one pre-faulted anonymous mapping.
pub struct BufferPool {
    state: RefCell<State>,
    base: *mut u8,
    slot_size: usize,
    slots: usize,
    group: Arc<PoolGroup>,
    _map: MmapMut,
}

impl BufferPool {
    /// Map and pre-fault `slots` × `slot_size` bytes (a pool of its own group).
    pub fn new(slots: usize, slot_size: usize) -> io::Result<Rc<BufferPool>> {
        if slots == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        BufferPool::in_group(PoolGroup::new(slots), slot_size)
    }

    /// Map and pre-fault a pool of `group`'s slot count, counting into `group`.
    pub fn in_group(group: Arc<PoolGroup>, slot_size: usize) -> io::Result<Rc<BufferPool>> {
        let slots = group.slots;
        if slots == 0 || slot_size == 0 || slots > u32::MAX as usize {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let len = slots
            .checked_mul(slot_size)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut map = MmapMut::map_anon(len)?;
        let base = map.as_mut_ptr();
        let page = page_size();
        let mut off = 0;
        while off < len {
            // SAFETY: `off < len`, inside the mapping we own; a volatile write makes
            // sure the page is really touched (faulted in) and not optimised away.
            unsafe { std::ptr::write_volatile(base.add(off), 0u8) };
            off += page;
        }
        // LIFO: pop() takes from the end, so push in reverse to hand out slot 0 first.
        let free = (0..slots as u32).rev().collect();
        Ok(Rc::new(BufferPool {
            state: RefCell::new(State {
                free,
                queue: VecDeque::new(),
                waiters: HashMap::new(),
                next_id: 0,
                acquires: 0,
                waits: 0,
            }),
            base,
            slot_size,
            slots,
            group,
            _map: map,
        }))
    }

    /// Bytes per slot.
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Total slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Slots currently free.
    pub fn free_slots(&self) -> usize {
        self.state.borrow().free.len()
    }

    /// Acquirers currently waiting.
    pub fn waiters(&self) -> usize {
        self.state.borrow().queue.len()
    }

    /// (acquires, backpressure waits) of this pool.
    pub fn local_counts(&self) -> (u64, u64) {
        let s = self.state.borrow();
        (s.acquires, s.waits)
    }

    /// Start address and length of the region (for RSS accounting).
    pub fn region(&self) -> (usize, usize) {
        (self.base as usize, self.slots * self.slot_size)
    }

    /// Take a slot now if one is free and nobody is waiting.
    pub fn try_acquire(self: &Rc<Self>) -> Option<Slot> {
        let mut s = self.state.borrow_mut();
        if !s.queue.is_empty() {
            return None;
        }
        let idx = s.free.pop()?;
        s.acquires += 1;
        self.group.acquires.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            pool: self.clone(),
            idx,
        })
    }

    /// Take a slot, waiting (FIFO) while the pool is empty.
    pub fn acquire(self: &Rc<Self>) -> Acquire {
        Acquire {
            pool: self.clone(),
            id: None,
        }
    }

    fn release(&self, idx: u32) {
        let waker = {
            let mut s = self.state.borrow_mut();
            match s.queue.pop_front() {
                Some(id) => match s.waiters.get_mut(&id) {
                    Some(w) => {
                        w.granted = Some(idx);
                        w.waker.take()
                    }
                    // Cannot happen (queue and map change together); keep the slot.
                    None => {
                        s.free.push(idx);
                        None
                    }
                },
                None => {
                    s.free.push(idx);
                    None
                }
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// One buffer of the pool, returned to it on drop.
pub struct Slot {
    pool: Rc<BufferPool>,
    idx: u32,
}

impl Slot {
    /// The whole slot.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let size = self.pool.slot_size;
        // SAFETY: slot `idx` lies inside the mapping (idx < slots) and, while this
        // `Slot` exists, no other `Slot` has the same index, so the slice is unique.
        unsafe {
            std::slice::from_raw_parts_mut(self.pool.base.add(self.idx as usize * size), size)
        }
    }

    /// The slot's index in its pool.
    pub fn index(&self) -> u32 {
        self.idx
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.release(self.idx);
    }
}

/// Future returned by [`BufferPool::acquire`].
pub struct Acquire {
    pool: Rc<BufferPool>,
    id: Option<u64>,
}

impl Future for Acquire {
    type Output = Slot;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Slot> {
        let this = &mut *self;
        let mut s = this.pool.state.borrow_mut();
        match this.id {
            None => {
                if s.queue.is_empty() {
                    if let Some(idx) = s.free.pop() {
                        s.acquires += 1;
                        this.pool.group.acquires.fetch_add(1, Ordering::Relaxed);
                        drop(s);
                        return Poll::Ready(Slot {
                            pool: this.pool.clone(),
                            idx,
                        });
                    }
                }
                let id = s.next_id;
                s.next_id += 1;
                s.queue.push_back(id);
                s.waiters.insert(
                    id,
                    Waiter {
                        waker: Some(cx.waker().clone()),
                        granted: None,
                    },
                );
                s.waits += 1;
                this.pool
                    .group
                    .backpressure_waits
                    .fetch_add(1, Ordering::Relaxed);
                this.id = Some(id);
                Poll::Pending
            }
            Some(id) => {
                let granted = match s.waiters.get_mut(&id) {
                    Some(w) => match w.granted {
                        Some(idx) => Some(idx),
                        None => {
                            match &w.waker {
                                Some(old) if old.will_wake(cx.waker()) => {}
                                _ => w.waker = Some(cx.waker().clone()),
                            }
                            None
                        }
                    },
                    None => None,
                };
                match granted {
                    Some(idx) => {
                        s.waiters.remove(&id);
                        s.acquires += 1;
                        this.pool.group.acquires.fetch_add(1, Ordering::Relaxed);
                        this.id = None;
                        drop(s);
                        // Mark done so Drop does nothing: id is None and the fast path
                        // is never re-entered because the future is complete.
                        Poll::Ready(Slot {
                            pool: this.pool.clone(),
                            idx,
                        })
                    }
                    None => Poll::Pending,
                }
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let handed = {
            let mut s = self.pool.state.borrow_mut();
            let entry = s.waiters.remove(&id);
            if let Some(pos) = s.queue.iter().position(|q| *q == id) {
                s.queue.remove(pos);
            }
            entry.and_then(|e| e.granted)
        };
        // We were handed a slot but nobody will use it: pass it (and the wake) on.
        if let Some(idx) = handed {
            self.pool.release(idx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct CountWake(AtomicUsize);
    impl Wake for CountWake {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Waker, std::sync::Arc<CountWake>) {
        let w = std::sync::Arc::new(CountWake(AtomicUsize::new(0)));
        (Waker::from(w.clone()), w)
    }

    fn poll_once<F: Future + Unpin>(f: &mut F, w: &Waker) -> Poll<F::Output> {
        let mut cx = Context::from_waker(w);
        Pin::new(f).poll(&mut cx)
    }

    #[test]
    fn try_acquire_and_exhaustion() {
        let pool = BufferPool::new(2, 4096).unwrap();
        let a = pool.try_acquire().unwrap();
        let b = pool.try_acquire().unwrap();
        assert_ne!(a.index(), b.index());
        assert!(pool.try_acquire().is_none());
        assert_eq!(pool.free_slots(), 0);
        drop(a);
        assert_eq!(pool.free_slots(), 1);
        assert!(pool.try_acquire().is_some());
    }

    #[test]
    fn slots_are_usable_memory() {
        let pool = BufferPool::new(2, 8192).unwrap();
        let mut a = pool.try_acquire().unwrap();
        let mut b = pool.try_acquire().unwrap();
        a.as_mut_slice().fill(0xaa);
        b.as_mut_slice().fill(0x55);
        assert!(a.as_mut_slice().iter().all(|x| *x == 0xaa));
        assert_eq!(a.as_mut_slice().len(), 8192);
    }

    #[test]
    fn lifo_order() {
        let pool = BufferPool::new(4, 4096).unwrap();
        let s: Vec<Slot> = (0..4).map(|_| pool.try_acquire().unwrap()).collect();
        let idx: Vec<u32> = s.iter().map(|x| x.index()).collect();
        drop(s); // releases in order idx[0], idx[1], idx[2], idx[3]
                 // The last released comes back first.
        assert_eq!(pool.try_acquire().unwrap().index(), idx[3]);
        let a = pool.try_acquire().unwrap();
        assert_eq!(a.index(), idx[3]);
        let b = pool.try_acquire().unwrap();
        assert_eq!(b.index(), idx[2]);
    }

    #[test]
    fn async_park_and_wake() {
        let pool = BufferPool::new(1, 4096).unwrap();
        let held = pool.try_acquire().unwrap();
        let (w, count) = waker();
        let mut fut = pool.acquire();
        assert!(poll_once(&mut fut, &w).is_pending());
        assert_eq!(pool.waiters(), 1);
        // Re-polling does not add a second queue entry.
        assert!(poll_once(&mut fut, &w).is_pending());
        assert_eq!(pool.waiters(), 1);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        let idx = held.index();
        drop(held);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        match poll_once(&mut fut, &w) {
            Poll::Ready(s) => assert_eq!(s.index(), idx),
            Poll::Pending => panic!("woken waiter must get the slot"),
        }
        assert_eq!(pool.local_counts(), (2, 1));
    }

    #[test]
    fn fifo_wake_order_and_no_queue_jumping() {
        let pool = BufferPool::new(1, 4096).unwrap();
        let held = pool.try_acquire().unwrap();
        let (w, _) = waker();
        let mut f1 = pool.acquire();
        let mut f2 = pool.acquire();
        let mut f3 = pool.acquire();
        assert!(poll_once(&mut f1, &w).is_pending());
        assert!(poll_once(&mut f2, &w).is_pending());
        assert!(poll_once(&mut f3, &w).is_pending());
        drop(held);
        // A new arrival does not get the slot handed to f1.
        assert!(pool.try_acquire().is_none());
        let mut late = pool.acquire();
        assert!(poll_once(&mut late, &w).is_pending());
        // f2 and f3 are not served before f1.
        assert!(poll_once(&mut f3, &w).is_pending());
        assert!(poll_once(&mut f2, &w).is_pending());
        let s1 = match poll_once(&mut f1, &w) {
            Poll::Ready(s) => s,
            Poll::Pending => panic!("f1 first"),
        };
        drop(s1);
        assert!(poll_once(&mut f3, &w).is_pending());
        let s2 = match poll_once(&mut f2, &w) {
            Poll::Ready(s) => s,
            Poll::Pending => panic!("f2 second"),
        };
        drop(s2);
        assert!(poll_once(&mut late, &w).is_pending());
        assert!(poll_once(&mut f3, &w).is_ready());
    }

    #[test]
    fn cancelled_waiter_hands_the_wake_on() {
        let pool = BufferPool::new(1, 4096).unwrap();
        let held = pool.try_acquire().unwrap();
        let (w1, c1) = waker();
        let (w2, c2) = waker();
        let mut f1 = pool.acquire();
        let mut f2 = pool.acquire();
        assert!(poll_once(&mut f1, &w1).is_pending());
        assert!(poll_once(&mut f2, &w2).is_pending());
        drop(held); // handed to f1, f1 woken
        assert_eq!(c1.0.load(Ordering::SeqCst), 1);
        assert_eq!(c2.0.load(Ordering::SeqCst), 0);
        drop(f1); // f1 gives up without polling: its slot and wake go to f2
        assert_eq!(c2.0.load(Ordering::SeqCst), 1);
        assert!(poll_once(&mut f2, &w2).is_ready());
        assert_eq!(pool.waiters(), 0);
    }

    #[test]
    fn cancelled_queued_waiter_leaves_the_queue() {
        let pool = BufferPool::new(1, 4096).unwrap();
        let held = pool.try_acquire().unwrap();
        let (w, _) = waker();
        let mut f1 = pool.acquire();
        let mut f2 = pool.acquire();
        assert!(poll_once(&mut f1, &w).is_pending());
        assert!(poll_once(&mut f2, &w).is_pending());
        drop(f1);
        assert_eq!(pool.waiters(), 1);
        drop(held);
        assert!(poll_once(&mut f2, &w).is_ready());
        assert_eq!(pool.free_slots(), 1);
    }

    fn region_rss_kib(start: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_region = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, _)) = range.split_once('-') {
                    if a.chars().all(|c| c.is_ascii_hexdigit()) && !a.is_empty() {
                        in_region = usize::from_str_radix(a, 16).ok() == Some(start);
                        continue;
                    }
                }
            }
            if in_region {
                if let Some(rest) = line.strip_prefix("Rss:") {
                    return rest.trim().trim_end_matches("kB").trim().parse().unwrap();
                }
            }
        }
        panic!("region {start:#x} not found in smaps");
    }

    fn process_rss_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * page_size() as u64 / 1024
    }

    #[test]
    fn rss_stays_under_cap_with_10x_oversubscription() {
        let slots = 16;
        let pool = BufferPool::new(slots, SLOT_SIZE).unwrap();
        let (start, len) = pool.region();
        let cap_kib = (len / 1024) as u64;
        // Pre-faulted: the whole region is resident right away.
        assert_eq!(region_rss_kib(start), cap_kib);
        let rss_before = process_rss_kib();
        let ex = smol::LocalExecutor::new();
        let done = Rc::new(Cell::new(0usize));
        let max_in_use = Rc::new(Cell::new(0usize));
        let in_use = Rc::new(Cell::new(0usize));
        let mut tasks = Vec::new();
        for i in 0..slots * 10 {
            let pool = pool.clone();
            let done = done.clone();
            let in_use = in_use.clone();
            let max_in_use = max_in_use.clone();
            tasks.push(ex.spawn(async move {
                let mut s = pool.acquire().await;
                in_use.set(in_use.get() + 1);
                max_in_use.set(max_in_use.get().max(in_use.get()));
                s.as_mut_slice().fill(i as u8);
                smol::future::yield_now().await;
                assert!(s.as_mut_slice().iter().all(|b| *b == i as u8));
                in_use.set(in_use.get() - 1);
                done.set(done.get() + 1);
            }));
        }
        smol::future::block_on(ex.run(async {
            for t in tasks {
                t.await;
            }
        }));
        assert_eq!(done.get(), slots * 10);
        assert_eq!(max_in_use.get(), slots);
        assert!(region_rss_kib(start) <= cap_kib);
        // 160 tasks each owning a private 128 KiB buffer would add 20 MiB; the pool
        // adds nothing (slack for the test harness's own allocations).
        let grown = process_rss_kib().saturating_sub(rss_before);
        assert!(grown < 2048, "process RSS grew by {grown} KiB");
        let (acq, waits) = pool.local_counts();
        assert_eq!(acq, (slots * 10) as u64);
        assert!(waits >= (slots * 9) as u64);
        assert!(pool.group.stats().acquires >= acq);
    }
}
