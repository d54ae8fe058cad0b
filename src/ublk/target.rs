//! What a ublk device serves: the data plane calls an [`IoTarget`] for every request.
//! The daemon implements it for a volume (plus metrics); tests use [`MemTarget`].

use async_trait::async_trait;
use std::fs::File;
use std::io;
use std::sync::Arc;

/// The backend of one ublk device. Offsets and lengths are in bytes, 512-byte aligned.
/// Errors are completed to the kernel as `-errno` (`io::Error::raw_os_error`, else EIO).
#[async_trait]
pub trait IoTarget: Send + Sync + 'static {
    /// Device size in bytes.
    fn size_bytes(&self) -> u64;
    /// Fill `buf` with the bytes at `offset`.
    async fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write `data` at `offset`; with `fua`, durable before returning.
    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()>;
    /// Make every completed write durable (REQ_OP_FLUSH).
    async fn flush(&self) -> io::Result<()>;
    /// Discard `len` bytes at `offset` (reads back zeros afterwards).
    async fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Write zeros over `len` bytes at `offset`.
    async fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
    /// The local file that holds all of `[offset, offset+len)` at the same offset,
    /// when it does: a READ is then copied from a mapping of it into the request
    /// (`file_map.rs`) without calling [`IoTarget::read`]. A target answering
    /// `Some` counts the read as served (its statistics, its readahead) as `read`
    /// would; should the copy fail, `read` follows and counts it again. Default:
    /// `None` (every READ calls `read`).
    fn cached_file(&self, offset: u64, len: u64) -> Option<Arc<File>> {
        let _ = (offset, len);
        None
    }
}
