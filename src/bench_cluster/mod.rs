//! `redrec bench cluster`: retrieval at scale, every setup on the same loopback, data,
//! queries and concurrency, in one run:
//! - a lone shard (the engine behind one HTTP hop),
//! - a router over that shard,
//! - a router over G lone shards,
//! - a router over G Raft groups (3 nodes, R=3),
//! - a Qdrant server (given its binary) with a 1-shard and a G-shard collection.
//!
//! For each: ingest rate, time until the indexes are built, QPS and latency under
//! concurrent load, recall@k against exact search, resident memory and bytes per item,
//! and CPU seconds per query in the router and in the shards. Every setup is built (or,
//! with `--reuse`, found) before any is measured, and all stay up until the last is:
//! then they are measured one after another, or, with `--rounds`, in turns.

pub mod data;
pub mod load;
mod measure;
mod on_qdrant;
mod pin;
mod qdrant;
mod report;
mod setups;
mod writes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use redrec_shard_api::collection::Collection;
use redrec_shard_api::points::Point;
use serde_json::json;

use crate::cli::roles::CollectionArgs;
use data::Data;
use load::Target;
use qdrant::Qdrant;
use redrec::launch::{self, Layout, Proc};

/// The towers' item dimension: the routers serve it.
pub const DIM: usize = 64;
/// Points per ingest request, and requests in flight.
const BATCH: usize = 512;
const INGEST_CONCURRENCY: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Setup {
    /// One lone shard, searched directly: in JSON (as a router's clients search), and in
    /// the compact encoding (as a router searches it).
    Lone,
    /// A router over that same shard.
    Router1,
    /// One lone shard with int8 vectors in RAM and the originals on disk, searched
    /// directly (whatever the collection flags say of those two).
    LoneInt8,
    /// A router over G lone shards.
    RouterLone,
    /// A router over G Raft groups on 3 nodes (R=3).
    RouterRaft,
    /// A Qdrant collection with one shard.
    Qdrant1,
    /// A Qdrant collection with G shards.
    QdrantG,
    /// A router over a Qdrant collection with G shards (`redrec router --qdrant-url`).
    RouterQdrant,
    /// A router over one lone shard under a steady stream of new items (`--stream-*`),
    /// the seconds with an index build running against those without (not in the
    /// default run: it takes minutes).
    Stream,
    /// (Measured with `lone`.)
    #[value(skip)]
    LoneCompact,
}

#[derive(Args)]
pub struct ClusterBenchArgs {
    /// Items in the catalogue.
    #[arg(long, default_value_t = 200_000)]
    n: usize,
    /// Shard groups (and Qdrant shards) in the multi-shard setups.
    #[arg(long, default_value_t = 3)]
    groups: usize,
    /// Distinct query vectors (recall is measured on all of them).
    #[arg(long, default_value_t = 500)]
    queries: usize,
    /// Cluster centres the items are drawn around.
    #[arg(long, default_value_t = 1024)]
    clusters: usize,
    /// Concurrent searching clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds each setup is loaded (after a warm-up of a fifth of it).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Rounds the load is taken in: every setup is built first, then each gets a
    /// `--seconds / --rounds` share of its load in turn, round after round, every other
    /// round in reverse order (its figures pooled over the rounds), so that a machine
    /// whose speed drifts over minutes weighs on every setup alike. 1: each setup's whole
    /// load at once, one after another.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Results per query; recall@k is measured.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Setups to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lone,router1,lone-int8,router-lone,router-raft,qdrant1,qdrant-g,router-qdrant"
    )]
    setups: Vec<Setup>,
    /// The Qdrant server binary (default: $REDREC_QDRANT_BIN, else ../shared/qdrant/qdrant
    /// when present; the Qdrant setups are left out without one).
    #[arg(long)]
    qdrant_bin: Option<PathBuf>,
    /// Where the processes keep their data (default: a temporary directory).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Search the stores an earlier run left under --data (same --n, --seed and
    /// collection flags) without loading them again: a setup whose stores (or Qdrant
    /// collection) hold --n items skips its ingest (its ingest rate is left blank), then
    /// waits for its indexes.
    #[arg(long, requires = "data")]
    reuse: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Longest a setup may take to build its indexes after ingest.
    #[arg(long, default_value_t = 3600)]
    settle_timeout_s: u64,
    /// HNSW beam widths to measure each setup at, comma-separated, one row each (sent as
    /// each search's `ef`; default: none sent, the collection's default `ef`).
    #[arg(long, value_delimiter = ',')]
    search_ef: Vec<usize>,
    /// Give the stores cores of their own while the setups are measured: shard, node and
    /// Qdrant processes on the upper half of the CPUs, routers and the load's clients on
    /// the lower half (as when each tier has its own machines). Loading and index builds
    /// use every core either way. Default: every process on every core.
    #[arg(long)]
    pin: bool,
    #[command(flatten)]
    collection: CollectionArgs,
    #[command(flatten)]
    stream: StreamArgs,
}

/// The write stream of `--setups stream` (see `writes`).
#[derive(Args, Clone)]
pub struct StreamArgs {
    /// `stream`: new points written per second while the clients search.
    #[arg(long, default_value_t = 500)]
    pub stream_rate: usize,
    /// `stream`: points per write request.
    #[arg(long, default_value_t = 10)]
    pub stream_batch: usize,
    /// `stream`: how long the write stream runs, in seconds.
    #[arg(long, default_value_t = 300)]
    pub stream_seconds: u64,
}

/// What a setup measured before its load: the same on every row of an `ef` sweep.
#[derive(Debug, Default, Clone, Copy)]
struct Built {
    ingest_per_s: Option<f64>,
    settle_s: Option<f64>,
    /// Vectors (and quantized vectors) in RAM per item, by the stores' own accounting.
    vector_ram_per_item: Option<f64>,
}

/// One setup's figures (at one `ef`).
struct Row {
    setup: Setup,
    label: String,
    built: Built,
    qps: f64,
    p50_ms: f64,
    p99_ms: f64,
    recall: f64,
    /// Resident memory of the shard (or Qdrant) processes, and of the router.
    rss_shards: u64,
    rss_router: u64,
    cpu_router_ms: Option<f64>,
    cpu_shards_ms: f64,
    /// The bench's own process (the load's clients).
    cpu_clients_ms: f64,
    /// Share of the machine's CPU time busy during the load (all processes).
    busy: f64,
    errors: u64,
    /// QPS in each round of `--rounds`.
    round_qps: Vec<f64>,
}

/// A setup built and serving, waiting for its load ([`Bench::measure_all`]).
struct Ready {
    setup: Setup,
    label: String,
    target: Target,
    router: Option<i32>,
    shards: Vec<i32>,
    built: Built,
}

struct Bench {
    a: ClusterBenchArgs,
    collection: Collection,
    data: Arc<Data>,
    http: reqwest::Client,
    root: PathBuf,
    rows: Vec<Row>,
    /// With `--pin`, where the processes run.
    placement: Option<pin::Placement>,
    /// The machine, as seen before any pinning.
    machine: String,
    /// The setups built, in the order they were.
    ready: Vec<Ready>,
    /// Their processes (routers after what they route to) and Qdrant servers, kept
    /// until every setup is measured.
    procs: Vec<Proc>,
    qdrants: Vec<Qdrant>,
}

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let style =
        ProgressStyle::with_template("  {msg:<28} {bar:40} {pos}/{len} ({per_sec}, eta {eta})")
            .expect("template");
    ProgressBar::new(len)
        .with_style(style)
        .with_message(what.to_string())
}

impl Bench {
    /// With `--pin`, once a setup is built: its stores on their half of the CPUs, its
    /// router and the bench itself on the other.
    fn place(&self, router: Option<i32>, stores: &[i32]) -> Result<()> {
        let Some(p) = &self.placement else {
            return Ok(());
        };
        stores.iter().try_for_each(|&pid| p.store(pid))?;
        router.map_or(Ok(()), |pid| p.front(pid))?;
        p.front(std::process::id() as i32)
    }

    /// After a setup's measurement: the bench on every CPU again, so that the next
    /// setup's processes (which inherit its placement) load and build on all of them.
    fn unplace(&self) -> Result<()> {
        self.placement
            .as_ref()
            .map_or(Ok(()), |p| p.everywhere(std::process::id() as i32))
    }

    /// Vectors `from..from+len` as points (ids are their indices).
    fn points(&self, from: usize, len: usize) -> Vec<Point> {
        (from..from + len)
            .map(|i| Point {
                id: i.to_string(),
                vector: self.data.item(i).to_vec(),
                payload: Default::default(),
            })
            .collect()
    }

    fn batches(&self) -> Vec<(usize, usize)> {
        let n = self.data.len();
        (0..n.div_ceil(BATCH))
            .map(|b| (b * BATCH, BATCH.min(n - b * BATCH)))
            .collect()
    }

    /// Loads every item through `write` (a batch at a time, a few in flight); items/s.
    async fn ingest<F, Fut>(&self, label: &str, write: F) -> Result<f64>
    where
        F: Fn(usize, usize) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let progress = bar(self.data.len() as u64, &format!("{label}: ingest"));
        let started = Instant::now();
        stream::iter(self.batches())
            .map(|(from, len)| {
                let progress = &progress;
                let write = &write;
                async move {
                    write(from, len).await?;
                    progress.inc(len as u64);
                    Ok::<_, anyhow::Error>(())
                }
            })
            .buffer_unordered(INGEST_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        progress.finish_and_clear();
        Ok(self.data.len() as f64 / started.elapsed().as_secs_f64())
    }

    fn layout(&self, name: &str) -> Result<Layout> {
        Layout::of_current_exe(&self.root.join(name))
    }

    fn start_router(&self, layout: &Layout, flag: &str, addrs: &[String]) -> Result<Proc> {
        let list = addrs.join(",");
        let router = layout.start(
            "router",
            &["router", "--listen", "127.0.0.1:0", flag, &list],
        )?;
        Ok(router)
    }

    fn router_target(&self, router: &Proc) -> Target {
        Target::Router {
            http: self.http.clone(),
            addr: router.addr.clone(),
        }
    }

    async fn router_ingest(&self, label: &str, router: &Proc) -> Result<f64> {
        let url = format!("{}/v1/items/vectors", router.addr);
        self.ingest(label, |from, len| {
            let items: Vec<_> = self
                .points(from, len)
                .into_iter()
                .map(|p| json!({ "id": p.id, "vector": p.vector }))
                .collect();
            let (http, url) = (self.http.clone(), url.clone());
            async move {
                load::post(&http, &url, &json!({ "items": items })).await?;
                Ok(())
            }
        })
        .await
    }
}

pub async fn cluster(a: ClusterBenchArgs) -> Result<()> {
    let collection = a.collection.collection()?;
    let tmp = tempfile::tempdir()?;
    let root = a.data.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&root)?;
    let qdrant_bin = a.qdrant_bin.clone().or_else(redrec::qdrant_server::binary);
    let machine = crate::bench::machine();
    eprintln!(
        "redrec bench cluster: {} items, G={}, on {machine}",
        a.n, a.groups
    );
    let started = Instant::now();
    let (n, q, clusters, k, seed) = (a.n, a.queries, a.clusters, a.k, a.seed);
    let data =
        tokio::task::spawn_blocking(move || Data::generate(n, q, DIM, clusters, k, seed)).await?;
    eprintln!(
        "  data and exact top-{k} of {q} queries: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut bench = Bench {
        collection,
        data: Arc::new(data),
        http: redrec_wire::http_client(None, None)?,
        root,
        rows: Vec::new(),
        placement: a.pin.then(pin::Placement::halves).transpose()?,
        machine,
        a,
        ready: Vec::new(),
        procs: Vec::new(),
        qdrants: Vec::new(),
    };
    let wanted = bench.a.setups.clone();
    let has = |s: Setup| wanted.contains(&s);
    if has(Setup::Lone) || has(Setup::Router1) {
        bench.lone(has(Setup::Router1), !has(Setup::Lone)).await?;
    }
    if has(Setup::LoneInt8) {
        bench.lone_int8().await?;
    }
    if has(Setup::RouterLone) {
        bench.router_lone().await?;
    }
    if has(Setup::RouterRaft) {
        bench.router_raft().await?;
    }
    if has(Setup::Stream) {
        bench.stream().await?;
    }
    match &qdrant_bin {
        Some(bin) => {
            if has(Setup::Qdrant1) {
                bench.qdrant(bin, 1).await?;
            }
            if has(Setup::QdrantG) {
                bench.qdrant(bin, bench.a.groups).await?;
            }
            if has(Setup::RouterQdrant) {
                bench.router_qdrant(bin).await?;
            }
        }
        None if has(Setup::Qdrant1) || has(Setup::QdrantG) || has(Setup::RouterQdrant) => {
            eprintln!("  no Qdrant binary (--qdrant-bin): its setups are left out");
        }
        None => {}
    }
    let measured = bench.measure_all().await;
    launch::stop_all(std::mem::take(&mut bench.procs));
    bench.qdrants.clear();
    measured?;
    bench.report();
    let errors: u64 = bench.rows.iter().map(|r| r.errors).sum();
    if errors > 0 {
        bail!("{errors} searches failed during the run");
    }
    Ok(())
}
