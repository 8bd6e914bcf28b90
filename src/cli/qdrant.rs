//! `redrec router --qdrant-url`: where a router on the Qdrant backend finds its collection,
//! and how it makes one that is absent.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use redrec_qdrant::QdrantSettings;
use redrec_shard_api::collection::{Collection, Distance, Quantization};
use redrec_shard_api::points::PointIds;

/// Items on a Qdrant server or cluster instead of redrec's shard groups.
#[derive(Args)]
pub struct QdrantArgs {
    /// The gRPC address of a Qdrant server or cluster (http://host:6334): Qdrant shards,
    /// replicates and searches; the router runs the towers, merge and API.
    #[arg(
        long,
        env = "REDREC_QDRANT_URL",
        conflicts_with_all = ["shards", "group", "meta"]
    )]
    pub qdrant_url: Option<String>,
    /// The items' collection (users' events go to `<name>_users`).
    #[arg(
        long,
        env = "REDREC_QDRANT_COLLECTION",
        default_value = "redrec",
        requires = "qdrant_url"
    )]
    pub qdrant_collection: String,
    /// Qdrant's API key.
    #[arg(
        long,
        env = "REDREC_QDRANT_API_KEY",
        hide_env_values = true,
        requires = "qdrant_url"
    )]
    pub qdrant_api_key: Option<String>,
    /// Shards of a collection this router creates.
    #[arg(
        long,
        env = "REDREC_QDRANT_SHARDS",
        default_value_t = 1,
        requires = "qdrant_url"
    )]
    pub qdrant_shards: u32,
    /// Replicas of each shard of a collection this router creates.
    #[arg(
        long,
        env = "REDREC_QDRANT_REPLICATION",
        default_value_t = 1,
        requires = "qdrant_url"
    )]
    pub qdrant_replication: u32,
    /// Replicas that must acknowledge a write (of a collection this router creates).
    #[arg(
        long,
        env = "REDREC_QDRANT_WRITE_CONSISTENCY",
        default_value_t = 1,
        requires = "qdrant_url"
    )]
    pub qdrant_write_consistency: u32,
    /// Longest one call to Qdrant may take (a recommend's own deadline still bounds it).
    #[arg(
        long,
        env = "REDREC_QDRANT_TIMEOUT_MS",
        default_value_t = 5000,
        requires = "qdrant_url"
    )]
    pub qdrant_timeout_ms: u64,
    /// A collection this router creates: `none` or `int8` (scalar, rescored).
    #[arg(
        long,
        env = "REDREC_QDRANT_QUANTIZATION",
        default_value = "none",
        requires = "qdrant_url"
    )]
    pub qdrant_quantization: Quantization,
    /// A collection this router creates keeps original vectors on disk.
    #[arg(long, env = "REDREC_QDRANT_VECTORS_ON_DISK", requires = "qdrant_url")]
    pub qdrant_vectors_on_disk: bool,
    /// HNSW graph degree of a collection this router creates.
    #[arg(long, env = "REDREC_QDRANT_HNSW_M", default_value_t = Collection::default().hnsw_m, requires = "qdrant_url")]
    pub qdrant_hnsw_m: usize,
    /// HNSW build beam of a collection this router creates.
    #[arg(long, env = "REDREC_QDRANT_HNSW_EF_CONSTRUCT", default_value_t = Collection::default().hnsw_ef_construct, requires = "qdrant_url")]
    pub qdrant_hnsw_ef_construct: usize,
    /// HNSW beam of a search that names none.
    #[arg(long, env = "REDREC_QDRANT_EF", default_value_t = Collection::default().ef, requires = "qdrant_url")]
    pub qdrant_ef: usize,
    /// Candidates per result an int8 search rescores with the originals.
    #[arg(long, env = "REDREC_QDRANT_OVERSAMPLING", default_value_t = Collection::default().oversampling, requires = "qdrant_url")]
    pub qdrant_oversampling: f64,
    /// KiB of unindexed vectors a segment takes before Qdrant builds its index.
    #[arg(long, env = "REDREC_QDRANT_INDEXING_THRESHOLD_KB", default_value_t = Collection::default().indexing_threshold_kb, requires = "qdrant_url")]
    pub qdrant_indexing_threshold_kb: usize,
}

impl QdrantArgs {
    /// The Qdrant collection's settings, or `None` for embedded groups.
    pub fn settings(&self) -> Result<Option<QdrantSettings>> {
        let Some(url) = &self.qdrant_url else {
            return Ok(None);
        };
        let collection = Collection {
            // The towers are trained for the dot product.
            distance: Distance::Dot,
            quantization: self.qdrant_quantization,
            hnsw_m: self.qdrant_hnsw_m,
            hnsw_ef_construct: self.qdrant_hnsw_ef_construct,
            ef: self.qdrant_ef,
            on_disk: self.qdrant_vectors_on_disk,
            oversampling: self.qdrant_oversampling,
            indexing_threshold_kb: self.qdrant_indexing_threshold_kb,
            // The Qdrant backend hashes every id and keeps it in the payload.
            point_ids: PointIds::Hashed,
        };
        collection
            .check()
            .map_err(|e| anyhow!("the Qdrant collection: {e}"))?;
        for (flag, n) in [
            ("--qdrant-shards", self.qdrant_shards),
            ("--qdrant-replication", self.qdrant_replication),
            ("--qdrant-write-consistency", self.qdrant_write_consistency),
        ] {
            if n == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        Ok(Some(QdrantSettings {
            url: url.clone(),
            collection: self.qdrant_collection.clone(),
            api_key: self.qdrant_api_key.clone().filter(|k| !k.is_empty()),
            dim: 0,
            collection_settings: collection,
            shard_number: self.qdrant_shards,
            replication_factor: self.qdrant_replication,
            write_consistency_factor: self.qdrant_write_consistency,
            timeout: Duration::from_millis(self.qdrant_timeout_ms.max(1)),
        }))
    }
}
