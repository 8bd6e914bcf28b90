//! The engine's configuration for a collection's settings: what every store opens (and
//! reopens) its engine with.

use std::sync::LazyLock;
use std::time::Duration;

use qdrant_edge::{
    EdgeConfig, EdgeConfigBuilder, EdgeOptimizersConfig, EdgeShard, EdgeVectorParamsBuilder,
    HnswIndexConfig, QuantizationConfig,
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
        max_segment_size: Some(segment_cap_kb(Writes::AtRest)),
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

/// Writes stop counting as a stream once none has come for this long.
pub(super) const QUIET: Duration = Duration::from_secs(5);
/// Writes count as a stream only while they have not grown the shard past this many times
/// the catalogue it held when its indexer last caught up with them; beyond that (or into
/// an empty shard) they are a load, which builds its segments as the engine would at rest.
const LOAD_GROWTH: u64 = 2;
/// While writes stream, a segment grows by merges to at most this share of the shard's
/// vectors...
const STREAM_SHARE: u64 = 4;
/// ...or to this, whichever is larger (KiB; 64 MiB is 262,144 64-d f32 vectors).
const STREAM_FLOOR_KB: usize = 64 * 1024;
/// At rest, the engine's own cap: 256 MB of vectors per indexing thread (1 to 8).
const AT_REST_PER_THREAD_KB: usize = 256_000;
/// The cap at rest on this machine: read once (the CPU count comes from cgroup files).
static AT_REST_KB: LazyLock<usize> = LazyLock::new(|| {
    AT_REST_PER_THREAD_KB * std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 8))
});

/// How writes stand, for the merge policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Writes {
    /// Writes came within [`QUIET`] and add to the catalogue the indexer last caught up
    /// with; the shard holds this many bytes of vectors.
    Streaming { vector_bytes: u64 },
    /// No write within [`QUIET`], or the writes are a load: segments merge as at rest.
    AtRest,
}

impl Writes {
    /// Writes that came within [`QUIET`] to a shard of `points` `dim`-d vectors, of which
    /// `catalogue` were there when its indexer last caught up.
    pub(super) fn recent(points: u64, catalogue: u64, dim: usize) -> Self {
        if catalogue > 0 && points <= catalogue.saturating_mul(LOAD_GROWTH) {
            Writes::Streaming {
                vector_bytes: points * dim as u64 * 4,
            }
        } else {
            Writes::AtRest
        }
    }
}

/// The largest segment the engine's optimisers may build by merging (KiB).
///
/// The engine indexes each fresh segment together with the smallest indexed one whenever
/// the pair fits under this cap. At rest that is the engine's default, which lets the
/// whole shard settle into few large segments (fastest to search). Under a stream of
/// writes the same rule would merge every fresh segment of a few thousand points into
/// the catalogue's big one, rewriting all of it every few seconds: at 1M items on two
/// cores, 557 MB each time and one optimisation running for 296 s. So while writes
/// stream, the cap is a quarter of the shard: big segments are left alone, fresh ones
/// are merged among themselves (size-tiered: a segment is only merged with ones of its
/// tier), and the shard settles into large segments once the writes pause. A load is not
/// a stream (see [`Writes::recent`]): capped, it built its catalogue as 64 MiB segments
/// and merged them after it ended, slower to settle and slower to search.
pub(super) fn segment_cap_kb(writes: Writes) -> usize {
    let at_rest = *AT_REST_KB;
    match writes {
        Writes::AtRest => at_rest,
        Writes::Streaming { vector_bytes } => {
            let share = usize::try_from(vector_bytes / STREAM_SHARE / 1024).unwrap_or(usize::MAX);
            share.max(STREAM_FLOOR_KB).min(at_rest)
        }
    }
}

/// Sets `shard`'s merge cap for how writes stand (see [`segment_cap_kb`]).
pub(super) fn set_merge_cap(shard: &EdgeShard, writes: Writes) {
    let cap = Some(segment_cap_kb(writes));
    let mut optimizers = shard.config().optimizers.clone();
    if optimizers.max_segment_size != cap {
        optimizers.max_segment_size = cap;
        if let Err(e) = shard.set_optimizers_config(optimizers) {
            tracing::warn!("setting the merge cap: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_caps_merges_at_a_quarter_of_the_shard_within_the_floor_and_the_rest_cap() {
        let at_rest = segment_cap_kb(Writes::AtRest);
        assert!(at_rest >= AT_REST_PER_THREAD_KB);
        let streaming = |points: u64| {
            segment_cap_kb(Writes::Streaming {
                vector_bytes: points * 64 * 4,
            })
        };
        // A small shard: the floor, so a fresh segment may still join the catalogue.
        assert_eq!(streaming(100_000), STREAM_FLOOR_KB.min(at_rest));
        // 1M 64-d vectors (250,000 KiB): their big segment is out of a stream's merges.
        assert_eq!(streaming(1_000_000), STREAM_FLOOR_KB.min(at_rest));
        assert!(streaming(1_000_000) < 250_000);
        // 4M: a quarter of the shard, 8M: that or the cap at rest.
        assert_eq!(streaming(4_000_000), 250_000);
        assert_eq!(streaming(8_000_000), 500_000.min(at_rest));
    }

    #[test]
    fn writes_stream_onto_a_catalogue_and_load_into_an_empty_or_outgrown_one() {
        let streaming = |points: u64| Writes::Streaming {
            vector_bytes: points * 64 * 4,
        };
        assert_eq!(Writes::recent(5_000, 0, 64), Writes::AtRest);
        assert_eq!(
            Writes::recent(1_000_000, 1_000_000, 64),
            streaming(1_000_000)
        );
        assert_eq!(
            Writes::recent(2_000_000, 1_000_000, 64),
            streaming(2_000_000)
        );
        assert_eq!(Writes::recent(2_000_001, 1_000_000, 64), Writes::AtRest);
        // Deletes shrink the shard below its catalogue: still a stream.
        assert_eq!(Writes::recent(900, 1_000, 64), streaming(900));
    }
}
