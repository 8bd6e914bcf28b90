//! How a node follows the cluster map: it learns node addresses from it, registers itself
//! in it, and opens the replicas the map places on it; a replica that lost its data asks
//! its group to re-add it.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redrec_shard_api::client::{call_leader, replicas_path, MEMBERSHIP_CALL};
use redrec_shard_api::collection::Collection;
use redrec_shard_api::map::{ClusterMap, MetaCommand};
use redrec_shard_api::meta;
use redrec_shard_api::status::{GroupStatus, MembershipRequest};
use redrec_shard_api::ShardClient;

use super::Node;
use crate::raft::driver::{Transport, BOOTSTRAP_INDEX};
use crate::raft::transport::HttpTransport;

/// How often a node looks at the cluster map for groups it should host.
const MAP_POLL: Duration = Duration::from_millis(250);

impl Node {
    /// Follows the cluster map while the node lives.
    pub(super) fn spawn_following(self: &Arc<Self>) {
        tokio::spawn(follow_map(Arc::downgrade(self)));
    }

    /// Asks group `g` to re-add this node's replica, which lost its data (in the
    /// background, until it is done).
    pub(super) fn spawn_rejoin(&self, g: u64) {
        tokio::spawn(rejoin_group(
            self.http.clone(),
            self.transport.clone(),
            g,
            self.id,
            self.advertise.clone(),
        ));
    }

    /// The groups of which some peer's replica has committed entries past the bootstrap
    /// snapshot (`GET /v1/node` of every peer, at once).
    pub(super) async fn existing_groups(&self) -> HashSet<u64> {
        let asks = self.transport.peers().into_values().map(|addr| async move {
            let node = ShardClient::new(addr, self.http.clone());
            node.node_status(Duration::from_secs(1)).await.ok()
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .flat_map(|n| n.groups)
            .filter(|g| g.raft.commit > BOOTSTRAP_INDEX)
            .map(|g| g.group)
            .collect()
    }

    /// One look at the cluster map: learn node addresses, register this node if the map
    /// does not know it (as it is: where it listens, what CPUs it runs on), and open the
    /// replicas the map gives it.
    async fn sync_with_map(self: &Arc<Self>) {
        let members = self.meta_addrs();
        // The first member that answers: a map a little behind is caught up next time.
        let map = match self.meta().and_then(|m| m.map()) {
            Some(map) => Some(map),
            None => meta::map(&self.http, &members).await.ok(),
        };
        let Some(map) = map.filter(ClusterMap::initialised) else {
            return;
        };
        // Addresses given on the command line win (they may route through a proxy).
        for (&id, n) in &map.nodes {
            if id != self.id
                && !self.cfg.peers.contains_key(&id)
                && self.transport.peer_addr(id).as_deref() != Some(&n.addr)
            {
                self.transport.add_peer(id, &n.addr);
            }
        }
        let spare = self.cfg.groups.is_empty() && !self.cfg.seeds.is_empty();
        // Read each time: a node can be moved onto other CPUs while it runs.
        let cpus = super::cpus::pool();
        let known = map.nodes.get(&self.id).is_some_and(|n| {
            n.addr == self.advertise && n.spare >= spare && (cpus.is_none() || n.cpus == cpus)
        });
        if !known {
            let cmd = MetaCommand::AddNode {
                id: self.id,
                addr: self.advertise.clone(),
                spare,
                cpus,
            };
            match meta::propose(&self.http, &members, &cmd).await {
                Ok(_) => tracing::info!(node = self.id, spare, "registered with the cluster"),
                Err(e) => tracing::debug!("registering with the cluster: {e}"),
            }
        }
        for (&g, info) in &map.groups {
            if info.replicas.contains(&self.id) && self.group(g).is_none() {
                tracing::info!(group = g, replicas = ?info.replicas, "hosting a new group");
                if let Err(e) = self.open(g, &info.replicas, &mut None).await {
                    tracing::error!(group = g, "opening a replica: {e}");
                }
            }
        }
        self.configure_groups(&map.settings.collection).await;
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = Some(map);
    }

    /// Hands the map's collection settings to every hosted group's shard, when they are
    /// not what they were last given.
    async fn configure_groups(&self, collection: &Collection) {
        let mut configured = self.configured.lock().await;
        if configured.as_ref() == Some(collection) {
            return;
        }
        *configured = Some(collection.clone());
        let collection = collection.clone();
        let stores: Vec<_> = self
            .groups()
            .iter()
            .filter_map(|g| Some((g.id, g.store()?.clone())))
            .collect();
        let applied = tokio::task::spawn_blocking(move || {
            for (g, store) in stores {
                if let Err(e) = store.configure(&collection) {
                    tracing::error!(group = g, "collection settings: {e}");
                }
            }
        });
        if let Err(e) = applied.await {
            tracing::error!("collection settings: {e}");
        }
    }
}

async fn follow_map(node: Weak<Node>) {
    loop {
        tokio::time::sleep(MAP_POLL).await;
        let Some(node) = node.upgrade() else { return };
        node.sync_with_map().await;
    }
}

/// Asks the group's leader to remove this node's replica and add it back, so that the
/// leader forgets what it believed the replica held and catches it up from scratch.
/// Retries until both changes are applied.
async fn rejoin_group(
    http: reqwest::Client,
    transport: Arc<HttpTransport>,
    g: u64,
    me: u64,
    advertise: String,
) {
    let mut backoff = Duration::from_millis(200);
    for action in ["remove", "add"] {
        let change = MembershipRequest {
            action: action.into(),
            node: me,
            addr: Some(advertise.clone()),
        };
        loop {
            let peers: Vec<String> = transport.peers().into_values().collect();
            let path = replicas_path(g);
            let done: Result<GroupStatus, _> =
                call_leader(&http, &peers, &path, Some(&change), MEMBERSHIP_CALL).await;
            match done {
                Ok(_) => break,
                Err(e) => tracing::debug!(group = g, action, "rejoin step: {e}"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        tracing::info!(group = g, action, "rejoin step applied");
    }
}
