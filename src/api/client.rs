//! A minimal blocking HTTP/1.1 client for the CLI (and tests): one request per
//! connection (`Connection: close`), over TCP or a unix socket. Handles
//! `Content-Length`, chunked and read-to-EOF bodies. Names are percent-encoded
//! into the path, so no input can alter the request line.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Client errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The `--api` value is not understood.
    #[error("invalid API address {0:?}: use http://host:port, unix:/path or /path")]
    Address(String),
    /// Connecting, sending or receiving failed.
    #[error("cannot reach the glidefs API at {addr}: {source}")]
    Io {
        /// The address.
        addr: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The response is not valid HTTP.
    #[error("bad response from {addr}: {message}")]
    Protocol {
        /// The address.
        addr: String,
        /// What is wrong.
        message: String,
    },
}

/// Where the API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `host:port`.
    Tcp(String),
    /// Unix socket path.
    Unix(PathBuf),
}

impl Endpoint {
    /// Parse `http://host:port[/]`, `host:port`, `unix:/path` or `/path`.
    pub fn parse(s: &str) -> Result<Endpoint, ClientError> {
        if let Some(p) = s.strip_prefix("unix:") {
            let p = p.strip_prefix("//").unwrap_or(p);
            if p.starts_with('/') {
                return Ok(Endpoint::Unix(p.into()));
            }
            return Err(ClientError::Address(s.into()));
        }
        if s.starts_with('/') {
            return Ok(Endpoint::Unix(s.into()));
        }
        if s.starts_with("https://") {
            return Err(ClientError::Address(format!(
                "{s} (https is not supported; the API is plain HTTP)"
            )));
        }
        let hostport = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
        if hostport.is_empty() || hostport.contains('/') || !hostport.contains(':') {
            return Err(ClientError::Address(s.into()));
        }
        Ok(Endpoint::Tcp(hostport.to_string()))
    }

    fn describe(&self) -> String {
        match self {
            Endpoint::Tcp(a) => format!("http://{a}"),
            Endpoint::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: String,
}

impl Response {
    /// The `error` field of a JSON error body, else the raw body.
    pub fn error_message(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| self.body.trim().to_string())
    }
}

/// Percent-encode a path segment (everything but unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A client for one API endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    timeout: Option<Duration>,
}

impl Client {
    /// A client; `timeout` bounds each read/write (`None`: wait forever, for drains).
    pub fn new(endpoint: Endpoint, timeout: Option<Duration>) -> Client {
        Client { endpoint, timeout }
    }

    fn connect(&self) -> Result<Box<dyn Stream>, std::io::Error> {
        match &self.endpoint {
            Endpoint::Tcp(a) => {
                let addr = a.to_socket_addrs()?.next().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
                })?;
                let s = match self.timeout {
                    Some(t) => TcpStream::connect_timeout(&addr, t)?,
                    None => TcpStream::connect(addr)?,
                };
                s.set_read_timeout(self.timeout)?;
                s.set_write_timeout(self.timeout)?;
                Ok(Box::new(s))
            }
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(self.timeout)?;
                s.set_write_timeout(self.timeout)?;
                Ok(Box::new(s))
            }
        }
    }

    /// Send `method path` with an optional JSON body; any status is returned as is.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Response, ClientError> {
        self.request_raw(method, path, body.map(str::as_bytes))
    }

    /// Like [`Client::request`] with arbitrary body bytes (tests send malformed JSON).
    pub fn request_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let addr = self.endpoint.describe();
        let io = |source| ClientError::Io {
            addr: addr.clone(),
            source,
        };
        let mut s = self.connect().map_err(io)?;
        let body = body.unwrap_or(b"");
        // The API answers only Host names it knows (DNS-rebinding guard): name the
        // address we connect to; a unix socket has none.
        let host = match &self.endpoint {
            Endpoint::Tcp(a) => a.as_str(),
            Endpoint::Unix(_) => "localhost",
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).map_err(io)?;
        s.write_all(body).map_err(io)?;
        s.flush().map_err(io)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(io)?;
        parse_response(&raw).map_err(|message| ClientError::Protocol { addr, message })
    }
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no header terminator")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "non-UTF-8 header")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut chunked, mut length) = (false, None);
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
        }
    }
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or("body shorter than Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk header")?;
        let size_s = std::str::from_utf8(&b[..eol]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_s.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or("truncated chunk")?);
        b = b.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:8080").unwrap(),
            Endpoint::Tcp("127.0.0.1:8080".into())
        );
        assert_eq!(
            Endpoint::parse("http://[::1]:80/").unwrap(),
            Endpoint::Tcp("[::1]:80".into())
        );
        assert_eq!(
            Endpoint::parse("127.0.0.1:1").unwrap(),
            Endpoint::Tcp("127.0.0.1:1".into())
        );
        assert_eq!(
            Endpoint::parse("unix:/run/g.sock").unwrap(),
            Endpoint::Unix("/run/g.sock".into())
        );
        assert_eq!(
            Endpoint::parse("/run/g.sock").unwrap(),
            Endpoint::Unix("/run/g.sock".into())
        );
        for bad in [
            "",
            "http://",
            "unix:rel",
            "https://x:1",
            "http://h:1/api",
            "nohost",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses() {
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 17\r\n\r\n{\"error\":\"gone\"}\nXX",
        )
        .unwrap();
        assert_eq!((r.status, r.error_message().as_str()), (404, "gone"));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, "abcde");
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn encoding() {
        assert_eq!(encode_segment("vm-1.a_b"), "vm-1.a_b");
        assert_eq!(encode_segment("../x y"), "..%2Fx%20y");
    }
}
