//! redrec router: the public HTTP API. Routes items to shards by slot, turns a user's
//! cross-scenario history into query vectors, fans them out to every shard and merges.

pub mod api;
pub mod batched;
pub mod cluster;
pub mod config;
pub mod error;
pub mod fanout;
pub mod ingest;
pub mod merge;
pub mod openapi;
pub mod qdrant;
pub mod recommend;
pub mod search;
pub mod serve;
pub mod server;
pub mod state;
pub mod survey;
pub mod user_cache;
pub mod users;

pub use redrec_shard_api::slots;

pub use config::RouterConfig;
pub use serve::{serve, Topology, Towers};
pub use server::app;
pub use state::{RouterInner, RouterState};
