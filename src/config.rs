//! The daemon's TOML configuration: parsing, defaults and validation.
//!
//! Invariants:
//! - every key has a default, so an empty file (or no file) runs with zero set-up:
//!   cache in /var/lib/glidefs, a local-directory store under it, API on loopback;
//! - unknown keys and bad values are rejected at start, and every error names the key
//!   (`cache.dirty_limit: ...`); nothing is silently clamped;
//! - secrets never appear in the config file or in errors: S3 credentials come from
//!   `store.credentials_file` or the `AWS_*` environment (see [`resolve_credentials`]).
//!
//! Every key is documented in docs/operations.md; [`DEFAULT_CONFIG`] is what
//! `glidefs init` writes and must parse to [`Config::default`].

use crate::rules;
use crate::size::ByteSize;
pub use crate::volume::FlushMode;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Configuration errors. Each names the offending key or file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key, or a value of the wrong type/format.
    #[error("config key `{key}`: {message}")]
    Parse {
        /// Dotted key path (e.g. `cache.dirty_limit`), or `(file)` for syntax errors.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value that parsed but is out of range or inconsistent.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The credentials file is unreadable or malformed (its content is never echoed).
    #[error("store.credentials_file {path}: {message}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The key (or file) the error is about.
    pub fn key(&self) -> String {
        match self {
            ConfigError::Read { path, .. } | ConfigError::Credentials { path, .. } => {
                path.display().to_string()
            }
            ConfigError::Parse { key, .. } | ConfigError::Invalid { key, .. } => key.clone(),
        }
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[store]`: where the durable copy lives.
    pub store: StoreConfig,
    /// `[cache]`: the local write-back cache.
    pub cache: CacheConfig,
    /// `[api]`: the HTTP API and metrics endpoint.
    pub api: ApiConfig,
    /// `[ublk]`: the block-device data plane.
    pub ublk: UblkConfig,
    /// `[limits]`: capacity limits.
    pub limits: LimitsConfig,
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `file:///abs/path` or `s3://bucket[/prefix]`; default `file://<cache.dir>/store`.
    pub url: Option<String>,
    /// S3 endpoint URL (`http(s)://host:port`); default AWS (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// S3 region; default `AWS_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style S3 addressing; default: on when `endpoint` is set (MinIO and most
    /// self-hosted servers need it), off for AWS.
    pub path_style: Option<bool>,
    /// File with S3 credentials (AWS profile or `KEY=value` lines).
    pub credentials_file: Option<PathBuf>,
    /// Timeout of one store request.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Retries of a failed store request (transient errors only).
    pub retries: u32,
    /// Accept a store whose conditional writes are honoured but not atomic under
    /// concurrency (s3s-fs). Only safe with a single writer per volume (test setups).
    pub allow_racy_conditional: bool,
    /// `[store.encryption]`: client-side encryption of new volumes (absent: off).
    pub encryption: Option<EncryptionConfig>,
}

/// `[store.encryption]`: master key files (never the keys themselves).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// The current master key: 32 raw bytes or 64 hex digits. A relative path is
    /// looked up in `$CREDENTIALS_DIRECTORY` (systemd LoadCredential).
    pub key_file: PathBuf,
    /// Earlier master keys, still accepted to unwrap data keys; a volume opened
    /// with one is wrapped again by `key_file`'s key (rotation).
    #[serde(default)]
    pub old_key_files: Vec<PathBuf>,
}

impl EncryptionConfig {
    /// Whether every key file can be found from here: a relative path is read from
    /// `$CREDENTIALS_DIRECTORY`, which only the service's environment may set.
    pub fn key_files_resolvable(&self, env: &dyn Fn(&str) -> Option<String>) -> bool {
        std::iter::once(&self.key_file)
            .chain(&self.old_key_files)
            .all(|f| f.is_absolute() || env("CREDENTIALS_DIRECTORY").is_some())
    }

    /// Load the master keys (relative paths in `$CREDENTIALS_DIRECTORY`). Errors
    /// name the file, never its content.
    pub fn load(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<crate::volume::crypto::MasterKeys, crate::volume::crypto::CryptoError> {
        use crate::volume::crypto::MasterKey;
        Ok(crate::volume::crypto::MasterKeys {
            current: MasterKey::load(&credential_path(&self.key_file, env))?,
            old: self
                .old_key_files
                .iter()
                .map(|f| MasterKey::load(&credential_path(f, env)))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            endpoint: None,
            region: None,
            path_style: None,
            credentials_file: None,
            timeout: rules::STORE_TIMEOUT,
            retries: rules::STORE_RETRIES,
            allow_racy_conditional: false,
            encryption: None,
        }
    }
}

/// `[cache]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Cache directory (cache files, journals, the export registry).
    pub dir: PathBuf,
    /// Per-export limit of dirty (not yet in the store) bytes; writers wait beyond it.
    pub dirty_limit: ByteSize,
    /// Dirty data older than this is flushed to the store.
    #[serde(deserialize_with = "de_duration")]
    pub flush_interval: Duration,
    /// `local` or `store`: see [`FlushMode`].
    pub flush_mode: FlushMode,
    /// zstd-compress segments written to the store.
    pub compress: bool,
    /// A volume's lease not renewed for this long may be taken by another host; a
    /// holder that cannot renew stops acknowledging writes before then.
    #[serde(deserialize_with = "de_duration")]
    pub lease_ttl: Duration,
    /// A store segment that holds nothing live any more is deleted this long after
    /// garbage collection first found it so; `0s` deletes at once.
    #[serde(deserialize_with = "de_duration")]
    pub gc_grace: Duration,
    /// Memory for the host's shared cache of forks' base data; 0 turns it off (each
    /// fork then caches what it reads in its own cache file).
    pub shared_cache: ByteSize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: PathBuf::from("/var/lib/glidefs"),
            dirty_limit: ByteSize(rules::DIRTY_LIMIT),
            flush_interval: rules::FLUSH_INTERVAL,
            flush_mode: FlushMode::Local,
            compress: true,
            lease_ttl: rules::LEASE_TTL,
            gc_grace: rules::GC_GRACE,
            shared_cache: ByteSize(rules::SHARED_CACHE),
        }
    }
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// `host:port`, or a unix socket path (absolute, or `unix:/path`).
    pub listen: String,
    /// Emit per-export metric series (switch off for very many exports).
    pub per_export_metrics: bool,
    /// Time each data-path stage and export the sums ([`crate::stage_timers`]);
    /// a profiling aid, a few clock reads per request.
    pub stage_timers: bool,
    /// Host header values the TCP API answers (DNS-rebinding guard), default
    /// [`crate::api::hosts::DEFAULT_ALLOWED_HOSTS`]. The host part of `listen` is
    /// always allowed; `"*"` allows any.
    pub allowed_hosts: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".to_string(),
            per_export_metrics: true,
            stage_timers: false,
            allowed_hosts: crate::api::hosts::DEFAULT_ALLOWED_HOSTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// `[ublk]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UblkConfig {
    /// Serve block devices. `false`: exports have volumes but no device (testing).
    pub enabled: bool,
    /// Data-plane worker threads; 0 = one per CPU.
    pub workers: u32,
    /// Hardware queues per device.
    pub queues: u32,
    /// Tags (in-flight requests) per queue.
    pub queue_depth: u32,
    /// I/O buffer slots per worker (its memory cap: slots × 128 KiB).
    pub pool_slots: u32,
    /// Legacy per-tag buffers instead of USER_COPY (kill switch).
    pub bounce_mode: bool,
}

impl Default for UblkConfig {
    fn default() -> Self {
        UblkConfig {
            enabled: true,
            workers: 0,
            queues: u32::from(rules::QUEUES),
            queue_depth: u32::from(rules::QUEUE_DEPTH),
            pool_slots: rules::POOL_SLOTS as u32,
            bounce_mode: false,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most exports this daemon serves.
    pub max_exports: u32,
    /// Volumes opened (or closed) in parallel at start-up and shutdown.
    pub open_concurrency: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_exports: rules::MAX_EXPORTS,
            open_concurrency: rules::OPEN_CONCURRENCY,
        }
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"5s\", \"250ms\" or \"2m\"")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("negative duration"))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v)
                .map_err(|e| E::custom(format!("invalid duration {v:?}: {e} (e.g. \"5s\")")))
        }
    }
    d.deserialize_any(V)
}

/// Where the API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// TCP address.
    Tcp(SocketAddr),
    /// Unix domain socket path.
    Unix(PathBuf),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Parse an `api.listen` value: `host:port`, `/abs/path` or `unix:/abs/path`.
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    let path = s.strip_prefix("unix:").unwrap_or(s);
    if path.starts_with('/') {
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    if s.starts_with("unix:") {
        return Err(format!("unix socket path must be absolute: {s:?}"));
    }
    s.parse::<SocketAddr>().map(Listen::Tcp).map_err(|_| {
        format!("expected \"ip:port\" (e.g. \"127.0.0.1:8080\") or an absolute unix socket path, got {s:?}")
    })
}

impl Config {
    /// Parse and validate a TOML document.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::Parse {
                key: if key == "." {
                    "(file)".to_string()
                } else {
                    key
                },
                message: inner.message().to_string()
                    + &inner
                        .span()
                        .map(|s| {
                            let line =
                                text.get(..s.start).map_or(0, |t| t.matches('\n').count()) + 1;
                            format!(" (line {line})")
                        })
                        .unwrap_or_default(),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Range and consistency checks that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.cache.dir.is_absolute() {
            return Err(invalid("cache.dir", "must be an absolute path"));
        }
        if self.cache.dirty_limit.0 < crate::BLOCK_SIZE as u64 {
            return Err(invalid(
                "cache.dirty_limit",
                format!("must be at least {} (one block)", crate::BLOCK_SIZE),
            ));
        }
        if self.cache.flush_interval.is_zero() {
            return Err(invalid("cache.flush_interval", "must be greater than 0"));
        }
        if !rules::LEASE_TTL_RANGE.contains(&self.cache.lease_ttl) {
            return Err(invalid(
                "cache.lease_ttl",
                format!(
                    "{} is outside {}..={}",
                    humantime::format_duration(self.cache.lease_ttl),
                    humantime::format_duration(*rules::LEASE_TTL_RANGE.start()),
                    humantime::format_duration(*rules::LEASE_TTL_RANGE.end())
                ),
            ));
        }
        if let Some(url) = &self.store.url {
            crate::store::StoreUrl::parse(url).map_err(|e| invalid("store.url", e.to_string()))?;
        }
        if let Some(ep) = &self.store.endpoint {
            let rest = ep
                .strip_prefix("http://")
                .or_else(|| ep.strip_prefix("https://"));
            match rest {
                Some(r) if !r.is_empty() && !r.contains('@') => {}
                _ => {
                    return Err(invalid(
                        "store.endpoint",
                        "expected http(s)://host[:port] without credentials",
                    ))
                }
            }
        }
        if let Some(r) = &self.store.region {
            if r.is_empty() || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(invalid(
                    "store.region",
                    "expected a region name like us-east-1",
                ));
            }
        }
        if self.store.timeout.is_zero() {
            return Err(invalid("store.timeout", "must be greater than 0"));
        }
        rules::check_range(self.store.retries, &rules::STORE_RETRIES_RANGE)
            .map_err(|m| invalid("store.retries", m))?;
        parse_listen(&self.api.listen).map_err(|m| invalid("api.listen", m))?;
        for h in &self.api.allowed_hosts {
            crate::api::hosts::validate_entry(h).map_err(|m| invalid("api.allowed_hosts", m))?;
        }
        let u = &self.ublk;
        let ranges = [
            ("ublk.workers", u.workers, &rules::WORKERS_RANGE),
            ("ublk.queues", u.queues, &rules::QUEUES_RANGE),
            ("ublk.queue_depth", u.queue_depth, &rules::QUEUE_DEPTH_RANGE),
            ("ublk.pool_slots", u.pool_slots, &rules::POOL_SLOTS_RANGE),
            (
                "limits.max_exports",
                self.limits.max_exports,
                &rules::MAX_EXPORTS_RANGE,
            ),
            (
                "limits.open_concurrency",
                self.limits.open_concurrency,
                &rules::OPEN_CONCURRENCY_RANGE,
            ),
        ];
        for (key, v, range) in ranges {
            rules::check_range(v, range).map_err(|m| invalid(key, m))?;
        }
        Ok(())
    }

    /// The effective store URL (default: `file://<cache.dir>/store`).
    pub fn store_url(&self) -> String {
        match &self.store.url {
            Some(u) => u.clone(),
            None => format!("file://{}", self.cache.dir.join("store").display()),
        }
    }

    /// The validated listen address.
    pub fn listen(&self) -> Result<Listen, ConfigError> {
        parse_listen(&self.api.listen).map_err(|m| invalid("api.listen", m))
    }
}

/// S3 credentials. `Debug` never shows the secret parts.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Optional session token.
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &"<redacted>")
            .field("secret_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Where a secret file named in the config is: a relative path is in
/// `$CREDENTIALS_DIRECTORY` (systemd's LoadCredential), when that is set.
fn credential_path(file: &Path, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    match env("CREDENTIALS_DIRECTORY") {
        Some(dir) if file.is_relative() => Path::new(&dir).join(file),
        _ => file.to_path_buf(),
    }
}

/// Resolve S3 credentials: `store.credentials_file` if set (a relative path is looked
/// up in `$CREDENTIALS_DIRECTORY`, systemd's LoadCredential), else the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`); `None` when
/// neither gives an access key (anonymous access or a `file://` store).
pub fn resolve_credentials(
    store: &StoreConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Credentials>, ConfigError> {
    if let Some(file) = &store.credentials_file {
        let path = credential_path(file, env);
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Credentials {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
        return parse_credentials(&text, &profile)
            .map(Some)
            .map_err(|message| ConfigError::Credentials { path, message });
    }
    let access = env("AWS_ACCESS_KEY_ID").filter(|s| !s.is_empty());
    let secret = env("AWS_SECRET_ACCESS_KEY").filter(|s| !s.is_empty());
    match (access, secret) {
        (Some(access_key), Some(secret_key)) => Ok(Some(Credentials {
            access_key,
            secret_key,
            session_token: env("AWS_SESSION_TOKEN").filter(|s| !s.is_empty()),
        })),
        (None, None) => Ok(None),
        _ => Err(invalid(
            "store (environment)",
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together",
        )),
    }
}

/// Parse a credentials file: an AWS shared-credentials file (`[profile]` sections with
/// `aws_access_key_id = ...`) or plain `KEY=value` lines (environment-file style,
/// `AWS_ACCESS_KEY_ID=...` or `access_key_id=...`). Values may be quoted; `#` and `;`
/// start comments. Error messages never contain values.
pub fn parse_credentials(text: &str, profile: &str) -> Result<Credentials, String> {
    let mut section: Option<String> = None;
    let mut saw_sections = false;
    let (mut access, mut secret, mut token) = (None, None, None);
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            saw_sections = true;
            let name = name.trim();
            section = Some(
                name.strip_prefix("profile ")
                    .unwrap_or(name)
                    .trim()
                    .to_string(),
            );
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=value", n + 1));
        };
        if saw_sections && section.as_deref() != Some(profile) {
            continue;
        }
        let k = k
            .trim()
            .trim_start_matches("export ")
            .trim()
            .to_ascii_lowercase();
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v)
            .to_string();
        match k.as_str() {
            "aws_access_key_id" | "access_key_id" | "access_key" => access = Some(v),
            "aws_secret_access_key" | "secret_access_key" | "secret_key" => secret = Some(v),
            "aws_session_token" | "session_token" => token = Some(v),
            _ => {} // other keys (region, output...) are not ours
        }
    }
    match (access, secret) {
        (Some(a), Some(s)) if !a.is_empty() && !s.is_empty() => Ok(Credentials {
            access_key: a,
            secret_key: s,
            session_token: token.filter(|t| !t.is_empty()),
        }),
        _ if saw_sections => Err(format!(
            "profile [{profile}] needs aws_access_key_id and aws_secret_access_key"
        )),
        _ => Err("needs an access key id and a secret access key".to_string()),
    }
}

/// The file `glidefs init` writes: every key, commented, at its default.
pub const DEFAULT_CONFIG: &str = include_str!("config_default.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_default() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn default_template_parses_to_defaults() {
        assert_eq!(
            Config::from_toml(DEFAULT_CONFIG).unwrap(),
            Config::default()
        );
        // And with every commented line un-commented.
        let uncommented: String = DEFAULT_CONFIG
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| {
                        r.split_once(" = ").is_some_and(|(k, _)| !k.contains(' '))
                            || (r.starts_with('[') && r.ends_with(']'))
                    })
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let cfg = Config::from_toml(&uncommented).unwrap();
        let enc = cfg.store.encryption.as_ref().unwrap();
        assert_eq!(enc.key_file, PathBuf::from("glidefs-master-key"));
        assert_eq!(cfg.cache, CacheConfig::default());
        assert_eq!(cfg.api, ApiConfig::default());
    }

    #[test]
    fn default_store_url_is_under_cache_dir() {
        let cfg = Config::from_toml("[cache]\ndir = \"/srv/g\"").unwrap();
        assert_eq!(cfg.store_url(), "file:///srv/g/store");
    }

    #[test]
    fn store_urls() {
        use crate::store::StoreUrl;
        let parse_store_url = |s| StoreUrl::parse(s).map_err(|e| e.to_string());
        assert_eq!(
            parse_store_url("file:///a/b"),
            Ok(StoreUrl::Local("/a/b".into()))
        );
        assert_eq!(
            parse_store_url("s3://my-bucket/a/b/"),
            Ok(StoreUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            })
        );
        for bad in [
            "file://rel",
            "file:///a/../b",
            "s3://",
            "s3://UP",
            "s3://b/../x",
            "http://x",
            "s3://bk/p@q",
        ] {
            assert!(parse_store_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_listen("127.0.0.1:1"),
            Ok(Listen::Tcp("127.0.0.1:1".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("[::1]:80"),
            Ok(Listen::Tcp("[::1]:80".parse().unwrap()))
        );
        assert_eq!(
            parse_listen("/run/g.sock"),
            Ok(Listen::Unix("/run/g.sock".into()))
        );
        assert_eq!(
            parse_listen("unix:/run/g.sock"),
            Ok(Listen::Unix("/run/g.sock".into()))
        );
        assert!(parse_listen("unix:rel").is_err());
        assert!(parse_listen("localhost").is_err());
    }

    #[test]
    fn credentials_formats() {
        let aws = "[other]\naws_access_key_id = X\n[default]\naws_access_key_id = AK\naws_secret_access_key = \"SK\"\n";
        let c = parse_credentials(aws, "default").unwrap();
        assert_eq!((c.access_key.as_str(), c.secret_key.as_str()), ("AK", "SK"));
        let env = "# comment\nAWS_ACCESS_KEY_ID=AK\nexport AWS_SECRET_ACCESS_KEY='SK'\nAWS_SESSION_TOKEN=T\n";
        let c = parse_credentials(env, "default").unwrap();
        assert_eq!(c.session_token.as_deref(), Some("T"));
        assert_eq!(c.secret_key, "SK");
        let err = parse_credentials("[default]\naws_access_key_id = SECRETVALUE\n", "default")
            .unwrap_err();
        assert!(!err.contains("SECRETVALUE"));
        let err = parse_credentials("garbage SECRETVALUE\n", "default").unwrap_err();
        assert!(!err.contains("SECRETVALUE"), "{err}");
        assert!(!format!("{c:?}").contains("SK"));
    }

    #[test]
    fn credentials_from_env_and_file() {
        let store = StoreConfig::default();
        let none = resolve_credentials(&store, &|_| None).unwrap();
        assert!(none.is_none());
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AK".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("SK".to_string()),
            _ => None,
        };
        assert_eq!(
            resolve_credentials(&store, &env)
                .unwrap()
                .unwrap()
                .access_key,
            "AK"
        );
        let half = |k: &str| (k == "AWS_ACCESS_KEY_ID").then(|| "AK".to_string());
        assert!(resolve_credentials(&store, &half).is_err());

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("s3"),
            "access_key_id=FK\nsecret_access_key=FS\n",
        )
        .unwrap();
        let store = StoreConfig {
            credentials_file: Some("s3".into()),
            ..Default::default()
        };
        let d = dir.path().display().to_string();
        let env = move |k: &str| (k == "CREDENTIALS_DIRECTORY").then(|| d.clone());
        assert_eq!(
            resolve_credentials(&store, &env)
                .unwrap()
                .unwrap()
                .access_key,
            "FK"
        );
        let store = StoreConfig {
            credentials_file: Some("/nonexistent/x".into()),
            ..Default::default()
        };
        assert!(matches!(
            resolve_credentials(&store, &|_| None),
            Err(ConfigError::Credentials { .. })
        ));
    }
}
