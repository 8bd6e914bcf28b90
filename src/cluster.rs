//! `redrec cluster`: the cluster map and what the shard nodes say about their groups;
//! membership changes, nodes, rebalancing and slot moves.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use clap::{Args, Subcommand};
use redrec_shard_api::client::{call_leader, replicas_path, MEMBERSHIP_CALL};
use redrec_shard_api::collection::{Collection, Quantization};
use redrec_shard_api::map::{ClusterMap, MetaCommand, META_GROUP};
use redrec_shard_api::meta::{self, fetch_map};
use redrec_shard_api::points::Stats;
use redrec_shard_api::status::{GroupStatus, MembershipRequest, NodeStatus};
use redrec_shard_api::ShardClient;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// The cluster map (groups, slots, moves, version) and every replica's state.
    Status(StatusArgs),
    /// Register a node as spare: new groups are formed from spare nodes.
    AddNode(AddNodeArgs),
    /// Even out the slots across the groups (moves run online, one batch at a time).
    Rebalance(MetaArgs),
    /// Move slots to another group, online.
    MoveSlot(MoveArgs),
    /// Turn on or off the rebalance that follows each new group.
    AutoRebalance(AutoArgs),
    /// Add a node's replica to a group (the group's leader is found from any member).
    AddReplica(MemberArgs),
    /// Remove a node's replica from a group.
    RemoveReplica(MemberArgs),
    /// Change the collection settings (named ones only): searches use them at once, every
    /// group rebuilds its segments under them at its next optimisation.
    Settings(SettingsArgs),
    /// A router's view of the cluster, refreshed in the terminal: groups, leaders, lag,
    /// requests per second and p99 per route, hedges, partial answers, encoder errors.
    Top(crate::cluster_top::TopArgs),
}

#[derive(Args)]
pub struct SettingsArgs {
    #[command(flatten)]
    meta: MetaArgs,
    /// `none` or `int8`.
    #[arg(long)]
    quantization: Option<Quantization>,
    /// Original vectors on disk (`true`) or in RAM (`false`).
    #[arg(long)]
    vectors_on_disk: Option<bool>,
    #[arg(long)]
    hnsw_m: Option<usize>,
    #[arg(long)]
    hnsw_ef_construct: Option<usize>,
    /// Default HNSW beam width of a search.
    #[arg(long)]
    ef: Option<usize>,
    #[arg(long)]
    oversampling: Option<f64>,
    #[arg(long)]
    indexing_threshold_kb: Option<usize>,
}

impl SettingsArgs {
    /// `c` with the settings named on the command line changed.
    fn apply(&self, mut c: Collection) -> Collection {
        if let Some(q) = self.quantization {
            c.quantization = q;
        }
        if let Some(d) = self.vectors_on_disk {
            c.on_disk = d;
        }
        c.hnsw_m = self.hnsw_m.unwrap_or(c.hnsw_m);
        c.hnsw_ef_construct = self.hnsw_ef_construct.unwrap_or(c.hnsw_ef_construct);
        c.ef = self.ef.unwrap_or(c.ef);
        c.oversampling = self.oversampling.unwrap_or(c.oversampling);
        c.indexing_threshold_kb = self
            .indexing_threshold_kb
            .unwrap_or(c.indexing_threshold_kb);
        c
    }
}

#[derive(Args)]
pub struct StatusArgs {
    /// Shard node addresses (http://host:port), comma-separated.
    #[arg(long, env = "REDREC_NODES", value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// Print the nodes' answers as one JSON array.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct MetaArgs {
    /// Meta members (http://host:port), comma-separated; the leader is found from any.
    #[arg(long, env = "REDREC_META", value_delimiter = ',', required = true)]
    via: Vec<String>,
}

#[derive(Args)]
pub struct AddNodeArgs {
    #[command(flatten)]
    meta: MetaArgs,
    #[arg(long)]
    node: u64,
    /// Where the node listens.
    #[arg(long)]
    addr: String,
}

#[derive(Args)]
pub struct AutoArgs {
    #[command(flatten)]
    meta: MetaArgs,
    #[arg(value_parser = ["on", "off"])]
    state: String,
}

#[derive(Args)]
pub struct MoveArgs {
    #[command(flatten)]
    meta: MetaArgs,
    /// Slots to move (0..1023), comma-separated; all must belong to one group.
    #[arg(long, value_delimiter = ',', required = true)]
    slot: Vec<u16>,
    /// The group to move them to.
    #[arg(long)]
    to: u64,
}

#[derive(Args)]
pub struct MemberArgs {
    /// Any node hosting a replica of the group.
    #[arg(long)]
    via: String,
    #[arg(long)]
    group: u64,
    /// Id of the node whose replica is added or removed.
    #[arg(long)]
    node: u64,
    /// Where that node listens (needed to add it).
    #[arg(long)]
    addr: Option<String>,
}

pub async fn run(cmd: ClusterCommand, http: reqwest::Client) -> Result<()> {
    match cmd {
        ClusterCommand::Status(a) => status(a, &http).await,
        ClusterCommand::Top(a) => crate::cluster_top::top(a, http).await,
        ClusterCommand::AddNode(a) => {
            let cmd = MetaCommand::AddNode {
                id: a.node,
                addr: a.addr.trim_end_matches('/').to_string(),
                spare: true,
                cpus: None,
            };
            change(&a.meta, cmd, &http).await
        }
        ClusterCommand::Rebalance(a) => change(&a, MetaCommand::Rebalance, &http).await,
        ClusterCommand::AutoRebalance(a) => {
            let cmd = MetaCommand::SetAutoRebalance {
                enabled: a.state == "on",
            };
            change(&a.meta, cmd, &http).await
        }
        ClusterCommand::MoveSlot(a) => {
            let map = fetch_map(&http, &a.meta.via).await?;
            let owners: BTreeSet<u64> = a
                .slot
                .iter()
                .map(|&s| {
                    map.slots
                        .get(s as usize)
                        .copied()
                        .context("slots are 0..1023")
                })
                .collect::<Result<_>>()?;
            let [from] = owners.into_iter().collect::<Vec<_>>()[..] else {
                bail!("the slots belong to several groups; move each group's in its own call");
            };
            let cmd = MetaCommand::BeginMove {
                slots: a.slot.clone(),
                from,
                to: a.to,
            };
            change(&a.meta, cmd, &http).await
        }
        ClusterCommand::AddReplica(a) => member(a, "add", &http).await,
        ClusterCommand::RemoveReplica(a) => member(a, "remove", &http).await,
        ClusterCommand::Settings(a) => {
            let map = fetch_map(&http, &a.meta.via).await?;
            let collection = a.apply(map.settings.collection.clone());
            map.settings
                .collection
                .check_change(&collection)
                .map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string_pretty(&collection)?);
            change(&a.meta, MetaCommand::SetCollection { collection }, &http).await
        }
    }
}

/// Proposes a map change through the meta members.
async fn change(meta: &MetaArgs, cmd: MetaCommand, http: &reqwest::Client) -> Result<()> {
    let version = meta::propose(http, &meta.via, &cmd)
        .await
        .with_context(|| format!("{cmd:?}"))?;
    println!("applied; cluster map version {version}");
    Ok(())
}

/// The map at a glance: its version, each group's slots, points and leader, moves.
async fn print_map(map: &ClusterMap, nodes: &[Value], http: &reqwest::Client) {
    let state = if !map.moves.is_empty() || map.rebalancing {
        "rebalancing"
    } else if map.balanced() {
        "balanced"
    } else {
        "unbalanced"
    };
    println!(
        "cluster map v{} · {} nodes · {} groups · {} slots, {state} (auto {}) · towers {}",
        map.version,
        map.nodes.len(),
        map.groups.len(),
        map.slots.len(),
        if map.settings.auto_rebalance {
            "on"
        } else {
            "off"
        },
        map.model_version.as_deref().unwrap_or("-"),
    );
    let c = &map.settings.collection;
    println!(
        "collection: {:?} · quantization {:?} · vectors {} · hnsw m={} ef_construct={} · ef {}",
        c.distance,
        c.quantization,
        if c.on_disk { "on disk" } else { "in RAM" },
        c.hnsw_m,
        c.hnsw_ef_construct,
        c.ef
    );
    println!(
        "\n{:<6} {:>6} {:>10} {:>8} {:>11} {:>9}  {:<28} replicas",
        "group", "slots", "points", "indexed", "RAM", "RAM/item", "leader"
    );
    let counts = map.slot_counts();
    for (g, info) in &map.groups {
        let leader = nodes
            .iter()
            .flat_map(|n| n["groups"].as_array().cloned().unwrap_or_default())
            .find(|r| r["group"] == *g && r["is_leader"] == true)
            .and_then(|r| r["node"].as_u64());
        let stats = match leader.and_then(|l| map.nodes.get(&l)) {
            Some(n) => ShardClient::replica(n.addr.clone(), *g, http.clone())
                .stats(Duration::from_secs(2))
                .await
                .ok(),
            None => None,
        };
        let figure = |f: &dyn Fn(&Stats) -> String| stats.as_ref().map_or("?".into(), f);
        let points = figure(&|s| s.points.to_string());
        let indexed = figure(&|s| {
            format!(
                "{:.0}%",
                100.0 * s.indexed_vectors as f64 / s.points.max(1) as f64
            )
        });
        let ram = figure(&|s| ByteSize(s.memory.ram()).display().iec_short().to_string());
        let per_item = figure(&|s| format!("{:.0}B", s.memory.ram_per_item(s.points)));
        let leader = leader.map_or("none".to_string(), |l| {
            let addr = map.nodes.get(&l).map_or("?", |n| n.addr.as_str());
            format!("{l}@{}", addr.trim_start_matches("http://"))
        });
        let replicas: Vec<String> = info.replicas.iter().map(u64::to_string).collect();
        println!(
            "{:<6} {:>6} {:>10} {:>8} {:>11} {:>9}  {:<28} {}",
            g,
            counts.get(g).copied().unwrap_or(0),
            points,
            indexed,
            ram,
            per_item,
            leader,
            replicas.join(" ")
        );
    }
    if map.moves.is_empty() {
        println!("\nmoves: none");
    }
    for m in &map.moves {
        println!(
            "\nmove {}: {} slots, group {} -> {} ({:?})",
            m.id,
            m.slots.len(),
            m.from,
            m.to,
            m.phase
        );
    }
    println!();
}

async fn status(a: StatusArgs, http: &reqwest::Client) -> Result<()> {
    let map = fetch_map(http, &a.nodes).await.ok();
    let mut addrs: Vec<String> = a
        .nodes
        .iter()
        .map(|n| n.trim_end_matches('/').to_string())
        .collect();
    if let Some(map) = &map {
        addrs.extend(map.nodes.values().map(|n| n.addr.clone()));
    }
    addrs.sort();
    addrs.dedup();
    let mut nodes = Vec::new();
    for addr in &addrs {
        let node = ShardClient::new(addr.clone(), http.clone());
        nodes.push(match node.node_status(Duration::from_secs(2)).await {
            Ok(status) => serde_json::to_value(status)?,
            Err(e) => json!({"addr": node.addr(), "error": e.to_string()}),
        });
    }
    if a.json {
        let out = json!({"map": map, "nodes": nodes});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if let Some(map) = &map {
        print_map(map, &nodes, http).await;
    }
    println!(
        "{:<6} {:<24} {:<6} {:<8} {:>6} {:>10} {:>10}  voters",
        "group", "node", "ready", "role", "term", "applied", "commit"
    );
    let mut rows = Vec::new();
    for n in &nodes {
        if let Some(e) = n.get("error") {
            println!(
                "{:<6} {:<24} down: {}",
                "-",
                n["addr"].as_str().unwrap_or("?"),
                e
            );
            continue;
        }
        for g in n["groups"].as_array().into_iter().flatten() {
            rows.push((
                g["group"].as_u64().unwrap_or(0),
                n["node"].clone(),
                n["addr"].clone(),
                g.clone(),
            ));
        }
    }
    rows.sort_by_key(|r| (r.0, r.1.as_u64()));
    for (group, node, addr, g) in rows {
        let group = if group == META_GROUP {
            "meta".to_string()
        } else {
            group.to_string()
        };
        let role = if g["is_leader"] == true {
            "leader"
        } else if g["restoring"] == true {
            "restore"
        } else {
            "follower"
        };
        println!(
            "{:<6} {:<24} {:<6} {:<8} {:>6} {:>10} {:>10}  {}",
            group,
            format!(
                "{}@{}",
                node,
                addr.as_str().unwrap_or("?").trim_start_matches("http://")
            ),
            if g["caught_up"] == true { "yes" } else { "no" },
            role,
            g["term"].to_string(),
            g["applied"].to_string(),
            g["commit"].to_string(),
            g["voters"],
        );
    }
    print_memory(&nodes);
    Ok(())
}

/// Each node's shards: points, RAM and disk against its budget, and the process's RSS.
fn print_memory(nodes: &[Value]) {
    let statuses: Vec<NodeStatus> = nodes
        .iter()
        .filter_map(|n| serde_json::from_value(n.clone()).ok())
        .collect();
    if statuses.is_empty() {
        return;
    }
    println!(
        "\n{:<24} {:>10} {:>11} {:>11} {:>11} {:>11}",
        "node", "points", "RAM", "budget", "disk", "RSS"
    );
    let bytes = |b: Option<u64>| {
        b.map_or("-".to_string(), |b| {
            ByteSize(b).display().iec_short().to_string()
        })
    };
    for n in statuses {
        println!(
            "{:<24} {:>10} {:>11} {:>11} {:>11} {:>11}",
            format!("{}@{}", n.node, n.addr.trim_start_matches("http://")),
            n.points,
            bytes(Some(n.memory.ram())),
            bytes(n.budget),
            bytes(Some(n.memory.disk)),
            bytes(n.rss_bytes),
        );
    }
}

/// Proposes the change through `via`, following it to the group's leader.
async fn member(a: MemberArgs, action: &str, http: &reqwest::Client) -> Result<()> {
    if action == "add" && a.addr.is_none() {
        bail!("add-replica needs --addr, where node {} listens", a.node);
    }
    let change = MembershipRequest {
        action: action.into(),
        node: a.node,
        addr: a.addr.clone(),
    };
    let path = replicas_path(a.group);
    let via = [a.via.clone()];
    let status: GroupStatus = call_leader(http, &via, &path, Some(&change), MEMBERSHIP_CALL)
        .await
        .with_context(|| format!("no leader of group {} accepted the change", a.group))?;
    println!(
        "group {}: {action} node {} applied; voters now {}",
        a.group,
        a.node,
        serde_json::to_string(&status.raft.voters)?
    );
    Ok(())
}
