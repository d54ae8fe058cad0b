//! [`MeteredTarget`]: the [`IoTarget`] a ublk device serves for one export. It calls
//! the export's volume and records the per-export I/O metrics through pre-resolved
//! handles (no label lookup, no lock on the I/O path).

use super::backend::ExportVolume;
use crate::metrics::IoMetrics;
use crate::ublk::IoTarget;
use async_trait::async_trait;
use std::io;
use std::sync::Arc;

/// An export's volume plus its I/O metrics.
pub struct MeteredTarget {
    volume: Arc<dyn ExportVolume>,
    m: IoMetrics,
}

impl MeteredTarget {
    /// Wrap `volume`, recording into `m`.
    pub fn new(volume: Arc<dyn ExportVolume>, m: IoMetrics) -> MeteredTarget {
        MeteredTarget { volume, m }
    }

    fn done(&self, r: io::Result<()>) -> io::Result<()> {
        if r.is_err() {
            self.m.errors.inc();
        }
        r
    }
}

#[async_trait]
impl IoTarget for MeteredTarget {
    fn size_bytes(&self) -> u64 {
        self.volume.size_bytes()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = buf.len();
        self.m.read_size.observe(n as f64);
        self.m.read_ops.inc();
        let r = self.volume.read(offset, buf).await;
        if r.is_ok() {
            self.m.read_bytes.inc_by(n as u64);
        }
        self.done(r)
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.m.write_size.observe(data.len() as f64);
        self.m.write_ops.inc();
        let r = self.volume.write(offset, data, fua).await;
        if r.is_ok() {
            self.m.write_bytes.inc_by(data.len() as u64);
        }
        self.done(r)
    }

    async fn flush(&self) -> io::Result<()> {
        self.m.flush_ops.inc();
        let r = self.volume.flush().await;
        self.done(r)
    }

    async fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.m.discard_ops.inc();
        let r = self.volume.discard(offset, len).await;
        self.done(r)
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.m.discard_ops.inc();
        let r = self.volume.write_zeroes(offset, len).await;
        self.done(r)
    }

    /// Counted as a successful read when the volume hands out its cache file (the
    /// data plane copies from it next; see [`IoTarget::cached_file`]).
    fn cached_file(&self, offset: u64, len: u64) -> Option<Arc<std::fs::File>> {
        let file = self.volume.cached_file(offset, len)?;
        self.m.read_size.observe(len as f64);
        self.m.read_ops.inc();
        self.m.read_bytes.inc_by(len);
        Some(file)
    }
}
