//! Wire types of the shard's internal HTTP API, shared with its client.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub type Payload = Map<String, Value>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub id: String,
    pub vector: Vec<f32>,
    #[serde(default)]
    pub payload: Payload,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpsertRequest {
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpsertResponse {
    pub upserted: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteResponse {
    /// How many of the ids existed before the delete.
    pub deleted: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRequest {
    pub ids: Vec<String>,
    #[serde(default)]
    pub with_vector: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredPoint {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
    #[serde(default)]
    pub payload: Payload,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetResponse {
    /// Found points only, in request order; missing ids are absent.
    pub points: Vec<StoredPoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchRequest {
    /// Q query vectors; each gets its own top-k list.
    pub queries: Vec<Vec<f32>>,
    pub k: usize,
    /// A Qdrant filter (`{"must": [...], "should": [...], "must_not": [...]}`).
    #[serde(default)]
    pub filter: Option<Value>,
    /// Item ids never to return (e.g. what the user has already seen).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// HNSW beam width; the shard's default when absent.
    #[serde(default)]
    pub ef: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    #[serde(default)]
    pub payload: Payload,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchResponse {
    /// One list per query, best first.
    pub results: Vec<Vec<Hit>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub points: usize,
    pub segments: usize,
    pub indexed_vectors: usize,
    pub dim: usize,
}

pub use redrec_wire::{ErrorBody, ErrorDetail};
