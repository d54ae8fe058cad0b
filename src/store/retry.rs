//! Retry policy for remote stores: bounded attempts, the crate's one backoff rule
//! ([`crate::backoff::Backoff`]), and the rule of what may be retried.
//!
//! Only [`StoreError::Unavailable`] is retried, and only for operations that are safe
//! to replay (GET, HEAD, LIST, DELETE, unconditional PUT). Conditional puts are never
//! replayed blindly: `S3Store::put_if` re-reads the object after an ambiguous failure
//! (see its docs). Sleeps use `smol::Timer`, so a retrying request never blocks a thread.

use super::StoreError;
use std::future::Future;
use std::time::Duration;

/// How often and how patiently a remote operation is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Extra attempts after the first (0 = no retry).
    pub retries: u32,
    /// Backoff ceiling before the first retry; doubles with every retry.
    pub base_delay: Duration,
    /// Upper bound of a single backoff.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: crate::rules::STORE_RETRIES,
            base_delay: crate::rules::STORE_RETRY_BASE,
            max_delay: crate::rules::STORE_RETRY_MAX,
        }
    }
}

impl RetryPolicy {
    /// The sleep before retry number `retry` (1-based): see [`crate::backoff`].
    pub fn backoff(&self, retry: u32) -> Duration {
        crate::backoff::Backoff {
            base: self.base_delay,
            max: self.max_delay,
        }
        .delay(retry, rand::random::<u64>())
    }

    /// Run `op` until it succeeds, fails with a non-retryable error, or the attempts
    /// are used up (the last error is returned). `op` must be safe to replay.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut retry = 0;
        loop {
            match op().await {
                Err(StoreError::Unavailable(msg)) if retry < self.retries => {
                    retry += 1;
                    tracing::debug!(retry, error = %msg, "store request failed; retrying");
                    smol::Timer::after(self.backoff(retry)).await;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy {
            retries: 10,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        };
        for retry in 1..40 {
            let d = p.backoff(retry);
            let cap = Duration::from_millis(10 * (1u64 << (retry - 1).min(20)))
                .min(Duration::from_millis(50));
            assert!(d <= cap, "retry {retry}: {d:?} > {cap:?}");
        }
    }

    #[test]
    fn retries_only_unavailable_and_stops() {
        smol::block_on(async {
            let p = RetryPolicy {
                retries: 3,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
            };
            let calls = AtomicU32::new(0);
            let r: Result<(), _> = p
                .run(|| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(StoreError::Unavailable("down".into()))
                })
                .await;
            assert!(matches!(r, Err(StoreError::Unavailable(_))));
            assert_eq!(calls.load(Ordering::SeqCst), 4);

            calls.store(0, Ordering::SeqCst);
            let r: Result<(), _> = p
                .run(|| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(StoreError::NotFound("k".into()))
                })
                .await;
            assert!(matches!(r, Err(StoreError::NotFound(_))));
            assert_eq!(calls.load(Ordering::SeqCst), 1);

            calls.store(0, Ordering::SeqCst);
            let r = p
                .run(|| async {
                    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        Err(StoreError::Unavailable("down".into()))
                    } else {
                        Ok(7)
                    }
                })
                .await;
            assert_eq!(r.unwrap(), 7);
        });
    }
}
