//! The engine's configuration for a collection's settings: what every store opens (and
//! reopens) its engine with.

use qdrant_edge::{
    EdgeConfig, EdgeConfigBuilder, EdgeOptimizersConfig, EdgeVectorParamsBuilder, HnswIndexConfig,
    QuantizationConfig,
};
use serde_json::json;

use redrec_shard_api::collection::{Collection, Distance, Quantization};

use super::{StoreError, StoreResult};

fn engine(e: serde_json::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// The engine configuration for `dim`-d vectors under `c`.
pub(super) fn edge_config(dim: usize, c: &Collection) -> StoreResult<EdgeConfig> {
    let distance = match c.distance {
        Distance::Dot => qdrant_edge::Distance::Dot,
        Distance::Cosine => qdrant_edge::Distance::Cosine,
    };
    let hnsw: HnswIndexConfig = serde_json::from_value(json!({
        "m": c.hnsw_m,
        "ef_construct": c.hnsw_ef_construct,
        // Segments below this (KiB of vectors) are searched exactly even when indexed:
        // half the indexing threshold, so that every segment built uses its index.
        "full_scan_threshold": c.full_scan_threshold_kb(),
        "max_indexing_threads": 0,
        "on_disk": false,
    }))
    .map_err(engine)?;
    let optimizers = EdgeOptimizersConfig {
        indexing_threshold: Some(c.indexing_threshold_kb),
        ..Default::default()
    };
    let mut config = EdgeConfigBuilder::new()
        .vector(
            "",
            EdgeVectorParamsBuilder::new(dim, distance)
                .on_disk(c.on_disk)
                .build(),
        )
        .hnsw_config(hnsw)
        .optimizers(optimizers);
    if c.quantization == Quantization::Int8 {
        let int8: QuantizationConfig = serde_json::from_value(json!({
            "scalar": { "type": "int8", "quantile": 0.99, "always_ram": true }
        }))
        .map_err(engine)?;
        config = config.quantization_config(int8);
    }
    Ok(config.build())
}
