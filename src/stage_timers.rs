//! Stage timers: process-wide sums of the time the data path spends in each stage of
//! a request, and the control plane in each step of creating and deleting an export,
//! so that "where does the time go" can be answered where sampling profilers cannot
//! (perf in a TCG guest samples the idle loop). Read through
//! /metrics as `glidefs_stage_seconds_total{stage}` and `glidefs_stage_events_total{stage}`;
//! a bench takes the difference across a run and divides.
//!
//! Invariants:
//! - off by default (`api.stage_timers`); when off, a timer costs one relaxed load
//!   and records nothing, and /metrics shows no stage series;
//! - the sums are process-wide (every export, every thread): a `file.*` stage also
//!   counts the flusher's reads and the journal's syncs, not only the requests';
//! - stages nest: `read.request` contains `read.slot`, `read.copy` and
//!   `read.target`, and `read.target` contains the `file.*` time of that read;
//!   `create.request` contains `create.{lookup,open,device,persist}` and
//!   `create.device` the `device.{add,attach,start}` steps; `delete.request`
//!   contains `delete.{device,drain,close,forget,persist}` and `delete.device` the
//!   `device.{stop,detach,del}` steps.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{CounterVec, IntCounterVec, Opts};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// Declares [`Stage`] and [`STAGES`] from one list, so that a stage's variant, its
/// label and its counter index (its position) cannot disagree.
macro_rules! stages {
    ($($(#[doc = $doc:literal])* $variant:ident => $label:literal,)*) => {
        /// A stage of the data path or of an export's creation or deletion.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Stage {
            $($(#[doc = $doc])* $variant,)*
        }

        /// Every stage with its label value, in [`Stage`] order.
        pub const STAGES: &[(Stage, &str)] = &[$((Stage::$variant, $label),)*];
    };
}

stages! {
    /// A READ from the descriptor to the commit value (the whole userspace part).
    ReadRequest => "read.request",
    /// A READ waiting for a buffer-pool slot (USER_COPY).
    ReadSlot => "read.slot",
    /// A READ's pwrite of the data into the request (USER_COPY).
    ReadCopy => "read.copy",
    /// A READ's target call (the volume engine).
    ReadTarget => "read.target",
    /// A READ copied from the mapped cache file into the request (`file_map.rs`),
    /// the engine's check included: instead of `.slot`, `.target` and `.copy`.
    ReadMapped => "read.mapped",
    /// A WRITE from the descriptor to the commit value.
    WriteRequest => "write.request",
    /// A WRITE waiting for a buffer-pool slot (USER_COPY).
    WriteSlot => "write.slot",
    /// A WRITE's pread of the data from the request (USER_COPY).
    WriteCopy => "write.copy",
    /// A WRITE's target call (the volume engine).
    WriteTarget => "write.target",
    /// A FLUSH (target call).
    FlushRequest => "flush.request",
    /// A DISCARD or WRITE_ZEROES (target call).
    DiscardRequest => "discard.request",
    /// pread of a local file (cache file, journal, state), any thread.
    FileRead => "file.read",
    /// pwrite of a local file, any thread.
    FileWrite => "file.write",
    /// fdatasync of a local file, any thread.
    FileSync => "file.sync",
    /// Creating an export (router, after its name lock), successful or not.
    CreateRequest => "create.request",
    /// Creating: looking the volume up in the store.
    CreateLookup => "create.lookup",
    /// Creating: opening (or creating) the volume: lease, meta, local cache files.
    CreateOpen => "create.open",
    /// Creating: adding and starting its ublk device.
    CreateDevice => "create.device",
    /// Creating: writing the export registry.
    CreatePersist => "create.persist",
    /// A device's ADD_DEV and SET_PARAMS.
    DeviceAdd => "device.add",
    /// A device's char device opened and its queues handed to workers.
    DeviceAttach => "device.attach",
    /// A device's START_DEV (waits for every tag's FETCH_REQ and the partition scan).
    DeviceStart => "device.start",
    /// Deleting an export (router, after its name lock), successful or not.
    DeleteRequest => "delete.request",
    /// Deleting: stopping and deleting its ublk device.
    DeleteDevice => "delete.device",
    /// Deleting: uploading its dirty data.
    DeleteDrain => "delete.drain",
    /// Deleting: closing the volume (final checkpoint, lease release).
    DeleteClose => "delete.close",
    /// Deleting: removing its local cache files.
    DeleteForget => "delete.forget",
    /// Deleting: writing the export registry.
    DeletePersist => "delete.persist",
    /// A device's STOP_DEV.
    DeviceStop => "device.stop",
    /// A device's queues taken back from the workers and its char device closed.
    DeviceDetach => "device.detach",
    /// A device's DEL_DEV.
    DeviceDel => "device.del",
}

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; STAGES.len()] = [const { AtomicU64::new(0) }; STAGES.len()];
static EVENTS: [AtomicU64; STAGES.len()] = [const { AtomicU64::new(0) }; STAGES.len()];

/// Turn the timers on or off (the daemon, from its config, at start).
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Whether the timers are on.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// A started timer: `None` inside when the timers are off.
#[derive(Debug, Clone, Copy)]
#[must_use = "a timer records only when stopped"]
pub struct Timer(Option<Instant>);

/// Start timing (reads the clock only when the timers are on).
pub fn start() -> Timer {
    Timer(enabled().then(Instant::now))
}

impl Timer {
    /// Add the time since [`start`] to `stage`.
    pub fn stop(self, stage: Stage) {
        if let Some(t0) = self.0 {
            let i = stage as usize;
            let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
            NANOS[i].fetch_add(ns, Ordering::Relaxed);
            EVENTS[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Run `f`, adding its time to `stage`.
pub fn time<T>(stage: Stage, f: impl FnOnce() -> T) -> T {
    let t = start();
    let r = f();
    t.stop(stage);
    r
}

/// Await `fut`, adding the time until it is ready to `stage`.
pub async fn timed<F: std::future::Future>(stage: Stage, fut: F) -> F::Output {
    let t = start();
    let r = fut.await;
    t.stop(stage);
    r
}

/// `(label, events, nanoseconds)` of every stage, in [`STAGES`] order.
pub fn snapshot() -> Vec<(&'static str, u64, u64)> {
    STAGES
        .iter()
        .map(|&(s, name)| {
            let i = s as usize;
            (
                name,
                EVENTS[i].load(Ordering::Relaxed),
                NANOS[i].load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// The Prometheus side: emits the two families at scrape time, only when on.
pub struct StageCollector {
    seconds: CounterVec,
    events: IntCounterVec,
    fill: parking_lot::Mutex<()>,
}

impl StageCollector {
    /// Families in metric namespace `ns` (the daemon's: `glidefs`).
    pub fn new(ns: &str) -> Result<StageCollector, prometheus::Error> {
        Ok(StageCollector {
            seconds: CounterVec::new(
                Opts::new(
                    "stage_seconds_total",
                    "Time spent in each stage of the data path and of export creation and deletion, all exports and threads (api.stage_timers; stages: docs/operations.md).",
                )
                .namespace(ns),
                &["stage"],
            )?,
            events: IntCounterVec::new(
                Opts::new(
                    "stage_events_total",
                    "Times each stage ran (api.stage_timers).",
                )
                .namespace(ns),
                &["stage"],
            )?,
            fill: parking_lot::Mutex::new(()),
        })
    }
}

impl Collector for StageCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.seconds.desc();
        d.extend(self.events.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if !enabled() {
            return Vec::new();
        }
        let _g = self.fill.lock();
        self.seconds.reset();
        self.events.reset();
        for (name, events, ns) in snapshot() {
            self.seconds
                .with_label_values(&[name])
                .inc_by(ns as f64 / 1e9);
            self.events.with_label_values(&[name]).inc_by(events);
        }
        let mut out = self.seconds.collect();
        out.extend(self.events.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_timer_adds_one_event_and_its_time() {
        // The statics are process-wide: other tests may add to them, never subtract.
        enable(true);
        let before = snapshot()[Stage::FileSync as usize];
        let t = start();
        std::thread::sleep(std::time::Duration::from_millis(2));
        t.stop(Stage::FileSync);
        let after = snapshot()[Stage::FileSync as usize];
        assert_eq!(after.0, "file.sync");
        assert!(after.1 > before.1);
        assert!(after.2 - before.2 >= 2_000_000);
        let c = StageCollector::new("t").unwrap();
        let fams = c.collect();
        let names: Vec<_> = fams.iter().map(|f| f.get_name().to_string()).collect();
        assert_eq!(names, ["t_stage_seconds_total", "t_stage_events_total"]);
    }

    #[test]
    fn stages_are_listed_in_enum_order() {
        for (i, (s, _)) in STAGES.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
    }
}
