//! `redrec shard` start-up: a lone shard over one store, or a node hosting Raft groups,
//! from its settings (the binary only parses them).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use redrec_wire::auth::{Guard, Secret};
use redrec_wire::ServeOptions;

use redrec_shard_api::collection::Collection;

use crate::budget::MemoryBudget;
use crate::group::EdgeGroups;
use crate::node::{Node, NodeConfig};
use crate::raft::driver::DriverConfig;
use crate::store::edge::EdgeStore;
use crate::store::VectorStore;

pub struct ShardConfig {
    /// Where to listen; port 0 picks a free one (a lone shard only).
    pub listen: SocketAddr,
    pub data: PathBuf,
    pub dim: usize,
    /// The lone shard's collection settings; a node's new cluster starts with them.
    pub collection: Collection,
    /// Writes that would take the shards' RAM past it are refused.
    pub budget: MemoryBudget,
    /// How long clients may take to send a request.
    pub options: ServeOptions,
    /// The cluster credential every call to this shard must carry, and that its own calls
    /// to other nodes carry (none: internal routes are open).
    pub cluster_token: Option<Secret>,
    /// The CA its calls to other nodes verify them against (TLS).
    pub tls_ca: Option<PathBuf>,
    /// Host Raft-replicated groups as this node; `None`: one lone shard.
    pub node: Option<NodeSettings>,
}

/// A shard node's settings, as given on its command line.
pub struct NodeSettings {
    pub id: u64,
    /// The other nodes, as `id=http://host:port`.
    pub peers: Vec<String>,
    pub groups: Vec<u64>,
    /// Nodes forming each new group (empty: this node and its peers).
    pub voters: Vec<u64>,
    /// Where other nodes reach this one (default: `http://<listen>`, `https://` with TLS).
    pub advertise: Option<String>,
    /// Meta members to join a running cluster through.
    pub seeds: Vec<String>,
    pub auto_rebalance: bool,
    pub raft_tick_ms: u64,
    pub raft_election_ticks: usize,
    pub raft_compact_after: u64,
    /// Allow `POST /admin/v1/faults` to delay reads (tests and benches only).
    pub fault_injection: bool,
}

/// Serves a shard until SIGINT or SIGTERM.
pub async fn serve(cfg: ShardConfig) -> Result<()> {
    let Some(settings) = cfg.node else {
        let (data, dim, collection) = (cfg.data.clone(), cfg.dim, cfg.collection.clone());
        let (store, users) = tokio::task::spawn_blocking(move || {
            let store = EdgeStore::open(&data, dim, &collection)
                .with_context(|| format!("opening {}", data.display()))?;
            let users = crate::users::open(&data.join("users"), store.collection().point_ids)?;
            anyhow::Ok((store, users))
        })
        .await??;
        let guard = Guard::new(None, cfg.cluster_token.as_ref());
        let app = crate::server::lone(Arc::new(store), Arc::new(users), cfg.budget, &guard);
        redrec_wire::serve("shard", cfg.listen, app, cfg.options).await?;
        return Ok(());
    };
    if cfg.listen.port() == 0 {
        bail!("a shard node needs a fixed port: its peers must know where it listens");
    }
    // The port first: a node that cannot have it stops before it touches its data.
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let id = settings.id;
    let scheme = if cfg.options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut node_cfg = node_config(&settings, scheme, cfg.listen, cfg.data.clone(), cfg.dim)?;
    node_cfg.collection = cfg.collection.clone();
    node_cfg.budget = cfg.budget;
    let http = redrec_wire::http_client(cfg.cluster_token.as_ref(), cfg.tls_ca.as_deref())?;
    let factory = Arc::new(EdgeGroups {
        dim: cfg.dim,
        http: http.clone(),
        runtime: tokio::runtime::Handle::current(),
    });
    let node = Node::start(node_cfg, http, factory)
        .await
        .with_context(|| format!("starting shard node {id} in {}", cfg.data.display()))?;
    tracing::info!(node = id, groups = ?settings.groups, "shard node started");
    let guard = Guard::new(None, cfg.cluster_token.as_ref());
    let app = crate::server::node(node.clone(), &guard);
    redrec_wire::serve_on("shard", listener, app, cfg.options).await?;
    node.step_down().await;
    Ok(())
}

/// The node's configuration: peers parsed, voters defaulted (a node with seeds and no
/// peers joins as spare), the Raft clock.
fn node_config(
    s: &NodeSettings,
    scheme: &str,
    listen: SocketAddr,
    data: PathBuf,
    dim: usize,
) -> Result<NodeConfig> {
    let peers = parse_peers(&s.peers)?;
    let seeds: Vec<String> = s
        .seeds
        .iter()
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let voters = if !s.voters.is_empty() {
        s.voters.clone()
    } else if peers.is_empty() && !seeds.is_empty() {
        Vec::new()
    } else {
        let mut v: Vec<u64> = peers.keys().copied().chain([s.id]).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let joining = !seeds.is_empty() && !voters.contains(&s.id);
    Ok(NodeConfig {
        id: s.id,
        data,
        dim,
        advertise: s
            .advertise
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{listen}")),
        peers,
        groups: if joining {
            Vec::new()
        } else {
            s.groups.clone()
        },
        voters,
        seeds,
        auto_rebalance: s.auto_rebalance,
        collection: Collection::default(),
        budget: MemoryBudget::default(),
        fault_injection: s.fault_injection,
        driver: DriverConfig {
            tick: Duration::from_millis(s.raft_tick_ms.max(1)),
            election_ticks: s.raft_election_ticks.max(3),
            heartbeat_ticks: (s.raft_election_ticks / 5).max(1),
            compact_after: s.raft_compact_after,
        },
    })
}

fn parse_peers(peers: &[String]) -> Result<HashMap<u64, String>> {
    peers
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (id, addr) = p
                .split_once('=')
                .with_context(|| format!("peer {p:?}: expected id=http://host:port"))?;
            let id = id
                .trim()
                .parse()
                .with_context(|| format!("peer {p:?}: bad id"))?;
            Ok((id, addr.trim().trim_end_matches('/').to_string()))
        })
        .collect()
}
