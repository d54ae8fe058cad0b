//! The `glidefs` binary: the daemon (`run`), config helpers (`init`, `check-config`)
//! and the export CLI, which talks to a running daemon's HTTP API.
//!
//! `run` lifecycle (docs/operations.md#lifecycle): load and validate the config →
//! open the store → start ublk (unless `[ublk] enabled = false`) → start the API
//! (`/health` 200, `/health/ready` 503) → recover every export → ready, sd_notify
//! `READY=1` → on SIGTERM/SIGINT: stop the API, stop the data plane (devices stay
//! for the next daemon, or are deleted with `--stop-devices`), close every volume
//! (journals fdatasync'ed) → exit 0.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use glidefs::api::{client::encode_segment, AllowedHosts, ApiServer, ApiState, Client, Endpoint};
use glidefs::config::{resolve_credentials, Config, DEFAULT_CONFIG};
use glidefs::daemon::{
    self, ublk_options, CacheDirLock, EngineVolumes, HostIdentity, UblkDevices, VolumeSettings,
};
use glidefs::metrics::Metrics;
use glidefs::router::{DeviceBackend, Router, RouterConfig};
use glidefs::size::ByteSize;
use glidefs::store::metered::MeteredStore;
use glidefs::store::{open_store, ObjectStore};
use glidefs::ublk::UblkServer;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const GIT_SHA: &str = env!("VERGEN_GIT_SHA");
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ngit sha: ",
    env!("VERGEN_GIT_SHA"),
    "\nbuild date: ",
    env!("VERGEN_BUILD_DATE"),
    "\ntarget: ",
    env!("VERGEN_CARGO_TARGET_TRIPLE"),
);

/// Block devices over ublk, with a local write-back cache and S3-compatible durable storage.
#[derive(Parser)]
#[command(name = "glidefs", version = VERSION, long_version = LONG_VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Config file (TOML). Without it, every default applies.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// On shutdown, delete the block devices instead of leaving them for the next daemon.
        #[arg(long)]
        stop_devices: bool,
    },
    /// Write a commented default config file (never overwrites). `-` prints it.
    Init {
        /// Where to write it.
        #[arg(default_value = "/etc/glidefs/glidefs.toml")]
        file: PathBuf,
    },
    /// Validate a config file (syntax, keys, values; the encryption key files it
    /// names, when they can be read here) and exit.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
        /// Do not read the key files of [store.encryption] (a build sandbox has none).
        #[arg(long)]
        skip_key_files: bool,
    },
    /// Master-key rotation (docs/operations.md, "Encryption").
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Dirty data a daemon set aside because another host wrote its volume
    /// (docs/operations.md, "Diverged data").
    Diverged {
        #[command(flatten)]
        api: ApiAddress,
        #[command(subcommand)]
        command: DivergedCommand,
    },
    /// Base images: import a raw disk image as a volume and a snapshot to fork.
    Image {
        #[command(flatten)]
        api: ApiAddress,
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Manage exports of a running daemon through its API.
    Export {
        #[command(flatten)]
        api: ApiAddress,
        /// Timeout of one request in seconds (0: none; drains wait without one by default).
        #[arg(long, global = true)]
        timeout: Option<u64>,
        #[command(subcommand)]
        command: ExportCommand,
    },
}

/// The running daemon's API, for the client subcommands.
#[derive(Args)]
struct ApiAddress {
    /// API address: http://host:port, unix:/path or a socket path.
    #[arg(
        long = "api",
        env = "GLIDEFS_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Re-wrap the data keys of every volume in the store under the current master
    /// key (`key_file`), unwrapping with it or an `old_key_files` key; no data is
    /// rewritten. Volumes a live daemon serves are skipped: it re-wraps them when it
    /// opens them with the new key. Exit 0 when no volume needs an old key any more
    /// (it may be retired), 1 otherwise.
    Rewrap {
        /// The daemon's config file: the store, its credentials and [store.encryption].
        #[arg(long, short)]
        config: PathBuf,
        /// Change nothing; say what would be re-wrapped.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum DivergedCommand {
    /// One line per set-aside directory: export, dirty bytes, when, path.
    List,
}

#[derive(Subcommand)]
enum ExportCommand {
    /// Create an export (or grow it, or wake it from the store).
    Create {
        /// Export name: 1-64 of a-z 0-9 . _ - starting with a letter or digit.
        name: String,
        /// Size: 10G, 512M, 1.5T or bytes (units are powers of 1024).
        #[arg(long)]
        size: ByteSize,
    },
    /// List exports.
    List,
    /// Show one export.
    Get {
        /// Export name.
        name: String,
    },
    /// Delete an export (its data stays in the store unless --purge).
    Delete {
        /// Export name.
        name: String,
        /// Also delete its objects in the store.
        #[arg(long)]
        purge: bool,
        /// With --purge: purge even though another host holds the volume's lease.
        /// Only for an operator who knows that host is gone (powered off, its cache
        /// lost): a host still serving the volume loses its data and is fenced.
        #[arg(long, requires = "purge")]
        force: bool,
    },
    /// Wait until everything written to the export is in the store.
    Drain {
        /// Export name.
        name: String,
    },
    /// Create an export as a copy-on-write fork of a snapshot: only metadata is
    /// written, the fork stores only what it writes, and reads the rest from the
    /// snapshot.
    Fork {
        /// The new export's name.
        name: String,
        /// The snapshot: VOLUME@SNAPSHOT (the volume need not be served here).
        #[arg(long)]
        from: String,
        /// Size (default: the snapshot's; larger grows the fork).
        #[arg(long)]
        size: Option<ByteSize>,
    },
    /// Snapshots: immutable images of an export, kept in the store.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import raw disk image FILE as a new export NAME, written through its block
    /// device (all-zero MiBs are skipped: the volume stays sparse), then snapshot
    /// it as NAME@SNAPSHOT: `glidefs export fork NEW --from NAME@SNAPSHOT` starts a
    /// disk from it. Needs a daemon with block devices.
    Import {
        /// The raw image (any size; rounded up to 4 KiB).
        file: PathBuf,
        /// Name of the new export.
        name: String,
        /// Name of the snapshot taken after the import.
        #[arg(long, default_value = "base")]
        snapshot: String,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Take a snapshot of everything written to the export so far (waits until it
    /// is in the store). Freeze the filesystem first for an application-consistent
    /// image: writes made meanwhile may or may not be in it.
    Create {
        /// Export name.
        export: String,
        /// Snapshot name: 1-64 of a-z 0-9 . _ - starting with a letter or digit.
        name: String,
    },
    /// List an export's snapshots: name, size, segment seq, when taken.
    List {
        /// Export name.
        export: String,
    },
    /// Delete a snapshot (what only it kept is deleted by garbage collection later).
    Delete {
        /// Export name.
        export: String,
        /// Snapshot name.
        name: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run {
            config,
            stop_devices,
        } => exit_code(run(config.as_deref(), stop_devices)),
        Command::Init { file } => exit_code(init(&file)),
        Command::CheckConfig {
            file,
            skip_key_files,
        } => exit_code(check_config(&file, skip_key_files)),
        Command::Keys {
            command: KeysCommand::Rewrap { config, dry_run },
        } => match keys_rewrap(&config, dry_run) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("glidefs: {e:#}");
                1
            }
        },
        Command::Diverged {
            api,
            command: DivergedCommand::List,
        } => match diverged_list(&api.url) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("glidefs: {e:#}");
                1
            }
        },
        Command::Image {
            api,
            command:
                ImageCommand::Import {
                    file,
                    name,
                    snapshot,
                },
        } => match image_import(&api.url, &file, &name, &snapshot) {
            Ok(msg) => {
                println!("{msg}");
                0
            }
            Err(e) => {
                eprintln!("glidefs: {e:#}");
                1
            }
        },
        Command::Export {
            api,
            timeout,
            command,
        } => match export(&api.url, timeout, command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("glidefs: {e:#}");
                1
            }
        },
    };
    std::process::exit(code);
}

fn exit_code(r: Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("glidefs: {e:#}");
            tracing::error!("exiting: {e:#}");
            1
        }
    }
}

fn init(file: &Path) -> Result<()> {
    if file == Path::new("-") {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .with_context(|| {
            format!(
                "{} (init never overwrites an existing file)",
                file.display()
            )
        })?;
    f.write_all(DEFAULT_CONFIG.as_bytes())?;
    f.sync_all()?;
    println!("wrote {}", file.display());
    Ok(())
}

fn check_config(file: &Path, skip_key_files: bool) -> Result<()> {
    let cfg = Config::load(file)?;
    let keys = match &cfg.store.encryption {
        None => "encryption off".to_owned(),
        Some(_) if skip_key_files => "encryption on, key files not read".to_owned(),
        Some(e) => {
            let env = |k: &str| std::env::var(k).ok();
            if !e.key_files_resolvable(&env) {
                "encryption on, key files not read (relative: read from $CREDENTIALS_DIRECTORY when the service runs)".to_owned()
            } else {
                let m = e.load(&env)?;
                format!(
                    "encryption on, master key {} and {} old",
                    m.current.id,
                    m.old.len()
                )
            }
        }
    };
    println!(
        "{}: ok (store {}, cache {}, api {}, {keys})",
        file.display(),
        redact_url(&cfg.store_url()),
        cfg.cache.dir.display(),
        cfg.api.listen
    );
    Ok(())
}

/// The object store the config names (a `file://` store's directory created), its
/// credentials resolved from the config and the environment.
fn configured_store(cfg: &Config) -> Result<Arc<dyn ObjectStore>> {
    let creds = resolve_credentials(&cfg.store, &|k| std::env::var(k).ok())?;
    let store_url = cfg.store_url();
    if let Some(p) = store_url.strip_prefix("file://") {
        std::fs::create_dir_all(p).with_context(|| format!("creating local store {p}"))?;
    }
    let opts = daemon::store_options(cfg, creds.as_ref());
    open_store(&store_url, &opts).context("opening the object store")
}

fn keys_rewrap(config: &Path, dry_run: bool) -> Result<i32> {
    let cfg = Config::load(config)?;
    let Some(enc) = &cfg.store.encryption else {
        bail!(
            "{}: [store.encryption] is not set: no master key to re-wrap with",
            config.display()
        );
    };
    let masters = enc.load(&|k| std::env::var(k).ok())?;
    let store = configured_store(&cfg)?;
    let to = masters.current.id.clone();
    let summary = smol::block_on(daemon::key_rotation::rewrap_store(
        &store,
        &masters,
        cfg.cache.lease_ttl,
        dry_run,
        |name, r| println!("{}", daemon::key_rotation::describe(name, r, &to)),
    ))?;
    let s = &summary;
    println!(
        "{} re-wrapped, {} to re-wrap, {} current, {} without a data key, {} skipped (served), {} failed",
        s.rewrapped, s.stale, s.current, s.no_key, s.held, s.failed
    );
    if summary.complete() {
        println!("no volume needs an old master key: old_key_files may be retired");
        Ok(0)
    } else {
        Ok(1)
    }
}

/// Store URLs carry no secrets by construction (validated), but never print a
/// query string or user-info anyway.
fn redact_url(u: &str) -> String {
    let cut = u.find(['?', '#']).unwrap_or(u.len());
    let u = &u[..cut];
    match u.split_once('@') {
        Some((scheme_user, rest)) => {
            let scheme = scheme_user.split("://").next().unwrap_or("");
            format!("{scheme}://<redacted>@{rest}")
        }
        None => u.to_string(),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // libublk logs each control handle it opens at info (GET_FEATURES shows up as
        // "device 4294967295 ... created"); its warnings are what an operator needs.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libublk=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

fn run(config: Option<&Path>, stop_devices: bool) -> Result<()> {
    init_tracing();
    let cfg = match config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let listen = cfg.listen()?;
    tracing::info!(version = VERSION, git_sha = GIT_SHA, config = ?config, "glidefs starting");
    // Before anything touches the cache dir: one daemon per cache dir, for our lifetime.
    let _cache_lock = CacheDirLock::acquire(&cfg.cache.dir)?;
    let host = HostIdentity::load_or_create(&cfg.cache.dir)?;
    tracing::info!(host_id = %host.id, hostname = %host.label, "host identity");

    // Signals first, so a SIGTERM during recovery is honoured once it finishes.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;

    let metrics = Metrics::new(cfg.api.per_export_metrics, VERSION, GIT_SHA).context("metrics")?;
    metrics.set_dirty_limit(cfg.cache.dirty_limit.0);
    glidefs::stage_timers::enable(cfg.api.stage_timers);
    let raw_store = configured_store(&cfg)?;
    tracing::info!(store = %raw_store.describe(), "object store opened");
    let store: Arc<dyn ObjectStore> = Arc::new(MeteredStore::new(raw_store, metrics.store()));

    let devices: Option<Arc<dyn DeviceBackend>> = if cfg.ublk.enabled {
        if !UblkServer::available() {
            bail!("ublk is not available (/dev/ublk-control missing): `modprobe ublk_drv`, or set [ublk] enabled = false to serve exports without block devices");
        }
        Some(Arc::new(
            UblkDevices::start(ublk_options(&cfg, &host)).context("starting the ublk server")?,
        ))
    } else {
        tracing::warn!("[ublk] enabled = false: exports get volumes but no block device");
        None
    };

    let settings = VolumeSettings::from_config(&cfg, &host).context("[store.encryption]")?;
    match &settings.encryption {
        Some(m) => {
            tracing::info!(master_key_id = %m.current.id, old_keys = m.old.len(), "client-side encryption on: new volumes are encrypted")
        }
        None => tracing::info!(
            "client-side encryption off ([store.encryption] not set): new volumes are plaintext"
        ),
    }
    let volumes = Arc::new(EngineVolumes::new(store, settings));
    let router = Router::new(
        RouterConfig {
            cache_dir: cfg.cache.dir.clone(),
            max_exports: cfg.limits.max_exports as usize,
            open_concurrency: cfg.limits.open_concurrency as usize,
            reopen_backoff: glidefs::rules::REOPEN_BACKOFF,
        },
        volumes,
        devices,
        metrics.clone(),
    )?;
    let api = ApiServer::start_with_hosts(
        &listen,
        AllowedHosts::new(&cfg.api.allowed_hosts, &listen),
        Arc::new(ApiState {
            router: router.clone(),
            metrics,
        }),
    )?;
    if !is_loopback(&listen) {
        tracing::warn!(listen = %listen, "API listens beyond loopback; it has no authentication");
    }
    tracing::info!(listen = %api.addr(), "api listening");

    let summary = router.recover()?;
    tracing::info!(
        recovered = summary.recovered,
        failed = summary.failed,
        "recovery done; ready"
    );
    if cfg.ublk.enabled {
        // A private mount namespace copied while a filesystem on one of our devices
        // was mounted must not keep that mount (it could hang our exit for good).
        glidefs::ublk::mounts::detach_ublk_mounts_bounded("after recovery", MOUNT_DETACH_WAIT);
    }
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }

    let sig = signals.forever().next();
    tracing::info!(signal = ?sig, stop_devices, "stopping");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    api.stop();
    if cfg.ublk.enabled {
        // While the workers still answer I/O (see glidefs::ublk::mounts).
        glidefs::ublk::mounts::detach_ublk_mounts_bounded("at shutdown", MOUNT_DETACH_WAIT);
    }
    router.shutdown(stop_devices);
    tracing::info!("stopped");
    Ok(())
}

/// How long start-up and shutdown wait for ublk mounts to be detached (a detach that
/// drops a filesystem's last reference syncs it first).
const MOUNT_DETACH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn is_loopback(l: &glidefs::config::Listen) -> bool {
    match l {
        glidefs::config::Listen::Tcp(a) => a.ip().is_loopback(),
        glidefs::config::Listen::Unix(_) => true,
    }
}

/// `glidefs image import`: create NAME, copy FILE onto its device (skipping
/// all-zero MiBs), make it durable, snapshot it. A failure after the export was
/// created deletes it again (with its objects).
fn image_import(api: &str, file: &Path, name: &str, snap: &str) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let client = Client::new(Endpoint::parse(api)?, None);
    let path = format!("/api/exports/{}", encode_segment(name));
    let mut src =
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let len = src.metadata()?.len();
    let size = len.div_ceil(glidefs::rules::SIZE_ALIGN).max(1) * glidefs::rules::SIZE_ALIGN;
    let ask = |method: &str, p: &str, body: Option<&str>| -> Result<serde_json::Value> {
        let r = client.request(method, p, body)?;
        if r.status >= 400 {
            bail!("{} {p}: {} (HTTP {})", method, r.error_message(), r.status);
        }
        serde_json::from_str(&r.body).context("response is not JSON")
    };
    if client.request("GET", &path, None)?.status != 404 {
        bail!("export {name:?} exists; image import makes a new one");
    }
    let created = ask("PUT", &path, Some(&format!("{{\"size_bytes\": {size}}}")))?;
    let mut copy = || -> Result<u64> {
        let dev = created["device"].as_str().ok_or_else(|| {
            anyhow::anyhow!("the daemon serves {name:?} without a block device ([ublk] enabled = false): image import writes through the device")
        })?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .open(dev)
            .with_context(|| format!("opening {dev}"))?;
        let mut buf = vec![0u8; 1 << 20];
        let (mut off, mut written) = (0u64, 0u64);
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|&b| b != 0) {
                out.seek(SeekFrom::Start(off))?;
                out.write_all(&buf[..n])?;
                written += n as u64;
            }
            off += n as u64;
        }
        out.sync_all().with_context(|| format!("syncing {dev}"))?;
        Ok(written)
    };
    let written = match copy().and_then(|w| {
        ask(
            "POST",
            &format!("{path}/snapshots"),
            Some(&serde_json::json!({ "name": snap }).to_string()),
        )
        .map(|_| w)
    }) {
        Ok(w) => w,
        Err(e) => {
            let _ = client.request("DELETE", &format!("{path}?purge=true"), None);
            return Err(e.context(format!(
                "importing {} into {name:?} (export deleted again)",
                file.display()
            )));
        }
    };
    Ok(format!(
        "imported {} ({len} bytes, {written} not zero) into {name}; snapshot {name}@{snap}; start a disk from it: glidefs export fork NEW --from {name}@{snap}",
        file.display()
    ))
}

fn diverged_list(api: &str) -> Result<i32> {
    let client = Client::new(Endpoint::parse(api)?, Some(Duration::from_secs(60)));
    let resp = client.request("GET", "/api/diverged", None)?;
    if resp.status >= 400 {
        eprintln!("glidefs: {} (HTTP {})", resp.error_message(), resp.status);
        return Ok(4);
    }
    let v: serde_json::Value = serde_json::from_str(&resp.body).context("response is not JSON")?;
    let list = v["diverged"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no diverged data");
    }
    for e in list {
        println!(
            "{}\t{} dirty bytes\t{} ms\t{}\t{}",
            e["name"].as_str().unwrap_or("?"),
            e["dirty_bytes"],
            e["created_ms"],
            e["reason"].as_str().unwrap_or("?"),
            e["path"].as_str().unwrap_or("?")
        );
    }
    Ok(0)
}

fn export(api: &str, timeout: Option<u64>, cmd: ExportCommand) -> Result<i32> {
    let endpoint = Endpoint::parse(api)?;
    let is_drain = matches!(
        cmd,
        ExportCommand::Drain { .. }
            | ExportCommand::Delete { .. }
            | ExportCommand::Snapshot(SnapshotCommand::Create { .. })
    );
    let timeout = match timeout {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        None if is_drain => None,
        None => Some(Duration::from_secs(300)),
    };
    let client = Client::new(endpoint, timeout);
    let path = |n: &str| format!("/api/exports/{}", encode_segment(n));
    let resp = match &cmd {
        ExportCommand::Create { name, size } => {
            let body = serde_json::json!({ "size_bytes": size.0 }).to_string();
            client.request("PUT", &path(name), Some(&body))?
        }
        ExportCommand::Fork { name, from, size } => {
            let mut body = serde_json::json!({ "from": from });
            if let Some(s) = size {
                body["size_bytes"] = s.0.into();
            }
            client.request("PUT", &path(name), Some(&body.to_string()))?
        }
        ExportCommand::List => client.request("GET", "/api/exports", None)?,
        ExportCommand::Get { name } => client.request("GET", &path(name), None)?,
        ExportCommand::Delete { name, purge, force } => {
            let q = match (*purge, *force) {
                (true, true) => "?purge=true&force=true",
                (true, false) => "?purge=true",
                _ => "",
            };
            client.request("DELETE", &format!("{}{q}", path(name)), None)?
        }
        ExportCommand::Drain { name } => {
            client.request("POST", &format!("{}/drain", path(name)), None)?
        }
        ExportCommand::Snapshot(SnapshotCommand::Create { export, name }) => {
            let body = serde_json::json!({ "name": name }).to_string();
            client.request("POST", &format!("{}/snapshots", path(export)), Some(&body))?
        }
        ExportCommand::Snapshot(SnapshotCommand::List { export }) => {
            client.request("GET", &format!("{}/snapshots", path(export)), None)?
        }
        ExportCommand::Snapshot(SnapshotCommand::Delete { export, name }) => client.request(
            "DELETE",
            &format!("{}/snapshots/{}", path(export), encode_segment(name)),
            None,
        )?,
    };
    if resp.status >= 400 {
        eprintln!("glidefs: {} (HTTP {})", resp.error_message(), resp.status);
        return Ok(match resp.status {
            404 => 2,
            400..=499 => 3,
            _ => 4,
        });
    }
    let v: serde_json::Value = serde_json::from_str(&resp.body).context("response is not JSON")?;
    let mut out = String::new();
    match cmd {
        ExportCommand::List => {
            out += &format!(
                "{:<32} {:>10} {:<16} {}\n",
                "NAME", "SIZE", "DEVICE", "STATE"
            );
            for e in v["exports"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                out += &format!(
                    "{:<32} {:>10} {:<16} {}\n",
                    e["name"].as_str().unwrap_or(""),
                    e["size"].as_str().unwrap_or(""),
                    e["device"].as_str().unwrap_or("-"),
                    e["state"].as_str().unwrap_or("")
                );
            }
        }
        ExportCommand::Snapshot(SnapshotCommand::List { .. }) => {
            out += &format!(
                "{:<32} {:>14} {:>10} {}\n",
                "NAME", "SIZE_BYTES", "SEQ", "TAKEN"
            );
            for e in v.as_array().map(Vec::as_slice).unwrap_or(&[]) {
                let taken = e["created_ms"]
                    .as_u64()
                    .map(|ms| {
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + Duration::from_millis(ms),
                        )
                        .to_string()
                    })
                    .unwrap_or_default();
                out += &format!(
                    "{:<32} {:>14} {:>10} {}\n",
                    e["name"].as_str().unwrap_or(""),
                    e["size_bytes"].as_u64().unwrap_or(0),
                    e["seq"].as_u64().unwrap_or(0),
                    taken
                );
            }
        }
        ExportCommand::Snapshot(SnapshotCommand::Delete { export, name }) => {
            out = format!("deleted snapshot {name} of {export}\n");
        }
        ExportCommand::Delete { name, purge, .. } => {
            out = format!(
                "deleted {name}{}\n",
                if purge { " (objects purged)" } else { "" }
            );
        }
        _ => out = serde_json::to_string_pretty(&v)? + "\n",
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    match std::io::stdout().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(redact_url("s3://b/p"), "s3://b/p");
        assert_eq!(redact_url("s3://AK:SK@b/p?x=1"), "s3://<redacted>@b/p");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let c = Cli::try_parse_from(["glidefs", "export", "create", "a", "--size", "10G"]).unwrap();
        match c.command {
            Command::Export {
                command: ExportCommand::Create { size, .. },
                ..
            } => assert_eq!(size.0, 10 << 30),
            _ => panic!("wrong command"),
        }
        assert!(
            Cli::try_parse_from(["glidefs", "export", "create", "a", "--size", "10GB"]).is_err()
        );
    }
}
