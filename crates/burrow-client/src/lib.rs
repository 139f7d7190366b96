//! Typed client of the Burrow REST API (`shared/api.md`).
//!
//! It talks to burrowd over its unix socket (no token) or over TCP (bearer token), maps the error
//! envelope to [`ClientError::Api`], and runs interactive exec sessions over WebSocket
//! ([`ExecStream`]). It owns transport and wire mapping only: no terminal handling, no printing,
//! no CLI concerns.

#![forbid(unsafe_code)]

mod client;
mod error;
mod exec_stream;
mod files;
mod ingress;
pub mod paths;
mod sessions;
mod transport;

pub use burrow_api as api;
pub use client::Client;
pub use error::ClientError;
pub use exec_stream::{ExecEvent, ExecOutput, ExecReceiver, ExecSender, ExecStream, ExecStreamOptions};
pub use files::{ByteStream, WriteFileOptions};
pub use hyper::Method;
pub use ingress::{PortRelay, RelayStats};
pub use transport::{DEFAULT_SOCKET, Target};
