//! The shard groups a router talks to and how items map onto them: fixed from the command
//! line, or the cluster map loaded from the meta group, cached by version and refreshed
//! when it moves on (periodically, and at once when a shard says a write reached the wrong
//! group).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redrec_shard_api::map::NodeInfo;
use redrec_shard_api::meta::fetch_map;
use redrec_shard_api::reads::ReadPolicy;
use redrec_shard_api::ClusterMap;
pub use redrec_shard_api::Group;
use redrec_shard_api::ShardClient;

use redrec_shard_api::slots::{slot_of, SlotTable};

#[derive(Clone)]
pub struct Cluster {
    pub groups: Vec<Arc<Group>>,
    pub slots: SlotTable,
    /// Whether the groups are Raft-replicated (their replicas serve `/v1/groups/{g}`).
    pub replicated: bool,
    /// The cluster map this view was built from (`None`: fixed from the command line).
    pub map: Option<Arc<ClusterMap>>,
    /// Groups whose replicas live on the same nodes, two or more of them: one call to one
    /// of those nodes can search them all (`--batch-groups`).
    pub co_hosted: Vec<Arc<CoHosted>>,
}

/// Groups hosted on the same set of nodes, read as one: a "group" whose replicas are the
/// nodes, so that a batched search picks a node, fails over and hedges as a group's read
/// does.
pub struct CoHosted {
    /// Indices into [`Cluster::groups`].
    pub groups: Vec<usize>,
    /// Their group ids, as the nodes know them.
    pub ids: Vec<u64>,
    pub nodes: Group,
}

/// Each replica's CPU pool, from what its node says of its CPUs (`cpus[i]`, replica
/// `i`'s): replicas naming the same CPUs share a pool; one naming none has its own.
fn pools(cpus: &[Option<&str>]) -> Vec<usize> {
    let mut named: Vec<Option<&str>> = Vec::with_capacity(cpus.len());
    cpus.iter()
        .map(
            |c| match c.and_then(|c| named.iter().position(|&n| n == Some(c))) {
                Some(pool) => pool,
                None => {
                    named.push(*c);
                    named.len() - 1
                }
            },
        )
        .collect()
}

/// The co-hosted sets of `groups` (by their replicas' addresses).
/// `ids[i]` is group `i`'s id; `cpus` what the node at an address says of its CPUs.
fn co_hosted(
    groups: &[Arc<Group>],
    ids: &[u64],
    http: &reqwest::Client,
    reads: &Arc<ReadPolicy>,
    cpus: &HashMap<&str, &str>,
) -> Vec<Arc<CoHosted>> {
    let mut by_nodes: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
    for g in groups {
        let mut nodes: Vec<String> = g.replicas.iter().map(|r| r.addr().to_string()).collect();
        nodes.sort();
        by_nodes.entry(nodes).or_default().push(g.index);
    }
    by_nodes
        .into_iter()
        .filter(|(_, groups)| groups.len() > 1)
        .map(|(nodes, groups)| {
            let named: Vec<Option<&str>> = nodes
                .iter()
                .map(|a| cpus.get(a.as_str()).copied())
                .collect();
            let nodes = nodes
                .into_iter()
                .map(|a| ShardClient::new(a, http.clone()))
                .collect();
            let mut set =
                Group::with_policy(groups[0], nodes, reads.clone()).in_pools(pools(&named));
            set.label = groups
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join("+");
            let ids = groups.iter().map(|&i| ids[i]).collect();
            Arc::new(CoHosted {
                groups,
                ids,
                nodes: set,
            })
        })
        .collect()
}

/// The router's current view of the cluster, swapped whole when the map changes.
pub struct ClusterView {
    current: RwLock<Arc<Cluster>>,
    /// Where the meta group's members listen (empty: a fixed cluster).
    meta: Vec<String>,
    http: reqwest::Client,
    /// One refresh at a time; callers arriving meanwhile wait for it.
    refreshing: tokio::sync::Mutex<()>,
    /// How the groups of each new view read.
    reads: Arc<ReadPolicy>,
}

impl ClusterView {
    pub fn fixed(cluster: Cluster, http: reqwest::Client) -> Self {
        Self {
            current: RwLock::new(Arc::new(cluster)),
            meta: Vec::new(),
            http,
            refreshing: tokio::sync::Mutex::new(()),
            reads: Arc::default(),
        }
    }

    /// A view of the cluster map held by the meta members at `meta`; waits (up to
    /// `wait`) for a first map.
    pub async fn from_meta(
        meta: Vec<String>,
        http: reqwest::Client,
        reads: Arc<ReadPolicy>,
        wait: Duration,
    ) -> anyhow::Result<Self> {
        let deadline = tokio::time::Instant::now() + wait;
        let map = loop {
            match fetch_map(&http, &meta).await {
                Ok(map) => break map,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    anyhow::bail!("no cluster map from {meta:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let cluster = Cluster::from_map(map, &http, &reads);
        Ok(Self {
            current: RwLock::new(Arc::new(cluster)),
            meta,
            http,
            refreshing: tokio::sync::Mutex::new(()),
            reads,
        })
    }

    pub fn get(&self) -> Arc<Cluster> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The client every call to the nodes shares.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn meta_addrs(&self) -> &[String] {
        &self.meta
    }

    pub fn version(&self) -> u64 {
        self.get().map.as_ref().map_or(0, |m| m.version)
    }

    /// Loads the map again and takes it if newer. A fixed cluster has nothing to load.
    pub async fn refresh(&self) {
        if self.meta.is_empty() {
            return;
        }
        let before = self.version();
        let _one = self.refreshing.lock().await;
        if self.version() > before {
            return; // Someone else refreshed while this caller waited.
        }
        match fetch_map(&self.http, &self.meta).await {
            Ok(map) if map.version > self.version() => {
                tracing::info!(version = map.version, "cluster map changed");
                let cluster = Arc::new(Cluster::from_map(map, &self.http, &self.reads));
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = cluster;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("refreshing the cluster map: {e}"),
        }
    }

    /// Refreshes every `every` in the background (a map-driven view only).
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) {
        if self.meta.is_empty() {
            return;
        }
        let view = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(view) = view.upgrade() else { return };
                view.refresh().await;
            }
        });
    }
}

impl Cluster {
    /// Lone shards, one group each, with slots spread evenly over them.
    pub fn fixed(addrs: &[String], http: reqwest::Client, reads: &Arc<ReadPolicy>) -> Self {
        Self {
            groups: addrs
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    Arc::new(Group::with_policy(
                        i,
                        vec![ShardClient::new(a.clone(), http.clone())],
                        reads.clone(),
                    ))
                })
                .collect(),
            slots: SlotTable::even(addrs.len()),
            replicated: false,
            map: None,
            co_hosted: Vec::new(),
        }
    }

    /// The groups of a cluster map, in group-id order; slot owners index into them.
    /// Replicas whose nodes say they run on the same CPUs are read as one when the read
    /// policy says so.
    pub fn from_map(map: ClusterMap, http: &reqwest::Client, reads: &Arc<ReadPolicy>) -> Self {
        let ids: Vec<u64> = map.groups.keys().copied().collect();
        // What each node says of its CPUs, by address (nothing: each a pool of its own).
        let cpus: HashMap<&str, &str> = (map.nodes.values())
            .filter(|_| reads.by_cpus)
            .filter_map(|n| Some((n.addr.as_str(), n.cpus.as_deref()?)))
            .collect();
        let groups: Vec<Arc<Group>> = map
            .groups
            .iter()
            .enumerate()
            .map(|(i, (&g, info))| {
                let nodes: Vec<&NodeInfo> = info
                    .replicas
                    .iter()
                    .filter_map(|n| map.nodes.get(n))
                    .collect();
                let replicas = nodes
                    .iter()
                    .map(|n| ShardClient::replica(n.addr.clone(), g, http.clone()))
                    .collect();
                let named: Vec<Option<&str>> = nodes
                    .iter()
                    .map(|n| cpus.get(n.addr.as_str()).copied())
                    .collect();
                Arc::new(Group::with_policy(i, replicas, reads.clone()).in_pools(pools(&named)))
            })
            .collect();
        let owners = map
            .slots
            .iter()
            .map(|g| ids.binary_search(g).unwrap_or(0))
            .collect();
        Self {
            co_hosted: co_hosted(&groups, &ids, http, reads, &cpus),
            groups,
            slots: SlotTable::from_owners(owners),
            replicated: true,
            map: Some(Arc::new(map)),
        }
    }

    /// Raft groups: `groups[g]` lists the addresses of the nodes hosting group `g`.
    pub fn replicated(
        groups: &[Vec<String>],
        http: reqwest::Client,
        reads: &Arc<ReadPolicy>,
    ) -> Self {
        let groups: Vec<Arc<Group>> = groups
            .iter()
            .enumerate()
            .map(|(g, addrs)| {
                let replicas = addrs
                    .iter()
                    .map(|a| ShardClient::replica(a.clone(), g as u64, http.clone()))
                    .collect();
                Arc::new(Group::with_policy(g, replicas, reads.clone()))
            })
            .collect();
        let ids: Vec<u64> = (0..groups.len() as u64).collect();
        Self {
            co_hosted: co_hosted(&groups, &ids, &http, reads, &HashMap::new()),
            slots: SlotTable::even(groups.len()),
            groups,
            replicated: true,
            map: None,
        }
    }

    /// Groups values by the shard group that owns their item id.
    pub fn by_shard<T>(
        &self,
        values: impl IntoIterator<Item = T>,
        id: impl Fn(&T) -> &str,
    ) -> BTreeMap<usize, Vec<T>> {
        let mut groups: BTreeMap<usize, Vec<T>> = BTreeMap::new();
        for v in values {
            groups
                .entry(self.slots.shard_of(id(&v)))
                .or_default()
                .push(v);
        }
        groups
    }

    /// Splits `ids` by the group that may hold them: its owner, and, for a slot being
    /// moved (served by the group it leaves as well as by its new owner until the move
    /// ends), every group.
    pub fn split_by_group(&self, ids: &[String]) -> Vec<Vec<String>> {
        let moving: BTreeSet<u16> = self
            .map
            .iter()
            .flat_map(|m| m.moves.iter().flat_map(|mv| mv.slots.iter().copied()))
            .collect();
        let mut out = vec![Vec::new(); self.groups.len()];
        for id in ids {
            if moving.contains(&(slot_of(id) as u16)) {
                out.iter_mut().for_each(|g| g.push(id.clone()));
            } else if let Some(g) = out.get_mut(self.slots.shard_of(id)) {
                g.push(id.clone());
            }
        }
        out
    }

    pub fn group_of(&self, item_id: &str) -> &Arc<Group> {
        &self.groups[self.slots.shard_of(item_id)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redrec_shard_api::map::{MetaCommand, Settings};

    /// A map of nodes 1-3 at `http://n1`…, group `g` on `replicas[g]`.
    fn three_nodes(replicas: &[Vec<u64>]) -> ClusterMap {
        let mut map = ClusterMap::default();
        let nodes = (1..=3).map(|n| (n, format!("http://n{n}"))).collect();
        let groups = (0..).zip(replicas.iter().cloned()).collect();
        let settings = Settings::new(64, 3);
        map.apply(MetaCommand::Init {
            nodes,
            groups,
            settings,
        })
        .unwrap();
        map
    }

    #[test]
    fn excluded_ids_go_to_the_groups_that_may_hold_them() {
        let http = reqwest::Client::new();
        let addrs: Vec<String> = (0..3)
            .map(|i| format!("http://127.0.0.1:{}", 1 + i))
            .collect();
        let fixed = Cluster::fixed(&addrs, http.clone(), &Arc::default());
        let ids: Vec<String> = (0..300).map(|i| format!("n{i}")).collect();
        let split = fixed.split_by_group(&ids);
        assert_eq!(split.iter().map(Vec::len).sum::<usize>(), ids.len());
        for (g, part) in split.iter().enumerate() {
            assert!(part.iter().all(|id| fixed.slots.shard_of(id) == g));
        }

        // While a slot moves, its ids go to every group.
        let mut map = three_nodes(&[vec![1, 2, 3], vec![1, 2, 3]]);
        let moving = slot_of(&ids[0]) as u16;
        let (from, to) = (map.slots[moving as usize], 1 - map.slots[moving as usize]);
        map.apply(MetaCommand::BeginMove {
            slots: vec![moving],
            from,
            to,
        })
        .unwrap();
        let mapped = Cluster::from_map(map, &http, &Arc::default());
        let split = mapped.split_by_group(&ids);
        assert!(split.iter().all(|part| part.contains(&ids[0])));
        let others = ids.iter().filter(|id| slot_of(id) as u16 != moving).count();
        let total: usize = split.iter().map(Vec::len).sum();
        assert_eq!(total, others + 2 * (ids.len() - others));
    }

    #[test]
    fn replicas_on_the_same_cpus_share_a_pool_when_the_policy_says_so() {
        assert_eq!(pools(&[Some("a"), Some("b"), Some("a")]), [0, 1, 0]);
        assert_eq!(pools(&[None, None, Some("a"), Some("a")]), [0, 1, 2, 2]);

        let mut map = three_nodes(&[vec![1, 2, 3], vec![3, 2, 1]]);
        for (id, cpus) in [(1, "m1 cpus 0-3"), (2, "m1 cpus 0-3"), (3, "m2 cpus 0-3")] {
            let addr = format!("http://n{id}");
            let (spare, cpus) = (false, Some(cpus.to_string()));
            map.apply(MetaCommand::AddNode {
                id,
                addr,
                spare,
                cpus,
            })
            .unwrap();
        }
        let http = reqwest::Client::new();
        let by_cpus = Arc::new(ReadPolicy {
            by_cpus: true,
            ..ReadPolicy::default()
        });
        let pooled = Cluster::from_map(map.clone(), &http, &by_cpus);
        assert_eq!(pooled.groups[0].pools(), [0, 0, 1]);
        assert_eq!(pooled.groups[1].pools(), [0, 1, 1], "nodes 3, 2, 1");
        // The set of both groups on nodes 1-3, by address.
        assert_eq!(pooled.co_hosted[0].nodes.pools(), [0, 0, 1]);

        let apart = Cluster::from_map(map, &http, &Arc::default());
        assert_eq!(apart.groups[0].pools(), [0, 1, 2]);
        assert_eq!(apart.co_hosted[0].nodes.pools(), [0, 1, 2]);
    }
}
