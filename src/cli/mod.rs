//! The command line: every subcommand and its flags (the serving roles' in [`roles`]).
//! Parsing only; `main` dispatches.

pub mod qdrant;
pub mod roles;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use redrec_wire::auth::Secret;
use roles::{EncoderArgs, RouterArgs, ShardArgs};

use crate::{bench, bench_cluster, bench_fanout, bench_ids, bench_ingest, cluster, demo, eval};

#[derive(Parser)]
#[command(
    name = "redrec",
    version,
    about = "Cross-scenario two-tower recommendation serving"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// The cluster credential: internal calls (router to encoder and shards, node to node,
    /// `redrec cluster`) carry it, and the encoder and the shards refuse calls without it.
    /// Unset: internal routes are open.
    #[arg(
        long,
        env = "REDREC_CLUSTER_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub cluster_token: Option<String>,
    /// The CA (PEM) internal calls verify the servers they reach against: with it, they
    /// speak TLS to `https://` addresses.
    #[arg(long, env = "REDREC_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
}

impl Cli {
    pub fn cluster_token(&self) -> Option<Secret> {
        self.cluster_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(Secret::new)
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a local cluster (3 shards, encoder, router) on the reference towers and a
    /// synthetic catalogue, serving the public API until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Serve one shard: an embedded Qdrant shard on disk behind the internal API; with
    /// --node-id, a node hosting Raft-replicated shard groups.
    Shard(ShardArgs),
    /// Serve the item and user towers over HTTP.
    Encoder(EncoderArgs),
    /// Serve the public API over a set of shards (or a Qdrant collection).
    Router(Box<RouterArgs>),
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
pub enum BenchCommand {
    /// Tower throughput and latency, in-process and over HTTP, with and without dynamic
    /// batching, against raw onnxruntime in Python at equal batch sizes.
    Encoder(bench::EncoderBenchArgs),
    /// Upsert throughput of a Raft-replicated shard group (R=3) against a lone shard.
    Ingest(bench_ingest::IngestBenchArgs),
    /// Retrieval at scale: a lone shard, routers over lone shards and Raft groups, and a
    /// Qdrant server, on the same data and load (QPS, latency, recall, memory, CPU).
    Cluster(bench_cluster::ClusterBenchArgs),
    /// The tail of a wide fan-out: 32 groups, one replica slowed, hedging off and on, and
    /// the exact merge against per-group k' below k.
    Fanout(bench_fanout::FanoutBenchArgs),
    /// Hex item ids packed into point ids against the same ids hashed and kept in the
    /// payload (payload and disk bytes per item, searches per second).
    Ids(bench_ids::IdsBenchArgs),
}

#[derive(Subcommand)]
pub enum DatasetCommand {
    /// Generate the synthetic multi-scenario dataset (deterministic by seed).
    Synth(SynthArgs),
    /// Convert MovieLens-100k, read from the installed `recbole` package, to the same layout.
    Movielens(MovielensArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    LastWindow,
    Recbole,
}

#[derive(Args)]
pub struct MovielensArgs {
    #[arg(long)]
    pub out: PathBuf,
    /// Each user's last N ratings are held out for evaluation (`--protocol last-window`).
    #[arg(long, default_value_t = 10)]
    pub window: usize,
    /// `last-window`, or `recbole`: RecBole's leave-one-out (the last rating by time is
    /// the test item, the one before it validation; `OUT/train` is for training).
    #[arg(long, value_enum, default_value_t = Protocol::LastWindow)]
    pub protocol: Protocol,
    /// Directory holding ml-100k.item and ml-100k.inter (default: the recbole package's).
    #[arg(long)]
    pub source: Option<PathBuf>,
}

#[derive(Args)]
pub struct SynthArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    pub items: usize,
    #[arg(long, default_value_t = 2_000)]
    pub users: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}
