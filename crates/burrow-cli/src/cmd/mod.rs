//! One module per group of commands.

pub mod checkpoints;
pub mod cp;
pub mod exec;
pub mod images;
pub mod ingress;
pub mod mcp;
pub mod network;
pub mod sandbox;
pub mod services;
pub mod sessions;
pub mod version;
