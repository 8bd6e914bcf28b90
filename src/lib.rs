//! What the `redrec` binary's commands share with the tests: the local-cluster launcher
//! ([`launch`]), Qdrant servers on loopback ([`qdrant_server`]) and the datasets
//! ([`dataset`]).

pub mod dataset;
pub mod launch;
pub mod qdrant_server;
