//! S3 settings: [`StoreOptions`] merged with the standard AWS environment variables
//! (options win; the session token from the environment only pairs with keys from
//! the environment). No secrets in errors.

use crate::store::options::StoreOptions;
use crate::store::StoreError;

/// Default region when neither the options nor the environment name one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Settings after merging [`StoreOptions`] with the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resolved {
    pub(super) endpoint: Option<String>,
    pub(super) region: String,
    pub(super) path_style: bool,
    pub(super) access_key: String,
    pub(super) secret_key: String,
    pub(super) session_token: Option<String>,
}

/// Merge options with the standard AWS environment variables (options win).
pub(super) fn resolve(
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
}
