//! What the shards say about themselves, gathered for `GET /v1/cluster` and for the shard
//! gauges on `/metrics`: each replica's points, index and memory, each group's leader.

use std::time::Duration;

use futures::future::join_all;
use redrec_shard_api::points::Memory;
use redrec_shard_api::slots::SLOTS;
use redrec_shard_api::status::NodeStatus;
use redrec_shard_api::ShardClient;

use crate::api::{ClusterResponse, MapSummary, ReplicaInfo, ShardStatus};
use crate::state::RouterState;

/// How long a replica may take to say how it is.
const ASK: Duration = Duration::from_millis(500);

async fn replica_info(c: &ShardClient, replicated: bool) -> ReplicaInfo {
    let stats = c.stats(ASK).await;
    let status = if replicated {
        c.status(ASK).await.ok()
    } else {
        None
    };
    let s = stats.as_ref().ok();
    ReplicaInfo {
        addr: c.addr().to_string(),
        up: stats.is_ok(),
        points: s.map(|s| s.points),
        indexed: s.map(|s| s.indexed_vectors),
        indexing: s.map(|s| s.indexing),
        memory: s.map(|s| s.memory),
        leader: status.as_ref().map(|s| s.raft.is_leader),
        caught_up: status.as_ref().map(|s| s.caught_up),
        applied: status.as_ref().map(|s| s.raft.applied),
        term: status.as_ref().map(|s| s.raft.term),
        error: stats.err().map(|e| e.to_string()),
    }
}

/// Every group as its replicas describe it, each asked at once.
pub async fn shards(s: &RouterState) -> Vec<ShardStatus> {
    let cluster = s.cluster.get();
    let slots = cluster.slots.slots_per_shard(cluster.groups.len());
    let replicated = cluster.replicated;
    let groups = join_all(cluster.groups.iter().map(|g| async move {
        join_all(g.replicas.iter().map(|c| replica_info(c, replicated))).await
    }))
    .await;
    let ids: Vec<u64> = match &cluster.map {
        Some(map) => map.groups.keys().copied().collect(),
        None => (0..cluster.groups.len() as u64).collect(),
    };
    cluster
        .groups
        .iter()
        .zip(groups)
        .map(|(g, replicas)| {
            // The group's face: its leader if one is known, else the first that answered.
            let face = replicas
                .iter()
                .position(|r| r.leader == Some(true))
                .or_else(|| replicas.iter().position(|r| r.up))
                .unwrap_or(0);
            let r = &replicas[face];
            ShardStatus {
                index: g.index,
                group: ids[g.index],
                addr: r.addr.clone(),
                slots: slots[g.index],
                up: replicas.iter().any(|r| r.up),
                points: r.points,
                memory: r.memory,
                ram_per_item: r.memory.zip(r.points).map(|(m, n)| m.ram_per_item(n)),
                error: (!replicas.iter().any(|r| r.up))
                    .then(|| r.error.clone())
                    .flatten(),
                replicas: if replicated { replicas } else { Vec::new() },
            }
        })
        .collect()
}

/// `GET /v1/cluster`.
pub async fn cluster(s: &RouterState) -> ClusterResponse {
    let (qdrant_points, shards) = match &s.qdrant {
        Some(q) => {
            let (points, shards) = q.shards().await;
            (Some(points), shards)
        }
        None => (None, shards(s).await),
    };
    record(&shards);
    let m = s.encoder.manifest();
    let cluster = s.cluster.get();
    let mut memory = Memory::default();
    for m in shards.iter().filter_map(|g| g.memory) {
        memory += m;
    }
    ClusterResponse {
        model_version: m.model_version.clone(),
        dim: m.dim,
        scenarios: m.scenarios.clone(),
        queries: m.query_names.clone(),
        max_history: m.max_history,
        slots: SLOTS,
        points: qdrant_points.unwrap_or_else(|| shards.iter().filter_map(|g| g.points).sum()),
        backend: match &s.qdrant {
            Some(q) => format!(
                "qdrant {} collection {}",
                q.items.addr(),
                q.items.settings().collection
            ),
            None => "embedded".into(),
        },
        memory,
        shards,
        map: cluster.map.as_ref().map(|m| MapSummary {
            version: m.version,
            rebalancing: m.rebalancing,
            moves: m.moves.clone(),
            nodes: m.nodes.len(),
        }),
    }
}

/// Every node of the cluster map (none for a fixed cluster), each asked at once.
pub async fn nodes(s: &RouterState) -> Vec<NodeStatus> {
    let cluster = s.cluster.get();
    let Some(map) = &cluster.map else {
        return Vec::new();
    };
    let http = s.cluster.http();
    let asks = map
        .nodes
        .values()
        .map(|n| ShardClient::new(n.addr.clone(), http.clone()));
    join_all(asks.map(|c| async move { c.node_status(ASK).await.ok() }))
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Sets the per-node gauges: RAM the node's replicas use, and its budget.
pub fn record_nodes(nodes: &[NodeStatus]) {
    for n in nodes {
        let node = n.node.to_string();
        metrics::gauge!("redrec_node_ram_bytes", "node" => node.clone()).set(n.memory.ram() as f64);
        if let Some(budget) = n.budget {
            metrics::gauge!("redrec_node_memory_budget_bytes", "node" => node).set(budget as f64);
        }
    }
}

/// Sets the per-group and per-replica gauges from a survey: points, whether the group
/// has a leader, each replica's liveness and how far it is behind its leader, memory.
pub fn record(shards: &[ShardStatus]) {
    for g in shards {
        let group = g.group.to_string();
        if let Some(points) = g.points {
            metrics::gauge!("redrec_group_points", "group" => group.clone()).set(points as f64);
        }
        if !g.replicas.is_empty() {
            let leader = g.replicas.iter().find(|r| r.leader == Some(true));
            metrics::gauge!("redrec_group_has_leader", "group" => group.clone())
                .set(if leader.is_some() { 1.0 } else { 0.0 });
            for r in &g.replicas {
                let replica = r.addr.clone();
                metrics::gauge!("redrec_replica_up", "group" => group.clone(), "replica" => replica.clone())
                    .set(if r.up { 1.0 } else { 0.0 });
                if let (Some(l), Some(a)) = (leader.and_then(|l| l.applied), r.applied) {
                    metrics::gauge!("redrec_replica_apply_lag_entries", "group" => group.clone(), "replica" => replica)
                        .set(l.saturating_sub(a) as f64);
                }
            }
        }
        // A lone shard is its own one replica.
        let lone;
        let replicas: &[ReplicaInfo] = if g.replicas.is_empty() {
            lone = [ReplicaInfo {
                addr: g.addr.clone(),
                up: g.up,
                points: g.points,
                memory: g.memory,
                ..Default::default()
            }];
            &lone
        } else {
            &g.replicas
        };
        for r in replicas {
            let Some(m) = r.memory else { continue };
            for (part, bytes) in [
                ("vectors_ram", m.vectors_ram),
                ("vectors_disk", m.vectors_disk),
                ("quantized", m.quantized),
                ("index", m.index),
                ("payloads", m.payloads),
                ("disk", m.disk),
            ] {
                metrics::gauge!(
                    "redrec_replica_memory_bytes",
                    "group" => group.clone(),
                    "replica" => r.addr.clone(),
                    "part" => part
                )
                .set(bytes as f64);
            }
        }
    }
}
