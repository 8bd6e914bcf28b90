//! The store on Qdrant's embedded engine (`qdrant-edge`).
//!
//! qdrant-edge runs nothing in the background and never replays its own WAL. Around it:
//! - every write goes to the store's [`Journal`] (fsynced) before the engine, so it is
//!   durable when acknowledged;
//! - one indexer thread runs the engine's optimizers (Qdrant's own: segments past the
//!   indexing threshold are indexed into new HNSW segments behind proxy segments, which
//!   keep taking writes and serving searches meanwhile), applies new settings, and
//!   between builds flushes the engine and cuts the journal.
//!
//! So writes never wait for an index build, and searches use the indexed segments plus
//! an exact scan of what is not indexed yet (bounded by the threshold).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use qdrant_edge::{
    EdgeConfig, EdgeShard, Filter, NamedQuery, PointId, PointInsertOperations, PointOperations,
    PointStructPersisted, QuantizationSearchParams, QueryEnum, ScrollRequest, SearchParams,
    SearchRequest as EdgeSearch, UpdateOperation, VectorInternal, VectorStructInternal,
    VectorStructPersisted, WithPayloadInterface, WithVector,
};
use serde_json::{json, Value};
use uuid::Uuid;

use redrec_shard_api::collection::{Collection, Quantization};
use redrec_shard_api::points::{
    is_packed, Hit, Memory, Page, Point, PointIds, SearchRequest, Stats, StoredPoint, ID_KEY,
};

use super::config::{edge_config, set_merge_cap, Writes, QUIET};
use super::footprint;
use super::ids::{self, point_id};
use super::journal::{Journal, Op};
use super::{check_points, check_vector, StoreError, StoreResult, VectorStore};

/// Where the journal lives, beside the engine's own files.
const JOURNAL_DIR: &str = "journal";
/// The indexer's period.
const TICK: Duration = Duration::from_millis(200);
/// The journal is cut once it holds this many writes, or after this long.
const CHECKPOINT_WRITES: u64 = 512;
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
/// While an optimisation runs (no checkpoints meanwhile, for minutes at millions of
/// points), the files are measured again when the last figures are older than this.
const MEASURE_EVERY: Duration = Duration::from_secs(5);

pub(super) struct Core {
    path: PathBuf,
    dim: usize,
    /// How item ids are point ids here.
    ids: PointIds,
    /// The engine; `None` only while it is reopened with new settings.
    shard: RwLock<Option<EdgeShard>>,
    /// Serialises writes (and the flush, which qdrant-edge forbids during one).
    pub(super) journal: Mutex<Journal>,
    /// What searches use and the engine was last opened with.
    settings: RwLock<Collection>,
    /// Settings to open the engine with at the indexer's next turn.
    wanted: Mutex<Option<Collection>>,
    pub(super) indexing: AtomicBool,
    /// Optimisation runs finished.
    pub(super) runs: AtomicU64,
    /// Of those, the runs that rebuilt segments.
    builds: AtomicU64,
    /// When the last write came (`None`: none since the store opened).
    last_write: Mutex<Option<Instant>>,
    /// Writes are quiet and the optimisers, run since, found nothing left to do.
    settled: AtomicBool,
    /// Points held when the store opened or its indexer last caught up with the writes
    /// (settling, or while they continue): what writes stream onto.
    catalogue: AtomicU64,
    /// Where the bytes are, and when they were measured: from the files at the last
    /// flush, or during a long optimisation from the files as they are (between flushes,
    /// files written through memory maps may not show all they hold).
    footprint: Mutex<(Memory, Instant)>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Core {
    pub(super) fn engine(&self) -> StoreResult<RwLockReadGuard<'_, Option<EdgeShard>>> {
        let guard = self.shard.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(StoreError::Engine("the engine is being reopened".into()));
        }
        Ok(guard)
    }

    fn settings(&self) -> Collection {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Journals `op`, then applies it.
    fn write(&self, op: Op, apply: impl FnOnce(&EdgeShard) -> StoreResult<()>) -> StoreResult<()> {
        let mut journal = lock(&self.journal);
        journal.append(&op)?;
        *lock(&self.last_write) = Some(Instant::now());
        self.settled.store(false, Ordering::Relaxed);
        let guard = self.engine()?;
        apply(guard.as_ref().expect("checked by engine()"))
    }

    /// Flushes the engine (when it took writes since the last time, or `always`), measures
    /// its files and cuts the journal. Runs on the indexer thread (never during an index
    /// build) with writes held.
    fn checkpoint(&self, always: bool) -> StoreResult<()> {
        let mut journal = lock(&self.journal);
        if journal.pending() == 0 && !always {
            return Ok(());
        }
        if let Some(shard) = self.engine()?.as_ref() {
            shard.flush();
        }
        *lock(&self.footprint) = (footprint::measure(&self.path), Instant::now());
        journal.checkpoint()
    }

    /// Reopens the engine with `c` (searches already use it): writes and searches wait
    /// meanwhile. The
    /// optimisations that follow rebuild every segment built with other settings.
    fn reconfigure(&self, c: Collection) -> StoreResult<()> {
        let config = edge_config(self.dim, &c)?;
        let _journal = lock(&self.journal);
        let mut slot = self.shard.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.take() {
            drop(old); // flushes
        }
        match EdgeShard::load(&self.path, Some(config)) {
            Ok(shard) => {
                *slot = Some(shard);
                Ok(())
            }
            Err(e) => {
                *slot = Some(EdgeShard::load(&self.path, None).map_err(engine)?);
                Err(engine(e))
            }
        }
    }

    /// One turn of the indexer: settings, checkpoint, optimisation.
    fn tend(&self, last_checkpoint: &mut Instant) {
        if let Some(c) = lock(&self.wanted).take() {
            match self.reconfigure(c) {
                Ok(()) => {
                    tracing::info!(path = %self.path.display(), "collection settings applied");
                    self.checkpoint_now(true, last_checkpoint);
                }
                Err(e) => tracing::error!("applying collection settings: {e}"),
            }
        }
        let pending = lock(&self.journal).pending();
        if pending >= CHECKPOINT_WRITES
            || (pending > 0 && last_checkpoint.elapsed() >= CHECKPOINT_EVERY)
        {
            self.checkpoint_now(false, last_checkpoint);
        }
        let Ok(guard) = self.engine() else { return };
        let Some(shard) = guard.as_ref() else { return };
        let started = Instant::now();
        let recent = lock(&self.last_write).is_some_and(|at| at.elapsed() < QUIET);
        let was_settled = self.settled.load(Ordering::Relaxed);
        // Read once, and only while writes are recent or on a turn that may settle the store.
        let points = (recent || !was_settled).then(|| shard.info().points_count as u64);
        let catalogue = self.catalogue.load(Ordering::Relaxed);
        let writes = (points.filter(|_| recent))
            .map_or(Writes::AtRest, |p| Writes::recent(p, catalogue, self.dim));
        set_merge_cap(shard, writes);
        self.indexing.store(true, Ordering::Relaxed);
        let optimized = shard.optimize();
        let written = lock(&self.last_write).is_some_and(|at| at >= started);
        let caught_up = matches!(optimized, Ok(false)) && !written;
        self.settled.store(caught_up && !recent, Ordering::Relaxed);
        // Writes the indexer keeps up with stream onto what it has caught up with (no write
        // came since `points` was read); writes that outrun it (a load) leave it as it was.
        if let Some(points) = points.filter(|_| caught_up) {
            self.catalogue.store(points, Ordering::Relaxed);
        }
        drop(guard);
        match optimized {
            Ok(true) => {
                self.builds.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    "shard optimized"
                );
                // What the build changed is measured at once.
                self.checkpoint_now(true, last_checkpoint);
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("optimize failed: {e}"),
        }
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.indexing.store(false, Ordering::Relaxed);
    }

    /// The engine's merge cap now (KiB).
    #[cfg(test)]
    pub(super) fn merge_cap(&self) -> Option<usize> {
        (self.engine().ok()).and_then(|guard| guard.as_ref()?.config().optimizers.max_segment_size)
    }

    fn checkpoint_now(&self, always: bool, last: &mut Instant) {
        match self.checkpoint(always) {
            Ok(()) => *last = Instant::now(),
            Err(e) => tracing::warn!("checkpoint: {e}"),
        }
    }

    fn memory(&self) -> Memory {
        let mut footprint = lock(&self.footprint);
        if self.indexing.load(Ordering::Relaxed) && footprint.1.elapsed() >= MEASURE_EVERY {
            *footprint = (footprint::measure(&self.path), Instant::now());
        }
        footprint.0
    }
}

pub struct EdgeStore {
    pub(super) core: Arc<Core>,
    /// Dropping the sender stops the indexer.
    indexer: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl EdgeStore {
    /// Opens the shard at `path` under `settings`, creating it (for `dim`-d vectors) if
    /// absent, and applies what its journal still holds.
    pub fn open(path: &Path, dim: usize, settings: &Collection) -> StoreResult<Self> {
        settings.check().map_err(StoreError::BadRequest)?;
        let config = edge_config(dim, settings)?;
        let stored = EdgeConfig::load(path);
        if stored.is_none() {
            std::fs::create_dir_all(path).map_err(engine)?;
        }
        let ids = ids::scheme(path, stored.is_some(), settings.point_ids)?;
        let settings = &Collection {
            point_ids: ids,
            ..settings.clone()
        };
        let shard = if let Some(stored) = stored {
            let stored = stored.map_err(engine)?;
            let (size, distance) = stored.vectors.get("").map(|v| (v.size, v.distance)).unzip();
            if size != Some(dim) || distance != config.vectors.get("").map(|v| v.distance) {
                return Err(StoreError::BadRequest(format!(
                    "shard at {} holds {size:?}-d {distance:?} vectors, asked for {dim}-d {:?}",
                    path.display(),
                    settings.distance
                )));
            }
            EdgeShard::load(path, Some(config)).map_err(engine)?
        } else {
            EdgeShard::new(path, config).map_err(engine)?
        };
        let (journal, replay) = Journal::open(&path.join(JOURNAL_DIR))?;
        for op in replay {
            apply(&shard, ids, op)?;
        }
        let catalogue = shard.info().points_count as u64;
        let core = Arc::new(Core {
            path: path.to_path_buf(),
            dim,
            ids,
            shard: RwLock::new(Some(shard)),
            journal: Mutex::new(journal),
            settings: RwLock::new(settings.clone()),
            wanted: Mutex::new(None),
            indexing: AtomicBool::new(false),
            runs: AtomicU64::new(0),
            builds: AtomicU64::new(0),
            last_write: Mutex::new(None),
            settled: AtomicBool::new(false),
            catalogue: AtomicU64::new(catalogue),
            footprint: Mutex::new((Memory::default(), Instant::now())),
        });
        core.checkpoint(true)?;
        let indexer = Some(spawn_indexer(core.clone())?);
        Ok(Self { core, indexer })
    }

    fn filter(&self, user: Option<&Value>, exclude: &[String]) -> StoreResult<Option<Filter>> {
        let mut must = Vec::new();
        if let Some(f) = user.filter(|f| !f.is_null()) {
            must.push(f.clone());
        }
        let mut filter = json!({ "must": must });
        if !exclude.is_empty() {
            let ids: Vec<_> = exclude
                .iter()
                .map(|id| json!(point_id(self.core.ids, id)))
                .collect();
            filter["must_not"] = json!([{ "has_id": ids }]);
        } else if must.is_empty() {
            return Ok(None);
        }
        serde_json::from_value(filter)
            .map(Some)
            .map_err(|e| StoreError::BadRequest(format!("invalid filter: {e}")))
    }
}

/// qdrant-edge runs nothing in the background: this thread does its upkeep.
fn spawn_indexer(core: Arc<Core>) -> StoreResult<(mpsc::Sender<()>, JoinHandle<()>)> {
    let (stop, stopped) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("shard-indexer".into())
        .spawn(move || {
            let mut last_checkpoint = Instant::now();
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                core.tend(&mut last_checkpoint);
            }
            if let Err(e) = core.checkpoint(false) {
                tracing::warn!("final checkpoint: {e}");
            }
        })
        .map_err(engine)?;
    Ok((stop, handle))
}

/// Applies a journalled operation to the engine, whose point ids follow `ids`.
fn apply(shard: &EdgeShard, ids: PointIds, op: Op) -> StoreResult<()> {
    let op = match op {
        Op::Upsert(points) => {
            let points = points
                .into_iter()
                .map(|p| {
                    let (id, mut payload) = (point_id(ids, &p.id), p.payload);
                    // A hashed point id does not give the item id back: the payload keeps it.
                    if matches!(id, PointId::Uuid(u) if !is_packed(&u)) {
                        payload.insert(ID_KEY.into(), Value::String(p.id));
                    }
                    PointStructPersisted {
                        id,
                        vector: VectorStructPersisted::Single(p.vector),
                        payload: Some(qdrant_edge::Payload(payload)),
                    }
                })
                .collect();
            PointOperations::UpsertPoints(PointInsertOperations::PointsList(points))
        }
        Op::Delete(items) => PointOperations::DeletePoints {
            ids: items.iter().map(|id| point_id(ids, id)).collect(),
        },
    };
    shard
        .update(UpdateOperation::PointOperation(op))
        .map_err(engine)
}

/// How long a closing store waits for an index build to end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

impl Drop for EdgeStore {
    /// Stops the indexer. An index build cannot be interrupted: one still running after
    /// [`CLOSE_WAIT`] is left to finish on its own (or to end with the process, which is
    /// safe: what it built is discarded on reopen and every write is in the journal).
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.indexer.take() {
            drop(stop);
            let until = Instant::now() + CLOSE_WAIT;
            while !handle.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                tracing::info!(path = %self.core.path.display(), "an index build is still running; not waiting for it");
            }
        }
    }
}

impl VectorStore for EdgeStore {
    fn dim(&self) -> usize {
        self.core.dim
    }

    fn upsert(&self, points: Vec<Point>) -> StoreResult<usize> {
        check_points(&points, self.core.dim)?;
        let n = points.len();
        if n == 0 {
            return Ok(0);
        }
        // The journal keeps the points; the engine is given its own copy.
        let copy = Op::Upsert(points.clone());
        let ids = self.core.ids;
        self.core
            .write(Op::Upsert(points), |shard| apply(shard, ids, copy))?;
        Ok(n)
    }

    fn delete(&self, ids: &[String]) -> StoreResult<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let scheme = self.core.ids;
        let pids: Vec<PointId> = ids.iter().map(|id| point_id(scheme, id)).collect();
        let mut existing = 0;
        self.core.write(Op::Delete(ids.to_vec()), |shard| {
            existing = shard
                .retrieve(&pids, Some(WithPayloadInterface::Bool(false)), None)
                .map_err(engine)?
                .len();
            apply(shard, scheme, Op::Delete(ids.to_vec()))
        })?;
        Ok(existing)
    }

    fn get(&self, ids: &[String], with_vector: bool) -> StoreResult<Vec<StoredPoint>> {
        let pids: Vec<PointId> = ids.iter().map(|id| point_id(self.core.ids, id)).collect();
        let guard = self.core.engine()?;
        let records = guard
            .as_ref()
            .expect("checked by engine()")
            .retrieve(
                &pids,
                Some(WithPayloadInterface::Bool(true)),
                Some(WithVector::Bool(with_vector)),
            )
            .map_err(engine)?;
        Ok(records
            .into_iter()
            .map(|r| {
                let (id, payload) = ids::item_id(r.id, r.payload);
                StoredPoint {
                    id: id.unwrap_or_default(),
                    vector: if with_vector { dense(r.vector) } else { None },
                    payload,
                }
            })
            .collect())
    }

    fn search(&self, request: &SearchRequest) -> StoreResult<Vec<Vec<Hit>>> {
        for q in &request.queries {
            check_vector(q, self.core.dim)?;
        }
        if request.k == 0 {
            return Err(StoreError::BadRequest("k must be at least 1".into()));
        }
        let filter = self.filter(request.filter.as_ref(), &request.exclude)?;
        let settings = self.core.settings();
        let params = SearchParams {
            hnsw_ef: Some(settings.search_ef(request.k, request.ef)),
            quantization: (settings.quantization != Quantization::None).then_some(
                QuantizationSearchParams {
                    ignore: false,
                    rescore: Some(true),
                    oversampling: Some(settings.oversampling),
                },
            ),
            ..Default::default()
        };
        let with_payload = ids::search_payload(self.core.ids, request.with_payload);
        let guard = self.core.engine()?;
        let shard = guard.as_ref().expect("checked by engine()");
        // No batch search in qdrant-edge: one search per query vector.
        let lists = (request.queries.iter())
            .map(|q| {
                shard
                    .search(EdgeSearch {
                        query: QueryEnum::Nearest(NamedQuery {
                            query: VectorInternal::from(q.clone()),
                            using: None,
                        }),
                        filter: filter.clone(),
                        params: Some(params),
                        limit: request.k,
                        offset: 0,
                        with_payload: Some(with_payload.clone()),
                        with_vector: None,
                        score_threshold: None,
                    })
                    .map_err(engine)
            })
            .collect::<StoreResult<Vec<_>>>()?;
        ids::name_hits(shard, lists)
    }

    fn scroll(&self, cursor: Option<&str>, limit: usize) -> StoreResult<Page> {
        // A cursor is the next point's id, a number or a UUID.
        let offset = cursor
            .map(|c| match c.parse::<u64>() {
                Ok(n) => Ok(PointId::NumId(n)),
                Err(_) => Uuid::parse_str(c)
                    .map(PointId::Uuid)
                    .map_err(|e| StoreError::BadRequest(format!("invalid cursor {c:?}: {e}"))),
            })
            .transpose()?;
        let guard = self.core.engine()?;
        let (records, next) = guard
            .as_ref()
            .expect("checked by engine()")
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
                let (id, payload) = ids::item_id(r.id, r.payload);
                StoredPoint {
                    id: id.unwrap_or_default(),
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
        let info = self
            .core
            .engine()?
            .as_ref()
            .expect("checked by engine()")
            .info();
        Ok(Stats {
            points: info.points_count,
            segments: info.segments_count,
            indexed_vectors: info.indexed_vectors_count,
            dim: self.core.dim,
            indexing: self.core.indexing.load(Ordering::Relaxed),
            builds: self.core.builds.load(Ordering::Relaxed),
            settled: self.core.settled.load(Ordering::Relaxed),
            memory: self.core.memory(),
        })
    }

    fn collection(&self) -> Collection {
        self.core.settings()
    }

    fn configure(&self, collection: &Collection) -> StoreResult<()> {
        // The store's own scheme stays whatever a change says (a store made before the
        // cluster named one keeps hashing).
        let collection = &Collection {
            point_ids: self.core.ids,
            ..collection.clone()
        };
        self.core
            .settings()
            .check_change(collection)
            .map_err(StoreError::BadRequest)?;
        let config = edge_config(self.core.dim, collection)?;
        let mut current = self
            .core
            .engine()?
            .as_ref()
            .expect("checked by engine()")
            .config()
            .clone();
        // The merge cap follows the writes, not the settings.
        current.optimizers.max_segment_size = config.optimizers.max_segment_size;
        let stale = current != config;
        *self
            .core
            .settings
            .write()
            .unwrap_or_else(|p| p.into_inner()) = collection.clone();
        if stale {
            *lock(&self.core.wanted) = Some(collection.clone());
        }
        Ok(())
    }
}

fn engine<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Engine(e.to_string())
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
