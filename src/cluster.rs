//! `redrec cluster`: what the shard nodes say about their groups, and membership changes.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Groups, replicas, leaders and applied indexes, as the given nodes report them.
    Status(StatusArgs),
    /// Add a node's replica to a group (the group's leader is found from any member).
    AddReplica(MemberArgs),
    /// Remove a node's replica from a group.
    RemoveReplica(MemberArgs),
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
        ClusterCommand::AddReplica(a) => member(a, "add", &http).await,
        ClusterCommand::RemoveReplica(a) => member(a, "remove", &http).await,
    }
}

async fn status(a: StatusArgs, http: &reqwest::Client) -> Result<()> {
    let mut nodes = Vec::new();
    for addr in &a.nodes {
        let addr = addr.trim_end_matches('/');
        let answer = http
            .get(format!("{addr}/v1/node"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        nodes.push(match answer {
            Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
            Err(e) => json!({"addr": addr, "error": e.to_string()}),
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(());
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
    Ok(())
}

/// Posts the change to `via`, then to the leader it names, a few times.
async fn member(a: MemberArgs, action: &str, http: &reqwest::Client) -> Result<()> {
    if action == "add" && a.addr.is_none() {
        bail!("add-replica needs --addr, where node {} listens", a.node);
    }
    let body = json!({"action": action, "node": a.node, "addr": a.addr});
    let mut target = a.via.trim_end_matches('/').to_string();
    for _ in 0..5 {
        let resp = http
            .post(format!("{target}/admin/v1/groups/{}/replicas", a.group))
            .timeout(Duration::from_secs(15))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("reaching {target}"))?;
        let status = resp.status();
        let leader = resp
            .headers()
            .get("x-redrec-leader")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            println!(
                "group {}: {action} node {} applied; voters now {}",
                a.group, a.node, answer["voters"]
            );
            return Ok(());
        }
        match (status.as_u16(), leader) {
            (421, Some(l)) => target = l,
            (421, None) | (503, _) => tokio::time::sleep(Duration::from_millis(500)).await,
            _ => bail!("{target} answered {status}: {answer}"),
        }
    }
    bail!("no leader of group {} accepted the change", a.group)
}
