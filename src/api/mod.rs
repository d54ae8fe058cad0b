//! The HTTP API (JSON, loopback by default), `/metrics`, health endpoints, and the
//! client the CLI uses to talk to it. Reference: docs/operations.md#http-api.
//!
//! - [`handlers`]: routing and handlers as a pure function (testable without sockets);
//! - [`server`]: tiny_http on TCP or a unix socket, a thread per request;
//! - [`hosts`]: the Host-header check (DNS rebinding);
//! - [`client`]: a minimal HTTP/1.1 client over TCP or a unix socket.

pub mod client;
pub mod handlers;
pub mod hosts;
pub mod server;

pub use client::{Client, Endpoint};
pub use handlers::{handle, ApiState, Reply};
pub use hosts::AllowedHosts;
pub use server::{ApiError, ApiServer};
