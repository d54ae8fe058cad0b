//! `S3Store`: an [`ObjectStore`] on any S3-compatible service, via rust-s3 0.38.
//!
//! - rust-s3 runs in its `sync` flavour (attohttpc + rustls); every call goes through
//!   `smol::unblock`, so the async executor never blocks. rust-s3's own process-wide
//!   retry is switched off (`s3::set_retries(0)`): [`RetryPolicy`] retries instead,
//!   with backoff + jitter, only what is safe to replay.
//! - Every request has a timeout (attohttpc's, plus an outer guard in case the
//!   connect phase hangs).
//! - Error mapping: 404 → `NotFound` (`PreconditionFailed` on a conditional put); 412, and 409 on a conditional put
//!   (`ConditionalRequestConflict`) → `PreconditionFailed`; 5xx/408/429, timeouts and
//!   connection errors → `Unavailable`; 501 on a conditional put →
//!   `ConditionalUnsupported`; anything else → `Other` (with the S3 error code).
//! - Conditional puts send `If-None-Match: *` / `If-Match: "<etag>"`. They are never
//!   replayed blindly: after an ambiguous failure (the request may or may not have
//!   landed) the object is read back; if it holds our bytes the put succeeded, if the
//!   condition no longer holds it failed, otherwise it is sent again.
//! - Services that silently ignore conditional headers (Garage), or check them
//!   non-atomically (s3s-fs 0.14), are detected by [`S3Store::probe_conditional`],
//!   which the first `put_if` runs automatically: they get `ConditionalUnsupported`,
//!   never a false success.
//! - Keys live under an optional prefix (`s3://bucket/prefix` → `prefix/<key>`).
//!   Etags are returned without the surrounding quotes.

use super::retry::RetryPolicy;
use super::url::StoreOptions;
use super::{validate_key, validate_prefix, ObjectMeta, ObjectStore, PutCondition, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use futures_lite::future;
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::{Bucket, Region};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Default region when neither the options nor the environment name one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Concurrent writers in one round of the conditional-write race probe.
pub const RACE_WRITERS: usize = 8;
/// Rounds of the race probe (each must have exactly one winner).
pub const RACE_ROUNDS: usize = 2;

/// What the probe found out about conditional writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConditionalSupport {
    /// Honoured, and exactly one of concurrent if-absent writers wins.
    Atomic,
    /// Honoured one at a time, but concurrent writers can all win.
    Racy,
    /// Ignored: a write that must fail succeeds.
    Ignored,
}

/// Poll all futures concurrently; results in input order.
async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Object store on an S3-compatible service.
pub struct S3Store {
    bucket: Arc<Bucket>,
    bucket_name: String,
    /// Key prefix: empty, or ends with `/`.
    prefix: String,
    endpoint: String,
    timeout: Duration,
    retry: RetryPolicy,
    /// Result of the conditional-write probe, once it ran conclusively.
    conditional: async_lock::OnceCell<ConditionalSupport>,
    /// Accept a service whose conditional writes are honoured but not atomic.
    allow_racy_conditional: bool,
}

/// Settings after merging [`StoreOptions`] with the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    endpoint: Option<String>,
    region: String,
    path_style: bool,
    access_key: String,
    secret_key: String,
    session_token: Option<String>,
}

/// Merge options with the standard AWS environment variables (options win).
fn resolve(
    opts: &StoreOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved, StoreError> {
    let env_nonempty = |name: &str| env(name).filter(|v| !v.is_empty());
    let endpoint = opts
        .endpoint
        .clone()
        .or_else(|| env_nonempty("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env_nonempty("AWS_ENDPOINT_URL"));
    let region = opts
        .region
        .clone()
        .or_else(|| env_nonempty("AWS_REGION"))
        .or_else(|| env_nonempty("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| DEFAULT_REGION.to_owned());
    let (access_key, secret_key, session_token) = match (&opts.access_key, &opts.secret_key) {
        (Some(a), Some(s)) => (a.clone(), s.clone(), opts.session_token.clone()),
        (None, None) => match (env_nonempty("AWS_ACCESS_KEY_ID"), env_nonempty("AWS_SECRET_ACCESS_KEY")) {
            (Some(a), Some(s)) => (a, s, opts.session_token.clone().or_else(|| env_nonempty("AWS_SESSION_TOKEN"))),
            _ => {
                return Err(StoreError::Config(
                    "no S3 credentials: set access_key and secret_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                        .to_owned(),
                ))
            }
        },
        _ => return Err(StoreError::Config("access_key and secret_key must be given together".to_owned())),
    };
    if let Some(ep) = &endpoint {
        if !(ep.starts_with("http://") || ep.starts_with("https://")) {
            return Err(StoreError::Config(format!(
                "S3 endpoint {ep:?} must start with http:// or https://"
            )));
        }
    }
    // A custom endpoint (MinIO, moto, s3s, Garage...) almost always wants path style.
    let path_style = opts.path_style.unwrap_or(endpoint.is_some());
    Ok(Resolved {
        endpoint,
        region,
        path_style,
        access_key,
        secret_key,
        session_token,
    })
}

/// A short, secret-free description of an S3 error body: its `<Code>` and `<Message>`.
fn summarize(body: &str) -> String {
    let tag = |t: &str| -> Option<String> {
        let start = body.find(&format!("<{t}>"))? + t.len() + 2;
        let end = body[start..].find(&format!("</{t}>"))? + start;
        Some(body[start..end].to_owned())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        _ => body.chars().take(200).collect(),
    }
}

/// Map a rust-s3 error for `key`; `conditional` marks a conditional put.
fn map_err(e: S3Error, key: &str, conditional: bool) -> StoreError {
    match e {
        // If-Match on a missing key: AWS and moto answer 404 NoSuchKey.
        S3Error::HttpFailWithBody(404, _) if conditional => {
            StoreError::PreconditionFailed(key.to_owned())
        }
        S3Error::HttpFailWithBody(404, _) => StoreError::NotFound(key.to_owned()),
        S3Error::HttpFailWithBody(412, _) => StoreError::PreconditionFailed(key.to_owned()),
        S3Error::HttpFailWithBody(409, _) if conditional => {
            StoreError::PreconditionFailed(key.to_owned())
        }
        S3Error::HttpFailWithBody(501, body) if conditional => {
            StoreError::ConditionalUnsupported(format!("{key}: HTTP 501 {}", summarize(&body)))
        }
        S3Error::HttpFailWithBody(s, body) if s >= 500 || s == 408 || s == 429 => {
            StoreError::Unavailable(format!("{key}: HTTP {s} {}", summarize(&body)))
        }
        S3Error::HttpFailWithBody(s, body) => {
            StoreError::Other(format!("{key}: HTTP {s} {}", summarize(&body)))
        }
        e @ (S3Error::Atto(_) | S3Error::Io(_) | S3Error::HttpFail) => {
            StoreError::Unavailable(format!("{key}: {e}"))
        }
        e @ S3Error::Credentials(_) => StoreError::Config(format!("{key}: {e}")),
        e => StoreError::Other(format!("{key}: {e}")),
    }
}

fn unquote(etag: &str) -> String {
    etag.trim().trim_matches('"').to_owned()
}

fn header<'a>(
    headers: &'a std::collections::HashMap<String, String>,
    name: &str,
) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl S3Store {
    /// A store for `bucket` with keys under `prefix` (empty or a valid key path;
    /// a trailing `/` is added). No network traffic happens here.
    pub fn open(bucket: &str, prefix: &str, opts: &StoreOptions) -> Result<Self, StoreError> {
        Self::open_with_env(bucket, prefix, opts, &|name| std::env::var(name).ok())
    }

    fn open_with_env(
        bucket: &str,
        prefix: &str,
        opts: &StoreOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, StoreError> {
        let r = resolve(opts, env)?;
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            validate_key(prefix)?;
        }
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let region = match &r.endpoint {
            Some(ep) => Region::Custom {
                region: r.region.clone(),
                endpoint: ep.trim_end_matches('/').to_owned(),
            },
            None => r
                .region
                .parse()
                .map_err(|e| StoreError::Config(format!("S3 region {:?}: {e}", r.region)))?,
        };
        let endpoint = r
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("aws:{}", r.region));
        let creds = Credentials::new(
            Some(&r.access_key),
            Some(&r.secret_key),
            None,
            r.session_token.as_deref(),
            None,
        )
        .map_err(|e| StoreError::Config(format!("S3 credentials: {e}")))?;
        let mut b = Bucket::new(bucket, region, creds)
            .map_err(|e| StoreError::Config(format!("S3 bucket {bucket:?}: {e}")))?;
        if r.path_style {
            b.set_path_style();
        }
        b.set_request_timeout(Some(opts.timeout));
        // We retry ourselves (with jitter, and never a conditional PUT blindly).
        s3::set_retries(0);
        Ok(Self {
            bucket: Arc::from(b),
            bucket_name: bucket.to_owned(),
            prefix,
            endpoint,
            timeout: opts.timeout,
            retry: opts.retry_policy(),
            conditional: async_lock::OnceCell::new(),
            allow_racy_conditional: opts.allow_racy_conditional,
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Run one blocking rust-s3 call on the blocking pool, bounded by the timeout.
    async fn call<T: Send + 'static>(
        &self,
        key: &str,
        conditional: bool,
        f: impl FnOnce(&Bucket) -> Result<T, S3Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let bucket = self.bucket.clone();
        let work = async {
            smol::unblock(move || f(&bucket))
                .await
                .map_err(|e| map_err(e, key, conditional))
        };
        let guard = self.timeout + Duration::from_secs(1);
        let timeout = async {
            smol::Timer::after(guard).await;
            Err(StoreError::Unavailable(format!(
                "{key}: no answer within {guard:?}"
            )))
        };
        future::or(work, timeout).await
    }

    async fn put_once(
        &self,
        key: &str,
        data: Bytes,
        cond: Option<PutCondition>,
    ) -> Result<String, StoreError> {
        let path = self.full_key(key);
        let conditional = cond.is_some();
        self.call(key, conditional, move |b| {
            let req = b.put_object_builder(&path, &data);
            let req = match &cond {
                None => req,
                Some(PutCondition::IfAbsent) => req.with_header("If-None-Match", "*")?,
                Some(PutCondition::IfMatch(etag)) => {
                    req.with_header("If-Match", format!("\"{}\"", unquote(etag)))?
                }
            };
            let resp = req.execute()?;
            Ok(unquote(&String::from_utf8_lossy(resp.as_slice())))
        })
        .await
    }

    /// The object's bytes and etag, or `None` if it does not exist (with retries).
    async fn current(&self, key: &str) -> Result<Option<(Bytes, String)>, StoreError> {
        let r = self
            .retry
            .run(|| {
                let path = self.full_key(key);
                self.call(key, false, move |b| {
                    let resp = b.get_object(&path)?;
                    let etag = header(&resp.headers(), "etag")
                        .map(unquote)
                        .unwrap_or_default();
                    Ok((resp.bytes().clone(), etag))
                })
            })
            .await;
        match r {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A conditional put that is safe under ambiguous failures (see the module docs).
    async fn put_if_checked(
        &self,
        key: &str,
        data: Bytes,
        cond: PutCondition,
    ) -> Result<String, StoreError> {
        let mut ambiguous = false;
        let mut retry = 0;
        loop {
            if ambiguous {
                // Did an earlier attempt land, and does the condition still hold?
                let cur = self.current(key).await?;
                if let Some((bytes, etag)) = &cur {
                    if *bytes == data {
                        return Ok(etag.clone());
                    }
                }
                let holds = match (&cond, &cur) {
                    (PutCondition::IfAbsent, cur) => cur.is_none(),
                    (PutCondition::IfMatch(want), Some((_, etag))) => unquote(want) == *etag,
                    (PutCondition::IfMatch(_), None) => false,
                };
                if !holds {
                    return Err(StoreError::PreconditionFailed(key.to_owned()));
                }
            }
            match self.put_once(key, data.clone(), Some(cond.clone())).await {
                Err(StoreError::Unavailable(msg)) if retry < self.retry.retries => {
                    retry += 1;
                    ambiguous = true;
                    tracing::debug!(retry, error = %msg, "conditional put failed ambiguously; re-checking");
                    smol::Timer::after(self.retry.backoff(retry)).await;
                }
                Err(StoreError::PreconditionFailed(k)) if ambiguous => {
                    // Possibly our own earlier attempt, applied late.
                    return match self.current(key).await? {
                        Some((bytes, etag)) if bytes == data => Ok(etag),
                        _ => Err(StoreError::PreconditionFailed(k)),
                    };
                }
                other => return other,
            }
        }
    }

    /// Check that the service honours conditional writes, once per store (only a
    /// conclusive answer is cached; `Unavailable` lets a later call probe again):
    /// 1. a probe object is written with `IfAbsent` twice, then with `IfMatch` of a
    ///    wrong and of the right etag: if a write that must fail succeeds, the
    ///    service ignores the headers (Garage);
    /// 2. [`RACE_WRITERS`] concurrent `IfAbsent` writes of a fresh key, up to
    ///    [`RACE_ROUNDS`] times: more than one winner means the check is not atomic
    ///    (s3s-fs 0.14 checks, then writes).
    ///
    /// Returns `Err(ConditionalUnsupported)` in both cases, except that a non-atomic
    /// service is accepted (with a warning) when `allow_racy_conditional` is set.
    /// Probe objects live under `.glidefs-probe/` and are deleted afterwards.
    pub async fn probe_conditional(&self) -> Result<(), StoreError> {
        let support = *self
            .conditional
            .get_or_try_init(|| self.run_probe())
            .await?;
        match support {
            ConditionalSupport::Atomic => Ok(()),
            ConditionalSupport::Racy if self.allow_racy_conditional => Ok(()),
            ConditionalSupport::Racy => Err(StoreError::ConditionalUnsupported(format!(
                "{} honours If-None-Match/If-Match but not atomically (concurrent if-absent writes \
                 all won); set allow_racy_conditional only if a single writer uses this store",
                self.describe()
            ))),
            ConditionalSupport::Ignored => Err(StoreError::ConditionalUnsupported(format!(
                "{} ignores If-None-Match/If-Match (a conditional PUT that must fail succeeded)",
                self.describe()
            ))),
        }
    }

    async fn run_probe(&self) -> Result<ConditionalSupport, StoreError> {
        let base = format!(
            "{}-probe/{:016x}",
            super::key::RESERVED_PREFIX,
            rand::random::<u64>()
        );
        let mut written = Vec::new();
        let result = self.probe_steps(&base, &mut written).await;
        for key in written {
            let _ = self.delete_raw(&key).await;
        }
        let support = match result {
            Err(StoreError::ConditionalUnsupported(_)) => ConditionalSupport::Ignored,
            other => other?,
        };
        if support != ConditionalSupport::Atomic {
            tracing::warn!(store = %self.describe(), ?support, "object store does not honour conditional writes atomically");
        }
        Ok(support)
    }

    async fn probe_steps(
        &self,
        base: &str,
        written: &mut Vec<String>,
    ) -> Result<ConditionalSupport, StoreError> {
        let data = Bytes::from_static(b"glidefs conditional-write probe");
        let key = format!("{base}/seq");
        written.push(key.clone());
        let must_fail = |r: Result<String, StoreError>| match r {
            Err(StoreError::PreconditionFailed(_)) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        };
        let first = self
            .put_once(&key, data.clone(), Some(PutCondition::IfAbsent))
            .await?;
        if !must_fail(
            self.put_once(&key, data.clone(), Some(PutCondition::IfAbsent))
                .await,
        )? {
            return Ok(ConditionalSupport::Ignored);
        }
        let wrong = if first == "0" { "1" } else { "0" };
        let r = self
            .put_once(
                &key,
                data.clone(),
                Some(PutCondition::IfMatch(wrong.to_owned())),
            )
            .await;
        if !must_fail(r)? {
            return Ok(ConditionalSupport::Ignored);
        }
        match self
            .put_once(&key, data.clone(), Some(PutCondition::IfMatch(first)))
            .await
        {
            Ok(_) => {}
            Err(StoreError::PreconditionFailed(_)) => return Ok(ConditionalSupport::Ignored),
            Err(e) => return Err(e),
        }
        for round in 0..RACE_ROUNDS {
            let key = format!("{base}/race{round}");
            written.push(key.clone());
            let attempts: Vec<_> = (0..RACE_WRITERS)
                .map(|i| {
                    self.put_once(
                        &key,
                        Bytes::from(format!("probe writer {i}")),
                        Some(PutCondition::IfAbsent),
                    )
                })
                .collect();
            let mut winners = 0;
            for r in join_all(attempts).await {
                match r {
                    Ok(_) => winners += 1,
                    Err(StoreError::PreconditionFailed(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if winners != 1 {
                return Ok(ConditionalSupport::Racy);
            }
        }
        Ok(ConditionalSupport::Atomic)
    }

    async fn delete_raw(&self, key: &str) -> Result<(), StoreError> {
        let r = self
            .retry
            .run(|| {
                let path = self.full_key(key);
                self.call(key, false, move |b| b.delete_object(&path).map(|_| ()))
            })
            .await;
        match r {
            Err(StoreError::NotFound(_)) => Ok(()),
            other => other,
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        validate_key(key)?;
        self.retry
            .run(|| self.put_once(key, data.clone(), None))
            .await
    }

    async fn put_if(
        &self,
        key: &str,
        data: Bytes,
        cond: PutCondition,
    ) -> Result<String, StoreError> {
        validate_key(key)?;
        self.probe_conditional().await?;
        self.put_if_checked(key, data, cond).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        Ok(self
            .current(key)
            .await?
            .ok_or_else(|| StoreError::NotFound(key.to_owned()))?
            .0)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        if range.start >= range.end {
            // HTTP cannot express an empty range; still report a missing object.
            self.head(key).await?;
            return Ok(Bytes::new());
        }
        let r = self
            .retry
            .run(|| {
                let path = self.full_key(key);
                let (start, last) = (range.start, range.end - 1);
                self.call(key, false, move |b| {
                    Ok(b.get_object_range(&path, start, Some(last))?
                        .bytes()
                        .clone())
                })
            })
            .await;
        match r {
            // 416: the range starts at or past the end of the object.
            Err(StoreError::Other(msg)) if msg.contains("HTTP 416") => Ok(Bytes::new()),
            other => other,
        }
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        validate_key(key)?;
        let (size, etag) = self
            .retry
            .run(|| {
                let path = self.full_key(key);
                self.call(key, false, move |b| {
                    let (h, _) = b.head_object(&path)?;
                    Ok((
                        h.content_length.unwrap_or(0).max(0) as u64,
                        h.e_tag.as_deref().map(unquote).unwrap_or_default(),
                    ))
                })
            })
            .await?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size,
            etag,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        validate_prefix(prefix)?;
        let pages = self
            .retry
            .run(|| {
                let full = self.full_key(prefix);
                self.call(prefix, false, move |b| b.list(full, None))
            })
            .await?;
        let mut out: Vec<ObjectMeta> = pages
            .into_iter()
            .flat_map(|p| p.contents)
            .filter_map(|o| {
                let key = o.key.strip_prefix(&self.prefix)?.to_owned();
                // Skip internal objects (the conditional-write probe).
                if key
                    .split('/')
                    .any(|c| c.starts_with(super::key::RESERVED_PREFIX))
                {
                    return None;
                }
                Some(ObjectMeta {
                    key,
                    size: o.size,
                    etag: o.e_tag.as_deref().map(unquote).unwrap_or_default(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        // Some servers (s3s-fs) list no ETag; fetch it so every etag is usable.
        for m in out.iter_mut().filter(|m| m.etag.is_empty()) {
            match self.head(&m.key).await {
                Ok(h) => *m = h,
                Err(StoreError::NotFound(_)) => m.size = u64::MAX, // deleted meanwhile
                Err(e) => return Err(e),
            }
        }
        out.retain(|m| m.size != u64::MAX);
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        self.delete_raw(key).await
    }

    fn describe(&self) -> String {
        format!(
            "s3://{}/{} at {}",
            self.bucket_name, self.prefix, self.endpoint
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn options_win_over_env_and_env_fills_gaps() {
        let e = env(&[
            ("AWS_ACCESS_KEY_ID", "envak"),
            ("AWS_SECRET_ACCESS_KEY", "envsk"),
            ("AWS_SESSION_TOKEN", "envtok"),
            ("AWS_DEFAULT_REGION", "eu-west-3"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ]);
        let r = resolve(&StoreOptions::default(), &e).unwrap();
        assert_eq!(r.access_key, "envak");
        assert_eq!(r.secret_key, "envsk");
        assert_eq!(r.session_token.as_deref(), Some("envtok"));
        assert_eq!(r.region, "eu-west-3");
        assert_eq!(r.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert!(r.path_style, "custom endpoint defaults to path style");

        let opts = StoreOptions {
            access_key: Some("ak".into()),
            secret_key: Some("sk".into()),
            region: Some("r1".into()),
            endpoint: Some("https://s3.example".into()),
            path_style: Some(false),
            ..StoreOptions::default()
        };
        let r = resolve(&opts, &e).unwrap();
        assert_eq!(
            (
                r.access_key.as_str(),
                r.secret_key.as_str(),
                r.region.as_str()
            ),
            ("ak", "sk", "r1")
        );
        assert_eq!(
            r.session_token, None,
            "env token must not pair with config keys"
        );
        assert!(!r.path_style);

        let r = resolve(
            &StoreOptions::default(),
            &env(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "s")]),
        )
        .unwrap();
        assert_eq!(r.region, DEFAULT_REGION);
        assert_eq!(r.endpoint, None);
        assert!(!r.path_style);
    }

    #[test]
    fn missing_or_partial_credentials_and_bad_endpoint_are_config_errors() {
        assert!(matches!(
            resolve(&StoreOptions::default(), &env(&[])),
            Err(StoreError::Config(_))
        ));
        let half = StoreOptions {
            access_key: Some("a".into()),
            ..StoreOptions::default()
        };
        assert!(matches!(
            resolve(&half, &env(&[])),
            Err(StoreError::Config(_))
        ));
        let bad = StoreOptions {
            endpoint: Some("127.0.0.1:9000".into()),
            access_key: Some("a".into()),
            secret_key: Some("s".into()),
            ..StoreOptions::default()
        };
        let err = resolve(&bad, &env(&[])).unwrap_err();
        assert!(err.to_string().contains("127.0.0.1:9000"), "{err}");
    }

    #[test]
    fn error_mapping() {
        let body =
            "<Error><Code>PreconditionFailed</Code><Message>At least one failed</Message></Error>";
        assert!(matches!(
            map_err(S3Error::HttpFailWithBody(404, String::new()), "k", false),
            StoreError::NotFound(_)
        ));
        assert!(matches!(
            map_err(S3Error::HttpFailWithBody(412, body.into()), "k", true),
            StoreError::PreconditionFailed(_)
        ));
        assert!(matches!(
            map_err(S3Error::HttpFailWithBody(409, String::new()), "k", true),
            StoreError::PreconditionFailed(_)
        ));
        assert!(matches!(
            map_err(S3Error::HttpFailWithBody(409, String::new()), "k", false),
            StoreError::Other(_)
        ));
        assert!(matches!(
            map_err(S3Error::HttpFailWithBody(503, String::new()), "k", false),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            map_err(S3Error::HttpFailWithBody(501, String::new()), "k", true),
            StoreError::ConditionalUnsupported(_)
        ));
        let e = map_err(
            S3Error::HttpFailWithBody(403, "<Error><Code>AccessDenied</Code></Error>".into()),
            "k",
            false,
        );
        assert!(
            matches!(&e, StoreError::Other(m) if m.contains("AccessDenied") && m.contains("403")),
            "{e}"
        );
        assert_eq!(summarize(body), "PreconditionFailed: At least one failed");
    }

    #[test]
    fn prefix_is_normalized_and_validated() {
        let opts = StoreOptions {
            access_key: Some("a".into()),
            secret_key: Some("s".into()),
            endpoint: Some("http://127.0.0.1:9".into()),
            ..StoreOptions::default()
        };
        let s = S3Store::open_with_env("b", "p/q/", &opts, &env(&[])).unwrap();
        assert_eq!(s.full_key("k"), "p/q/k");
        let s = S3Store::open_with_env("b", "", &opts, &env(&[])).unwrap();
        assert_eq!(s.full_key("k"), "k");
        assert!(matches!(
            S3Store::open_with_env("b", "a/../c", &opts, &env(&[])),
            Err(StoreError::InvalidKey { .. })
        ));
    }
}
