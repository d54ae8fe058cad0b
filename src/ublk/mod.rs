//! ublk: control plane on libublk, data plane of our own (pinned workers, io_uring,
//! USER_COPY, per-worker buffer pool), crash recovery. See docs/architecture.md.

pub mod target;
pub use target::IoTarget;
