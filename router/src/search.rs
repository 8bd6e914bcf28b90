//! Searching every shard group at once with query vectors, and `POST /v1/search`: the
//! catalogue searched with query vectors the caller brings (no user tower).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

use redrec_shard_api::collection::MAX_EF;
use redrec_shard_api::points::{check_vector, Consistency, Hit, SearchRequest, StoredPoint};

use crate::api::{Coverage, Recommendation, SearchVectorsRequest, SearchVectorsResponse};
use crate::batched;
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

/// Lists received beyond this many times `k` hits: the groups send ids and scores only,
/// and the payloads of the final top-k are fetched after the merge (one more call to each
/// group holding a winner). Below it, payloads come with the hits.
const INLINE_PAYLOADS_UP_TO: usize = 8;

/// What every group found: per query, the lists of the groups that answered; who did; and
/// whether the hits came with their payloads.
pub struct Found {
    pub per_query: Vec<Vec<Vec<Hit>>>,
    pub coverage: Coverage,
    with_payload: bool,
}

/// Results per group for a top-`k` over `groups` groups: `k` (an exact merge), or with
/// `loss` the smallest k\' such that a group holds more than k\' of the true top-k with
/// probability at most `loss`, items being spread over the groups uniformly by hash
/// (Vespa's top-k probability): Binomial(k, 1/groups) > k\'.
pub fn group_k(k: usize, groups: usize, loss: Option<f64>) -> usize {
    let Some(loss) = loss.filter(|_| groups > 1) else {
        return k;
    };
    let p = 1.0 / groups as f64;
    // P(X = i) for X ~ Binomial(k, p), accumulated until the tail is within `loss`.
    let mut pmf = (1.0 - p).powi(k as i32);
    let mut cdf = pmf;
    for i in 0..k {
        if 1.0 - cdf <= loss {
            return i.max(1);
        }
        pmf *= (k - i) as f64 / (i + 1) as f64 * p / (1.0 - p);
        cdf += pmf;
    }
    k
}

/// Searches every shard group with `queries` (each group leaving out the ids of
/// `exclude` it may hold).
/// No group answering is a 503; a client error any group reports is a 400.
pub async fn search_groups(
    state: &RouterState,
    queries: Vec<Vec<f32>>,
    depth: Depth,
    filter: Option<serde_json::Value>,
    exclude: &[String],
    consistency: Consistency,
    deadline: Instant,
) -> Result<Found, RouterError> {
    if let Some(q) = &state.qdrant {
        let request = SearchRequest {
            queries,
            k: depth.k,
            filter,
            exclude: exclude.to_vec(),
            ef: depth.ef,
            consistency,
            with_payload: true,
        };
        let (per_query, coverage) = q.search(&request, deadline).await?;
        record_coverage(&coverage);
        return Ok(Found {
            per_query,
            coverage,
            with_payload: true,
        });
    }
    let cluster = &*state.cluster.get();
    let n = queries.len();
    let g = cluster.groups.len();
    let per_group = group_k(depth.k, g, state.cfg.group_k_loss);
    let with_payload = g * n * per_group <= INLINE_PAYLOADS_UP_TO * depth.k;
    // Each group leaves out the excluded ids it may hold, not the whole list.
    let excluded = cluster.split_by_group(exclude);
    let request = SearchRequest {
        queries,
        k: per_group,
        filter,
        exclude: Vec::new(),
        ef: depth.ef,
        consistency,
        with_payload,
    };
    let outcomes = if state.cfg.batch_groups && consistency == Consistency::Any {
        batched::search_all(cluster, &request, &excluded, deadline).await
    } else {
        fan_out(cluster, 0..g, deadline, |i, group| {
            let mut r = request.clone();
            r.exclude = excluded[i].clone();
            batched::search_group(group, r, deadline)
        })
        .await
    };
    if let Some(e) = client_error(&outcomes) {
        let message = match e {
            redrec_shard_api::ShardClientError::Rejected { message, .. } => message.clone(),
            other => other.to_string(),
        };
        return Err(RouterError::bad("invalid_request", message));
    }
    let coverage = coverage(g, &outcomes);
    record_coverage(&coverage);
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
    Ok(Found {
        per_query,
        coverage,
        with_payload,
    })
}

fn record_coverage(c: &Coverage) {
    metrics::histogram!("redrec_recommend_coverage_ratio")
        .record(c.answered as f64 / c.shards.max(1) as f64);
}

impl Found {
    /// Fills in the payloads of `items` (merged from these lists) when the hits came
    /// without them: one read of each group owning a winner. A group that cannot answer
    /// leaves its items without payloads, said in `coverage.failed`.
    pub async fn fill_payloads<'a>(
        &mut self,
        state: &RouterState,
        items: impl IntoIterator<Item = &'a mut Recommendation>,
        deadline: Instant,
    ) {
        if self.with_payload {
            return;
        }
        let items: Vec<&'a mut Recommendation> = items.into_iter().collect();
        let ids = items.iter().map(|r| r.id.clone()).collect();
        let (found, failed) = fetch_points(state, ids, false, deadline).await;
        // An item may be in several lists (per-query merges): each copy gets its payload.
        for item in items {
            if let Some(p) = found.get(&item.id) {
                item.payload = p.payload.clone();
            }
        }
        self.coverage.failed.extend(
            failed
                .into_iter()
                .map(|(g, e)| format!("payloads from shard {g}: {e}")),
        );
    }
}

/// Points `ids` (with vectors or not), each read from the group owning its slot; with the
/// groups that could not answer, and why.
async fn fetch_points(
    state: &RouterState,
    ids: BTreeSet<String>,
    with_vector: bool,
    deadline: Instant,
) -> (HashMap<String, StoredPoint>, BTreeMap<usize, String>) {
    if let Some(q) = &state.qdrant {
        return q
            .fetch(ids.into_iter().collect(), with_vector, deadline)
            .await;
    }
    let cluster = &*state.cluster.get();
    let wanted = cluster.by_shard(ids, |id| id);
    let outcomes = fan_out(cluster, wanted.keys().copied(), deadline, |i, group| {
        let ids: Vec<String> = wanted[&i].clone();
        async move {
            group
                .read(deadline, |c, left| {
                    let ids = ids.clone();
                    async move { c.get(ids, with_vector, left).await }
                })
                .await
        }
    })
    .await;
    let (mut points, mut failed) = (HashMap::new(), BTreeMap::new());
    for (group, r) in outcomes {
        match r {
            Ok(found) => points.extend(found.into_iter().map(|p| (p.id.clone(), p))),
            Err(e) => {
                failed.insert(group, e.to_string());
            }
        }
    }
    (points, failed)
}

/// The vectors of items `ids`, read from the groups that own them; with the groups that
/// could not answer (their items are missing from the map).
pub async fn item_vectors(
    state: &RouterState,
    ids: BTreeSet<String>,
    deadline: Instant,
) -> (HashMap<String, Vec<f32>>, BTreeSet<usize>) {
    let (points, failed) = fetch_points(state, ids, true, deadline).await;
    let vectors = points
        .into_iter()
        .filter_map(|(id, p)| Some((id, p.vector?)))
        .collect();
    (vectors, failed.into_keys().collect())
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
    let deadline = started + state.cfg.deadline;
    let mut found = search_groups(
        state,
        req.vectors,
        Depth {
            k: req.k,
            ef: req.ef,
        },
        req.filter,
        &exclude,
        req.consistency,
        deadline,
    )
    .await?;
    let lists = std::mem::take(&mut found.per_query)
        .into_iter()
        .take(n)
        .flat_map(|lists| lists.into_iter().map(|l| (1.0, l)));
    let mut items = merge::max_over_queries(lists, req.k);
    found.fill_payloads(state, &mut items, deadline).await;
    Ok(SearchVectorsResponse {
        items,
        coverage: found.coverage,
        took_ms: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::group_k;

    #[test]
    fn group_k_is_k_unless_a_loss_is_allowed() {
        assert_eq!(group_k(10, 32, None), 10);
        assert_eq!(group_k(10, 1, Some(0.01)), 10);
        // Binomial(10, 1/32): P(X > 2) = 0.0031, P(X > 3) = 0.00017.
        assert_eq!(group_k(10, 32, Some(0.01)), 2);
        assert_eq!(group_k(10, 32, Some(0.001)), 3);
        // Two groups: nearly every top-10 is split unevenly; k' stays near k.
        assert!(group_k(10, 2, Some(0.001)) >= 9);
        assert_eq!(group_k(100, 32, Some(0.0)), 100);
    }
}
