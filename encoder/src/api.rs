//! Wire types of the encoder's HTTP API.

use serde::{Deserialize, Serialize};

/// Most texts or users one request may carry.
pub const MAX_BATCH: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodeItemsRequest {
    pub texts: Vec<String>,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodeUsersResponse {
    /// Per user, Q query vectors.
    pub queries: Vec<Vec<Vec<f32>>>,
    pub model_version: String,
}
