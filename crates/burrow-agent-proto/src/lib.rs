//! The agent channel protocol: gRPC (tonic/prost) over one byte stream per sandbox.
//!
//! This crate owns the wire types and the protocol version only. It must never contain
//! host or agent logic, so that both sides (and both engines) share it unchanged.

#![allow(missing_docs)]

/// Generated code for `burrow.agent.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, clippy::nursery)]
    tonic::include_proto!("burrow.agent.v1");
}

pub mod client;

pub use client::{ConnectError, Connection, connect, connect_unix};
pub use v1::agent_client::AgentClient;
pub use v1::agent_server::{Agent, AgentServer};

/// The protocol version this build speaks. Bump on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// The oldest agent protocol a host of this build still talks to.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Largest message either side accepts on the channel. Output chunks are far smaller;
/// this bounds what a hostile agent can make the host allocate for one message.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
