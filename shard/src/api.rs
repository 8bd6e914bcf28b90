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

/// `POST /v1/groups/{g}/slots`: a step of a slot move.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetSlotsRequest {
    pub version: u64,
    pub slots: Vec<u16>,
    pub state: crate::slots::SlotState,
}

/// `POST /v1/groups/{g}/slots/drop`: the end of a move out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DropSlotsRequest {
    pub version: u64,
    pub slots: Vec<u16>,
}

/// `POST /v1/groups/{g}/migrate`: a slot move's copies (into `incoming` slots only).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MigrateRequest {
    #[serde(default)]
    pub upsert: Vec<Point>,
    #[serde(default)]
    pub delete: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteResponse {
    pub written: usize,
}

fn default_page() -> usize {
    1024
}

/// What a replica holds, in a form replicas can compare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub points: usize,
    /// xxh3 over every (id, vector bits) pair, in id order.
    pub checksum: String,
    /// The replica's applied index when the digest was taken.
    pub applied: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipRequest {
    /// `add` or `remove`.
    pub action: String,
    pub node: u64,
    /// Where the added node listens (needed to add).
    #[serde(default)]
    pub addr: Option<String>,
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
