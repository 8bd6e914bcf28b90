//! redrec shard: one embedded Qdrant shard on disk behind an internal HTTP API.

pub mod api;
pub mod client;
pub mod meta;
pub mod raft;
pub mod server;
pub mod slots;
pub mod store;
