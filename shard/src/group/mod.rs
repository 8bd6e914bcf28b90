//! A shard group's replica: its state machine (committed writes applied to the Qdrant
//! shard, in log order, with the slots it serves), where snapshots come from, and the
//! factory a node opens its shard replicas with.

pub mod machine;
pub mod snapshot;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

use machine::StateMachine;
use snapshot::{AddressBook, PeerSource};

use redrec_shard_api::collection::Collection;

use crate::raft::machine::MachineError;
use crate::store::edge::EdgeStore;
use crate::store::VectorStore;

/// Opens the replicas of shard groups a node hosts.
pub trait GroupFactory: Send + Sync + 'static {
    /// Opens (blocking) the replica of group `group` kept in `dir`, its shard under
    /// `collection`; `peers` says where the other nodes listen, for snapshot pulls.
    fn open(
        &self,
        group: u64,
        dir: &Path,
        collection: &Collection,
        peers: AddressBook,
    ) -> Result<StateMachine, MachineError>;
}

/// Replicas over embedded Qdrant shards (`dir/shard`), snapshots pulled over HTTP.
pub struct EdgeGroups {
    pub dim: usize,
    pub http: reqwest::Client,
    pub runtime: tokio::runtime::Handle,
}

impl GroupFactory for EdgeGroups {
    fn open(
        &self,
        group: u64,
        dir: &Path,
        collection: &Collection,
        peers: AddressBook,
    ) -> Result<StateMachine, MachineError> {
        let store: Arc<dyn VectorStore> =
            Arc::new(EdgeStore::open(&dir.join("shard"), self.dim, collection)?);
        let source = Arc::new(PeerSource {
            http: self.http.clone(),
            runtime: self.runtime.clone(),
            peers,
        });
        StateMachine::open(group, store, source, dir)
    }
}
