//! Every bad config value and unknown key is rejected, and the error names the key.
// Test code: a panic is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use glidefs::config::{Config, ConfigError};

fn err(toml: &str) -> String {
    match Config::from_toml(toml) {
        Ok(c) => panic!("accepted:\n{toml}\n=> {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_values_name_their_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("store", "url = \"ftp://x\"", "store.url"),
        ("store", "url = \"file://relative\"", "store.url"),
        ("store", "url = \"s3://UPPER/x\"", "store.url"),
        ("store", "url = \"s3://-bkt-\"", "store.url"),
        ("store", "url = 7", "store.url"),
        ("store", "endpoint = \"ftp://x\"", "store.endpoint"),
        (
            "store",
            "endpoint = \"http://user:pw@host\"",
            "store.endpoint",
        ),
        ("store", "region = \"\"", "store.region"),
        ("store", "region = \"us east\"", "store.region"),
        ("store", "path_style = \"yes\"", "store.path_style"),
        ("store", "credentials_file = 5", "store.credentials_file"),
        ("store", "timeout = \"forever\"", "store.timeout"),
        ("store", "timeout = \"0s\"", "store.timeout"),
        ("store", "timeout = -3", "store.timeout"),
        ("store", "retries = -1", "store.retries"),
        ("store", "retries = 1000", "store.retries"),
        ("cache", "dir = \"relative/dir\"", "cache.dir"),
        ("cache", "dir = 1", "cache.dir"),
        ("cache", "dirty_limit = \"lots\"", "cache.dirty_limit"),
        ("cache", "dirty_limit = \"10GB\"", "cache.dirty_limit"),
        ("cache", "dirty_limit = \"4K\"", "cache.dirty_limit"),
        ("cache", "dirty_limit = -1", "cache.dirty_limit"),
        ("cache", "dirty_limit = 1.5", "cache.dirty_limit"),
        ("cache", "flush_interval = \"soon\"", "cache.flush_interval"),
        ("cache", "flush_interval = \"0s\"", "cache.flush_interval"),
        ("cache", "flush_mode = \"sometimes\"", "cache.flush_mode"),
        ("cache", "compress = 1", "cache.compress"),
        ("api", "listen = \"localhost\"", "api.listen"),
        ("api", "listen = \"unix:relative.sock\"", "api.listen"),
        ("api", "listen = \"127.0.0.1\"", "api.listen"),
        ("api", "allowed_hosts = [\"http://x\"]", "api.allowed_hosts"),
        ("api", "allowed_hosts = \"localhost\"", "api.allowed_hosts"),
        (
            "api",
            "per_export_metrics = \"no\"",
            "api.per_export_metrics",
        ),
        ("ublk", "enabled = \"true\"", "ublk.enabled"),
        ("ublk", "workers = 5000", "ublk.workers"),
        ("ublk", "workers = -1", "ublk.workers"),
        ("ublk", "queues = 0", "ublk.queues"),
        ("ublk", "queues = 1000", "ublk.queues"),
        ("ublk", "queue_depth = 0", "ublk.queue_depth"),
        ("ublk", "queue_depth = 5000", "ublk.queue_depth"),
        ("ublk", "pool_slots = 0", "ublk.pool_slots"),
        ("ublk", "bounce_mode = 3", "ublk.bounce_mode"),
        ("limits", "max_exports = 0", "limits.max_exports"),
        ("limits", "max_exports = 2000000", "limits.max_exports"),
        ("limits", "max_exports = \"many\"", "limits.max_exports"),
        ("limits", "open_concurrency = 0", "limits.open_concurrency"),
    ];
    for (section, line, key) in cases {
        let toml = format!("[{section}]\n{line}\n");
        let msg = err(&toml);
        assert!(
            msg.contains(&format!("`{key}`")),
            "{toml:?}: error does not name `{key}`: {msg}"
        );
    }
}

#[test]
fn unknown_keys_are_named() {
    for (toml, key) in [
        ("[store]\nurll = \"s3://b\"\n", "urll"),
        ("[cache]\ndirty = \"1G\"\n", "dirty"),
        ("[api]\nport = 80\n", "port"),
        ("[ublk]\nthreads = 2\n", "threads"),
        ("[limits]\nmax = 1\n", "max"),
        ("[bogus]\nx = 1\n", "bogus"),
        ("loglevel = \"debug\"\n", "loglevel"),
        ("[store]\naccess_key = \"AKIA\"\n", "access_key"),
    ] {
        let msg = err(toml);
        assert!(msg.contains(&format!("`{key}`")), "{toml:?}: {msg}");
        assert!(msg.contains("unknown field"), "{toml:?}: {msg}");
    }
}

#[test]
fn syntax_errors_are_reported() {
    let msg = err("[store\nurl = 1\n");
    assert!(!msg.is_empty());
    assert!(matches!(
        Config::from_toml("x ="),
        Err(ConfigError::Parse { .. })
    ));
}

#[test]
fn good_values_are_accepted() {
    let cfg = Config::from_toml(
        r#"
[store]
url = "s3://my-bucket/glidefs/host-a"
endpoint = "http://127.0.0.1:9000"
region = "eu-west-1"
path_style = true
credentials_file = "s3"
timeout = "10s"
retries = 5
[cache]
dir = "/srv/glidefs"
dirty_limit = "1.5G"
flush_interval = "250ms"
flush_mode = "store"
compress = false
[api]
listen = "unix:/run/glidefs/api.sock"
per_export_metrics = false
[ublk]
enabled = false
workers = 4
queues = 2
queue_depth = 256
pool_slots = 64
bounce_mode = true
[limits]
max_exports = 100
open_concurrency = 8
"#,
    )
    .unwrap();
    assert_eq!(cfg.cache.dirty_limit.0, 3 << 29);
    assert_eq!(
        cfg.cache.flush_interval,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(cfg.store_url(), "s3://my-bucket/glidefs/host-a");
    assert_eq!(cfg.limits.max_exports, 100);
}
