//! Searching every shard group at once with query vectors, and `POST /v1/search`: the
//! catalogue searched with query vectors the caller brings (no user tower).

use std::collections::HashSet;
use std::time::Instant;

use redrec_shard_api::collection::MAX_EF;
use redrec_shard_api::points::{check_vector, Consistency, Hit, SearchRequest};
use redrec_shard_api::ShardClient;

use crate::api::{Coverage, SearchVectorsRequest, SearchVectorsResponse};
use crate::error::RouterError;
use crate::fanout::{client_error, coverage, fan_out};
use crate::merge;
use crate::state::RouterState;

/// Most nodes (objects, arrays, values) a request's filter may have, and how deep it may
/// nest: the shards evaluate it on every candidate.
const FILTER_MAX_NODES: usize = 1_000;
const FILTER_MAX_DEPTH: usize = 32;

/// A request's filter: absent, null, or a Qdrant filter object within the bounds above.
pub fn check_filter(filter: Option<&serde_json::Value>) -> Result<(), RouterError> {
    use serde_json::Value;
    let Some(f) = filter.filter(|f| !f.is_null()) else {
        return Ok(());
    };
    if !f.is_object() {
        return Err(RouterError::bad(
            "invalid_filter",
            "filter must be a JSON object (a Qdrant filter)",
        ));
    }
    let (mut nodes, mut stack) = (0usize, vec![(f, 1usize)]);
    while let Some((v, depth)) = stack.pop() {
        nodes += 1;
        if nodes > FILTER_MAX_NODES || depth > FILTER_MAX_DEPTH {
            return Err(RouterError::bad(
                "filter_too_large",
                format!(
                    "a filter may have at most {FILTER_MAX_NODES} nodes, nested at most \
                     {FILTER_MAX_DEPTH} deep"
                ),
            ));
        }
        match v {
            Value::Object(m) => stack.extend(m.values().map(|c| (c, depth + 1))),
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}

/// How many results each query vector asks for, and how wide the shards search for them.
#[derive(Debug, Clone, Copy)]
pub struct Depth {
    pub k: usize,
    /// HNSW beam width; the collection's default when absent.
    pub ef: Option<usize>,
}

/// A request's `ef`: absent, or 1 to [`MAX_EF`] (a wider beam than that only costs time).
pub fn check_ef(ef: Option<usize>) -> Result<(), RouterError> {
    match ef {
        Some(ef) if ef == 0 || ef > MAX_EF => Err(RouterError::bad(
            "invalid_ef",
            format!("ef must be between 1 and {MAX_EF}, got {ef}"),
        )),
        _ => Ok(()),
    }
}

/// Searches every shard group with `queries` (each group leaving out the ids of
/// `exclude` it may hold); returns, per query, the lists of the groups that answered, and
/// who did.
/// No group answering is a 503; a client error any group reports is a 400.
pub async fn search_groups(
    state: &RouterState,
    queries: Vec<Vec<f32>>,
    depth: Depth,
    filter: Option<serde_json::Value>,
    exclude: &[String],
    consistency: Consistency,
    deadline: Instant,
) -> Result<(Vec<Vec<Vec<Hit>>>, Coverage), RouterError> {
    let cluster = &*state.cluster.get();
    let n = queries.len();
    // Each group leaves out the excluded ids it may hold, not the whole list.
    let excluded = cluster.split_by_group(exclude);
    let outcomes = fan_out(cluster, 0..cluster.groups.len(), deadline, |i, group| {
        let request = SearchRequest {
            queries: queries.clone(),
            k: depth.k,
            filter: filter.clone(),
            exclude: excluded[i].clone(),
            ef: depth.ef,
            consistency,
        };
        async move {
            let call = |c: ShardClient, left| {
                let request = &request;
                async move { c.search(request, left).await }
            };
            match request.consistency {
                Consistency::Strong => group.leader_call(deadline, call).await,
                Consistency::Any => group.read(deadline, call).await,
            }
        }
    })
    .await;
    if let Some(e) = client_error(&outcomes) {
        let message = match e {
            redrec_shard_api::ShardClientError::Rejected { message, .. } => message.clone(),
            other => other.to_string(),
        };
        return Err(RouterError::bad("invalid_request", message));
    }
    let coverage = coverage(cluster.groups.len(), &outcomes);
    metrics::histogram!("redrec_recommend_coverage_ratio")
        .record(coverage.answered as f64 / coverage.shards.max(1) as f64);
    if coverage.answered == 0 {
        return Err(RouterError::ShardsUnavailable(format!(
            "no shard answered: {}",
            coverage.failed.join("; ")
        )));
    }
    let mut per_query: Vec<Vec<Vec<Hit>>> = vec![Vec::new(); n];
    // A group working from a newer map than this router's may hold an excluded item
    // this router did not send it: leave it out here too.
    let excluded: HashSet<&str> = exclude.iter().map(String::as_str).collect();
    for (_, r) in outcomes {
        if let Ok(resp) = r {
            for (q, mut hits) in resp.results.into_iter().enumerate().take(n) {
                hits.retain(|h| !excluded.contains(h.id.as_str()));
                per_query[q].push(hits);
            }
        }
    }
    Ok((per_query, coverage))
}

/// `POST /v1/search`: the catalogue searched with query vectors the caller brings (no
/// user tower), an item scoring the max over them.
pub async fn search(
    state: &RouterState,
    req: SearchVectorsRequest,
) -> Result<SearchVectorsResponse, RouterError> {
    let started = Instant::now();
    let dim = state.encoder.manifest().dim;
    if req.vectors.is_empty() || req.vectors.len() > 16 {
        return Err(RouterError::bad(
            "invalid_vectors",
            format!("send 1 to 16 query vectors, got {}", req.vectors.len()),
        ));
    }
    for (i, v) in req.vectors.iter().enumerate() {
        check_vector(v, dim)
            .map_err(|e| RouterError::bad("invalid_vectors", format!("vectors[{i}]: {e}")))?;
    }
    if req.k == 0 || req.k > state.cfg.max_k {
        return Err(RouterError::bad(
            "invalid_k",
            format!("k must be between 1 and {}, got {}", state.cfg.max_k, req.k),
        ));
    }
    if req.exclude.len() > state.cfg.max_items_per_request {
        return Err(RouterError::bad(
            "invalid_exclude",
            format!("at most {} ids in exclude", state.cfg.max_items_per_request),
        ));
    }
    check_filter(req.filter.as_ref())?;
    check_ef(req.ef)?;
    let exclude = req.exclude;
    let n = req.vectors.len();
    let (per_query, coverage) = search_groups(
        state,
        req.vectors,
        Depth {
            k: req.k,
            ef: req.ef,
        },
        req.filter,
        &exclude,
        req.consistency,
        started + state.cfg.deadline,
    )
    .await?;
    let lists = per_query
        .into_iter()
        .take(n)
        .flat_map(|lists| lists.into_iter().map(|l| (1.0, l)));
    Ok(SearchVectorsResponse {
        items: merge::max_over_queries(lists, req.k),
        coverage,
        took_ms: started.elapsed().as_millis() as u64,
    })
}
