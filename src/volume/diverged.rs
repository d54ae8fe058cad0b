//! Local dirty data that can no longer be uploaded is set aside, never deleted.
//!
//! It happens when a volume was written by another host since this cache last held
//! its lease (found at open: the lease's previous owner is not us), or when the
//! local cache of such a volume is removed (export delete without purge after the
//! export was fenced). The cache directory's files move, unchanged, to
//! `<set_aside_dir>/<name>/<unix ms>-<reason>/`, plus:
//! - `dirty-ranges.txt`: one `offset length` line (bytes) per dirty range of the
//!   volume, the sectors that differ from what this host last uploaded;
//! - `info.json`: `{name, uuid, dirty_bytes, created_ms, reason}`.
//!
//! The `data` file is the volume image as this host last had it (sparse; sectors
//! outside the dirty ranges may be stale or absent). docs/operations.md ("Diverged
//! data") says how to inspect and discard it.

use super::blockmap::{LocalMap, SECTORS_PER_BLOCK};
use super::fileio::{self, FileIo};
use super::journal::{self, LocalState};
use super::VolumeError;
use crate::SECTOR_SIZE;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

/// Ranges file name.
pub const DIRTY_RANGES_FILE: &str = "dirty-ranges.txt";
/// Info file name.
pub const INFO_FILE: &str = "info.json";

/// One set-aside directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DivergedEntry {
    /// Volume name.
    pub name: String,
    /// Volume incarnation (hex uuid).
    pub uuid: String,
    /// Dirty bytes it holds.
    pub dirty_bytes: u64,
    /// When it was set aside (ms since the Unix epoch).
    pub created_ms: u64,
    /// Why: `written-elsewhere` (found at open) or `removed` (cache removed).
    pub reason: String,
    /// The directory (filled in by [`list`]).
    #[serde(default)]
    pub path: PathBuf,
}

/// The dirty map of the cache in `dir`, if it holds any dirty sector:
/// (volume uuid, map).
pub(crate) fn local_dirty(
    fs: &dyn FileIo,
    dir: &Path,
) -> Result<Option<(u64, LocalMap)>, VolumeError> {
    let Some(raw) = fileio::read_all(fs, &journal::state_path(dir))
        .map_err(|e| VolumeError::io(format!("reading state in {}", dir.display()), e))?
    else {
        return Ok(None);
    };
    let st = LocalState::decode(&raw)
        .map_err(|e| VolumeError::Corrupt(format!("local state {}: {e}", dir.display())))?;
    let data = fs
        .open(&dir.join("data"), true)
        .map_err(|e| VolumeError::io(format!("opening cache file in {}", dir.display()), e))?;
    let replayed = journal::replay(fs, dir, st.uuid, &*data)?;
    Ok(replayed
        .filter(|r| r.map.dirty_sectors > 0)
        .map(|r| (st.uuid, r.map)))
}

/// Dirty byte ranges of `map`, merged.
fn dirty_ranges(map: &LocalMap) -> Vec<(u64, u64)> {
    let ss = SECTOR_SIZE as u64;
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &b in &map.dirty_set {
        let dirty = map.get(b).dirty;
        for s in 0..SECTORS_PER_BLOCK {
            if dirty & (1 << s) == 0 {
                continue;
            }
            let off = (b * SECTORS_PER_BLOCK as u64 + s as u64) * ss;
            match out.last_mut() {
                Some(last) if last.0 + last.1 == off => last.1 += ss,
                _ => out.push((off, ss)),
            }
        }
    }
    out
}

/// What is set aside, and why.
pub(crate) struct Aside<'a> {
    /// Volume name.
    pub name: &'a str,
    /// Incarnation the cache belongs to.
    pub uuid: u64,
    /// Its dirty map.
    pub map: &'a LocalMap,
    /// `written-elsewhere` or `removed`.
    pub reason: &'a str,
    /// Now (ms since the Unix epoch).
    pub now_ms: u64,
}

/// Move every file of the cache in `dir` to a new directory under
/// `root/<name>/`; returns it. `dir` is left empty.
pub(crate) fn set_aside(
    fs: &dyn FileIo,
    dir: &Path,
    root: &Path,
    a: Aside<'_>,
) -> io::Result<PathBuf> {
    let Aside {
        name,
        uuid,
        map,
        reason,
        now_ms,
    } = a;
    let mut target = root.join(name).join(format!("{now_ms}-{reason}"));
    let mut n = 0;
    while fs.exists(&target) {
        n += 1;
        target = root.join(name).join(format!("{now_ms}-{reason}-{n}"));
    }
    fs.create_dir_all(&target)?;
    for f in fs.list_dir(dir)? {
        fs.rename(&dir.join(&f), &target.join(&f))?;
    }
    let ranges: String = dirty_ranges(map)
        .iter()
        .map(|(o, l)| format!("{o} {l}\n"))
        .collect();
    fileio::write_atomic(fs, &target.join(DIRTY_RANGES_FILE), ranges.as_bytes())?;
    let info = DivergedEntry {
        name: name.to_string(),
        uuid: format!("{uuid:016x}"),
        dirty_bytes: map.dirty_sectors * SECTOR_SIZE as u64,
        created_ms: now_ms,
        reason: reason.to_string(),
        path: PathBuf::new(),
    };
    let json = serde_json::to_vec_pretty(&info).map_err(io::Error::other)?;
    fileio::write_atomic(fs, &target.join(INFO_FILE), &json)?;
    fs.sync_dir(dir)?;
    Ok(target)
}

/// Every set-aside directory under `root` (all volumes), oldest first.
pub fn list(fs: &dyn FileIo, root: &Path) -> io::Result<Vec<DivergedEntry>> {
    let mut out = Vec::new();
    let mut names = fs.list_dir(root)?;
    names.sort();
    for name in names {
        let mut dirs = fs.list_dir(&root.join(&name))?;
        dirs.sort();
        for d in dirs {
            let path = root.join(&name).join(&d);
            let Some(raw) = fileio::read_all(fs, &path.join(INFO_FILE))? else {
                continue;
            };
            if let Ok(mut e) = serde_json::from_slice::<DivergedEntry>(&raw) {
                e.path = path;
                out.push(e);
            }
        }
    }
    out.sort_by_key(|e| e.created_ms);
    Ok(out)
}
