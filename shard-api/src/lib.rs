//! The shard's wire, shared by the shard (which serves it) and everyone who calls it (the
//! router, the meta leader's mover, `redrec cluster`, the benches): request, response and
//! status types, error codes as constants, hash slots, the cluster map and its commands,
//! and [`client`], the one client that calls a node, decodes its errors and follows
//! leaders. Nothing here knows Raft or the storage engine.

pub mod client;
pub mod codes;
pub mod collection;
pub mod faults;
pub mod group;
pub mod map;
pub mod meta;
pub mod points;
pub mod reads;
pub mod slots;
pub mod status;
pub mod users;

pub use client::{ShardClient, ShardClientError};
pub use group::Group;
pub use map::{ClusterMap, MetaCommand, META_GROUP};
