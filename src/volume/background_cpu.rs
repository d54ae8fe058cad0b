//! A small thread pool at a lower CPU priority for the flusher's CPU work (reading
//! dirty blocks back from the cache and encoding segments: crc32c, zstd, copies).
//!
//! The upload competes with the ublk workers for the same cores. Every dirty block is
//! re-uploaded whole each `flush_interval`, so under random writes over many devices
//! the upload can take most of the CPU and the guests' writes crawl (the 8-device
//! randwrite runs in docs/performance.md). At nice [`UPLOAD_NICE`] the encode only
//! gets a small share of a busy CPU and all of an idle one: under load the upload
//! falls behind, dirty data grows, and the dirty limit (writers wait there) bounds how far. Threads of a
//! process have their own nice value on Linux, so only these threads are lowered.

use std::any::Any;
use std::sync::OnceLock;

/// Nice value of the pool's threads (0 = as the workers, 19 = lowest).
pub const UPLOAD_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Pool {
    jobs: smol::channel::Sender<Job>,
}

static POOL: OnceLock<Option<Pool>> = OnceLock::new();

fn pool() -> Option<&'static Pool> {
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 4);
        let (tx, rx) = smol::channel::unbounded::<Job>();
        let mut started = 0;
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("glidefs-upload-{i}"))
                .spawn(move || {
                    if let Err(e) = rustix::process::setpriority_process(None, UPLOAD_NICE) {
                        tracing::warn!(error = %e, "could not lower the upload thread's priority");
                    }
                    while let Ok(job) = rx.recv_blocking() {
                        job();
                    }
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(error = %e, "could not start an upload thread"),
            }
        }
        (started > 0).then_some(Pool { jobs: tx })
    })
    .as_ref()
}

/// Run `f` on the low-priority pool and wait for it without blocking the executor.
/// A panic in `f` is resumed here (as `smol::unblock` does). Without a pool (no
/// thread could be started) `f` runs on smol's blocking pool at normal priority.
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let Some(pool) = pool() else {
        return smol::unblock(f).await;
    };
    let (tx, rx) = smol::channel::bounded::<Result<T, Box<dyn Any + Send>>>(1);
    let job: Job = Box::new(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send_blocking(r);
    });
    if let Err(e) = pool.jobs.send(job).await {
        // The pool's receivers are gone (cannot happen while its threads live).
        let job = e.into_inner();
        smol::unblock(job).await;
    }
    match rx.recv().await {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => unreachable!("an upload job always answers: it ran or panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_jobs_at_the_lower_priority_and_returns_their_value() {
        let nice = smol::block_on(run(|| rustix::process::getpriority_process(None)));
        assert_eq!(nice.ok(), Some(UPLOAD_NICE));
        let sum = smol::block_on(async {
            let tasks: Vec<_> = (0..16u64)
                .map(|i| smol::spawn(run(move || i * 2)))
                .collect();
            let mut s = 0;
            for t in tasks {
                s += t.await;
            }
            s
        });
        assert_eq!(sum, 240);
    }

    #[test]
    fn a_panicking_job_panics_the_caller_not_the_pool() {
        let r = std::panic::catch_unwind(|| smol::block_on(run(|| panic!("boom"))));
        assert!(r.is_err());
        assert_eq!(smol::block_on(run(|| 7)), 7);
    }
}
