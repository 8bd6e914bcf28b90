//! The meta group: a Raft group on the cluster's seed nodes replicating the cluster map
//! ([`machine`]), and the meta leader's worker that carries the map's intentions out,
//! forming groups and moving slots ([`mover`]).

pub mod machine;
pub mod mover;
