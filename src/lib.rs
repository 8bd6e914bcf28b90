//! What the `redrec` binary's commands share with the tests: the local-cluster launcher
//! ([`launch`]) and the datasets ([`dataset`]).

pub mod dataset;
pub mod launch;
