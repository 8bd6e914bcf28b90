//! The serving roles' flags (with their environment variables), and how they turn into
//! each role's settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use redrec_encoder::{BatchConfig, Device, EncoderConfig, TowersConfig};
use redrec_router::{RouterConfig, Topology, Towers};
use redrec_shard::budget::MemoryBudget;
use redrec_shard::serve::NodeSettings;
use redrec_shard::ShardConfig;
use redrec_shard_api::collection::{Collection, Distance, Quantization};
use redrec_shard_api::points::PointIds;
use redrec_shard_api::reads::{Hedge, ReadPolicy};
use redrec_wire::auth::{ApiKeys, Guard, Secret};
use redrec_wire::tls::ServerTls;
use redrec_wire::ServeOptions;

/// How long clients may take to send a request (every server).
#[derive(Args, Clone)]
pub struct ServeArgs {
    /// A connection whose request headers are not all in after this long is closed.
    #[arg(long, env = "REDREC_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// A request body not all in after this long is refused (408).
    #[arg(long, env = "REDREC_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_timeout_ms: u64,
    /// Most requests served at once; more are refused at once (503 `overloaded`, with
    /// Retry-After) rather than queued.
    #[arg(long, env = "REDREC_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,
    /// Requests slower than this log a warning with their trace id.
    #[arg(long, env = "REDREC_SLOW_REQUEST_MS", default_value_t = 1000)]
    pub slow_request_ms: u64,
    /// Serve TLS with this certificate chain (PEM; with --tls-key).
    #[arg(long, env = "REDREC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "REDREC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ServeArgs {
    /// Timeouts, admission and TLS (certificates read now: a bad one stops start-up).
    pub fn options(&self) -> Result<ServeOptions> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(
                ServerTls {
                    cert: cert.clone(),
                    key: key.clone(),
                }
                .config()?,
            ),
            _ => None,
        };
        Ok(ServeOptions {
            header_read: Duration::from_millis(self.header_timeout_ms.max(1)),
            body_read: Duration::from_millis(self.body_timeout_ms.max(1)),
            max_concurrent: self.max_concurrent_requests.max(1),
            tls,
            slow_request: Duration::from_millis(self.slow_request_ms),
        })
    }
}

/// How a setting's value is spelt (as in the map's JSON).
fn json_name(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[derive(Args)]
pub struct ShardArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "REDREC_LISTEN", default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,
    /// Directory of the shard's data.
    #[arg(long, env = "REDREC_DATA", default_value = ".redrec/shard")]
    pub data: PathBuf,
    /// Dimension of item vectors.
    #[arg(long, env = "REDREC_DIM", default_value_t = 64)]
    pub dim: usize,
    #[command(flatten)]
    pub raft: RaftArgs,
    #[command(flatten)]
    pub collection: CollectionArgs,
    /// RAM the shard's vectors, quantized vectors and HNSW graphs may take (e.g. `48GiB`);
    /// writes past it are refused (507 `memory_budget_exceeded`). Leave room for the
    /// process itself. Unlimited when absent.
    #[arg(long, env = "REDREC_MEMORY_BUDGET")]
    pub memory_budget: Option<bytesize::ByteSize>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// How the shard keeps, indexes and searches vectors. A lone shard uses them; a node
/// starting a new cluster puts them in its map, where `redrec cluster settings` changes
/// them later (a node joining a cluster takes the map's).
#[derive(Args, Clone)]
pub struct CollectionArgs {
    /// `dot` or `cosine` (fixed once the shard or cluster is created).
    #[arg(long, env = "REDREC_DISTANCE", default_value = "dot")]
    pub distance: Distance,
    /// `none` (f32 vectors) or `int8` (scalar quantization, rescored with the originals).
    #[arg(long, env = "REDREC_QUANTIZATION", default_value = "none")]
    pub quantization: Quantization,
    /// Keep original vectors memory-mapped on disk instead of in RAM.
    #[arg(long, env = "REDREC_VECTORS_ON_DISK")]
    pub vectors_on_disk: bool,
    /// HNSW graph degree.
    #[arg(long, env = "REDREC_HNSW_M", default_value_t = Collection::default().hnsw_m)]
    pub hnsw_m: usize,
    /// HNSW beam width while building.
    #[arg(long, env = "REDREC_HNSW_EF_CONSTRUCT", default_value_t = Collection::default().hnsw_ef_construct)]
    pub hnsw_ef_construct: usize,
    /// HNSW beam width of a search that names none.
    #[arg(long, env = "REDREC_EF", default_value_t = Collection::default().ef)]
    pub ef: usize,
    /// Candidates per result an int8 search rescores with the originals.
    #[arg(long, env = "REDREC_OVERSAMPLING", default_value_t = Collection::default().oversampling)]
    pub oversampling: f64,
    /// KiB of unindexed vectors a segment takes before an index build starts.
    #[arg(long, env = "REDREC_INDEXING_THRESHOLD_KB", default_value_t = Collection::default().indexing_threshold_kb)]
    pub indexing_threshold_kb: usize,
}

impl CollectionArgs {
    /// The same settings as `redrec shard` flags.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--distance={}", json_name(&self.distance)),
            format!("--quantization={}", json_name(&self.quantization)),
            format!("--hnsw-m={}", self.hnsw_m),
            format!("--hnsw-ef-construct={}", self.hnsw_ef_construct),
            format!("--ef={}", self.ef),
            format!("--oversampling={}", self.oversampling),
            format!("--indexing-threshold-kb={}", self.indexing_threshold_kb),
        ];
        if self.vectors_on_disk {
            args.push("--vectors-on-disk".into());
        }
        args
    }

    pub fn collection(&self) -> Result<Collection> {
        let c = Collection {
            distance: self.distance,
            quantization: self.quantization,
            hnsw_m: self.hnsw_m,
            hnsw_ef_construct: self.hnsw_ef_construct,
            ef: self.ef,
            on_disk: self.vectors_on_disk,
            oversampling: self.oversampling,
            indexing_threshold_kb: self.indexing_threshold_kb,
            point_ids: PointIds::Packed,
        };
        c.check().map_err(|e| anyhow!(e))?;
        Ok(c)
    }
}

#[derive(Args)]
pub struct RaftArgs {
    /// This node's id (1, 2, …): hosts Raft-replicated shard groups instead of one lone shard.
    #[arg(long, env = "REDREC_NODE_ID")]
    pub node_id: Option<u64>,
    /// 0-based index of this node (a StatefulSet pod's index): the node id is ordinal + 1.
    #[arg(long, env = "REDREC_NODE_ORDINAL", conflicts_with = "node_id")]
    pub node_ordinal: Option<u64>,
    /// The other shard nodes, as id=http://host:port, comma-separated.
    #[arg(long, env = "REDREC_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Shard groups this node hosts a replica of.
    #[arg(
        long,
        env = "REDREC_GROUPS",
        value_delimiter = ',',
        default_value = "0"
    )]
    pub groups: Vec<u64>,
    /// Nodes forming each new group (default: this node and its peers). A node that is not
    /// among them, or whose data was lost, asks the group to add it.
    #[arg(long, env = "REDREC_VOTERS", value_delimiter = ',')]
    pub voters: Vec<u64>,
    /// Where other nodes reach this one (default: http://<listen>).
    #[arg(long, env = "REDREC_ADVERTISE")]
    pub advertise: Option<String>,
    /// The cluster's meta members (http://host:port, comma-separated). A node that is not
    /// among the voters joins the running cluster through them: it registers itself as
    /// spare, and the cluster forms new groups from spare nodes and moves slots onto them.
    #[arg(long, env = "REDREC_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// Whether a new cluster rebalances slots by itself whenever a group forms (recorded
    /// in its map at creation; later `redrec cluster auto-rebalance on|off`).
    #[arg(long, env = "REDREC_AUTO_REBALANCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_rebalance: bool,
    /// Raft clock tick, in milliseconds.
    #[arg(long, env = "REDREC_RAFT_TICK_MS", default_value_t = 100)]
    pub raft_tick_ms: u64,
    /// Ticks without a leader's heartbeat before an election.
    #[arg(long, env = "REDREC_RAFT_ELECTION_TICKS", default_value_t = 10)]
    pub raft_election_ticks: usize,
    /// Applied entries kept in the log before compaction; a replica further behind is
    /// caught up by a snapshot.
    #[arg(long, env = "REDREC_RAFT_COMPACT_AFTER", default_value_t = 10_000)]
    pub raft_compact_after: u64,
    /// Allow `POST /admin/v1/faults` to delay a share of this node's reads (tests and
    /// benches; never in production).
    #[arg(long, env = "REDREC_FAULT_INJECTION")]
    pub fault_injection: bool,
}

/// How a router reads shard groups.
#[derive(Args, Clone)]
pub struct ReadArgs {
    /// Longest one read attempt on one replica may take before the next is tried (the
    /// deadline bounds it too; the last replica left to try has the rest of the deadline).
    #[arg(long, env = "REDREC_READ_ATTEMPT_MS", default_value_t = 400)]
    pub read_attempt_ms: u64,
    /// Hedged reads: `off`; `auto`, a second replica once the first has taken the group's
    /// recent p95 (at most twice the p95 over all groups); or a fixed delay in ms.
    #[arg(long, env = "REDREC_HEDGE", default_value = "auto")]
    pub hedge: String,
    /// Most extra reads hedging may add, as a share of reads.
    #[arg(long, env = "REDREC_HEDGE_BUDGET", default_value_t = 0.05)]
    pub hedge_budget: f64,
    /// Let each group return fewer than k results: the chance a group holds more of the
    /// top k than it returns (e.g. 0.001). Unset: every group returns k, an exact merge.
    #[arg(long, env = "REDREC_GROUP_K_LOSS")]
    pub group_k_loss: Option<f64>,
    /// Search groups whose replicas share nodes in one call per node (`on`), or one call
    /// per group (`off`; also true/false, yes/no, 1/0). Reads of any replica only: strong
    /// reads go to each leader.
    #[arg(
        long,
        env = "REDREC_BATCH_GROUPS",
        default_value = "off",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub batch_groups: bool,
    /// Which replicas a group's reads spread over: `cpus`, one per set of CPUs (replicas
    /// whose nodes run on the same CPUs of one machine are read as one, the group's own
    /// first: reading more of them adds no CPU to search with, only memory for the reads
    /// to touch); `replicas`, every replica.
    #[arg(long, env = "REDREC_READ_SPREAD", default_value = "cpus", value_parser = ["cpus", "replicas"])]
    pub read_spread: String,
}

impl ReadArgs {
    pub fn policy(&self) -> Result<ReadPolicy> {
        if !(0.0..=1.0).contains(&self.hedge_budget) {
            bail!("--hedge-budget must be within 0..1");
        }
        let hedge = match self.hedge.trim() {
            "off" => None,
            "auto" => Some(Hedge::new(None, self.hedge_budget)),
            ms => {
                let ms: u64 = ms
                    .parse()
                    .map_err(|_| anyhow!("--hedge is off, auto or a delay in ms, not {ms:?}"))?;
                Some(Hedge::new(
                    Some(Duration::from_millis(ms)),
                    self.hedge_budget,
                ))
            }
        };
        Ok(ReadPolicy {
            attempt_timeout: Duration::from_millis(self.read_attempt_ms.max(1)),
            hedge,
            by_cpus: self.read_spread == "cpus",
            ..ReadPolicy::default()
        })
    }

    pub fn group_k_loss(&self) -> Result<Option<f64>> {
        match self.group_k_loss {
            Some(p) if !(0.0..1.0).contains(&p) => bail!("--group-k-loss must be within 0..1"),
            p => Ok(p),
        }
    }
}

#[derive(Args, Clone)]
pub struct TowerArgs {
    /// Directory holding manifest.json and the towers (default: the reference towers).
    #[arg(long, env = "REDREC_MODELS")]
    pub models: Option<PathBuf>,
    /// ONNX Runtime sessions per tower, each with its own batch worker (default: from the cores).
    #[arg(long, env = "REDREC_ENCODER_SESSIONS")]
    pub sessions: Option<usize>,
    /// Threads per session run (default: cores / sessions).
    #[arg(long, env = "REDREC_ENCODER_THREADS")]
    pub intra_threads: Option<usize>,
    /// Where the towers run: cpu, or cuda (needs the `cuda` feature; falls back to the CPU).
    #[arg(long, env = "REDREC_DEVICE", default_value = "cpu")]
    pub device: Device,
    /// Run each request alone instead of batching concurrent ones.
    #[arg(long, env = "REDREC_NO_BATCHING")]
    pub no_batching: bool,
    /// Most rows (texts or users) in one batch.
    #[arg(long, env = "REDREC_MAX_BATCH", default_value_t = BatchConfig::default().max_batch)]
    pub max_batch: usize,
    /// Most padded positions (rows × length) in one batch.
    #[arg(long, env = "REDREC_MAX_BATCH_TOKENS", default_value_t = BatchConfig::default().max_tokens)]
    pub max_batch_tokens: usize,
    /// Longest a request waits for others to share its batch, in microseconds.
    #[arg(long, env = "REDREC_MAX_WAIT_US", default_value_t = BatchConfig::default().max_wait.as_micros() as u64)]
    pub max_wait_us: u64,
    /// Most rows queued per tower; past it requests are refused with 503 and Retry-After.
    #[arg(long, env = "REDREC_QUEUE_ROWS", default_value_t = BatchConfig::default().queue_rows)]
    pub queue_rows: usize,
}

impl TowerArgs {
    /// The towers these flags describe.
    pub fn config(&self) -> TowersConfig {
        let base = match self.sessions {
            Some(n) => EncoderConfig::with_sessions(n),
            None => EncoderConfig::default(),
        };
        TowersConfig {
            models: self
                .models
                .clone()
                .unwrap_or_else(redrec_encoder::manifest::default_dir),
            encoder: EncoderConfig {
                intra_threads: self.intra_threads.unwrap_or(base.intra_threads).max(1),
                device: self.device,
                ..base
            },
            batching: BatchConfig {
                enabled: !self.no_batching,
                max_batch: self.max_batch.max(1),
                max_tokens: self.max_batch_tokens.max(1),
                max_wait: Duration::from_micros(self.max_wait_us),
                queue_rows: self.queue_rows.max(1),
                ..BatchConfig::default()
            },
        }
    }
}

#[derive(Args)]
pub struct EncoderArgs {
    #[arg(long, env = "REDREC_LISTEN", default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub towers: TowerArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Args)]
pub struct RouterArgs {
    #[arg(long, env = "REDREC_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Lone (unreplicated) shard addresses, comma-separated (http://host:port).
    #[arg(
        long,
        env = "REDREC_SHARDS",
        value_delimiter = ',',
        required_unless_present_any = ["group", "meta", "qdrant_url"]
    )]
    pub shards: Vec<String>,
    /// A Raft-replicated shard group: the addresses of the nodes hosting its replicas,
    /// comma-separated. Repeat for groups 0, 1, … (in the environment: `;` between groups).
    #[arg(
        long,
        env = "REDREC_SHARD_GROUPS",
        value_delimiter = ';',
        conflicts_with = "shards"
    )]
    pub group: Vec<String>,
    /// Route by the cluster map of the meta group whose members listen here
    /// (http://host:port, comma-separated): groups added and slots moved are followed
    /// without a restart.
    #[arg(
        long,
        env = "REDREC_META",
        value_delimiter = ',',
        conflicts_with_all = ["shards", "group"]
    )]
    pub meta: Vec<String>,
    #[command(flatten)]
    pub qdrant: super::qdrant::QdrantArgs,
    /// Encoder address; without it the towers run in this process.
    #[arg(long, env = "REDREC_ENCODER")]
    pub encoder: Option<String>,
    #[command(flatten)]
    pub towers: TowerArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Time a recommend request may spend on shards before answering with what it has.
    #[arg(long, env = "REDREC_DEADLINE_MS", default_value_t = 1000)]
    pub deadline_ms: u64,
    #[command(flatten)]
    pub reads: ReadArgs,
    /// Largest k a request may ask for.
    #[arg(long, env = "REDREC_MAX_K", default_value_t = 1000)]
    pub max_k: usize,
    /// Largest request body in bytes.
    #[arg(long, env = "REDREC_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most items per ingest request (and ids one search may exclude).
    #[arg(long, env = "REDREC_MAX_ITEMS", default_value_t = 1024)]
    pub max_items: usize,
    /// API keys callers must present, as `SCOPES:KEY` entries separated by commas (scopes
    /// `read`, `write`, `admin`, joined by `+`; KEY may be `sha256:HEX`). Unset: the public
    /// API is open.
    #[arg(long, env = "REDREC_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// A file of API keys, one entry per line, in the form of --api-keys.
    #[arg(long, env = "REDREC_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Requests per second each API key may make, in bursts of as many (0: no limit);
    /// past it, 429 `rate_limited` with Retry-After.
    #[arg(long, env = "REDREC_RATE_LIMIT_PER_KEY", default_value_t = 0)]
    pub rate_limit_per_key: u32,
    /// Serve /metrics without an API key (with keys on, it otherwise needs `admin`).
    #[arg(long, env = "REDREC_OPEN_METRICS")]
    pub open_metrics: bool,
    /// Most events one recommend's history may carry.
    #[arg(long, env = "REDREC_MAX_HISTORY_EVENTS", default_value_t = 10_000)]
    pub max_history_events: usize,
    /// Users whose query vectors are cached for repeated calls (0 turns the cache off).
    #[arg(long, env = "REDREC_USER_CACHE", default_value_t = 100_000)]
    pub user_cache: u64,
    /// Seconds cached query vectors stay valid.
    #[arg(long, env = "REDREC_USER_CACHE_TTL_S", default_value_t = 60)]
    pub user_cache_ttl_s: u64,
}

impl ShardArgs {
    /// The shard's settings: a node when it has an id (or a StatefulSet ordinal).
    pub fn config(
        self,
        cluster_token: Option<Secret>,
        tls_ca: Option<PathBuf>,
    ) -> Result<ShardConfig> {
        let r = self.raft;
        let id = r.node_id.or(r.node_ordinal.map(|o| o + 1));
        Ok(ShardConfig {
            tls_ca,
            listen: self.listen,
            data: self.data,
            dim: self.dim,
            collection: self.collection.collection()?,
            budget: MemoryBudget {
                limit: self.memory_budget.map(|b| b.as_u64()),
            },
            options: self.serve.options()?,
            cluster_token,
            node: id.map(|id| NodeSettings {
                id,
                peers: r.peers,
                groups: r.groups,
                voters: r.voters,
                advertise: r.advertise,
                seeds: r.seeds,
                auto_rebalance: r.auto_rebalance,
                raft_tick_ms: r.raft_tick_ms,
                raft_election_ticks: r.raft_election_ticks,
                raft_compact_after: r.raft_compact_after,
                fault_injection: r.fault_injection,
            }),
        })
    }
}

impl RouterArgs {
    pub fn towers(&self) -> Towers {
        match &self.encoder {
            Some(addr) => Towers::Remote(addr.clone()),
            None => Towers::Local(self.towers.config()),
        }
    }

    pub fn topology(&self) -> Result<Topology> {
        Ok(if let Some(q) = self.qdrant.settings()? {
            Topology::Qdrant(Box::new(q))
        } else if !self.meta.is_empty() {
            Topology::Meta(self.meta.clone())
        } else if self.group.is_empty() {
            Topology::Lone(self.shards.clone())
        } else {
            Topology::Groups(
                self.group
                    .iter()
                    .map(|g| {
                        g.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .collect(),
            )
        })
    }

    /// The router's settings; a key file or list that does not parse is an error.
    pub fn config(
        &self,
        cluster_token: Option<Secret>,
        tls_ca: Option<PathBuf>,
    ) -> Result<RouterConfig> {
        let keys = match (&self.api_keys, &self.api_keys_file) {
            (Some(_), Some(_)) => bail!("give --api-keys or --api-keys-file, not both"),
            (Some(list), None) if !list.trim().is_empty() => Some(list.clone()),
            (_, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading API keys from {}", file.display()))?,
            ),
            _ => None,
        };
        let keys = keys
            .map(|k| ApiKeys::parse(&k).map_err(|e| anyhow!("API keys: {e}")))
            .transpose()?;
        let guard = Guard::new(keys, None).with_rate_limit(self.rate_limit_per_key);
        Ok(RouterConfig {
            max_k: self.max_k,
            max_body_bytes: self.max_body_bytes,
            max_items_per_request: self.max_items,
            max_history_events: self.max_history_events,
            deadline: Duration::from_millis(self.deadline_ms),
            user_cache_capacity: self.user_cache,
            user_cache_ttl: Duration::from_secs(self.user_cache_ttl_s),
            guard,
            open_metrics: self.open_metrics,
            cluster_token,
            tls_ca,
            reads: Arc::new(self.reads.policy()?),
            group_k_loss: self.reads.group_k_loss()?,
            batch_groups: self.reads.batch_groups,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::ReadArgs;

    #[derive(Parser)]
    struct Reads {
        #[command(flatten)]
        reads: ReadArgs,
    }

    #[test]
    fn batch_groups_takes_on_and_off_and_the_usual_booleans_and_refuses_anything_else() {
        let parse = |args: &[&str]| {
            Reads::try_parse_from(std::iter::once("router").chain(args.iter().copied()))
                .map(|r| r.reads.batch_groups)
        };
        assert!(parse(&["--batch-groups", "on"]).unwrap());
        assert!(!parse(&["--batch-groups", "off"]).unwrap());
        assert!(parse(&["--batch-groups", "true"]).unwrap());
        assert!(!parse(&["--batch-groups", "0"]).unwrap());
        assert!(parse(&["--batch-groups", "sometimes"]).is_err());
        if std::env::var_os("REDREC_BATCH_GROUPS").is_none() {
            assert!(!parse(&[]).unwrap(), "off unless asked for");
        }
    }
}
