//! HTTP client of the shard API, for routers, tools and the meta group's mover: one
//! shard or replica ([`ShardClient`]), and one group of replicas ([`Group`]): writes find
//! the leader (following `not_leader` hints, backing off while there is none), reads go to
//! any replica that has caught up, failing over to the next.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    DeleteRequest, DeleteResponse, Digest, DropSlotsRequest, ErrorBody, GetRequest, GetResponse,
    MigrateRequest, Point, ScrollRequest, SearchRequest, SearchResponse, SetSlotsRequest, Stats,
    StoredPoint, UpsertRequest, UpsertResponse, WriteResponse,
};
use crate::raft::node::GroupStatus;
use crate::server::groups::LEADER_HEADER;
use crate::slots::SlotState;
use crate::store::Page;

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

/// The code a node answers for a group it does not host.
pub const UNKNOWN_GROUP: &str = "unknown_group";

impl ShardClientError {
    /// The request itself was at fault, so every group would refuse it alike. A replica
    /// that does not host the group (`unknown_group`) is the caller's view of the cluster
    /// being out of date, not a fault of the request.
    pub fn is_client_error(&self) -> bool {
        matches!(self, Self::Rejected { status, code, .. }
            if (400..500).contains(status) && code != UNKNOWN_GROUP)
    }

    /// The group refused a write to slots it does not serve: `Some(true)` while they are
    /// moving (retry shortly), `Some(false)` when misrouted (refresh the cluster map).
    pub fn wrong_slot(&self) -> Option<bool> {
        match self {
            Self::Rejected {
                status: 409, code, ..
            } if code == "slot_moving" => Some(true),
            Self::Rejected {
                status: 409, code, ..
            } if code == "wrong_slot" => Some(false),
            _ => None,
        }
    }

    /// Another replica may succeed where this one did not: it was unreachable, is not
    /// the leader, is not ready (503), or does not host the group (any more, or yet).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable { .. } | Self::NotLeader { .. } => true,
            Self::Rejected { status, code, .. } => *status == 503 || code == UNKNOWN_GROUP,
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

    /// A page of a replica's points, with vectors, optionally only those in `slots`.
    pub async fn scroll(
        &self,
        cursor: Option<String>,
        limit: usize,
        slots: Option<Vec<u16>>,
        timeout: Duration,
    ) -> Result<Page, ShardClientError> {
        let req = ScrollRequest {
            cursor,
            limit,
            slots,
        };
        self.call("/scroll", Some(&req), timeout).await
    }

    /// Sets the state of `slots` in the group (through its log; on the leader).
    pub async fn set_slots(
        &self,
        version: u64,
        slots: Vec<u16>,
        state: SlotState,
        timeout: Duration,
    ) -> Result<usize, ShardClientError> {
        let req = SetSlotsRequest {
            version,
            slots,
            state,
        };
        let r: WriteResponse = self.call("/slots", Some(&req), timeout).await?;
        Ok(r.written)
    }

    /// Drops `slots` from the group: they become absent and their points are deleted.
    pub async fn drop_slots(
        &self,
        version: u64,
        slots: Vec<u16>,
        timeout: Duration,
    ) -> Result<usize, ShardClientError> {
        let req = DropSlotsRequest { version, slots };
        let r: WriteResponse = self.call("/slots/drop", Some(&req), timeout).await?;
        Ok(r.written)
    }

    /// A slot move's copies, applied to the group's `incoming` slots only.
    pub async fn migrate(
        &self,
        req: &MigrateRequest,
        timeout: Duration,
    ) -> Result<usize, ShardClientError> {
        let r: WriteResponse = self.call("/migrate", Some(req), timeout).await?;
        Ok(r.written)
    }

    /// Count and checksum of a replica's points (not served by a lone shard).
    pub async fn digest(&self, timeout: Duration) -> Result<Digest, ShardClientError> {
        self.call::<(), _>("/digest", None, timeout).await
    }
}

/// Longest one attempt of a write may take before the next replica is tried.
const WRITE_ATTEMPT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// One shard group: a lone shard, or the replicas of a Raft group.
pub struct Group {
    pub index: usize,
    pub replicas: Vec<ShardClient>,
    /// The replica that last accepted a write.
    leader: AtomicUsize,
    /// Spreads reads over the replicas.
    next_read: AtomicUsize,
}

impl Group {
    pub fn new(index: usize, replicas: Vec<ShardClient>) -> Self {
        Self {
            index,
            replicas,
            leader: AtomicUsize::new(0),
            next_read: AtomicUsize::new(0),
        }
    }

    pub fn leader_hint(&self) -> usize {
        self.leader.load(Ordering::Relaxed) % self.replicas.len()
    }

    fn deadline_passed(&self) -> ShardClientError {
        ShardClientError::Unavailable {
            addr: format!("group {}", self.index),
            message: "no replica answered before the deadline".into(),
        }
    }

    /// Runs `call` on the group's leader. `not_leader` answers move to the hinted
    /// replica; unreachable or not-ready replicas to the next one after a backoff; until
    /// one succeeds, one refuses the request itself, or `deadline` passes. A lone shard is
    /// tried once: there is nowhere else to go.
    pub async fn leader_call<T, F, Fut>(
        &self,
        deadline: Instant,
        call: F,
    ) -> Result<T, ShardClientError>
    where
        F: Fn(ShardClient, Duration) -> Fut,
        Fut: Future<Output = Result<T, ShardClientError>>,
    {
        let n = self.replicas.len();
        let mut i = self.leader_hint();
        let mut backoff = Duration::from_millis(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.deadline_passed());
            }
            let err = match call(self.replicas[i].clone(), left.min(WRITE_ATTEMPT)).await {
                Ok(v) => {
                    self.leader.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if n == 1 || !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            let hinted = match &err {
                ShardClientError::NotLeader {
                    leader: Some(addr), ..
                } => self.replicas.iter().position(|r| r.addr() == addr),
                _ => None,
            };
            metrics::counter!("redrec_shard_retries_total", "group" => self.index.to_string())
                .increment(1);
            tracing::debug!(group = self.index, "retrying elsewhere: {err}");
            let pause = match hinted {
                Some(j) if j != i => {
                    i = j;
                    Duration::from_millis(5)
                }
                _ => {
                    i = (i + 1) % n;
                    let b = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    b
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left <= pause {
                return Err(err);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Runs `call` on one replica, the next one if it fails (each try gets half of what
    /// is left, the last all of it), until one answers or all were tried.
    pub async fn read<T, F, Fut>(&self, deadline: Instant, call: F) -> Result<T, ShardClientError>
    where
        F: Fn(ShardClient, Duration) -> Fut,
        Fut: Future<Output = Result<T, ShardClientError>>,
    {
        let n = self.replicas.len();
        let first = self.next_read.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for k in 0..n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let budget = if k + 1 < n { left / 2 } else { left };
            match call(self.replicas[(first + k) % n].clone(), budget).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| self.deadline_passed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(status: u16, code: &str) -> ShardClientError {
        ShardClientError::Rejected {
            addr: "127.0.0.1:1".into(),
            status,
            code: code.into(),
            message: String::new(),
        }
    }

    #[test]
    fn a_replica_without_the_group_is_a_stale_view_not_a_bad_request() {
        let unknown = rejected(404, UNKNOWN_GROUP);
        assert!(!unknown.is_client_error());
        assert!(unknown.is_retryable());

        let bad = rejected(400, "invalid_request");
        assert!(bad.is_client_error());
        assert!(!bad.is_retryable());

        let opening = rejected(503, "group_opening");
        assert!(!opening.is_client_error());
        assert!(opening.is_retryable());
    }
}
