//! Raft replication (raft-rs), generic over what is replicated: the durable log, the
//! driver that moves each Ready between log, state machine and transport, the transport
//! between nodes, and the [`machine::Machine`] trait a replicated state machine
//! implements. Nothing here knows shards, slots or the cluster map.

pub mod driver;
pub mod log;
pub mod machine;
pub mod replica;
pub mod transport;
