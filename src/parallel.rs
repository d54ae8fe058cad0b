//! The crate's two ways of doing several things at once: [`map`], the one bounded
//! parallel map on threads (start-up recovery (router and ublk), bulk device
//! deletion and shutdown's volume closes), and [`join_all`], the one concurrent
//! wait on futures (the conditional-write probe, a miss's extent GETs).
//!
//! Invariants: at most `limit` scoped threads (never more than the source can
//! feed, when its length is known); items are taken one at a time from a shared
//! source, so a slow item never holds up the others and a source that is a channel
//! (`Receiver::into_iter`) is served as items arrive; `map` returns only after every
//! item is done, with results in completion order (callers sort when they need to).

use parking_lot::Mutex;

/// Apply `f` to every item of `items` on at most `limit` threads (at least one).
pub fn map<I, R, F>(limit: usize, items: I, f: F) -> Vec<R>
where
    I: IntoIterator,
    I::IntoIter: Send,
    I::Item: Send,
    R: Send,
    F: Fn(I::Item) -> R + Sync,
{
    let items = items.into_iter();
    let threads = match items.size_hint() {
        (_, Some(upper)) => limit.min(upper),
        (_, None) => limit,
    }
    .max(1);
    let source = Mutex::new(items);
    let out = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                // The source's lock is released before `f` runs.
                let next = source.lock().next();
                let Some(item) = next else { break };
                let r = f(item);
                out.lock().push(r);
            });
        }
    });
    out.into_inner()
}

/// Poll all futures concurrently on the calling task; results in input order.
pub async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    futures_lite::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn every_item_once_within_the_limit() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let mut out = super::map(3, 0..20u32, |i| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            running.fetch_sub(1, Ordering::SeqCst);
            i * 2
        });
        out.sort_unstable();
        assert_eq!(out, (0..20).map(|i| i * 2).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 3);
    }

    #[test]
    fn empty_and_channel_sources() {
        assert!(super::map(4, Vec::<u8>::new(), |x| x).is_empty());
        let (tx, rx) = std::sync::mpsc::channel();
        let feeder = std::thread::spawn(move || {
            for i in 0..5u8 {
                tx.send(i).ok();
            }
        });
        let mut got = super::map(2, rx, |x| x);
        feeder.join().ok();
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }
}
