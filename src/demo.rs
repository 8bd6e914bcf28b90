//! `redrec demo`: a local cluster of real processes (three shard nodes hosting three
//! Raft-replicated shard groups, an encoder, a router on 127.0.0.1:8080) over the
//! reference towers, a synthetic catalogue ingested through the item tower, one example
//! recommendation, then serving until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::dataset::{self, Item, User};

#[derive(Args)]
pub struct DemoArgs {
    /// Port of the public API on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Catalogue size.
    #[arg(long, default_value_t = 10_000)]
    items: usize,
    /// Shard groups (the catalogue is split over them by slot).
    #[arg(long, default_value_t = 3)]
    shards: usize,
    /// Replicas of each group, one per shard node (1: lone, unreplicated shards).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where the shards keep their data and the processes their logs (wiped at start).
    #[arg(long, default_value = ".redrec/demo")]
    dir: PathBuf,
    /// Start, ingest, print the example, then stop instead of serving.
    #[arg(long)]
    exit_after_example: bool,
}

/// A child `redrec` process and the address it announced.
pub(crate) struct Proc {
    name: String,
    child: Child,
    pub(crate) addr: String,
}

pub(crate) async fn spawn(name: &str, args: &[&str], logs: &Path) -> Result<Proc> {
    let exe = std::env::current_exe()?;
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("{name}: no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .map_err(|_| {
            anyhow!(
                "{name} did not start within 120 s (see {}/{name}.log)",
                logs.display()
            )
        })??
        .ok_or_else(|| anyhow!("{name} exited at start (see {}/{name}.log)", logs.display()))?;
    let addr = line.rsplit(' ').next().unwrap_or_default().to_string();
    if !addr.starts_with("http://") {
        bail!("{name}: unexpected first line {line:?}");
    }
    Ok(Proc {
        name: name.to_string(),
        child,
        addr,
    })
}

/// SIGTERM, a grace period for a clean shutdown, then SIGKILL.
pub(crate) async fn stop(mut procs: Vec<Proc>) {
    // Router first, shards last: nothing is sent to a shard that is already gone.
    procs.reverse();
    for p in &mut procs {
        if let Some(pid) = p.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), p.child.wait())
            .await
            .is_err()
        {
            eprintln!("{} did not stop in 10 s; killing it", p.name);
            let _ = p.child.kill().await;
        }
    }
}

pub(crate) async fn ingest(http: &reqwest::Client, base: &str, items: &[Item]) -> Result<()> {
    let bar = ProgressBar::new(items.len() as u64).with_style(ProgressStyle::with_template(
        "ingesting {bar:40} {pos}/{len} items through the item tower ({per_sec}, eta {eta})",
    )?);
    stream::iter(items.chunks(256))
        .map(|chunk| {
            let body = json!({ "items": chunk.iter().map(|it| json!({
                "id": it.id, "text": it.text,
                "payload": {"title": it.title, "category": it.category, "tags": it.tags},
            })).collect::<Vec<_>>() });
            let bar = bar.clone();
            async move {
                let resp = http
                    .post(format!("{base}/v1/items"))
                    .json(&body)
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!(
                        "ingest failed: {} {}",
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    );
                }
                bar.inc(chunk.len() as u64);
                Ok(())
            }
        })
        .buffer_unordered(2)
        .try_collect::<Vec<()>>()
        .await?;
    bar.finish();
    Ok(())
}

async fn example(
    http: &reqwest::Client,
    base: &str,
    user: &User,
    titles: &std::collections::HashMap<&str, &str>,
) -> Result<()> {
    let history: Vec<Value> = user
        .history
        .iter()
        .rev()
        .take(8)
        .rev()
        .map(|e| json!({"item_id": e.item_id, "scenario": e.scenario, "ts": e.ts}))
        .collect();
    let request = json!({"history": history, "scenario": "homefeed", "k": 10, "exclude_seen": true, "merge": "max"});
    println!("\nTry it:\n\ncurl -s {base}/v1/recommend -H 'content-type: application/json' -d '{request}'\n");
    let answer: Value = http
        .post(format!("{base}/v1/recommend"))
        .json(&request)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    println!("User {} recently saw:", user.user_id);
    for e in user.history.iter().rev().take(8).rev() {
        println!(
            "  [{:8}] {}",
            e.scenario,
            titles.get(e.item_id.as_str()).unwrap_or(&"?")
        );
    }
    println!(
        "Recommended for homefeed (took {} ms, {}/{} shards):",
        answer["took_ms"], answer["coverage"]["answered"], answer["coverage"]["shards"]
    );
    for it in answer["items"].as_array().into_iter().flatten() {
        println!(
            "  {:.3}  {}  [{}]",
            it["score"].as_f64().unwrap_or(0.0),
            it["payload"]["title"].as_str().unwrap_or("?"),
            it["payload"]["category"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// `n` lone shards with their data under `dir`, on free ports; returns their addresses.
pub(crate) async fn start_shards(
    n: usize,
    dir: &Path,
    extra: &[&str],
    logs: &Path,
    procs: &mut Vec<Proc>,
) -> Result<Vec<String>> {
    let mut addrs = Vec::with_capacity(n);
    for i in 0..n {
        let data = dir.join(format!("shard-{i}"));
        let data = data.to_string_lossy();
        let mut args = vec!["shard", "--listen", "127.0.0.1:0", "--data", &data];
        args.extend_from_slice(extra);
        let p = spawn(&format!("shard-{i}"), &args, logs).await?;
        addrs.push(p.addr.clone());
        procs.push(p);
    }
    Ok(addrs)
}

/// `nodes` shard nodes (ids 1..=nodes) with their data under `dir`, each hosting a replica
/// of groups 0..`groups`; waits until every node is ready (each group has a leader and
/// every replica caught up) and returns their addresses.
pub(crate) async fn start_nodes(
    nodes: usize,
    groups: usize,
    dir: &Path,
    extra: &[&str],
    logs: &Path,
    procs: &mut Vec<Proc>,
) -> Result<Vec<String>> {
    let ports = (0..nodes)
        .map(|_| {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        })
        .collect::<Result<Vec<u16>>>()?;
    let addrs: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    // Every node gets the same list: a node leaves itself out of its peers.
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(j, addr)| format!("{}={addr}", j + 1))
        .collect::<Vec<_>>()
        .join(",");
    let groups = (0..groups)
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(",");
    for (i, port) in ports.iter().enumerate() {
        let (id, listen) = ((i + 1).to_string(), format!("127.0.0.1:{port}"));
        let data = dir.join(format!("node-{id}"));
        let data = data.to_string_lossy();
        let mut args = vec![
            "shard",
            "--listen",
            &listen,
            "--data",
            &data,
            "--node-id",
            &id,
            "--peers",
            &peers,
            "--groups",
            &groups,
        ];
        args.extend_from_slice(extra);
        procs.push(spawn(&format!("node-{id}"), &args, logs).await?);
    }
    let http = reqwest::Client::new();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    for addr in &addrs {
        while !http
            .get(format!("{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if std::time::Instant::now() > until {
                bail!("shard node {addr} did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(addrs)
}

pub async fn run(a: DemoArgs) -> Result<()> {
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir).with_context(|| format!("clearing {}", a.dir.display()))?;
    }
    let logs = a.dir.join("logs");
    std::fs::create_dir_all(&logs)?;

    let mut procs = Vec::new();
    let result = async {
        let groups = if a.replicas <= 1 {
            let addrs = start_shards(a.shards, &a.dir, &[], &logs, &mut procs).await?;
            vec![("--shards", addrs.join(","))]
        } else {
            // Writes need each group's leader: start_nodes waits for every node to be ready.
            let addrs = start_nodes(a.replicas, a.shards, &a.dir, &[], &logs, &mut procs).await?;
            // The router follows the cluster map the nodes' meta group keeps.
            vec![("--meta", addrs.join(","))]
        };
        procs.push(spawn("encoder", &["encoder", "--listen", "127.0.0.1:0"], &logs).await?);
        let encoder = procs.last().map(|p| p.addr.clone()).unwrap_or_default();
        let listen = format!("127.0.0.1:{}", a.port);
        let mut args = vec!["router", "--listen", &listen, "--encoder", &encoder];
        for (flag, value) in &groups {
            args.extend([*flag, value.as_str()]);
        }
        procs.push(spawn("router", &args, &logs).await?);
        let base = procs.last().map(|p| p.addr.clone()).unwrap_or_default();
        for p in &procs {
            println!("{:8} {}", p.name, p.addr);
        }

        let data_dir = a.dir.join("dataset");
        let cfg = dataset::SynthConfig {
            items: a.items,
            users: 100,
            seed: a.seed,
            ..Default::default()
        };
        let cat = tokio::task::spawn_blocking({
            let d = data_dir.clone();
            move || dataset::write(&cfg, &d)
        })
        .await??;
        let http = reqwest::Client::new();
        ingest(&http, &base, &cat.items).await?;
        let users: Vec<User> = dataset::read_jsonl(&data_dir.join("users.jsonl"))?;
        let titles = cat
            .items
            .iter()
            .map(|i| (i.id.as_str(), i.title.as_str()))
            .collect();
        if let Some(user) = users.first() {
            example(&http, &base, user, &titles).await?;
        }
        println!(
            "\nServing the API on {base} (logs in {}). Ctrl-C stops the cluster.",
            logs.display()
        );
        anyhow::Ok(())
    }
    .await;
    if result.is_ok() && !a.exit_after_example {
        redrec_wire::shutdown_signal().await;
        println!("stopping");
    }
    stop(procs).await;
    result
}
