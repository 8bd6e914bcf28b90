//! Searching groups that share their nodes in one call per node (`--batch-groups`): with
//! R nodes each hosting a replica of every group, a query costs one request instead of
//! one per group, and the node searches its replicas side by side. The call is a read of
//! the co-hosted set (its "replicas" are the nodes), so it picks the node with the fewest
//! requests in flight, fails over and hedges as one group's read does. A group the chosen
//! node could not search, or a set whose call failed, is searched group by group.

use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use redrec_shard_api::points::{GroupsSearch, SearchRequest, SearchResponse};
use redrec_shard_api::{ShardClient, ShardClientError};
use tracing::Instrument;

use crate::cluster::{Cluster, Group};
use crate::fanout::{fan_out, Outcome};

/// One group's search (its own `exclude` in `request`), on its leader for strong reads.
pub async fn search_group(
    group: Arc<Group>,
    request: SearchRequest,
    deadline: Instant,
) -> Result<SearchResponse, ShardClientError> {
    let span = tracing::info_span!(target: "redrec::trace", "group search", group = group.index);
    async move {
        let call = |c: ShardClient, left| {
            let request = &request;
            async move { c.search(request, left).await }
        };
        match request.consistency {
            redrec_shard_api::points::Consistency::Strong => {
                group.leader_call(deadline, call).await
            }
            redrec_shard_api::points::Consistency::Any => group.read(deadline, call).await,
        }
    }
    .instrument(span)
    .await
}

/// Every group's search: co-hosted sets in one call each, the other groups (and any the
/// set's call left unanswered) one by one. `request` carries the queries and settings,
/// `excluded[i]` group i's ids to leave out.
pub async fn search_all(
    cluster: &Cluster,
    request: &SearchRequest,
    excluded: &[Vec<String>],
    deadline: Instant,
) -> Vec<Outcome<SearchResponse>> {
    let in_sets: Vec<usize> = cluster
        .co_hosted
        .iter()
        .flat_map(|s| s.groups.iter().copied())
        .collect();
    let sets = join_all(cluster.co_hosted.iter().map(|set| {
        let batch = GroupsSearch {
            groups: set.ids.clone(),
            exclude: set.groups.iter().map(|&i| excluded[i].clone()).collect(),
            search: request.clone(),
        };
        let span =
            tracing::info_span!(target: "redrec::trace", "groups search", groups = ?set.groups);
        async move {
            let found = set
                .nodes
                .read(deadline, |c, left| {
                    let batch = &batch;
                    async move { c.search_groups(batch, left).await }
                })
                .await;
            (set.clone(), found)
        }
        .instrument(span)
    }))
    .await;
    let mut outcomes = Vec::with_capacity(cluster.groups.len());
    let mut again: Vec<usize> = (0..cluster.groups.len())
        .filter(|i| !in_sets.contains(i))
        .collect();
    for (set, found) in sets {
        match found {
            Ok(found) if found.groups.len() == set.groups.len() => {
                for (&i, g) in set.groups.iter().zip(found.groups) {
                    match (g.lists, g.error) {
                        (Some(lists), _) => outcomes.push((i, Ok(lists.into()))),
                        // The caller's mistake is every group's: no point asking again.
                        (None, Some((status, code, message))) if (400..500).contains(&status) => {
                            outcomes.push((
                                i,
                                Err(ShardClientError::Rejected {
                                    addr: format!("group {i}"),
                                    status,
                                    code,
                                    message,
                                }),
                            ))
                        }
                        _ => again.push(i),
                    }
                }
            }
            Ok(_) => again.extend(&set.groups),
            Err(e) if e.is_client_error() => {
                outcomes.extend(set.groups.iter().map(|&i| (i, Err(e.clone()))))
            }
            Err(e) => {
                tracing::debug!(groups = ?set.groups, "batched search failed, searching group by group: {e}");
                again.extend(&set.groups);
            }
        }
    }
    if !again.is_empty() {
        let one_by_one = fan_out(cluster, again, deadline, |i, group| {
            let mut r = request.clone();
            r.exclude = excluded[i].clone();
            search_group(group, r, deadline)
        })
        .await;
        outcomes.extend(one_by_one);
    }
    outcomes.sort_by_key(|(i, _)| *i);
    outcomes
}
