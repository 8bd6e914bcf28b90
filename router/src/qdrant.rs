//! The router over a Qdrant server or cluster (`--qdrant-url`): Qdrant shards, replicates
//! and searches; the router keeps its API, towers, history lookup and merge. What the
//! search, ingest, users and survey paths do with embedded groups, done here through
//! [`QdrantItems`]. Coverage counts Qdrant's shards: those with an active replica, as
//! the peer the router talks to last saw them (refreshed every second).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redrec_qdrant::{QdrantItems, ShardReplicas};
use redrec_shard_api::points::{Hit, SearchRequest, StoredPoint};
use redrec_shard_api::ShardClientError;

use crate::api::{Coverage, ReplicaInfo, ShardStatus};
use crate::error::RouterError;

/// How often the shards' states are asked.
const SURVEY_EVERY: Duration = Duration::from_secs(1);
/// How long asking them may take.
const ASK: Duration = Duration::from_millis(500);

pub struct QdrantBackend {
    pub items: QdrantItems,
    shards: RwLock<Arc<Vec<ShardReplicas>>>,
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

impl QdrantBackend {
    /// The backend, its shards surveyed once, then every second in the background.
    pub async fn start(items: QdrantItems) -> Arc<Self> {
        let shards = items.shards(ASK).await.unwrap_or_default();
        let backend = Arc::new(Self {
            items,
            shards: RwLock::new(Arc::new(shards)),
        });
        let weak = Arc::downgrade(&backend);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SURVEY_EVERY).await;
                let Some(b) = weak.upgrade() else { return };
                b.survey().await;
            }
        });
        backend
    }

    async fn survey(&self) {
        match self.items.shards(ASK).await {
            Ok(s) => *self.shards.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s),
            Err(e) => tracing::debug!("surveying qdrant's shards: {e}"),
        }
    }

    fn known_shards(&self) -> Arc<Vec<ShardReplicas>> {
        self.shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Who answers for the collection: its shards, those with an active replica.
    pub fn coverage(&self) -> Coverage {
        let shards = self.known_shards();
        let failed: Vec<String> = shards
            .iter()
            .filter(|s| !s.replicas.iter().any(|r| r.2))
            .map(|s| {
                let states: Vec<String> = s
                    .replicas
                    .iter()
                    .map(|(peer, state, _)| format!("peer {peer} {state}"))
                    .collect();
                format!(
                    "qdrant shard {}: no active replica ({})",
                    s.shard,
                    states.join(", ")
                )
            })
            .collect();
        let n = shards.len().max(1);
        Coverage {
            shards: n,
            answered: n - failed.len().min(n),
            failed,
        }
    }

    /// Every query's top list, as one group's answer; a client error is the caller's.
    pub async fn search(
        &self,
        request: &SearchRequest,
        deadline: Instant,
    ) -> Result<(Vec<Vec<Vec<Hit>>>, Coverage), RouterError> {
        let started = Instant::now();
        match self.items.search(request, left(deadline)).await {
            Ok(lists) => {
                metrics::histogram!("redrec_group_read_duration_seconds", "group" => "qdrant")
                    .record(started.elapsed().as_secs_f64());
                let mut coverage = self.coverage();
                if coverage.answered == 0 {
                    // The answer came, so Qdrant had a replica of every shard it searched.
                    coverage.answered = coverage.shards;
                }
                Ok((lists.into_iter().map(|l| vec![l]).collect(), coverage))
            }
            Err(e) if e.is_client_error() => Err(RouterError::bad(
                "invalid_request",
                match e {
                    ShardClientError::Rejected { message, .. } => message,
                    other => other.to_string(),
                },
            )),
            Err(e) => {
                metrics::counter!("redrec_shard_errors_total", "shard" => "qdrant").increment(1);
                self.survey().await;
                Err(RouterError::ShardsUnavailable(format!(
                    "qdrant did not answer: {e}"
                )))
            }
        }
    }

    /// Points of `ids`; a failure is reported as group 0's, as `fetch_points` reports.
    pub async fn fetch(
        &self,
        ids: Vec<String>,
        with_vector: bool,
        deadline: Instant,
    ) -> (HashMap<String, StoredPoint>, BTreeMap<usize, String>) {
        match self.items.get(ids, with_vector, left(deadline)).await {
            Ok(points) => (
                points.into_iter().map(|p| (p.id.clone(), p)).collect(),
                BTreeMap::new(),
            ),
            Err(e) => (HashMap::new(), BTreeMap::from([(0, e.to_string())])),
        }
    }

    /// The collection's shards as `/v1/cluster` lists groups: a replica per peer.
    pub async fn shards(&self) -> (usize, Vec<ShardStatus>) {
        self.survey().await;
        let points = self.items.points(ASK).await;
        let shards = self.known_shards();
        let addr = self.items.addr().to_string();
        let error = points.as_ref().err().map(|e| e.to_string());
        let list = shards
            .iter()
            .map(|s| ShardStatus {
                index: s.shard as usize,
                group: s.shard as u64,
                addr: addr.clone(),
                slots: 0,
                up: s.replicas.iter().any(|r| r.2),
                points: s.points.map(|p| p as usize),
                memory: None,
                ram_per_item: None,
                error: error.clone(),
                replicas: s
                    .replicas
                    .iter()
                    .map(|(peer, state, active)| ReplicaInfo {
                        addr: format!("qdrant peer {peer} ({state})"),
                        up: *active,
                        ..Default::default()
                    })
                    .collect(),
            })
            .collect();
        (points.map(|p| p.0 as usize).unwrap_or_default(), list)
    }
}
