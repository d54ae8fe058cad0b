//! Issue 17's cold-read cost on the engine, natively (no ublk, no emulation):
//! a volume of `DATA_MIB` random data is written, drained and closed, its cache
//! dropped, and then read back sequentially in `REQ_KIB` requests, plaintext and
//! encrypted in turn, `ROUNDS` rounds. The store is a local directory (its files in
//! the page cache: the cheapest store there is, so the AEAD's share is the largest
//! it can be); `GET_LATENCY_MS` > 0 makes every GET wait that long first (an S3
//! first byte). Prints one line per read and the median ratio; `SHOW_READS=1` adds,
//! per pass, the store GETs it made and every request's time in ms (where a reader
//! waits for the readahead shows there).
//!
//! `cargo run --release --example cold_read_bench`; traces in scripts/bench-results/.
mod support;

use glidefs::store::{CountedStore, LocalDirStore, ObjectStore, StoreTraffic};
use glidefs::volume::crypto::{MasterKey, MasterKeys};
use glidefs::volume::{Volume, VolumeConfig};
use std::sync::Arc;
use std::time::Instant;

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let show_reads = support::knob("SHOW_READS", 0) == 1;
    let (mib, req, rounds, latency) = (
        support::knob("DATA_MIB", 64),
        support::knob("REQ_KIB", 1024) << 10,
        support::knob("ROUNDS", 5),
        support::knob("GET_LATENCY_MS", 0),
    );
    let dir = tempfile::tempdir()?;
    let local: Arc<dyn ObjectStore> = Arc::new(LocalDirStore::open(dir.path().join("store"))?);
    let traffic = Arc::new(StoreTraffic::default());
    let store: Arc<dyn ObjectStore> = Arc::new(CountedStore::new(
        Arc::new(support::Latency {
            inner: local,
            ms: latency,
        }),
        traffic.clone(),
    ));
    let keys = Arc::new(MasterKeys {
        current: MasterKey::from_bytes(&[7; 32]),
        old: Vec::new(),
    });
    let size = mib << 20;
    let data = random(size as usize, 1);
    let cfg = |name: &str, enc: bool| {
        let mut c = VolumeConfig::new(name, size, dir.path().join("cache").join(name));
        c.encryption = enc.then(|| keys.clone());
        c
    };
    println!(
        "cold_read_bench: {mib} MiB, {} KiB requests, {rounds} rounds, GET latency {latency} ms, store {}",
        req >> 10,
        store.describe()
    );
    smol::block_on(async {
        for (name, enc) in [("plain", false), ("secret", true)] {
            let c = cfg(name, enc);
            let v = Volume::open(c.clone(), store.clone()).await?;
            v.write(0, &data, false).await?;
            v.drain().await?;
            v.close().await?;
            Volume::purge_cache(&c)?;
        }
        let (mut plain, mut secret) = (Vec::new(), Vec::new());
        let mut buf = vec![0u8; req as usize];
        for r in 1..=rounds {
            for (name, enc) in [("plain", false), ("secret", true)] {
                let c = cfg(name, enc);
                let v = Volume::open(c.clone(), store.clone()).await?;
                let gets = traffic.snapshot().gets;
                let mut waits = Vec::new();
                let t = Instant::now();
                let mut off = 0;
                while off < size {
                    let n = req.min(size - off) as usize;
                    let tr = Instant::now();
                    v.read(off, &mut buf[..n]).await?;
                    if show_reads {
                        waits.push(tr.elapsed().as_secs_f64() * 1e3);
                    }
                    if buf[..n] != data[off as usize..off as usize + n] {
                        return Err(format!("{name}: data differs at {off}").into());
                    }
                    off += n as u64;
                }
                let ms = t.elapsed().as_secs_f64() * 1e3;
                if show_reads {
                    let gets = traffic.snapshot().gets - gets;
                    let waits: Vec<String> = waits.iter().map(|ms| format!("{ms:.1}")).collect();
                    println!("  {name}: {gets} GETs; request ms: {}", waits.join(" "));
                }
                v.close().await?;
                Volume::purge_cache(&c)?;
                println!(
                    "round {r} {name:6} cold read {ms:8.1} ms  {:7.1} MiB/s",
                    mib as f64 / (ms / 1e3)
                );
                if enc { &mut secret } else { &mut plain }.push(ms);
            }
        }
        let (p, s) = (median(&mut plain), median(&mut secret));
        println!(
            "median cold read: plaintext {p:.1} ms, encrypted {s:.1} ms: encrypted runs at {:.2}x plaintext's speed",
            p / s
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
