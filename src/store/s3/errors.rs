//! Mapping rust-s3 errors and responses to [`StoreError`] and plain etags.
//!
//! 404 → `NotFound` (`PreconditionFailed` on a conditional put); 412, and 409 on a
//! conditional put (`ConditionalRequestConflict`) → `PreconditionFailed`;
//! 5xx/408/429, timeouts and connection errors → `Unavailable`; 501 on a conditional
//! put → `ConditionalUnsupported`; anything else → `Other` (with the S3 error code).

use crate::store::StoreError;
use s3::error::S3Error;

/// A short, secret-free description of an S3 error body: its `<Code>` and `<Message>`.
pub(super) fn summarize(body: &str) -> String {
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
pub(super) fn map_err(e: S3Error, key: &str, conditional: bool) -> StoreError {
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

pub(super) fn unquote(etag: &str) -> String {
    etag.trim().trim_matches('"').to_owned()
}

pub(super) fn header<'a>(
    headers: &'a std::collections::HashMap<String, String>,
    name: &str,
) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
