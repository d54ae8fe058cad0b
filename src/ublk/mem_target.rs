//! [`MemTarget`]: an in-memory [`IoTarget`] for tests and the `ublk_mem` example.
//! Data lives in a sparse map of 4 KiB pages (absent pages read as zeros); in "null"
//! mode nothing is stored and reads return zeros.

use std::collections::HashMap;
use std::io;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::target::IoTarget;

const PAGE: u64 = crate::SECTOR_SIZE as u64;

/// An in-memory block device of a fixed size.
pub struct MemTarget {
    size: u64,
    null: bool,
    pages: Mutex<HashMap<u64, Box<[u8]>>>,
}

impl MemTarget {
    /// A device of `size` bytes that stores what is written.
    pub fn new(size: u64) -> Self {
        MemTarget {
            size,
            null: false,
            pages: Mutex::new(HashMap::new()),
        }
    }

    /// A device of `size` bytes that drops writes and reads zeros (like null_blk).
    pub fn null(size: u64) -> Self {
        MemTarget {
            null: true,
            ..MemTarget::new(size)
        }
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn zero_range(&self, offset: u64, len: u64) {
        if self.null {
            return;
        }
        let mut pages = self.pages.lock();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let page = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let n = ((PAGE - pos % PAGE).min(end - pos)) as usize;
            if in_page == 0 && n == PAGE as usize {
                pages.remove(&page);
            } else if let Some(p) = pages.get_mut(&page) {
                p[in_page..in_page + n].fill(0);
            }
            pos += n as u64;
        }
    }
}

#[async_trait]
impl IoTarget for MemTarget {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        if self.null {
            buf.fill(0);
            return Ok(());
        }
        let pages = self.pages.lock();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let in_page = (pos % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(buf.len() - done);
            match pages.get(&(pos / PAGE)) {
                Some(p) => buf[done..done + n].copy_from_slice(&p[in_page..in_page + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
        self.check(offset, data.len() as u64)?;
        if self.null {
            return Ok(());
        }
        let mut pages = self.pages.lock();
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let in_page = (pos % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(data.len() - done);
            let p = pages
                .entry(pos / PAGE)
                .or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
            p[in_page..in_page + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }

    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    async fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len)?;
        self.zero_range(offset, len);
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len)?;
        self.zero_range(offset, len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::future::block_on;

    #[test]
    fn write_read_zero_roundtrip() {
        let t = MemTarget::new(1 << 20);
        block_on(async {
            let data: Vec<u8> = (0..10000u32).map(|i| i as u8).collect();
            t.write(1000, &data, false).await.unwrap();
            let mut back = vec![0u8; 10000];
            t.read(1000, &mut back).await.unwrap();
            assert_eq!(back, data);
            t.write_zeroes(2000, 5000).await.unwrap();
            t.read(1000, &mut back).await.unwrap();
            assert!(back[1000..6000].iter().all(|b| *b == 0));
            assert_eq!(back[999], data[999]);
            assert_eq!(back[6000], data[6000]);
            assert!(t.read(1 << 20, &mut back).await.is_err());
        });
    }

    #[test]
    fn null_mode_stores_nothing() {
        let t = MemTarget::null(1 << 20);
        block_on(async {
            t.write(0, &[1u8; 4096], true).await.unwrap();
            let mut b = [9u8; 4096];
            t.read(0, &mut b).await.unwrap();
            assert!(b.iter().all(|x| *x == 0));
        });
    }
}
