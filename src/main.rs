//! The `redrec` binary: one executable, the role chosen by subcommand.

mod bench;
mod bench_ingest;
mod cluster;
mod dataset;
mod demo;
mod eval;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use redrec_encoder::{
    BatchConfig, Device, Encoder, EncoderClient, EncoderConfig, EncoderHandle, Towers,
};
use redrec_router::cluster::{Cluster, ClusterView};
use redrec_router::server::RouterInner;
use redrec_router::RouterConfig;
use redrec_shard::store::EdgeStore;

#[derive(Parser)]
#[command(
    name = "redrec",
    version,
    about = "Cross-scenario two-tower recommendation serving"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local cluster (3 shards, encoder, router) on the reference towers and a
    /// synthetic catalogue, serving the public API until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Serve one shard: an embedded Qdrant shard on disk behind the internal API; with
    /// --node-id, a node hosting Raft-replicated shard groups.
    Shard(ShardArgs),
    /// Serve the item and user towers over HTTP.
    Encoder(EncoderArgs),
    /// Serve the public API over a set of shards.
    Router(RouterArgs),
    /// Datasets for training and evaluation.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Benchmarks, each against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Offline evaluation through a local cluster: HR, NDCG and MRR of the towers against
    /// popularity and mean-of-history, over the whole catalogue.
    Eval(eval::EvalArgs),
    /// Inspect and administer a cluster of shard nodes.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Tower throughput and latency, in-process and over HTTP, with and without dynamic
    /// batching, against raw onnxruntime in Python at equal batch sizes.
    Encoder(bench::EncoderBenchArgs),
    /// Upsert throughput of a Raft-replicated shard group (R=3) against a lone shard.
    Ingest(bench_ingest::IngestBenchArgs),
}

#[derive(Args)]
struct ShardArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "REDREC_LISTEN", default_value = "127.0.0.1:7001")]
    listen: SocketAddr,
    /// Directory of the shard's data.
    #[arg(long, env = "REDREC_DATA", default_value = ".redrec/shard")]
    data: PathBuf,
    /// Dimension of item vectors.
    #[arg(long, env = "REDREC_DIM", default_value_t = 64)]
    dim: usize,
    #[command(flatten)]
    raft: RaftArgs,
}

#[derive(Args)]
struct RaftArgs {
    /// This node's id (1, 2, …): hosts Raft-replicated shard groups instead of one lone shard.
    #[arg(long, env = "REDREC_NODE_ID")]
    node_id: Option<u64>,
    /// 0-based index of this node (a StatefulSet pod's index): the node id is ordinal + 1.
    #[arg(long, env = "REDREC_NODE_ORDINAL", conflicts_with = "node_id")]
    node_ordinal: Option<u64>,
    /// The other shard nodes, as id=http://host:port, comma-separated.
    #[arg(long, env = "REDREC_PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// Shard groups this node hosts a replica of.
    #[arg(
        long,
        env = "REDREC_GROUPS",
        value_delimiter = ',',
        default_value = "0"
    )]
    groups: Vec<u64>,
    /// Nodes forming each new group (default: this node and its peers). A node that is not
    /// among them, or whose data was lost, asks the group to add it.
    #[arg(long, env = "REDREC_VOTERS", value_delimiter = ',')]
    voters: Vec<u64>,
    /// Where other nodes reach this one (default: http://<listen>).
    #[arg(long, env = "REDREC_ADVERTISE")]
    advertise: Option<String>,
    /// The cluster's meta members (http://host:port, comma-separated). A node that is not
    /// among the voters joins the running cluster through them: it registers itself as
    /// spare, and the cluster forms new groups from spare nodes and moves slots onto them.
    #[arg(long, env = "REDREC_SEEDS", value_delimiter = ',')]
    seeds: Vec<String>,
    /// Whether a new cluster rebalances slots by itself whenever a group forms (recorded
    /// in its map at creation; later `redrec cluster auto-rebalance on|off`).
    #[arg(long, env = "REDREC_AUTO_REBALANCE", default_value_t = true, action = clap::ArgAction::Set)]
    auto_rebalance: bool,
    /// Raft clock tick, in milliseconds.
    #[arg(long, env = "REDREC_RAFT_TICK_MS", default_value_t = 100)]
    raft_tick_ms: u64,
    /// Ticks without a leader's heartbeat before an election.
    #[arg(long, env = "REDREC_RAFT_ELECTION_TICKS", default_value_t = 10)]
    raft_election_ticks: usize,
    /// Applied entries kept in the log before compaction; a replica further behind is
    /// caught up by a snapshot.
    #[arg(long, env = "REDREC_RAFT_COMPACT_AFTER", default_value_t = 10_000)]
    raft_compact_after: u64,
}

#[derive(Args, Clone)]
pub struct TowerArgs {
    /// Directory holding manifest.json and the towers (default: the reference towers).
    #[arg(long, env = "REDREC_MODELS")]
    models: Option<PathBuf>,
    /// ONNX Runtime sessions per tower, each with its own batch worker (default: from the cores).
    #[arg(long, env = "REDREC_ENCODER_SESSIONS")]
    sessions: Option<usize>,
    /// Threads per session run (default: cores / sessions).
    #[arg(long, env = "REDREC_ENCODER_THREADS")]
    intra_threads: Option<usize>,
    /// Where the towers run: cpu, or cuda (needs the `cuda` feature; falls back to the CPU).
    #[arg(long, env = "REDREC_DEVICE", default_value = "cpu")]
    device: Device,
    /// Run each request alone instead of batching concurrent ones.
    #[arg(long, env = "REDREC_NO_BATCHING")]
    no_batching: bool,
    /// Most rows (texts or users) in one batch.
    #[arg(long, env = "REDREC_MAX_BATCH", default_value_t = BatchConfig::default().max_batch)]
    max_batch: usize,
    /// Most padded positions (rows × length) in one batch.
    #[arg(long, env = "REDREC_MAX_BATCH_TOKENS", default_value_t = BatchConfig::default().max_tokens)]
    max_batch_tokens: usize,
    /// Longest a request waits for others to share its batch, in microseconds.
    #[arg(long, env = "REDREC_MAX_WAIT_US", default_value_t = BatchConfig::default().max_wait.as_micros() as u64)]
    max_wait_us: u64,
    /// Most rows queued per tower; past it requests are refused with 503 and Retry-After.
    #[arg(long, env = "REDREC_QUEUE_ROWS", default_value_t = BatchConfig::default().queue_rows)]
    queue_rows: usize,
}

impl TowerArgs {
    fn model_dir(&self) -> PathBuf {
        self.models
            .clone()
            .unwrap_or_else(redrec_encoder::manifest::default_dir)
    }

    fn encoder_config(&self) -> EncoderConfig {
        let base = match self.sessions {
            Some(n) => EncoderConfig::with_sessions(n),
            None => EncoderConfig::default(),
        };
        EncoderConfig {
            intra_threads: self.intra_threads.unwrap_or(base.intra_threads).max(1),
            device: self.device,
            ..base
        }
    }

    /// Loads the towers (blocking work, off the async threads).
    async fn load(&self) -> Result<Arc<Encoder>> {
        let (dir, cfg) = (self.model_dir(), self.encoder_config());
        let encoder = tokio::task::spawn_blocking(move || {
            Encoder::load(&dir, &cfg)
                .with_context(|| format!("loading towers from {}", dir.display()))
        })
        .await??;
        tracing::info!(
            model_version = %encoder.manifest().model_version,
            device = ?encoder.device(),
            sessions = encoder.sessions(),
            "towers loaded"
        );
        Ok(Arc::new(encoder))
    }

    fn batching(&self) -> BatchConfig {
        BatchConfig {
            enabled: !self.no_batching,
            max_batch: self.max_batch.max(1),
            max_tokens: self.max_batch_tokens.max(1),
            max_wait: Duration::from_micros(self.max_wait_us),
            queue_rows: self.queue_rows.max(1),
            ..BatchConfig::default()
        }
    }

    /// Loads the towers and starts their batchers.
    async fn start(&self) -> Result<Arc<Towers>> {
        Ok(Arc::new(Towers::new(self.load().await?, self.batching())))
    }
}

#[derive(Args)]
struct EncoderArgs {
    #[arg(long, env = "REDREC_LISTEN", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    #[command(flatten)]
    towers: TowerArgs,
}

#[derive(Args)]
struct RouterArgs {
    #[arg(long, env = "REDREC_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Lone (unreplicated) shard addresses, comma-separated (http://host:port).
    #[arg(
        long,
        env = "REDREC_SHARDS",
        value_delimiter = ',',
        required_unless_present_any = ["group", "meta"]
    )]
    shards: Vec<String>,
    /// A Raft-replicated shard group: the addresses of the nodes hosting its replicas,
    /// comma-separated. Repeat for groups 0, 1, … (in the environment: `;` between groups).
    #[arg(
        long,
        env = "REDREC_SHARD_GROUPS",
        value_delimiter = ';',
        conflicts_with = "shards"
    )]
    group: Vec<String>,
    /// Route by the cluster map of the meta group whose members listen here
    /// (http://host:port, comma-separated): groups added and slots moved are followed
    /// without a restart.
    #[arg(
        long,
        env = "REDREC_META",
        value_delimiter = ',',
        conflicts_with_all = ["shards", "group"]
    )]
    meta: Vec<String>,
    /// Encoder address; without it the towers run in this process.
    #[arg(long, env = "REDREC_ENCODER")]
    encoder: Option<String>,
    #[command(flatten)]
    towers: TowerArgs,
    /// Time a recommend request may spend on shards before answering with what it has.
    #[arg(long, env = "REDREC_DEADLINE_MS", default_value_t = 1000)]
    deadline_ms: u64,
    /// Largest k a request may ask for.
    #[arg(long, env = "REDREC_MAX_K", default_value_t = 1000)]
    max_k: usize,
    /// Largest request body in bytes.
    #[arg(long, env = "REDREC_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Most items per ingest request.
    #[arg(long, env = "REDREC_MAX_ITEMS", default_value_t = 1024)]
    max_items: usize,
    /// Users whose query vectors are cached for repeated calls (0 turns the cache off).
    #[arg(long, env = "REDREC_USER_CACHE", default_value_t = 100_000)]
    user_cache: u64,
    /// Seconds cached query vectors stay valid.
    #[arg(long, env = "REDREC_USER_CACHE_TTL_S", default_value_t = 60)]
    user_cache_ttl_s: u64,
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Generate the synthetic multi-scenario dataset (deterministic by seed).
    Synth(SynthArgs),
    /// Convert MovieLens-100k, read from the installed `recbole` package, to the same layout.
    Movielens(MovielensArgs),
}

#[derive(Args)]
struct MovielensArgs {
    #[arg(long)]
    out: PathBuf,
    /// Each user's last N ratings are held out for evaluation.
    #[arg(long, default_value_t = 10)]
    window: usize,
    /// Directory holding ml-100k.item and ml-100k.inter (default: the recbole package's).
    #[arg(long)]
    source: Option<PathBuf>,
}

#[derive(Args)]
struct SynthArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    items: usize,
    #[arg(long, default_value_t = 2_000)]
    users: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()?)
}

fn parse_peers(peers: &[String]) -> Result<std::collections::HashMap<u64, String>> {
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

async fn run_node(a: ShardArgs, id: u64) -> Result<()> {
    use redrec_shard::raft::driver::DriverConfig;
    use redrec_shard::raft::node::{Node, NodeConfig};
    let r = &a.raft;
    if a.listen.port() == 0 {
        anyhow::bail!("a shard node needs a fixed port: its peers must know where it listens");
    }
    let peers = parse_peers(&r.peers)?;
    let seeds: Vec<String> = r
        .seeds
        .iter()
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let voters = if !r.voters.is_empty() {
        r.voters.clone()
    } else if peers.is_empty() && !seeds.is_empty() {
        Vec::new()
    } else {
        let mut v: Vec<u64> = peers.keys().copied().chain([id]).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let joining = !seeds.is_empty() && !voters.contains(&id);
    let cfg = NodeConfig {
        id,
        data: a.data.clone(),
        dim: a.dim,
        advertise: r
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{}", a.listen)),
        peers,
        groups: if joining {
            Vec::new()
        } else {
            r.groups.clone()
        },
        voters,
        seeds,
        auto_rebalance: r.auto_rebalance,
        driver: DriverConfig {
            tick: Duration::from_millis(r.raft_tick_ms.max(1)),
            election_ticks: r.raft_election_ticks.max(3),
            heartbeat_ticks: (r.raft_election_ticks / 5).max(1),
            compact_after: r.raft_compact_after,
        },
    };
    let node = Node::start(cfg, http_client()?)
        .await
        .with_context(|| format!("starting shard node {id} in {}", a.data.display()))?;
    tracing::info!(node = id, groups = ?r.groups, "shard node started");
    redrec_wire::serve(
        "shard",
        a.listen,
        redrec_shard::server::groups::router(node.clone()),
    )
    .await?;
    node.step_down().await;
    Ok(())
}

async fn run_shard(a: ShardArgs) -> Result<()> {
    if let Some(id) = a.raft.node_id.or(a.raft.node_ordinal.map(|o| o + 1)) {
        return run_node(a, id).await;
    }
    let store = tokio::task::spawn_blocking(move || {
        EdgeStore::open(&a.data, a.dim).with_context(|| format!("opening {}", a.data.display()))
    })
    .await??;
    redrec_wire::serve(
        "shard",
        a.listen,
        redrec_shard::server::router(Arc::new(store)),
    )
    .await?;
    Ok(())
}

async fn run_encoder(a: EncoderArgs) -> Result<()> {
    let towers = a.towers.start().await?;
    redrec_wire::serve("encoder", a.listen, redrec_encoder::server::router(towers)).await?;
    Ok(())
}

async fn run_router(a: RouterArgs) -> Result<()> {
    let http = http_client()?;
    let encoder = match &a.encoder {
        Some(addr) => EncoderHandle::Remote(
            EncoderClient::connect(addr, http.clone(), Duration::from_secs(30))
                .await
                .context("connecting to the encoder")?,
        ),
        None => EncoderHandle::Local(a.towers.start().await?),
    };
    let cfg = RouterConfig {
        max_k: a.max_k,
        max_body_bytes: a.max_body_bytes,
        max_items_per_request: a.max_items,
        deadline: Duration::from_millis(a.deadline_ms),
        user_cache_capacity: a.user_cache,
        user_cache_ttl: Duration::from_secs(a.user_cache_ttl_s),
        ..Default::default()
    };
    let cluster = if !a.meta.is_empty() {
        let view =
            ClusterView::from_meta(a.meta.clone(), http.clone(), Duration::from_secs(60)).await?;
        let view = Arc::new(view);
        view.spawn_refresher(Duration::from_secs(1));
        register_model(&view, &encoder, &http).await;
        view
    } else if a.group.is_empty() {
        Arc::new(ClusterView::fixed(
            Cluster::fixed(&a.shards, http.clone()),
            http,
        ))
    } else {
        let groups: Vec<Vec<String>> = a
            .group
            .iter()
            .map(|g| {
                g.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .collect();
        if let Some(i) = groups.iter().position(Vec::is_empty) {
            anyhow::bail!("--group number {i} names no replica");
        }
        Arc::new(ClusterView::fixed(
            Cluster::replicated(&groups, http.clone()),
            http,
        ))
    };
    let state = Arc::new(RouterInner::new(encoder, cluster, cfg));
    redrec_wire::serve("router", a.listen, redrec_router::app(state)).await?;
    Ok(())
}

/// Records the towers' model version in the cluster map when it has none, and warns when
/// it names another: every router of a cluster must serve the towers its items were
/// encoded with.
async fn register_model(view: &ClusterView, encoder: &EncoderHandle, http: &reqwest::Client) {
    use redrec_shard::meta::{call_meta, MetaCommand};
    let version = encoder.manifest().model_version.clone();
    match view
        .get()
        .map
        .as_ref()
        .and_then(|m| m.model_version.clone())
    {
        Some(v) if v == version => {}
        Some(v) => tracing::warn!(
            map = %v,
            towers = %version,
            "the cluster map names other towers than this router serves"
        ),
        None => {
            let cmd = MetaCommand::SetModelVersion { version };
            if let Err(e) = call_meta::<serde_json::Value>(
                http,
                view.meta_addrs(),
                "/admin/v1/cluster/commands",
                Some(&cmd),
            )
            .await
            {
                tracing::warn!("recording the model version in the cluster map: {e}");
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(a) => demo::run(a).await,
        Command::Shard(a) => run_shard(a).await,
        Command::Encoder(a) => run_encoder(a).await,
        Command::Router(a) => run_router(a).await,
        Command::Bench(BenchCommand::Encoder(a)) => bench::encoder(a).await,
        Command::Bench(BenchCommand::Ingest(a)) => bench_ingest::ingest(a).await,
        Command::Cluster(c) => cluster::run(c, http_client()?).await,
        Command::Eval(a) => eval::run(a).await,
        Command::Dataset(DatasetCommand::Movielens(a)) => {
            let source = match a.source {
                Some(s) => s,
                None => dataset::recbole_ml100k()?,
            };
            let (items, users) = dataset::movielens(&source, &a.out, a.window.max(1))?;
            println!(
                "wrote {items} items and {users} users (MovieLens-100k from {}) to {}",
                source.display(),
                a.out.display()
            );
            Ok(())
        }
        Command::Dataset(DatasetCommand::Synth(a)) => {
            let cfg = dataset::SynthConfig {
                items: a.items,
                users: a.users,
                seed: a.seed,
                ..Default::default()
            };
            let out = a.out.clone();
            tokio::task::spawn_blocking(move || dataset::write(&cfg, &out)).await??;
            println!(
                "wrote {} items and {} users to {}",
                a.items,
                a.users,
                a.out.display()
            );
            Ok(())
        }
    }
}
