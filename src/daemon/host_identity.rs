//! This host's identity and its claim on the cache directory.
//!
//! - [`HostIdentity`]: a random id (32 lowercase hex characters, 128 bits from the
//!   OS RNG) created once in `<cache.dir>/host-id` (mode 0600) and read on every
//!   start. It is the lease owner of every volume this daemon opens
//!   (`VolumeConfig::owner`); the hostname travels beside it for display only. Two
//!   hosts cloned from one image with the same hostname and cache path are still
//!   two owners, because each cache disk gets its own id. A copied cache dir copies
//!   the id too: that is the same host as far as the volumes are concerned.
//! - [`CacheDirLock`]: an exclusive `flock` on `<cache.dir>/lock`, held for the
//!   daemon's lifetime, with the holder's pid written into the file. A second daemon
//!   on the same cache dir refuses to start (its journals and registry would
//!   corrupt the first one's) and names the pid that holds the lock. The kernel drops
//!   the lock when the process dies, kill -9 included, so a stale file never blocks.
//!
//! See docs/operations.md ("Host identity").

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// File name of the host id inside the cache dir.
pub const HOST_ID_FILE: &str = "host-id";
/// File name of the lock inside the cache dir.
pub const LOCK_FILE: &str = "lock";
/// Length of a host id in hex characters.
const ID_HEX_LEN: usize = 32;

/// Errors of host identity and the cache-dir lock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file or directory could not be read, written or created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The host-id file does not hold a host id.
    #[error("{}: not a glidefs host id (expected {ID_HEX_LEN} lowercase hex characters); restore it from a backup, or delete it only if no volume was ever opened from this cache dir", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// Another process holds the cache dir.
    #[error("{}: cache dir is in use by another glidefs daemon ({}); stop it first, or give this one its own cache.dir", path.display(), holder_text(*pid))]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, when it wrote one.
        pid: Option<u32>,
    },
}

fn holder_text(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("pid {p}"),
        None => "pid unknown".to_string(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who this daemon is: the lease owner id and the hostname shown beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    /// Random host id (the lease owner).
    pub id: String,
    /// Hostname, for display.
    pub label: String,
}

impl HostIdentity {
    /// The tag of this daemon's ublk devices (see `ublk::device_marker`).
    pub fn device_tag(&self) -> u32 {
        crc32c::crc32c(self.id.as_bytes())
    }

    /// Read `<cache_dir>/host-id`, creating the dir and the file (0600) on first use.
    pub fn load_or_create(cache_dir: &Path) -> Result<HostIdentity, IdentityError> {
        Ok(HostIdentity {
            id: load_or_create_id(cache_dir)?,
            label: crate::volume::config::hostname(),
        })
    }
}

fn valid_id(s: &str) -> bool {
    s.len() == ID_HEX_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; ID_HEX_LEN / 2];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The id in `<cache_dir>/host-id`, created (write, fsync, rename, fsync dir) if absent.
fn load_or_create_id(cache_dir: &Path) -> Result<String, IdentityError> {
    std::fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    let path = cache_dir.join(HOST_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.strip_suffix('\n').unwrap_or(&s);
            return if valid_id(id) {
                Ok(id.to_string())
            } else {
                Err(IdentityError::Malformed { path })
            };
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(IdentityError::Io { path, source }),
    }
    let id = new_id();
    let tmp = cache_dir.join(format!("{HOST_ID_FILE}.tmp.{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::PRIVATE_FILE_MODE)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(format!("{id}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    drop(f);
    // A hard link fails if another process created the file meanwhile: its id wins.
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            File::open(cache_dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(cache_dir))?;
            tracing::info!(host_id = %id, path = %path.display(), "new host id");
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_id(cache_dir),
        Err(source) => Err(IdentityError::Io { path, source }),
    }
}

/// An exclusive claim on a cache dir; released when dropped (or the process dies).
#[derive(Debug)]
pub struct CacheDirLock {
    _file: File,
    path: PathBuf,
}

impl CacheDirLock {
    /// Lock `<cache_dir>/lock` (creating the dir) and write our pid into it, or fail
    /// with [`IdentityError::Locked`] naming the holder's pid.
    pub fn acquire(cache_dir: &Path) -> Result<CacheDirLock, IdentityError> {
        std::fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
        let path = cache_dir.join(LOCK_FILE);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(crate::PRIVATE_FILE_MODE)
            .open(&path)
            .map_err(io_err(&path))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut s = String::new();
                let pid = f
                    .read_to_string(&mut s)
                    .ok()
                    .and_then(|_| s.trim().parse().ok());
                return Err(IdentityError::Locked { path, pid });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(IdentityError::Io { path, source })
            }
        }
        f.set_len(0)
            .and_then(|()| f.seek(SeekFrom::Start(0)))
            .and_then(|_| f.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .map_err(io_err(&path))?;
        Ok(CacheDirLock { _file: f, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn id_is_created_once_private_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let a = HostIdentity::load_or_create(&cache).unwrap();
        assert!(valid_id(&a.id), "{}", a.id);
        let path = cache.join(HOST_ID_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(HostIdentity::load_or_create(&cache).unwrap(), a);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", a.id)
        );
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [HOST_ID_FILE]);
    }

    #[test]
    fn ids_differ_per_cache_dir() {
        let dir = tempfile::tempdir().unwrap();
        let a = HostIdentity::load_or_create(&dir.path().join("a")).unwrap();
        let b = HostIdentity::load_or_create(&dir.path().join("b")).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a.label, b.label);
    }

    #[test]
    fn a_malformed_id_file_is_rejected_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HOST_ID_FILE);
        for bad in [
            "",
            "xyz\n",
            &"A".repeat(32),
            &"a".repeat(31),
            &"a".repeat(33),
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = HostIdentity::load_or_create(dir.path()).unwrap_err();
            assert!(matches!(err, IdentityError::Malformed { .. }), "{bad:?}");
            assert!(err.to_string().contains(&path.display().to_string()));
            // Never replaced: the operator decides.
            assert_eq!(std::fs::read_to_string(&path).unwrap(), bad);
        }
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let held = CacheDirLock::acquire(dir.path()).unwrap();
        let mode = std::fs::metadata(held.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = CacheDirLock::acquire(dir.path()).unwrap_err();
        let pid = std::process::id();
        assert!(
            matches!(err, IdentityError::Locked { pid: Some(p), .. } if p == pid),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {pid}")) && msg.contains("lock"),
            "{msg}"
        );
        drop(held);
        let again = CacheDirLock::acquire(dir.path()).unwrap();
        drop(again);
    }
}
