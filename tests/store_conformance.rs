//! One conformance suite for every `ObjectStore`, run against `MemStore`,
//! `LocalDirStore`, moto_server and s3s-fs, plus server-specific cases: restart
//! persistence and outage/recovery (s3s-fs), conditional races (moto, local), and
//! conditional puts across processes (local).
//!
//! The S3 servers come from scripts/install-test-servers.sh; without them these
//! tests fail with a message saying so.
// Test code: a panic is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::servers::TestServer;
use glidefs::store::{LocalDirStore, MemStore, ObjectStore, PutCondition, StoreError};
use std::sync::Arc;

/// How the store handles conditional puts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conditional {
    /// Honoured atomically.
    Atomic,
    /// Reported as unsupported (`ConditionalUnsupported`), never silently ignored.
    Unsupported,
}

fn payload(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

fn is_not_found<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::NotFound(_)))
}

fn is_precondition<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::PreconditionFailed(_)))
}

// ---------------------------------------------------------------- the suite

async fn conformance(s: Arc<dyn ObjectStore>, cond: Conditional, many_keys: bool) {
    roundtrip_and_overwrite(&*s).await;
    ranged_get(&*s).await;
    list_by_prefix(&*s).await;
    delete_and_not_found(&*s).await;
    invalid_keys(&*s).await;
    match cond {
        Conditional::Atomic => {
            conditional_semantics(&*s).await;
            conditional_race(s.clone(), "race/a").await;
            lost_update_counter(s.clone(), "race/counter", 4, 5).await;
        }
        Conditional::Unsupported => conditional_reported_unsupported(&*s).await,
    }
    if many_keys {
        list_many(s.clone(), 1001).await;
    }
}

async fn roundtrip_and_overwrite(s: &dyn ObjectStore) {
    let d1 = payload(1, 3000);
    let e1 = s.put("rt/obj", d1.clone()).await.unwrap();
    assert!(!e1.is_empty());
    assert_eq!(s.get("rt/obj").await.unwrap(), d1);
    let m = s.head("rt/obj").await.unwrap();
    assert_eq!(
        (m.key.as_str(), m.size, m.etag.as_str()),
        ("rt/obj", 3000, e1.as_str())
    );

    let d2 = payload(2, 10);
    let e2 = s.put("rt/obj", d2.clone()).await.unwrap();
    assert_ne!(e1, e2, "etag must change when the content changes");
    assert_eq!(s.get("rt/obj").await.unwrap(), d2);
    assert_eq!(s.head("rt/obj").await.unwrap().etag, e2);

    // Empty and binary objects, and a segment-sized one.
    s.put("rt/empty", Bytes::new()).await.unwrap();
    assert_eq!(s.get("rt/empty").await.unwrap().len(), 0);
    assert_eq!(s.head("rt/empty").await.unwrap().size, 0);
    let all: Bytes = (0..=255u8).collect::<Vec<_>>().into();
    s.put("rt/bin", all.clone()).await.unwrap();
    assert_eq!(s.get("rt/bin").await.unwrap(), all);
    let big = payload(3, 5 << 20);
    s.put("rt/big", big.clone()).await.unwrap();
    assert_eq!(s.get("rt/big").await.unwrap(), big);
    assert_eq!(
        s.get_range("rt/big", (4 << 20) + 7..(4 << 20) + 131079)
            .await
            .unwrap(),
        big.slice((4 << 20) + 7..(4 << 20) + 131079)
    );
}

async fn ranged_get(s: &dyn ObjectStore) {
    let d = payload(9, 1000);
    s.put("rg/obj", d.clone()).await.unwrap();
    for r in [0..1u64, 10..20, 999..1000, 0..1000, 500..501] {
        assert_eq!(
            s.get_range("rg/obj", r.clone()).await.unwrap(),
            d.slice(r.start as usize..r.end as usize),
            "{r:?}"
        );
    }
    // Past the end: clamped; starting at or past the end, or empty: no bytes.
    assert_eq!(
        s.get_range("rg/obj", 990..2000).await.unwrap(),
        d.slice(990..)
    );
    for r in [1000..1010u64, 5000..6000, 5..5] {
        assert!(
            s.get_range("rg/obj", r.clone()).await.unwrap().is_empty(),
            "{r:?}"
        );
    }
    assert!(is_not_found(s.get_range("rg/missing", 0..10).await));
    assert!(is_not_found(s.get_range("rg/missing", 3..3).await));
}

async fn list_by_prefix(s: &dyn ObjectStore) {
    let keys = ["ls/a", "ls/b/c", "ls/b/d", "ls/ba", "ls2/x", "lsx"];
    for (i, k) in keys.iter().enumerate() {
        s.put(k, payload(i as u8, i + 1)).await.unwrap();
    }
    let names =
        |v: Vec<glidefs::store::ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(
        names(s.list("ls/").await.unwrap()),
        ["ls/a", "ls/b/c", "ls/b/d", "ls/ba"]
    );
    assert_eq!(
        names(s.list("ls/b").await.unwrap()),
        ["ls/b/c", "ls/b/d", "ls/ba"]
    );
    assert_eq!(names(s.list("ls/b/").await.unwrap()), ["ls/b/c", "ls/b/d"]);
    assert_eq!(
        names(s.list("ls").await.unwrap()),
        ["ls/a", "ls/b/c", "ls/b/d", "ls/ba", "ls2/x", "lsx"]
    );
    assert!(s.list("nothing-here/").await.unwrap().is_empty());
    let all = names(s.list("").await.unwrap());
    assert!(keys.iter().all(|k| all.contains(&k.to_string())), "{all:?}");
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "list must be sorted: {all:?}"
    );
    // Sizes and etags agree with head.
    for m in s.list("ls/").await.unwrap() {
        let h = s.head(&m.key).await.unwrap();
        assert_eq!(m, h);
    }
}

async fn delete_and_not_found(s: &dyn ObjectStore) {
    s.put("del/x", payload(5, 5)).await.unwrap();
    s.delete("del/x").await.unwrap();
    assert!(is_not_found(s.get("del/x").await));
    assert!(is_not_found(s.head("del/x").await));
    s.delete("del/x").await.unwrap();
    s.delete("del/never-existed").await.unwrap();
    assert!(s.list("del/").await.unwrap().is_empty());
    assert!(is_not_found(s.get("nf/missing").await));
}

async fn invalid_keys(s: &dyn ObjectStore) {
    for k in ["../escape", "/abs", "a//b", "sp ace", ""] {
        let e = s.put(k, payload(0, 1)).await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidKey { .. }), "{k:?}: {e}");
        assert!(e.to_string().contains(&format!("{k:?}")), "{e}");
        assert!(matches!(s.get(k).await, Err(StoreError::InvalidKey { .. })));
    }
}

async fn conditional_semantics(s: &dyn ObjectStore) {
    let e1 = s
        .put_if("cond/k", payload(1, 100), PutCondition::IfAbsent)
        .await
        .unwrap();
    assert!(is_precondition(
        &s.put_if("cond/k", payload(2, 100), PutCondition::IfAbsent)
            .await
    ));
    assert_eq!(s.get("cond/k").await.unwrap(), payload(1, 100));
    let e2 = s
        .put_if("cond/k", payload(3, 100), PutCondition::IfMatch(e1.clone()))
        .await
        .unwrap();
    assert_ne!(e1, e2);
    assert_eq!(s.head("cond/k").await.unwrap().etag, e2);
    assert!(is_precondition(
        &s.put_if("cond/k", payload(4, 100), PutCondition::IfMatch(e1.clone()))
            .await
    ));
    assert_eq!(s.get("cond/k").await.unwrap(), payload(3, 100));
    // An etag from head works too; an unconditional put invalidates it.
    let h = s.head("cond/k").await.unwrap().etag;
    s.put("cond/k", payload(5, 100)).await.unwrap();
    assert!(is_precondition(
        &s.put_if("cond/k", payload(6, 100), PutCondition::IfMatch(h))
            .await
    ));
    // If-Match on a missing key fails; after a delete, if-absent succeeds again.
    assert!(is_precondition(
        &s.put_if("cond/missing", payload(1, 1), PutCondition::IfMatch(e2))
            .await
    ));
    assert!(is_not_found(s.get("cond/missing").await));
    s.delete("cond/k").await.unwrap();
    s.put_if("cond/k", payload(7, 1), PutCondition::IfAbsent)
        .await
        .unwrap();
}

async fn conditional_reported_unsupported(s: &dyn ObjectStore) {
    for cond in [
        PutCondition::IfAbsent,
        PutCondition::IfMatch("whatever".into()),
    ] {
        let r = s.put_if("uncond/k", payload(1, 10), cond.clone()).await;
        assert!(
            matches!(r, Err(StoreError::ConditionalUnsupported(_))),
            "{cond:?}: {r:?}"
        );
    }
    assert!(
        is_not_found(s.get("uncond/k").await),
        "a refused conditional put must not write"
    );
}

/// 16 concurrent writers, if-absent then if-match: exactly one winner each time.
async fn conditional_race(s: Arc<dyn ObjectStore>, key: &str) {
    const WRITERS: u8 = 16;
    let run = |cond: PutCondition, seed: u8| {
        let tasks: Vec<_> = (0..WRITERS)
            .map(|i| {
                let (s, key, cond) = (s.clone(), key.to_owned(), cond.clone());
                smol::spawn(async move { (i, s.put_if(&key, payload(seed + i, 64), cond).await) })
            })
            .collect();
        async move {
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await);
            }
            results
        }
    };
    let mut etag = String::new();
    for (round, seed) in [(0, 0u8), (1, 100u8)] {
        let cond = if round == 0 {
            PutCondition::IfAbsent
        } else {
            PutCondition::IfMatch(etag.clone())
        };
        let results = run(cond, seed).await;
        let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one winner expected: {results:?}"
        );
        for (_, r) in &results {
            assert!(r.is_ok() || is_precondition(r), "round {round}: {r:?}");
        }
        let (w, r) = winners[0];
        etag = r.as_ref().unwrap().clone();
        assert_eq!(
            s.get(key).await.unwrap(),
            payload(seed + w, 64),
            "round {round}: the winner's data"
        );
        assert_eq!(s.head(key).await.unwrap().etag, etag);
    }
}

/// Read-modify-write with if-match from several tasks: no increment is lost.
async fn lost_update_counter(s: Arc<dyn ObjectStore>, key: &str, tasks: u64, incs: u64) {
    s.put(key, Bytes::from("0")).await.unwrap();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (s, key) = (s.clone(), key.to_owned());
            smol::spawn(async move { increment(&*s, &key, incs).await })
        })
        .collect();
    for h in handles {
        h.await;
    }
    let v: u64 = std::str::from_utf8(&s.get(key).await.unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(v, tasks * incs, "if-match must prevent lost updates");
}

async fn increment(s: &dyn ObjectStore, key: &str, incs: u64) {
    for _ in 0..incs {
        loop {
            let etag = s.head(key).await.unwrap().etag;
            let v: u64 = std::str::from_utf8(&s.get(key).await.unwrap())
                .unwrap()
                .parse()
                .unwrap();
            // The value may be newer than the etag; then the put fails and we retry.
            match s
                .put_if(
                    key,
                    Bytes::from((v + 1).to_string()),
                    PutCondition::IfMatch(etag),
                )
                .await
            {
                Ok(_) => break,
                Err(StoreError::PreconditionFailed(_)) => continue,
                Err(e) => panic!("increment: {e}"),
            }
        }
    }
}

async fn list_many(s: Arc<dyn ObjectStore>, n: usize) {
    let keys: Vec<String> = (0..n).map(|i| format!("many/k{i:05}")).collect();
    for chunk in keys.chunks(32) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|k| {
                let (s, k) = (s.clone(), k.clone());
                smol::spawn(async move { s.put(&k, Bytes::from(k.clone())).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await;
        }
    }
    let listed: Vec<String> = s
        .list("many/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(listed, keys, "listing {n} keys (pagination)");
}

// ---------------------------------------------------------------- stores

#[test]
fn mem_store_conformance() {
    smol::block_on(conformance(
        Arc::new(MemStore::new()),
        Conditional::Atomic,
        true,
    ));
}

#[test]
fn local_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(LocalDirStore::open(dir.path().join("store")).unwrap());
    // 1001 keys matter for S3 pagination only; the local walk has no pages.
    smol::block_on(conformance(s.clone(), Conditional::Atomic, false));
    // No temp files left behind, and none listed.
    let mut stack = vec![s.root().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            assert!(
                !name.starts_with(".glidefs-tmp"),
                "leftover temp file {}",
                e.path().display()
            );
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
}

#[test]
fn local_store_via_file_url_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("s").display());
    let opts = glidefs::store::StoreOptions::default();
    smol::block_on(async {
        let s = glidefs::store::open_store(&url, &opts).unwrap();
        let etag = s.put("a/b", payload(1, 10)).await.unwrap();
        drop(s);
        let s = glidefs::store::open_store(&url, &opts).unwrap();
        assert_eq!(s.get("a/b").await.unwrap(), payload(1, 10));
        assert_eq!(s.head("a/b").await.unwrap().etag, etag);
        s.put_if("a/b", payload(2, 10), PutCondition::IfMatch(etag))
            .await
            .unwrap();
    });
}

#[test]
fn moto_conformance() {
    let srv = TestServer::moto();
    smol::block_on(conformance(srv.store("suite"), Conditional::Atomic, true));
}

#[test]
fn moto_prefixes_isolate_stores() {
    let srv = TestServer::moto();
    smol::block_on(async {
        let a = srv.store("tenant-a");
        let b = srv.store("tenant-b/x");
        let root = srv.store("");
        a.put("k", payload(1, 1)).await.unwrap();
        b.put("k", payload(2, 1)).await.unwrap();
        assert_eq!(a.get("k").await.unwrap(), payload(1, 1));
        assert_eq!(b.get("k").await.unwrap(), payload(2, 1));
        let keys: Vec<_> = root
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(
            keys,
            ["tenant-a/k", "tenant-b/x/k"],
            "prefixes map to key paths; probes are not listed"
        );
        assert_eq!(a.list("").await.unwrap().len(), 1);
    });
}

#[test]
fn moto_probe_reports_supported() {
    let srv = TestServer::moto();
    smol::block_on(srv.s3_store("p").probe_conditional()).unwrap();
}

/// s3s-fs: the same suite; conditional writes are whatever the probe finds: if
/// reported unsupported (s3s-fs 0.14.1 checks the headers but not atomically), every
/// `put_if` must say so; if reported supported, the race tests must pass.
#[test]
fn s3s_fs_conformance() {
    let srv = TestServer::s3s_fs();
    let cond = match smol::block_on(srv.s3_store("suite").probe_conditional()) {
        Ok(()) => Conditional::Atomic,
        Err(StoreError::ConditionalUnsupported(_)) => Conditional::Unsupported,
        Err(e) => panic!("probe failed: {e}"),
    };
    eprintln!("s3s-fs conditional writes: {cond:?}");
    smol::block_on(conformance(srv.store("suite"), cond, true));
}

/// With `allow_racy_conditional`, s3s-fs's sequential conditional semantics are used.
#[test]
fn s3s_fs_racy_conditional_when_allowed() {
    let srv = TestServer::s3s_fs();
    let opts = glidefs::store::StoreOptions {
        allow_racy_conditional: true,
        ..srv.options()
    };
    let s = srv.store_with("allowed", &opts);
    smol::block_on(conditional_semantics(&*s));
}

#[test]
fn s3s_fs_persists_across_restart() {
    let mut srv = TestServer::s3s_fs();
    smol::block_on(async {
        let s = srv.store("vol");
        let mut etags = Vec::new();
        for i in 0..5u8 {
            etags.push(
                s.put(&format!("seg/{i}"), payload(i, 1000 + i as usize))
                    .await
                    .unwrap(),
            );
        }
        let before = s.list("").await.unwrap();
        srv.restart();
        let s = srv.store("vol");
        assert_eq!(s.list("").await.unwrap(), before);
        for i in 0..5u8 {
            let key = format!("seg/{i}");
            assert_eq!(s.get(&key).await.unwrap(), payload(i, 1000 + i as usize));
            assert_eq!(s.head(&key).await.unwrap().etag, etags[i as usize]);
        }
    });
}

#[test]
fn s3s_fs_outage_is_unavailable_then_recovers() {
    let mut srv = TestServer::s3s_fs();
    smol::block_on(async {
        let s = srv.store("vol");
        s.put("a", payload(1, 100)).await.unwrap();
        srv.stop();
        let unavailable = |r: Result<(), StoreError>, what: &str| match r {
            Err(StoreError::Unavailable(_)) => {}
            other => panic!("{what} during outage: expected Unavailable, got {other:?}"),
        };
        unavailable(s.get("a").await.map(|_| ()), "get");
        unavailable(s.get_range("a", 0..10).await.map(|_| ()), "get_range");
        unavailable(s.head("a").await.map(|_| ()), "head");
        unavailable(s.list("").await.map(|_| ()), "list");
        unavailable(s.put("b", payload(2, 10)).await.map(|_| ()), "put");
        unavailable(s.delete("a").await, "delete");
        srv.restart();
        // The same store object recovers: no reconnect logic needed by callers.
        assert_eq!(s.get("a").await.unwrap(), payload(1, 100));
        s.put("b", payload(2, 10)).await.unwrap();
        assert_eq!(s.get("b").await.unwrap(), payload(2, 10));
    });
}

#[test]
fn moto_outage_conditional_put_is_unavailable_not_wrong() {
    let mut srv = TestServer::moto();
    smol::block_on(async {
        let s = srv.store("c");
        let e = s
            .put_if("lease", payload(1, 10), PutCondition::IfAbsent)
            .await
            .unwrap();
        srv.stop();
        let r = s
            .put_if("lease", payload(2, 10), PutCondition::IfMatch(e))
            .await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    });
}

/// A conditional put whose response is lost (the write landed) must not be
/// replayed blindly (it would then fail against itself): it is re-checked.
#[test]
fn moto_conditional_put_with_lost_response_is_rechecked() {
    let srv = TestServer::moto();
    let proxy = common::proxy::FaultProxy::start(srv.port());
    let opts = glidefs::store::StoreOptions {
        endpoint: Some(proxy.endpoint()),
        ..srv.options()
    };
    let s = glidefs::store::S3Store::open(common::servers::BUCKET, "amb", &opts).unwrap();
    smol::block_on(async {
        s.probe_conditional().await.unwrap();
        proxy.drop_next_responses(1);
        let e1 = s
            .put_if("lease", payload(1, 10), PutCondition::IfAbsent)
            .await
            .unwrap();
        assert_eq!(proxy.pending_drops(), 0, "the response was dropped");
        assert_eq!(s.head("lease").await.unwrap().etag, e1);
        proxy.drop_next_responses(1);
        let e2 = s
            .put_if("lease", payload(2, 10), PutCondition::IfMatch(e1.clone()))
            .await
            .unwrap();
        assert_eq!(proxy.pending_drops(), 0);
        assert_eq!(s.get("lease").await.unwrap(), payload(2, 10));
        assert_eq!(s.head("lease").await.unwrap().etag, e2);
        // A lost response does not turn a real loss into a win.
        proxy.drop_next_responses(1);
        let r = s
            .put_if("lease", payload(3, 10), PutCondition::IfMatch(e1))
            .await;
        assert!(is_precondition(&r), "{r:?}");
        assert_eq!(s.get("lease").await.unwrap(), payload(2, 10));
        // Unconditional puts are simply retried.
        proxy.drop_next_responses(1);
        s.put("seg/1", payload(4, 10)).await.unwrap();
        assert_eq!(s.get("seg/1").await.unwrap(), payload(4, 10));
    });
}

/// A service that ignores conditional headers (moto behind a proxy that strips
/// them, like Garage) is detected: `put_if` reports it and writes nothing.
#[test]
fn store_ignoring_conditional_headers_is_reported() {
    let srv = TestServer::moto();
    let proxy = common::proxy::FaultProxy::start(srv.port());
    proxy.strip_conditional_headers(true);
    // Even the "racy is fine" escape hatch does not accept ignored headers.
    let opts = glidefs::store::StoreOptions {
        endpoint: Some(proxy.endpoint()),
        allow_racy_conditional: true,
        ..srv.options()
    };
    let s = glidefs::store::open_store(&format!("s3://{}/ign", common::servers::BUCKET), &opts)
        .unwrap();
    smol::block_on(async {
        s.put("k", payload(1, 10)).await.unwrap();
        let r = s.put_if("k", payload(2, 10), PutCondition::IfAbsent).await;
        match &r {
            Err(StoreError::ConditionalUnsupported(m)) => assert!(m.contains("ignores"), "{m}"),
            other => panic!("expected ConditionalUnsupported, got {other:?}"),
        }
        assert_eq!(s.get("k").await.unwrap(), payload(1, 10));
        conditional_reported_unsupported(&*s).await;
        // Probe objects are cleaned up and never listed.
        assert_eq!(s.list("").await.unwrap().len(), 1);
        let raw = srv.store("");
        assert_eq!(
            raw.list("")
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.key)
                .collect::<Vec<_>>(),
            ["ign/k"]
        );
    });
}

/// A server that accepts connections but never answers: the per-request timeout
/// turns it into `Unavailable` instead of a hang.
#[test]
fn unresponsive_server_times_out_as_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c); // never read, never answer
        }
    });
    let opts = glidefs::store::StoreOptions {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        access_key: Some("a".into()),
        secret_key: Some("s".into()),
        timeout: std::time::Duration::from_millis(500),
        retries: 1,
        retry_base_delay: std::time::Duration::from_millis(10),
        ..Default::default()
    };
    let s = glidefs::store::open_store("s3://bucket/p", &opts).unwrap();
    smol::block_on(async {
        assert!(matches!(s.get("k").await, Err(StoreError::Unavailable(_))));
        assert!(matches!(
            s.put("k", payload(1, 1)).await,
            Err(StoreError::Unavailable(_))
        ));
    });
}

// ------------------------------------------- credentials from the environment

const ENV_CHILD: &str = "GLIDEFS_STORE_TEST_ENV_CHILD";

/// Child half of `s3s_fs_credentials_from_aws_env`: opens `s3://…` with default
/// options, so endpoint, region and keys come from the AWS_* variables.
#[test]
fn env_credentials_child() {
    let Some(expect) = std::env::var_os(ENV_CHILD) else {
        return;
    };
    let url = format!("s3://{}/envtest", common::servers::BUCKET);
    let s = glidefs::store::open_store(
        &url,
        &glidefs::store::StoreOptions {
            retries: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let r = smol::block_on(s.put("k", payload(1, 10)));
    match (expect.to_str().unwrap(), r) {
        ("ok", Ok(_)) => assert_eq!(smol::block_on(s.get("k")).unwrap(), payload(1, 10)),
        ("denied", Err(StoreError::Other(m))) => assert!(m.contains("403"), "{m}"),
        (e, r) => panic!("expected {e}, got {r:?}"),
    }
}

/// s3s-fs checks signatures: keys from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY work,
/// a wrong secret is refused (so the variables really are used).
#[test]
fn s3s_fs_credentials_from_aws_env() {
    use common::servers::{ACCESS_KEY, REGION, SECRET_KEY};
    let srv = TestServer::s3s_fs();
    let exe = std::env::current_exe().unwrap();
    for (expect, secret) in [("ok", SECRET_KEY), ("denied", "wrong-secret")] {
        let status = std::process::Command::new(&exe)
            .args(["--exact", "env_credentials_child", "--test-threads=1"])
            .env(ENV_CHILD, expect)
            .env("AWS_ENDPOINT_URL", srv.endpoint())
            .env("AWS_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env_remove("AWS_ENDPOINT_URL_S3")
            .env_remove("AWS_SESSION_TOKEN")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "child expecting {expect} failed");
    }
}

// ------------------------------------------- LocalDirStore across processes

const CHILD_ENV: &str = "GLIDEFS_STORE_TEST_CHILD_DIR";
const CHILD_INCS: u64 = 10;

/// Child half of `local_put_if_across_processes` (does nothing when run normally).
#[test]
fn local_cross_process_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let s = LocalDirStore::open(dir.join("store")).unwrap();
    smol::block_on(async {
        let won = s
            .put_if(
                "winner",
                Bytes::from(std::process::id().to_string()),
                PutCondition::IfAbsent,
            )
            .await;
        assert!(won.is_ok() || is_precondition(&won), "{won:?}");
        increment(&s, "counter", CHILD_INCS).await;
        std::fs::write(
            dir.join(format!("won-{}", std::process::id())),
            if won.is_ok() { "1" } else { "0" },
        )
        .unwrap();
    });
}

#[test]
fn local_put_if_across_processes() {
    const PROCS: u64 = 6;
    let dir = tempfile::tempdir().unwrap();
    let s = LocalDirStore::open(dir.path().join("store")).unwrap();
    smol::block_on(s.put("counter", Bytes::from("0"))).unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCS)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--exact", "local_cross_process_child", "--test-threads=1"])
                .env(CHILD_ENV, dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "child failed");
    }
    let mut wins = 0;
    let mut reports = 0;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("won-") {
            reports += 1;
            wins += std::fs::read_to_string(e.path())
                .unwrap()
                .trim()
                .parse::<u32>()
                .unwrap();
        }
    }
    assert_eq!(reports, PROCS, "every child reports");
    assert_eq!(wins, 1, "exactly one process wins if-absent");
    smol::block_on(async {
        let winner = String::from_utf8(s.get("winner").await.unwrap().to_vec()).unwrap();
        assert!(dir.path().join(format!("won-{winner}")).exists());
        let v: u64 = std::str::from_utf8(&s.get("counter").await.unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            v,
            PROCS * CHILD_INCS,
            "if-match across processes must not lose updates"
        );
    });
}
