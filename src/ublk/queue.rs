//! One (device, queue) served by one worker: the mmap'ed request descriptors, the
//! char device's fixed-file slot (when fixed files are on), and one task per tag running
//! FETCH_REQ → handle → COMMIT_AND_FETCH_REQ → handle → … until the kernel aborts
//! the command (UBLK_IO_RES_ABORT after STOP_DEV, or the ring going away).
//!
//! Invariants: tag `t`'s descriptor and (bounce mode) buffer are touched only by tag
//! `t`'s task; every command of the queue is issued from the owning worker thread.

use std::cell::Cell;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;

use io_uring::{opcode, types};
use libublk::sys;

use super::bounce::BounceBufs;
use super::buffer_pool::PoolGroup;
use super::error::UblkError;
use super::file_map::FileMap;
use super::reactor::Reactor;
use super::target::IoTarget;

/// Everything a worker needs to serve one queue.
pub(crate) struct QueueSpec {
    pub dev_id: u32,
    pub qid: u16,
    pub depth: u16,
    pub char_fd: Arc<OwnedFd>,
    pub target: Arc<dyn IoTarget>,
    pub user_copy: bool,
    pub max_io_bytes: u32,
    /// The server's buffer pools (USER_COPY requests take a slot from this worker's).
    pub pools: Arc<PoolGroup>,
    /// The mapping of the target's cache file, shared by the device's queues.
    pub file_map: Arc<FileMap>,
}

/// A queue attached to a worker.
pub(crate) struct QueueCtx {
    pub(crate) spec: QueueSpec,
    /// Fixed-file slot of the char device, when fixed files are in use.
    fixed: Option<u32>,
    iod: Cell<*mut libc::c_void>,
    iod_len: usize,
    bounce: Option<BounceBufs>,
    released: Cell<bool>,
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

impl QueueCtx {
    pub(crate) fn new(spec: QueueSpec, reactor: &Reactor) -> Result<QueueCtx, UblkError> {
        let desc = std::mem::size_of::<sys::ublksrv_io_desc>();
        let page = page_size();
        let iod_len = round_up(usize::from(spec.depth) * desc, page);
        let stride = round_up(sys::UBLK_MAX_QUEUE_DEPTH as usize * desc, page);
        let off = sys::UBLKSRV_CMD_BUF_OFFSET as usize + usize::from(spec.qid) * stride;
        // SAFETY: maps a read-only shared view of the kernel's descriptor array for
        // this queue; we check for MAP_FAILED and unmap it in `release`/`drop`.
        let iod = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                iod_len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                spec.char_fd.as_raw_fd(),
                off as libc::off_t,
            )
        };
        if iod == libc::MAP_FAILED {
            return Err(UblkError::io(
                format!(
                    "mmap descriptors of device {} queue {}",
                    spec.dev_id, spec.qid
                ),
                std::io::Error::last_os_error(),
            ));
        }
        let bounce = if spec.user_copy {
            None
        } else {
            match BounceBufs::new(usize::from(spec.depth), spec.max_io_bytes as usize) {
                Ok(b) => Some(b),
                Err(e) => {
                    // SAFETY: unmapping the region mapped just above.
                    unsafe { libc::munmap(iod, iod_len) };
                    return Err(UblkError::io("bounce buffers", e));
                }
            }
        };
        let fixed = if super::reactor::use_fixed_files() {
            match reactor.register_file(spec.char_fd.as_raw_fd()) {
                Ok(f) => Some(f),
                Err(e) => {
                    // SAFETY: unmapping the region mapped just above.
                    unsafe { libc::munmap(iod, iod_len) };
                    return Err(e);
                }
            }
        } else {
            None
        };
        Ok(QueueCtx {
            spec,
            fixed,
            iod: Cell::new(iod),
            iod_len,
            bounce,
            released: Cell::new(false),
        })
    }

    pub(crate) fn depth(&self) -> u16 {
        self.spec.depth
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.spec.char_fd.as_raw_fd()
    }

    /// The current descriptor of `tag` (valid after its FETCH completed).
    fn iod(&self, tag: u16) -> Option<sys::ublksrv_io_desc> {
        let base = self.iod.get();
        if base.is_null() || tag >= self.spec.depth {
            return None;
        }
        // SAFETY: `tag < depth`, so the descriptor lies inside the mapping; the kernel
        // wrote it before completing this tag's command, and only this tag's task
        // reads it. Volatile: the memory is shared with the kernel.
        Some(unsafe {
            std::ptr::read_volatile(base.cast::<sys::ublksrv_io_desc>().add(usize::from(tag)))
        })
    }

    /// Tag `tag`'s bounce buffer (bounce mode only): start and length.
    pub(crate) fn bounce_ptr(&self, tag: u16) -> Option<(*mut u8, usize)> {
        self.bounce.as_ref()?.tag_ptr(usize::from(tag))
    }

    fn bounce_addr(&self, tag: u16) -> u64 {
        self.bounce
            .as_ref()
            .map(|b| b.tag_addr(usize::from(tag)))
            .unwrap_or(0)
    }

    /// Give back the fixed-file slot and the descriptor mapping (after the tag tasks
    /// ended), so that the char device can be fully released.
    pub(crate) fn release(&self, reactor: &Reactor) {
        if !self.released.replace(true) {
            if let Some(slot) = self.fixed {
                reactor.unregister_file(slot);
            }
        }
        self.unmap();
    }

    fn unmap(&self) {
        let p = self.iod.replace(std::ptr::null_mut());
        if !p.is_null() {
            // SAFETY: `p` is the live mapping of `iod_len` bytes made in `new`.
            unsafe { libc::munmap(p, self.iod_len) };
        }
    }
}

impl Drop for QueueCtx {
    fn drop(&mut self) {
        self.unmap();
    }
}

fn io_cmd_bytes(cmd: &sys::ublksrv_io_cmd) -> [u8; 16] {
    let mut raw = [0u8; 16];
    // SAFETY: ublksrv_io_cmd is a 16-byte plain-old-data repr(C) struct.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (cmd as *const sys::ublksrv_io_cmd).cast::<u8>(),
            raw.as_mut_ptr(),
            std::mem::size_of::<sys::ublksrv_io_cmd>().min(16),
        )
    };
    raw
}

/// Serve tag `tag` of `q` until the kernel aborts its command.
pub(crate) async fn serve_tag(q: Rc<QueueCtx>, reactor: Rc<Reactor>, tag: u16) {
    let mut cmd_op = sys::UBLK_U_IO_FETCH_REQ;
    let mut result = 0i32;
    loop {
        let cmd = sys::ublksrv_io_cmd {
            q_id: q.spec.qid,
            tag,
            result,
            addr: q.bounce_addr(tag),
        };
        let sqe = match q.fixed {
            Some(slot) => opcode::UringCmd16::new(types::Fixed(slot), cmd_op)
                .cmd(io_cmd_bytes(&cmd))
                .build(),
            None => opcode::UringCmd16::new(types::Fd(q.fd()), cmd_op)
                .cmd(io_cmd_bytes(&cmd))
                .build(),
        };
        let res = reactor.submit(sqe).await;
        if res == sys::UBLK_IO_RES_ABORT {
            return;
        }
        if res != sys::UBLK_IO_RES_OK as i32 {
            tracing::error!(
                dev_id = q.spec.dev_id,
                qid = q.spec.qid,
                tag,
                "ublk io command failed: {res}"
            );
            return;
        }
        let Some(iod) = q.iod(tag) else { return };
        // Boxed: a device keeps one of these futures per tag (128 by default) for as
        // long as it exists, and a request's state is most of it (568 bytes per tag
        // inline, measured); boxed it lives only while its request does.
        result = Box::pin(super::io::handle(&q, tag, &iod)).await;
        cmd_op = sys::UBLK_U_IO_COMMIT_AND_FETCH_REQ;
    }
}

#[cfg(test)]
mod tag_future_size {
    use super::*;

    /// The size of the future `f` returns, without making one.
    fn size_of_ret<A, B, F: std::future::Future>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn serve_tag_0(q: Rc<QueueCtx>, r: Rc<Reactor>) -> impl std::future::Future<Output = ()> {
        serve_tag(q, r, 0)
    }

    /// Every tag of every device holds one `serve_tag` future for the device's life
    /// (128 tags by default, thousands of devices): a request's state must not live
    /// in it. Inline it made the future 568 bytes (73 KiB per device with its task);
    /// boxed per request, 88.
    #[test]
    fn the_idle_per_tag_future_is_small() {
        let size = size_of_ret(serve_tag_0);
        assert!(size <= 128, "serve_tag's future is {size} bytes");
    }
}
