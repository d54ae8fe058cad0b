//! Serve N in-memory ublk devices until SIGTERM/SIGINT.
//!
//! ```text
//! ublk_mem [--devices N] [--size-mib M] [--null] [--queues Q] [--depth D]
//!          [--workers K] [--recover ID,ID,...] [--keep]
//! ```
//! - `--null`: targets drop writes and read zeros (like null_blk).
//! - `--recover 0,1`: re-attach devices 0 and 1 left QUIESCED by a killed instance
//!   (their data is lost with the old process; this proves the re-attach only),
//!   instead of adding new ones.
//! - `--keep`: on SIGTERM/SIGINT leave the devices QUIESCED-able instead of deleting.
//!
//! Prints one line per device: `DEVICE <id> <block path>`, then `READY`.
//! `GLIDEFS_BOUNCE_MODE=1` selects the bounce data path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use glidefs::ublk::{IoTarget, MemTarget, UblkOptions, UblkServer};

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let devices: usize = arg_value(&args, "--devices").map_or(Ok(1), |v| v.parse())?;
    let size_mib: u64 = arg_value(&args, "--size-mib").map_or(Ok(256), |v| v.parse())?;
    let null = args.iter().any(|a| a == "--null");
    let keep = args.iter().any(|a| a == "--keep");
    let mut opts = UblkOptions::default();
    if let Some(v) = arg_value(&args, "--queues") {
        opts.queues = v.parse()?;
    }
    if let Some(v) = arg_value(&args, "--depth") {
        opts.queue_depth = v.parse()?;
    }
    if let Some(v) = arg_value(&args, "--workers") {
        opts.workers = v.parse()?;
    }
    let make = |_: u32| -> Arc<dyn IoTarget> {
        let size = size_mib << 20;
        if null {
            Arc::new(MemTarget::null(size))
        } else {
            Arc::new(MemTarget::new(size))
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;

    let server = UblkServer::start(opts)?;
    eprintln!("user_copy={}", server.user_copy());
    if let Some(list) = arg_value(&args, "--recover") {
        let ids: Vec<u32> = list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?;
        let t0 = std::time::Instant::now();
        let known = ids.iter().map(|id| (*id, make(*id))).collect();
        for (id, r) in server.recover_devices(known) {
            match r {
                Ok(info) => println!("DEVICE {id} {}", info.block_path),
                Err(e) => anyhow::bail!("recovering device {id}: {e}"),
            }
        }
        println!("RECOVERED in {} ms", t0.elapsed().as_millis());
    } else {
        for _ in 0..devices {
            let info = server.add_device(None, make(0))?;
            println!("DEVICE {} {}", info.dev_id, info.block_path);
        }
    }
    println!("READY");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let s = server.pool_stats();
    eprintln!(
        "pool: acquires={} backpressure_waits={} workers_initialized={}",
        s.acquires, s.backpressure_waits, s.workers_initialized
    );
    server.shutdown(!keep);
    println!("STOPPED");
    Ok(())
}
