//! One worker's reactor: its io_uring, the table of in-flight operations (each a
//! future, [`Op`]), its sparse fixed-file slots, and the eventfd [`Kick`] that wakes
//! it from another thread.
//!
//! Invariants:
//! - a reactor lives on one thread (the worker's) and is shared there through `Rc`;
//!   only the [`Kick`] crosses threads;
//! - the ring always has one read of the kick eventfd armed (re-armed by [`Reactor::reap`]
//!   when it completes), so a kick always ends an `io_uring_enter` sleep;
//! - an [`Op`] dropped before its completion leaves its slot `Abandoned`; the slot is
//!   reused only after the kernel's completion arrived, so a late CQE never wakes a
//!   stranger;
//! - every SQE points only at memory that outlives the operation (see [`Reactor::push`]).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use io_uring::{opcode, squeue, types, IoUring};

use super::error::UblkError;

const KICK_TOKEN: u64 = u64::MAX;
const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 8192;

thread_local! {
    static WORKER_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Whether ublk commands use the ring's fixed-file table: only when
/// `GLIDEFS_UBLK_FIXED_FILES=1` (worth trying on kernels >= 6.13, whose per-file
/// resource nodes remove the release dependency described in src/ublk/worker.rs; not
/// tested here).
pub(crate) fn use_fixed_files() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("GLIDEFS_UBLK_FIXED_FILES").is_ok_and(|v| v == "1"))
}

/// Mark the current thread as worker `index` (a wake from this thread needs no kick).
pub(crate) fn enter_worker(index: usize) {
    WORKER_INDEX.with(|w| w.set(index));
}

/// Wakes a sleeping worker.
pub(crate) struct Kick {
    efd: OwnedFd,
    index: usize,
}

impl Kick {
    /// The kick of worker `index` (a fresh non-blocking eventfd).
    pub(crate) fn new(index: usize) -> Result<Kick, UblkError> {
        // SAFETY: eventfd has no memory-safety preconditions; we check the result.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(UblkError::io("eventfd", std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Kick { efd, index })
    }

    /// The index of the worker this kick wakes.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// Wake the worker (end its `io_uring_enter` sleep).
    pub(crate) fn kick(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local u64 to an eventfd we own.
        let _ = unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

enum OpState {
    Waiting(Option<Waker>),
    Done(i32),
    /// The future was dropped before the completion arrived.
    Abandoned,
}

/// One worker's ring, its in-flight operations and its fixed-file slots.
pub(crate) struct Reactor {
    ring: RefCell<IoUring>,
    ops: RefCell<Vec<Option<OpState>>>,
    free_ops: RefCell<Vec<usize>>,
    free_files: RefCell<Vec<u32>>,
    kick: Arc<Kick>,
    kick_buf: Box<Cell<u64>>,
}

impl Reactor {
    /// A ring with `files` sparse fixed-file slots, its kick read armed.
    pub(crate) fn new(kick: Arc<Kick>, files: u32) -> Result<Reactor, UblkError> {
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)
            .map_err(|e| UblkError::io("io_uring_setup", e))?;
        ring.submitter()
            .register_files_sparse(files)
            .map_err(|e| UblkError::io("register_files_sparse", e))?;
        let r = Reactor {
            ring: RefCell::new(ring),
            ops: RefCell::new(Vec::new()),
            free_ops: RefCell::new(Vec::new()),
            free_files: RefCell::new((0..files).rev().collect()),
            kick,
            kick_buf: Box::new(Cell::new(0)),
        };
        r.arm_kick();
        Ok(r)
    }

    fn arm_kick(&self) {
        let sqe = opcode::Read::new(
            types::Fd(self.kick.efd.as_raw_fd()),
            self.kick_buf.as_ptr().cast(),
            8,
        )
        .build()
        .user_data(KICK_TOKEN);
        self.push(&sqe);
    }

    /// Put `sqe` on the submission queue, flushing it to the kernel if it is full.
    /// Returns false if the queue stayed full (the kernel refused to take entries).
    fn push(&self, sqe: &squeue::Entry) -> bool {
        let mut ring = self.ring.borrow_mut();
        for _ in 0..8 {
            // SAFETY: every SQE we build points only at memory that outlives the
            // operation: the kick buffer (boxed, lives as long as the reactor) and
            // ublk commands, whose payload is copied into the SQE itself.
            if unsafe { ring.submission().push(sqe) }.is_ok() {
                return true;
            }
            // SQ full: hand what we have to the kernel and retry.
            if let Err(e) = ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) && e.raw_os_error() != Some(libc::EINTR) {
                    tracing::error!("io_uring submit: {e}");
                }
            }
        }
        tracing::error!("io_uring submission queue stays full; failing the operation");
        false
    }

    /// Queue `sqe` and return a future resolving to its CQE result.
    pub(crate) fn submit(self: &Rc<Self>, sqe: squeue::Entry) -> Op {
        let idx = {
            let mut ops = self.ops.borrow_mut();
            match self.free_ops.borrow_mut().pop() {
                Some(i) => {
                    ops[i] = Some(OpState::Waiting(None));
                    i
                }
                None => {
                    ops.push(Some(OpState::Waiting(None)));
                    ops.len() - 1
                }
            }
        };
        if !self.push(&sqe.user_data(idx as u64)) {
            self.ops.borrow_mut()[idx] = Some(OpState::Done(-libc::EAGAIN));
        }
        Op {
            reactor: self.clone(),
            idx,
            done: false,
        }
    }

    /// Put `fd` in a free fixed-file slot.
    pub(crate) fn register_file(&self, fd: i32) -> Result<u32, UblkError> {
        let slot = self
            .free_files
            .borrow_mut()
            .pop()
            .ok_or(UblkError::Kernel {
                cmd: "register_files_update",
                dev_id: None,
                errno: libc::EMFILE,
            })?;
        let res = self
            .ring
            .borrow()
            .submitter()
            .register_files_update(slot, &[fd]);
        match res {
            Ok(_) => Ok(slot),
            Err(e) => {
                self.free_files.borrow_mut().push(slot);
                Err(UblkError::io("register_files_update", e))
            }
        }
    }

    /// Empty fixed-file slot `slot` (drops the ring's reference to the file).
    pub(crate) fn unregister_file(&self, slot: u32) {
        match self
            .ring
            .borrow()
            .submitter()
            .register_files_update(slot, &[-1])
        {
            Ok(_) => self.free_files.borrow_mut().push(slot),
            Err(e) => tracing::error!(slot, "unregister fixed file: {e}"),
        }
    }

    /// Handle every available completion; returns how many tasks were woken, counting
    /// a consumed kick as one: the message or wake that sent it must be looked at
    /// before the worker sleeps again.
    pub(crate) fn reap(&self) -> usize {
        let mut wake = Vec::new();
        let mut rearm = false;
        {
            let mut ring = self.ring.borrow_mut();
            let mut ops = self.ops.borrow_mut();
            let mut free = self.free_ops.borrow_mut();
            for cqe in ring.completion() {
                let ud = cqe.user_data();
                if ud == KICK_TOKEN {
                    rearm = true;
                    continue;
                }
                let i = ud as usize;
                match ops.get_mut(i).and_then(|s| s.take()) {
                    Some(OpState::Waiting(w)) => {
                        ops[i] = Some(OpState::Done(cqe.result()));
                        if let Some(w) = w {
                            wake.push(w);
                        }
                    }
                    Some(OpState::Abandoned) => free.push(i),
                    Some(done @ OpState::Done(_)) => ops[i] = Some(done),
                    None => {}
                }
            }
        }
        if rearm {
            self.arm_kick();
        }
        let n = wake.len() + usize::from(rearm);
        for w in wake {
            w.wake();
        }
        n
    }
}

impl Reactor {
    /// Submit queued SQEs; with `wait`, sleep in `io_uring_enter` until at least one
    /// completion (or a kick) arrives.
    pub(crate) fn enter(&self, wait: bool) {
        let res = {
            let ring = self.ring.borrow();
            if wait {
                ring.submit_and_wait(1)
            } else {
                ring.submit()
            }
        };
        if let Err(e) = res {
            match e.raw_os_error() {
                Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => tracing::error!("io_uring_enter: {e}"),
            }
        }
    }

    /// Wrap a task's future so that a wake from another thread kicks this worker.
    pub(crate) fn kicking<F: Future>(&self, fut: F) -> Kicking<F> {
        Kicking {
            fut: Box::pin(fut),
            kick: self.kick.clone(),
            cached: None,
        }
    }
}

/// The future of one submitted operation.
pub(crate) struct Op {
    reactor: Rc<Reactor>,
    idx: usize,
    done: bool,
}

impl Future for Op {
    type Output = i32;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        let r = self.reactor.clone();
        let mut ops = r.ops.borrow_mut();
        match ops.get_mut(self.idx) {
            Some(Some(OpState::Done(res))) => {
                let res = *res;
                ops[self.idx] = None;
                r.free_ops.borrow_mut().push(self.idx);
                self.done = true;
                Poll::Ready(res)
            }
            Some(Some(OpState::Waiting(w))) => {
                match w {
                    Some(old) if old.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            _ => {
                self.done = true;
                Poll::Ready(-libc::EIO)
            }
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut ops = self.reactor.ops.borrow_mut();
        match ops.get_mut(self.idx) {
            Some(slot @ Some(OpState::Waiting(_))) => *slot = Some(OpState::Abandoned),
            Some(slot @ Some(OpState::Done(_))) => {
                *slot = None;
                self.reactor.free_ops.borrow_mut().push(self.idx);
            }
            _ => {}
        }
    }
}

struct KickWaker {
    inner: Waker,
    kick: Arc<Kick>,
}

impl Wake for KickWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.inner.wake_by_ref();
        if WORKER_INDEX.with(|w| w.get()) != self.kick.index {
            self.kick.kick();
        }
    }
}

/// Wraps a task's future so that a wake from another thread also kicks the worker
/// out of `io_uring_enter` (the executor alone would only queue the task).
pub(crate) struct Kicking<F> {
    fut: Pin<Box<F>>,
    kick: Arc<Kick>,
    cached: Option<(Waker, Waker)>,
}

impl<F: Future> Future for Kicking<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let reuse = matches!(&this.cached, Some((orig, _)) if orig.will_wake(cx.waker()));
        if !reuse {
            let w = Waker::from(Arc::new(KickWaker {
                inner: cx.waker().clone(),
                kick: this.kick.clone(),
            }));
            this.cached = Some((cx.waker().clone(), w));
        }
        match &this.cached {
            Some((_, w)) => {
                let mut cx2 = Context::from_waker(w);
                this.fut.as_mut().poll(&mut cx2)
            }
            None => Poll::Pending,
        }
    }
}
