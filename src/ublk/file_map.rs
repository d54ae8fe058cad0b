//! A read-only shared mapping of the file a device's target caches its data in, so
//! that a READ whose bytes are all in that file is copied by the kernel straight from
//! the file's page cache into the request: one `pwrite` on the char device from the
//! mapped range, instead of a `pread` into a pool slot and a `pwrite` from it (two
//! copies, and the page-cache read path, the dearer half under emulation).
//!
//! Invariants:
//! - userspace never reads the mapping: its address only goes to `pwrite`, so a
//!   fault in it (an I/O error reading the page in, a file shorter than the mapping)
//!   is the kernel's `EFAULT` on that call, never a `SIGBUS` in the daemon; the
//!   caller then serves the request the ordinary way;
//! - a mapping belongs to one open file (`Arc<File>` identity): when the target hands
//!   over another file (a volume re-opened), the old mapping is dropped first;
//! - a file that grew is mapped again at its new size; the sum of all mappings in the
//!   process stays within [`MAPPED_BUDGET`] (address space, not memory: a page of the
//!   mapping costs a page-table entry once read, and the page cache holds the data
//!   whether or not it is mapped). Beyond it, or when `mmap` fails, requests take the
//!   ordinary path, and that file is not tried again (no `fstat` and `mmap` per
//!   READ on a file system that refuses the mapping); another file is.

use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::Mmap;
use parking_lot::Mutex;

use super::user_copy::io_buf_pos;

/// Address space all file mappings of the process may take together (32 TiB, a
/// quarter of x86-64's 128 TiB user space): the heap, the buffer pools and the
/// libraries keep the rest.
pub const MAPPED_BUDGET: u64 = 32 << 40;

static MAPPED: AtomicU64 = AtomicU64::new(0);

struct Mapped {
    file: Arc<File>,
    map: Mmap,
}

impl Drop for Mapped {
    fn drop(&mut self) {
        MAPPED.fetch_sub(self.map.len() as u64, Ordering::Relaxed);
    }
}

/// What a device holds for its cache file.
#[derive(Default)]
enum State {
    #[default]
    None,
    Mapped(Arc<Mapped>),
    /// This file could not be mapped (budget, `mmap`): its READs take the slot path.
    Refused(Arc<File>),
}

/// The mapping of one device's cache file (shared by its queues).
#[derive(Default)]
pub(crate) struct FileMap {
    cur: Mutex<State>,
}

impl FileMap {
    /// The mapping of `file` covering `[0, end)`: the current one, or a new one (the
    /// file is new or grew). `None` when the file is shorter, the budget is spent or
    /// `mmap` fails.
    fn mapping(&self, file: &Arc<File>, end: u64) -> Option<Arc<Mapped>> {
        let mut cur = self.cur.lock();
        match &*cur {
            State::Mapped(m) if Arc::ptr_eq(&m.file, file) && m.map.len() as u64 >= end => {
                return Some(m.clone())
            }
            State::Refused(f) if Arc::ptr_eq(f, file) => return None,
            _ => {}
        }
        // Drop the old mapping before taking budget for the new one.
        *cur = State::None;
        let len = file.metadata().ok()?.len();
        if len < end || len > usize::MAX as u64 {
            return None;
        }
        let before = MAPPED.fetch_add(len, Ordering::Relaxed);
        if before + len > MAPPED_BUDGET {
            MAPPED.fetch_sub(len, Ordering::Relaxed);
            tracing::debug!(len, "cache-file mappings are at their budget; this device's reads take the ordinary path");
            *cur = State::Refused(file.clone());
            return None;
        }
        // SAFETY: a read-only shared mapping of a file we hold open. Its contents may
        // change underneath (the target writes the file) and it may fault (a shorter
        // file, an I/O error): that is why no Rust reference to it is ever formed; its
        // address is only passed to the kernel (pwrite), which reports a fault as
        // EFAULT (module invariants).
        let map = match unsafe { Mmap::map(&**file) } {
            Ok(m) => m,
            Err(e) => {
                MAPPED.fetch_sub(len, Ordering::Relaxed);
                tracing::debug!(error = %e, "mapping a cache file failed; this device's reads take the ordinary path");
                *cur = State::Refused(file.clone());
                return None;
            }
        };
        let m = Arc::new(Mapped {
            file: file.clone(),
            map,
        });
        *cur = State::Mapped(m.clone());
        Some(m)
    }

    /// Copy `len` bytes at `offset` of `file` into READ request (`qid`, `tag`) from
    /// the mapping. `Ok(false)`: not done (no mapping); `Err`: the copy failed (the
    /// request's data may be partly written; the caller writes all of it again).
    pub(crate) fn copy_to_request(
        &self,
        file: &Arc<File>,
        offset: u64,
        len: usize,
        fd: RawFd,
        qid: u16,
        tag: u16,
    ) -> io::Result<bool> {
        let Some(end) = offset.checked_add(len as u64) else {
            return Ok(false);
        };
        let Some(m) = self.mapping(file, end) else {
            return Ok(false);
        };
        let base = m.map.as_ptr().wrapping_add(offset as usize);
        let mut done = 0usize;
        while done < len {
            let pos = io_buf_pos(qid, tag, done as u32);
            // SAFETY: `base + done .. base + len` lies inside the live mapping `m`
            // (end <= its length, checked in `mapping`), which `m` keeps mapped for
            // the call; the kernel only reads it, and reports a fault as EFAULT.
            let n = unsafe {
                libc::pwrite(
                    fd,
                    base.wrapping_add(done).cast(),
                    len - done,
                    pos as libc::off_t,
                )
            };
            match n {
                n if n > 0 => done += n as usize,
                0 => return Err(io::Error::from_raw_os_error(libc::EIO)),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    fn file_with(dir: &std::path::Path, name: &str, data: &[u8]) -> Arc<File> {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .unwrap(),
        )
    }

    /// The copy lands where a READ request's data goes (`io_buf_pos`): a regular
    /// file stands in for the char device.
    #[test]
    fn copies_the_mapped_range_to_the_request_position_and_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        let cache = file_with(dir.path(), "cache", &data);
        let out = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("out"))
            .unwrap();
        let map = FileMap::default();
        let (qid, tag) = (1u16, 3u16);
        assert!(map
            .copy_to_request(&cache, 4096, 8192, out.as_raw_fd(), qid, tag)
            .unwrap());
        let mut got = vec![0u8; 8192];
        out.read_exact_at(&mut got, io_buf_pos(qid, tag, 0))
            .unwrap();
        assert_eq!(got, data[4096..12288]);
        // Beyond the end of the file: not mapped, nothing copied.
        assert!(!map
            .copy_to_request(&cache, 60 * 1024, 8192, out.as_raw_fd(), qid, tag)
            .unwrap());
        // The file grew: mapped again at its new size.
        cache.write_all_at(&[7u8; 8192], 64 * 1024).unwrap();
        assert!(map
            .copy_to_request(&cache, 64 * 1024, 8192, out.as_raw_fd(), qid, tag)
            .unwrap());
        out.read_exact_at(&mut got, io_buf_pos(qid, tag, 0))
            .unwrap();
        assert_eq!(got, [7u8; 8192]);
        // A write to the file through its descriptor is seen by the next copy.
        cache.write_all_at(&[9u8; 4096], 0).unwrap();
        assert!(map
            .copy_to_request(&cache, 0, 4096, out.as_raw_fd(), qid, tag)
            .unwrap());
        out.read_exact_at(&mut got[..4096], io_buf_pos(qid, tag, 0))
            .unwrap();
        assert_eq!(got[..4096], [9u8; 4096]);
        // Another file (a volume opened again): its own bytes, not the old mapping's.
        let other = file_with(dir.path(), "other", &[3u8; 80 * 1024]);
        assert!(map
            .copy_to_request(&other, 0, 4096, out.as_raw_fd(), qid, tag)
            .unwrap());
        out.read_exact_at(&mut got[..4096], io_buf_pos(qid, tag, 0))
            .unwrap();
        assert_eq!(got[..4096], [3u8; 4096]);
    }

    /// A file that cannot be mapped (here: opened write-only) is refused once and not
    /// tried again; another file is.
    #[test]
    fn an_unmappable_file_is_refused_and_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wo");
        std::fs::write(&p, [1u8; 8192]).unwrap();
        let wo = Arc::new(std::fs::OpenOptions::new().write(true).open(&p).unwrap());
        let out = tempfile::tempfile().unwrap();
        let map = FileMap::default();
        assert!(!map
            .copy_to_request(&wo, 0, 4096, out.as_raw_fd(), 0, 0)
            .unwrap());
        assert!(matches!(&*map.cur.lock(), State::Refused(f) if Arc::ptr_eq(f, &wo)));
        assert!(!map
            .copy_to_request(&wo, 0, 4096, out.as_raw_fd(), 0, 0)
            .unwrap());
        let ok = file_with(dir.path(), "ok", &[2u8; 8192]);
        assert!(map
            .copy_to_request(&ok, 0, 4096, out.as_raw_fd(), 0, 0)
            .unwrap());
        assert!(matches!(&*map.cur.lock(), State::Mapped(_)));
    }
}
