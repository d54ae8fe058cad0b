//! Names, sizes, bounds and defaults: every value that more than one layer needs,
//! defined once.
//!
//! The config (`config.rs`), the API, the router, the volume engine and the ublk data
//! plane all refer here instead of writing their own number or rule, so a default or
//! a bound cannot drift between the layer that parses it and the layer that uses it.
//!
//! Invariants:
//! - only names passing [`validate_name`] reach a file path or an object key: a name
//!   is `[a-z0-9][a-z0-9._-]{0,63}` (no `/`, never `.` or `..`, never a leading `-`);
//! - every size a device or a volume is created or grown to passes [`check_aligned`]
//!   (a multiple of [`SIZE_ALIGN`], the engine's validity sector);
//! - each `*_RANGE` is the inclusive range the config accepts and the layer enforces.
//!
//! The operator-facing table of keys and defaults is docs/operations.md.

use std::ops::RangeInclusive;
use std::time::Duration;

/// Longest export / volume name in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Check an export (= volume) name; the error says what is wrong.
pub fn validate_name(name: &str) -> Result<(), String> {
    validate_name_of("export", name)
}

/// Check the name of a `what` (export, snapshot): the same rules for every name
/// that becomes part of an object key or a path.
pub fn validate_name_of(what: &str, name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let Some(&first) = b.first() else {
        return Err(format!("{what} name is empty"));
    };
    if b.len() > MAX_NAME_LEN {
        return Err(format!(
            "{what} name is {} bytes; at most {MAX_NAME_LEN}",
            b.len()
        ));
    }
    let first_ok = first.is_ascii_lowercase() || first.is_ascii_digit();
    let rest_ok = b.iter().all(|&c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'_' || c == b'-'
    });
    if !first_ok || !rest_ok {
        return Err(format!(
            "invalid {what} name {name:?}: use 1-{MAX_NAME_LEN} of a-z 0-9 . _ - starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Export and volume sizes are multiples of this (4 KiB).
pub const SIZE_ALIGN: u64 = crate::SECTOR_SIZE as u64;

/// Largest export (64 TiB).
pub const MAX_EXPORT_SIZE: u64 = 64 << 40;

/// Check that `size` is a multiple of [`SIZE_ALIGN`] (0 passes: it means "the stored
/// size" where a caller allows it).
pub fn check_aligned(size: u64) -> Result<(), String> {
    if size.is_multiple_of(SIZE_ALIGN) {
        Ok(())
    } else {
        Err(format!("size {size} is not a multiple of 4 KiB"))
    }
}

/// Check the size of a new or grown export: positive, aligned, at most
/// [`MAX_EXPORT_SIZE`].
pub fn validate_size(size: u64) -> Result<(), String> {
    if size == 0 {
        return Err("size must be greater than 0".to_string());
    }
    check_aligned(size)?;
    if size > MAX_EXPORT_SIZE {
        return Err(format!(
            "size {} exceeds the maximum of {}",
            crate::size::format_size(size),
            crate::size::format_size(MAX_EXPORT_SIZE)
        ));
    }
    Ok(())
}

/// `cache.dirty_limit`: dirty bytes per export beyond which writers wait (1 GiB).
pub const DIRTY_LIMIT: u64 = 1 << 30;

/// `cache.flush_interval`: dirty data older than this is uploaded.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Target size of one segment object: the flusher packs dirty data of one export
/// into segments this large, and uploads a smaller one only when its oldest data
/// reached the flush interval or something waits for the store (drain, FLUSH in
/// store mode, dirty limit, close). 1 GiB of sequential writes from a writer that
/// fills a segment within the flush interval is then 11 segment PUTs (issue 15's
/// goal: at most 16 PUTs per GiB, manifest and lease renewals included). One
/// segment is built in memory while it is uploaded.
pub const SEGMENT_TARGET: u64 = 96 << 20;

/// Compaction rewrites a segment whose live bytes fell below this percentage of
/// its size (and garbage collection deletes it): the store then holds at most
/// about 100/70 = 1.43 bytes per live byte, and reclaiming one byte rewrites at
/// most 70/30 = 2.3.
pub const COMPACT_BELOW_LIVE_PCT: u8 = 70;

/// A block whose live extents need more than one GET, none of them written in this
/// long, is merged into one whole-block extent (reads of it are one GET again).
pub const MERGE_COLD_AFTER: Duration = Duration::from_secs(60);

/// Merges rewrite at most this percentage of the bytes the volume's own writes
/// uploaded (since it was opened): 128 KiB per merged block, so a writer that
/// scatters 4 KiB writes pays at most 1.5x the store bytes, merges included.
pub const MERGE_BUDGET_PCT: u64 = 50;

/// `cache.shared_cache`: capacity of the host's in-memory cache of the base data
/// forks read through to their snapshots (each extent held once per host).
pub const SHARED_CACHE: u64 = 256 << 20;

/// `cache.gc_grace`: a segment that holds nothing live is deleted this long after
/// garbage collection first found it so (a reader that still holds its address,
/// such as a former lease holder's cold read or a fork being created from a
/// manifest, finds it for that long). 0 deletes at once.
pub const GC_GRACE: Duration = Duration::from_secs(600);

/// `store.timeout`: one store request.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(30);

/// `store.retries`: extra attempts of a transiently failed store request.
pub const STORE_RETRIES: u32 = 3;

/// Accepted `store.retries`.
pub const STORE_RETRIES_RANGE: RangeInclusive<u32> = 0..=100;

/// First backoff ceiling of a store retry; doubles per retry.
pub const STORE_RETRY_BASE: Duration = Duration::from_millis(100);

/// Largest single store backoff.
pub const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// `ublk.queues`: hardware queues per device.
pub const QUEUES: u16 = 1;

/// Accepted `ublk.queues`.
pub const QUEUES_RANGE: RangeInclusive<u32> = 1..=256;

/// `ublk.queue_depth`: tags per queue.
pub const QUEUE_DEPTH: u16 = 64;

/// Accepted `ublk.queue_depth` (the kernel's `UBLK_MAX_QUEUE_DEPTH` is the top).
pub const QUEUE_DEPTH_RANGE: RangeInclusive<u32> = 1..=4096;

/// `ublk.pool_slots`: buffer slots per data-plane worker (256 × 128 KiB = 32 MiB).
pub const POOL_SLOTS: usize = 256;

/// Accepted `ublk.pool_slots`.
pub const POOL_SLOTS_RANGE: RangeInclusive<u32> = 1..=1 << 20;

/// Accepted `ublk.workers` (0: one per CPU, at most [`MAX_DEFAULT_WORKERS`]).
pub const WORKERS_RANGE: RangeInclusive<u32> = 0..=1024;

/// Most workers started when `ublk.workers = 0`.
pub const MAX_DEFAULT_WORKERS: usize = 16;

/// `limits.max_exports`.
pub const MAX_EXPORTS: u32 = 20_000;

/// Accepted `limits.max_exports`.
pub const MAX_EXPORTS_RANGE: RangeInclusive<u32> = 1..=1 << 20;

/// `limits.open_concurrency`: volumes opened or closed in parallel. Once the kernel's
/// teardown of a killed daemon is fast (expedited RCU), the reopens bound a recovery:
/// at 5,025 exports in the TCG guest 64 took 61.9 s where 16 took 69.7 s
/// (scripts/bench-results/density-5025-recovery-2026-12-05.txt).
pub const OPEN_CONCURRENCY: u32 = 64;

/// Accepted `limits.open_concurrency`.
pub const OPEN_CONCURRENCY_RANGE: RangeInclusive<u32> = 1..=1024;

/// Backoff of the background re-opens of exports whose volume could not be opened at
/// start-up because the store was unavailable (their devices wait, quiesced).
pub const REOPEN_BACKOFF: crate::backoff::Backoff = crate::backoff::Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(30),
};

/// Check `v` against an accepted range; the message is the one the config reports.
pub fn check_range(v: u32, range: &RangeInclusive<u32>) -> Result<(), String> {
    if range.contains(&v) {
        Ok(())
    } else {
        Err(format!("must be {} to {}", range.start(), range.end()))
    }
}

/// `cache.lease_ttl`: a lease not renewed for this long may be taken by another host
/// (measured on the store's clock where the store gives one; see `volume::lease`).
pub const LEASE_TTL: Duration = Duration::from_secs(300);

/// `cache.lease_ttl` bounds: below 10 s a busy store's latency alone would self-fence
/// writers; above an hour a dead host's volumes wait too long for another host.
pub const LEASE_TTL_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(10)..=Duration::from_secs(3600);

/// The holder renews its lease every `LEASE_TTL / LEASE_RENEW_DIVISOR`.
pub const LEASE_RENEW_DIVISOR: u32 = 3;

/// Self-fencing margin, as a fraction `1/LEASE_SELF_FENCE_DIVISOR` of the TTL: a
/// holder stops acknowledging writes and FLUSHes `TTL - TTL/10 - LEASE_CLOCK_SLACK`
/// after its last renewal began. This covers clock *rate* differences up to 10 %
/// between the holder and the store; clock offsets do not matter (docs/format.md,
/// "Ownership").
pub const LEASE_SELF_FENCE_DIVISOR: u32 = 10;

/// Added to the TTL before a lease is judged stale, and subtracted from the holder's
/// deadline: the store's Last-Modified has one-second resolution.
pub const LEASE_CLOCK_SLACK: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "0", "vm-1", "a.b_c-d", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "..",
            ".a",
            "-a",
            "_a",
            "A",
            "vmA",
            "a/b",
            "a b",
            "é",
            "a\0",
            &"x".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes() {
        assert!(validate_size(4096).is_ok());
        assert!(validate_size(MAX_EXPORT_SIZE).is_ok());
        assert!(validate_size(0).is_err());
        assert!(validate_size(4095).is_err());
        assert!(validate_size(MAX_EXPORT_SIZE + 4096).is_err());
        assert!(validate_size(1 << 60).is_err());
        assert!(check_aligned(0).is_ok());
        assert!(check_aligned(4097).is_err());
    }

    #[test]
    fn ranges() {
        assert!(check_range(0, &QUEUES_RANGE).is_err());
        assert_eq!(
            check_range(5000, &QUEUE_DEPTH_RANGE),
            Err("must be 1 to 4096".to_string())
        );
        assert!(check_range(POOL_SLOTS as u32, &POOL_SLOTS_RANGE).is_ok());
    }
}
