//! Where a restoring replica gets a snapshot's points: the leader's live shard, page by
//! page, through the shard client (`POST /v1/groups/{g}/scroll`).

use std::sync::Arc;
use std::time::Duration;

use redrec_shard_api::points::StoredPoint;
use redrec_shard_api::users::Keyspace;
use redrec_shard_api::ShardClient;

/// Receives one page of a snapshot's points.
pub type Sink<'a> = dyn FnMut(Vec<StoredPoint>) -> Result<(), String> + 'a;

/// Where nodes listen, by node id.
pub type AddressBook = Arc<dyn Fn(u64) -> Option<String> + Send + Sync>;

pub trait SnapshotSource: Send + Sync + 'static {
    /// Streams group `group`'s points of `keyspace` from its replica on node `from`, page
    /// by page, into `sink`. Called on the replica's driver thread, which it may block.
    fn pull(
        &self,
        group: u64,
        from: u64,
        keyspace: Keyspace,
        sink: &mut Sink,
    ) -> Result<(), String>;
}

/// Points per page of a snapshot transfer.
const PAGE: usize = 1024;
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Pulls from the other nodes over HTTP.
pub struct PeerSource {
    pub http: reqwest::Client,
    pub runtime: tokio::runtime::Handle,
    pub peers: AddressBook,
}

impl SnapshotSource for PeerSource {
    fn pull(
        &self,
        group: u64,
        from: u64,
        keyspace: Keyspace,
        sink: &mut Sink,
    ) -> Result<(), String> {
        let addr = (self.peers)(from).ok_or_else(|| format!("no address for node {from}"))?;
        let client = ShardClient::replica(addr, group, self.http.clone());
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .runtime
                .block_on(client.scroll(keyspace, cursor, PAGE, None, PAGE_TIMEOUT))
                .map_err(|e| e.to_string())?;
            sink(page.points)?;
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(()),
            }
        }
    }
}

/// No source: a replica that is never sent a snapshot (tests of one machine).
#[cfg(test)]
pub struct NoSource;

#[cfg(test)]
impl SnapshotSource for NoSource {
    fn pull(&self, group: u64, from: u64, _: Keyspace, _sink: &mut Sink) -> Result<(), String> {
        Err(format!(
            "no snapshot source for group {group} on node {from}"
        ))
    }
}
