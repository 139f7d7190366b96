//! The sandbox manager: the one transport-neutral entry point that burrowd's HTTP layer,
//! in-process tests and (later) other front ends call. It owns the lifecycle state machine,
//! the SQLite state store, images, reconciliation after a restart, and exec through the
//! agent channel.
//!
//! It never parses HTTP and never shells out to runc or btrfs itself: engines own
//! isolation, the pool owns disks.

pub mod build;
mod checkpoints;
pub mod config;
pub mod connect;
mod daemon;
pub mod engines;
pub mod error;
pub mod events;
mod exec;
pub mod fault;
pub mod files;
pub mod idle;
pub mod images;
pub mod keys;
mod manager;
pub mod network;
pub mod oci;
mod prestart;
mod reroot;
mod runtime;
pub mod services;
mod sessions;
pub mod state;
pub mod store;
mod time_util;
mod wake;
mod watch;

pub use checkpoints::CheckpointSource;
pub use config::Config;
pub use connect::Tunnel;
pub use daemon::{open, spawn_background};
pub use error::{CoreError, ErrorKind};
pub use exec::{Collected, ExecSession, MAX_EXEC_ARGS_BYTES, SessionEvent, StreamExecOptions, output_cap};
pub use files::{FileStream, WriteOptions};
pub use manager::{InsideApiServer, Manager};
pub use sessions::AttachedSession;
