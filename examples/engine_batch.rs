//! Counts what the engine's write path costs in system calls when many writes are in
//! flight on one thread (as on a ublk worker): run under `strace -c -f -e trace=pwrite64`.
//! Prints the number of writes and the journal bytes they appended.
use glidefs::store::{MemStore, ObjectStore};
use glidefs::volume::{Volume, VolumeConfig};
use std::sync::Arc;
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    let mut cfg = VolumeConfig::new("b", 32 << 20, dir.path().join("vol"));
    cfg.flush_interval = Duration::from_secs(3600);
    cfg.journal_compact_bytes = 1 << 40;
    let ex = smol::LocalExecutor::new();
    smol::block_on(ex.run(async {
        let vol = Volume::open(cfg, store).await?;
        vol.write(0, &vec![1u8; 32 << 20], false).await?;
        vol.drain().await?; // every sector clean: each write needs a record
        let jdir = dir.path().join("vol");
        let jsize = || -> u64 {
            std::fs::read_dir(&jdir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("journal."))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        };
        let j0 = jsize();
        eprintln!("MARK start");
        let per = 256u64;
        let mut tasks = Vec::new();
        for t in 0..32u64 {
            let v = vol.clone();
            tasks.push(ex.spawn(async move {
                let buf = vec![7u8; 4096];
                let mut x = t * 7919 + 1;
                for _ in 0..per {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    v.write(((x >> 33) % 8192) * 4096, &buf, false).await?;
                }
                Ok::<_, glidefs::volume::VolumeError>(())
            }));
        }
        for t in tasks {
            t.await?;
        }
        eprintln!("writes {} journal_bytes {}", 32 * per, jsize() - j0);
        vol.close().await?;
        Ok(())
    }))
}
