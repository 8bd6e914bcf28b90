//! Router settings and their defaults.

use std::sync::Arc;
use std::time::Duration;

use redrec_shard_api::reads::ReadPolicy;

use redrec_wire::auth::{Guard, Secret};

#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Largest `k` a recommend request may ask for.
    pub max_k: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most items one ingest request may carry (and ids one search may exclude).
    pub max_items_per_request: usize,
    /// Most events a recommend's history may carry: the newest `max_history` feed the
    /// user tower, all of them are excluded when `exclude_seen`.
    pub max_history_events: usize,
    /// Time a recommend request may spend on shards: the history lookup gets at most half,
    /// the search the rest;
    /// shards that have not answered by then are left out and reported in `coverage`.
    pub deadline: Duration,
    /// Time a write may wait for a shard before it is reported as failed.
    pub write_timeout: Duration,
    /// Users whose query vectors are kept for repeated calls (0: no cache).
    pub user_cache_capacity: u64,
    /// How long cached query vectors stay valid.
    pub user_cache_ttl: Duration,
    /// The API keys callers must present (none: the API is open).
    pub guard: Guard,
    /// Whether `/metrics` needs no key (with keys on, it otherwise needs `admin`).
    pub open_metrics: bool,
    /// The cluster credential this router's calls to the encoder and the nodes carry.
    pub cluster_token: Option<Secret>,
    /// The CA its calls to the encoder and the nodes verify them against (TLS).
    pub tls_ca: Option<std::path::PathBuf>,
    /// How reads pick a replica, how long one attempt may take, and hedging.
    pub reads: Arc<ReadPolicy>,
    /// Per-group results below k (see [`crate::search::group_k`]): the chance a group
    /// holds more of the top-k than it returns. `None`: every group returns k, and the
    /// merge is exact.
    pub group_k_loss: Option<f64>,
    /// Groups that share their nodes searched in one call per node (reads of any
    /// replica only; strong reads go to each group's leader).
    pub batch_groups: bool,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            max_k: 1000,
            max_body_bytes: 8 * 1024 * 1024,
            max_items_per_request: 1024,
            max_history_events: 10_000,
            deadline: Duration::from_millis(1000),
            write_timeout: Duration::from_secs(10),
            user_cache_capacity: 100_000,
            user_cache_ttl: Duration::from_secs(60),
            guard: Guard::default(),
            open_metrics: false,
            cluster_token: None,
            tls_ca: None,
            reads: Arc::new(ReadPolicy::default()),
            group_k_loss: None,
            batch_groups: false,
        }
    }
}
