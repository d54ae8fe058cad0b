//! Bounce mode (`GLIDEFS_BOUNCE_MODE=1`, or a kernel without USER_COPY): the legacy
//! data path where each tag owns a stable buffer whose address goes with FETCH_REQ /
//! COMMIT_AND_FETCH_REQ; the kernel copies WRITE data into it before delivering the
//! request and copies READ data out of it on commit.
//!
//! Memory: depth × max request bytes per queue, reserved up front but only faulted in
//! as tags touch it. This is the path whose RSS grows with devices; it is a kill
//! switch, not the default.

use std::io;

use memmap2::MmapMut;

/// One queue's per-tag buffers in one anonymous mapping.
pub(crate) struct BounceBufs {
    map: MmapMut,
    buf_bytes: usize,
    tags: usize,
}

impl BounceBufs {
    pub(crate) fn new(tags: usize, buf_bytes: usize) -> io::Result<BounceBufs> {
        let len = tags
            .checked_mul(buf_bytes)
            .filter(|l| *l > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(BounceBufs {
            map: MmapMut::map_anon(len)?,
            buf_bytes,
            tags,
        })
    }

    /// Address handed to the kernel for `tag`.
    pub(crate) fn tag_addr(&self, tag: usize) -> u64 {
        self.map.as_ptr() as u64 + (tag.min(self.tags) * self.buf_bytes) as u64
    }

    /// Tag `tag`'s buffer.
    ///
    /// # Safety
    /// The caller must be the only user of tag `tag`'s buffer while the returned slice
    /// lives (one task per tag), and must not hold it across a command that lets the
    /// kernel write the buffer.
    pub(crate) unsafe fn tag_buf(&self, tag: usize) -> Option<&mut [u8]> {
        if tag >= self.tags {
            return None;
        }
        // SAFETY: in bounds (tag < tags); exclusivity is the caller's contract. The
        // mapping is writable (MmapMut) and lives as long as `self`.
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                self.map.as_ptr().add(tag * self.buf_bytes) as *mut u8,
                self.buf_bytes,
            )
        })
    }
}
