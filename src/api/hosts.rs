//! The Host-header check that keeps DNS rebinding out of the API.
//!
//! A web page on `evil.example` can make its name resolve to 127.0.0.1 and then send
//! requests to the loopback API from the victim's browser: the browser believes it
//! talks to `evil.example`, and says so in the `Host` header. The API has no
//! authentication, so on TCP it answers only requests whose Host names it
//! (`api.allowed_hosts`, default `localhost`, `127.0.0.1`, `[::1]`, plus always the
//! host part of `api.listen`), with or without a port; anything else gets 403 naming
//! the refused Host. A request without a Host header is not a browser's and passes.
//! Unix sockets are out of a browser's reach and are not checked.
//! See docs/operations.md (`[api]`).

use crate::config::Listen;

/// Which Host header values the API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    /// Lowercased names (`host` or `host:port`, IPv6 in brackets); `None`: any.
    names: Option<Vec<String>>,
}

/// The names allowed when `api.allowed_hosts` is not set.
pub const DEFAULT_ALLOWED_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Check one `api.allowed_hosts` entry: `*`, or a host name or IP address (IPv6 in
/// brackets), optionally with `:port`.
pub fn validate_entry(e: &str) -> Result<(), String> {
    if e == "*" {
        return Ok(());
    }
    if split(&e.to_ascii_lowercase()).is_some() {
        Ok(())
    } else {
        Err(format!(
            "expected a host name or IP address (IPv6 in brackets), optionally with :port, or \"*\"; got {e:?}"
        ))
    }
}

/// `host[:port]` → host, or None when malformed.
fn split(v: &str) -> Option<&str> {
    let (host, port) = if v.starts_with('[') {
        let end = v.find(']')?;
        let rest = &v[end + 1..];
        let port = if rest.is_empty() {
            None
        } else {
            Some(rest.strip_prefix(':')?)
        };
        let inner = &v[1..end];
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        (&v[..=end], port)
    } else {
        match v.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (v, None),
        }
    };
    let host_ok = host.starts_with('[')
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    (host_ok && port_ok).then_some(host)
}

impl AllowedHosts {
    /// Any Host (unix sockets).
    pub fn any() -> AllowedHosts {
        AllowedHosts { names: None }
    }

    /// `configured` (`api.allowed_hosts`, see [`DEFAULT_ALLOWED_HOSTS`]) plus the
    /// host part of `listen`; `*` in the list allows any Host; unix sockets allow any.
    pub fn new(configured: &[String], listen: &Listen) -> AllowedHosts {
        let addr = match listen {
            Listen::Unix(_) => return AllowedHosts::any(),
            Listen::Tcp(a) => a,
        };
        let mut names: Vec<String> = configured.iter().map(|s| s.to_ascii_lowercase()).collect();
        if names.iter().any(|n| n == "*") {
            return AllowedHosts::any();
        }
        names.push(match addr.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        });
        AllowedHosts { names: Some(names) }
    }

    /// Ok when a request with this Host header (None: absent) may be answered, else
    /// the message of the refusal.
    pub fn check(&self, host: Option<&str>) -> Result<(), String> {
        let (Some(names), Some(raw)) = (&self.names, host) else {
            return Ok(());
        };
        let v = raw.trim().to_ascii_lowercase();
        let ok = split(&v).is_some_and(|h| names.iter().any(|n| *n == v || n == h));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "Host {raw:?} is not allowed: this API answers only requests for {} (api.allowed_hosts; a guard against DNS rebinding)",
                names.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<String> {
        DEFAULT_ALLOWED_HOSTS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn tcp(s: &str) -> Listen {
        Listen::Tcp(s.parse().unwrap())
    }

    #[test]
    fn defaults_and_listen_host_with_or_without_port() {
        let a = AllowedHosts::new(&defaults(), &tcp("127.0.0.1:8080"));
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:1",
            "LocalHost",
        ] {
            assert!(a.check(Some(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example",
            "localhost.evil",
            "127.0.0.1.nip.io",
            "[::2]",
            "localhost:x",
            "a:1:2",
            "",
        ] {
            let e = a.check(Some(bad)).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert!(a.check(None).is_ok());
        let v6 = AllowedHosts::new(&["gw.lan".into()], &tcp("[fd00::5]:80"));
        assert!(v6.check(Some("[fd00::5]:80")).is_ok());
        assert!(v6.check(Some("gw.lan")).is_ok());
        assert!(
            v6.check(Some("localhost")).is_err(),
            "a set list replaces the defaults"
        );
    }

    #[test]
    fn star_and_unix_sockets_allow_any() {
        assert_eq!(
            AllowedHosts::new(&["*".into()], &tcp("0.0.0.0:1")),
            AllowedHosts::any()
        );
        let u = AllowedHosts::new(&defaults(), &Listen::Unix("/run/g.sock".into()));
        assert!(u.check(Some("evil.example")).is_ok());
    }

    #[test]
    fn entries_are_validated() {
        for ok in ["*", "localhost", "a.b-c", "[::1]", "10.0.0.1:8080"] {
            assert!(validate_entry(ok).is_ok(), "{ok}");
        }
        for bad in ["", "http://x", "a/b", "::1", "x:", "[]"] {
            assert!(validate_entry(bad).is_err(), "{bad}");
        }
    }
}
