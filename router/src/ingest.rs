//! Writes and point reads: item text through the item tower, or vectors as given,
//! upserted on the shard that owns each item's slot.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use redrec_shard_api::codes::MEMORY_BUDGET;
use redrec_shard_api::points::ID_KEY;
use redrec_shard_api::points::{check_vector, Point};
use redrec_shard_api::{ShardClient, ShardClientError};

use crate::api::{
    DeleteResponse, IngestResponse, IngestTextsRequest, IngestVectorsRequest, ItemResponse, Payload,
};
use crate::error::RouterError;
use crate::fanout::fan_out;
use crate::state::RouterState;

const MAX_ID_BYTES: usize = 512;

fn check_batch<'a>(
    state: &RouterState,
    items: impl ExactSizeIterator<Item = (&'a str, &'a Payload)>,
) -> Result<(), RouterError> {
    let n = items.len();
    check_batch_len(state, n, "items")?;
    let mut ids = HashSet::with_capacity(n);
    for (i, (id, payload)) in items.enumerate() {
        check_id(id).map_err(|m| RouterError::bad("invalid_id", format!("items[{i}]: {m}")))?;
        if !ids.insert(id) {
            return Err(RouterError::bad(
                "duplicate_id",
                format!("items[{i}]: id {id:?} appears twice in the batch"),
            ));
        }
        if payload.contains_key(ID_KEY) {
            return Err(RouterError::bad(
                "reserved_payload_key",
                format!("items[{i}]: payload key {ID_KEY:?} is reserved"),
            ));
        }
    }
    Ok(())
}

/// A batch of `n` `what` (items, events): not empty, within `--max-items`.
pub fn check_batch_len(state: &RouterState, n: usize, what: &str) -> Result<(), RouterError> {
    if n == 0 {
        return Err(RouterError::bad("empty_batch", format!("{what} is empty")));
    }
    if n > state.cfg.max_items_per_request {
        return Err(RouterError::TooLarge(format!(
            "{n} {what} in one request; at most {} (split the batch)",
            state.cfg.max_items_per_request
        )));
    }
    Ok(())
}

pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("id is empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!("id is longer than {MAX_ID_BYTES} bytes"));
    }
    Ok(())
}

/// Upserts on every owning shard; succeeds only when every shard confirmed its part.
pub async fn upsert(state: &RouterState, points: Vec<Point>) -> Result<usize, RouterError> {
    let n = points.len();
    if let Some(q) = &state.qdrant {
        q.items.upsert(points, state.cfg.write_timeout).await?;
        metrics::counter!("redrec_items_upserted_total").increment(n as u64);
        return Ok(n);
    }
    write_by_slot(
        state,
        points,
        |p| p.id.as_str(),
        "items",
        |c, part, left| async move { c.upsert(part, left).await },
    )
    .await?;
    metrics::counter!("redrec_items_upserted_total").increment(n as u64);
    Ok(n)
}

/// Writes `values` on the groups owning their keys' slots, each group's share at once on
/// its leader through `call`; succeeds only when every group confirmed its part, and
/// returns what they report, added up. Values whose slot is moving, or that reached a
/// group no longer owning them (a stale map), are sent again where the refreshed map
/// says, until the write deadline. `what` names the values in errors.
pub async fn write_by_slot<T, F, Fut>(
    state: &RouterState,
    values: Vec<T>,
    key: fn(&T) -> &str,
    what: &str,
    call: F,
) -> Result<usize, RouterError>
where
    T: Clone,
    F: Fn(ShardClient, Vec<T>, Duration) -> Fut,
    Fut: Future<Output = Result<usize, ShardClientError>>,
{
    let deadline = Instant::now() + state.cfg.write_timeout;
    let mut pending = values;
    let mut backoff = Duration::from_millis(10);
    let mut written = 0;
    loop {
        let cluster = state.cluster.get();
        let groups = cluster.by_shard(pending, key);
        let outcomes = fan_out(&cluster, groups.keys().copied(), deadline, |i, group| {
            let (part, call) = (groups[&i].clone(), &call);
            async move {
                group
                    .leader_call(deadline, |c, left| call(c, part.clone(), left))
                    .await
            }
        })
        .await;
        let mut failed = Vec::new();
        let mut again = Vec::new();
        for (i, r) in outcomes {
            match r {
                Ok(n) => written += n,
                Err(e) if e.wrong_slot().is_some() => again.extend(groups[&i].iter().cloned()),
                Err(e) if e.is_client_error() => return Err(e.into()),
                Err(ShardClientError::Rejected { code, message, .. }) if code == MEMORY_BUDGET => {
                    return Err(RouterError::OverBudget(format!(
                        "shard {i}: {message}; the other shards' {what} may have been written"
                    )))
                }
                Err(e) => failed.push(format!("shard {i}: {e}")),
            }
        }
        if !failed.is_empty() {
            return Err(RouterError::ShardsUnavailable(format!(
                "the write was not confirmed by every shard ({}); some {what} may have been written, retrying is safe",
                failed.join("; ")
            )));
        }
        if again.is_empty() {
            return Ok(written);
        }
        if Instant::now() + backoff >= deadline {
            return Err(RouterError::ShardsUnavailable(format!(
                "some {what}' slots kept moving past the write deadline; retrying is safe"
            )));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
        state.cluster.refresh().await;
        pending = again;
    }
}

pub async fn ingest_texts(
    state: &RouterState,
    req: IngestTextsRequest,
) -> Result<IngestResponse, RouterError> {
    let started = Instant::now();
    check_batch(state, req.items.iter().map(|i| (i.id.as_str(), &i.payload)))?;
    if let Some((i, _)) = req
        .items
        .iter()
        .enumerate()
        .find(|(_, it)| it.text.trim().is_empty())
    {
        return Err(RouterError::bad(
            "empty_text",
            format!("items[{i}].text is empty"),
        ));
    }
    let texts = req.items.iter().map(|i| i.text.clone()).collect();
    let vectors = state
        .encoder
        .encode_items(texts, Some(started + state.cfg.write_timeout))
        .await?;
    let points = req
        .items
        .into_iter()
        .zip(vectors)
        .map(|(item, vector)| Point {
            id: item.id,
            vector,
            payload: item.payload,
        })
        .collect();
    let upserted = upsert(state, points).await?;
    Ok(IngestResponse {
        upserted,
        took_ms: started.elapsed().as_millis() as u64,
    })
}

pub async fn ingest_vectors(
    state: &RouterState,
    req: IngestVectorsRequest,
) -> Result<IngestResponse, RouterError> {
    let started = Instant::now();
    check_batch(state, req.items.iter().map(|i| (i.id.as_str(), &i.payload)))?;
    let dim = state.encoder.manifest().dim;
    for (i, item) in req.items.iter().enumerate() {
        check_vector(&item.vector, dim)
            .map_err(|e| RouterError::bad("invalid_vector", format!("items[{i}]: {e}")))?;
    }
    let points = req
        .items
        .into_iter()
        .map(|i| Point {
            id: i.id,
            vector: i.vector,
            payload: i.payload,
        })
        .collect();
    let upserted = upsert(state, points).await?;
    Ok(IngestResponse {
        upserted,
        took_ms: started.elapsed().as_millis() as u64,
    })
}

pub async fn get_item(state: &RouterState, id: String) -> Result<ItemResponse, RouterError> {
    check_id(&id).map_err(|m| RouterError::bad("invalid_id", m))?;
    let ids = vec![id.clone()];
    let (point, shard) = match &state.qdrant {
        Some(q) => (q.items.get(ids, true, state.cfg.deadline).await?.pop(), 0),
        None => {
            let cluster = state.cluster.get();
            let group = cluster.group_of(&id);
            let deadline = Instant::now() + state.cfg.deadline;
            let point = group
                .read(deadline, |c, left| {
                    let ids = ids.clone();
                    async move { c.get(ids, true, left).await }
                })
                .await?
                .pop();
            (point, group.index)
        }
    };
    match point {
        Some(p) => Ok(ItemResponse {
            id: p.id,
            vector: p.vector.unwrap_or_default(),
            payload: p.payload,
            shard,
        }),
        None => Err(RouterError::NotFound(format!("no item {id:?}"))),
    }
}

pub async fn delete_item(state: &RouterState, id: String) -> Result<DeleteResponse, RouterError> {
    check_id(&id).map_err(|m| RouterError::bad("invalid_id", m))?;
    let deleted = match &state.qdrant {
        Some(q) => {
            q.items
                .delete(vec![id.clone()], state.cfg.write_timeout)
                .await?
        }
        None => delete_on_group(state, &id).await?,
    };
    if deleted == 0 {
        return Err(RouterError::NotFound(format!("no item {id:?}")));
    }
    Ok(DeleteResponse { id, deleted: true })
}

/// Deletes `id` on the group owning its slot, following the slot if it moves.
async fn delete_on_group(state: &RouterState, id: &str) -> Result<usize, RouterError> {
    let deadline = Instant::now() + state.cfg.write_timeout;
    let mut backoff = Duration::from_millis(10);
    loop {
        let r = state
            .cluster
            .get()
            .group_of(id)
            .leader_call(deadline, |c, left| {
                let ids = vec![id.to_string()];
                async move { c.delete(ids, left).await }
            })
            .await;
        match r {
            Err(e) if e.wrong_slot().is_some() && Instant::now() + backoff < deadline => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
                state.cluster.refresh().await;
            }
            r => return Ok(r?),
        }
    }
}
