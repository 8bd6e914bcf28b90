//! redrec router: the public HTTP API. Routes items to shards by slot, turns a user's
//! cross-scenario history into query vectors, fans them out to every shard and merges.

pub mod api;
pub mod cluster;
pub mod config;
pub mod error;
pub mod fanout;
pub mod ingest;
pub mod merge;
pub mod recommend;
pub mod server;
pub use redrec_shard::slots;
pub mod user_cache;

pub use config::RouterConfig;
pub use server::{app, RouterState};
