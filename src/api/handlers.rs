//! Request routing and handlers of the HTTP API, as a pure function of
//! (method, path, body) → response, so they can be tested without sockets.
//!
//! Endpoints (docs/operations.md#http-api):
//! `PUT|GET|DELETE /api/exports/{name}` (PUT with `"from": "volume@snapshot"`
//! makes a fork), `GET /api/exports`,
//! `POST /api/exports/{name}/drain`, `POST|GET /api/exports/{name}/snapshots`,
//! `DELETE /api/exports/{name}/snapshots/{snap}`, `GET /health`, `GET /health/ready`, `GET /metrics`.
//!
//! Invariants: every error is JSON `{"error": "..."}` with a 4xx/5xx status chosen
//! from the router's [`ErrorKind`]; input is validated before anything is changed;
//! the raw (undecoded) path segment is the name, so `%2e%2e` or `/` never become a
//! name — they fail validation.

use crate::metrics::Metrics;
use crate::router::{ErrorKind, PutOutcome, Router, RouterError};
use crate::size::ByteSize;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
    /// `Allow` header for 405 replies.
    pub allow: Option<&'static str>,
}

impl Reply {
    fn json(status: u16, v: serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: v.to_string() + "\n",
            allow: None,
        }
    }

    /// A JSON error reply.
    pub fn error(status: u16, msg: impl Into<String>) -> Reply {
        Reply::json(status, json!({ "error": msg.into() }))
    }

    fn method_not_allowed(allow: &'static str) -> Reply {
        Reply {
            allow: Some(allow),
            ..Reply::error(405, format!("method not allowed; use {allow}"))
        }
    }
}

/// HTTP status for an error kind.
pub fn status_of(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::Invalid => 400,
        ErrorKind::NotFound => 404,
        ErrorKind::Conflict => 409,
        ErrorKind::Limit => 507,
        ErrorKind::Unavailable => 503,
        ErrorKind::Internal => 500,
    }
}

fn router_error(e: RouterError) -> Reply {
    let status = status_of(e.kind());
    if status >= 500 {
        tracing::warn!(error = %e, status, "request failed");
    }
    Reply::error(status, e.to_string())
}

/// What the handlers need.
pub struct ApiState {
    /// The export router.
    pub router: Arc<Router>,
    /// Metrics to render on `/metrics`.
    pub metrics: Arc<Metrics>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    size: Option<ByteSize>,
    size_bytes: Option<u64>,
    /// `"volume@snapshot"`: make the export a fork of that snapshot.
    from: Option<String>,
}

/// What a PUT asks for: a size (0: the snapshot's, for a fork) and maybe a fork.
struct PutRequest {
    size: u64,
    from: Option<(String, String)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    name: String,
}

/// `/api/exports/{name}/snapshots[/{snap}]`.
fn snapshot_route(state: &ApiState, method: &str, name: &str, snap: &str, body: &[u8]) -> Reply {
    let r = &state.router;
    match (method, snap) {
        ("POST", "") => {
            let b: SnapshotBody = match serde_json::from_slice(body) {
                Ok(b) => b,
                Err(e) => {
                    return Reply::error(
                        400,
                        format!("invalid JSON body (want {{\"name\": \"s1\"}}): {e}"),
                    )
                }
            };
            match smol::block_on(r.snapshot(name, &b.name)) {
                Ok(info) => Reply::json(201, json!(info)),
                Err(e) => router_error(e),
            }
        }
        ("GET", "") => match smol::block_on(r.snapshots(name)) {
            Ok(list) => Reply::json(200, json!(list)),
            Err(e) => router_error(e),
        },
        ("DELETE", s) if !s.is_empty() => match smol::block_on(r.delete_snapshot(name, s)) {
            Ok(()) => Reply::json(200, json!({ "deleted": s, "export": name })),
            Err(e) => router_error(e),
        },
        (_, "") => Reply::method_not_allowed("GET, POST"),
        _ => Reply::method_not_allowed("DELETE"),
    }
}

fn parse_put_body(body: &[u8]) -> Result<PutRequest, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Reply::error(
            400,
            "missing JSON body: {\"size\": \"10G\"}, {\"size_bytes\": N} or {\"from\": \"volume@snapshot\"}",
        ));
    }
    let b: PutBody = serde_json::from_slice(body)
        .map_err(|e| Reply::error(400, format!("invalid JSON body: {e}")))?;
    let from = match &b.from {
        None => None,
        Some(f) => match f.split_once('@') {
            Some((v, s)) if !v.is_empty() && !s.is_empty() => Some((v.to_owned(), s.to_owned())),
            _ => {
                return Err(Reply::error(
                    400,
                    format!("\"from\" must be \"volume@snapshot\", not {f:?}"),
                ))
            }
        },
    };
    let size = match (b.size, b.size_bytes) {
        (Some(s), None) => s.0,
        (None, Some(n)) => n,
        (Some(_), Some(_)) => {
            return Err(Reply::error(
                400,
                "give either \"size\" or \"size_bytes\", not both",
            ))
        }
        (None, None) if from.is_some() => 0,
        (None, None) => {
            return Err(Reply::error(
                400,
                "missing \"size\" (e.g. \"10G\") or \"size_bytes\"",
            ))
        }
    };
    Ok(PutRequest { size, from })
}

/// Parse `purge=true|false` and `force=true|false` (the only query parameters, and
/// only on DELETE).
fn parse_delete_query(query: Option<&str>) -> Result<(bool, bool), Reply> {
    let (mut purge, mut force) = (false, false);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "purge" => &mut purge,
            "force" => &mut force,
            _ => {
                return Err(Reply::error(
                    400,
                    format!("unknown query parameter {pair:?}"),
                ))
            }
        };
        *slot = match value {
            "true" | "1" => true,
            "false" | "0" => false,
            v => {
                return Err(Reply::error(
                    400,
                    format!("{key} must be true or false, got {v:?}"),
                ))
            }
        };
    }
    Ok((purge, force))
}

/// Handle one request. Blocking: runs router operations to completion.
pub fn handle(state: &ApiState, method: &str, url: &str, body: &[u8]) -> Reply {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    if query.is_some() && !(method == "DELETE" && path.starts_with("/api/exports/")) {
        return Reply::error(400, "unexpected query string");
    }
    match path {
        "/health" => match method {
            "GET" | "HEAD" => Reply::json(200, json!({ "status": "ok" })),
            _ => Reply::method_not_allowed("GET"),
        },
        "/health/ready" => match method {
            "GET" | "HEAD" if state.router.is_ready() => {
                Reply::json(200, json!({ "status": "ready" }))
            }
            "GET" | "HEAD" => Reply::error(503, "not ready"),
            _ => Reply::method_not_allowed("GET"),
        },
        "/metrics" => match method {
            "GET" => Reply {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: state.metrics.render(),
                allow: None,
            },
            _ => Reply::method_not_allowed("GET"),
        },
        "/api/exports" => match method {
            "GET" => Reply::json(200, json!({ "exports": state.router.list() })),
            _ => Reply::method_not_allowed("GET"),
        },
        "/api/diverged" => match method {
            "GET" => match state.router.diverged() {
                Ok(list) => Reply::json(200, json!({ "diverged": list })),
                Err(e) => router_error(e),
            },
            _ => Reply::method_not_allowed("GET"),
        },
        "/api/exports/" if method == "GET" => {
            Reply::json(200, json!({ "exports": state.router.list() }))
        }
        _ => match path.strip_prefix("/api/exports/") {
            Some(rest) => export_route(state, method, rest, query, body),
            None => Reply::error(404, format!("no such endpoint: {path}")),
        },
    }
}

fn export_route(
    state: &ApiState,
    method: &str,
    rest: &str,
    query: Option<&str>,
    body: &[u8],
) -> Reply {
    if let Some((name, tail)) = rest.split_once("/snapshots") {
        if tail.is_empty() || tail.starts_with('/') {
            return snapshot_route(state, method, name, tail.trim_start_matches('/'), body);
        }
    }
    if let Some(name) = rest.strip_suffix("/drain") {
        return match method {
            "POST" => match smol::block_on(state.router.drain(name)) {
                Ok(info) => Reply::json(200, json!(info)),
                Err(e) => router_error(e),
            },
            _ => Reply::method_not_allowed("POST"),
        };
    }
    let name = rest;
    match method {
        "GET" => match state.router.get(name) {
            Ok(info) => Reply::json(200, json!(info)),
            Err(e) => router_error(e),
        },
        "PUT" => {
            // Validate the name before the body, so a bad name is always a 400 about it.
            if let Err(m) = crate::rules::validate_name(name) {
                return Reply::error(400, m);
            }
            let req = match parse_put_body(body) {
                Ok(s) => s,
                Err(r) => return r,
            };
            let r = match &req.from {
                Some((parent, snap)) => {
                    smol::block_on(state.router.fork(name, parent, snap, req.size))
                }
                None => smol::block_on(state.router.put(name, req.size)),
            };
            match r {
                Ok((info, outcome)) => {
                    let status = match outcome {
                        PutOutcome::Created | PutOutcome::Woken => 201,
                        _ => 200,
                    };
                    Reply::json(status, json!(info))
                }
                Err(e) => router_error(e),
            }
        }
        "DELETE" => {
            let (purge, force) = match parse_delete_query(query) {
                Ok(p) => p,
                Err(r) => return r,
            };
            match smol::block_on(state.router.delete(name, purge, force)) {
                Ok(()) => Reply::json(200, json!({ "deleted": name, "purged": purge })),
                Err(e) => router_error(e),
            }
        }
        _ => Reply::method_not_allowed("GET, PUT, DELETE"),
    }
}
