//! Points and searches on the shard's internal HTTP API: what is written, read, searched
//! and scrolled, and how an item id becomes a point id.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

pub type Payload = Map<String, Value>;

/// The payload key under which a point keeps its item id (Qdrant's point ids are UUIDs);
/// callers may not write it.
pub const ID_KEY: &str = "_redrec_id";
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x7265_6472_6563_4000_8000_6974_656d_7321);

/// The UUID behind an item's point id: scrolls return points in its order.
pub fn point_uuid(item_id: &str) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, item_id.as_bytes())
}

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
    /// `strong`: read on the group's leader after a ReadIndex round, so every write
    /// acknowledged before the request is seen. Default: any caught-up replica.
    #[serde(default, skip_serializing_if = "Consistency::is_default")]
    pub consistency: Consistency,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    #[default]
    Any,
    Strong,
}

impl Consistency {
    pub fn is_default(&self) -> bool {
        *self == Self::Any
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScrollRequest {
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default = "default_page")]
    pub limit: usize,
    /// Only points in these slots (a page may then hold fewer than `limit`, even none,
    /// before the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<Vec<u16>>,
}

fn default_page() -> usize {
    1024
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

/// One page of a scroll over a shard, in point-id order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Page {
    pub points: Vec<StoredPoint>,
    /// Where the next page starts; `None` after the last page.
    pub next: Option<String>,
}
