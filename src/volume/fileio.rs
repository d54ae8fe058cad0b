//! The engine's file layer: every local byte goes through [`FileIo`] / [`FileHandle`].
//!
//! [`RealFs`] uses std files plus `fallocate(PUNCH_HOLE)` (rustix, no unsafe).
//! [`SimFs`] is an in-memory file system for tests that models the page cache: each
//! file has its current content and its last fdatasync'ed content;
//! [`SimFs::power_loss`] throws away everything not synced and changes the boot id.
//! Metadata operations (create, rename, remove) are durable at once in the simulator
//! (the real code still fsyncs directories); that simplification is documented in
//! docs/format.md.
//!
//! Reads past the end of a file return zeros (the cache file is sparse).

use crate::stage_timers::{self, Stage};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One open file.
pub trait FileHandle: Send + Sync {
    /// Read `buf.len()` bytes at `off`; bytes past the end of the file read as zeros.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// Write all of `data` at `off`.
    fn write_at(&self, data: &[u8], off: u64) -> io::Result<()>;
    /// Deallocate `[off, off+len)`; it reads back as zeros. The size does not change.
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()>;
    /// fdatasync.
    fn sync_data(&self) -> io::Result<()>;
    /// Current size.
    fn len(&self) -> io::Result<u64>;
    /// Size is zero.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncate or extend (sparse).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The open OS file behind this handle, for readers that copy from it without
    /// going through the handle (a READ served from a mapping of the cache file);
    /// `None` for files that are not OS files (the simulator).
    fn os_file(&self) -> Option<Arc<File>> {
        None
    }
}

/// A file system.
pub trait FileIo: Send + Sync + 'static {
    /// Open read-write; create when `create` (else NotFound).
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FileHandle>>;
    /// Does `path` exist?
    fn exists(&self, path: &Path) -> bool;
    /// Remove a file; a missing file is not an error.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Atomically replace `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// mkdir -p.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// fsync a directory (makes creates/renames durable).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// File names in a directory (empty if it does not exist).
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// rm -rf.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Identifier of the current boot: a change means the page cache was lost.
    fn boot_id(&self) -> String;
}

/// Read a whole file (None if missing).
pub fn read_all(fs: &dyn FileIo, path: &Path) -> io::Result<Option<Vec<u8>>> {
    let f = match fs.open(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.len()?;
    let mut buf = vec![0u8; len as usize];
    f.read_at(&mut buf, 0)?;
    Ok(Some(buf))
}

/// Write a file atomically and durably: temp file, fdatasync, rename, fsync dir.
pub fn write_atomic(fs: &dyn FileIo, path: &Path, data: &[u8]) -> io::Result<()> {
    replace_file(fs, path, data)?;
    match path.parent() {
        Some(dir) => fs.sync_dir(dir),
        None => Ok(()),
    }
}

/// Replace a file atomically (temp file, fdatasync, rename): a crash leaves the old
/// or the new content, never a torn one. The rename is durable only once the
/// caller fsyncs the directory (several replacements can share that fsync).
pub fn replace_file(fs: &dyn FileIo, path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs.remove_file(&tmp)?;
    let f = fs.open(&tmp, true)?;
    f.set_len(0)?;
    f.write_at(data, 0)?;
    f.sync_data()?;
    drop(f);
    fs.rename(&tmp, path)
}

/// Real files.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

struct RealFile(Arc<File>);

impl RealFile {
    /// pread until `buf` is full; zeros past the end of the file.
    fn read_fully(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], off + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl FileHandle for RealFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        stage_timers::time(Stage::FileRead, || self.read_fully(buf, off))
    }
    fn write_at(&self, data: &[u8], off: u64) -> io::Result<()> {
        stage_timers::time(Stage::FileWrite, || self.0.write_all_at(data, off))
    }
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        use rustix::fs::{fallocate, FallocateFlags};
        match fallocate(
            &self.0,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            off,
            len,
        ) {
            Ok(()) => Ok(()),
            // File systems without hole punching: write zeros instead.
            Err(rustix::io::Errno::OPNOTSUPP) => {
                let zeros = vec![0u8; 64 * 1024];
                let mut pos = off;
                while pos < off + len {
                    let n = (off + len - pos).min(zeros.len() as u64) as usize;
                    self.0.write_all_at(&zeros[..n], pos)?;
                    pos += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
    fn sync_data(&self) -> io::Result<()> {
        stage_timers::time(Stage::FileSync, || self.0.sync_data())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn os_file(&self) -> Option<Arc<File>> {
        Some(self.0.clone())
    }
}

impl FileIo for RealFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FileHandle>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(crate::PRIVATE_FILE_MODE)
            .open(path)?;
        // Files an older version created with the process umask are tightened too.
        let mode = f.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            f.set_permissions(std::fs::Permissions::from_mode(mode & !0o077))?;
        }
        Ok(Arc::new(RealFile(Arc::new(f))))
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let rd = match std::fs::read_dir(path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in rd {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
    fn boot_id(&self) -> String {
        read_boot_id(&BOOT_ID_PATHS.map(Path::new))
    }
}

/// Where the kernel names the current boot, in the order tried: the kernel's own
/// file, then the copy glidefs.service binds into its runtime directory
/// (`BindReadOnlyPaths=`), because its `ProcSubset=pid` hides `/proc/sys`.
const BOOT_ID_PATHS: [&str; 2] = ["/proc/sys/kernel/random/boot_id", "/run/glidefs/boot_id"];

/// The boot id from the first of `paths` that holds one. When none can be read (or
/// all are empty) it becomes a random `unreadable-…` id, new on every call: it never
/// equals an id recorded before, so the journal replay treats an unclean close as a
/// possible power loss and verifies, instead of trusting unsynced records (fail
/// closed).
fn read_boot_id(paths: &[&Path]) -> String {
    let mut why = Vec::new();
    for path in paths {
        match std::fs::read_to_string(path) {
            Ok(s) if !s.trim().is_empty() => return s.trim().to_string(),
            Ok(_) => why.push(format!("{}: empty", path.display())),
            Err(e) => why.push(format!("{}: {e}", path.display())),
        }
    }
    tracing::warn!(tried = %why.join("; "),
        "cannot read the boot id: every unclean close counts as a possible power loss");
    format!("unreadable-{:016x}", rand::random::<u64>())
}

#[derive(Default)]
struct SimData {
    cur: Vec<u8>,
    synced: Vec<u8>,
    /// Writes since the last sync, in order: (offset, bytes); punches are zeros.
    pending: Vec<(usize, Vec<u8>)>,
}

#[derive(Default)]
struct SimFile(Mutex<SimData>);

#[derive(Default)]
struct SimState {
    files: HashMap<PathBuf, Arc<SimFile>>,
    boot: u64,
    /// `set_len` beyond this fails with EFBIG (0: no limit), like ext4 at 16 TiB.
    max_len: Arc<std::sync::atomic::AtomicU64>,
    /// fdatasync and directory fsync calls so far (what a real disk pays for).
    syncs: Arc<std::sync::atomic::AtomicU64>,
}

/// In-memory file system with page-cache semantics, for crash tests.
#[derive(Default, Clone)]
pub struct SimFs(Arc<Mutex<SimState>>);

impl SimFs {
    /// A new empty file system.
    pub fn new() -> Self {
        Self::default()
    }
    /// Power loss: every file reverts to its last fdatasync'ed content; new boot id.
    pub fn power_loss(&self) {
        self.power_loss_with_writeback(0);
    }

    /// Power loss after random background writeback: each write since a file's last
    /// fdatasync independently reached the disk or not (chosen by `seed`; 0 = none
    /// did), in any combination across files. New boot id.
    pub fn power_loss_with_writeback(&self, seed: u64) {
        let mut x = seed;
        self.crash(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            seed != 0 && x & 1 == 1
        });
    }

    /// Power loss where exactly the unsynced writes to files for which `keep`
    /// returns true reached the disk. New boot id.
    pub fn power_loss_keeping(&self, keep: impl Fn(&Path) -> bool) {
        let st = self.0.lock();
        let kept: Vec<PathBuf> = st.files.keys().filter(|p| keep(p)).cloned().collect();
        drop(st);
        let mut st = self.0.lock();
        for (path, f) in st.files.iter() {
            let k = kept.contains(path);
            Self::revert(f, |_| k);
        }
        st.boot += 1;
    }

    fn crash(&self, mut survives: impl FnMut(&(usize, Vec<u8>)) -> bool) {
        let mut st = self.0.lock();
        for f in st.files.values() {
            Self::revert(f, &mut survives);
        }
        st.boot += 1;
    }

    fn revert(f: &SimFile, mut survives: impl FnMut(&(usize, Vec<u8>)) -> bool) {
        let mut d = f.0.lock();
        let mut img = d.synced.clone();
        for w in std::mem::take(&mut d.pending) {
            if survives(&w) {
                let (off, bytes) = w;
                let end = off + bytes.len();
                if img.len() < end {
                    img.resize(end, 0);
                }
                img[off..end].copy_from_slice(&bytes);
            }
        }
        img.resize(d.cur.len(), 0);
        d.synced.clone_from(&img);
        d.cur = img;
    }

    /// From now on `set_len` beyond `max` bytes fails with EFBIG, as on a file
    /// system whose largest file is smaller than the volume (ext4: 16 TiB).
    pub fn fail_set_len_above(&self, max: u64) {
        self.0
            .lock()
            .max_len
            .store(max, std::sync::atomic::Ordering::SeqCst);
    }

    /// fdatasync and directory fsync calls made so far, on every file and directory.
    pub fn sync_count(&self) -> u64 {
        self.0
            .lock()
            .syncs
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Flip one byte of a file (corruption tests). Returns false if out of range.
    pub fn corrupt(&self, path: &Path, off: u64) -> bool {
        let st = self.0.lock();
        match st.files.get(path) {
            Some(f) => {
                let mut d = f.0.lock();
                let Some(b) = d.cur.get_mut(off as usize) else {
                    return false;
                };
                *b ^= 0x5a;
                if let Some(b) = d.synced.get_mut(off as usize) {
                    *b ^= 0x5a;
                }
                true
            }
            None => false,
        }
    }
}

struct SimHandle {
    file: Arc<SimFile>,
    max_len: Arc<std::sync::atomic::AtomicU64>,
    syncs: Arc<std::sync::atomic::AtomicU64>,
}

impl FileHandle for SimHandle {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let d = self.file.0.lock();
        let off = off as usize;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = d.cur.get(off + i).copied().unwrap_or(0);
        }
        Ok(())
    }
    fn write_at(&self, data: &[u8], off: u64) -> io::Result<()> {
        let mut d = self.file.0.lock();
        let end = off as usize + data.len();
        if d.cur.len() < end {
            d.cur.resize(end, 0);
        }
        d.cur[off as usize..end].copy_from_slice(data);
        d.pending.push((off as usize, data.to_vec()));
        Ok(())
    }
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        let mut d = self.file.0.lock();
        let n = d.cur.len();
        let a = (off as usize).min(n);
        let b = ((off + len) as usize).min(n);
        d.cur[a..b].fill(0);
        d.pending.push((a, vec![0u8; b - a]));
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut d = self.file.0.lock();
        let d = &mut *d;
        d.synced.clone_from(&d.cur);
        d.pending.clear();
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.0.lock().cur.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let max = self.max_len.load(std::sync::atomic::Ordering::SeqCst);
        if max != 0 && len > max {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        // Size changes are metadata: durable at once in the simulator.
        let mut d = self.file.0.lock();
        let n = len as usize;
        d.cur.resize(n, 0);
        d.synced.resize(n, 0);
        for (off, bytes) in d.pending.iter_mut() {
            bytes.truncate(n.saturating_sub(*off));
        }
        Ok(())
    }
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, p.display().to_string())
}

impl FileIo for SimFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn FileHandle>> {
        let mut st = self.0.lock();
        let handle = |file| {
            Arc::new(SimHandle {
                file,
                max_len: st.max_len.clone(),
                syncs: st.syncs.clone(),
            })
        };
        if let Some(f) = st.files.get(path) {
            return Ok(handle(f.clone()));
        }
        if !create {
            return Err(not_found(path));
        }
        let f = Arc::new(SimFile::default());
        let h = handle(f.clone());
        st.files.insert(path.to_path_buf(), f);
        Ok(h)
    }
    fn exists(&self, path: &Path) -> bool {
        let st = self.0.lock();
        st.files.contains_key(path) || st.files.keys().any(|k| k.starts_with(path))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.0.lock().files.remove(path);
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.0.lock();
        let f = st.files.remove(from).ok_or_else(|| not_found(from))?;
        st.files.insert(to.to_path_buf(), f);
        Ok(())
    }
    fn create_dir_all(&self, _path: &Path) -> io::Result<()> {
        Ok(())
    }
    fn sync_dir(&self, _path: &Path) -> io::Result<()> {
        let st = self.0.lock();
        st.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let st = self.0.lock();
        Ok(st
            .files
            .keys()
            .filter(|k| k.parent() == Some(path))
            .filter_map(|k| k.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.0.lock().files.retain(|k, _| !k.starts_with(path));
        Ok(())
    }
    fn boot_id(&self) -> String {
        format!("sim-boot-{}", self.0.lock().boot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_power_loss_drops_unsynced() {
        let fs = SimFs::new();
        let p = Path::new("/x/f");
        let f = fs.open(p, true).unwrap();
        f.write_at(b"aaaa", 0).unwrap();
        f.sync_data().unwrap();
        f.write_at(b"bb", 0).unwrap();
        let b0 = fs.boot_id();
        fs.power_loss();
        assert_ne!(b0, fs.boot_id());
        let mut buf = [0u8; 6];
        fs.open(p, false).unwrap().read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"aaaa\0\0");
    }

    /// Power loss is judged by comparing boot ids: one that cannot be read must never
    /// equal what another boot recorded (an empty id equals every other empty id).
    #[test]
    fn an_unreadable_boot_id_never_matches_a_recorded_one() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-file");
        let id = read_boot_id(&[&missing]);
        assert!(!id.is_empty(), "an unreadable boot id reads as empty");
        assert_ne!(id, read_boot_id(&[&dir.path().join("no-such-file-either")]));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        assert!(read_boot_id(&[&empty]).starts_with("unreadable-"));
        let good = dir.path().join("boot_id");
        std::fs::write(&good, "1234\n").unwrap();
        assert_eq!(read_boot_id(&[&good]), "1234");
        // The first place that holds one wins; missing or empty ones are skipped.
        let other = dir.path().join("other");
        std::fs::write(&other, "5678\n").unwrap();
        assert_eq!(read_boot_id(&[&missing, &empty, &good, &other]), "1234");
    }

    /// Cache files hold guests' data: readable by their owner only, whatever the umask.
    #[test]
    fn real_files_are_created_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        RealFs.open(&p, true).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "cache file mode {mode:o}");
    }

    #[test]
    fn real_punch_hole_reads_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = RealFs.open(&p, true).unwrap();
        f.write_at(&[7u8; 16384], 0).unwrap();
        f.punch_hole(4096, 8192).unwrap();
        let mut buf = vec![0u8; 16384];
        f.read_at(&mut buf, 0).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 7));
        assert!(buf[4096..12288].iter().all(|&b| b == 0));
        assert!(buf[12288..].iter().all(|&b| b == 7));
        assert_eq!(f.len().unwrap(), 16384);
    }
}
