//! Request handling: turns one ublk descriptor into [`IoTarget`] calls and returns
//! the value to commit (bytes transferred, 0, or `-errno`).
//!
//! USER_COPY: for READ/WRITE a slot is taken from the worker's pool (waiting when it
//! is empty: that wait is the memory backpressure), the request is walked in
//! slot-sized chunks (pread → target.write, or target.read → pwrite), then the slot
//! goes back. Bounce: the tag's own buffer already holds (WRITE) or will carry (READ)
//! the data. FUA on a WRITE becomes `write(…, fua = true)` for every chunk.

use std::io;

use libublk::sys;

use super::buffer_pool;
use super::queue::QueueCtx;
use super::user_copy::{copy_from_request, copy_to_request};
use crate::stage_timers::{self, timed, Stage};

fn neg_errno(e: &io::Error) -> i32 {
    -e.raw_os_error().filter(|e| *e > 0).unwrap_or(libc::EIO)
}

/// Handle request `iod` of tag `tag`; the return value is the commit result.
pub(crate) async fn handle(q: &QueueCtx, tag: u16, iod: &sys::ublksrv_io_desc) -> i32 {
    let op = iod.op_flags & 0xff;
    let flags = iod.op_flags >> 8 << 8;
    let offset = iod.start_sector << 9;
    let len = u64::from(iod.nr_sectors) << 9;
    let target = &q.spec.target;
    let res = match op {
        sys::UBLK_IO_OP_READ | sys::UBLK_IO_OP_WRITE => {
            if len > u64::from(q.spec.max_io_bytes) {
                return -libc::EINVAL;
            }
            let write = op == sys::UBLK_IO_OP_WRITE;
            let fua = flags & sys::UBLK_IO_F_FUA != 0;
            let stage = if write {
                Stage::WriteRequest
            } else {
                Stage::ReadRequest
            };
            let r = if q.spec.user_copy {
                timed(
                    stage,
                    rw_user_copy(q, tag, offset, len as usize, write, fua),
                )
                .await
            } else {
                timed(stage, rw_bounce(q, tag, offset, len as usize, write, fua)).await
            };
            r.map(|_| len as i32)
        }
        sys::UBLK_IO_OP_FLUSH => timed(Stage::FlushRequest, target.flush()).await.map(|_| 0),
        sys::UBLK_IO_OP_DISCARD => timed(Stage::DiscardRequest, target.discard(offset, len))
            .await
            .map(|_| 0),
        sys::UBLK_IO_OP_WRITE_ZEROES => {
            timed(Stage::DiscardRequest, target.write_zeroes(offset, len))
                .await
                .map(|_| 0)
        }
        _ => return -libc::EOPNOTSUPP,
    };
    match res {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(
                dev_id = q.spec.dev_id,
                op,
                offset,
                len,
                "request failed: {e}"
            );
            neg_errno(&e)
        }
    }
}

async fn rw_user_copy(
    q: &QueueCtx,
    tag: u16,
    offset: u64,
    len: usize,
    write: bool,
    fua: bool,
) -> io::Result<()> {
    let (slot_stage, copy_stage, target_stage) = if write {
        (Stage::WriteSlot, Stage::WriteCopy, Stage::WriteTarget)
    } else {
        (Stage::ReadSlot, Stage::ReadCopy, Stage::ReadTarget)
    };
    if !write {
        if let Some(file) = q.spec.target.cached_file(offset, len as u64) {
            let mapped = stage_timers::time(Stage::ReadMapped, || {
                q.spec
                    .file_map
                    .copy_to_request(&file, offset, len, q.fd(), q.spec.qid, tag)
            });
            match mapped {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => tracing::debug!(
                    dev_id = q.spec.dev_id,
                    offset,
                    len,
                    "copy from the mapped cache file failed, reading it again: {e}"
                ),
            }
        }
    }
    let pool = buffer_pool::worker_pool(&q.spec.pools)?;
    let mut slot = timed(slot_stage, pool.acquire()).await;
    let buf = slot.as_mut_slice();
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(buf.len());
        let chunk = &mut buf[..n];
        let pos = offset + done as u64;
        if write {
            stage_timers::time(copy_stage, || {
                copy_from_request(q.fd(), q.spec.qid, tag, done as u32, chunk)
            })?;
            timed(target_stage, q.spec.target.write(pos, chunk, fua)).await?;
        } else {
            timed(target_stage, q.spec.target.read(pos, chunk)).await?;
            stage_timers::time(copy_stage, || {
                copy_to_request(q.fd(), q.spec.qid, tag, done as u32, chunk)
            })?;
        }
        done += n;
    }
    Ok(())
}

async fn rw_bounce(
    q: &QueueCtx,
    tag: u16,
    offset: u64,
    len: usize,
    write: bool,
    fua: bool,
) -> io::Result<()> {
    let (ptr, cap) = q
        .bounce_ptr(tag)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
    if len > cap {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `ptr..ptr+cap` is tag `tag`'s buffer inside the queue's live mapping
    // (the queue outlives this call); only this tag's task touches it, and the kernel
    // only reads/writes it while the tag's command is with the kernel, i.e. not now.
    let data = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
    if write {
        timed(Stage::WriteTarget, q.spec.target.write(offset, data, fua)).await
    } else {
        timed(Stage::ReadTarget, q.spec.target.read(offset, data)).await
    }
}
