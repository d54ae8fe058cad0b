//! [`StoreOptions`]: the settings of a remote store (endpoint, region, credentials,
//! timeout, retries). Defaults come from [`crate::rules`]; unset S3 options fall back
//! to the standard AWS environment variables (see docs/stores.md). Secrets never
//! appear in `Debug` output.

use super::retry::RetryPolicy;
use std::fmt;
use std::time::Duration;

/// Settings for remote stores (ignored by `file://`).
#[derive(Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// S3 endpoint URL (`http(s)://host:port`); default `AWS_ENDPOINT_URL_S3`,
    /// `AWS_ENDPOINT_URL`, else AWS itself.
    pub endpoint: Option<String>,
    /// Region; default `AWS_REGION`, `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); default: on iff an endpoint is set.
    pub path_style: Option<bool>,
    /// Access key id; default `AWS_ACCESS_KEY_ID` (given together with `secret_key`).
    pub access_key: Option<String>,
    /// Secret access key; default `AWS_SECRET_ACCESS_KEY`.
    pub secret_key: Option<String>,
    /// Session token; default `AWS_SESSION_TOKEN` (only with keys from the environment).
    pub session_token: Option<String>,
    /// Timeout of one request (each attempt).
    pub timeout: Duration,
    /// Extra attempts for a request that failed transiently.
    pub retries: u32,
    /// First backoff ceiling; doubles per retry, capped at `retry_max_delay`.
    pub retry_base_delay: Duration,
    /// Largest single backoff.
    pub retry_max_delay: Duration,
    /// Accept a service that honours conditional writes only one at a time (not
    /// atomically under concurrency, e.g. s3s-fs). Safe only with a single writer.
    pub allow_racy_conditional: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        let p = RetryPolicy::default();
        Self {
            endpoint: None,
            region: None,
            path_style: None,
            access_key: None,
            secret_key: None,
            session_token: None,
            timeout: crate::rules::STORE_TIMEOUT,
            retries: p.retries,
            retry_base_delay: p.base_delay,
            retry_max_delay: p.max_delay,
            allow_racy_conditional: false,
        }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("StoreOptions")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key", &self.access_key)
            .field("secret_key", &redact(&self.secret_key))
            .field("session_token", &redact(&self.session_token))
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("retry_base_delay", &self.retry_base_delay)
            .field("retry_max_delay", &self.retry_max_delay)
            .field("allow_racy_conditional", &self.allow_racy_conditional)
            .finish()
    }
}

impl StoreOptions {
    /// The retry policy these options describe.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            retries: self.retries,
            base_delay: self.retry_base_delay,
            max_delay: self.retry_max_delay,
        }
    }
}
