//! Prometheus metrics of the daemon (names: docs/operations.md#metrics).
//!
//! Invariants:
//! - one [`Metrics`] per daemon, with its own `prometheus::Registry` (never the global
//!   one), so tests can run several daemons in one process;
//! - the I/O path never looks up a label: each export gets pre-resolved handles
//!   ([`IoMetrics`]) at create time; observing is a few atomic operations, no lock;
//! - with `per_export_metrics = false` every export shares one unlabelled set of
//!   handles, so the series count does not grow with the number of exports;
//! - values owned by other layers (volume stats, buffer-pool stats) are read at scrape
//!   time through [`StatsSource`] callbacks, never pushed from hot paths.

use crate::scrape_thread::ScrapeThread;
use crate::ublk::PoolStats;
use crate::volume::shared_cache::SharedCache;
use crate::volume::VolumeStats;
use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use std::sync::Arc;

/// Bucket bounds of the I/O size histograms: 512 B .. 1 MiB, powers of two.
pub const IO_SIZE_BUCKETS: [f64; 12] = [
    512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0, 131072.0, 262144.0, 524288.0,
    1048576.0,
];

/// Bucket bounds of the store latency histogram, in seconds.
pub const STORE_LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Where scrape-time values come from (set once by the daemon).
pub trait StatsSource: Send + Sync + 'static {
    /// `(export name, counters)` of every open volume.
    fn volumes(&self) -> Vec<(String, VolumeStats)>;
    /// Buffer-pool totals, `None` without a data plane.
    fn pool(&self) -> Option<PoolStats>;
    /// Number of exports (in any state).
    fn export_count(&self) -> usize;
    /// `(state label, number of exports in it)` for every export state.
    fn export_states(&self) -> Vec<(&'static str, usize)> {
        Vec::new()
    }
    /// Whether the daemon is ready (what /health/ready answers); `None`: unknown.
    fn ready(&self) -> Option<bool> {
        None
    }
}

/// Pre-resolved handles for one export's I/O path.
#[derive(Clone)]
pub struct IoMetrics {
    /// Histogram of read request sizes.
    pub read_size: Histogram,
    /// Histogram of write request sizes.
    pub write_size: Histogram,
    /// Read requests.
    pub read_ops: IntCounter,
    /// Write requests.
    pub write_ops: IntCounter,
    /// Bytes read.
    pub read_bytes: IntCounter,
    /// Bytes written.
    pub write_bytes: IntCounter,
    /// Flush requests.
    pub flush_ops: IntCounter,
    /// Discard and write-zeroes requests.
    pub discard_ops: IntCounter,
    /// Requests completed with an error.
    pub errors: IntCounter,
}

struct IoFamilies {
    read_size: HistogramVec,
    write_size: HistogramVec,
    bytes: IntCounterVec,
    ops: IntCounterVec,
    errors: IntCounterVec,
}

/// Store request metrics used by [`crate::store::metered::MeteredStore`].
#[derive(Clone)]
pub struct StoreMetrics {
    /// Requests by operation and outcome (`ok` / `error`).
    pub requests: IntCounterVec,
    /// Request latency by operation.
    pub latency: HistogramVec,
    /// Bytes moved, by direction (`read` / `write`).
    pub bytes: IntCounterVec,
}

/// All metrics of one daemon.
pub struct Metrics {
    per_export: bool,
    io: IoFamilies,
    shared_io: Option<IoMetrics>,
    store: StoreMetrics,
    scrape: Arc<ScrapeCollector>,
    /// `cache.dirty_limit`, set once by the daemon.
    dirty_limit: IntGauge,
    /// Renders `/metrics` on one thread.
    scrape_thread: ScrapeThread,
}

/// The label names of per-export families, without and with `op`: `export` only
/// when per-export series are on.
fn label_names(per_export: bool) -> (&'static [&'static str], &'static [&'static str]) {
    if per_export {
        (&["export"], &["export", "op"])
    } else {
        (&[], &["op"])
    }
}

/// An export's label values (`[name]` or `[]`) followed by `op`.
fn with_op<'a>(export: &[&'a str], op: &'a str) -> Vec<&'a str> {
    let mut v = export.to_vec();
    v.push(op);
    v
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("glidefs")
}

impl Metrics {
    /// Create the registry and every metric family. `version`/`git_sha` feed
    /// `glidefs_build_info`.
    pub fn new(
        per_export: bool,
        version: &str,
        git_sha: &str,
    ) -> Result<Arc<Metrics>, prometheus::Error> {
        let registry = Registry::new();
        let (lbl, lbl_op) = label_names(per_export);
        let hist = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help)
                    .namespace("glidefs")
                    .buckets(IO_SIZE_BUCKETS.to_vec()),
                lbl,
            )
        };
        let io = IoFamilies {
            read_size: hist("read_io_size_bytes", "Size of read requests in bytes.")?,
            write_size: hist("write_io_size_bytes", "Size of write requests in bytes.")?,
            bytes: IntCounterVec::new(
                opts(
                    "io_bytes_total",
                    "Bytes transferred by block I/O, by op (read/write).",
                ),
                lbl_op,
            )?,
            ops: IntCounterVec::new(
                opts(
                    "io_requests_total",
                    "Block requests completed, by op (read/write/flush/discard).",
                ),
                lbl_op,
            )?,
            errors: IntCounterVec::new(
                opts("io_errors_total", "Block requests completed with an error."),
                lbl,
            )?,
        };
        registry.register(Box::new(io.read_size.clone()))?;
        registry.register(Box::new(io.write_size.clone()))?;
        registry.register(Box::new(io.bytes.clone()))?;
        registry.register(Box::new(io.ops.clone()))?;
        registry.register(Box::new(io.errors.clone()))?;

        let store = StoreMetrics {
            requests: IntCounterVec::new(
                opts(
                    "store_requests_total",
                    "Object store requests, by op and result (ok/error).",
                ),
                &["op", "result"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "store_request_duration_seconds",
                    "Object store request latency.",
                )
                .namespace("glidefs")
                .buckets(STORE_LATENCY_BUCKETS.to_vec()),
                &["op"],
            )?,
            bytes: IntCounterVec::new(
                opts(
                    "store_bytes_total",
                    "Bytes moved to/from the object store, by direction (read/write).",
                ),
                &["direction"],
            )?,
        };
        registry.register(Box::new(store.requests.clone()))?;
        registry.register(Box::new(store.latency.clone()))?;
        registry.register(Box::new(store.bytes.clone()))?;

        let build = IntGaugeVec::new(
            opts("build_info", "Build information; the value is always 1."),
            &["version", "git_sha"],
        )?;
        build.with_label_values(&[version, git_sha]).set(1);
        registry.register(Box::new(build))?;

        registry.register(Box::new(crate::stage_timers::StageCollector::new(
            "glidefs",
        )?))?;
        let scrape = Arc::new(ScrapeCollector::new(per_export)?);
        registry.register(Box::new(ScrapeHandle(scrape.clone())))?;
        let dirty_limit = IntGauge::with_opts(opts(
            "dirty_limit_bytes",
            "cache.dirty_limit: dirty bytes of one export beyond which its writers wait.",
        ))?;
        registry.register(Box::new(dirty_limit.clone()))?;

        let scrape_thread = ScrapeThread::new(registry);
        let mut m = Metrics {
            per_export,
            io,
            shared_io: None,
            store,
            scrape,
            dirty_limit,
            scrape_thread,
        };
        if !per_export {
            m.shared_io = Some(m.resolve(&[])?);
        }
        Ok(Arc::new(m))
    }

    fn resolve(&self, export: &[&str]) -> Result<IoMetrics, prometheus::Error> {
        // `get_metric_with_label_values` instead of `with_label_values`: no panic path.
        Ok(IoMetrics {
            read_size: self.io.read_size.get_metric_with_label_values(export)?,
            write_size: self.io.write_size.get_metric_with_label_values(export)?,
            read_ops: self
                .io
                .ops
                .get_metric_with_label_values(&with_op(export, "read"))?,
            write_ops: self
                .io
                .ops
                .get_metric_with_label_values(&with_op(export, "write"))?,
            read_bytes: self
                .io
                .bytes
                .get_metric_with_label_values(&with_op(export, "read"))?,
            write_bytes: self
                .io
                .bytes
                .get_metric_with_label_values(&with_op(export, "write"))?,
            flush_ops: self
                .io
                .ops
                .get_metric_with_label_values(&with_op(export, "flush"))?,
            discard_ops: self
                .io
                .ops
                .get_metric_with_label_values(&with_op(export, "discard"))?,
            errors: self.io.errors.get_metric_with_label_values(export)?,
        })
    }

    /// Handles for one export's I/O path (shared handles when per-export is off).
    pub fn export_io(&self, name: &str) -> Result<IoMetrics, prometheus::Error> {
        match &self.shared_io {
            Some(shared) => Ok(shared.clone()),
            None => self.resolve(&[name]),
        }
    }

    /// Drop an export's series (after delete).
    pub fn remove_export(&self, name: &str) {
        if !self.per_export {
            return;
        }
        let _ = self.io.read_size.remove_label_values(&[name]);
        let _ = self.io.write_size.remove_label_values(&[name]);
        let _ = self.io.errors.remove_label_values(&[name]);
        for op in ["read", "write"] {
            let _ = self.io.bytes.remove_label_values(&[name, op]);
        }
        for op in ["read", "write", "flush", "discard"] {
            let _ = self.io.ops.remove_label_values(&[name, op]);
        }
    }

    /// Metrics for the store decorator.
    pub fn store(&self) -> StoreMetrics {
        self.store.clone()
    }

    /// The configured per-export dirty limit (`cache.dirty_limit`), for alert rules.
    pub fn set_dirty_limit(&self, bytes: u64) {
        self.dirty_limit
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The host's shared cache of forks' base data, for its gauges.
    pub fn set_shared_cache(&self, cache: Arc<SharedCache>) {
        *self.scrape.shared_cache.lock() = Some(cache);
    }

    /// Set where scrape-time values come from.
    pub fn set_source(&self, source: Arc<dyn StatsSource>) {
        *self.scrape.source.lock() = Some(source);
    }

    /// Gather everything in the Prometheus text format (on the render thread, see
    /// [`crate::scrape_thread`]).
    pub fn render(&self) -> String {
        self.scrape_thread.render()
    }
}

/// Families filled from [`StatsSource`] on every scrape.
struct ScrapeCollector {
    per_export: bool,
    source: Mutex<Option<Arc<dyn StatsSource>>>,
    // Serialises reset-and-refill across concurrent scrapes.
    fill: Mutex<()>,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    flush_errors: IntCounterVec,
    checksum_errors: IntCounterVec,
    dirty_bytes: IntGaugeVec,
    store_dead_bytes: IntGaugeVec,
    store_owned_bytes: IntGaugeVec,
    store_shared_bytes: IntGaugeVec,
    traffic: TrafficFamilies,
    /// The host's shared cache of ancestors' extents, when there is one.
    shared_cache: Mutex<Option<Arc<SharedCache>>>,
    shared_cache_bytes: IntGauge,
    shared_cache_capacity: IntGauge,
    shared_cache_hits: IntCounter,
    shared_cache_misses: IntCounter,
    exports: IntGauge,
    exports_by_state: IntGaugeVec,
    ready: IntGauge,
    pool_acquires: IntCounter,
    pool_waits: IntCounter,
    pool_workers: IntGauge,
}

impl ScrapeCollector {
    fn new(per_export: bool) -> Result<Self, prometheus::Error> {
        let (lbl, _) = label_names(per_export);
        Ok(ScrapeCollector {
            per_export,
            source: Mutex::new(None),
            fill: Mutex::new(()),
            cache_hits: IntCounterVec::new(
                opts("cache_hits_total", "Reads served from the local cache."),
                lbl,
            )?,
            cache_misses: IntCounterVec::new(
                opts(
                    "cache_misses_total",
                    "Reads that fetched from the object store.",
                ),
                lbl,
            )?,
            flush_errors: IntCounterVec::new(
                opts("flush_errors_total", "Failed flushes to the object store."),
                lbl,
            )?,
            checksum_errors: IntCounterVec::new(
                opts(
                    "checksum_errors_total",
                    "Stored extents or journal records that failed verification (crc32c, decoding, or authentication of an encrypted frame); each is an I/O error, never data.",
                ),
                lbl,
            )?,
            dirty_bytes: IntGaugeVec::new(
                opts(
                    "dirty_bytes",
                    "Bytes not yet committed to the object store.",
                ),
                lbl,
            )?,
            store_dead_bytes: IntGaugeVec::new(
                opts(
                    "store_dead_bytes",
                    "Bytes of the export's segments in the store that no block needs any more (compaction and garbage collection reclaim them).",
                ),
                lbl,
            )?,
            store_owned_bytes: IntGaugeVec::new(
                opts(
                    "store_owned_bytes",
                    "Live payload bytes in the export's own segments (what it wrote).",
                ),
                lbl,
            )?,
            store_shared_bytes: IntGaugeVec::new(
                opts(
                    "store_shared_bytes",
                    "Live payload bytes a fork reads from its ancestors' segments, shared with them (0 for other exports).",
                ),
                lbl,
            )?,
            traffic: TrafficFamilies::new(per_export)?,
            shared_cache: Mutex::new(None),
            shared_cache_bytes: IntGauge::with_opts(opts(
                "shared_cache_bytes",
                "Bytes held by the host's shared cache of forks' base data (cache.shared_cache).",
            ))?,
            shared_cache_capacity: IntGauge::with_opts(opts(
                "shared_cache_capacity_bytes",
                "Capacity of the host's shared cache of forks' base data.",
            ))?,
            shared_cache_hits: IntCounter::with_opts(opts(
                "shared_cache_hits_total",
                "Reads of forks' base data served by the host's shared cache.",
            ))?,
            shared_cache_misses: IntCounter::with_opts(opts(
                "shared_cache_misses_total",
                "Extents of forks' base data the shared cache fetched from the store.",
            ))?,
            exports: IntGauge::with_opts(opts("exports", "Number of exports."))?,
            exports_by_state: IntGaugeVec::new(
                opts(
                    "exports_by_state",
                    "Exports per state: live, failed, fenced (another host took the lease), lease_expired (self-fenced: lease not renewed in time).",
                ),
                &["state"],
            )?,
            ready: IntGauge::with_opts(opts(
                "ready",
                "1 when the daemon is ready (start-up recovery done, not stopping): /health/ready answers 200.",
            ))?,
            pool_acquires: IntCounter::with_opts(opts(
                "ublk_buffer_pool_acquires_total",
                "I/O buffer slots acquired, all workers.",
            ))?,
            pool_waits: IntCounter::with_opts(opts(
                "ublk_buffer_pool_backpressure_waits_total",
                "Buffer acquisitions that waited for a free slot.",
            ))?,
            pool_workers: IntGauge::with_opts(opts(
                "ublk_buffer_pool_workers_initialized",
                "Workers whose buffer pool is initialised.",
            ))?,
        })
    }
}

/// What each export asks of the store (from [`VolumeStats::store`]): requests by
/// kind, bytes both ways, and bytes written per byte of guest writes.
struct TrafficFamilies {
    requests: IntCounterVec,
    bytes_written: IntCounterVec,
    bytes_read: IntCounterVec,
    amplification: GaugeVec,
    compacted: IntCounterVec,
}

impl TrafficFamilies {
    fn new(per_export: bool) -> Result<Self, prometheus::Error> {
        let (lbl, lbl_op) = label_names(per_export);
        Ok(TrafficFamilies {
            requests: IntCounterVec::new(
                opts(
                    "export_store_requests_total",
                    "Store requests made by the export's volume, by kind (put, get, head, list, delete), whatever their outcome.",
                ),
                lbl_op,
            )?,
            bytes_written: IntCounterVec::new(
                opts(
                    "store_bytes_written_total",
                    "Bytes the export's volume wrote to the store: segments, manifests, lease and meta.",
                ),
                lbl,
            )?,
            bytes_read: IntCounterVec::new(
                opts(
                    "store_bytes_read_total",
                    "Bytes the export's volume read from the store.",
                ),
                lbl,
            )?,
            amplification: GaugeVec::new(
                opts(
                    "write_amplification",
                    "Store bytes written per byte of guest writes since the volume opened (0 before its first write).",
                ),
                lbl,
            )?,
            compacted: IntCounterVec::new(
                opts(
                    "compacted_bytes_total",
                    "Live bytes compaction rewrote into new segments (part of store_bytes_written_total).",
                ),
                lbl,
            )?,
        })
    }

    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.requests.desc();
        d.extend(self.bytes_written.desc());
        d.extend(self.bytes_read.desc());
        d.extend(self.amplification.desc());
        d.extend(self.compacted.desc());
        d
    }

    fn reset(&self) {
        self.requests.reset();
        self.bytes_written.reset();
        self.bytes_read.reset();
        self.amplification.reset();
        self.compacted.reset();
    }

    /// One series per family for `labels` (`[export]`, or `[]` for the sum).
    fn fill(&self, labels: &[&str], c: &VolumeStats) {
        for (op, n) in c.store.by_op() {
            if let Ok(m) = self
                .requests
                .get_metric_with_label_values(&with_op(labels, op))
            {
                m.inc_by(n);
            }
        }
        if let Ok(m) = self.bytes_written.get_metric_with_label_values(labels) {
            m.inc_by(c.store.bytes_written);
        }
        if let Ok(m) = self.bytes_read.get_metric_with_label_values(labels) {
            m.inc_by(c.store.bytes_read);
        }
        if let Ok(m) = self.amplification.get_metric_with_label_values(labels) {
            m.set(c.write_amplification());
        }
        if let Ok(m) = self.compacted.get_metric_with_label_values(labels) {
            m.inc_by(c.compacted_bytes);
        }
    }

    fn collect(&self, out: &mut Vec<MetricFamily>) {
        out.extend(self.requests.collect());
        out.extend(self.bytes_written.collect());
        out.extend(self.bytes_read.collect());
        out.extend(self.amplification.collect());
        out.extend(self.compacted.collect());
    }
}

/// The per-export store gauges (dead, owned, shared bytes) for `labels`.
fn set_store_bytes(s: &ScrapeCollector, labels: &[&str], c: &VolumeStats) {
    for (g, v) in [
        (&s.store_dead_bytes, c.store_dead_bytes),
        (&s.store_owned_bytes, c.store_owned_bytes),
        (&s.store_shared_bytes, c.store_shared_bytes),
    ] {
        if let Ok(u) = g.get_metric_with_label_values(labels) {
            u.set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }
}

fn counter_set(c: &IntCounter, v: u64) {
    c.reset();
    c.inc_by(v);
}

struct ScrapeHandle(Arc<ScrapeCollector>);

impl Collector for ScrapeHandle {
    fn desc(&self) -> Vec<&Desc> {
        let s = &self.0;
        let mut d = Vec::new();
        d.extend(s.cache_hits.desc());
        d.extend(s.cache_misses.desc());
        d.extend(s.flush_errors.desc());
        d.extend(s.checksum_errors.desc());
        d.extend(s.dirty_bytes.desc());
        d.extend(s.store_dead_bytes.desc());
        d.extend(s.store_owned_bytes.desc());
        d.extend(s.store_shared_bytes.desc());
        d.extend(s.shared_cache_bytes.desc());
        d.extend(s.shared_cache_capacity.desc());
        d.extend(s.shared_cache_hits.desc());
        d.extend(s.shared_cache_misses.desc());
        d.extend(s.traffic.desc());
        d.extend(s.exports.desc());
        d.extend(s.exports_by_state.desc());
        d.extend(s.ready.desc());
        d.extend(s.pool_acquires.desc());
        d.extend(s.pool_waits.desc());
        d.extend(s.pool_workers.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = &self.0;
        let _fill = s.fill.lock();
        let source = s.source.lock().clone();
        let mut out = Vec::new();
        let Some(source) = source else {
            return out;
        };
        s.cache_hits.reset();
        s.cache_misses.reset();
        s.flush_errors.reset();
        s.checksum_errors.reset();
        s.dirty_bytes.reset();
        s.store_dead_bytes.reset();
        s.store_owned_bytes.reset();
        s.store_shared_bytes.reset();
        s.traffic.reset();
        if let Some(c) = s.shared_cache.lock().as_ref() {
            let st = c.stats();
            s.shared_cache_bytes
                .set(i64::try_from(st.bytes).unwrap_or(i64::MAX));
            s.shared_cache_capacity
                .set(i64::try_from(st.capacity).unwrap_or(i64::MAX));
            counter_set(&s.shared_cache_hits, st.hits);
            counter_set(&s.shared_cache_misses, st.misses);
        }
        let vols = source.volumes();
        if s.per_export {
            for (name, c) in &vols {
                let l = [name.as_str()];
                if let (Ok(h), Ok(m), Ok(f), Ok(d)) = (
                    s.cache_hits.get_metric_with_label_values(&l),
                    s.cache_misses.get_metric_with_label_values(&l),
                    s.flush_errors.get_metric_with_label_values(&l),
                    s.dirty_bytes.get_metric_with_label_values(&l),
                ) {
                    h.inc_by(c.cache_hits);
                    m.inc_by(c.cache_misses);
                    f.inc_by(c.flush_errors);
                    d.set(i64::try_from(c.dirty_bytes).unwrap_or(i64::MAX));
                }
                if let Ok(x) = s.checksum_errors.get_metric_with_label_values(&l) {
                    x.inc_by(c.checksum_errors);
                }
                set_store_bytes(s, &l, c);
                s.traffic.fill(&l, c);
            }
        } else {
            let sum = vols
                .iter()
                .fold(VolumeStats::default(), |a, (_, c)| VolumeStats {
                    dirty_bytes: a.dirty_bytes.saturating_add(c.dirty_bytes),
                    cache_hits: a.cache_hits.saturating_add(c.cache_hits),
                    cache_misses: a.cache_misses.saturating_add(c.cache_misses),
                    flush_errors: a.flush_errors.saturating_add(c.flush_errors),
                    checksum_errors: a.checksum_errors.saturating_add(c.checksum_errors),
                    store_dead_bytes: a.store_dead_bytes.saturating_add(c.store_dead_bytes),
                    store_owned_bytes: a.store_owned_bytes.saturating_add(c.store_owned_bytes),
                    store_shared_bytes: a.store_shared_bytes.saturating_add(c.store_shared_bytes),
                    client_bytes_written: a
                        .client_bytes_written
                        .saturating_add(c.client_bytes_written),
                    store: a.store.plus(&c.store),
                    compacted_bytes: a.compacted_bytes.saturating_add(c.compacted_bytes),
                    ..VolumeStats::default()
                });
            if let (Ok(h), Ok(m), Ok(f), Ok(d)) = (
                s.cache_hits.get_metric_with_label_values(&[]),
                s.cache_misses.get_metric_with_label_values(&[]),
                s.flush_errors.get_metric_with_label_values(&[]),
                s.dirty_bytes.get_metric_with_label_values(&[]),
            ) {
                h.inc_by(sum.cache_hits);
                m.inc_by(sum.cache_misses);
                f.inc_by(sum.flush_errors);
                d.set(i64::try_from(sum.dirty_bytes).unwrap_or(i64::MAX));
            }
            if let Ok(x) = s.checksum_errors.get_metric_with_label_values(&[]) {
                x.inc_by(sum.checksum_errors);
            }
            set_store_bytes(s, &[], &sum);
            s.traffic.fill(&[], &sum);
        }
        out.extend(s.cache_hits.collect());
        out.extend(s.cache_misses.collect());
        out.extend(s.flush_errors.collect());
        out.extend(s.checksum_errors.collect());
        out.extend(s.dirty_bytes.collect());
        out.extend(s.store_dead_bytes.collect());
        out.extend(s.store_owned_bytes.collect());
        out.extend(s.store_shared_bytes.collect());
        out.extend(s.shared_cache_bytes.collect());
        out.extend(s.shared_cache_capacity.collect());
        out.extend(s.shared_cache_hits.collect());
        out.extend(s.shared_cache_misses.collect());
        s.traffic.collect(&mut out);
        s.exports
            .set(i64::try_from(source.export_count()).unwrap_or(i64::MAX));
        out.extend(s.exports.collect());
        for (state, n) in source.export_states() {
            if let Ok(g) = s.exports_by_state.get_metric_with_label_values(&[state]) {
                g.set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        out.extend(s.exports_by_state.collect());
        if let Some(ready) = source.ready() {
            s.ready.set(i64::from(ready));
            out.extend(s.ready.collect());
        }
        if let Some(p) = source.pool() {
            counter_set(&s.pool_acquires, p.acquires);
            counter_set(&s.pool_waits, p.backpressure_waits);
            s.pool_workers
                .set(i64::try_from(p.workers_initialized).unwrap_or(i64::MAX));
            out.extend(s.pool_acquires.collect());
            out.extend(s.pool_waits.collect());
            out.extend(s.pool_workers.collect());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Src;
    impl StatsSource for Src {
        fn volumes(&self) -> Vec<(String, VolumeStats)> {
            vec![
                (
                    "a".into(),
                    VolumeStats {
                        dirty_bytes: 4096,
                        cache_hits: 3,
                        cache_misses: 1,
                        flush_errors: 0,
                        client_bytes_written: 4096,
                        store: crate::store::TrafficCounts {
                            puts: 3,
                            bytes_written: 131072 + 4096,
                            ..Default::default()
                        },
                        ..VolumeStats::default()
                    },
                ),
                (
                    "b".into(),
                    VolumeStats {
                        dirty_bytes: 0,
                        cache_hits: 2,
                        cache_misses: 0,
                        flush_errors: 5,
                        checksum_errors: 2,
                        store_dead_bytes: 1,
                        compacted_bytes: 4096,
                        client_bytes_written: 4096,
                        store: crate::store::TrafficCounts {
                            puts: 1,
                            gets: 2,
                            bytes_written: 4096,
                            bytes_read: 100,
                            ..Default::default()
                        },
                        ..VolumeStats::default()
                    },
                ),
            ]
        }
        fn pool(&self) -> Option<PoolStats> {
            Some(PoolStats {
                acquires: 7,
                backpressure_waits: 2,
                workers_initialized: 2,
                ..PoolStats::default()
            })
        }
        fn export_count(&self) -> usize {
            2
        }
        fn ready(&self) -> Option<bool> {
            Some(true)
        }
    }

    #[test]
    fn per_export_series_and_scrape_values() {
        let m = Metrics::new(true, "0.1.0", "abc123").unwrap();
        m.set_source(Arc::new(Src));
        m.set_dirty_limit(1 << 30);
        let io = m.export_io("vol1").unwrap();
        io.read_size.observe(4096.0);
        io.write_size.observe(131072.0);
        io.write_bytes.inc_by(131072);
        let text = m.render();
        assert!(
            text.contains("glidefs_build_info{git_sha=\"abc123\",version=\"0.1.0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("glidefs_read_io_size_bytes_bucket{export=\"vol1\",le=\"4096\"} 1"),
            "{text}"
        );
        assert!(text.contains("glidefs_write_io_size_bytes_count{export=\"vol1\"} 1"));
        assert!(text.contains("glidefs_io_bytes_total{export=\"vol1\",op=\"write\"} 131072"));
        assert!(text.contains("glidefs_cache_hits_total{export=\"a\"} 3"));
        assert!(text.contains("glidefs_dirty_bytes{export=\"a\"} 4096"));
        assert!(text.contains("glidefs_flush_errors_total{export=\"b\"} 5"));
        assert!(text.contains("glidefs_checksum_errors_total{export=\"b\"} 2"));
        assert!(text.contains("glidefs_store_dead_bytes{export=\"b\"} 1"));
        assert!(text.contains("glidefs_compacted_bytes_total{export=\"b\"} 4096"));
        assert!(text.contains("glidefs_store_bytes_written_total{export=\"a\"} 135168"));
        assert!(text.contains("glidefs_store_bytes_read_total{export=\"b\"} 100"));
        assert!(text.contains("glidefs_export_store_requests_total{export=\"a\",op=\"put\"} 3"));
        assert!(text.contains("glidefs_export_store_requests_total{export=\"b\",op=\"get\"} 2"));
        assert!(
            text.contains("glidefs_write_amplification{export=\"a\"} 33"),
            "{text}"
        );
        assert!(text.contains("glidefs_write_amplification{export=\"b\"} 1"));
        assert!(text.contains("glidefs_exports 2"));
        assert!(text.contains("glidefs_ready 1"));
        assert!(text.contains("glidefs_dirty_limit_bytes 1073741824"));
        assert!(text.contains("glidefs_ublk_buffer_pool_acquires_total 7"));
        assert!(text.contains("glidefs_ublk_buffer_pool_backpressure_waits_total 2"));
        assert!(text.contains("glidefs_ublk_buffer_pool_workers_initialized 2"));
        // Scraping twice does not double counters.
        let again = m.render();
        assert!(again.contains("glidefs_cache_hits_total{export=\"a\"} 3"));
        m.remove_export("vol1");
        assert!(!m.render().contains("export=\"vol1\""));
    }

    #[test]
    fn aggregate_mode_has_no_export_label() {
        let m = Metrics::new(false, "0.1.0", "abc").unwrap();
        m.set_source(Arc::new(Src));
        let a = m.export_io("a").unwrap();
        let b = m.export_io("b").unwrap();
        a.read_size.observe(512.0);
        b.read_size.observe(512.0);
        let text = m.render();
        assert!(!text.contains("export="), "{text}");
        assert!(text.contains("glidefs_read_io_size_bytes_count 2"));
        assert!(text.contains("glidefs_cache_hits_total 5"));
        assert!(text.contains("glidefs_dirty_bytes 4096"));
        assert!(text.contains("glidefs_store_dead_bytes 1"));
        assert!(text.contains("glidefs_compacted_bytes_total 4096"));
        assert!(text.contains("glidefs_export_store_requests_total{op=\"put\"} 4"));
        assert!(text.contains("glidefs_store_bytes_written_total 139264"));
        // The sum's ratio, not a sum of ratios: 139264 / 8192.
        assert!(text.contains("glidefs_write_amplification 17"), "{text}");
    }
}
