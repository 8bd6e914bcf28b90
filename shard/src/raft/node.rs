//! A shard node: one `redrec shard` process hosting a replica of each of several groups
//! (multi-raft), all sharing one raft-engine log and one transport.
//!
//! Data layout under the node's data directory:
//! `raft/` (the log of every group), `peers.json` (addresses learnt from membership
//! changes), and `groups/<g>/` holding `shard/` (the Qdrant shard), `applied.json`, and
//! `restoring` while a snapshot is being restored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::{ConfChange, ConfChangeType};
use raft_engine::Engine;
use serde::{Deserialize, Serialize};

use super::driver::{Driver, DriverConfig, ProposeError, Replica, ReplicaStatus};
use super::log::{open_engine, RaftLog};
use super::machine::StateMachine;
use super::transport::{HttpTransport, Inbox};
use crate::store::{EdgeStore, VectorStore};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id; it is also the replica id of every replica it hosts.
    pub id: u64,
    pub data: PathBuf,
    pub dim: usize,
    /// Where other nodes reach this one (`http://host:port`).
    pub advertise: String,
    /// The other nodes, by id.
    pub peers: HashMap<u64, String>,
    /// Groups hosted here.
    pub groups: Vec<u64>,
    /// Initial voters of every group (bootstrapping a new cluster). A node not among them
    /// starts its replicas empty, to be added with `redrec cluster add-replica`.
    pub voters: Vec<u64>,
    pub driver: DriverConfig,
}

/// One hosted replica: its shard, for reads, and its Raft handle, for writes.
pub struct Group {
    pub id: u64,
    pub store: Arc<dyn VectorStore>,
    pub replica: Replica,
    /// Set once a ReadIndex round confirmed this replica applied all the group had
    /// committed; cleared while it has no leader or restores a snapshot.
    caught_up: AtomicBool,
    _driver: Driver,
}

/// `GET /v1/node`: a node and its replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: u64,
    pub addr: String,
    pub ready: bool,
    pub groups: Vec<GroupStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group: u64,
    pub node: u64,
    pub caught_up: bool,
    #[serde(flatten)]
    pub raft: ReplicaStatus,
}

impl Group {
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> GroupStatus {
        GroupStatus {
            group: self.id,
            node: self.replica.id(),
            caught_up: self.caught_up(),
            raft: self.replica.status(),
        }
    }
}

pub struct Node {
    pub id: u64,
    pub advertise: String,
    pub groups: BTreeMap<u64, Arc<Group>>,
    pub inbox: Arc<Inbox>,
    pub transport: Arc<HttpTransport>,
    engine: Arc<Engine>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("raft log: {0}")]
    Log(String),
    #[error("shard: {0}")]
    Store(String),
}

impl Node {
    /// Opens every hosted replica and starts its driver. Must run inside a tokio runtime.
    pub async fn start(cfg: NodeConfig, http: reqwest::Client) -> Result<Arc<Node>, NodeError> {
        let engine =
            open_engine(&cfg.data.join("raft")).map_err(|e| NodeError::Log(e.to_string()))?;
        let inbox = Arc::new(Inbox::default());
        let peer_file = cfg.data.join("peers.json");
        let transport = HttpTransport::new(
            http.clone(),
            tokio::runtime::Handle::current(),
            inbox.clone(),
            Some(peer_file.clone()),
        );
        let mut peers = HttpTransport::load_peers(&peer_file);
        peers.extend(cfg.peers.clone());
        for (node, addr) in peers.into_iter().filter(|(n, _)| *n != cfg.id) {
            transport.set_peer(node, addr);
        }
        let mut groups = BTreeMap::new();
        // Which groups the peers already hold, asked once, and only if a replica is empty.
        let mut existing = None;
        for &g in &cfg.groups {
            let group =
                Self::open_group(&cfg, g, &engine, &transport, &http, &mut existing).await?;
            inbox.add(group.replica.clone());
            groups.insert(g, group);
        }
        let node = Arc::new(Node {
            id: cfg.id,
            advertise: cfg.advertise.clone(),
            groups,
            inbox,
            transport,
            engine,
        });
        node.spawn_housekeeping();
        Ok(node)
    }

    async fn open_group(
        cfg: &NodeConfig,
        g: u64,
        engine: &Arc<Engine>,
        transport: &Arc<HttpTransport>,
        http: &reqwest::Client,
        existing: &mut Option<HashSet<u64>>,
    ) -> Result<Arc<Group>, NodeError> {
        let dir = cfg.data.join("groups").join(g.to_string());
        let (engine2, dir2, dim) = (engine.clone(), dir.clone(), cfg.dim);
        let opened = tokio::task::spawn_blocking(move || {
            let store: Arc<dyn VectorStore> = Arc::new(
                EdgeStore::open(&dir2.join("shard"), dim)
                    .map_err(|e| NodeError::Store(e.to_string()))?,
            );
            let mut machine = StateMachine::open(store.clone(), &dir2)
                .map_err(|e| NodeError::Store(e.to_string()))?;
            let mut log = RaftLog::open(engine2, g).map_err(|e| NodeError::Log(e.to_string()))?;
            if machine.restore_interrupted() {
                tracing::warn!(
                    group = g,
                    "a snapshot restore was cut short; starting empty"
                );
                log.reset().map_err(|e| NodeError::Log(e.to_string()))?;
                machine
                    .reset()
                    .map_err(|e| NodeError::Store(e.to_string()))?;
            }
            Ok::<_, NodeError>((store, machine, log))
        })
        .await
        .map_err(|e| NodeError::Store(e.to_string()))??;
        let (store, machine, log) = opened;
        let fresh = log.conf_state().voters.is_empty() && log.snapshot_metadata().index == 0;
        let mut voters = Vec::new();
        let mut rejoin = false;
        if fresh && cfg.voters.contains(&cfg.id) {
            // An empty replica of a group that already holds data lost its own (a wiped
            // disk): it must not pose as the member it was, but be re-added.
            if existing.is_none() {
                *existing = Some(Self::existing_groups(http, transport).await);
            }
            if existing.as_ref().is_some_and(|e| e.contains(&g)) {
                rejoin = true;
            } else {
                voters = cfg.voters.clone();
            }
        }
        let driver = Driver::start(
            g,
            cfg.id,
            &voters,
            log,
            machine,
            transport.clone(),
            cfg.driver.clone(),
        )
        .map_err(|e| NodeError::Log(e.to_string()))?;
        let group = Arc::new(Group {
            id: g,
            store,
            replica: driver.replica().clone(),
            caught_up: AtomicBool::new(false),
            _driver: driver,
        });
        if rejoin {
            tracing::warn!(
                group = g,
                "replica lost its data; asking the group to re-add it"
            );
            tokio::spawn(rejoin_group(
                http.clone(),
                transport.clone(),
                g,
                cfg.id,
                cfg.advertise.clone(),
            ));
        }
        Ok(group)
    }

    /// The groups of which some peer's replica has committed entries (`GET /v1/node` of
    /// every peer, at once).
    async fn existing_groups(http: &reqwest::Client, transport: &HttpTransport) -> HashSet<u64> {
        let asks = transport.peers().into_values().map(|addr| async move {
            let answer = http
                .get(format!("{addr}/v1/node"))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .ok()?
                .error_for_status()
                .ok()?;
            answer.json::<NodeStatus>().await.ok()
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .flat_map(|n| n.groups)
            .filter(|g| g.raft.commit > 0)
            .map(|g| g.group)
            .collect()
    }

    pub fn group(&self, g: u64) -> Option<&Arc<Group>> {
        self.groups.get(&g)
    }

    /// The address of the leader of `g` as this node knows it.
    pub fn leader_addr(&self, g: u64) -> Option<String> {
        let leader = self.group(g)?.replica.status().leader?;
        if leader == self.id {
            Some(self.advertise.clone())
        } else {
            self.transport.peer_addr(leader)
        }
    }

    pub fn ready(&self) -> bool {
        self.groups.values().all(|g| g.caught_up())
    }

    /// Adds or removes a replica of group `g` (on the leader).
    pub async fn change_membership(
        &self,
        g: u64,
        add: bool,
        node: u64,
        addr: Option<String>,
    ) -> Result<(), ProposeError> {
        let group = self
            .group(g)
            .ok_or_else(|| ProposeError::Rejected(format!("group {g} is not hosted here")))?;
        let cc = ConfChange {
            change_type: if add {
                ConfChangeType::AddNode
            } else {
                ConfChangeType::RemoveNode
            },
            node_id: node,
            context: addr.unwrap_or_default().into_bytes().into(),
            ..Default::default()
        };
        match tokio::time::timeout(Duration::from_secs(10), group.replica.change_membership(cc))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(ProposeError::Timeout(
                "membership change not applied".into(),
            )),
        }
    }

    /// Hands the leadership of every group led here to another voter and waits (briefly)
    /// for it to move, so that a stopping node does not leave its groups leaderless for an
    /// election timeout.
    pub async fn step_down(&self) {
        for group in self.groups.values() {
            let st = group.replica.status();
            if !st.is_leader {
                continue;
            }
            let Some(&to) = st.voters.iter().find(|&&v| v != self.id) else {
                continue;
            };
            group.replica.transfer_leader(to);
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if !group.replica.status().is_leader {
                    break;
                }
            }
        }
    }

    fn spawn_housekeeping(self: &Arc<Self>) {
        for group in self.groups.values() {
            tokio::spawn(track_readiness(Arc::downgrade(group)));
        }
        let engine = Arc::downgrade(&self.engine);
        std::thread::Builder::new()
            .name("raft-log-purge".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(10));
                match engine.upgrade() {
                    Some(e) => RaftLog::purge(&e),
                    None => return,
                }
            })
            .expect("spawn purge thread");
    }
}

/// Keeps `caught_up` true only while the replica has a leader and has applied what the
/// group committed (checked by a ReadIndex round after every loss).
async fn track_readiness(group: std::sync::Weak<Group>) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(g) = group.upgrade() else { return };
        let st = g.replica.status();
        if st.halted || st.restoring || st.leader.is_none() {
            g.caught_up.store(false, Ordering::Relaxed);
            continue;
        }
        if !g.caught_up() && g.replica.catch_up(Duration::from_secs(1)).await.is_ok() {
            let st = g.replica.status();
            g.caught_up
                .store(!st.restoring && st.leader.is_some(), Ordering::Relaxed);
        }
    }
}

pub async fn peer_status(http: &reqwest::Client, addr: &str, g: u64) -> Option<GroupStatus> {
    http.get(format!("{addr}/v1/groups/{g}/status"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .json()
        .await
        .ok()
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
        loop {
            let mut done = false;
            for addr in transport.peers().into_values() {
                let url = format!("{addr}/admin/v1/groups/{g}/replicas");
                let body = serde_json::json!({"action": action, "node": me, "addr": advertise});
                let ok = http
                    .post(&url)
                    .timeout(Duration::from_secs(15))
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    done = true;
                    break;
                }
            }
            if done {
                tracing::info!(group = g, action, "rejoin step applied");
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
