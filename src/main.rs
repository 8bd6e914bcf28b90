//! The `redrec` binary: one executable, the role chosen by subcommand.

mod dataset;
mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use redrec_encoder::{Encoder, EncoderClient, EncoderConfig, EncoderHandle};
use redrec_router::cluster::Cluster;
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
    /// Serve one shard: an embedded Qdrant shard on disk behind the internal API.
    Shard(ShardArgs),
    /// Serve the item and user towers over HTTP.
    Encoder(EncoderArgs),
    /// Serve the public API over a set of shards.
    Router(RouterArgs),
    /// Datasets for training and evaluation.
    #[command(subcommand)]
    Dataset(DatasetCommand),
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
}

#[derive(Args, Clone)]
pub struct TowerArgs {
    /// Directory holding manifest.json and the towers (default: the reference towers).
    #[arg(long, env = "REDREC_MODELS")]
    models: Option<PathBuf>,
    /// ONNX Runtime sessions per tower.
    #[arg(long, env = "REDREC_ENCODER_SESSIONS")]
    sessions: Option<usize>,
    /// Threads per session run.
    #[arg(long, env = "REDREC_ENCODER_THREADS")]
    intra_threads: Option<usize>,
}

impl TowerArgs {
    fn load(&self) -> Result<Encoder> {
        let dir = self
            .models
            .clone()
            .unwrap_or_else(redrec_encoder::manifest::default_dir);
        let defaults = EncoderConfig::default();
        let cfg = EncoderConfig {
            sessions: self.sessions.unwrap_or(defaults.sessions),
            intra_threads: self.intra_threads.unwrap_or(defaults.intra_threads),
        };
        Encoder::load(&dir, &cfg).with_context(|| format!("loading towers from {}", dir.display()))
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
    /// Shard addresses, comma-separated (http://host:port).
    #[arg(long, env = "REDREC_SHARDS", value_delimiter = ',', required = true)]
    shards: Vec<String>,
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
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Generate the synthetic multi-scenario dataset (deterministic by seed).
    Synth(SynthArgs),
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

fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()?)
}

async fn run_shard(a: ShardArgs) -> Result<()> {
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
    let towers = a.towers.clone();
    let encoder = tokio::task::spawn_blocking(move || towers.load()).await??;
    tracing::info!(model_version = %encoder.manifest().model_version, "towers loaded");
    redrec_wire::serve(
        "encoder",
        a.listen,
        redrec_encoder::server::router(Arc::new(encoder)),
    )
    .await?;
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
        None => {
            let towers = a.towers.clone();
            EncoderHandle::Local(Arc::new(
                tokio::task::spawn_blocking(move || towers.load()).await??,
            ))
        }
    };
    let cfg = RouterConfig {
        max_k: a.max_k,
        max_body_bytes: a.max_body_bytes,
        max_items_per_request: a.max_items,
        deadline: Duration::from_millis(a.deadline_ms),
        ..Default::default()
    };
    let state = Arc::new(RouterInner {
        encoder,
        cluster: Cluster::fixed(&a.shards, http),
        cfg,
    });
    redrec_wire::serve("router", a.listen, redrec_router::app(state)).await?;
    Ok(())
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
