//! Wire types of the encoder's HTTP API.

use serde::{Deserialize, Serialize};

/// Most texts or users one request may carry.
pub const MAX_BATCH: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodeItemsRequest {
    pub texts: Vec<String>,
    /// Time the caller will wait; past it the request is dropped unrun (504).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodeItemsResponse {
    pub vectors: Vec<Vec<f32>>,
    pub model_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserInput {
    /// Item vectors, oldest to newest.
    pub history: Vec<Vec<f32>>,
    /// One scenario name per history vector.
    pub scenarios: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodeUsersRequest {
    pub users: Vec<UserInput>,
    /// Time the caller will wait; past it the request is dropped unrun (504).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodeUsersResponse {
    /// Per user, Q query vectors.
    pub queries: Vec<Vec<Vec<f32>>>,
    pub model_version: String,
}

/// What `GET /v1/stats` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncoderStats {
    pub model_version: String,
    pub device: crate::tower::Device,
    pub sessions: usize,
    pub batching: bool,
    pub max_batch: usize,
    pub max_wait_us: u64,
    pub queue_rows: usize,
    pub queued_item_rows: usize,
    pub queued_user_rows: usize,
}
