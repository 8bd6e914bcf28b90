//! `redrec bench fanout`: the tail of a wide fan-out. One cluster of G groups (R replicas
//! each, small data) on loopback and three routers over it: hedging off, hedging on, and
//! hedging on with per-group k' below k. In one run: latency of `/v1/search` without
//! faults and with one replica slowed (a share of its reads delayed, by fault injection),
//! with hedging off and on, the four interleaved in rounds; then the exact merge against
//! the k' merge (recall and bytes per query).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use futures::stream::{self, StreamExt, TryStreamExt};
use redrec_shard_api::faults::{FaultPlan, FAULTS_PATH};
use serde_json::json;

use crate::bench_cluster::data::{self, Data};
use crate::bench_cluster::load::{self, Load, Target};
use crate::bench_cluster::{bar, DIM};
use crate::bench_load::Completed;
use redrec::launch::{self, Layout, Proc};

#[derive(Args)]
pub struct FanoutBenchArgs {
    /// Shard groups.
    #[arg(long, default_value_t = 32)]
    groups: usize,
    /// Replicas per group (one shard node per replica, each hosting every group).
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Items in the catalogue, spread over the groups.
    #[arg(long, default_value_t = 64_000)]
    n: usize,
    /// Distinct query vectors.
    #[arg(long, default_value_t = 300)]
    queries: usize,
    /// Concurrent searching clients (moderate: the tail, not saturation, is measured).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seconds each measurement is loaded in all (each round: a share of it, after a
    /// warm-up of a fifth of that).
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Rounds the fault and no-fault measurements are interleaved over: each round loads
    /// every one of them for seconds / rounds, so a drift in the machine's speed during
    /// the run lands on all of them alike instead of on whichever ran then.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Share of the slowed replica's reads that are delayed.
    #[arg(long, default_value_t = 0.1)]
    slow_share: f64,
    /// How long a delayed read waits.
    #[arg(long, default_value_t = 200)]
    slow_ms: u64,
    /// The k' router's --group-k-loss.
    #[arg(long, default_value_t = 0.001)]
    group_k_loss: f64,
    /// Where the processes keep their data (default: a temporary directory).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// One setup's loads, pooled over the rounds: the latencies and the router's read
/// counters.
#[derive(Default)]
struct Pooled {
    run: Completed,
    reads: f64,
    hedges: f64,
    won: f64,
}

/// One measurement.
struct Row {
    label: String,
    load: Load,
    /// Extra reads hedging sent, per group read.
    extra_reads: Option<f64>,
    hedges_won: Option<f64>,
}

/// The read counters `sample` follows.
const READ_COUNTERS: [&str; 3] = [
    "redrec_group_reads_total",
    "redrec_hedged_reads_total",
    "redrec_hedged_reads_won_total",
];

/// Counters' values (each summed over its labels) on one fetch of a router's `/metrics`.
async fn counters<const N: usize>(
    http: &reqwest::Client,
    router: &Proc,
    names: [&str; N],
) -> Result<[f64; N]> {
    let text = http
        .get(format!("{}/metrics", router.addr))
        .send()
        .await?
        .text()
        .await?;
    Ok(names.map(|name| {
        crate::cluster_top::samples(&text, name)
            .iter()
            .map(|(_, v)| v)
            .sum()
    }))
}

struct Fanout {
    a: FanoutBenchArgs,
    data: Arc<Data>,
    http: reqwest::Client,
    rows: Vec<Row>,
}

impl Fanout {
    fn target(&self, router: &Proc) -> Target {
        Target::Router {
            http: self.http.clone(),
            addr: router.addr.clone(),
        }
    }

    /// Loads `router` for `seconds`, pooling the latencies and its read counters into
    /// `into`.
    async fn sample(&self, router: &Proc, seconds: f64, into: &mut Pooled) -> Result<()> {
        let before = counters(&self.http, router, READ_COUNTERS).await?;
        let target = self.target(router);
        let (k, c) = (self.a.k, self.a.concurrency);
        let run = load::drive(&target, &self.data, k, None, c, seconds).await?;
        into.run.add(&run)?;
        let after = counters(&self.http, router, READ_COUNTERS).await?;
        into.reads += after[0] - before[0];
        into.hedges += after[1] - before[1];
        into.won += after[2] - before[2];
        Ok(())
    }

    /// Keeps `pooled` as the row `label` (hedge shares only where the router hedges).
    fn row(&mut self, label: &str, hedging: bool, pooled: &Pooled) {
        let (l, p) = (Load::of(&pooled.run), pooled);
        eprintln!(
            "  {label:<44} {:>6.0} QPS  p50 {:>6.2}  p99 {:>7.2}  p99.9 {:>7.2} ms  hedges {:.0} ({:.0} won) of {:.0} reads",
            l.qps, l.p50_ms, l.p99_ms, l.p999_ms, p.hedges, p.won, p.reads
        );
        self.rows.push(Row {
            label: label.into(),
            load: l,
            extra_reads: hedging.then(|| p.hedges / p.reads.max(1.0)),
            hedges_won: hedging.then(|| p.won / p.hedges.max(1.0)),
        });
    }

    /// Every query once through `router`: the answers, and shard bytes read per query.
    async fn answers(&self, router: &Proc) -> Result<(Vec<Vec<u32>>, f64)> {
        let [b0] = counters(&self.http, router, ["redrec_shard_read_bytes_total"]).await?;
        let found = load::answers(
            &self.target(router),
            &self.data,
            self.a.k,
            None,
            self.a.concurrency,
        )
        .await?;
        let [b1] = counters(&self.http, router, ["redrec_shard_read_bytes_total"]).await?;
        Ok((found, (b1 - b0) / self.data.queries.len().max(1) as f64))
    }

    async fn set_faults(&self, node: &str, plan: &FaultPlan) -> Result<()> {
        let r = self
            .http
            .post(format!("{node}{FAULTS_PATH}"))
            .json(plan)
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "setting faults on {node}: {}",
            r.status()
        );
        Ok(())
    }
}

pub async fn fanout(a: FanoutBenchArgs) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = a.data.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let (g, r) = (a.groups.max(1), a.replicas.max(2));
    eprintln!(
        "redrec bench fanout: {g} groups × R={r}, {} items, on {}",
        a.n,
        crate::bench::machine()
    );
    let (n, q, k, seed) = (a.n, a.queries, a.k, a.seed);
    let data = tokio::task::spawn_blocking(move || Data::generate(n, q, DIM, 256, k, seed)).await?;
    let layout = Layout::of_current_exe(&root.join("fanout"))?;
    let nodes = layout.shard_nodes(r, g, &["--fault-injection"])?;
    let meta = nodes
        .iter()
        .map(|p| p.addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let loss = a.group_k_loss.to_string();
    let start = |name: &str, extra: &[&str]| {
        let mut args = vec!["router", "--listen", "127.0.0.1:0", "--meta", &meta];
        args.extend_from_slice(extra);
        layout.start(name, &args)
    };
    let off = start("router-hedging-off", &["--hedge", "off"])?;
    let on = start("router-hedging-on", &["--hedge", "auto"])?;
    let kp = start(
        "router-k-prime",
        &["--hedge", "auto", "--group-k-loss", &loss],
    )?;
    let mut bench = Fanout {
        a,
        data: Arc::new(data),
        http: redrec_wire::http_client(None, None)?,
        rows: Vec::new(),
    };
    let outcome = run(&mut bench, &nodes, [&off, &on, &kp]).await;
    launch::stop_all(vec![off, on, kp]);
    launch::stop_all(nodes);
    outcome
}

async fn run(bench: &mut Fanout, nodes: &[Proc], routers: [&Proc; 3]) -> Result<()> {
    let [off, on, kp] = routers;
    // Ingest through a router.
    let progress = bar(bench.data.len() as u64, "ingest");
    let url = format!("{}/v1/items/vectors", off.addr);
    let batches: Vec<(usize, usize)> = (0..bench.data.len())
        .step_by(512)
        .map(|f| (f, 512.min(bench.data.len() - f)))
        .collect();
    stream::iter(batches)
        .map(|(from, len)| {
            let items: Vec<_> = (from..from + len)
                .map(|i| json!({ "id": i.to_string(), "vector": bench.data.item(i) }))
                .collect();
            let (http, url, progress) = (&bench.http, &url, &progress);
            async move {
                load::post(http, url, &json!({ "items": items })).await?;
                progress.inc(len as u64);
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;
    progress.finish_and_clear();
    // Followers apply what their leaders acknowledged moments later.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The replica group 0 reads first: the one slowing hurts.
    let map = redrec_shard_api::meta::fetch_map(&bench.http, &[nodes[0].addr.clone()]).await?;
    let slow_node = map
        .groups
        .get(&0)
        .and_then(|i| i.replicas.first())
        .and_then(|n| map.nodes.get(n))
        .map(|n| n.addr.clone())
        .context("group 0 has no replica in the map")?;

    let slow = FaultPlan {
        delay_share: bench.a.slow_share,
        delay_ms: bench.a.slow_ms,
        groups: vec![0],
    };
    let what = format!(
        "one replica slowed ({:.0}% +{} ms)",
        100.0 * slow.delay_share,
        slow.delay_ms
    );
    // No fault and slowed, hedging off and on, interleaved round by round.
    let rounds = bench.a.rounds.max(1);
    let share = bench.a.seconds / rounds as f64;
    let mut pooled: [Pooled; 4] = Default::default();
    let progress = bar(rounds as u64, "latency rounds");
    for _ in 0..rounds {
        for (faults, pair) in [(&FaultPlan::default(), 0), (&slow, 2)] {
            bench.set_faults(&slow_node, faults).await?;
            bench.sample(off, share, &mut pooled[pair]).await?;
            bench.sample(on, share, &mut pooled[pair + 1]).await?;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    bench.set_faults(&slow_node, &FaultPlan::default()).await?;
    let [no_off, no_on, slow_off, slow_on] = &pooled;
    bench.row("no fault, hedging off", false, no_off);
    bench.row("no fault, hedging on", true, no_on);
    bench.row(&format!("{what}, hedging off"), false, slow_off);
    bench.row(&format!("{what}, hedging on"), true, slow_on);

    let (exact, exact_bytes) = bench.answers(on).await?;
    let (approx, approx_bytes) = bench.answers(kp).await?;
    let label = format!("no fault, k' merge (loss {})", bench.a.group_k_loss);
    let mut k_prime = Pooled::default();
    bench.sample(kp, bench.a.seconds, &mut k_prime).await?;
    bench.row(&label, true, &k_prime);
    report(
        bench,
        &Merge {
            exact_recall: data::recall(&exact, &bench.data.truth),
            approx_recall: data::recall(&approx, &bench.data.truth),
            approx_vs_exact: data::recall(&approx, &exact),
            exact_bytes,
            approx_bytes,
        },
    );
    Ok(())
}

struct Merge {
    exact_recall: f64,
    approx_recall: f64,
    approx_vs_exact: f64,
    exact_bytes: f64,
    approx_bytes: f64,
}

fn report(bench: &Fanout, m: &Merge) {
    let a = &bench.a;
    println!(
        "{} groups × R={} on loopback, {} items, {} queries, k={}, {} clients × {} s \
         (the first four rows interleaved over {} rounds); {}",
        a.groups,
        a.replicas.max(2),
        a.n,
        a.queries,
        a.k,
        a.concurrency,
        a.seconds,
        a.rounds.max(1),
        crate::bench::machine()
    );
    println!("| setup | QPS | p50 ms | p99 ms | p99.9 ms | extra reads | hedges won |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v));
    for r in &bench.rows {
        let l = &r.load;
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
            r.label,
            l.qps,
            l.p50_ms,
            l.p99_ms,
            l.p999_ms,
            pct(r.extra_reads),
            pct(r.hedges_won)
        );
    }
    let p99 = |i: usize| bench.rows.get(i).map_or(f64::NAN, |r| r.load.p99_ms);
    println!();
    println!("| ratio (same run) | value | goal |");
    println!("|---|---:|---:|");
    println!(
        "| p99 slowed, hedging on / p99 no fault, hedging on | {:.2} | ≤ 1.2 |",
        p99(3) / p99(1)
    );
    println!(
        "| p99 slowed, hedging on / p99 no fault, hedging off | {:.2} | ≤ 1.2 |",
        p99(3) / p99(0)
    );
    println!(
        "| p99 slowed, hedging off / p99 no fault, hedging off | {:.2} | > 2 |",
        p99(2) / p99(0)
    );
    println!(
        "| extra reads, slowed, hedging on | {} | ≤ 5% |",
        pct(bench.rows.get(3).and_then(|r| r.extra_reads))
    );
    println!(
        "| recall@{} of the k' merge against the exact merge | {:.4} (loss {:.2}%) | loss ≤ 0.5% |",
        a.k,
        m.approx_vs_exact,
        100.0 * (1.0 - m.approx_vs_exact)
    );
    println!(
        "| recall@{} against brute force: exact / k' | {:.4} / {:.4} | |",
        a.k, m.exact_recall, m.approx_recall
    );
    println!(
        "| shard bytes read per query: exact / k' | {:.0} / {:.0} ({:.2}×) | |",
        m.exact_bytes,
        m.approx_bytes,
        m.exact_bytes / m.approx_bytes.max(1.0)
    );
    let errors: u64 = bench.rows.iter().map(|r| r.load.errors).sum();
    if errors > 0 {
        println!("\n{errors} searches failed during the run");
    }
}
