//! `LocalDirStore`: objects as files under one directory (`file:///path`).
//!
//! Invariants:
//! - An object is the file `root/<key>` holding exactly its bytes.
//! - `put` is atomic and durable: the bytes go to a temp file in the destination
//!   directory (`.glidefs-tmp.*`), which is fsynced, renamed over the key, and then
//!   the directory is fsynced. Readers see the old or the new object, never a mix.
//!   Newly created parent directories are fsynced into their parents as well.
//! - Conditional puts are atomic across threads and processes: every mutation takes
//!   a `flock` on `root/.glidefs-lock` for the rename step only: shared for `put` and
//!   `delete` (they never conflict with each other), exclusive for `put_if`, which
//!   checks the condition and renames while holding it. Reads take no lock.
//! - The etag is `<inode>-<mtime ns>-<size>` in hex. Every write creates a new file
//!   whose mtime is set to the current time in nanoseconds, so any write changes it
//!   (the old inode is still alive when the new file is created, so the inode differs
//!   from the object it replaces). Cheap for `head` and `list` (no hashing).
//! - Names starting with `.glidefs` are internal and never listed (keys cannot use them).
//! - A key cannot be both an object and a "directory" of other keys (`a` and `a/b`):
//!   the second one fails with an I/O error.
//!
//! Stale temp files from a crash are harmless (never listed) and can be deleted by hand.

use super::{validate_key, validate_prefix, ObjectMeta, ObjectStore, PutCondition, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use rustix::fs::{flock, FlockOperation};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

const LOCK_FILE: &str = ".glidefs-lock";
const TMP_PREFIX: &str = ".glidefs-tmp.";

/// Object store backed by a local directory.
#[derive(Clone)]
pub struct LocalDirStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    tmp_counter: AtomicU64,
    /// Unit tests widen the check-to-rename window of `put_if` with this.
    #[cfg(test)]
    race_delay: Option<std::time::Duration>,
}

fn io_err(path: &str, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `true` for errors meaning "no such object" (missing file or a file where a
/// directory component was expected).
fn is_missing(e: &io::Error) -> bool {
    e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

fn etag_of(meta: &fs::Metadata) -> String {
    let mtime_ns = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
    format!("{:x}-{:x}-{:x}", meta.ino(), mtime_ns, meta.size())
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A held `flock` on the store's lock file; released when dropped (file closed).
struct LockGuard(#[allow(dead_code)] File);

impl Inner {
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn lock(&self, exclusive: bool) -> io::Result<LockGuard> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(crate::PRIVATE_FILE_MODE)
            .open(self.root.join(LOCK_FILE))?;
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        flock(&file, op)?;
        Ok(LockGuard(file))
    }

    /// Create the directories between the root and `dir`, fsyncing each new one
    /// into its parent so the object's path survives a power loss.
    fn ensure_dir(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        let rel = dir
            .strip_prefix(&self.root)
            .map_err(|_| io::Error::other("path outside the store root"))?;
        let mut cur = self.root.clone();
        for comp in rel.components() {
            let parent = cur.clone();
            cur.push(comp);
            match fs::create_dir(&cur) {
                Ok(()) => fsync_dir(&parent)?,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write(
        &self,
        key: &str,
        data: &[u8],
        cond: Option<&PutCondition>,
    ) -> Result<String, StoreError> {
        validate_key(key)?;
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        self.ensure_dir(&dir).map_err(|e| io_err(key, e))?;
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            "{TMP_PREFIX}{}.{n}.{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let result = self.write_tmp_and_rename(key, &tmp, &path, data, cond);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        let etag = result?;
        fsync_dir(&dir).map_err(|e| io_err(key, e))?;
        Ok(etag)
    }

    fn write_tmp_and_rename(
        &self,
        key: &str,
        tmp: &Path,
        path: &Path,
        data: &[u8],
        cond: Option<&PutCondition>,
    ) -> Result<String, StoreError> {
        let etag = (|| -> io::Result<String> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(crate::PRIVATE_FILE_MODE)
                .open(tmp)?;
            f.write_all(data)?;
            f.set_modified(SystemTime::now())?;
            f.sync_all()?;
            Ok(etag_of(&f.metadata()?))
        })()
        .map_err(|e| io_err(key, e))?;
        let _guard = self
            .lock(cond.is_some())
            .map_err(|e| io_err(LOCK_FILE, e))?;
        if let Some(cond) = cond {
            let current = match fs::metadata(path) {
                Ok(m) if m.is_file() => Some(etag_of(&m)),
                Ok(_) => {
                    return Err(io_err(
                        key,
                        io::Error::other("a directory exists at this key"),
                    ))
                }
                Err(e) if is_missing(&e) => None,
                Err(e) => return Err(io_err(key, e)),
            };
            let holds = match (cond, current) {
                (PutCondition::IfAbsent, cur) => cur.is_none(),
                (PutCondition::IfMatch(want), Some(cur)) => *want == cur,
                (PutCondition::IfMatch(_), None) => false,
            };
            if !holds {
                return Err(StoreError::PreconditionFailed(key.to_owned()));
            }
            #[cfg(test)]
            if let Some(d) = self.race_delay {
                std::thread::sleep(d);
            }
        }
        fs::rename(tmp, path).map_err(|e| io_err(key, e))?;
        Ok(etag)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let file = match File::open(self.path(key)) {
            Ok(f) => f,
            Err(e) if is_missing(&e) => return Err(StoreError::NotFound(key.to_owned())),
            Err(e) => return Err(io_err(key, e)),
        };
        let meta = file.metadata().map_err(|e| io_err(key, e))?;
        if !meta.is_file() {
            return Err(StoreError::NotFound(key.to_owned()));
        }
        let end = range.end.min(meta.size());
        let start = range.start.min(end);
        let len = usize::try_from(end - start)
            .map_err(|_| StoreError::Other(format!("range too large for {key}")))?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, start)
            .map_err(|e| io_err(key, e))?;
        Ok(Bytes::from(buf))
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        validate_key(key)?;
        match fs::metadata(self.path(key)) {
            Ok(m) if m.is_file() => Ok(ObjectMeta {
                key: key.to_owned(),
                size: m.size(),
                etag: etag_of(&m),
                modified_ms: modified_ms(&m),
            }),
            Ok(_) => Err(StoreError::NotFound(key.to_owned())),
            Err(e) if is_missing(&e) => Err(StoreError::NotFound(key.to_owned())),
            Err(e) => Err(io_err(key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        validate_prefix(prefix)?;
        // Start at the deepest directory the prefix names completely.
        let base = match prefix.rfind('/') {
            Some(i) => &prefix[..=i],
            None => "",
        };
        let mut out = Vec::new();
        self.walk(&self.root.join(base), base, prefix, &mut out)?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Collect the objects under `dir` (whose key prefix is `dir_key`) matching `prefix`.
    fn walk(
        &self,
        dir: &Path,
        dir_key: &str,
        prefix: &str,
        out: &mut Vec<ObjectMeta>,
    ) -> Result<(), StoreError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(io_err(dir_key, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_err(dir_key, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with(super::key::RESERVED_PREFIX) {
                continue;
            }
            let key = format!("{dir_key}{name}");
            let ft = entry.file_type().map_err(|e| io_err(&key, e))?;
            if ft.is_dir() {
                let sub = format!("{key}/");
                if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                    self.walk(&entry.path(), &sub, prefix, out)?;
                }
            } else if ft.is_file() && key.starts_with(prefix) {
                match entry.metadata() {
                    Ok(m) => out.push(ObjectMeta {
                        key,
                        size: m.size(),
                        etag: etag_of(&m),
                        modified_ms: modified_ms(&m),
                    }),
                    Err(e) if is_missing(&e) => {} // deleted meanwhile
                    Err(e) => return Err(io_err(&key, e)),
                }
            }
        }
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        let path = self.path(key);
        let _guard = self.lock(false).map_err(|e| io_err(LOCK_FILE, e))?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(io_err(key, e)),
        }
        drop(_guard);
        fsync_dir(path.parent().unwrap_or(&self.root)).map_err(|e| io_err(key, e))
    }
}

impl LocalDirStore {
    /// Open (creating it if needed) a store rooted at the absolute path `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = root.as_ref();
        let shown = root.display().to_string();
        if !root.is_absolute() {
            return Err(StoreError::Config(format!(
                "local store path {shown:?} is not absolute"
            )));
        }
        fs::create_dir_all(root).map_err(|e| io_err(&shown, e))?;
        let root = root.canonicalize().map_err(|e| io_err(&shown, e))?;
        let inner = Inner {
            root,
            tmp_counter: AtomicU64::new(0),
            #[cfg(test)]
            race_delay: None,
        };
        // Fail early (not on the first write) if the directory is not writable.
        drop(inner.lock(false).map_err(|e| io_err(&shown, e))?);
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        smol::unblock(move || f(&inner)).await
    }
}

#[async_trait]
impl ObjectStore for LocalDirStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        let key = key.to_owned();
        self.run(move |s| s.write(&key, &data, None)).await
    }

    async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        cond: PutCondition,
    ) -> Result<String, StoreError> {
        let key = key.to_owned();
        self.run(move |s| s.write(&key, &data, Some(&cond))).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.get_range(key, 0..u64::MAX).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let key = key.to_owned();
        self.run(move |s| s.get_range(&key, range)).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let key = key.to_owned();
        self.run(move |s| s.head(&key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let prefix = prefix.to_owned();
        self.run(move |s| s.list(&prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.run(move |s| s.delete(&key)).await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.inner.root.display())
    }
}

/// A file's mtime in ms since the Unix epoch (this host is the store's clock).
fn modified_ms(m: &fs::Metadata) -> Option<u64> {
    m.modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Threads with separate lock-file descriptions (like separate processes), with
    /// the check-to-rename window widened: exactly one winner per round.
    fn race(cond: impl Fn(&Inner) -> PutCondition) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LocalDirStore::open(dir.path()).unwrap();
        Arc::get_mut(&mut store.inner).unwrap().race_delay = Some(Duration::from_millis(20));
        let inner = store.inner.clone();
        inner.write("k", b"0", None).unwrap();
        let c = cond(&inner);
        let results: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..8u8)
                .map(|i| {
                    let (inner, c) = (&inner, c.clone());
                    sc.spawn(move || inner.write("k", &[i], Some(&c)))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "{results:?}");
        assert!(results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(StoreError::PreconditionFailed(_)))));
    }

    /// Objects hold guests' data: readable by their owner only, whatever the umask.
    #[test]
    fn objects_and_the_lock_file_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        store.inner.write("volumes/v/meta", b"x", None).unwrap();
        for f in ["volumes/v/meta", LOCK_FILE] {
            let mode = fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}: mode {mode:o}");
        }
    }

    #[test]
    fn if_match_race_has_one_winner() {
        race(|inner| PutCondition::IfMatch(inner.head("k").unwrap().etag));
    }

    #[test]
    fn if_absent_race_has_one_winner() {
        race(|inner| {
            std::fs::remove_file(inner.path("k")).unwrap();
            PutCondition::IfAbsent
        });
    }

    #[test]
    fn etag_changes_on_every_write_even_with_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            assert!(seen.insert(store.inner.write("a/b", b"same", None).unwrap()));
        }
    }

    #[test]
    fn key_cannot_be_file_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        store.inner.write("a", b"x", None).unwrap();
        assert!(matches!(
            store.inner.write("a/b", b"y", None),
            Err(StoreError::Io { .. })
        ));
        assert!(matches!(
            store.inner.head("a/b"),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn relative_root_is_a_config_error() {
        assert!(matches!(
            LocalDirStore::open("rel/dir"),
            Err(StoreError::Config(_))
        ));
    }
}
