//! Calling many shard groups at once under one deadline, and accounting for who answered.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use redrec_shard_api::ShardClientError;

use crate::api::Coverage;
use crate::cluster::{Cluster, Group};

pub type Outcome<T> = (usize, Result<T, ShardClientError>);

/// Calls `call` on each listed group concurrently; one still running at `deadline`
/// fails as unavailable instead of holding the answer back.
pub async fn fan_out<T, F, Fut>(
    cluster: &Cluster,
    groups: impl IntoIterator<Item = usize>,
    deadline: Instant,
    call: F,
) -> Vec<Outcome<T>>
where
    F: Fn(usize, Arc<Group>) -> Fut,
    Fut: Future<Output = Result<T, ShardClientError>>,
{
    let calls = groups.into_iter().map(|i| {
        let group = cluster.groups[i].clone();
        let fut = call(i, group);
        async move {
            let r = match tokio::time::timeout_at(deadline.into(), fut).await {
                Ok(r) => r,
                Err(_) => Err(ShardClientError::Unavailable {
                    addr: format!("group {i}"),
                    message: "no answer before the deadline".into(),
                }),
            };
            (i, r)
        }
    });
    let outcomes = join_all(calls).await;
    for (i, r) in &outcomes {
        if let Err(e) = r {
            metrics::counter!("redrec_shard_errors_total", "shard" => i.to_string()).increment(1);
            tracing::debug!(shard = i, "shard call failed: {e}");
        }
    }
    outcomes
}

/// Who answered among `outcomes`, out of `shards`.
pub fn coverage<T>(shards: usize, outcomes: &[Outcome<T>]) -> Coverage {
    Coverage {
        shards,
        answered: outcomes.iter().filter(|(_, r)| r.is_ok()).count(),
        failed: outcomes
            .iter()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("shard {i}: {e}")))
            .collect(),
    }
}

/// The first client error (bad filter, bad vector): every shard would say the same, so it
/// is the caller's mistake, not a partial answer.
pub fn client_error<T>(outcomes: &[Outcome<T>]) -> Option<&ShardClientError> {
    outcomes
        .iter()
        .find_map(|(_, r)| r.as_ref().err().filter(|e| e.is_client_error()))
}
