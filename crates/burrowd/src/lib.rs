//! burrowd's HTTP layer: parses requests into calls on `burrow_core::Manager`, maps every
//! error to a status in one place (`api::error`), and serves the same router on a unix
//! socket (no token, root only) and on TCP (bearer token).
//!
//! Nothing here decides policy or touches disks and runtimes: that is the core's job.

pub mod api;
pub mod egress;

pub use api::{AppState, Transport, router};
