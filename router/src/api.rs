//! Request and response bodies of the public API.

use redrec_shard_api::points::Memory;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use serde_with::skip_serializing_none;
use utoipa::ToSchema;

pub type Payload = Map<String, Value>;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemText {
    pub id: String,
    pub text: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Payload,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestTextsRequest {
    pub items: Vec<ItemText>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemVector {
    pub id: String,
    pub vector: Vec<f32>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Payload,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestVectorsRequest {
    pub items: Vec<ItemVector>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IngestResponse {
    pub upserted: usize,
    pub took_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItemResponse {
    pub id: String,
    pub vector: Vec<f32>,
    #[schema(value_type = Object)]
    pub payload: Payload,
    pub shard: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeleteResponse {
    pub id: String,
    pub deleted: bool,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryEvent {
    pub item_id: String,
    pub scenario: String,
    /// Seconds since the epoch; when every event has one, the history is ordered by it.
    #[serde(default)]
    pub ts: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MergeMode {
    /// One list: an item's score is the max over queries of weight x dot product.
    #[default]
    Max,
    /// One list per query.
    PerQuery,
    /// One list in which every query gets a share of k by its weight: the queries' lists
    /// interleaved and deduplicated, so each of a user's interests shows.
    Quota,
    /// The max merge reranked by maximal marginal relevance over the item vectors
    /// (`mmr_lambda`: 1 is pure relevance, lower trades it for items unlike those above).
    Mmr,
}

fn default_k() -> usize {
    10
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendRequest {
    /// Optional: keys the cache of query vectors together with the history.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Events oldest to newest. With `user_id`, appended to the user's stored history
    /// (`POST /v1/events`); may then be empty.
    #[serde(default)]
    pub history: Vec<HistoryEvent>,
    /// The scenario recommended for; picks the query mixing.
    pub scenario: String,
    #[serde(default = "default_k")]
    pub k: usize,
    /// A Qdrant filter over item payloads.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    /// HNSW beam width per shard search (1 to 4096; wider finds more of the true top k,
    /// slower). The collection's `ef` when absent.
    #[serde(default)]
    pub ef: Option<usize>,
    #[serde(default = "yes")]
    pub exclude_seen: bool,
    #[serde(default)]
    pub merge: MergeMode,
    /// With `merge: "mmr"`: weight of relevance against novelty, 0 to 1 (default 0.8).
    #[serde(default)]
    pub mmr_lambda: Option<f32>,
    /// `strong` reads every shard group on its leader after a ReadIndex round, so the
    /// answer reflects every write acknowledged before the request; `any` (the default)
    /// reads any caught-up replica.
    #[serde(default)]
    #[schema(value_type = String, example = "any")]
    pub consistency: Consistency,
}

pub use redrec_shard_api::points::Consistency;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Recommendation {
    pub id: String,
    pub score: f32,
    #[schema(value_type = Object)]
    pub payload: Payload,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueryList {
    pub query: String,
    pub weight: f32,
    pub items: Vec<Recommendation>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Coverage {
    pub shards: usize,
    pub answered: usize,
    /// Shards left out, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

/// What became of the history the request sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct HistoryReport {
    pub received: usize,
    /// Events the user tower read.
    pub used: usize,
    /// Oldest events dropped because the tower reads at most `max_history`.
    pub truncated: usize,
    /// Item ids no shard knows: skipped.
    pub unknown: usize,
    /// Items on shards that did not answer in time: skipped.
    pub unavailable: usize,
    /// The query vectors came from the cache (same user, history and towers recently).
    #[serde(default)]
    pub cached: bool,
}

/// `POST /v1/search`: query vectors brought by the caller.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchVectorsRequest {
    /// 1 to 16 query vectors of the collection's dimension; an item scores the max of its
    /// dot products with them.
    pub vectors: Vec<Vec<f32>>,
    #[serde(default = "default_k")]
    pub k: usize,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    /// Item ids never to return.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// HNSW beam width per shard search (1 to 4096; wider finds more of the true top k,
    /// slower). The collection's `ef` when absent.
    #[serde(default)]
    pub ef: Option<usize>,

    #[serde(default)]
    #[schema(value_type = String, example = "any")]
    pub consistency: Consistency,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchVectorsResponse {
    pub items: Vec<Recommendation>,
    pub coverage: Coverage,
    pub took_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecommendResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<Recommendation>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_query: Option<Vec<QueryList>>,
    pub coverage: Coverage,
    pub history: HistoryReport,
    pub model_version: String,
    pub took_ms: u64,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ShardStatus {
    pub index: usize,
    /// The group's id in the cluster map (its index for a fixed cluster).
    #[serde(default)]
    pub group: u64,
    pub addr: String,
    pub slots: usize,
    pub up: bool,
    pub points: Option<usize>,
    /// Where the group's bytes are (its leader's replica, or the first that answered).
    #[schema(value_type = Option<Object>)]
    pub memory: Option<Memory>,
    /// RAM bytes per stored item.
    pub ram_per_item: Option<f64>,
    pub error: Option<String>,
    /// The replicas of a Raft-replicated group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaInfo>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ReplicaInfo {
    pub addr: String,
    pub up: bool,
    pub points: Option<usize>,
    /// Points in HNSW-indexed segments (the rest are searched exactly).
    pub indexed: Option<usize>,
    /// An index build is running.
    pub indexing: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub memory: Option<Memory>,
    pub leader: Option<bool>,
    pub caught_up: Option<bool>,
    pub applied: Option<u64>,
    pub term: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterResponse {
    pub model_version: String,
    pub dim: usize,
    pub scenarios: Vec<String>,
    pub queries: Vec<String>,
    pub max_history: usize,
    pub slots: usize,
    /// Where items are kept: `embedded` (redrec's shard groups), or `qdrant URL collection
    /// NAME` (a Qdrant server or cluster; `shards` are then its shards, a replica per peer).
    #[serde(default)]
    pub backend: String,
    /// Points in every group (each counted once).
    pub points: usize,
    /// The groups' bytes, added up (one replica each).
    #[schema(value_type = Object)]
    pub memory: Memory,
    pub shards: Vec<ShardStatus>,
    /// The cluster map this router routes by (absent for a cluster fixed on its command
    /// line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MapSummary {
    pub version: u64,
    pub rebalancing: bool,
    #[schema(value_type = Vec<Object>)]
    pub moves: Vec<redrec_shard_api::map::SlotMove>,
    pub nodes: usize,
}

/// One event of a user: they touched an item in a scenario at `ts` (seconds since the
/// epoch). The same (user, item, ts) twice is stored once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserEventIn {
    pub user_id: String,
    pub item_id: String,
    pub scenario: String,
    pub ts: i64,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsRequest {
    pub events: Vec<UserEventIn>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventsResponse {
    pub received: usize,
    /// Events not stored before (the others were already there).
    pub stored: usize,
    pub took_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StoredEventOut {
    pub item_id: String,
    pub scenario: String,
    pub ts: i64,
}

/// A user's stored history, oldest first: the newest `max_history` events.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserHistoryResponse {
    pub user_id: String,
    pub events: Vec<StoredEventOut>,
}
