//! The HTTP API on 127.0.0.1:0 (and a unix socket), in no-device mode, with the real
//! volume engine on a `file://` store in a temp dir. Every bad input gets the right
//! status and a JSON error, and changes nothing.
// Test code: a panic is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use glidefs::api::{ApiServer, ApiState, Client, Endpoint};
use glidefs::config::{Config, Listen};
use glidefs::daemon::{EngineVolumes, HostIdentity, VolumeSettings};
use glidefs::metrics::Metrics;
use glidefs::router::{Router, RouterConfig};
use glidefs::store::metered::MeteredStore;
use glidefs::store::{open_store, ObjectStore, StoreOptions};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

struct Daemon {
    dir: tempfile::TempDir,
    router: Arc<Router>,
    server: Option<ApiServer>,
    client: Client,
    store: Arc<dyn ObjectStore>,
}

fn start_with(max_exports: u32, listen: Option<Listen>, recover: bool) -> Daemon {
    start_in(tempfile::tempdir().unwrap(), max_exports, listen, recover)
}

/// A daemon on `dir`'s cache dir and store (a restart when `dir` was used before).
fn start_in(
    dir: tempfile::TempDir,
    max_exports: u32,
    listen: Option<Listen>,
    recover: bool,
) -> Daemon {
    let mut cfg = Config::default();
    cfg.cache.dir = dir.path().join("cache");
    cfg.cache.flush_interval = Duration::from_millis(50);
    cfg.limits.max_exports = max_exports;
    // A `master.key` in the test dir turns client-side encryption on.
    let key_file = dir.path().join("master.key");
    if key_file.exists() {
        cfg.store.encryption = Some(glidefs::config::EncryptionConfig {
            key_file,
            old_key_files: Vec::new(),
        });
    }
    let metrics = Metrics::new(true, "test", "abc").unwrap();
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let raw = open_store(
        &format!("file://{}", store_dir.display()),
        &StoreOptions::default(),
    )
    .unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(MeteredStore::new(raw.clone(), metrics.store()));
    let vols = Arc::new(EngineVolumes::new(
        store,
        VolumeSettings::from_config(&cfg, &HostIdentity::load_or_create(&cfg.cache.dir).unwrap())
            .unwrap(),
    ));
    let router = Router::new(
        RouterConfig {
            cache_dir: cfg.cache.dir.clone(),
            max_exports: max_exports as usize,
            open_concurrency: 4,
            reopen_backoff: glidefs::rules::REOPEN_BACKOFF,
        },
        vols,
        None,
        metrics.clone(),
    )
    .unwrap();
    let listen = listen.unwrap_or(Listen::Tcp("127.0.0.1:0".parse().unwrap()));
    let server = ApiServer::start(
        &listen,
        Arc::new(ApiState {
            router: router.clone(),
            metrics,
        }),
    )
    .unwrap();
    let client = Client::new(
        Endpoint::parse(server.addr()).unwrap(),
        Some(Duration::from_secs(60)),
    );
    if recover {
        router.recover().unwrap();
    }
    Daemon {
        dir,
        router,
        server: Some(server),
        client,
        store: raw,
    }
}

fn start(max_exports: u32) -> Daemon {
    start_with(max_exports, None, true)
}

impl Daemon {
    fn req(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let r = self.client.request(method, path, body).unwrap();
        let v = serde_json::from_str(&r.body).unwrap_or(Value::String(r.body.clone()));
        (r.status, v)
    }

    fn put(&self, name: &str, body: &str) -> (u16, Value) {
        self.req("PUT", &format!("/api/exports/{name}"), Some(body))
    }

    fn assert_error(&self, (status, v): (u16, Value), want: u16, ctx: &str) {
        assert_eq!(status, want, "{ctx}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{ctx}: no JSON error: {v}"
        );
    }

    fn exports(&self) -> Vec<Value> {
        let (s, v) = self.req("GET", "/api/exports", None);
        assert_eq!(s, 200);
        v["exports"].as_array().unwrap().clone()
    }

    fn store_keys(&self) -> Vec<String> {
        smol::block_on(self.store.list(""))
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect()
    }
}

#[test]
fn health_and_readiness() {
    let d = start_with(10, None, false);
    assert_eq!(d.req("GET", "/health", None).0, 200);
    d.assert_error(d.req("GET", "/health/ready", None), 503, "before recovery");
    d.assert_error(
        d.put("a", r#"{"size":"1M"}"#),
        503,
        "create before recovery",
    );
    d.router.recover().unwrap();
    assert_eq!(
        d.req("GET", "/health/ready", None),
        (200, serde_json::json!({"status": "ready"}))
    );
}

#[test]
fn bad_names_are_400_and_change_nothing() {
    let d = start(10);
    let long = "a".repeat(65);
    for name in [
        "../x",
        "..%2fx",
        "%2e%2e",
        "VM1",
        "Upper",
        "%C3%A9t%C3%A9",
        "a%20b",
        "-a",
        ".a",
        "a%00",
        long.as_str(),
    ] {
        d.assert_error(d.put(name, r#"{"size":"1M"}"#), 400, name);
        d.assert_error(
            d.req("GET", &format!("/api/exports/{name}"), None),
            400,
            name,
        );
        d.assert_error(
            d.req("DELETE", &format!("/api/exports/{name}"), None),
            400,
            name,
        );
        d.assert_error(
            d.req("POST", &format!("/api/exports/{name}/drain"), None),
            400,
            name,
        );
    }
    // Empty name.
    d.assert_error(
        d.req("PUT", "/api/exports/", Some(r#"{"size":"1M"}"#)),
        400,
        "empty",
    );
    d.assert_error(d.req("DELETE", "/api/exports/", None), 400, "empty");
    // 64 chars is fine.
    assert_eq!(d.put(&"a".repeat(64), r#"{"size":"1M"}"#).0, 201);
    assert_eq!(d.exports().len(), 1);
}

#[test]
fn bad_sizes_and_bodies_are_400_and_change_nothing() {
    let d = start(10);
    for body in [
        r#"{"size_bytes": 0}"#,
        r#"{"size": "0"}"#,
        r#"{"size_bytes": 4097}"#,
        r#"{"size": "4097"}"#,
        r#"{"size_bytes": 1152921504606846976}"#,
        r#"{"size": "1048576T"}"#,
        r#"{"size": "1E"}"#,
        r#"{"size_bytes": -1}"#,
        r#"{"size": "-1G"}"#,
        r#"{"size": -4096}"#,
        r#"{"size": "lots"}"#,
        r#"{"size": "10GB"}"#,
        r#"{"size": ""}"#,
        r#"{"size": null}"#,
        r#"{"size_bytes": 1.5}"#,
        r#"{"size_bytes": "1G"}"#,
        r#"{"size": "1G", "size_bytes": 1073741824}"#,
        r#"{}"#,
        r#"{"size": "1G", "name": "x"}"#,
        r#"{"sise": "1G"}"#,
        r#"{"size": "1G""#,
        r#"not json"#,
        r#"[]"#,
        r#""1G""#,
        "",
        "   ",
    ] {
        d.assert_error(d.put("vm", body), 400, body);
    }
    assert!(d.exports().is_empty());
    assert!(
        d.store_keys().is_empty(),
        "store touched: {:?}",
        d.store_keys()
    );
    // Oversized body.
    let big = format!(r#"{{"size": "1G", "pad": "{}"}}"#, "x".repeat(70_000));
    d.assert_error(d.put("vm", &big), 413, "huge body");
}

#[test]
fn create_is_idempotent_grow_and_shrink() {
    let d = start(10);
    let (s1, v1) = d.put("vm-1", r#"{"size": "1M"}"#);
    assert_eq!(s1, 201, "{v1}");
    assert_eq!(v1["name"], "vm-1");
    assert_eq!(v1["size_bytes"], 1 << 20);
    assert_eq!(v1["size"], "1M");
    assert_eq!(v1["device"], Value::Null);
    assert_eq!(v1["state"], "live");
    let (s2, v2) = d.put("vm-1", r#"{"size_bytes": 1048576}"#);
    assert_eq!((s2, &v2), (200, &v1), "same size is a no-op");
    let (s3, v3) = d.put("vm-1", r#"{"size": "2M"}"#);
    assert_eq!((s3, v3["size_bytes"].as_u64()), (200, Some(2 << 20)));
    d.assert_error(d.put("vm-1", r#"{"size": "1M"}"#), 409, "shrink");
    assert_eq!(
        d.req("GET", "/api/exports/vm-1", None).1["size_bytes"],
        2 << 20
    );
    let names: Vec<_> = d
        .exports()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["vm-1"]);
}

/// Snapshots over the API: 201 with the snapshot, listed, 409 for a name in use,
/// 400 for a bad name or body, 404 for an unknown export or snapshot; errors
/// change nothing.
#[test]
fn snapshots_over_the_api() {
    let d = start(10);
    let snaps = "/api/exports/vm/snapshots";
    d.assert_error(
        d.req(
            "POST",
            "/api/exports/nope/snapshots",
            Some(r#"{"name": "s1"}"#),
        ),
        404,
        "snapshot of an unknown export",
    );
    assert_eq!(d.put("vm", r#"{"size": "1M"}"#).0, 201);
    let (s, v) = d.req("POST", snaps, Some(r#"{"name": "s1"}"#));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["name"], "s1");
    assert_eq!(v["size_bytes"], 1 << 20);
    assert!(d.store_keys().iter().any(|k| k == "volumes/vm/snap/s1"));
    d.assert_error(
        d.req("POST", snaps, Some(r#"{"name": "s1"}"#)),
        409,
        "name in use",
    );
    d.assert_error(
        d.req("POST", snaps, Some(r#"{"name": "S 1"}"#)),
        400,
        "bad snapshot name",
    );
    d.assert_error(d.req("POST", snaps, Some("{}")), 400, "no name");
    d.assert_error(d.req("POST", snaps, None), 400, "no body");
    d.assert_error(d.req("PUT", snaps, None), 405, "PUT snapshots");
    let (s, v) = d.req("GET", snaps, None);
    assert_eq!(s, 200);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s1"], "failed requests changed nothing");
    d.assert_error(
        d.req("DELETE", &format!("{snaps}/nope"), None),
        404,
        "unknown snapshot",
    );
    assert_eq!(d.req("DELETE", &format!("{snaps}/s1"), None).0, 200);
    assert_eq!(d.req("GET", snaps, None).1, serde_json::json!([]));
    assert!(!d.store_keys().iter().any(|k| k == "volumes/vm/snap/s1"));
}

/// Forks over the API: PUT with "from" makes one (201); a name in use is 409, an
/// unknown snapshot 404, a bad "from" or size 400, and none of them changes
/// anything; a snapshot with forks cannot be deleted (409); purging the parent
/// keeps what the fork reads, purging the fork then removes it.
#[test]
fn forks_over_the_api() {
    let d = start(10);
    assert_eq!(d.put("base", r#"{"size": "1M"}"#).0, 201);
    let snaps = "/api/exports/base/snapshots";
    assert_eq!(d.req("POST", snaps, Some(r#"{"name": "s1"}"#)).0, 201);
    let (s, v) = d.put("vm-1", r#"{"from": "base@s1"}"#);
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["size_bytes"], 1 << 20);
    let (s, v) = d.put("vm-2", r#"{"from": "base@s1", "size": "2M"}"#);
    assert_eq!(
        (s, &v["size_bytes"]),
        (201, &serde_json::json!(2 << 20)),
        "{v}"
    );
    let n = d.store_keys().len();
    d.assert_error(d.put("vm-1", r#"{"from": "base@s1"}"#), 409, "name in use");
    d.assert_error(
        d.put("vm-3", r#"{"from": "base@nope"}"#),
        404,
        "unknown snapshot",
    );
    d.assert_error(
        d.put("vm-3", r#"{"from": "nobody@s1"}"#),
        404,
        "unknown volume",
    );
    d.assert_error(d.put("vm-3", r#"{"from": "base"}"#), 400, "no snapshot");
    d.assert_error(
        d.put("vm-3", r#"{"from": "base@s1", "size": "512K"}"#),
        400,
        "smaller than the snapshot",
    );
    assert_eq!(d.store_keys().len(), n, "refused forks wrote nothing");
    let m = d.client.request("GET", "/metrics", None).unwrap().body;
    for want in [
        "glidefs_store_shared_bytes{export=\"vm-1\"}",
        "glidefs_store_owned_bytes{export=\"base\"}",
        "glidefs_shared_cache_capacity_bytes 268435456",
        "glidefs_shared_cache_hits_total 0",
    ] {
        assert!(m.contains(want), "no {want} in /metrics");
    }
    assert_eq!(d.exports().len(), 3);
    d.assert_error(
        d.req("DELETE", &format!("{snaps}/s1"), None),
        409,
        "snapshot with forks",
    );
    assert_eq!(d.req("DELETE", "/api/exports/base?purge=true", None).0, 200);
    assert!(
        d.store_keys().iter().any(|k| k == "volumes/base/snap/s1"),
        "the purge kept the snapshot the forks read"
    );
    d.assert_error(
        d.put("base", r#"{"size": "1M"}"#),
        409,
        "name of a purged parent",
    );
    for f in ["vm-1", "vm-2"] {
        assert_eq!(
            d.req("DELETE", &format!("/api/exports/{f}?purge=true"), None)
                .0,
            200
        );
    }
    assert!(d.store_keys().is_empty(), "{:?}", d.store_keys());
}

/// A volume in the store that is no export on this host: its snapshots are taken,
/// listed and deleted by opening it for the request alone; it stays no export.
#[test]
fn snapshots_of_a_volume_not_exported_here() {
    let d = start(10);
    assert_eq!(d.put("golden", r#"{"size": "1M"}"#).0, 201);
    assert_eq!(d.req("DELETE", "/api/exports/golden", None).0, 200);
    let snaps = "/api/exports/golden/snapshots";
    let (s, v) = d.req("POST", snaps, Some(r#"{"name": "s1"}"#));
    assert_eq!(s, 201, "{v}");
    assert!(d.exports().is_empty(), "still no export");
    let (s, v) = d.req("GET", snaps, None);
    assert_eq!((s, v[0]["name"].as_str()), (200, Some("s1")), "{v}");
    assert_eq!(d.put("vm", r#"{"from": "golden@s1"}"#).0, 201);
    d.assert_error(
        d.req("DELETE", &format!("{snaps}/s1"), None),
        409,
        "a snapshot with a fork",
    );
    d.assert_error(
        d.req(
            "POST",
            "/api/exports/nowhere/snapshots",
            Some(r#"{"name": "s1"}"#),
        ),
        404,
        "a volume that exists nowhere",
    );
    assert!(
        !d.dir.path().join("cache/volumes/golden").exists(),
        "its cache was dropped"
    );
}

#[test]
fn delete_drain_and_not_found() {
    let d = start(10);
    d.assert_error(
        d.req("DELETE", "/api/exports/nope", None),
        404,
        "delete unknown",
    );
    d.assert_error(d.req("GET", "/api/exports/nope", None), 404, "get unknown");
    d.assert_error(
        d.req("POST", "/api/exports/nope/drain", None),
        404,
        "drain unknown",
    );
    assert_eq!(d.put("keep", r#"{"size": "1M"}"#).0, 201);
    assert_eq!(d.put("gone", r#"{"size": "1M"}"#).0, 201);
    let (s, v) = d.req("POST", "/api/exports/keep/drain", None);
    assert_eq!((s, v["name"].as_str()), (200, Some("keep")));
    d.assert_error(
        d.req("DELETE", "/api/exports/keep?purge=maybe", None),
        400,
        "bad purge",
    );
    d.assert_error(
        d.req("DELETE", "/api/exports/keep?force=1", None),
        400,
        "unknown query",
    );
    d.assert_error(
        d.req("GET", "/api/exports/keep?x=1", None),
        400,
        "query on GET",
    );
    assert_eq!(d.exports().len(), 2, "failed deletes changed nothing");
    assert_eq!(d.req("DELETE", "/api/exports/keep", None).0, 200);
    assert!(
        d.store_keys().iter().any(|k| k.contains("keep")),
        "non-purge delete keeps objects"
    );
    assert_eq!(d.req("DELETE", "/api/exports/gone?purge=true", None).0, 200);
    assert!(
        !d.store_keys().iter().any(|k| k.contains("gone")),
        "purge removes objects"
    );
    assert!(!d.dir.path().join("cache/volumes/gone").exists());
    d.assert_error(d.req("GET", "/api/exports/gone", None), 404, "after delete");
    assert!(d.exports().is_empty());
}

#[test]
fn cold_wake_from_the_store() {
    let d = start(10);
    assert_eq!(d.put("mover", r#"{"size": "2M"}"#).0, 201);
    assert_eq!(d.req("DELETE", "/api/exports/mover", None).0, 200);
    assert!(
        !d.dir.path().join("cache/volumes/mover").exists(),
        "local cache dropped"
    );
    d.assert_error(
        d.put("mover", r#"{"size": "1M"}"#),
        409,
        "smaller than stored",
    );
    assert!(d.exports().is_empty());
    let (s, v) = d.put("mover", r#"{"size": "2M"}"#);
    assert_eq!((s, v["size_bytes"].as_u64()), (201, Some(2 << 20)));
}

#[test]
fn export_limit_is_507_and_changes_nothing() {
    let d = start(2);
    assert_eq!(d.put("a", r#"{"size": "1M"}"#).0, 201);
    assert_eq!(d.put("b", r#"{"size": "1M"}"#).0, 201);
    let (s, v) = d.put("c", r#"{"size": "1M"}"#);
    d.assert_error((s, v.clone()), 507, "limit");
    assert!(v["error"].as_str().unwrap().contains("max_exports"), "{v}");
    assert!(!d
        .store_keys()
        .iter()
        .any(|k| k.contains("/c/") || k.starts_with("c/")));
    assert_eq!(d.exports().len(), 2);
    assert_eq!(
        d.put("a", r#"{"size": "1M"}"#).0,
        200,
        "idempotent PUT at the limit"
    );
}

#[test]
fn methods_paths_and_metrics() {
    let d = start(10);
    d.assert_error(d.req("GET", "/nope", None), 404, "unknown path");
    d.assert_error(d.req("POST", "/api/exports", None), 405, "POST list");
    d.assert_error(d.req("PATCH", "/api/exports/a", None), 405, "PATCH");
    d.assert_error(d.req("GET", "/api/exports/a/drain", None), 405, "GET drain");
    d.assert_error(d.req("POST", "/health", None), 405, "POST health");
    assert_eq!(d.put("m", r#"{"size": "1M"}"#).0, 201);
    let r = d.client.request("GET", "/metrics", None).unwrap();
    assert_eq!(r.status, 200);
    for want in [
        "glidefs_build_info{git_sha=\"abc\",version=\"test\"} 1",
        "glidefs_exports 1",
        "glidefs_dirty_bytes{export=\"m\"}",
        "glidefs_cache_hits_total{export=\"m\"}",
        "glidefs_store_requests_total{op=\"put",
        "glidefs_store_request_duration_seconds_bucket",
    ] {
        assert!(r.body.contains(want), "missing {want}:\n{}", r.body);
    }
}

#[test]
fn unix_socket_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("run/api.sock");
    let mut d = start_with(10, Some(Listen::Unix(sock.clone())), true);
    assert_eq!(d.req("GET", "/health", None).0, 200);
    assert_eq!(d.put("u", r#"{"size": "1M"}"#).0, 201);
    // A second server on the same live socket is refused.
    let again = ApiServer::start(
        &Listen::Unix(sock.clone()),
        Arc::new(ApiState {
            router: d.router.clone(),
            metrics: Metrics::new(true, "t", "s").unwrap(),
        }),
    );
    assert!(again.is_err());
    d.server.take().unwrap().stop();
    assert!(!sock.exists(), "socket removed on stop");
}

#[test]
fn restart_recovers_exports() {
    let d = start(10);
    assert_eq!(d.put("r1", r#"{"size": "1M"}"#).0, 201);
    assert_eq!(d.put("r2", r#"{"size": "3M"}"#).0, 201);
    let Daemon {
        dir,
        router,
        server,
        ..
    } = d;
    drop(server);
    router.shutdown(false);
    drop(router);
    // A new daemon on the same cache dir and store.
    let mut cfg = Config::default();
    cfg.cache.dir = dir.path().join("cache");
    let metrics = Metrics::new(true, "t", "s").unwrap();
    let raw = open_store(
        &format!("file://{}", dir.path().join("store").display()),
        &StoreOptions::default(),
    )
    .unwrap();
    let vols = Arc::new(EngineVolumes::new(
        raw,
        VolumeSettings::from_config(&cfg, &HostIdentity::load_or_create(&cfg.cache.dir).unwrap())
            .unwrap(),
    ));
    let router = Router::new(
        RouterConfig {
            cache_dir: cfg.cache.dir.clone(),
            max_exports: 10,
            open_concurrency: 2,
            reopen_backoff: glidefs::rules::REOPEN_BACKOFF,
        },
        vols,
        None,
        metrics,
    )
    .unwrap();
    let summary = router.recover().unwrap();
    assert_eq!((summary.recovered, summary.failed), (2, 0));
    let sizes: Vec<_> = router
        .list()
        .into_iter()
        .map(|e| (e.name, e.size_bytes))
        .collect();
    assert_eq!(
        sizes,
        [("r1".to_string(), 1 << 20), ("r2".to_string(), 3 << 20)]
    );
}

#[test]
fn data_survives_delete_and_cold_wake_and_moves_the_histograms() {
    let d = start(10);
    assert_eq!(d.put("data", r#"{"size": "4M"}"#).0, 201);
    let t = d.router.io_target("data").unwrap();
    let pattern: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    smol::block_on(async {
        t.write(0, &pattern, false).await.unwrap();
        t.write(3 << 20, &pattern[..4096], true).await.unwrap();
        t.flush().await.unwrap();
        let mut back = vec![0u8; 4096];
        t.read(3 << 20, &mut back).await.unwrap();
        assert_eq!(back, pattern[..4096]);
    });
    let m = d.client.request("GET", "/metrics", None).unwrap().body;
    assert!(
        m.contains("glidefs_write_io_size_bytes_bucket{export=\"data\",le=\"4096\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("glidefs_write_io_size_bytes_count{export=\"data\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("glidefs_read_io_size_bytes_count{export=\"data\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("glidefs_io_bytes_total{export=\"data\",op=\"write\"} 266240"),
        "{m}"
    );
    drop(t);
    // Delete without purge drains to the store and drops the local cache...
    assert_eq!(d.req("DELETE", "/api/exports/data", None).0, 200);
    assert!(!d.dir.path().join("cache/volumes/data").exists());
    assert!(!d
        .client
        .request("GET", "/metrics", None)
        .unwrap()
        .body
        .contains("export=\"data\""));
    // ...so a PUT wakes it from the store with the data intact.
    assert_eq!(d.put("data", r#"{"size": "4M"}"#).0, 201);
    let t = d.router.io_target("data").unwrap();
    smol::block_on(async {
        let mut back = vec![0u8; pattern.len()];
        t.read(0, &mut back).await.unwrap();
        assert!(back == pattern, "data differs after cold wake");
        let mut zero = vec![1u8; 4096];
        t.read(2 << 20, &mut zero).await.unwrap();
        assert!(zero.iter().all(|&b| b == 0));
    });
}

/// Stop `d` as a daemon stops (devices stay, volumes closed) and return its directory.
fn stop(d: Daemon) -> tempfile::TempDir {
    let Daemon {
        dir,
        router,
        server,
        ..
    } = d;
    if let Some(s) = server {
        s.stop();
    }
    router.shutdown(false);
    dir
}

/// Another host (own owner id and cache dir) takes `name` over on `d`'s store, writes
/// a block and drains it.
fn other_host_takes_over(d: &Daemon, name: &str) {
    use glidefs::volume::{Volume, VolumeConfig};
    let mut cfg = VolumeConfig::new(name, 0, d.dir.path().join("host-b"));
    cfg.owner = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0".into();
    cfg.host_label = "host-b".into();
    cfg.takeover = true;
    smol::block_on(async {
        let v = Volume::open(cfg, d.store.clone()).await.unwrap();
        v.write(0, &[7u8; 4096], false).await.unwrap();
        v.drain().await.unwrap();
        v.close().await.unwrap();
    });
}

#[test]
fn purge_of_a_volume_another_host_holds_is_refused_unless_forced() {
    let d = start(10);
    assert_eq!(d.put("vm-1", r#"{"size": "1M"}"#).0, 201);
    let d = start_in(stop(d), 10, None, false);
    // Host B takes vm-1 while host A is down; A comes back and its export fails.
    other_host_takes_over(&d, "vm-1");
    d.router.recover().unwrap();
    let (_, v) = d.req("GET", "/api/exports/vm-1", None);
    assert_eq!(v["state"], "failed", "{v}");
    let before = d.store_keys();
    assert!(before.iter().any(|k| k.contains("vm-1")), "{before:?}");
    let (status, v) = d.req("DELETE", "/api/exports/vm-1?purge=true", None);
    assert_eq!(status, 409, "{v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("host-b") && msg.contains("force=true"),
        "{msg}"
    );
    assert_eq!(d.store_keys(), before, "B's objects were deleted");
    assert_eq!(d.exports().len(), 1, "export still listed");
    // The operator who knows host B is gone forces it.
    let (status, v) = d.req("DELETE", "/api/exports/vm-1?purge=true&force=true", None);
    assert_eq!(status, 200, "{v}");
    assert!(
        !d.store_keys().iter().any(|k| k.contains("vm-1/")),
        "{:?}",
        d.store_keys()
    );
    assert!(d.exports().is_empty());
}

/// Send `GET path` with `host` as the Host header (None: no Host header) over TCP.
fn get_with_host(addr: &str, path: &str, host: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\n{host}Connection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

#[test]
fn requests_for_other_host_names_are_refused() {
    // DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1
    // reaches the API with "Host: evil.example".
    let d = start(10);
    assert_eq!(d.put("vm-1", r#"{"size": "1M"}"#).0, 201);
    let addr = d.server.as_ref().unwrap().addr().to_string();
    let port = addr.rsplit(':').next().unwrap().to_string();
    for bad in [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
        "127.0.0.2",
    ] {
        let (status, body) = get_with_host(&addr, "/api/exports", Some(bad));
        assert!(status == 403 || status == 421, "{bad}: {status} {body}");
        assert!(
            body.contains(bad) && body.contains("api.allowed_hosts"),
            "{body}"
        );
        assert!(!body.contains("vm-1"), "{body}");
    }
    for good in [
        "localhost".to_string(),
        format!("localhost:{port}"),
        "LOCALHOST".to_string(),
        "127.0.0.1".to_string(),
        addr.clone(),
        "[::1]".to_string(),
        format!("[::1]:{port}"),
    ] {
        let (status, body) = get_with_host(&addr, "/api/exports", Some(&good));
        assert_eq!(status, 200, "{good}: {body}");
    }
    // The CLI's own client is accepted.
    assert_eq!(d.req("GET", "/api/exports", None).0, 200);
}

#[test]
fn an_interrupted_grow_is_recovered_at_the_stored_size() {
    use glidefs::volume::{Volume, VolumeConfig};
    let d = start(10);
    assert_eq!(d.put("g", r#"{"size": "1M"}"#).0, 201);
    let store = d.store.clone();
    let dir = stop(d);
    // The crash window: the volume grew in the store, the registry still says 1M.
    let cache = dir.path().join("cache");
    let host = HostIdentity::load_or_create(&cache).unwrap();
    let mut cfg = VolumeConfig::new("g", 2 << 20, cache.join("volumes/g"));
    cfg.owner = host.id;
    smol::block_on(async {
        let v = Volume::open(cfg, store).await.unwrap();
        v.close().await.unwrap();
    });
    let d = start_in(dir, 10, None, true);
    let (status, v) = d.req("GET", "/api/exports/g", None);
    assert_eq!(status, 200);
    assert_eq!(
        (v["state"].as_str(), v["size_bytes"].as_u64()),
        (Some("live"), Some(2 << 20)),
        "{v}"
    );
}

/// A failed export's delete without purge leaves the store alone and removes its
/// local cache; dirty data in it would be set aside first (volume::diverged, see
/// tests/volume_ownership.rs), here the cache is clean.
#[test]
fn deleting_a_failed_export_without_purge_leaves_the_store_alone() {
    let d = start(10);
    assert_eq!(d.put("vm-1", r#"{"size": "1M"}"#).0, 201);
    let d = start_in(stop(d), 10, None, false);
    other_host_takes_over(&d, "vm-1");
    d.router.recover().unwrap();
    let cache = d.dir.path().join("cache/volumes/vm-1");
    assert!(cache.exists());
    assert_eq!(d.req("DELETE", "/api/exports/vm-1", None).0, 200);
    assert!(d.exports().is_empty());
    assert!(!cache.join("data").exists(), "the clean cache stayed");
    assert!(d.store_keys().iter().any(|k| k.ends_with("vm-1/lease")));
    let (code, body) = d.req("GET", "/api/diverged", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["diverged"], serde_json::json!([]), "{body}");
}

/// An encrypted export restarted with another master key is `failed` with a reason
/// that names the key ids (no garbage served); with its own key back it serves
/// again; purge erases its data key and removes it.
#[test]
fn an_encrypted_export_with_the_wrong_master_key_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    let d = start_in(dir, 10, None, true);
    assert_eq!(d.put("sec", r#"{"size": "1M"}"#).0, 201);
    let meta = d
        .store_keys()
        .into_iter()
        .find(|k| k.ends_with("sec/meta"))
        .unwrap();
    let dir = stop(d);
    let m: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("store").join(&meta)).unwrap())
            .unwrap();
    assert_eq!(m["encrypted"], true, "{m}");
    let key_id = m["keys"]["key_id"].as_str().unwrap().to_string();

    std::fs::write(&key, "22".repeat(32)).unwrap();
    let d = start_in(dir, 10, None, true);
    let (_, v) = d.req("GET", "/api/exports/sec", None);
    assert_eq!(v["state"], "failed", "{v}");
    let why = v["error"].as_str().unwrap_or_default();
    assert!(
        why.contains(&key_id) && why.contains("encryption key"),
        "{why}"
    );

    let dir = stop(d);
    std::fs::write(&key, "11".repeat(32)).unwrap();
    let d = start_in(dir, 10, None, true);
    let (_, v) = d.req("GET", "/api/exports/sec", None);
    assert_eq!(v["state"], "live", "{v}");
    let (status, v) = d.req("DELETE", "/api/exports/sec?purge=true", None);
    assert_eq!(status, 200, "{v}");
    assert!(!d.store_keys().iter().any(|k| k.contains("sec/")));
}

/// A purge destroys the volume: dirty data still in its cache (never uploaded) goes
/// with it, it is not set aside as diverged data, which would keep a copy
/// (plaintext, even of an encrypted volume) of what the operator destroyed. Seen
/// failing before the fix: the purged volume's data was listed as diverged.
#[test]
fn purge_discards_dirty_data_instead_of_setting_it_aside() {
    use glidefs::router::VolumeFactory;
    use glidefs::volume::{Volume, VolumeConfig};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.cache.dir = dir.path().join("cache");
    let host = HostIdentity::load_or_create(&cfg.cache.dir).unwrap();
    let settings = VolumeSettings::from_config(&cfg, &host).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(glidefs::store::MemStore::new());
    let cache = cfg.cache.dir.join("volumes/p");
    let mut vc = VolumeConfig::new("p", 1 << 20, cache.clone());
    vc.owner = host.id.clone();
    vc.flush_interval = Duration::from_secs(3600);
    smol::block_on(async {
        let v = Volume::open(vc, store.clone()).await.unwrap();
        v.write(0, &[9u8; 8192], false).await.unwrap();
        // kill -9: the write stays dirty in the cache, never uploaded.
        v.abandon().await;
    });
    let vols = EngineVolumes::new(store.clone(), settings);
    smol::block_on(vols.purge("p", false)).unwrap();
    assert!(!cache.exists(), "the cache stayed");
    assert!(
        vols.list_diverged().unwrap().is_empty(),
        "{:?}",
        vols.list_diverged()
    );
    assert!(smol::block_on(store.list("")).unwrap().is_empty());
}
