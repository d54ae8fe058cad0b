//! `S3Store`: an [`ObjectStore`] on any S3-compatible service, via rust-s3 0.38.
//!
//! - rust-s3 runs in its `sync` flavour (attohttpc + rustls); every call goes through
//!   `smol::unblock`, so the async executor never blocks. rust-s3's own process-wide
//!   retry is switched off (`s3::set_retries(0)`): [`RetryPolicy`] retries instead,
//!   with backoff + jitter, only what is safe to replay.
//! - Every request has a timeout (attohttpc's, plus an outer guard in case the
//!   connect phase hangs).
//! - Errors map to `NotFound` / `PreconditionFailed` / `Unavailable` /
//!   `ConditionalUnsupported` / `Other` as described in `errors.rs`; only
//!   `Unavailable` is retried.
//! - Conditional puts send `If-None-Match: *` / `If-Match: "<etag>"`. They are never
//!   replayed blindly: after an ambiguous failure (the request may or may not have
//!   landed) the object is read back; if it holds our bytes the put succeeded, if the
//!   condition no longer holds it failed, otherwise it is sent again.
//! - Services that silently ignore conditional headers (Garage), or check them
//!   non-atomically (s3s-fs 0.14), are detected by [`S3Store::probe_conditional`],
//!   which the first `put_if` runs automatically: they get `ConditionalUnsupported`,
//!   never a false success.
//! - Keys live under an optional prefix (`s3://bucket/prefix` → `prefix/<key>`).
//!   Etags are returned without the surrounding quotes. Listings skip internal
//!   `.glidefs*` objects and fetch etags the service omits (s3s-fs) with HEAD.
//!
//! Submodules: `config` (options + AWS environment), `errors` (mapping), `probe`
//! (conditional-write detection).

mod config;
mod errors;
mod probe;

pub use config::DEFAULT_REGION;
pub use probe::{RACE_ROUNDS, RACE_WRITERS};

use super::options::StoreOptions;
use super::retry::RetryPolicy;
use super::{validate_key, validate_prefix, ObjectMeta, ObjectStore, PutCondition, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use config::resolve;
use errors::{header, map_err, unquote};
use futures_lite::future;
use probe::ConditionalSupport;
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::{Bucket, Region};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

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

    async fn prepare(&self) -> Result<(), StoreError> {
        self.probe_conditional().await
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
        let (size, etag, modified_ms) = self
            .retry
            .run(|| {
                let path = self.full_key(key);
                self.call(key, false, move |b| {
                    let (h, _) = b.head_object(&path)?;
                    Ok((
                        h.content_length.unwrap_or(0).max(0) as u64,
                        h.e_tag.as_deref().map(unquote).unwrap_or_default(),
                        h.last_modified.as_deref().and_then(http_date_ms),
                    ))
                })
            })
            .await?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size,
            etag,
            modified_ms,
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
                    .any(|c| c.starts_with(crate::store::key::RESERVED_PREFIX))
                {
                    return None;
                }
                Some(ObjectMeta {
                    key,
                    size: o.size,
                    etag: o.e_tag.as_deref().map(unquote).unwrap_or_default(),
                    modified_ms: humantime::parse_rfc3339_weak(&o.last_modified)
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as u64),
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

/// An HTTP date (`Last-Modified: Wed, 02 Dec 2026 09:40:00 GMT`) in ms since the Unix
/// epoch; `None` when the server sent something else.
fn http_date_ms(s: &str) -> Option<u64> {
    httpdate::parse_http_date(s)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
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
