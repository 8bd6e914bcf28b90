//! One shard group as its callers see it: a lone shard, or the replicas of a Raft group.
//! Writes find the leader (following `not_leader` hints, backing off while there is
//! none); reads go to the group's own replica when it has caught up, failing over to the
//! next.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::client::{ShardClient, ShardClientError};

/// Longest one attempt of a write may take before the next replica is tried.
const WRITE_ATTEMPT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// One shard group: a lone shard, or the replicas of a Raft group.
pub struct Group {
    pub index: usize,
    pub replicas: Vec<ShardClient>,
    /// The replica that last accepted a write.
    leader: AtomicUsize,
}

impl Group {
    pub fn new(index: usize, replicas: Vec<ShardClient>) -> Self {
        Self {
            index,
            replicas,
            leader: AtomicUsize::new(0),
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
    ///
    /// Reads start at the group's own replica, its index modulo the replicas: groups
    /// spread over the nodes, and each node's copy of a group stays hot in memory for
    /// that group's reads instead of every node paging in every group.
    pub async fn read<T, F, Fut>(&self, deadline: Instant, call: F) -> Result<T, ShardClientError>
    where
        F: Fn(ShardClient, Duration) -> Fut,
        Fut: Future<Output = Result<T, ShardClientError>>,
    {
        let n = self.replicas.len();
        let first = self.index;
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
