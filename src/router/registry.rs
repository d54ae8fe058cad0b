//! The persisted export registry: `<cache dir>/exports.json`.
//!
//! Invariants:
//! - written atomically (temp file, fdatasync, rename, fsync of the directory), so a
//!   crash leaves the old or the new registry, never a torn one;
//! - a registry that does not parse, or holds an invalid name, stops the daemon
//!   with an error instead of being dropped (it is the map to the operator's data);
//! - `dev_id` is kept so a restarted daemon re-attaches the same `/dev/ublkbN`.

use crate::rules::validate_name;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
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

/// The registry file of one cache directory.
#[derive(Debug, Clone)]
pub struct Registry {
    path: PathBuf,
}

impl Registry {
    /// The registry kept in `cache_dir`.
    pub fn new(cache_dir: &Path) -> Registry {
        Registry {
            path: cache_dir.join("exports.json"),
        }
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read the registry; a missing file is an empty registry.
    pub fn load(&self) -> Result<BTreeMap<String, RegEntry>, RegistryError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => {
                return Err(RegistryError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
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

    /// Replace the registry with `entries`, atomically and durably.
    pub fn save(&self, entries: &BTreeMap<String, RegEntry>) -> Result<(), RegistryError> {
        let io = |source| RegistryError::Io {
            path: self.path.clone(),
            source,
        };
        let file = File {
            version: VERSION,
            exports: entries.values().cloned().collect(),
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&json).map_err(io)?;
            f.sync_data().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
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
