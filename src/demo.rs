//! `redrec demo`: a local cluster of real processes (three shard nodes hosting three
//! Raft-replicated shard groups, an encoder, a router on 127.0.0.1:8080) over the
//! reference towers, a synthetic catalogue ingested through the item tower, one example
//! recommendation, then serving until Ctrl-C.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use redrec::dataset::synthetic::{self, SynthConfig};
use redrec::dataset::{self, Item, User};
use redrec::launch::Layout;
use serde_json::{json, Value};

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

pub async fn ingest(http: &reqwest::Client, base: &str, items: &[Item]) -> Result<()> {
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
    // The user's recent events go to the cluster, which keeps them; a recommend by user
    // id then reads them from there.
    let events: Vec<Value> = user
        .history
        .iter()
        .rev()
        .take(8)
        .rev()
        .map(|e| {
            json!({"user_id": user.user_id, "item_id": e.item_id, "scenario": e.scenario, "ts": e.ts})
        })
        .collect();
    let events = json!({ "events": events });
    http.post(format!("{base}/v1/events"))
        .json(&events)
        .send()
        .await?
        .error_for_status()?;
    let request = json!({"user_id": user.user_id, "scenario": "homefeed", "k": 10});
    println!(
        "\nTry it:\n\ncurl -s {base}/v1/events -H 'content-type: application/json' -d '{events}'\n\
         curl -s {base}/v1/recommend -H 'content-type: application/json' -d '{request}'\n"
    );
    let recommend = |merge: &'static str| {
        let mut body = request.clone();
        body["merge"] = json!(merge);
        async move {
            let answer: Value = http
                .post(format!("{base}/v1/recommend"))
                .json(&body)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::Ok(answer)
        }
    };
    let answer = recommend("max").await?;
    let quota = recommend("quota").await?;
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
    let show = |answer: &Value| {
        for it in answer["items"].as_array().into_iter().flatten() {
            println!(
                "  {:.3}  {}  [{}]",
                it["score"].as_f64().unwrap_or(0.0),
                it["payload"]["title"].as_str().unwrap_or("?"),
                it["payload"]["category"].as_str().unwrap_or("?")
            );
        }
    };
    show(&answer);
    println!("With \"merge\": \"quota\" (a share of the list for each of the user's interests):");
    show(&quota);
    Ok(())
}

pub async fn run(a: DemoArgs) -> Result<()> {
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir).with_context(|| format!("clearing {}", a.dir.display()))?;
    }
    let layout = Layout::of_current_exe(&a.dir)?;
    let (shards, replicas) = (a.shards, a.replicas);
    let listen = format!("127.0.0.1:{}", a.port);
    // Writes need each group's leader: the launcher waits for every node to be ready.
    let cluster = tokio::task::spawn_blocking({
        let layout = layout.clone();
        move || layout.cluster(shards, replicas, &[], &listen, &[])
    })
    .await??;
    let base = cluster.router.addr.clone();
    for p in cluster
        .shards
        .iter()
        .chain([&cluster.encoder, &cluster.router])
    {
        println!("{:8} {}", p.name, p.addr);
    }
    let result = async {
        let data_dir = a.dir.join("dataset");
        let cfg = SynthConfig {
            items: a.items,
            users: 100,
            seed: a.seed,
            ..Default::default()
        };
        let cat = tokio::task::spawn_blocking({
            let d = data_dir.clone();
            move || synthetic::write(&cfg, &d)
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
            layout.logs.display()
        );
        anyhow::Ok(())
    }
    .await;
    if result.is_ok() && !a.exit_after_example {
        redrec_wire::shutdown_signal().await;
        println!("stopping");
    }
    tokio::task::spawn_blocking(move || cluster.stop()).await?;
    result
}
