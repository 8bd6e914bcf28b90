//! The shard groups a router talks to and how items map onto them: fixed from the command
//! line, or the cluster map loaded from the meta group, cached by version and refreshed
//! when it moves on (periodically, and at once when a shard says a write reached the wrong
//! group).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redrec_shard_api::meta::fetch_map;
use redrec_shard_api::ClusterMap;
pub use redrec_shard_api::Group;
use redrec_shard_api::ShardClient;

use redrec_shard_api::slots::SlotTable;

#[derive(Clone)]
pub struct Cluster {
    pub groups: Vec<Arc<Group>>,
    pub slots: SlotTable,
    /// Whether the groups are Raft-replicated (their replicas serve `/v1/groups/{g}`).
    pub replicated: bool,
    /// The cluster map this view was built from (`None`: fixed from the command line).
    pub map: Option<Arc<ClusterMap>>,
}

/// The router's current view of the cluster, swapped whole when the map changes.
pub struct ClusterView {
    current: RwLock<Arc<Cluster>>,
    /// Where the meta group's members listen (empty: a fixed cluster).
    meta: Vec<String>,
    http: reqwest::Client,
    /// One refresh at a time; callers arriving meanwhile wait for it.
    refreshing: tokio::sync::Mutex<()>,
}

impl ClusterView {
    pub fn fixed(cluster: Cluster, http: reqwest::Client) -> Self {
        Self {
            current: RwLock::new(Arc::new(cluster)),
            meta: Vec::new(),
            http,
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// A view of the cluster map held by the meta members at `meta`; waits (up to
    /// `wait`) for a first map.
    pub async fn from_meta(
        meta: Vec<String>,
        http: reqwest::Client,
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
        let cluster = Cluster::from_map(map, &http);
        Ok(Self {
            current: RwLock::new(Arc::new(cluster)),
            meta,
            http,
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    pub fn get(&self) -> Arc<Cluster> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
                let cluster = Arc::new(Cluster::from_map(map, &self.http));
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
    pub fn fixed(addrs: &[String], http: reqwest::Client) -> Self {
        Self {
            groups: addrs
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    Arc::new(Group::new(
                        i,
                        vec![ShardClient::new(a.clone(), http.clone())],
                    ))
                })
                .collect(),
            slots: SlotTable::even(addrs.len()),
            replicated: false,
            map: None,
        }
    }

    /// The groups of a cluster map, in group-id order; slot owners index into them.
    pub fn from_map(map: ClusterMap, http: &reqwest::Client) -> Self {
        let ids: Vec<u64> = map.groups.keys().copied().collect();
        let groups = map
            .groups
            .iter()
            .enumerate()
            .map(|(i, (&g, info))| {
                let replicas = info
                    .replicas
                    .iter()
                    .filter_map(|n| map.nodes.get(n))
                    .map(|n| ShardClient::replica(n.addr.clone(), g, http.clone()))
                    .collect();
                Arc::new(Group::new(i, replicas))
            })
            .collect();
        let owners = map
            .slots
            .iter()
            .map(|g| ids.binary_search(g).unwrap_or(0))
            .collect();
        Self {
            groups,
            slots: SlotTable::from_owners(owners),
            replicated: true,
            map: Some(Arc::new(map)),
        }
    }

    /// Raft groups: `groups[g]` lists the addresses of the nodes hosting group `g`.
    pub fn replicated(groups: &[Vec<String>], http: reqwest::Client) -> Self {
        Self {
            groups: groups
                .iter()
                .enumerate()
                .map(|(g, addrs)| {
                    let replicas = addrs
                        .iter()
                        .map(|a| ShardClient::replica(a.clone(), g as u64, http.clone()))
                        .collect();
                    Arc::new(Group::new(g, replicas))
                })
                .collect(),
            slots: SlotTable::even(groups.len()),
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

    pub fn group_of(&self, item_id: &str) -> &Arc<Group> {
        &self.groups[self.slots.shard_of(item_id)]
    }
}
