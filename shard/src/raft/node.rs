//! A shard node: one `redrec shard` process hosting a replica of each of several groups
//! (multi-raft), all sharing one raft-engine log and one transport.
//!
//! Data layout under the node's data directory:
//! `raft/` (the log of every group), `peers.json` (addresses learnt from membership
//! changes and the cluster map), `groups/<g>/` holding `shard/` (the Qdrant shard),
//! `applied.json` (with the slots served), and `restoring` while a snapshot is being
//! restored, and on the meta group's members `meta/state.json` (the cluster map).
//!
//! Every node follows the cluster map: it learns node addresses from it, registers itself
//! in it, and opens the replicas of any group the map places on it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raft::eraftpb::{ConfChange, ConfChangeType};
use raft_engine::Engine;
use serde::{Deserialize, Serialize};

use super::driver::{Driver, DriverConfig, ProposeError, Replica, ReplicaStatus, Transport};
use super::log::{open_engine, RaftLog};
use super::machine::{Machine, StateMachine};
use super::transport::{HttpTransport, Inbox};
use crate::meta::{self, ClusterMap, MetaCommand, MetaMachine, META_GROUP};
use crate::slots::SlotGuard;
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
    /// Groups hosted here from the start (a new cluster's groups).
    pub groups: Vec<u64>,
    /// Initial voters of every starting group and of the meta group (bootstrapping a new
    /// cluster). A node not among them starts its replicas empty, to be added with
    /// `redrec cluster add-replica`, and hosts no meta replica.
    pub voters: Vec<u64>,
    /// Meta members to join through (a node added to a running cluster); such a node is
    /// spare: new groups are formed from spare nodes.
    pub seeds: Vec<String>,
    /// A new cluster's map starts with this: rebalance slots whenever a group forms.
    pub auto_rebalance: bool,
    pub driver: DriverConfig,
}

/// What a hosted replica serves.
pub enum Kind {
    /// A shard group's replica: its Qdrant shard and the slots it serves.
    Shard {
        store: Arc<dyn VectorStore>,
        slots: Arc<RwLock<SlotGuard>>,
    },
    /// The meta group's replica: the cluster map.
    Meta { map: Arc<RwLock<ClusterMap>> },
}

/// One hosted replica: what it serves, for reads, and its Raft handle, for writes.
pub struct Group {
    pub id: u64,
    pub kind: Kind,
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
    /// A shard replica's slots by state (absent for the meta group and unmanaged groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<BTreeMap<crate::slots::SlotState, usize>>,
}

impl Group {
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }

    pub fn store(&self) -> Option<&Arc<dyn VectorStore>> {
        match &self.kind {
            Kind::Shard { store, .. } => Some(store),
            Kind::Meta { .. } => None,
        }
    }

    /// Runs `f` on the slots a shard replica serves (unmanaged: all), under its lock.
    pub fn with_slots<T>(&self, f: impl FnOnce(&SlotGuard) -> T) -> T {
        match &self.kind {
            Kind::Shard { slots, .. } => f(&slots.read().unwrap_or_else(|p| p.into_inner())),
            Kind::Meta { .. } => f(&SlotGuard::default()),
        }
    }

    /// The meta replica's cluster map.
    pub fn map(&self) -> Option<ClusterMap> {
        match &self.kind {
            Kind::Meta { map } => Some(map.read().unwrap_or_else(|p| p.into_inner()).clone()),
            Kind::Shard { .. } => None,
        }
    }

    pub fn status(&self) -> GroupStatus {
        GroupStatus {
            group: self.id,
            node: self.replica.id(),
            caught_up: self.caught_up(),
            raft: self.replica.status(),
            slots: self.with_slots(|s| s.states.is_some().then(|| s.counts())),
        }
    }
}

pub struct Node {
    pub id: u64,
    pub advertise: String,
    groups: RwLock<BTreeMap<u64, Arc<Group>>>,
    pub inbox: Arc<Inbox>,
    pub transport: Arc<HttpTransport>,
    engine: Arc<Engine>,
    cfg: NodeConfig,
    pub http: reqwest::Client,
    /// The newest cluster map seen (the meta replica's, or fetched from the seeds).
    map: RwLock<Option<ClusterMap>>,
    /// Opening a replica is one at a time.
    opening: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("raft log: {0}")]
    Log(String),
    #[error("shard: {0}")]
    Store(String),
}

/// How often a node looks at the cluster map for groups it should host.
const MAP_POLL: Duration = Duration::from_millis(250);

impl Node {
    /// Opens every hosted replica (the configured groups, those left on disk by an earlier
    /// run, and the meta group on its voters) and starts their drivers and the node's
    /// background work. Must run inside a tokio runtime.
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
        let node = Arc::new(Node {
            id: cfg.id,
            advertise: cfg.advertise.clone(),
            groups: RwLock::new(BTreeMap::new()),
            inbox,
            transport,
            engine,
            cfg: cfg.clone(),
            http,
            map: RwLock::new(None),
            opening: tokio::sync::Mutex::new(()),
        });
        let mut hosted: Vec<u64> = cfg.groups.clone();
        hosted.extend(on_disk_groups(&cfg.data.join("groups")));
        hosted.sort_unstable();
        hosted.dedup();
        // Which groups the peers already hold, asked once, and only if a replica is empty.
        let mut existing = None;
        for g in hosted {
            node.open(g, &cfg.voters, &mut existing).await?;
        }
        if cfg.voters.contains(&cfg.id) || cfg.data.join("meta").exists() {
            node.open(META_GROUP, &cfg.voters, &mut existing).await?;
        }
        node.spawn_housekeeping();
        Ok(node)
    }

    /// Opens replica `g` (unless hosted already) and starts its driver. `bootstrap`: the
    /// group's first voters, used when this replica's log is empty.
    async fn open(
        self: &Arc<Self>,
        g: u64,
        bootstrap: &[u64],
        existing: &mut Option<HashSet<u64>>,
    ) -> Result<Arc<Group>, NodeError> {
        let _one = self.opening.lock().await;
        if let Some(group) = self.group(g) {
            return Ok(group);
        }
        let cfg = &self.cfg;
        let dir = if g == META_GROUP {
            cfg.data.join("meta")
        } else {
            cfg.data.join("groups").join(g.to_string())
        };
        let (engine, dim) = (self.engine.clone(), cfg.dim);
        let opened = tokio::task::spawn_blocking(move || {
            let log = RaftLog::open(engine, g).map_err(|e| NodeError::Log(e.to_string()))?;
            if g == META_GROUP {
                let machine =
                    MetaMachine::open(&dir).map_err(|e| NodeError::Store(e.to_string()))?;
                let kind = Kind::Meta { map: machine.map() };
                return Ok::<_, NodeError>((kind, Opened::Meta(machine), log));
            }
            let store: Arc<dyn VectorStore> = Arc::new(
                EdgeStore::open(&dir.join("shard"), dim)
                    .map_err(|e| NodeError::Store(e.to_string()))?,
            );
            let mut machine = StateMachine::open(store.clone(), &dir)
                .map_err(|e| NodeError::Store(e.to_string()))?;
            let mut log = log;
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
            let kind = Kind::Shard {
                store,
                slots: machine.slots(),
            };
            Ok((kind, Opened::Shard(machine), log))
        })
        .await
        .map_err(|e| NodeError::Store(e.to_string()))??;
        let (kind, machine, log) = opened;
        let fresh = log.conf_state().voters.is_empty() && log.snapshot_metadata().index == 0;
        let mut voters = Vec::new();
        let mut rejoin = false;
        if fresh && bootstrap.contains(&cfg.id) {
            // An empty replica of a group that already holds data lost its own (a wiped
            // disk): it must not pose as the member it was, but be re-added.
            if existing.is_none() {
                *existing = Some(self.existing_groups().await);
            }
            if existing.as_ref().is_some_and(|e| e.contains(&g)) {
                rejoin = true;
            } else {
                voters = bootstrap.to_vec();
            }
        }
        let driver = match machine {
            Opened::Shard(m) => self.drive(g, &voters, log, m),
            Opened::Meta(m) => self.drive(g, &voters, log, m),
        }?;
        let group = Arc::new(Group {
            id: g,
            kind,
            replica: driver.replica().clone(),
            caught_up: AtomicBool::new(false),
            _driver: driver,
        });
        self.inbox.add(group.replica.clone());
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(g, group.clone());
        tokio::spawn(track_readiness(Arc::downgrade(&group)));
        if rejoin {
            tracing::warn!(
                group = g,
                "replica lost its data; asking the group to re-add it"
            );
            tokio::spawn(rejoin_group(
                self.http.clone(),
                self.transport.clone(),
                g,
                cfg.id,
                cfg.advertise.clone(),
            ));
        }
        Ok(group)
    }

    fn drive<M: Machine>(
        &self,
        g: u64,
        voters: &[u64],
        log: RaftLog,
        machine: M,
    ) -> Result<Driver, NodeError> {
        Driver::start(
            g,
            self.cfg.id,
            voters,
            log,
            machine,
            self.transport.clone(),
            self.cfg.driver.clone(),
        )
        .map_err(|e| NodeError::Log(e.to_string()))
    }

    /// The groups of which some peer's replica has committed entries (`GET /v1/node` of
    /// every peer, at once).
    async fn existing_groups(&self) -> HashSet<u64> {
        let http = &self.http;
        let asks = self.transport.peers().into_values().map(|addr| async move {
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

    pub fn group(&self, g: u64) -> Option<Arc<Group>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&g)
            .cloned()
    }

    /// Every hosted replica, the meta group's included.
    pub fn groups(&self) -> Vec<Arc<Group>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The meta replica, where this node hosts one.
    pub fn meta(&self) -> Option<Arc<Group>> {
        self.group(META_GROUP)
    }

    /// The newest cluster map this node knows: its meta replica's, else the last fetched.
    pub fn map(&self) -> Option<ClusterMap> {
        if let Some(map) = self.meta().and_then(|m| m.map()) {
            return Some(map);
        }
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Where the meta group's members listen, as far as this node knows.
    pub fn meta_addrs(&self) -> Vec<String> {
        let mut addrs: Vec<String> = self.cfg.seeds.clone();
        if let Some(map) = self.map() {
            if let Some(meta) = self.meta() {
                for v in meta.replica.status().voters {
                    if let Some(n) = map.nodes.get(&v) {
                        addrs.push(n.addr.clone());
                    }
                }
            }
        }
        if self.meta().is_some() {
            addrs.push(self.advertise.clone());
        }
        for (id, addr) in self.transport.peers() {
            if self.cfg.voters.contains(&id) {
                addrs.push(addr);
            }
        }
        addrs.sort();
        addrs.dedup();
        addrs
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
        self.groups().iter().all(|g| g.caught_up())
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

    /// Proposes a change to the cluster map on this node's meta replica (its leader) and
    /// waits until it is applied; returns the new map version.
    pub async fn propose_meta(&self, cmd: &MetaCommand) -> Result<u64, ProposeError> {
        let meta = self
            .meta()
            .ok_or_else(|| ProposeError::Rejected("this node hosts no meta replica".into()))?;
        match tokio::time::timeout(
            Duration::from_secs(10),
            meta.replica.propose_bytes(cmd.encode()),
        )
        .await
        {
            Ok(r) => r.map(|v| v as u64),
            Err(_) => Err(ProposeError::Timeout("map change not applied".into())),
        }
    }

    /// Hands the leadership of every group led here to another voter and waits (briefly)
    /// for it to move, so that a stopping node does not leave its groups leaderless for an
    /// election timeout.
    pub async fn step_down(&self) {
        for group in self.groups() {
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
        tokio::spawn(follow_map(Arc::downgrade(self)));
        if self.meta().is_some() {
            tokio::spawn(meta::mover::run(Arc::downgrade(self)));
        }
    }

    /// The first cluster map, from this node's configuration (a new cluster's seeds).
    pub fn bootstrap_map(&self) -> MetaCommand {
        let mut nodes: BTreeMap<u64, String> = self
            .cfg
            .peers
            .iter()
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        nodes.insert(self.id, self.advertise.clone());
        let groups = self
            .cfg
            .groups
            .iter()
            .map(|&g| (g, self.cfg.voters.clone()))
            .collect();
        let mut settings = meta::Settings::new(self.cfg.dim, self.cfg.voters.len());
        settings.auto_rebalance = self.cfg.auto_rebalance;
        MetaCommand::Init {
            nodes,
            groups,
            settings,
        }
    }

    /// One look at the cluster map: learn node addresses, register this node if the map
    /// does not know it (as it is), and open the replicas the map gives it.
    async fn sync_with_map(self: &Arc<Self>) {
        let members = self.meta_addrs();
        // The first member that answers: a map a little behind is caught up next time.
        let map = match self.meta().and_then(|m| m.map()) {
            Some(map) => Some(map),
            None => meta::call_meta::<ClusterMap>(&self.http, &members, "/v1/meta/map", None)
                .await
                .ok(),
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
        let known = map
            .nodes
            .get(&self.id)
            .is_some_and(|n| n.addr == self.advertise && n.spare >= spare);
        if !known {
            let cmd = MetaCommand::AddNode {
                id: self.id,
                addr: self.advertise.clone(),
                spare,
            };
            match meta::call_meta::<serde_json::Value>(
                &self.http,
                &members,
                "/admin/v1/cluster/commands",
                Some(&cmd),
            )
            .await
            {
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
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = Some(map);
    }
}

/// What a replica's state machine turned out to be when opened.
enum Opened {
    Shard(StateMachine),
    Meta(MetaMachine),
}

/// Group directories an earlier run left (`groups/<g>/`).
fn on_disk_groups(dir: &std::path::Path) -> Vec<u64> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

async fn follow_map(node: std::sync::Weak<Node>) {
    loop {
        tokio::time::sleep(MAP_POLL).await;
        let Some(node) = node.upgrade() else { return };
        node.sync_with_map().await;
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
