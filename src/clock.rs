//! The injected clock: wall time for lease timestamps and the store's clock in
//! [`crate::store::MemStore`], monotonic time for the self-fencing deadline. Tests
//! replace it ([`ManualClock`]) so lease expiry and takeover are deterministic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of time (injected for determinism).
pub trait Clock: Send + Sync + 'static {
    /// Wall clock: milliseconds since the Unix epoch. May jump (NTP, operator).
    fn now_ms(&self) -> u64;
    /// Monotonic milliseconds since an arbitrary origin; never goes back. Deadlines
    /// that must not move when the wall clock is set (self-fencing) use this.
    fn mono_ms(&self) -> u64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
    fn mono_ms(&self) -> u64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
    }
}

/// A clock that moves only when told to (tests, simulations). Wall and monotonic
/// time advance together; `skew_ms` offsets the wall clock only, as a host whose
/// clock is set wrong would see it.
#[derive(Debug, Default)]
pub struct ManualClock {
    mono: AtomicU64,
    wall_base: AtomicU64,
}

impl ManualClock {
    /// A clock at wall time `wall_ms`, monotonic 0.
    pub fn new(wall_ms: u64) -> ManualClock {
        ManualClock {
            mono: AtomicU64::new(0),
            wall_base: AtomicU64::new(wall_ms),
        }
    }
    /// Move time forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.mono.fetch_add(ms, Ordering::AcqRel);
    }
    /// Set the wall clock's offset (a host whose clock is wrong by `wall_ms - true`).
    pub fn set_wall(&self, wall_ms: u64) {
        let mono = self.mono.load(Ordering::Acquire);
        self.wall_base
            .store(wall_ms.wrapping_sub(mono), Ordering::Release);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.wall_base
            .load(Ordering::Acquire)
            .wrapping_add(self.mono.load(Ordering::Acquire))
    }
    fn mono_ms(&self) -> u64 {
        self.mono.load(Ordering::Acquire)
    }
}

/// A clock that reads another one shifted by a fixed wall-clock offset (a host
/// whose clock is `offset_ms` ahead, or behind when negative) and runs `rate_permille`
/// per mille fast or slow on both readings.
pub struct SkewedClock {
    /// The true clock.
    pub base: std::sync::Arc<dyn Clock>,
    /// Wall-clock offset in ms.
    pub offset_ms: i64,
    /// Rate error in per mille (e.g. 5 = 0.5 % fast, -5 = 0.5 % slow).
    pub rate_permille: i64,
}

impl SkewedClock {
    fn scale(&self, v: u64) -> u64 {
        let d = (v as i128 * self.rate_permille as i128) / 1000;
        (v as i128 + d).max(0) as u64
    }
}

impl Clock for SkewedClock {
    fn now_ms(&self) -> u64 {
        let w = self.base.now_ms() as i128 + self.offset_ms as i128;
        let m = self.base.mono_ms();
        (w - m as i128 + self.scale(m) as i128).max(0) as u64
    }
    fn mono_ms(&self) -> u64 {
        self.scale(self.base.mono_ms())
    }
}
