//! How a shard keeps, indexes and searches its vectors: the collection settings every
//! group's store is created with and applies again whenever the cluster changes them.

use serde::{Deserialize, Serialize};

use crate::points::PointIds;

/// The similarity the towers are trained for. Both order higher scores first, which is
/// what the router's max merge assumes; distances (lower first) are not offered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    #[default]
    Dot,
    Cosine,
}

/// How vectors are compressed for search: `int8` keeps one byte per dimension in RAM
/// (scalar quantization) and rescores the best candidates with the originals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    #[default]
    None,
    Int8,
}

/// Parses a lower-case name, as the flags and the admin API spell them.
fn by_name<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("unknown value {s:?}"))
}

impl std::str::FromStr for Distance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        by_name(s)
    }
}

impl std::str::FromStr for Quantization {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        by_name(s)
    }
}

/// Largest per-request `ef` any shard accepts: the beam bounds a search's time.
pub const MAX_EF: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Collection {
    /// Fixed when the cluster is created.
    pub distance: Distance,
    pub quantization: Quantization,
    /// HNSW graph degree.
    pub hnsw_m: usize,
    /// HNSW beam width while building.
    pub hnsw_ef_construct: usize,
    /// HNSW beam width of a search that names none.
    pub ef: usize,
    /// Original vectors memory-mapped from disk rather than held in RAM (with `int8`,
    /// only the rescoring reads them).
    pub on_disk: bool,
    /// How many candidates per result a quantized search rescores with the originals.
    pub oversampling: f64,
    /// Unindexed vectors (in KiB) a segment may hold before an index build starts; below
    /// it a segment is searched exactly.
    pub indexing_threshold_kb: usize,
    /// How item ids become point ids; fixed when the cluster is created. Maps written
    /// before it existed read `hashed`, which their stores were made with.
    #[serde(default = "PointIds::legacy")]
    pub point_ids: PointIds,
}

impl Default for Collection {
    fn default() -> Self {
        Self {
            distance: Distance::Dot,
            quantization: Quantization::None,
            hnsw_m: 32,
            hnsw_ef_construct: 200,
            ef: 256,
            on_disk: false,
            oversampling: 2.0,
            // 2 MB: 8k vectors of 64 floats, scanned exactly until indexed.
            indexing_threshold_kb: 2_000,
            point_ids: PointIds::Packed,
        }
    }
}

impl Collection {
    /// What is wrong with these settings, if anything.
    pub fn check(&self) -> Result<(), String> {
        if !(4..=128).contains(&self.hnsw_m) {
            return Err(format!("hnsw_m must be 4..=128, got {}", self.hnsw_m));
        }
        if !(4..=2048).contains(&self.hnsw_ef_construct) {
            return Err(format!(
                "hnsw_ef_construct must be 4..=2048, got {}",
                self.hnsw_ef_construct
            ));
        }
        if !(1..=MAX_EF).contains(&self.ef) {
            return Err(format!("ef must be 1..={MAX_EF}, got {}", self.ef));
        }
        if !(1.0..=16.0).contains(&self.oversampling) {
            return Err(format!(
                "oversampling must be 1..=16, got {}",
                self.oversampling
            ));
        }
        if self.indexing_threshold_kb == 0 {
            return Err("indexing_threshold_kb must be at least 1".into());
        }
        Ok(())
    }

    /// Whether a cluster created with `self` may switch to `next`.
    pub fn check_change(&self, next: &Collection) -> Result<(), String> {
        next.check()?;
        if next.distance != self.distance {
            return Err(format!(
                "distance is fixed when the cluster is created ({:?})",
                self.distance
            ));
        }
        if next.point_ids != self.point_ids {
            return Err(format!(
                "point_ids is fixed when the cluster is created ({:?})",
                self.point_ids
            ));
        }
        Ok(())
    }

    /// Segments holding fewer KiB of vectors are searched exactly (faster than a graph
    /// that small): half the indexing threshold, so every segment built uses its index.
    pub fn full_scan_threshold_kb(&self) -> usize {
        (self.indexing_threshold_kb / 2).max(1)
    }

    /// The beam width for a search of `k` results asking for `ef`.
    pub fn search_ef(&self, k: usize, ef: Option<usize>) -> usize {
        ef.unwrap_or(self.ef).clamp(k, MAX_EF.max(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_distance_is_fixed() {
        let c = Collection::default();
        c.check().unwrap();
        let mut cosine = c.clone();
        cosine.distance = Distance::Cosine;
        assert!(c.check_change(&cosine).is_err());
        let mut int8 = c.clone();
        int8.quantization = Quantization::Int8;
        int8.on_disk = true;
        c.check_change(&int8).unwrap();
        let mut bad = c.clone();
        bad.ef = MAX_EF + 1;
        assert!(bad.check().is_err());
        assert_eq!(c.search_ef(10, None), 256);
        assert_eq!(c.search_ef(500, Some(100)), 500);
    }

    #[test]
    fn old_maps_read_with_defaults() {
        let c: Collection = serde_json::from_str(r#"{"quantization":"int8"}"#).unwrap();
        assert_eq!(c.quantization, Quantization::Int8);
        assert_eq!(c.hnsw_m, Collection::default().hnsw_m);
        // Their stores hash every id; new clusters keep decimal ids as they are.
        assert_eq!(c.point_ids, PointIds::Hashed);
        assert_eq!(Collection::default().point_ids, PointIds::Packed);
        let hashed = Collection {
            point_ids: PointIds::Hashed,
            ..Collection::default()
        };
        assert!(Collection::default().check_change(&hashed).is_err());
    }
}
