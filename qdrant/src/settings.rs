//! The collection redrec keeps items in: created with the cluster's settings when absent,
//! checked against them when present; and how its shards stand.

use std::time::Duration;

use qdrant_client::qdrant::{
    quantization_config, vectors_config, CollectionStatus, CreateCollectionBuilder,
    CreateFieldIndexCollectionBuilder, Distance as QDistance, FieldType, HnswConfigDiffBuilder,
    OptimizersConfigDiffBuilder, ReplicaState, ScalarQuantizationBuilder, VectorParamsBuilder,
};
use redrec_shard_api::collection::{Collection, Distance, Quantization};
use redrec_shard_api::ShardClientError;

use crate::QdrantItems;

/// Where the collection is and how it is made.
#[derive(Debug, Clone)]
pub struct QdrantSettings {
    /// The gRPC address (`http://host:6334`).
    pub url: String,
    pub collection: String,
    pub api_key: Option<String>,
    /// Vector dimension: the towers' manifest's.
    pub dim: usize,
    /// HNSW, quantization, on-disk vectors, default `ef`, as for embedded groups.
    pub collection_settings: Collection,
    pub shard_number: u32,
    pub replication_factor: u32,
    pub write_consistency_factor: u32,
    /// Longest one call may take.
    pub timeout: Duration,
}

/// One shard of the collection and the state of each of its replicas, by peer.
#[derive(Debug, Clone)]
pub struct ShardReplicas {
    pub shard: u32,
    /// Points, where the peer asked holds a replica (Qdrant reports no others).
    pub points: Option<u64>,
    /// (peer id, state name, active).
    pub replicas: Vec<(u64, String, bool)>,
}

fn distance(d: Distance) -> QDistance {
    match d {
        Distance::Dot => QDistance::Dot,
        Distance::Cosine => QDistance::Cosine,
    }
}

impl QdrantItems {
    pub(crate) async fn ensure_items(&self) -> Result<(), String> {
        let s = &self.settings;
        let c = &s.collection_settings;
        let name = &s.collection;
        let exists = self
            .client
            .collection_exists(name)
            .await
            .map_err(|e| format!("qdrant at {}: {e}", s.url))?;
        if !exists {
            let mut vectors = VectorParamsBuilder::new(s.dim as u64, distance(c.distance))
                .on_disk(c.on_disk)
                .hnsw_config(
                    HnswConfigDiffBuilder::default()
                        .m(c.hnsw_m as u64)
                        .ef_construct(c.hnsw_ef_construct as u64)
                        .full_scan_threshold(c.full_scan_threshold_kb() as u64),
                );
            if c.quantization == Quantization::Int8 {
                vectors = vectors
                    .quantization_config(ScalarQuantizationBuilder::default().always_ram(true));
            }
            let create = CreateCollectionBuilder::new(name)
                .vectors_config(vectors)
                .shard_number(s.shard_number)
                .replication_factor(s.replication_factor)
                .write_consistency_factor(s.write_consistency_factor)
                .optimizers_config(
                    OptimizersConfigDiffBuilder::default()
                        .indexing_threshold(c.indexing_threshold_kb as u64),
                );
            if let Err(e) = self.client.create_collection(create).await {
                // Another router may have created it meanwhile: then it is checked below.
                tracing::debug!("creating collection {name}: {e}");
            } else {
                tracing::info!(collection = %name, "created the Qdrant collection");
                return Ok(());
            }
        }
        self.check_items().await
    }

    /// The present collection against the settings: what differs is an error.
    async fn check_items(&self) -> Result<(), String> {
        let s = &self.settings;
        let c = &s.collection_settings;
        let info = self
            .client
            .collection_info(&s.collection)
            .await
            .map_err(|e| format!("qdrant collection {}: {e}", s.collection))?;
        let config = info
            .result
            .and_then(|i| i.config)
            .ok_or("qdrant reported no collection config")?;
        let params = config.params.unwrap_or_default();
        let mut differ = Vec::new();
        let mut differs = |what: &str, have: String, want: String| {
            if have != want {
                differ.push(format!("{what} is {have}, redrec is set for {want}"));
            }
        };
        match params.vectors_config.and_then(|v| v.config) {
            Some(vectors_config::Config::Params(v)) => {
                differs("the vector size", v.size.to_string(), s.dim.to_string());
                differs(
                    "the distance",
                    format!("{:?}", QDistance::try_from(v.distance).ok()),
                    format!("{:?}", Some(distance(c.distance))),
                );
                let int8 = matches!(
                    v.quantization_config.and_then(|q| q.quantization),
                    Some(quantization_config::Quantization::Scalar(_))
                ) || matches!(
                    config
                        .quantization_config
                        .as_ref()
                        .and_then(|q| q.quantization.as_ref()),
                    Some(quantization_config::Quantization::Scalar(_))
                );
                differs(
                    "int8 quantization",
                    int8.to_string(),
                    (c.quantization == Quantization::Int8).to_string(),
                );
            }
            _ => differs(
                "its vectors",
                "named or sparse".into(),
                "one unnamed dense vector".into(),
            ),
        }
        differs(
            "shard_number",
            params.shard_number.to_string(),
            s.shard_number.to_string(),
        );
        differs(
            "replication_factor",
            params.replication_factor.unwrap_or(1).to_string(),
            s.replication_factor.to_string(),
        );
        differs(
            "write_consistency_factor",
            params.write_consistency_factor.unwrap_or(1).to_string(),
            s.write_consistency_factor.to_string(),
        );
        if let Some(h) = config.hnsw_config {
            differs(
                "hnsw m",
                h.m.unwrap_or_default().to_string(),
                c.hnsw_m.to_string(),
            );
            differs(
                "hnsw ef_construct",
                h.ef_construct.unwrap_or_default().to_string(),
                c.hnsw_ef_construct.to_string(),
            );
        }
        if differ.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "qdrant collection {:?} differs from this router's settings: {}",
                s.collection,
                differ.join("; ")
            ))
        }
    }

    /// Users' events: a point each, a one-dimensional placeholder vector never searched
    /// (no graph is built), the user id indexed for the lookups.
    pub(crate) async fn ensure_users(&self) -> Result<(), String> {
        let s = &self.settings;
        let fail = |e| format!("qdrant collection {}: {e}", self.users);
        if self
            .client
            .collection_exists(&self.users)
            .await
            .map_err(fail)?
        {
            return Ok(());
        }
        let create = CreateCollectionBuilder::new(&self.users)
            .vectors_config(
                VectorParamsBuilder::new(1, QDistance::Dot)
                    .hnsw_config(HnswConfigDiffBuilder::default().m(0)),
            )
            .shard_number(s.shard_number)
            .replication_factor(s.replication_factor)
            .write_consistency_factor(s.write_consistency_factor);
        if let Err(e) = self.client.create_collection(create).await {
            tracing::debug!("creating collection {}: {e}", self.users);
            return Ok(());
        }
        self.client
            .create_field_index(
                CreateFieldIndexCollectionBuilder::new(
                    &self.users,
                    crate::users::USER_KEY,
                    FieldType::Keyword,
                )
                .wait(true),
            )
            .await
            .map_err(fail)?;
        Ok(())
    }

    /// Points in the collection, and whether Qdrant calls it green (fully optimised).
    pub async fn points(&self, left: Duration) -> Result<(u64, bool), ShardClientError> {
        let info = self
            .within(left, self.client.collection_info(&self.settings.collection))
            .await?;
        let info = info.result.unwrap_or_default();
        Ok((
            info.points_count.unwrap_or_default(),
            info.status == CollectionStatus::Green as i32,
        ))
    }

    /// Each shard and its replicas, as the peer the router talks to sees them.
    pub async fn shards(&self, left: Duration) -> Result<Vec<ShardReplicas>, ShardClientError> {
        let info = self
            .within(
                left,
                self.client
                    .collection_cluster_info(&self.settings.collection),
            )
            .await?;
        let state = |s: i32| {
            let s = ReplicaState::try_from(s).unwrap_or(ReplicaState::Dead);
            (format!("{s:?}").to_lowercase(), s == ReplicaState::Active)
        };
        let mut shards: Vec<ShardReplicas> = (0..info.shard_count as u32)
            .map(|shard| ShardReplicas {
                shard,
                points: None,
                replicas: Vec::new(),
            })
            .collect();
        for l in info.local_shards {
            if let Some(s) = shards.get_mut(l.shard_id as usize) {
                let (name, active) = state(l.state);
                s.points = Some(l.points_count);
                s.replicas.push((info.peer_id, name, active));
            }
        }
        for r in info.remote_shards {
            if let Some(s) = shards.get_mut(r.shard_id as usize) {
                let (name, active) = state(r.state);
                s.replicas.push((r.peer_id, name, active));
            }
        }
        Ok(shards)
    }
}
