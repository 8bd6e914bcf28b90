//! `redrec bench ingest`: upsert throughput of one shard group replicated three ways
//! (Raft, R=3: log fsync on a majority, then apply on the leader) against one lone shard,
//! measured in the same run, on `redrec shard` processes this command starts on loopback
//! (the demo's, with their logs under `<data>/logs`).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use redrec_shard_api::points::Point;
use redrec_shard_api::ShardClient;

use redrec::launch::{self, Layout};

#[derive(Args, Clone)]
pub struct IngestBenchArgs {
    /// Seconds each setup is measured (after a warm-up of a fifth of it).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Points per upsert request.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Dimension of the vectors.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Where the shards keep their data (default: a temporary directory).
    #[arg(long)]
    data: Option<std::path::PathBuf>,
}

struct Outcome {
    points_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

async fn drive(client: ShardClient, a: &IngestBenchArgs, label: &str) -> Result<Outcome> {
    let (batch, dim) = (a.batch, a.dim);
    let run = crate::bench_load::closed_loop(a.concurrency, a.seconds, |w| {
        let (client, label) = (client.clone(), label.to_string());
        let mut rng = ChaCha8Rng::seed_from_u64(w as u64);
        let mut n = 0u64;
        move || {
            let points: Vec<Point> = (0..batch)
                .map(|_| {
                    n += 1;
                    Point {
                        id: format!("{label}-{w}-{n}"),
                        vector: (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect(),
                        payload: Default::default(),
                    }
                })
                .collect();
            let client = client.clone();
            async move {
                let size = points.len() as u64;
                client
                    .upsert(points, Duration::from_secs(30))
                    .await
                    .ok()
                    .map(|_| size)
            }
        }
    })
    .await?;
    let o = Outcome {
        points_per_s: run.per_second(),
        p50_ms: run.ms(0.5),
        p99_ms: run.ms(0.99),
        errors: run.errors,
    };
    eprintln!(
        "  {label:<26} {:>9.0} points/s  p50 {:>7.2} ms  p99 {:>7.2} ms{}",
        o.points_per_s,
        o.p50_ms,
        o.p99_ms,
        if o.errors > 0 {
            format!("  ({} failed requests)", o.errors)
        } else {
            String::new()
        }
    );
    Ok(o)
}

pub async fn ingest(a: IngestBenchArgs) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = a.data.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&root)?;
    let http = redrec_wire::http_client(None, None)?;
    let dim = a.dim.to_string();
    eprintln!(
        "redrec bench ingest: {} × {} points per request, {} s each, on {}",
        a.concurrency,
        a.batch,
        a.seconds,
        crate::bench::machine()
    );

    // Children are killed if this returns early; stopped cleanly otherwise.
    let (solo_dir, nodes_dir) = (root.join("solo"), root.clone());
    let extra = vec!["--dim".to_string(), dim];
    let start = move |dir: std::path::PathBuf, nodes: bool| {
        let extra = extra.clone();
        tokio::task::spawn_blocking(move || {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let layout = Layout::of_current_exe(&dir)?;
            match nodes {
                true => layout.shard_nodes(3, 1, &extra),
                false => layout.lone_shards(1, &extra),
            }
        })
    };
    let procs = start(solo_dir, false).await??;
    let solo = drive(
        ShardClient::new(procs[0].addr.clone(), http.clone()),
        &a,
        "unreplicated (1 shard)",
    )
    .await?;
    tokio::task::spawn_blocking(move || launch::stop_all(procs)).await?;

    let procs = start(nodes_dir, true).await??;
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let leader = wait_leader(&http, &addrs).await?;
    let replicated = drive(
        ShardClient::replica(leader, 0, http.clone()),
        &a,
        "Raft group, R=3",
    )
    .await?;
    tokio::task::spawn_blocking(move || launch::stop_all(procs)).await?;

    let ratio = replicated.points_per_s / solo.points_per_s;
    println!("| setup | points/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|");
    for (label, o) in [
        ("unreplicated (1 shard)", &solo),
        ("Raft group, R=3", &replicated),
    ] {
        println!(
            "| {label} | {:.0} | {:.2} | {:.2} |",
            o.points_per_s, o.p50_ms, o.p99_ms
        );
    }
    println!("\nreplicated / unreplicated throughput: {ratio:.2}");
    if solo.errors + replicated.errors > 0 {
        bail!(
            "{} upserts failed during the run",
            solo.errors + replicated.errors
        );
    }
    Ok(())
}

/// The address of the node that leads group 0, once one does.
async fn wait_leader(http: &reqwest::Client, nodes: &[String]) -> Result<String> {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        for addr in nodes {
            let replica = ShardClient::replica(addr.clone(), 0, http.clone());
            let status = replica.status(Duration::from_secs(1)).await.ok();
            if status.is_some_and(|s| s.raft.is_leader && s.caught_up) {
                return Ok(addr.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the group elected no leader")
}
