//! Group commit of the export registry: every change waits until a registry write
//! that includes it is durable, and one write carries every change made while the
//! previous write was under way.
//!
//! A write appends the changes' records to `exports.log` (one fdatasync, whatever
//! the number of exports); when the log outgrows [`compact_at`] the next write is a
//! new `exports.json` snapshot instead, which empties the log. Creating or deleting
//! exports used to rewrite all N entries of `exports.json` once per request, one
//! request after another.
//!
//! Invariants:
//! - [`RegistryWriter::apply`] returns `Ok` only once a write holding its change is
//!   durable; on `Err` its change is taken back (its names restored to what the files
//!   hold, its records dropped) before any later write starts, so a failed change
//!   never lands behind its caller's back. Other callers' records that were in the
//!   failed write stay pending and are written by the next write.
//! - one write at a time (`write` lock); `state` is only held for in-memory work,
//!   never across a write, and a change costs no copy of the whole map.
//! - after a failed write the next one is a whole snapshot: a partial append, or a
//!   log changed behind our back, is never built upon.
//! - callers serialise the changes to one export name (the router's per-name lock),
//!   so taking a change back restores exactly what the files hold for its names.

use super::registry::{Change, RegEntry, Registry, RegistryError};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The log is folded into a new snapshot once it holds more bytes than this: four
/// times the snapshot's estimated size, at least 256 KiB. Appends stay O(1) per
/// change, and a snapshot (O(N)) is written once per O(N) changes.
fn compact_at(entries: usize) -> u64 {
    (entries as u64 * 4 * APPROX_ENTRY_BYTES).max(256 << 10)
}

/// Bytes of one entry in the snapshot (pretty JSON), for [`compact_at`].
const APPROX_ENTRY_BYTES: u64 = 100;

/// The registry in memory (wanted and written) and its files.
pub struct RegistryWriter {
    registry: Registry,
    state: Mutex<Wanted>,
    write: Mutex<()>,
    /// Registry writes so far (appends and snapshots).
    writes: AtomicU64,
}

#[derive(Default)]
struct Wanted {
    /// The registry with every change applied so far.
    map: BTreeMap<String, RegEntry>,
    /// Changes applied to `map` so far.
    gen: u64,
    /// Records of the changes not yet written, with the change's number.
    pending: Vec<(u64, Change)>,
    /// What the files hold.
    written: BTreeMap<String, RegEntry>,
    /// Bytes of the log up to its last whole record.
    log_len: u64,
    /// The last write failed: what the files hold is uncertain (a partial append),
    /// so the next write is a whole snapshot.
    uncertain: bool,
}

impl RegistryWriter {
    /// A writer for `registry`, empty until [`RegistryWriter::load`].
    pub fn new(registry: Registry) -> RegistryWriter {
        RegistryWriter {
            registry,
            state: Mutex::new(Wanted::default()),
            write: Mutex::new(()),
            writes: AtomicU64::new(0),
        }
    }

    /// Read the registry files (at startup) and start from what they hold.
    pub fn load(&self) -> Result<BTreeMap<String, RegEntry>, RegistryError> {
        let _one_write = self.write.lock();
        let loaded = self.registry.load_all()?;
        let mut w = self.state.lock();
        let gen = w.gen;
        *w = Wanted {
            map: loaded.entries.clone(),
            gen,
            pending: Vec::new(),
            written: loaded.entries.clone(),
            log_len: loaded.log_len,
            uncertain: false,
        };
        Ok(loaded.entries)
    }

    /// Apply `f`, which changes at most the entries of `names`, to the registry and
    /// return once it is durable; on failure the entries of `names` are taken back to
    /// what the files hold.
    pub fn apply(
        &self,
        names: &[&str],
        f: impl FnOnce(&mut BTreeMap<String, RegEntry>),
    ) -> Result<(), RegistryError> {
        let mine = {
            let mut w = self.state.lock();
            f(&mut w.map);
            w.gen += 1;
            let gen = w.gen;
            for &name in names {
                let change = match w.map.get(name) {
                    Some(e) => Change::Put(e.clone()),
                    None => Change::Remove(name.to_string()),
                };
                w.pending.push((gen, change));
            }
            gen
        };
        let _one_write = self.write.lock();
        let (changes, last, log_len, snapshot) = {
            let w = self.state.lock();
            if !w.pending.iter().any(|(g, _)| *g == mine) {
                // A write that started after our change carried it.
                return Ok(());
            }
            let changes: Vec<Change> = w.pending.iter().map(|(_, c)| c.clone()).collect();
            let last = w.pending.last().map_or(mine, |(g, _)| *g);
            let mut snapshot = None;
            if w.uncertain || w.log_len >= compact_at(w.written.len()) {
                let mut s = w.written.clone();
                apply_changes(&mut s, changes.iter());
                snapshot = Some(s);
            }
            (changes, last, w.log_len, snapshot)
        };
        self.writes.fetch_add(1, Ordering::Relaxed);
        let wrote = match &snapshot {
            Some(s) => self.registry.save(s).map(|()| 0),
            None => self.registry.append(log_len, &changes),
        };
        let mut w = self.state.lock();
        match wrote {
            Ok(new_len) => {
                apply_changes(&mut w.written, changes.iter());
                w.log_len = new_len;
                w.uncertain = false;
                w.pending.retain(|(g, _)| *g > last);
                Ok(())
            }
            Err(e) => {
                w.uncertain = true;
                w.pending.retain(|(g, _)| *g != mine);
                for &name in names {
                    match w.written.get(name).cloned() {
                        Some(old) => w.map.insert(name.to_string(), old),
                        None => w.map.remove(name),
                    };
                }
                Err(e)
            }
        }
    }

    /// Fold the log into a new snapshot (at a clean stop: `exports.json` alone is then
    /// the whole registry, as a release before the log expects). Changes still
    /// pending are written by their own callers.
    pub fn compact(&self) -> Result<(), RegistryError> {
        let _one_write = self.write.lock();
        let (written, log_len) = {
            let w = self.state.lock();
            (w.written.clone(), w.log_len)
        };
        if log_len == 0 && !self.registry.log_path().exists() {
            return Ok(());
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.registry.save(&written)?;
        let mut w = self.state.lock();
        w.log_len = 0;
        w.uncertain = false;
        Ok(())
    }
}

fn apply_changes<'a>(
    map: &mut BTreeMap<String, RegEntry>,
    changes: impl Iterator<Item = &'a Change>,
) {
    for c in changes {
        match c {
            Change::Put(e) => {
                map.insert(e.name.clone(), e.clone());
            }
            Change::Remove(name) => {
                map.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn entry(name: &str, size: u64) -> RegEntry {
        RegEntry {
            name: name.into(),
            size_bytes: size,
            dev_id: None,
        }
    }

    /// Changes made while a write is under way share the next write, and each
    /// returns only once the files hold it.
    #[test]
    fn concurrent_changes_share_writes_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let w = Arc::new(RegistryWriter::new(Registry::new(dir.path())));
        let n = 16;
        let start = Arc::new(Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let (w, start) = (w.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let name = format!("e{i}");
                    w.apply(&[&name], |m| {
                        m.insert(name.clone(), entry(&name, 4096));
                    })
                    .unwrap();
                    // Durable on return: the files hold it.
                    assert!(w.registry.load().unwrap().contains_key(&name));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(w.registry.load().unwrap().len(), n);
    }

    /// Changes made while a write is under way are carried by one write: the first
    /// waiter writes them all, the others find theirs written.
    #[test]
    fn changes_waiting_for_a_write_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let w = Arc::new(RegistryWriter::new(Registry::new(dir.path())));
        let n = 8;
        let busy = w.write.lock(); // a write under way
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let w = w.clone();
                std::thread::spawn(move || {
                    let name = format!("e{i}");
                    w.apply(&[&name], |m| {
                        m.insert(name.clone(), entry(&name, 4096));
                    })
                    .unwrap();
                })
            })
            .collect();
        while w.state.lock().gen < n {
            std::thread::yield_now();
        }
        drop(busy);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            w.writes.load(Ordering::Relaxed),
            1,
            "one write for {n} changes"
        );
        assert_eq!(w.registry.load().unwrap().len(), n as usize);
    }

    /// A change whose write failed is taken back: a later write does not carry it.
    #[test]
    fn a_failed_change_never_lands_later() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let w = RegistryWriter::new(Registry::new(&sub));
        w.apply(&["a"], |m| {
            m.insert("a".into(), entry("a", 1));
        })
        .unwrap();
        // The registry's directory is gone: the write fails.
        std::fs::remove_dir_all(&sub).unwrap();
        assert!(w
            .apply(&["b"], |m| {
                m.insert("b".into(), entry("b", 2));
            })
            .is_err());
        std::fs::create_dir(&sub).unwrap();
        w.apply(&["c"], |m| {
            m.insert("c".into(), entry("c", 3));
        })
        .unwrap();
        let on_disk = w.registry.load().unwrap();
        assert!(on_disk.contains_key("a") && on_disk.contains_key("c"));
        assert!(!on_disk.contains_key("b"), "the failed change landed later");
    }

    /// Many changes: the log is folded into snapshots on the way, and a writer that
    /// loads the files finds exactly the last state (puts, resizes, removals).
    #[test]
    fn the_log_is_compacted_and_reloads_to_the_same_registry() {
        let dir = tempfile::tempdir().unwrap();
        let w = RegistryWriter::new(Registry::new(dir.path()));
        let mut want = BTreeMap::new();
        let mut snapshots = 0;
        for i in 0..12_000u64 {
            let name = format!("export-{}", i % 900);
            let e = entry(&name, 4096 * (i + 1));
            let gone = i % 7 == 0;
            w.apply(&[&name], |m| {
                if gone {
                    m.remove(&name);
                } else {
                    m.insert(name.clone(), e.clone());
                }
            })
            .unwrap();
            if gone {
                want.remove(&name);
            } else {
                want.insert(name.clone(), e);
            }
            if w.state.lock().log_len == 0 {
                snapshots += 1;
            }
        }
        assert!(snapshots >= 1, "the log was never compacted");
        let again = RegistryWriter::new(Registry::new(dir.path()));
        assert_eq!(again.load().unwrap(), want);
        assert_eq!(w.registry.load().unwrap(), want);
        // After compact() the snapshot alone is the registry (what a release before
        // the log reads).
        w.compact().unwrap();
        assert_eq!(std::fs::metadata(w.registry.log_path()).unwrap().len(), 0);
        std::fs::remove_file(w.registry.log_path()).unwrap();
        assert_eq!(w.registry.load().unwrap(), want);
    }
}
