//! Raft replication of shard groups (raft-rs): the durable log here, apart from the state
//! machine (the Qdrant shard) and the driver that moves Readies between them.

pub mod driver;
pub mod log;
pub mod machine;
pub mod node;
pub mod transport;
