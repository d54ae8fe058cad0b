//! The persisted export registry: `<cache dir>/exports.json` (a snapshot) plus
//! `<cache dir>/exports.log` (the changes since, one JSON line each).
//!
//! Invariants:
//! - the snapshot is written atomically (temp file, fdatasync, rename, fsync of the
//!   directory), then the log is emptied: a crash leaves the old or the new snapshot,
//!   never a torn one, and replaying a log over a newer snapshot changes nothing
//!   (every record states an entry's whole value, or its absence);
//! - a change is one appended line, durable (fdatasync) before it is reported: O(1)
//!   per change instead of rewriting all N entries. Only the last line can be torn
//!   by a crash (every earlier one was synced before the next was written), so a last
//!   line that does not parse is ignored and later appends overwrite it; any other
//!   line that does not parse is corruption;
//! - a registry that does not parse, or holds an invalid name, stops the daemon
//!   with an error instead of being dropped (it is the map to the operator's data);
//! - `dev_id` is kept so a restarted daemon re-attaches the same `/dev/ublkbN`.

use crate::rules::validate_name;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Registry format version.
const VERSION: u32 = 1;

/// One export as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegEntry {
    /// Export name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// ublk device id, when a device was attached.
    #[serde(default)]
    pub dev_id: Option<u32>,
}

/// One line of the log: an entry's new value, or its removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Change {
    /// The export as it is now.
    Put(RegEntry),
    /// The export is gone.
    Remove(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    exports: Vec<RegEntry>,
}

/// Errors reading or writing the registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The file could not be read or written.
    #[error("export registry {path}: {source}")]
    Io {
        /// The registry file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file exists but is not a valid registry.
    #[error("export registry {path} is corrupt: {message}")]
    Corrupt {
        /// The registry file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The registry files of one cache directory.
#[derive(Debug, Clone)]
pub struct Registry {
    path: PathBuf,
    log: PathBuf,
}

/// What [`Registry::load_all`] found.
#[derive(Debug)]
pub struct Loaded {
    /// The registry: the snapshot with the log applied.
    pub entries: BTreeMap<String, RegEntry>,
    /// Bytes of the log up to its last whole record: where the next append goes.
    pub log_len: u64,
}

impl Registry {
    /// The registry kept in `cache_dir`.
    pub fn new(cache_dir: &Path) -> Registry {
        Registry {
            path: cache_dir.join("exports.json"),
            log: cache_dir.join("exports.log"),
        }
    }

    /// The snapshot's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log's path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The directory holding both files.
    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    fn io_err(&self, path: &Path) -> impl Fn(std::io::Error) -> RegistryError {
        let path = path.to_path_buf();
        move |source| RegistryError::Io {
            path: path.clone(),
            source,
        }
    }

    /// Read the registry; missing files are an empty registry.
    pub fn load(&self) -> Result<BTreeMap<String, RegEntry>, RegistryError> {
        Ok(self.load_all()?.entries)
    }

    /// Read the registry and where the log's next record goes.
    pub fn load_all(&self) -> Result<Loaded, RegistryError> {
        let mut entries = self.load_snapshot()?;
        let log = match std::fs::read(&self.log) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(self.io_err(&self.log)(e)),
        };
        let corrupt = |message: String| RegistryError::Corrupt {
            path: self.log.clone(),
            message,
        };
        let mut log_len = 0u64;
        let mut rest = &log[..];
        while !rest.is_empty() {
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                break; // torn last record: no newline
            };
            let (line, tail) = (&rest[..nl], &rest[nl + 1..]);
            let last = tail.iter().all(|&b| b == 0 || b == b'\n');
            let change: Change = match serde_json::from_slice(line) {
                Ok(c) => c,
                Err(_) if last => break, // torn by a crash: never acknowledged
                Err(e) => return Err(corrupt(format!("record at byte {log_len}: {e}"))),
            };
            match change {
                Change::Put(e) => {
                    validate_name(&e.name).map_err(|m| corrupt(format!("{:?}: {m}", e.name)))?;
                    entries.insert(e.name.clone(), e);
                }
                Change::Remove(name) => {
                    entries.remove(&name);
                }
            }
            log_len += nl as u64 + 1;
            rest = tail;
        }
        Ok(Loaded { entries, log_len })
    }

    fn load_snapshot(&self) -> Result<BTreeMap<String, RegEntry>, RegistryError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(self.io_err(&self.path)(e)),
        };
        let corrupt = |message: String| RegistryError::Corrupt {
            path: self.path.clone(),
            message,
        };
        let file: File = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if file.version != VERSION {
            return Err(corrupt(format!("unsupported version {}", file.version)));
        }
        let mut out = BTreeMap::new();
        for e in file.exports {
            validate_name(&e.name).map_err(|m| corrupt(format!("{:?}: {m}", e.name)))?;
            if out.insert(e.name.clone(), e).is_some() {
                return Err(corrupt("duplicate export name".to_string()));
            }
        }
        Ok(out)
    }

    /// Append `changes` to the log at `at` (the end of its last whole record) and make
    /// them durable; returns the log's new length. Anything after them (a torn
    /// record, or the rest of a failed append) is cut off first.
    pub fn append(&self, at: u64, changes: &[Change]) -> Result<u64, RegistryError> {
        let io = self.io_err(&self.log);
        let mut buf = Vec::new();
        for c in changes {
            serde_json::to_writer(&mut buf, c).map_err(|e| io(std::io::Error::other(e)))?;
            buf.push(b'\n');
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.log)
            .map_err(&io)?;
        let end = at + buf.len() as u64;
        f.write_all_at(&buf, at).map_err(&io)?;
        if f.metadata().map_err(&io)?.len() > end {
            f.set_len(end).map_err(&io)?;
        }
        f.sync_data().map_err(&io)?;
        if at == 0 {
            // The log may be new: its directory entry must be durable too.
            sync_dir(self.dir()).map_err(&io)?;
        }
        Ok(end)
    }

    /// Replace the registry with `entries` (a new snapshot, then an empty log),
    /// atomically and durably.
    pub fn save(&self, entries: &BTreeMap<String, RegEntry>) -> Result<(), RegistryError> {
        let io = self.io_err(&self.path);
        let file = File {
            version: VERSION,
            exports: entries.values().cloned().collect(),
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(&io)?;
            f.write_all(&json).map_err(&io)?;
            f.sync_data().map_err(&io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(&io)?;
        sync_dir(self.dir()).map_err(&io)?;
        // The snapshot holds every change: the log's records are redundant now.
        match std::fs::OpenOptions::new().write(true).open(&self.log) {
            Ok(f) => {
                let io = self.io_err(&self.log);
                f.set_len(0).map_err(&io)?;
                f.sync_data().map_err(&io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io_err(&self.log)(e)),
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::new(dir.path());
        assert!(r.load().unwrap().is_empty());
        let mut m = BTreeMap::new();
        m.insert(
            "a".into(),
            RegEntry {
                name: "a".into(),
                size_bytes: 4096,
                dev_id: Some(3),
            },
        );
        m.insert(
            "b".into(),
            RegEntry {
                name: "b".into(),
                size_bytes: 8192,
                dev_id: None,
            },
        );
        r.save(&m).unwrap();
        assert_eq!(r.load().unwrap(), m);
        assert!(!dir.path().join("exports.json.tmp").exists());
    }

    fn put(name: &str, size: u64) -> Change {
        Change::Put(RegEntry {
            name: name.into(),
            size_bytes: size,
            dev_id: None,
        })
    }

    /// The log applies over the snapshot; a crash can only tear its last record,
    /// which is ignored and overwritten by the next append; `save` empties it.
    #[test]
    fn log_over_snapshot_torn_tail_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::new(dir.path());
        let mut m = BTreeMap::new();
        m.insert(
            "a".into(),
            RegEntry {
                name: "a".into(),
                size_bytes: 1,
                dev_id: Some(3),
            },
        );
        r.save(&m).unwrap();
        let len = r
            .append(0, &[put("b", 2), Change::Remove("a".into())])
            .unwrap();
        let got = r.load_all().unwrap();
        assert_eq!(got.log_len, len);
        assert_eq!(got.entries.keys().collect::<Vec<_>>(), ["b"]);
        // A torn last record: no newline, or zeros where the crash lost a page.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(r.log_path())
            .unwrap();
        f.write_all(b"{\"put\":{\"name\":\"c\",\"si").unwrap();
        assert_eq!(r.load_all().unwrap().log_len, len, "torn tail");
        f.write_all(b"\0\0\0\n").unwrap();
        let got = r.load_all().unwrap();
        assert_eq!(
            (got.log_len, got.entries.len()),
            (len, 1),
            "zeros + newline"
        );
        // The next append overwrites the torn bytes and cuts off what follows.
        let len2 = r.append(len, &[put("d", 4)]).unwrap();
        assert_eq!(std::fs::metadata(r.log_path()).unwrap().len(), len2);
        let names: Vec<String> = r.load().unwrap().into_keys().collect();
        assert_eq!(names, ["b", "d"]);
        r.save(&r.load().unwrap()).unwrap();
        assert_eq!(std::fs::metadata(r.log_path()).unwrap().len(), 0);
        assert_eq!(r.load().unwrap().len(), 2);
    }

    /// A record that does not parse before the last one is corruption, not a tear.
    #[test]
    fn a_bad_record_before_the_last_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::new(dir.path());
        std::fs::write(
            r.log_path(),
            "{\"put\":{\"name\":\"a\",\"size_bytes\":1}}\nnot json\n{\"remove\":\"a\"}\n",
        )
        .unwrap();
        assert!(matches!(r.load(), Err(RegistryError::Corrupt { .. })));
        std::fs::write(
            r.log_path(),
            "{\"put\":{\"name\":\"../x\",\"size_bytes\":1}}\n",
        )
        .unwrap();
        assert!(matches!(r.load(), Err(RegistryError::Corrupt { .. })));
    }

    #[test]
    fn corrupt_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::new(dir.path());
        std::fs::write(r.path(), "{not json").unwrap();
        assert!(matches!(r.load(), Err(RegistryError::Corrupt { .. })));
        std::fs::write(
            r.path(),
            r#"{"version":1,"exports":[{"name":"../x","size_bytes":1}]}"#,
        )
        .unwrap();
        assert!(matches!(r.load(), Err(RegistryError::Corrupt { .. })));
    }
}
