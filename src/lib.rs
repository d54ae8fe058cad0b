//! glidefs: Linux block devices served through the kernel's ublk driver, with a
//! local write-back cache and the durable copy in S3-compatible object storage.
//!
//! Layers, top to bottom (see docs/architecture.md):
//! - [`api`]: HTTP API, Prometheus metrics, the CLI's client side.
//! - [`router`]: name → export (volume + device) registry, persisted.
//! - [`ublk`]: control plane (libublk) and our own data plane (pinned workers,
//!   io_uring, USER_COPY, per-worker buffer pool).
//! - [`volume`]: the per-export engine: cache file, journal, flusher, segments.
//! - [`store`]: object stores (S3 and a local directory).

pub mod api;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod metrics;
pub mod parallel;
pub mod router;
pub mod rules;
pub mod scrape_thread;
pub mod size;
pub mod stage_timers;
pub mod store;
pub mod ublk;
pub mod volume;

/// The block size of the volume engine and the I/O buffer size of the data plane.
/// Everything else (segment entry size, buffer pool slot size, io_opt) derives from it.
pub const BLOCK_SIZE: usize = 128 * 1024;

/// Validity / dirtiness is tracked per sector of this size inside a block.
pub const SECTOR_SIZE: usize = 4096;

/// Requests must be aligned to this (the device's logical block size).
pub const LOGICAL_BLOCK_SIZE: usize = 512;

/// Mode of every file glidefs creates that holds guests' data (cache files, journals,
/// local-store objects): the daemon's user only, whatever the process umask.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
