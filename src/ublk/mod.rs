//! ublk: the control plane on libublk (one control thread), our own data plane
//! (pinned workers, one io_uring each with a sparse fixed-file table, USER_COPY through
//! a per-worker buffer pool, or per-tag bounce buffers as a kill switch), and crash
//! recovery of QUIESCED devices.
//!
//! Module map (each file owns one job):
//! - [`server`]: [`UblkServer`], the public entry point: add / recover / delete devices.
//! - `ctrl`: the control thread owning every libublk `UblkCtrl`, plus the few raw
//!   control commands that block on our data plane (START_DEV, END_USER_RECOVERY).
//! - `worker`: K pinned worker threads; each owns (device, queue) pairs for life.
//! - `queue`: one (device, queue): the descriptor mmap and its per-tag tasks.
//! - `io`: request handling (READ/WRITE/FLUSH/DISCARD/WRITE_ZEROES) against an
//!   [`IoTarget`].
//! - `user_copy`: pread/pwrite of request data through `/dev/ublkcN`.
//! - `bounce`: per-tag stable buffers (`GLIDEFS_BOUNCE_MODE=1`, or no USER_COPY).
//! - [`buffer_pool`]: the per-worker slot pool that bounds data-plane memory.
//! - `params`: device parameters.
//! - `recovery`: re-attaching QUIESCED devices after a crash; orphan cleanup.
//! - [`mounts`]: detaching ublk mounts from the daemon's own mount namespace, so its
//!   exit can never wait on a filesystem only it could sync.
//!
//! Which devices are "ours": every device a daemon creates carries
//! [`device_marker`]`(owner_tag)` in `ublksrv_ctrl_dev_info.ublksrv_flags`, a field
//! the kernel stores verbatim for the device's lifetime and returns in GET_DEV_INFO.
//! It survives the daemon, needs no state file, and cannot go stale. The tag comes
//! from the daemon's host id, so two daemons on one host (own cache dirs) never
//! recover or delete each other's devices. Devices of versions before the tag carry
//! [`LEGACY_DEV_MARKER`] and are still recognised.

mod bounce;
pub mod buffer_pool;
mod ctrl;
mod error;
mod file_map;
mod io;
#[cfg(test)]
mod kernel_tests;
pub mod mem_target;
pub mod mounts;
mod params;
mod queue;
mod reactor;
mod recovery;
mod server;
pub mod target;
mod user_copy;
mod worker;

pub use buffer_pool::PoolStats;
pub use error::UblkError;
pub use mem_target::MemTarget;
pub use server::UblkServer;
pub use target::IoTarget;

/// Marker of devices created before markers named their daemon ("glidefs\0").
pub const LEGACY_DEV_MARKER: u64 = u64::from_be_bytes(*b"glidefs\0");

/// Marker stored in `ublksrv_flags` of every device the daemon with `owner_tag`
/// creates: "glfs" then the tag (big endian).
pub fn device_marker(owner_tag: u32) -> u64 {
    (u64::from(u32::from_be_bytes(*b"glfs")) << 32) | u64::from(owner_tag)
}

/// Size of one data-plane buffer slot: one volume block.
pub const IO_BUF_BYTES: usize = crate::BLOCK_SIZE;

/// Options of a [`UblkServer`].
#[derive(Debug, Clone)]
pub struct UblkOptions {
    /// Worker threads (each pinned to one CPU, one io_uring). Default one per core, at
    /// most [`crate::rules::MAX_DEFAULT_WORKERS`].
    pub workers: usize,
    /// Hardware queues per device: [`crate::rules::QUEUES_RANGE`].
    pub queues: u16,
    /// Tags (in-flight requests) per queue: [`crate::rules::QUEUE_DEPTH_RANGE`].
    pub queue_depth: u16,
    /// Buffer pool slots per worker (each [`IO_BUF_BYTES`]): [`crate::rules::POOL_SLOTS`].
    pub pool_slots: usize,
    /// Use per-tag bounce buffers instead of USER_COPY. Also forced by the environment
    /// variable `GLIDEFS_BOUNCE_MODE=1`, and used when the kernel lacks USER_COPY.
    pub bounce_mode: bool,
    /// Tags this daemon's devices among other daemons' on the host (the daemon
    /// derives it from its host id; see [`device_marker`]).
    pub owner_tag: u32,
}

impl Default for UblkOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        UblkOptions {
            workers: cores.clamp(1, crate::rules::MAX_DEFAULT_WORKERS),
            queues: crate::rules::QUEUES,
            queue_depth: crate::rules::QUEUE_DEPTH,
            pool_slots: crate::rules::POOL_SLOTS,
            bounce_mode: false,
            owner_tag: 0,
        }
    }
}

/// Where a device can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The kernel's device id N.
    pub dev_id: u32,
    /// `/dev/ublkbN`.
    pub block_path: String,
    /// `/dev/ublkcN`.
    pub char_path: String,
}

impl DeviceInfo {
    pub(crate) fn new(dev_id: u32) -> Self {
        DeviceInfo {
            dev_id,
            block_path: format!("/dev/ublkb{dev_id}"),
            char_path: format!("/dev/ublkc{dev_id}"),
        }
    }
}

/// A device's state as the kernel reports it (GET_DEV_INFO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Added but not started, or stopped.
    Dead,
    /// Started and served.
    Live,
    /// Its server died; I/O waits for a new server (USER_RECOVERY).
    Quiesced,
    /// Its server died; I/O fails (USER_RECOVERY_FAIL_IO).
    FailIo,
    /// A state this build does not know.
    Unknown(u16),
}

impl DeviceState {
    pub(crate) fn from_raw(s: u16) -> Self {
        match u32::from(s) {
            libublk::sys::UBLK_S_DEV_DEAD => DeviceState::Dead,
            libublk::sys::UBLK_S_DEV_LIVE => DeviceState::Live,
            libublk::sys::UBLK_S_DEV_QUIESCED => DeviceState::Quiesced,
            libublk::sys::UBLK_S_DEV_FAIL_IO => DeviceState::FailIo,
            _ => DeviceState::Unknown(s),
        }
    }
}

/// Whether the bounce mode is forced by the environment (`GLIDEFS_BOUNCE_MODE=1`).
pub fn bounce_mode_from_env() -> bool {
    std::env::var("GLIDEFS_BOUNCE_MODE").is_ok_and(|v| v == "1")
}
