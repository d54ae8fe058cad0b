//! Drives the real `glidefs` binary: --version, init, check-config, and `run` (no-device
//! mode, unix socket) with the export CLI, SIGTERM, restart and kill -9 → restart.
//! Polls with deadlines, never sleeps for a fixed time.
// Test code: a panic is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_glidefs");

fn glidefs(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn version_shows_sha_date_and_target() {
    let o = glidefs(&["--version"]);
    assert!(o.status.success());
    let out = text(&o.stdout);
    assert!(
        out.starts_with(&format!("glidefs {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    for field in ["git sha: ", "build date: ", "target: "] {
        let line = out
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in {out}"));
        assert!(line.len() > field.len() + 3, "{line}");
    }
}

#[test]
fn init_writes_once_and_check_config_validates() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("etc/glidefs.toml");
    let fs = f.to_str().unwrap();
    let o = glidefs(&["init", fs]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let written = std::fs::read_to_string(&f).unwrap();
    assert!(written.contains("[store]") && written.contains("max_exports"));
    std::fs::write(&f, "# mine\n").unwrap();
    let o = glidefs(&["init", fs]);
    assert!(!o.status.success(), "init overwrote");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "# mine\n");
    assert!(text(&o.stderr).contains("never overwrites"));
    let o = glidefs(&["init", "-"]);
    assert_eq!(text(&o.stdout), written);

    assert!(glidefs(&["check-config", fs]).status.success());
    std::fs::write(&f, "[cache]\ndirty_limit = \"huge\"\n").unwrap();
    let o = glidefs(&["check-config", fs]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("cache.dirty_limit"),
        "{}",
        text(&o.stderr)
    );
    let o = glidefs(&["check-config", "/nonexistent/glidefs.toml"]);
    assert!(!o.status.success());
}

#[test]
fn check_config_rejects_what_start_would_reject() {
    // One URL parser: a bucket name that the store would refuse at start (leading or
    // trailing '-') must already fail `check-config`.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("glidefs.toml");
    let fs = f.to_str().unwrap();
    for url in ["s3://-bkt-", "s3://-bkt", "s3://bkt-/p", "file:///a/b?x"] {
        std::fs::write(&f, format!("[store]\nurl = \"{url}\"\n")).unwrap();
        let o = glidefs(&["check-config", fs]);
        assert_eq!(o.status.code(), Some(1), "{url} passed check-config");
        assert!(text(&o.stderr).contains("store.url"), "{}", text(&o.stderr));
    }
}

#[test]
fn size_arguments_are_checked_by_the_cli() {
    let o = glidefs(&[
        "export",
        "--api",
        "unix:/nonexistent.sock",
        "create",
        "a",
        "--size",
        "10GB",
    ]);
    assert_eq!(o.status.code(), Some(2), "clap usage error");
    assert!(text(&o.stderr).contains("ambiguous"), "{}", text(&o.stderr));
    let o = glidefs(&["export", "--api", "unix:/nonexistent.sock", "list"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("cannot reach"),
        "{}",
        text(&o.stderr)
    );
}

struct Daemon {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
}

fn spawn(dir: &Path) -> Daemon {
    let cfg = dir.join("glidefs.toml");
    let sock = dir.join("api.sock");
    std::fs::write(
        &cfg,
        format!(
            "[cache]\ndir = \"{}\"\nflush_interval = \"100ms\"\n[api]\nlisten = \"{}\"\n[ublk]\nenabled = false\n",
            dir.join("cache").display(),
            sock.display()
        ),
    )
    .unwrap();
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let log = dir.join(format!("log-{n}.txt"));
    let child = Command::new(BIN)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon { child, sock, log };
    d.wait_ready();
    d
}

impl Daemon {
    fn cli(&self, args: &[&str]) -> Output {
        let mut a = vec!["export", "--api", self.sock.to_str().unwrap()];
        a.extend_from_slice(args);
        glidefs(&a)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = glidefs::api::Client::new(
                glidefs::api::Endpoint::Unix(self.sock.clone()),
                Some(Duration::from_secs(5)),
            );
            if let Ok(r) = c.request("GET", "/health/ready", None) {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: i32) {
        // kill(1) keeps `unsafe` (libc::kill) out of the tests.
        let st = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn wait_exit(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (
                    st.code(),
                    std::fs::read_to_string(&self.log).unwrap_or_default(),
                );
            }
            assert!(Instant::now() < deadline, "daemon did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn run_export_cli_sigterm_restart_and_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let d = spawn(dir.path());
    let o = d.cli(&["create", "vm-1", "--size", "8M"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["size_bytes"], 8 << 20);
    assert!(d
        .cli(&["create", "vm-2", "--size", "1.5M"])
        .status
        .success());
    assert!(
        d.cli(&["create", "vm-2", "--size", "3M"]).status.success(),
        "grow"
    );
    let o = d.cli(&["create", "vm-2", "--size", "1M"]);
    assert_eq!(o.status.code(), Some(3), "shrink is a 4xx");
    let o = d.cli(&["get", "nope"]);
    assert_eq!(o.status.code(), Some(2), "404 exit code");
    assert!(text(&o.stderr).contains("not found"));
    let o = d.cli(&["create", "../etc", "--size", "1M"]);
    assert_eq!(o.status.code(), Some(3));
    let o = d.cli(&["list"]);
    let list = text(&o.stdout);
    assert!(
        list.contains("vm-1") && list.contains("vm-2") && list.contains("3M"),
        "{list}"
    );
    assert!(d.cli(&["drain", "vm-1"]).status.success());
    // Snapshots: create, list, a name in use (exit 3), delete, unknown (exit 2).
    let o = d.cli(&["snapshot", "create", "vm-1", "golden"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("\"name\": \"golden\""));
    let o = d.cli(&["snapshot", "list", "vm-1"]);
    assert!(text(&o.stdout).contains("golden"), "{}", text(&o.stdout));
    let o = d.cli(&["snapshot", "create", "vm-1", "golden"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("golden"), "{}", text(&o.stderr));
    let o = d.cli(&["fork", "vm-3", "--from", "vm-1@golden"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("\"name\": \"vm-3\""),
        "{}",
        text(&o.stdout)
    );
    let o = d.cli(&["snapshot", "delete", "vm-1", "golden"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "a snapshot with a fork: {}",
        text(&o.stderr)
    );
    assert!(d.cli(&["delete", "vm-3", "--purge"]).status.success());
    // Image import writes through a block device: without one it fails and
    // leaves no export behind.
    let img = std::env::temp_dir().join(format!("glidefs-cli-img-{}", std::process::id()));
    std::fs::write(&img, vec![7u8; 10_000]).unwrap();
    let o = glidefs(&[
        "image",
        "--api",
        d.sock.to_str().unwrap(),
        "import",
        img.to_str().unwrap(),
        "golden",
    ]);
    std::fs::remove_file(&img).ok();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("without a block device"),
        "{}",
        text(&o.stderr)
    );
    assert!(!text(&d.cli(&["list"]).stdout).contains("golden"));
    let o = d.cli(&["fork", "vm-4", "--from", "vm-1@nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let o = d.cli(&["snapshot", "delete", "vm-1", "golden"]);
    assert!(text(&o.stdout).contains("deleted snapshot golden of vm-1"));
    let o = d.cli(&["snapshot", "delete", "vm-1", "golden"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let o = d.cli(&["get", "vm-2"]);
    assert!(
        text(&o.stdout).contains("\"size\": \"3M\""),
        "{}",
        text(&o.stdout)
    );

    // SIGTERM: clean exit 0.
    d.signal(15);
    let (code, log) = d.wait_exit();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.to_lowercase().contains("secret"), "{log}");

    // Restart: the same exports come back.
    let d = spawn(dir.path());
    let list = text(&d.cli(&["list"]).stdout);
    assert!(list.contains("vm-1") && list.contains("vm-2"), "{list}");
    assert!(d.cli(&["delete", "vm-1", "--purge"]).status.success());

    // kill -9, restart: what was acknowledged before is still there.
    d.signal(9);
    let (code, _) = d.wait_exit();
    assert_eq!(code, None, "killed by a signal");
    let d = spawn(dir.path());
    let list = text(&d.cli(&["list"]).stdout);
    assert!(list.contains("vm-2") && !list.contains("vm-1"), "{list}");
    d.signal(2);
    let (code, log) = d.wait_exit();
    assert_eq!(code, Some(0), "SIGINT exits 0: {log}");
}

#[test]
fn delete_force_needs_purge_and_explains_itself() {
    let o = glidefs(&[
        "export",
        "--api",
        "unix:/nonexistent.sock",
        "delete",
        "a",
        "--force",
    ]);
    assert_eq!(o.status.code(), Some(2), "clap usage error");
    assert!(text(&o.stderr).contains("--purge"), "{}", text(&o.stderr));
    let o = glidefs(&["export", "delete", "--help"]);
    let help = text(&o.stdout);
    assert!(
        help.contains("--force") && help.contains("another host holds"),
        "{help}"
    );
}

#[test]
fn a_second_daemon_on_the_same_cache_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = spawn(dir.path());
    let cfg = dir.path().join("glidefs.toml");
    let o = glidefs(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "second daemon started");
    let err = text(&o.stderr);
    let lock = dir.path().join("cache/lock");
    assert!(
        err.contains(&format!("pid {}", d.child.id())) && err.contains(&lock.display().to_string()),
        "{err}"
    );
    // The first daemon is unharmed and still serves.
    assert!(d.cli(&["list"]).status.success());
    d.signal(15);
    let (code, log) = d.wait_exit();
    assert_eq!(code, Some(0), "{log}");
    // Once it is gone, the cache dir is free again, with the same host id.
    let id = std::fs::read_to_string(dir.path().join("cache/host-id")).unwrap();
    let d = spawn(dir.path());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cache/host-id")).unwrap(),
        id
    );
    d.signal(9);
    d.wait_exit();
}

#[test]
fn run_without_ublk_fails_clearly() {
    if Path::new("/dev/ublk-control").exists() {
        eprintln!("skipped: this host has ublk");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("g.toml");
    std::fs::write(
        &cfg,
        format!(
            "[cache]\ndir = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("c").display()
        ),
    )
    .unwrap();
    let o = glidefs(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("ublk is not available") && err.contains("enabled = false"),
        "{err}"
    );
}

#[test]
fn run_rejects_a_bad_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("g.toml");
    std::fs::write(&cfg, "[limits]\nmax_exports = 0\n").unwrap();
    let o = glidefs(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("limits.max_exports"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn run_refuses_a_master_key_file_it_cannot_use_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, "c0ffee").unwrap();
    for (file, want) in [
        (dir.path().join("missing.key"), "missing.key"),
        (short.clone(), "64 hex digits"),
    ] {
        let cfg = dir.path().join("g.toml");
        std::fs::write(
            &cfg,
            format!(
                "[cache]\ndir = \"{}\"\n[ublk]\nenabled = false\n[api]\nlisten = \"{}\"\n[store.encryption]\nkey_file = \"{}\"\n",
                dir.path().join("cache").display(),
                dir.path().join("api.sock").display(),
                file.display()
            ),
        )
        .unwrap();
        let o = glidefs(&["run", "--config", cfg.to_str().unwrap()]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains(want) && err.contains("master key file"),
            "{err}"
        );
        assert!(
            !err.contains("c0ffee"),
            "the key's content is not printed: {err}"
        );
    }
}

/// `glidefs keys rewrap` finishes a rotation for the volumes no daemon serves (a
/// fork nobody opened yet) and skips one with a live lease; `--dry-run` writes
/// nothing; `check-config` reads the key files (or skips them when told).
#[test]
fn keys_rewrap_and_check_config_with_key_files() {
    use glidefs::store::{LocalDirStore, ObjectStore};
    use glidefs::volume::crypto::{MasterKey, MasterKeys};
    use glidefs::volume::{Volume, VolumeConfig};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalDirStore::open(&store_dir).unwrap());
    let (k1, k2) = (dir.path().join("k1"), dir.path().join("k2"));
    std::fs::write(&k1, [1u8; 32]).unwrap();
    std::fs::write(&k2, [2u8; 32]).unwrap();
    let old = MasterKeys {
        current: MasterKey::from_bytes(&[1; 32]),
        old: Vec::new(),
    };
    let (id1, id2) = (old.current.id.clone(), MasterKey::from_bytes(&[2; 32]).id);
    smol::block_on(async {
        let mut c = VolumeConfig::new("base", 1 << 20, dir.path().join("vols/base"));
        c.encryption = Some(Arc::new(old.clone()));
        let v = Volume::open(c, store.clone()).await.unwrap();
        v.write(0, &[7u8; 4096], false).await.unwrap();
        v.drain().await.unwrap();
        v.snapshot("s1").await.unwrap();
        v.close().await.unwrap();
        Volume::fork(&store, "base", "s1", "child", 0, Some(&old))
            .await
            .unwrap();
    });
    let key_id = |vol: &str| {
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(store_dir.join(format!("volumes/{vol}/meta"))).unwrap(),
        )
        .unwrap();
        m["keys"]["key_id"].as_str().unwrap_or("").to_owned()
    };
    let cfg = dir.path().join("g.toml");
    let write_cfg = |key: &Path| {
        std::fs::write(
            &cfg,
            format!(
                "[store]\nurl = \"file://{}\"\n[store.encryption]\nkey_file = \"{}\"\nold_key_files = [\"{}\"]\n[cache]\ndir = \"{}\"\n",
                store_dir.display(),
                key.display(),
                k1.display(),
                dir.path().join("cache").display(),
            ),
        )
        .unwrap();
    };
    write_cfg(&k2);
    let c = cfg.to_str().unwrap();

    let o = glidefs(&["keys", "rewrap", "--config", c, "--dry-run"]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}{}", text(&o.stderr));
    assert!(
        out.contains(&format!("child: would re-wrap (key {id1} -> {id2})")),
        "{out}"
    );
    assert!(out.contains("base: skipped, wrapped by key"), "{out}");
    assert_eq!(key_id("child"), id1, "a dry run wrote");

    let o = glidefs(&["keys", "rewrap", "--config", c]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "base is still held: {out}");
    assert!(
        out.contains(&format!("child: re-wrapped (key {id1} -> {id2})")),
        "{out}"
    );
    assert!(
        out.contains("1 re-wrapped, 0 to re-wrap, 0 current, 0 without a data key, 1 skipped"),
        "{out}"
    );
    assert_eq!(
        (key_id("child"), key_id("base")),
        (id2.clone(), id1.clone())
    );

    let o = glidefs(&["check-config", c]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    assert!(
        out.contains(&format!("master key {id2} and 1 old")),
        "{out}"
    );
    write_cfg(&dir.path().join("gone.key"));
    let o = glidefs(&["check-config", c]);
    let err = text(&o.stderr);
    assert!(!o.status.success() && err.contains("gone.key"), "{err}");
    let o = glidefs(&["check-config", "--skip-key-files", c]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("key files not read"));
}
