//! The one backoff rule of every retry loop: the store's request retries
//! (`store/retry.rs`), the flusher's upload retries and the engine's miss fetch.
//!
//! Retry `n` (1-based) sleeps a uniformly random time in `[c/2, c]` where
//! `c = min(max, base · 2^(n-1))` ("equal jitter"): it grows exponentially, never
//! exceeds `max`, and many clients recovering from one outage do not stampede, while
//! no retry fires immediately. The random input is passed in, so the volume engine
//! keeps its injected, seeded RNG and stays deterministic in tests.

use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling before the first retry; doubles with every retry.
    pub base: Duration,
    /// Upper bound of a single sleep.
    pub max: Duration,
}

impl Backoff {
    /// The ceiling `c` of retry `retry` (1-based): `min(max, base · 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max)
    }

    /// The sleep before retry `retry` (1-based), given a uniformly random `random`.
    pub fn delay(&self, retry: u32, random: u64) -> Duration {
        let cap = self.ceiling(retry);
        let half = cap / 2;
        let span = u64::try_from((cap - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random % span.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grows_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
        assert_eq!(b.delay(1, 0), Duration::from_millis(50));
    }

    proptest! {
        #[test]
        fn delay_is_within_half_and_ceiling(
            base_ms in 0u64..10_000,
            max_ms in 0u64..100_000,
            retry in 0u32..100,
            random in any::<u64>(),
        ) {
            let b = Backoff {
                base: Duration::from_millis(base_ms),
                max: Duration::from_millis(max_ms),
            };
            let c = b.ceiling(retry);
            let d = b.delay(retry, random);
            prop_assert!(c <= b.max);
            prop_assert!(d <= c && d >= c / 2, "{d:?} not in [{:?}, {c:?}]", c / 2);
        }
    }
}
