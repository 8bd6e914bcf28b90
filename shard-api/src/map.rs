//! The cluster map every router and shard node works from: nodes, shard groups and their
//! replicas, which group owns each of the 1024 slots, slot moves under way, collection
//! settings, the model version. The meta group (a Raft group on the cluster's seed nodes)
//! replicates it; every change is a [`MetaCommand`] that bumps its version, and routers
//! cache it by version.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::collection::Collection;
use crate::slots::SLOTS;

/// The meta group's id in the Raft log, the transport and the node API.
pub const META_GROUP: u64 = u64::MAX;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub addr: String,
    /// Joined to host new groups (started with seeds and no groups of its own).
    #[serde(default)]
    pub spare: bool,
    /// The CPUs the node runs on, as [`NodeInfo::cpus`] says them: nodes that name the
    /// same ones compete for them (`None`: not said, a CPU pool of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
}

impl NodeInfo {
    /// A node listening at `addr` that has not said its CPUs.
    fn at(addr: String, spare: bool) -> Self {
        Self {
            addr,
            spare,
            cpus: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub replicas: Vec<u64>,
    /// Its replicas enforce the slot table (they refuse writes to slots not theirs).
    #[serde(default)]
    pub managed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MovePhase {
    /// Copying the slots' points from `from` to `to`; `from` still owns them.
    Copying,
    /// `to` owns them; `from` is still to drop its copy.
    Flipped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMove {
    pub id: u64,
    pub slots: Vec<u16>,
    pub from: u64,
    pub to: u64,
    pub phase: MovePhase,
}

/// Collection settings every group's shard is created with, and how the cluster grows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub dim: usize,
    #[serde(flatten)]
    pub collection: Collection,
    /// Replicas per group (R): new groups are formed from this many spare nodes.
    pub replication: usize,
    /// Rebalance slots whenever a group is added.
    pub auto_rebalance: bool,
    /// Most slots one move carries (the writes to them wait while the move flips).
    pub move_batch: usize,
}

impl Settings {
    pub fn new(dim: usize, replication: usize) -> Self {
        Self {
            dim,
            collection: Collection::default(),
            replication: replication.max(1),
            auto_rebalance: true,
            move_batch: 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// 0 until the cluster is initialised; every change adds one.
    pub version: u64,
    pub nodes: BTreeMap<u64, NodeInfo>,
    pub groups: BTreeMap<u64, GroupInfo>,
    /// The group owning each slot (empty until initialised).
    pub slots: Vec<u64>,
    pub moves: Vec<SlotMove>,
    pub settings: Settings,
    #[serde(default)]
    pub model_version: Option<String>,
    /// A rebalance is under way (until the slots are even).
    #[serde(default)]
    pub rebalancing: bool,
    #[serde(default)]
    pub next_move: u64,
}

impl Default for ClusterMap {
    fn default() -> Self {
        Self {
            version: 0,
            nodes: BTreeMap::new(),
            groups: BTreeMap::new(),
            slots: Vec::new(),
            moves: Vec::new(),
            settings: Settings::new(0, 3),
            model_version: None,
            rebalancing: false,
            next_move: 1,
        }
    }
}

/// A change to the map, as proposed to and replicated by the meta group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetaCommand {
    /// The first map: the seed nodes, their groups, slots spread evenly (contiguous
    /// ranges, as a static cluster routes them). Ignored once initialised.
    Init {
        nodes: BTreeMap<u64, String>,
        groups: BTreeMap<u64, Vec<u64>>,
        settings: Settings,
    },
    /// A node joins, or says again where it listens and what CPUs it runs on.
    AddNode {
        id: u64,
        addr: String,
        spare: bool,
        /// `None` leaves what the map has (the admin command cannot know it).
        #[serde(default)]
        cpus: Option<String>,
    },
    /// A new group on spare nodes that host no group yet.
    CreateGroup {
        id: u64,
        replicas: Vec<u64>,
    },
    MarkManaged {
        group: u64,
    },
    Rebalance,
    RebalanceDone,
    BeginMove {
        slots: Vec<u16>,
        from: u64,
        to: u64,
    },
    FlipMove {
        id: u64,
    },
    EndMove {
        id: u64,
    },
    /// Gives up a move still copying (its target has no room): `from` keeps the slots.
    AbortMove {
        id: u64,
    },
    SetModelVersion {
        version: String,
    },
    /// Whether a new group triggers a rebalance.
    SetAutoRebalance {
        enabled: bool,
    },
    /// New collection settings; every group applies them at its next optimisation.
    SetCollection {
        collection: Collection,
    },
}

impl MetaCommand {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("commands serialize")
    }

    /// Commands only the meta leader's mover may propose (they are steps of its work);
    /// the admin API refuses them.
    pub fn internal(&self) -> bool {
        use MetaCommand::*;
        matches!(
            self,
            Init { .. }
                | CreateGroup { .. }
                | MarkManaged { .. }
                | RebalanceDone
                | FlipMove { .. }
                | EndMove { .. }
                | AbortMove { .. }
        )
    }
}

impl ClusterMap {
    pub fn initialised(&self) -> bool {
        self.version > 0
    }

    /// Slots owned by each group (every group listed, even with none).
    pub fn slot_counts(&self) -> BTreeMap<u64, usize> {
        let mut counts: BTreeMap<u64, usize> = self.groups.keys().map(|&g| (g, 0)).collect();
        for g in &self.slots {
            *counts.entry(*g).or_insert(0) += 1;
        }
        counts
    }

    pub fn owned_by(&self, group: u64) -> Vec<u16> {
        (0..self.slots.len())
            .filter(|&s| self.slots[s] == group)
            .map(|s| s as u16)
            .collect()
    }

    /// Spare nodes hosting no group, in id order.
    pub fn free_nodes(&self) -> Vec<u64> {
        let used: BTreeSet<u64> = self
            .groups
            .values()
            .flat_map(|g| g.replicas.iter().copied())
            .collect();
        self.nodes
            .iter()
            .filter(|(id, n)| n.spare && !used.contains(id))
            .map(|(&id, _)| id)
            .collect()
    }

    pub fn balanced(&self) -> bool {
        let counts = self.slot_counts();
        let (lo, hi) = (counts.values().min(), counts.values().max());
        matches!((lo, hi), (Some(lo), Some(hi)) if hi - lo <= 1)
    }

    /// The next move toward even slots: up to `move_batch` of the fullest group's slots
    /// to the emptiest, while they differ by more than one.
    pub fn plan_move(&self) -> Option<(Vec<u16>, u64, u64)> {
        let counts = self.slot_counts();
        let (&from, &hi) = counts
            .iter()
            .max_by_key(|(g, c)| (**c, std::cmp::Reverse(**g)))?;
        let (&to, &lo) = counts.iter().min_by_key(|(g, c)| (**c, **g))?;
        if hi <= lo + 1 {
            return None;
        }
        let n = ((hi - lo) / 2).clamp(1, self.settings.move_batch.max(1));
        let mut slots = self.owned_by(from);
        slots.drain(..slots.len() - n);
        Some((slots, from, to))
    }

    /// Where move `id` is in the list of moves under way.
    fn move_at(&self, id: u64) -> Result<usize, String> {
        self.moves
            .iter()
            .position(|m| m.id == id)
            .ok_or_else(|| format!("no move {id}"))
    }

    /// Applies `cmd`; an invalid one changes nothing and says why.
    pub fn apply(&mut self, cmd: MetaCommand) -> Result<(), String> {
        use MetaCommand::*;
        if !self.initialised() && !matches!(cmd, Init { .. }) {
            return Err("the cluster map is not initialised yet".into());
        }
        match cmd {
            Init {
                nodes,
                groups,
                settings,
            } => {
                if self.initialised() {
                    return Err("already initialised".into());
                }
                if groups.is_empty() {
                    return Err("a cluster needs at least one group".into());
                }
                settings.collection.check()?;
                let ids: Vec<u64> = groups.keys().copied().collect();
                self.slots = (0..SLOTS).map(|s| ids[s * ids.len() / SLOTS]).collect();
                self.nodes = nodes
                    .into_iter()
                    .map(|(id, addr)| (id, NodeInfo::at(addr, false)))
                    .collect();
                self.groups = groups
                    .into_iter()
                    .map(|(g, replicas)| {
                        (
                            g,
                            GroupInfo {
                                replicas,
                                managed: false,
                            },
                        )
                    })
                    .collect();
                self.settings = settings;
            }
            AddNode {
                id,
                addr,
                spare,
                cpus,
            } => {
                // A node once spare stays spare: its groups were formed from it.
                let node =
                    (self.nodes.entry(id)).or_insert_with(|| NodeInfo::at(addr.clone(), spare));
                node.addr = addr;
                node.spare |= spare;
                if cpus.is_some() {
                    node.cpus = cpus;
                }
            }
            CreateGroup { id, replicas } => {
                if self.groups.contains_key(&id) {
                    return Err(format!("group {id} exists"));
                }
                let free = self.free_nodes();
                if let Some(n) = replicas.iter().find(|n| !free.contains(n)) {
                    return Err(format!("node {n} is not a free spare node"));
                }
                if replicas.is_empty() {
                    return Err("a group needs replicas".into());
                }
                self.groups.insert(
                    id,
                    GroupInfo {
                        replicas,
                        managed: false,
                    },
                );
                self.rebalancing |= self.settings.auto_rebalance;
            }
            MarkManaged { group } => match self.groups.get_mut(&group) {
                Some(g) => g.managed = true,
                None => return Err(format!("no group {group}")),
            },
            Rebalance => self.rebalancing = true,
            RebalanceDone => self.rebalancing = false,
            BeginMove { slots, from, to } => {
                if from == to || !self.groups.contains_key(&to) {
                    return Err(format!("cannot move slots from group {from} to {to}"));
                }
                if slots.is_empty() {
                    return Err("no slots to move".into());
                }
                let busy: BTreeSet<u16> = self
                    .moves
                    .iter()
                    .flat_map(|m| m.slots.iter().copied())
                    .collect();
                for &s in &slots {
                    if s as usize >= SLOTS || self.slots[s as usize] != from {
                        return Err(format!("slot {s} is not owned by group {from}"));
                    }
                    if busy.contains(&s) {
                        return Err(format!("slot {s} is already moving"));
                    }
                }
                let id = self.next_move;
                self.next_move += 1;
                self.moves.push(SlotMove {
                    id,
                    slots,
                    from,
                    to,
                    phase: MovePhase::Copying,
                });
            }
            FlipMove { id } => {
                let m = self
                    .moves
                    .iter_mut()
                    .find(|m| m.id == id)
                    .ok_or_else(|| format!("no move {id}"))?;
                if m.phase == MovePhase::Copying {
                    m.phase = MovePhase::Flipped;
                    for &s in &m.slots {
                        self.slots[s as usize] = m.to;
                    }
                }
            }
            EndMove { id } => {
                let at = self.move_at(id)?;
                if self.moves[at].phase != MovePhase::Flipped {
                    return Err(format!("move {id} has not flipped"));
                }
                self.moves.remove(at);
            }
            AbortMove { id } => {
                let at = self.move_at(id)?;
                if self.moves[at].phase != MovePhase::Copying {
                    return Err(format!("move {id} has flipped: it can only finish"));
                }
                self.moves.remove(at);
            }
            SetModelVersion { version } => self.model_version = Some(version),
            SetAutoRebalance { enabled } => self.settings.auto_rebalance = enabled,
            SetCollection { collection } => {
                self.settings.collection.check_change(&collection)?;
                self.settings.collection = collection;
            }
        }
        self.version += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_spares(map: &mut ClusterMap, ids: std::ops::RangeInclusive<u64>) {
        for n in ids {
            map.apply(MetaCommand::AddNode {
                id: n,
                addr: format!("http://n{n}"),
                spare: true,
                cpus: None,
            })
            .unwrap();
        }
    }

    fn two_groups() -> ClusterMap {
        let mut map = ClusterMap::default();
        let nodes = (1..=3).map(|n| (n, format!("http://n{n}"))).collect();
        let groups = [(0, vec![1, 2, 3]), (1, vec![1, 2, 3])].into();
        let init = MetaCommand::Init {
            nodes,
            groups,
            settings: Settings::new(64, 3),
        };
        // What the log carries decodes to the same command (maps keyed by ids included).
        let decoded: MetaCommand = serde_json::from_slice(&init.encode()).unwrap();
        assert_eq!(decoded, init);
        map.apply(decoded).unwrap();
        let json = serde_json::to_vec(&map).unwrap();
        assert_eq!(serde_json::from_slice::<ClusterMap>(&json).unwrap(), map);
        map
    }

    #[test]
    fn init_spreads_slots_like_a_static_cluster() {
        let mut map = two_groups();
        assert_eq!(map.version, 1);
        let table = crate::slots::SlotTable::even(2);
        for s in 0..SLOTS {
            assert_eq!(map.slots[s] as usize, table.owner(s));
        }
        assert!(map.apply(MetaCommand::Rebalance).is_ok());
        assert_eq!(map.version, 2);
    }

    #[test]
    fn a_node_says_its_cpus_and_an_admin_add_keeps_them() {
        let mut map = two_groups();
        let add = |cpus: Option<&str>| MetaCommand::AddNode {
            id: 1,
            addr: "http://n1".into(),
            spare: false,
            cpus: cpus.map(str::to_string),
        };
        assert_eq!(map.nodes[&1].cpus, None, "not said yet");
        map.apply(add(Some("boot-a cpus 0-3"))).unwrap();
        map.apply(add(None)).unwrap();
        assert_eq!(map.nodes[&1].cpus.as_deref(), Some("boot-a cpus 0-3"));
        map.apply(add(Some("boot-a cpus 2"))).unwrap();
        assert_eq!(map.nodes[&1].cpus.as_deref(), Some("boot-a cpus 2"));
        // Commands and maps written before nodes said their CPUs still read.
        let old: MetaCommand =
            serde_json::from_str(r#"{"add_node":{"id":4,"addr":"http://n4","spare":true}}"#)
                .unwrap();
        let said_nothing = MetaCommand::AddNode {
            id: 4,
            addr: "http://n4".into(),
            spare: true,
            cpus: None,
        };
        assert_eq!(old, said_nothing);
    }

    #[test]
    fn groups_form_from_free_spare_nodes_only() {
        let mut map = two_groups();
        add_spares(&mut map, 4..=6);
        assert_eq!(map.free_nodes(), vec![4, 5, 6]);
        let bad = MetaCommand::CreateGroup {
            id: 2,
            replicas: vec![1, 4, 5],
        };
        assert!(map.clone().apply(bad).is_err());
        map.apply(MetaCommand::CreateGroup {
            id: 2,
            replicas: vec![4, 5, 6],
        })
        .unwrap();
        assert!(map.free_nodes().is_empty());
        assert!(map.rebalancing);

        // With auto-rebalance off, a new group waits for an explicit rebalance.
        map.apply(MetaCommand::RebalanceDone).unwrap();
        map.apply(MetaCommand::SetAutoRebalance { enabled: false })
            .unwrap();
        add_spares(&mut map, 7..=9);
        map.apply(MetaCommand::CreateGroup {
            id: 3,
            replicas: vec![7, 8, 9],
        })
        .unwrap();
        assert!(!map.rebalancing);
        assert!(map.plan_move().is_some());
    }

    #[test]
    fn planned_moves_even_out_slots_and_refuse_overlaps() {
        let mut map = two_groups();
        for (g, first) in [(2u64, 4u64), (3, 7)] {
            add_spares(&mut map, first..=first + 2);
            map.apply(MetaCommand::CreateGroup {
                id: g,
                replicas: (first..first + 3).collect(),
            })
            .unwrap();
        }
        let mut moves = 0;
        while let Some((slots, from, to)) = map.plan_move() {
            assert!(slots.len() <= map.settings.move_batch);
            map.apply(MetaCommand::BeginMove {
                slots: slots.clone(),
                from,
                to,
            })
            .unwrap();
            // The same slots cannot start a second move.
            assert!(map
                .clone()
                .apply(MetaCommand::BeginMove { slots, from, to })
                .is_err());
            let id = map.moves[0].id;
            assert!(map.clone().apply(MetaCommand::EndMove { id }).is_err());
            // A move still copying may be given up: its slots stay where they were.
            let mut aborted = map.clone();
            let before = aborted.slots.clone();
            aborted.apply(MetaCommand::AbortMove { id }).unwrap();
            assert!(aborted.moves.is_empty() && aborted.slots == before);
            assert!(MetaCommand::AbortMove { id }.internal());
            map.apply(MetaCommand::FlipMove { id }).unwrap();
            assert!(map.clone().apply(MetaCommand::AbortMove { id }).is_err());
            map.apply(MetaCommand::EndMove { id }).unwrap();
            moves += 1;
            assert!(moves < 100, "does not converge");
        }
        assert!(map.balanced(), "{:?}", map.slot_counts());
        assert_eq!(map.slot_counts().values().sum::<usize>(), SLOTS);
        assert!(map.moves.is_empty());
    }
}
