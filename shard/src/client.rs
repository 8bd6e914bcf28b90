//! HTTP client of the shard API, for routers and tools.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    DeleteRequest, DeleteResponse, Digest, ErrorBody, GetRequest, GetResponse, Point,
    SearchRequest, SearchResponse, Stats, StoredPoint, UpsertRequest, UpsertResponse,
};
use crate::raft::node::GroupStatus;
use crate::server::groups::LEADER_HEADER;

#[derive(Debug, thiserror::Error)]
pub enum ShardClientError {
    /// Not reached, timed out, or broke off: the shard may or may not have acted.
    #[error("shard {addr} unavailable: {message}")]
    Unavailable { addr: String, message: String },
    /// The replica asked does not lead its group; `leader` is where the leader listens,
    /// when the replica knows.
    #[error("shard {addr} is not the group's leader (leader: {leader:?})")]
    NotLeader {
        addr: String,
        leader: Option<String>,
    },
    /// The shard answered with an error.
    #[error("shard {addr} answered {status}: {code}: {message}")]
    Rejected {
        addr: String,
        status: u16,
        code: String,
        message: String,
    },
}

impl ShardClientError {
    pub fn is_client_error(&self) -> bool {
        matches!(self, Self::Rejected { status, .. } if (400..500).contains(status))
    }

    /// Another replica may succeed where this one did not: it was unreachable, is not
    /// the leader, or is not ready (503).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable { .. } | Self::NotLeader { .. } => true,
            Self::Rejected { status, .. } => *status == 503,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ShardClient {
    addr: String,
    /// `addr` plus the API prefix: `/v1` for a lone shard, `/v1/groups/{g}` for a replica.
    base: String,
    http: reqwest::Client,
}

impl ShardClient {
    /// A lone (unreplicated) shard at `addr`, like `http://127.0.0.1:7001`; `http` is
    /// shared so connections are pooled.
    pub fn new(addr: impl Into<String>, http: reqwest::Client) -> Self {
        let addr = addr.into().trim_end_matches('/').to_string();
        Self {
            base: format!("{addr}/v1"),
            addr,
            http,
        }
    }

    /// The replica of group `group` hosted by the shard node at `addr`.
    pub fn replica(addr: impl Into<String>, group: u64, http: reqwest::Client) -> Self {
        let addr = addr.into().trim_end_matches('/').to_string();
        Self {
            base: format!("{addr}/v1/groups/{group}"),
            addr,
            http,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> ShardClientError {
        ShardClientError::Unavailable {
            addr: self.addr.clone(),
            message: e.to_string(),
        }
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, ShardClientError> {
        let url = format!("{}{}", self.base, path);
        let req = match body {
            Some(b) => self.http.post(url).json(b),
            None => self.http.get(url),
        };
        let resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.unavailable(e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::MISDIRECTED_REQUEST {
            let leader = resp
                .headers()
                .get(LEADER_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            return Err(ShardClientError::NotLeader {
                addr: self.addr.clone(),
                leader,
            });
        }
        let bytes = resp.bytes().await.map_err(|e| self.unavailable(e))?;
        if !status.is_success() {
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => (b.error.code, b.error.message),
                Err(_) => (
                    "unknown".into(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ),
            };
            return Err(ShardClientError::Rejected {
                addr: self.addr.clone(),
                status: status.as_u16(),
                code,
                message,
            });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| self.unavailable(format!("undecodable answer: {e}")))
    }

    pub async fn upsert(
        &self,
        points: Vec<Point>,
        timeout: Duration,
    ) -> Result<usize, ShardClientError> {
        let r: UpsertResponse = self
            .call("/points/upsert", Some(&UpsertRequest { points }), timeout)
            .await?;
        Ok(r.upserted)
    }

    pub async fn delete(
        &self,
        ids: Vec<String>,
        timeout: Duration,
    ) -> Result<usize, ShardClientError> {
        let r: DeleteResponse = self
            .call("/points/delete", Some(&DeleteRequest { ids }), timeout)
            .await?;
        Ok(r.deleted)
    }

    pub async fn get(
        &self,
        ids: Vec<String>,
        with_vector: bool,
        timeout: Duration,
    ) -> Result<Vec<StoredPoint>, ShardClientError> {
        let r: GetResponse = self
            .call(
                "/points/get",
                Some(&GetRequest { ids, with_vector }),
                timeout,
            )
            .await?;
        Ok(r.points)
    }

    pub async fn search(
        &self,
        request: &SearchRequest,
        timeout: Duration,
    ) -> Result<SearchResponse, ShardClientError> {
        self.call("/search", Some(request), timeout).await
    }

    pub async fn stats(&self, timeout: Duration) -> Result<Stats, ShardClientError> {
        self.call::<(), _>("/stats", None, timeout).await
    }

    /// Raft status of a replica (not served by a lone shard).
    pub async fn status(&self, timeout: Duration) -> Result<GroupStatus, ShardClientError> {
        self.call::<(), _>("/status", None, timeout).await
    }

    /// Count and checksum of a replica's points (not served by a lone shard).
    pub async fn digest(&self, timeout: Duration) -> Result<Digest, ShardClientError> {
        self.call::<(), _>("/digest", None, timeout).await
    }
}
