//! The vector store behind a shard: a small trait, and its implementation on Qdrant's
//! embedded engine (`qdrant-edge`), so that the engine's version can move.
//!
//! qdrant-edge never replays its own WAL on reopen, so every write is flushed before it
//! returns: a write this store acknowledged survives a crash.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use qdrant_edge::{
    Distance, EdgeConfigBuilder, EdgeShard, EdgeVectorParamsBuilder, Filter, NamedQuery, PointId,
    PointInsertOperations, PointOperations, PointStructPersisted, QueryEnum, ScrollRequest,
    SearchParams, SearchRequest as EdgeSearch, UpdateOperation, VectorInternal,
    VectorStructInternal, VectorStructPersisted, WithPayloadInterface, WithVector,
};
use serde_json::{json, Value};
use uuid::Uuid;

use redrec_shard_api::points::{
    point_uuid, Hit, Page, Payload, Point, SearchRequest, Stats, StoredPoint, ID_KEY,
};

/// Payload key holding the caller's item id (Qdrant point ids are UUIDs derived from it).
const DEFAULT_EF: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    BadRequest(String),
    #[error("storage engine: {0}")]
    Engine(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

pub trait VectorStore: Send + Sync + 'static {
    fn dim(&self) -> usize;
    /// Inserts or replaces points; durable when it returns.
    fn upsert(&self, points: Vec<Point>) -> StoreResult<usize>;
    /// Deletes points by item id; durable when it returns. Returns how many existed.
    fn delete(&self, ids: &[String]) -> StoreResult<usize>;
    /// Found points in request order; unknown ids are left out.
    fn get(&self, ids: &[String], with_vector: bool) -> StoreResult<Vec<StoredPoint>>;
    /// One top-k list per query vector.
    fn search(&self, request: &SearchRequest) -> StoreResult<Vec<Vec<Hit>>>;
    fn stats(&self) -> StoreResult<Stats>;
    /// A page of up to `limit` points (with vectors) in storage order, starting at `cursor`
    /// (from the previous page; `None` for the first), and the cursor of the next page.
    fn scroll(&self, cursor: Option<&str>, limit: usize) -> StoreResult<Page>;

    /// Deletes every point; durable when it returns. Returns how many there were.
    fn clear(&self) -> StoreResult<usize> {
        let mut deleted = 0;
        loop {
            let page = self.scroll(None, 1024)?;
            if page.points.is_empty() {
                return Ok(deleted);
            }
            let ids: Vec<String> = page.points.into_iter().map(|p| p.id).collect();
            deleted += self.delete(&ids)?;
        }
    }
}

/// How many points a store holds and a checksum over their ids and vectors, to compare
/// replicas. Streamed page by page in scroll order, which is point-id order: the same on
/// every store holding the same items, so nothing needs holding or sorting.
pub fn digest(store: &dyn VectorStore) -> StoreResult<(usize, String)> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut points = 0;
    let mut cursor = None;
    loop {
        let page = store.scroll(cursor.as_deref(), 4096)?;
        points += page.points.len();
        for p in &page.points {
            hasher.update(&(p.id.len() as u64).to_le_bytes());
            hasher.update(p.id.as_bytes());
            for x in p.vector.iter().flatten() {
                hasher.update(&x.to_bits().to_le_bytes());
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok((points, format!("{:032x}", hasher.digest128()))),
        }
    }
}

/// Deterministic Qdrant point id of an item id.
pub fn point_id(item_id: &str) -> PointId {
    PointId::Uuid(point_uuid(item_id))
}

/// See [`redrec_shard_api::points::check_vector`]: the same rule as the router's.
pub fn check_vector(vector: &[f32], dim: usize) -> StoreResult<()> {
    redrec_shard_api::points::check_vector(vector, dim).map_err(StoreError::BadRequest)
}

/// What every store refuses in an upsert, decided from the points alone (so replicas of a
/// group all decide alike): an empty id, or a vector breaking the vector rule.
pub fn check_points(points: &[Point], dim: usize) -> StoreResult<()> {
    for (i, p) in points.iter().enumerate() {
        if p.id.is_empty() {
            return Err(StoreError::BadRequest(format!(
                "points[{i}]: item id is empty"
            )));
        }
        check_vector(&p.vector, dim)
            .map_err(|e| StoreError::BadRequest(format!("points[{i}]: {e}")))?;
    }
    Ok(())
}

fn engine<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// Splits the caller's id back out of a stored payload.
fn split_payload(payload: Option<qdrant_edge::Payload>) -> (String, Payload) {
    let mut map = payload.map(|p| p.0).unwrap_or_default();
    let id = match map.remove(ID_KEY) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    (id, map)
}

fn dense(vector: Option<VectorStructInternal>) -> Option<Vec<f32>> {
    match vector? {
        VectorStructInternal::Single(v) => Some(v),
        VectorStructInternal::Named(mut named) => match named.remove("") {
            Some(VectorInternal::Dense(v)) => Some(v),
            _ => None,
        },
        VectorStructInternal::MultiDense(_) => None,
    }
}

/// Writes since the last index build, and when the last one happened.
struct WriteLog {
    unindexed: AtomicU64,
    last_write: Mutex<Instant>,
}

pub struct EdgeStore {
    shard: Arc<EdgeShard>,
    dim: usize,
    /// Serialises update, flush and optimize: qdrant-edge's flush panics if it finds the
    /// WAL locked, and one writer at a time is also what keeps flush-per-write cheap.
    write_lock: Arc<Mutex<()>>,
    writes: Arc<WriteLog>,
    /// Dropping the sender stops the indexer, which holds the engine open.
    indexer: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl EdgeStore {
    /// Opens the shard at `path`, creating it (Dot distance over `dim`-d vectors) if absent.
    pub fn open(path: &Path, dim: usize) -> StoreResult<Self> {
        let shard = if path.join("edge_config.json").exists() {
            let shard = EdgeShard::load(path, None).map_err(engine)?;
            let stored = shard.config().vectors.get("").map(|v| v.size);
            if stored != Some(dim) {
                return Err(StoreError::BadRequest(format!(
                    "shard at {} holds {stored:?}-d vectors, asked for {dim}",
                    path.display()
                )));
            }
            shard
        } else {
            std::fs::create_dir_all(path).map_err(engine)?;
            let config = EdgeConfigBuilder::new()
                .vector("", EdgeVectorParamsBuilder::new(dim, Distance::Dot).build())
                .build();
            EdgeShard::new(path, config).map_err(engine)?
        };
        let mut store = Self {
            shard: Arc::new(shard),
            dim,
            write_lock: Arc::new(Mutex::new(())),
            writes: Arc::new(WriteLog {
                unindexed: AtomicU64::new(0),
                last_write: Mutex::new(Instant::now()),
            }),
            indexer: None,
        };
        store.indexer = Some(store.spawn_indexer()?);
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wrote(&self, n: usize) {
        self.writes.unindexed.fetch_add(n as u64, Ordering::Relaxed);
        *self
            .writes
            .last_write
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// qdrant-edge runs nothing in the background: build indexes once writes go quiet
    /// for a moment, so bulk loads are not slowed by repeated index builds.
    fn spawn_indexer(&self) -> StoreResult<(mpsc::Sender<()>, JoinHandle<()>)> {
        let (shard, lock, writes) = (
            self.shard.clone(),
            self.write_lock.clone(),
            self.writes.clone(),
        );
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("shard-indexer".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_millis(250))
                {
                    let quiet = writes
                        .last_write
                        .lock()
                        .map(|t| t.elapsed() > Duration::from_secs(2))
                        .unwrap_or(true);
                    if writes.unindexed.load(Ordering::Relaxed) == 0 || !quiet {
                        continue;
                    }
                    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
                    writes.unindexed.store(0, Ordering::Relaxed);
                    let started = Instant::now();
                    match shard.optimize() {
                        Ok(changed) => {
                            shard.flush();
                            if changed {
                                tracing::info!(
                                    took_ms = started.elapsed().as_millis() as u64,
                                    "shard optimized"
                                );
                            }
                        }
                        Err(e) => tracing::warn!("optimize failed: {e}"),
                    }
                }
            })
            .map_err(engine)?;
        Ok((stop, handle))
    }

    fn filter(&self, user: Option<&Value>, exclude: &[String]) -> StoreResult<Option<Filter>> {
        let mut must = Vec::new();
        if let Some(f) = user.filter(|f| !f.is_null()) {
            must.push(f.clone());
        }
        let mut filter = json!({ "must": must });
        if !exclude.is_empty() {
            let ids: Vec<_> = exclude.iter().map(|id| json!(point_id(id))).collect();
            filter["must_not"] = json!([{ "has_id": ids }]);
        } else if must.is_empty() {
            return Ok(None);
        }
        serde_json::from_value(filter)
            .map(Some)
            .map_err(|e| StoreError::BadRequest(format!("invalid filter: {e}")))
    }
}

impl Drop for EdgeStore {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.indexer.take() {
            drop(stop);
            let _ = handle.join();
        }
    }
}

impl VectorStore for EdgeStore {
    fn dim(&self) -> usize {
        self.dim
    }

    fn upsert(&self, points: Vec<Point>) -> StoreResult<usize> {
        check_points(&points, self.dim)?;
        let n = points.len();
        if n == 0 {
            return Ok(0);
        }
        let points = points
            .into_iter()
            .map(|p| {
                let mut payload = p.payload;
                payload.insert(ID_KEY.into(), Value::String(p.id.clone()));
                PointStructPersisted {
                    id: point_id(&p.id),
                    vector: VectorStructPersisted::Single(p.vector),
                    payload: Some(qdrant_edge::Payload(payload)),
                }
            })
            .collect();
        let _guard = self.lock();
        self.shard
            .update(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
            ))
            .map_err(engine)?;
        self.shard.flush();
        self.wrote(n);
        Ok(n)
    }

    fn delete(&self, ids: &[String]) -> StoreResult<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let pids: Vec<PointId> = ids.iter().map(|id| point_id(id)).collect();
        let _guard = self.lock();
        let existing = self
            .shard
            .retrieve(&pids, Some(WithPayloadInterface::Bool(false)), None)
            .map_err(engine)?
            .len();
        self.shard
            .update(UpdateOperation::PointOperation(
                PointOperations::DeletePoints { ids: pids },
            ))
            .map_err(engine)?;
        self.shard.flush();
        self.wrote(existing);
        Ok(existing)
    }

    fn get(&self, ids: &[String], with_vector: bool) -> StoreResult<Vec<StoredPoint>> {
        let pids: Vec<PointId> = ids.iter().map(|id| point_id(id)).collect();
        let records = self
            .shard
            .retrieve(
                &pids,
                Some(WithPayloadInterface::Bool(true)),
                Some(WithVector::Bool(with_vector)),
            )
            .map_err(engine)?;
        Ok(records
            .into_iter()
            .map(|r| {
                let (id, payload) = split_payload(r.payload);
                StoredPoint {
                    id,
                    vector: if with_vector { dense(r.vector) } else { None },
                    payload,
                }
            })
            .collect())
    }

    fn search(&self, request: &SearchRequest) -> StoreResult<Vec<Vec<Hit>>> {
        for q in &request.queries {
            check_vector(q, self.dim)?;
        }
        if request.k == 0 {
            return Err(StoreError::BadRequest("k must be at least 1".into()));
        }
        let filter = self.filter(request.filter.as_ref(), &request.exclude)?;
        let params = SearchParams {
            hnsw_ef: Some(request.ef.unwrap_or(DEFAULT_EF).max(request.k)),
            ..Default::default()
        };
        // No batch search in qdrant-edge: one search per query vector.
        request
            .queries
            .iter()
            .map(|q| {
                let hits = self
                    .shard
                    .search(EdgeSearch {
                        query: QueryEnum::Nearest(NamedQuery {
                            query: VectorInternal::from(q.clone()),
                            using: None,
                        }),
                        filter: filter.clone(),
                        params: Some(params),
                        limit: request.k,
                        offset: 0,
                        with_payload: Some(WithPayloadInterface::Bool(true)),
                        with_vector: None,
                        score_threshold: None,
                    })
                    .map_err(engine)?;
                Ok(hits
                    .into_iter()
                    .map(|h| {
                        let (id, payload) = split_payload(h.payload);
                        Hit {
                            id,
                            score: h.score,
                            payload,
                        }
                    })
                    .collect())
            })
            .collect()
    }

    fn scroll(&self, cursor: Option<&str>, limit: usize) -> StoreResult<Page> {
        let offset = cursor
            .map(|c| {
                Uuid::parse_str(c)
                    .map(PointId::Uuid)
                    .map_err(|e| StoreError::BadRequest(format!("invalid cursor {c:?}: {e}")))
            })
            .transpose()?;
        let (records, next) = self
            .shard
            .scroll(ScrollRequest {
                offset,
                limit: Some(limit.max(1)),
                filter: None,
                with_payload: Some(WithPayloadInterface::Bool(true)),
                with_vector: WithVector::Bool(true),
                order_by: None,
            })
            .map_err(engine)?;
        let points = records
            .into_iter()
            .map(|r| {
                let (id, payload) = split_payload(r.payload);
                StoredPoint {
                    id,
                    vector: dense(r.vector),
                    payload,
                }
            })
            .collect();
        let next = next.map(|id| match id {
            PointId::Uuid(u) => u.to_string(),
            PointId::NumId(n) => n.to_string(),
        });
        Ok(Page { points, next })
    }

    fn stats(&self) -> StoreResult<Stats> {
        let info = self.shard.info();
        Ok(Stats {
            points: info.points_count,
            segments: info.segments_count,
            indexed_vectors: info.indexed_vectors_count,
            dim: self.dim,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(dim: usize, hot: usize) -> Vec<f32> {
        (0..dim)
            .map(|i| if i == hot { 1.0 } else { 0.01 })
            .collect()
    }

    fn point(id: &str, v: Vec<f32>, category: &str) -> Point {
        let mut payload = Payload::new();
        payload.insert("category".into(), json!(category));
        Point {
            id: id.into(),
            vector: v,
            payload,
        }
    }

    #[test]
    fn upsert_get_search_filter_exclude_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = EdgeStore::open(dir.path(), 8).unwrap();
        store
            .upsert(vec![
                point("a", unit(8, 0), "x"),
                point("b", unit(8, 1), "y"),
                point("c", unit(8, 0), "y"),
            ])
            .unwrap();
        let got = store
            .get(&["b".into(), "zz".into(), "a".into()], true)
            .unwrap();
        assert_eq!(
            got.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
        assert_eq!(got[1].vector.as_deref(), Some(unit(8, 0).as_slice()));
        assert_eq!(got[0].payload["category"], "y");

        let req = |filter: Option<Value>, exclude: Vec<String>| SearchRequest {
            queries: vec![unit(8, 0), unit(8, 1)],
            k: 2,
            filter,
            exclude,
            ef: None,
            consistency: Default::default(),
        };
        let res = store.search(&req(None, vec![])).unwrap();
        assert_eq!(res.len(), 2);
        let mut first: Vec<_> = res[0].iter().map(|h| h.id.as_str()).collect();
        first.sort();
        assert_eq!(first, ["a", "c"]);
        assert_eq!(res[1][0].id, "b");

        let filtered = store
            .search(&req(
                Some(json!({"must":[{"key":"category","match":{"value":"y"}}]})),
                vec![],
            ))
            .unwrap();
        assert!(filtered
            .iter()
            .flatten()
            .all(|h| h.payload["category"] == "y"));
        let excluded = store.search(&req(None, vec!["a".into()])).unwrap();
        assert!(excluded.iter().flatten().all(|h| h.id != "a"));
        assert!(matches!(
            store.search(&req(Some(json!({"must": 5})), vec![])),
            Err(StoreError::BadRequest(_))
        ));

        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store.scroll(cursor.as_deref(), 2).unwrap();
            assert!(page.points.iter().all(|p| p.vector.is_some()));
            seen.extend(page.points.into_iter().map(|p| p.id));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);

        assert_eq!(store.delete(&["a".into(), "nope".into()]).unwrap(), 1);
        drop(store);
        let reopened = EdgeStore::open(dir.path(), 8).unwrap();
        assert_eq!(reopened.stats().unwrap().points, 2);
        assert!(reopened.get(&["a".into()], false).unwrap().is_empty());
        assert!(EdgeStore::open(dir.path(), 16).is_err());
        assert_eq!(reopened.clear().unwrap(), 2);
        assert_eq!(reopened.stats().unwrap().points, 0);
    }

    #[test]
    fn rejects_bad_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let store = EdgeStore::open(dir.path(), 4).unwrap();
        assert!(matches!(
            store.upsert(vec![point("a", vec![1.0; 3], "x")]),
            Err(StoreError::BadRequest(_))
        ));
        assert!(matches!(
            store.upsert(vec![point("a", vec![f32::NAN; 4], "x")]),
            Err(StoreError::BadRequest(_))
        ));
        assert_eq!(store.stats().unwrap().points, 0);
    }
}
