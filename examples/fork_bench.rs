//! Issue 16's fork measurements, on the engine over a local file store with a
//! modelled store latency (every GET waits `GET_LATENCY_MS`, about an S3 first
//! byte):
//! 1. fork creation (metadata only) and fork + first open, median and p99 over
//!    `FORKS` forks, of a 1 GiB and of a 10 GiB base with `WRITTEN_MIB` written;
//!    store bytes each fork adds;
//! 2. a boot storm: `STORM` forks of one snapshot each read the same
//!    `STORM_MIB` of it at once, with the shared cache and without; one fork alone
//!    for comparison: time, store GETs, bytes held in caches.
//!
//! `cargo run --release --example fork_bench` (knobs from the environment, see
//! `support::knob`); prints a trace for scripts/bench-results/.
mod support;

use glidefs::store::{open_store, ObjectStore, StoreOptions};
use glidefs::volume::shared_cache::SharedCache;
use glidefs::volume::{Volume, VolumeConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cfg(root: &Path, name: &str, size: u64) -> VolumeConfig {
    let mut c = VolumeConfig::new(name, size, root.join("cache").join(name));
    c.flush_interval = Duration::from_secs(3600);
    c
}

async fn store_bytes(store: &Arc<dyn ObjectStore>) -> u64 {
    let l = store.list("").await.unwrap_or_default();
    l.iter().map(|o| o.size).sum()
}

/// Bytes the files under `dir` occupy on disk (sparse cache files count what they
/// hold, not their size).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() {
            disk_bytes(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn write_base(
    store: &Arc<dyn ObjectStore>,
    root: &Path,
    name: &str,
    size: u64,
    mib: u64,
) -> anyhow::Result<()> {
    let v = Volume::open(cfg(root, name, size), store.clone()).await?;
    let chunk: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for m in 0..mib {
        let mut c = chunk.clone();
        c[..8].copy_from_slice(&m.to_le_bytes());
        v.write(m << 20, &c, false).await?;
    }
    v.snapshot("s1").await?;
    v.close().await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let forks = support::knob("FORKS", 100) as usize;
    let written = support::knob("WRITTEN_MIB", 1024);
    let storm = support::knob("STORM", 32) as usize;
    let storm_mib = support::knob("STORM_MIB", 200);
    let lat = support::knob("GET_LATENCY_MS", 20);
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))?;
    let root = dir.path().to_path_buf();
    std::fs::create_dir_all(root.join("store"))?;
    let file = open_store(
        &format!("file://{}", root.join("store").display()),
        &StoreOptions::default(),
    )?;
    let store: Arc<dyn ObjectStore> = Arc::new(support::Latency {
        inner: file,
        ms: lat,
    });
    println!("# fork_bench: FORKS={forks} WRITTEN_MIB={written} STORM={storm} STORM_MIB={storm_mib} GET_LATENCY_MS={lat}");
    println!(
        "# store: local file store under {} with {lat} ms per GET",
        root.display()
    );
    smol::block_on(async {
        // 1. Fork creation.
        for (base, size) in [("base-1g", 1u64 << 30), ("base-10g", 10u64 << 30)] {
            write_base(&store, &root, base, size, written.min(size >> 20)).await?;
            let (mut make, mut open) = (Vec::new(), Vec::new());
            let b0 = store_bytes(&store).await;
            for k in 0..forks {
                let name = format!("{base}-f{k}");
                let t = Instant::now();
                Volume::fork(&store, base, "s1", &name, 0, None).await?;
                make.push(t.elapsed().as_secs_f64() * 1e3);
                let v = Volume::open(cfg(&root, &name, 0), store.clone()).await?;
                open.push(t.elapsed().as_secs_f64() * 1e3);
                v.close().await?;
            }
            let added = store_bytes(&store).await - b0;
            // Opening wrote a lease per fork: count the fork's own objects only.
            let mut meta_marker = 0u64;
            for o in store.list("").await.unwrap_or_default() {
                if o.key.ends_with("/meta") && o.key.contains(&format!("{base}-f"))
                    || o.key.contains("/forks/") && o.key.contains(base)
                {
                    meta_marker += o.size;
                }
            }
            println!(
                "fork {base}: metadata median {:.2} ms p99 {:.2} ms; fork+open median {:.2} ms p99 {:.2} ms; store bytes per fork {} (meta + marker; {} with the first open's lease)",
                pct(&mut make, 0.5), pct(&mut make, 0.99), pct(&mut open, 0.5), pct(&mut open, 0.99),
                meta_marker / forks as u64, added / forks as u64
            );
        }
        // 2. Boot storm.
        write_base(&store, &root, "golden", 1 << 30, storm_mib).await?;
        for (label, n, shared) in [
            ("one fork alone", 1usize, true),
            ("storm, shared cache", storm, true),
            ("storm, no shared cache", storm, false),
        ] {
            let cache = SharedCache::new(256 << 20);
            let mut vols = Vec::new();
            let tag = label.replace([' ', ','], "");
            for k in 0..n {
                let name = format!("{tag}-{k}");
                Volume::fork(&store, "golden", "s1", &name, 0, None).await?;
                let mut c = cfg(&root, &name, 0);
                c.shared_cache = shared.then(|| cache.clone());
                vols.push(Volume::open(c, store.clone()).await?);
            }
            let before: Vec<u64> = vols.iter().map(|v| v.stats().store.gets).collect();
            let t = Instant::now();
            let tasks: Vec<_> = vols
                .iter()
                .map(|v| {
                    let v = v.clone();
                    smol::spawn(async move {
                        let mut buf = vec![0u8; 128 << 10];
                        for off in (0..storm_mib << 20).step_by(128 << 10) {
                            v.read(off, &mut buf).await?;
                        }
                        Ok::<_, glidefs::volume::VolumeError>(())
                    })
                })
                .collect();
            for t in tasks {
                t.await?;
            }
            let secs = t.elapsed().as_secs_f64();
            let gets: u64 = vols
                .iter()
                .zip(&before)
                .map(|(v, b)| v.stats().store.gets - b)
                .sum();
            let own_cache: u64 = (0..n)
                .map(|k| disk_bytes(&root.join("cache").join(format!("{tag}-{k}"))))
                .sum();
            println!(
                "{label}: {n} forks x {storm_mib} MiB: {secs:.2} s; store GETs {gets} ({:.2} per fork-MiB); shared cache {} MiB; forks' cache dirs {} MiB on disk",
                gets as f64 / (n as u64 * storm_mib) as f64,
                cache.stats().bytes >> 20,
                own_cache >> 20
            );
            for v in vols {
                v.close().await?;
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}
