//! A shard node: one `redrec shard` process hosting a replica of each of several groups
//! (multi-raft), all sharing one raft-engine log and one transport.
//!
//! Data layout under the node's data directory:
//! `raft/` (the log of every group), `peers.json` (addresses learnt from membership
//! changes and the cluster map), `groups/<g>/` holding `shard/` (the Qdrant shard),
//! `applied.json` (with the slots served), and `restoring` while a snapshot is being
//! restored, and on the meta group's members `meta/state.json` (the cluster map).
//!
//! Every node follows the cluster map ([`follow`]): it learns node addresses from it,
//! registers itself in it, and opens the replicas of any group the map places on it. A
//! shard group's replica is opened through the [`GroupFactory`] the node is given; the
//! node itself never names the storage engine.

mod cpus;
mod follow;
pub mod replica;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raft::eraftpb::{ConfChange, ConfChangeType};
use raft_engine::Engine;
use redrec_shard_api::collection::Collection;
use redrec_shard_api::map::{ClusterMap, MetaCommand, Settings, META_GROUP};
use replica::{track_readiness, Hosted, Kind};

use crate::budget::MemoryBudget;
use crate::faults::Faults;
use crate::group::GroupFactory;
use crate::meta::machine::MetaMachine;
use crate::meta::mover::{self, MetaConsensus, MetaRole};
use crate::raft::driver::{Driver, DriverConfig};
use crate::raft::log::{open_engine, RaftLog};
use crate::raft::machine::Machine;
use crate::raft::replica::ProposeError;
use crate::raft::transport::{HttpTransport, Inbox};

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
    /// A new cluster's collection settings (afterwards the map's).
    pub collection: Collection,
    /// Writes past it are refused.
    pub budget: MemoryBudget,
    pub driver: DriverConfig,
    /// Whether faults may be injected (tests and benches only).
    pub fault_injection: bool,
}

pub struct Node {
    pub id: u64,
    pub advertise: String,
    groups: RwLock<BTreeMap<u64, Arc<Hosted>>>,
    pub inbox: Arc<Inbox>,
    pub transport: Arc<HttpTransport>,
    engine: Arc<Engine>,
    factory: Arc<dyn GroupFactory>,
    cfg: NodeConfig,
    pub http: reqwest::Client,
    /// The newest cluster map seen (the meta replica's, or fetched from the seeds).
    map: RwLock<Option<ClusterMap>>,
    /// Opening a replica is one at a time.
    opening: tokio::sync::Mutex<()>,
    /// The collection settings last handed to the hosted groups.
    configured: tokio::sync::Mutex<Option<Collection>>,
    /// Delays injected into reads, when allowed.
    pub faults: Faults,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("raft log: {0}")]
    Log(String),
    #[error("shard: {0}")]
    Store(String),
}

impl Node {
    /// Opens every hosted replica (the configured groups, those left on disk by an earlier
    /// run, and the meta group on its voters) and starts their drivers and the node's
    /// background work; shard groups' replicas are opened by `factory`. Must run inside a
    /// tokio runtime.
    pub async fn start(
        cfg: NodeConfig,
        http: reqwest::Client,
        factory: Arc<dyn GroupFactory>,
    ) -> Result<Arc<Node>, NodeError> {
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
            factory,
            cfg: cfg.clone(),
            http,
            map: RwLock::new(None),
            opening: tokio::sync::Mutex::new(()),
            configured: tokio::sync::Mutex::new(None),
            faults: Faults::new(cfg.fault_injection),
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
    ) -> Result<Arc<Hosted>, NodeError> {
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
        let (engine, factory) = (self.engine.clone(), self.factory.clone());
        let transport = self.transport.clone();
        let peers = Arc::new(move |n| transport.peer_addr(n));
        let collection = self.collection();
        let opened = tokio::task::spawn_blocking(move || {
            let store_err = |e: crate::raft::machine::MachineError| NodeError::Store(e.to_string());
            let mut log = RaftLog::open(engine, g).map_err(|e| NodeError::Log(e.to_string()))?;
            if g == META_GROUP {
                let machine = MetaMachine::open(&dir).map_err(store_err)?;
                let kind = Kind::Meta { map: machine.map() };
                let machine: Box<dyn Machine> = Box::new(machine);
                return Ok::<_, NodeError>((kind, machine, log));
            }
            let mut machine = factory
                .open(g, &dir, &collection, peers)
                .map_err(store_err)?;
            if machine.restore_interrupted() {
                tracing::warn!(
                    group = g,
                    "a snapshot restore was cut short; starting empty"
                );
                log.reset().map_err(|e| NodeError::Log(e.to_string()))?;
                machine.reset().map_err(store_err)?;
            }
            let kind = Kind::Shard {
                store: machine.store().clone(),
                users: machine.users().clone(),
                slots: machine.slots(),
            };
            let machine: Box<dyn Machine> = Box::new(machine);
            Ok((kind, machine, log))
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
        let driver = Driver::start(
            g,
            cfg.id,
            &voters,
            log,
            machine,
            self.transport.clone(),
            cfg.driver.clone(),
        )
        .map_err(|e| NodeError::Log(e.to_string()))?;
        let group = Arc::new(Hosted::new(g, kind, driver));
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
            self.spawn_rejoin(g);
        }
        Ok(group)
    }

    pub fn budget(&self) -> MemoryBudget {
        self.cfg.budget
    }

    /// Whether the node's memory budget has room for `adding` more points (blocking: it
    /// reads every store's figures).
    pub fn admit(&self, adding: usize) -> Result<(), String> {
        let stores: Vec<_> = self
            .groups()
            .iter()
            .filter_map(|g| g.store().cloned())
            .collect();
        crate::budget::admit(&self.cfg.budget, &stores, adding)
    }

    /// The collection settings groups keep their shards under: the map's once known.
    fn collection(&self) -> Collection {
        self.map()
            .map(|m| m.settings.collection)
            .unwrap_or_else(|| self.cfg.collection.clone())
    }

    pub fn group(&self, g: u64) -> Option<Arc<Hosted>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&g)
            .cloned()
    }

    /// Every hosted replica, the meta group's included.
    pub fn groups(&self) -> Vec<Arc<Hosted>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The meta replica, where this node hosts one.
    pub fn meta(&self) -> Option<Arc<Hosted>> {
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
        match tokio::time::timeout(Duration::from_secs(10), meta.replica.propose(cmd.encode()))
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
        self.spawn_following();
        if self.meta().is_some() {
            tokio::spawn(mover::run(Arc::downgrade(self), self.http.clone()));
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
        let mut settings = Settings::new(self.cfg.dim, self.cfg.voters.len());
        settings.auto_rebalance = self.cfg.auto_rebalance;
        settings.collection = self.cfg.collection.clone();
        MetaCommand::Init {
            nodes,
            groups,
            settings,
        }
    }
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

impl MetaConsensus for Node {
    fn role(&self) -> MetaRole {
        match self.meta() {
            None => MetaRole::Absent,
            Some(meta) if meta.replica.status().is_leader => meta
                .map()
                .map_or(MetaRole::Follower, |m| MetaRole::Leader(Box::new(m))),
            Some(_) => MetaRole::Follower,
        }
    }

    async fn propose(&self, cmd: MetaCommand) -> Result<u64, String> {
        self.propose_meta(&cmd).await.map_err(|e| e.to_string())
    }

    fn bootstrap_map(&self) -> MetaCommand {
        Node::bootstrap_map(self)
    }
}
