//! redrec shard: a lone embedded Qdrant shard behind an internal HTTP API, or a node
//! hosting Raft-replicated shard groups and the meta group that keeps the cluster map.
//!
//! Layers, each using only those above it: [`store`] (the Qdrant engine), [`raft`]
//! (generic replication), [`group`] (a shard group's state machine over a store) and
//! [`meta`] (the map's machine and the mover), [`node`] (hosting replicas), [`server`]
//! (the HTTP API), and [`serve`] (a role's start-up). The wire types and the client are
//! in `redrec-shard-api`.

pub mod budget;
pub mod faults;
pub mod group;
pub mod logs;
pub mod meta;
pub mod node;
pub mod raft;
pub mod serve;
pub mod server;
pub mod store;
pub mod users;

pub use redrec_shard_api::slots;
pub use serve::{serve, ShardConfig};
