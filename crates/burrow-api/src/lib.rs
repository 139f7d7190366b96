//! Wire types of the Burrow REST API (`shared/api.md`), shared by burrowd, the typed client
//! and the CLI, plus the OpenAPI document that describes them.
//!
//! This crate owns shapes and input validation of names and of sandbox resources
//! ([`limits`]). It never performs I/O.

#![forbid(unsafe_code)]

pub mod limits;
mod names;
mod types;

pub use limits::{OutOfRange, Resources, check_resources};
pub use names::{CheckpointId, NameError, SandboxName};
pub use types::*;

/// The OpenAPI document of the API this build serves.
pub const OPENAPI_YAML: &str = include_str!("../openapi.yaml");

/// Version of the Burrow build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
