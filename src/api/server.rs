//! The HTTP server: tiny_http on TCP or a unix socket, one dispatcher thread, one
//! short-lived thread per request (at most [`MAX_IN_FLIGHT`]; beyond that a 503), so
//! a slow drain never blocks `/health` or other exports' requests.
//!
//! On TCP, requests whose Host header names another host are refused with 403
//! before anything else runs (DNS rebinding, see [`super::hosts`]).
//!
//! Stopping ([`ApiServer::stop`]) unblocks the listener and joins the dispatcher:
//! no new request is accepted afterwards; requests already running finish.

use super::handlers::{handle, ApiState, Reply, MAX_BODY};
use super::hosts::AllowedHosts;
use crate::config::Listen;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Concurrent requests before new ones get 503.
pub const MAX_IN_FLIGHT: usize = 64;

/// API server errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {message}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
}

/// A running API server.
pub struct ApiServer {
    server: Arc<tiny_http::Server>,
    dispatcher: Option<JoinHandle<()>>,
    addr: String,
    socket: Option<PathBuf>,
}

impl ApiServer {
    /// Bind `listen` and serve `state` until [`ApiServer::stop`], answering the
    /// default Host names ([`super::hosts::DEFAULT_ALLOWED_HOSTS`]).
    pub fn start(listen: &Listen, state: Arc<ApiState>) -> Result<ApiServer, ApiError> {
        let defaults: Vec<String> = super::hosts::DEFAULT_ALLOWED_HOSTS
            .iter()
            .map(|s| s.to_string())
            .collect();
        ApiServer::start_with_hosts(listen, AllowedHosts::new(&defaults, listen), state)
    }

    /// Bind `listen` and serve `state`, answering only requests whose Host header
    /// `allowed` accepts (others get 403).
    pub fn start_with_hosts(
        listen: &Listen,
        allowed: AllowedHosts,
        state: Arc<ApiState>,
    ) -> Result<ApiServer, ApiError> {
        let bind_err = |m: String| ApiError::Bind {
            addr: listen.to_string(),
            message: m,
        };
        let (server, socket) = match listen {
            Listen::Tcp(a) => (
                tiny_http::Server::http(a).map_err(|e| bind_err(e.to_string()))?,
                None,
            ),
            Listen::Unix(p) => {
                if p.exists() {
                    // A live daemon answers on it; a stale file from a crash does not.
                    if std::os::unix::net::UnixStream::connect(p).is_ok() {
                        return Err(bind_err("socket is in use by another process".into()));
                    }
                    std::fs::remove_file(p).map_err(|e| bind_err(e.to_string()))?;
                }
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| bind_err(e.to_string()))?;
                }
                (
                    tiny_http::Server::http_unix(p).map_err(|e| bind_err(e.to_string()))?,
                    Some(p.clone()),
                )
            }
        };
        let addr = match server.server_addr() {
            tiny_http::ListenAddr::IP(a) => a.to_string(),
            tiny_http::ListenAddr::Unix(_) => listen.to_string(),
        };
        let server = Arc::new(server);
        let srv = server.clone();
        let dispatcher = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || dispatch(srv, state, Arc::new(allowed)))
            .map_err(|e| bind_err(e.to_string()))?;
        Ok(ApiServer {
            server,
            dispatcher: Some(dispatcher),
            addr,
            socket,
        })
    }

    /// The bound address (`ip:port` with the real port, or `unix:/path`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Stop accepting requests.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.server.unblock();
        if let Some(d) = self.dispatcher.take() {
            let _ = d.join();
        }
        if let Some(p) = self.socket.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn dispatch(server: Arc<tiny_http::Server>, state: Arc<ApiState>, allowed: Arc<AllowedHosts>) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    // `recv` returns an error once `unblock` is called.
    while let Ok(req) = server.recv() {
        if in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            respond(req, Reply::error(503, "too many concurrent requests"));
            continue;
        }
        let (st, inf, al) = (state.clone(), in_flight.clone(), allowed.clone());
        let spawned = std::thread::Builder::new()
            .name("api-req".into())
            .spawn(move || {
                serve(&st, &al, req);
                inf.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            tracing::error!(error = %e, "cannot spawn request thread");
        }
    }
}

fn serve(state: &ApiState, allowed: &AllowedHosts, mut req: tiny_http::Request) {
    let method = req.method().as_str().to_ascii_uppercase();
    let url = req.url().to_string();
    let host = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Host"))
        .map(|h| h.value.as_str().to_string());
    if let Err(msg) = allowed.check(host.as_deref()) {
        tracing::warn!(%method, %url, host = host.as_deref().unwrap_or(""), "api request for a Host that is not allowed refused");
        respond(req, Reply::error(403, msg));
        return;
    }
    let mut body = Vec::new();
    let read = req
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body);
    let reply = match read {
        Err(e) => Reply::error(400, format!("cannot read request body: {e}")),
        Ok(_) if body.len() > MAX_BODY => {
            Reply::error(413, format!("request body larger than {MAX_BODY} bytes"))
        }
        Ok(_) => handle(state, &method, &url, &body),
    };
    if reply.status >= 400 {
        tracing::info!(%method, %url, status = reply.status, "api request rejected");
    } else if method != "GET" {
        tracing::info!(%method, %url, status = reply.status, "api request");
    }
    respond(req, reply);
}

fn respond(req: tiny_http::Request, reply: Reply) {
    let mut resp = tiny_http::Response::from_string(reply.body).with_status_code(reply.status);
    if let Ok(h) =
        tiny_http::Header::from_bytes(&b"Content-Type"[..], reply.content_type.as_bytes())
    {
        resp = resp.with_header(h);
    }
    if let Some(allow) = reply.allow {
        if let Ok(h) = tiny_http::Header::from_bytes(&b"Allow"[..], allow.as_bytes()) {
            resp = resp.with_header(h);
        }
    }
    if let Err(e) = req.respond(resp) {
        tracing::debug!(error = %e, "client went away before the response");
    }
}
