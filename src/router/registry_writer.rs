//! Group commit of the export registry: every change waits until a registry write
//! that includes it has landed, and one write carries every change made while the
//! previous write was under way.
//!
//! Creating or deleting exports with several API requests in flight used to write
//! `exports.json` (all N entries, fdatasync, rename, directory fsync) once per request,
//! one after the other under one lock. Now the requests that changed the wanted map
//! during a write share the next one.
//!
//! Invariants:
//! - [`RegistryWriter::apply`] returns `Ok` only once a write holding its change (or a
//!   newer one) is durable; on `Err` its change is taken back from the wanted map
//!   before any later write starts, so a failed change never lands behind its
//!   caller's back. Another caller's change that was in the failed write is written
//!   again by that caller.
//! - one write at a time (`write` lock); the wanted map is only held for in-memory
//!   work, never across a write.
//! - callers serialise the changes to one export name (the router's per-name lock),
//!   so taking a change back restores exactly what was on disk for its names.

use super::registry::{RegEntry, Registry, RegistryError};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The registry in memory (wanted and written) and its file.
pub struct RegistryWriter {
    registry: Registry,
    state: Mutex<Wanted>,
    write: Mutex<()>,
    /// Registry writes so far.
    writes: AtomicU64,
}

#[derive(Default)]
struct Wanted {
    /// The registry with every change applied so far.
    map: BTreeMap<String, RegEntry>,
    /// Changes applied to `map` so far.
    gen: u64,
    /// What the file holds: `map` as it was at `written_gen`.
    written: BTreeMap<String, RegEntry>,
    written_gen: u64,
}

impl RegistryWriter {
    /// A writer for `registry`, empty until [`RegistryWriter::reset`].
    pub fn new(registry: Registry) -> RegistryWriter {
        RegistryWriter {
            registry,
            state: Mutex::new(Wanted::default()),
            write: Mutex::new(()),
            writes: AtomicU64::new(0),
        }
    }

    /// The registry file.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Start from `entries`, which the file holds (as loaded at startup).
    pub fn reset(&self, entries: BTreeMap<String, RegEntry>) {
        let mut w = self.state.lock();
        let gen = w.gen;
        *w = Wanted {
            map: entries.clone(),
            gen,
            written: entries,
            written_gen: gen,
        };
    }

    /// Apply `f` to the registry and return once it is durable; on failure the change
    /// is taken back. A change that changes nothing writes nothing.
    pub fn apply(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, RegEntry>),
    ) -> Result<(), RegistryError> {
        let (mine, touched) = {
            let mut w = self.state.lock();
            let before = w.map.clone();
            f(&mut w.map);
            let touched = changed_names(&before, &w.map);
            if touched.is_empty() {
                return Ok(());
            }
            w.gen += 1;
            (w.gen, touched)
        };
        let _one_write = self.write.lock();
        let (snapshot, gen) = {
            let w = self.state.lock();
            if w.written_gen >= mine {
                // A write that started after our change carried it.
                return Ok(());
            }
            (w.map.clone(), w.gen)
        };
        self.writes.fetch_add(1, Ordering::Relaxed);
        match self.registry.save(&snapshot) {
            Ok(()) => {
                let mut w = self.state.lock();
                w.written = snapshot;
                w.written_gen = gen;
                Ok(())
            }
            Err(e) => {
                let mut w = self.state.lock();
                for name in touched {
                    match w.written.get(&name).cloned() {
                        Some(old) => w.map.insert(name, old),
                        None => w.map.remove(&name),
                    };
                }
                Err(e)
            }
        }
    }
}

/// Names whose entry differs between `a` and `b` (added, removed or changed).
fn changed_names(a: &BTreeMap<String, RegEntry>, b: &BTreeMap<String, RegEntry>) -> Vec<String> {
    let mut out: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    out
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
    /// returns only once the file holds it.
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
                    w.apply(|m| {
                        m.insert(name.clone(), entry(&name, 4096));
                    })
                    .unwrap();
                    // Durable on return: the file holds it.
                    assert!(w.registry().load().unwrap().contains_key(&name));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(w.registry().load().unwrap().len(), n);
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
                    w.apply(|m| {
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
        assert_eq!(w.registry().load().unwrap().len(), n as usize);
    }

    /// A change whose write failed is taken back: a later write does not carry it.
    #[test]
    fn a_failed_change_never_lands_later() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let w = RegistryWriter::new(Registry::new(&sub));
        w.apply(|m| {
            m.insert("a".into(), entry("a", 1));
        })
        .unwrap();
        // The registry's directory is gone: the write fails.
        std::fs::remove_dir_all(&sub).unwrap();
        assert!(w
            .apply(|m| {
                m.insert("b".into(), entry("b", 2));
            })
            .is_err());
        std::fs::create_dir(&sub).unwrap();
        w.apply(|m| {
            m.insert("c".into(), entry("c", 3));
        })
        .unwrap();
        let on_disk = w.registry().load().unwrap();
        assert!(on_disk.contains_key("a") && on_disk.contains_key("c"));
        assert!(!on_disk.contains_key("b"), "the failed change landed later");
    }
}
