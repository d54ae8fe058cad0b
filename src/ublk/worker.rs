//! The worker pool: K threads, each pinned to one CPU, each driving one io_uring and
//! one smol `LocalExecutor` in a single loop (run ready tasks → reap completions →
//! sleep in `io_uring_enter` until a completion or a kick arrives).
//!
//! Invariants:
//! - A (device, queue) is attached to exactly one worker for its whole life: the
//!   kernel requires every command of a queue to come from one task (thread).
//! - Each worker's ring has a sparse fixed-file table; with fixed files on, a queue's
//!   char device takes one slot (`register_files_update`) while attached and frees it
//!   when detached, so adding or removing a device never disturbs the others.
//!   Fixed files are OFF by default (see `reactor::use_fixed_files`): on kernels before 6.13
//!   io_uring frees a replaced fixed file only after every request issued before the
//!   update has completed, on any device of the ring, and an idle device's FETCH_REQs
//!   never complete. So the deleted device's char device is never released and
//!   DEL_DEV blocks until every other device on that worker saw I/O or was deleted
//!   (seen on 6.12: deleting 24 devices took 147 s). With plain fds each command holds
//!   its own file reference and drops it when STOP_DEV aborts it.
//! - Other threads talk to a worker only through its message channel plus an eventfd
//!   kick; the ring keeps one read of that eventfd armed, so a kick always ends the
//!   sleep. Futures woken from another thread (e.g. a target finishing on a blocking
//!   pool) kick the worker too. The ring, its operations and the kick are the
//!   worker's [`Reactor`] (src/ublk/reactor.rs).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use parking_lot::Mutex;
use smol::LocalExecutor;

use super::error::UblkError;
use super::queue::{QueueCtx, QueueSpec};
use super::reactor::{self, Kick, Reactor};

/// Tasks run per loop turn before completions are reaped again.
const TICK_BUDGET: usize = 512;
/// How long a detach waits for the kernel to abort a queue's commands.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer than DRAIN_TIMEOUT a caller waits for a worker's detach answer.
const REPLY_SLACK: Duration = Duration::from_secs(20);

/// Messages to a worker.
pub(crate) enum WorkerMsg {
    /// Start serving a queue; reply once its FETCH_REQs are queued for submission.
    Attach(QueueSpec, mpsc::SyncSender<Result<(), UblkError>>),
    /// Wait until the queue's tag tasks ended (the kernel aborted their commands
    /// after STOP_DEV), then release its file slot; reply when done.
    Detach(u32, u16, mpsc::SyncSender<Result<(), UblkError>>),
    /// Stop serving: drop every task (no request reaches a target afterwards),
    /// reply, then keep the ring, untouched, until the process exits (see
    /// `worker_loop`).
    Exit(mpsc::SyncSender<()>),
    /// Tests: run a closure on the worker thread (e.g. to spawn a task there).
    #[cfg(test)]
    Run(OnWorker),
}

/// A closure run on a worker thread (tests only).
#[cfg(test)]
pub(crate) type OnWorker = Box<dyn FnOnce(&Rc<WorkerCtx>) + Send>;

/// The handle other threads keep for a worker.
pub(crate) struct WorkerHandle {
    tx: Mutex<mpsc::Sender<WorkerMsg>>,
    kick: Arc<Kick>,
    /// Queues attached (the placement load).
    pub(crate) load: AtomicUsize,
}

impl WorkerHandle {
    pub(crate) fn send(&self, msg: WorkerMsg) -> Result<(), UblkError> {
        self.tx.lock().send(msg).map_err(|_| UblkError::ShutDown)?;
        self.kick.kick();
        Ok(())
    }

    pub(crate) fn attach(&self, spec: QueueSpec) -> Result<(), UblkError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(WorkerMsg::Attach(spec, tx))?;
        rx.recv().map_err(|_| UblkError::ShutDown)??;
        self.load.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn detach(&self, dev_id: u32, qid: u16) -> Result<(), UblkError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(WorkerMsg::Detach(dev_id, qid, tx))?;
        // The worker answers within DRAIN_TIMEOUT; never wait forever on it.
        let r = match rx.recv_timeout(DRAIN_TIMEOUT + REPLY_SLACK) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(UblkError::ShutDown),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::error!(
                    dev_id,
                    qid,
                    worker = self.kick.index(),
                    "worker did not answer a detach"
                );
                return Err(UblkError::Kernel {
                    cmd: "detach queue (worker did not answer)",
                    dev_id: Some(dev_id),
                    errno: libc::ETIMEDOUT,
                });
            }
        };
        if r.is_ok() {
            self.load.fetch_sub(1, Ordering::Relaxed);
        }
        r
    }

    /// Stop serving; returns once the worker dropped its tasks. The thread is not
    /// joined: it keeps its ring until the process exits.
    pub(crate) fn exit(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.send(WorkerMsg::Exit(tx)).is_ok()
            && rx.recv_timeout(DRAIN_TIMEOUT + REPLY_SLACK).is_err()
        {
            tracing::error!(worker = self.kick.index(), "worker did not answer exit");
        }
    }
}

/// Start worker `index`, pinned to `cpu` (if any).
pub(crate) fn spawn_worker(
    index: usize,
    cpu: Option<usize>,
    files: u32,
) -> Result<WorkerHandle, UblkError> {
    let kick = Arc::new(Kick::new(index)?);
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let k2 = kick.clone();
    // Detached: a worker is never joined (it parks for good at exit).
    std::thread::Builder::new()
        .name(format!("ublk-w{index}"))
        .spawn(move || {
            if let Some(cpu) = cpu {
                pin_to_cpu(cpu);
            }
            reactor::enter_worker(index);
            match Reactor::new(k2, files) {
                Ok(r) => {
                    let _ = ready_tx.send(Ok(()));
                    worker_loop(Rc::new(r), rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| UblkError::io("spawn worker", e))?;
    ready_rx.recv().map_err(|_| UblkError::ShutDown)??;
    Ok(WorkerHandle {
        tx: Mutex::new(tx),
        kick,
        load: AtomicUsize::new(0),
    })
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity
    // reads `size_of::<cpu_set_t>()` bytes from it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(
                cpu,
                "cannot pin worker: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// The CPUs this process may run on, in order.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: as in `pin_to_cpu`; sched_getaffinity fills the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|c| libc::CPU_ISSET(*c, &set))
            .collect()
    }
}

/// What a worker knows about the queues it serves.
pub(crate) struct WorkerCtx {
    pub(crate) reactor: Rc<Reactor>,
    pub(crate) ex: Rc<LocalExecutor<'static>>,
    queues: RefCell<HashMap<(u32, u16), AttachedQueue>>,
}

struct AttachedQueue {
    ctx: Rc<QueueCtx>,
    tasks: Vec<smol::Task<()>>,
}

impl WorkerCtx {
    /// Spawn `fut` on this worker's executor, kick-aware.
    pub(crate) fn spawn<F: Future + 'static>(&self, fut: F) -> smol::Task<F::Output> {
        self.ex.spawn(self.reactor.kicking(fut))
    }

    fn attach(self: &Rc<Self>, spec: QueueSpec) -> Result<(), UblkError> {
        let key = (spec.dev_id, spec.qid);
        if self.queues.borrow().contains_key(&key) {
            return Err(UblkError::Invalid(format!(
                "queue {key:?} already attached"
            )));
        }
        let ctx = Rc::new(QueueCtx::new(spec, &self.reactor)?);
        let tasks = (0..ctx.depth())
            .map(|tag| {
                self.spawn(super::queue::serve_tag(
                    ctx.clone(),
                    self.reactor.clone(),
                    tag,
                ))
            })
            .collect();
        self.queues
            .borrow_mut()
            .insert(key, AttachedQueue { ctx, tasks });
        Ok(())
    }

    fn detach(
        self: &Rc<Self>,
        dev_id: u32,
        qid: u16,
        reply: mpsc::SyncSender<Result<(), UblkError>>,
    ) {
        let Some(q) = self.queues.borrow_mut().remove(&(dev_id, qid)) else {
            let _ = reply.send(Err(UblkError::UnknownDevice(dev_id)));
            return;
        };
        let reactor = self.reactor.clone();
        self.spawn(async move {
            let AttachedQueue { ctx, tasks } = q;
            let drained = async {
                for t in tasks {
                    t.await;
                }
                true
            };
            let timeout = async {
                smol::Timer::after(DRAIN_TIMEOUT).await;
                false
            };
            let ok = smol::future::or(drained, timeout).await;
            tracing::debug!(dev_id, qid, drained = ok, "worker: queue tasks ended");
            // Either way the tag tasks are gone now (a timeout dropped them).
            ctx.release(&reactor);
            if ok {
                let _ = reply.send(Ok(()));
            } else {
                tracing::error!(dev_id, qid, "queue did not drain after STOP_DEV");
                let _ = reply.send(Err(UblkError::Kernel {
                    cmd: "drain queue",
                    dev_id: Some(dev_id),
                    errno: libc::ETIMEDOUT,
                }));
            }
        })
        .detach();
    }
}

/// Exit: drop the tasks (their ops are abandoned and no request reaches a target any
/// more; the volumes close next), answer, and park with the ring open until the
/// process exits. The kernel then sees what it sees at kill -9: every command
/// cancelled at the exit of the task that issued it, and the devices go QUIESCED
/// for the next daemon. Closing the ring here instead left a device LIVE with no
/// server for good, now and then, on 6.12 (its guest's I/O hung: 1 in 18 rounds
/// of the teardown phase's stop-busy case).
fn stop_for_good(ctx: &WorkerCtx, ack: Option<mpsc::SyncSender<()>>) -> ! {
    ctx.queues.borrow_mut().clear();
    if let Some(ack) = ack {
        let _ = ack.send(());
    }
    loop {
        std::thread::park();
    }
}

fn worker_loop(reactor: Rc<Reactor>, rx: mpsc::Receiver<WorkerMsg>) {
    let ctx = Rc::new(WorkerCtx {
        reactor: reactor.clone(),
        ex: Rc::new(LocalExecutor::new()),
        queues: RefCell::new(HashMap::new()),
    });
    loop {
        loop {
            match rx.try_recv() {
                Ok(WorkerMsg::Attach(spec, reply)) => {
                    let _ = reply.send(ctx.attach(spec));
                }
                Ok(WorkerMsg::Detach(dev_id, qid, reply)) => {
                    tracing::debug!(dev_id, qid, "worker: detach requested");
                    ctx.detach(dev_id, qid, reply)
                }
                #[cfg(test)]
                Ok(WorkerMsg::Run(f)) => f(&ctx),
                Ok(WorkerMsg::Exit(ack)) => stop_for_good(&ctx, Some(ack)),
                Err(mpsc::TryRecvError::Disconnected) => stop_for_good(&ctx, None),
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        let mut ran = 0;
        while ran < TICK_BUDGET && ctx.ex.try_tick() {
            ran += 1;
        }
        // Sleep only if nothing is pending: no task left after the budget, none woken
        // by the completions already waiting, and no kick consumed here. A kick reaped
        // now was sent after the channel was read above; sleeping on it would leave
        // its message (e.g. a Detach) unread until some unrelated completion arrives,
        // which on an idle worker is never (this was the "DELETE hang").
        let busy = reactor.reap() > 0 || ran == TICK_BUDGET;
        reactor.enter(!busy);
        reactor.reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::{opcode, types};
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// Regression test for the "DELETE hang": a kick that lands while the worker is
    /// awake for an unrelated completion (here: a read on a socket) must not be
    /// swallowed, or the message it announced waits until the next completion, which
    /// on an idle worker never comes. Each round wakes the worker with one socket
    /// byte, then sends a message after a varying delay and waits for its answer;
    /// no further completion arrives until it is answered.
    #[test]
    fn a_message_sent_while_the_worker_is_awake_is_answered() {
        let w = match spawn_worker(0, None, 4) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("skipping: io_uring unavailable ({e})");
                return;
            }
        };
        let (mut tx_sock, rx_sock) = UnixStream::pair().unwrap();
        let rounds = 20_000;
        let (done_tx, done_rx) = mpsc::channel();
        w.send(WorkerMsg::Run(Box::new(move |ctx: &Rc<WorkerCtx>| {
            let reactor = ctx.reactor.clone();
            ctx.spawn(async move {
                let mut buf = vec![0u8; 1];
                let mut got = 0;
                while got < rounds {
                    let sqe =
                        opcode::Read::new(types::Fd(rx_sock.as_raw_fd()), buf.as_mut_ptr(), 1)
                            .build();
                    // The buffer outlives the op: we await it before touching `buf`.
                    if reactor.submit(sqe).await <= 0 {
                        break;
                    }
                    got += 1;
                }
                let _ = done_tx.send(got);
            })
            .detach();
        })))
        .unwrap();
        for i in 0..rounds {
            tx_sock.write_all(&[1]).unwrap();
            // Vary the moment of the kick across the worker's wake-up.
            for _ in 0..(i % 64) * 20 {
                std::hint::spin_loop();
            }
            let (reply_tx, reply_rx) = mpsc::sync_channel(1);
            w.send(WorkerMsg::Detach(9999, 0, reply_tx)).unwrap();
            match reply_rx.recv_timeout(Duration::from_secs(20)) {
                Ok(r) => assert!(matches!(r, Err(UblkError::UnknownDevice(9999)))),
                Err(_) => panic!("round {i}: the worker never answered (kick lost)"),
            }
        }
        assert_eq!(
            done_rx.recv_timeout(Duration::from_secs(20)).unwrap(),
            rounds
        );
        w.exit();
    }
}
