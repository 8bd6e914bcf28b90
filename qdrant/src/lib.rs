//! Items, and users' histories, kept on a Qdrant server or cluster through its gRPC API
//! (`qdrant-client`): the storage path where Qdrant shards and replicates and redrec runs
//! the towers, the merge and the public API.
//!
//! An item is a point whose id is the item id's UUID ([`point_uuid`], as the embedded
//! engine keys it), its vector, and its payload with the item id under [`ID_KEY`]. A
//! user's events are points of a second collection (`<collection>_users`), one per
//! (user, item, time), so that concurrent writers never overwrite each other's events.
//! Every call is bounded by the time it is given, and every failure comes back as a
//! [`ShardClientError`]: a request Qdrant refuses as invalid is the caller's mistake, all
//! else (unreachable, timed out, overloaded) is unavailability.

pub mod filter;
mod settings;
mod users;

use std::collections::HashMap;
use std::time::Duration;

use qdrant_client::qdrant::{
    point_id::PointIdOptions, read_consistency::Value as Consistent, vectors_output,
    DeletePointsBuilder, GetPointsBuilder, PointId, PointStruct, PointsIdsList,
    QuantizationSearchParams, ReadConsistency, ReadConsistencyType, ScoredPoint, SearchBatchPoints,
    SearchParams, SearchPoints, UpsertPointsBuilder, WithPayloadSelector,
};
use qdrant_client::{Qdrant, QdrantError};
use redrec_shard_api::collection::{Collection, Quantization};
use redrec_shard_api::points::{
    point_uuid, Consistency, Hit, Payload, Point, SearchRequest, StoredPoint, ID_KEY,
};
use redrec_shard_api::ShardClientError;

pub use settings::{QdrantSettings, ShardReplicas};

/// A collection on a Qdrant server (or cluster), created or checked at [`QdrantItems::open`].
pub struct QdrantItems {
    client: Qdrant,
    settings: QdrantSettings,
    /// The users' collection.
    users: String,
}

/// A Qdrant error as the router reports shard errors.
fn failed(addr: &str, e: QdrantError) -> ShardClientError {
    // gRPC's INVALID_ARGUMENT and OUT_OF_RANGE: the request's fault.
    const CLIENT_CODES: [i32; 2] = [3, 11];
    match e {
        QdrantError::ResponseError { status } if CLIENT_CODES.contains(&(status.code() as i32)) => {
            ShardClientError::Rejected {
                addr: addr.into(),
                status: 400,
                code: "invalid_request".into(),
                message: status.message().to_string(),
            }
        }
        QdrantError::ResponseError { status } => ShardClientError::Unavailable {
            addr: addr.into(),
            message: format!("{:?}: {}", status.code(), status.message()),
        },
        other => ShardClientError::Unavailable {
            addr: addr.into(),
            message: other.to_string(),
        },
    }
}

/// Whole seconds for Qdrant's own `timeout` fields (at least 1).
fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

fn point_id(item_id: &str) -> PointId {
    PointId::from(point_uuid(item_id).to_string())
}

/// The item id a point carries, and its payload without it.
fn split_payload(
    payload: HashMap<String, qdrant_client::qdrant::Value>,
) -> Option<(String, Payload)> {
    let mut payload: Payload = payload
        .into_iter()
        .map(|(k, v)| (k, v.into_json()))
        .collect();
    match payload.remove(ID_KEY) {
        Some(serde_json::Value::String(id)) => Some((id, payload)),
        _ => None,
    }
}

fn dense(v: Option<qdrant_client::qdrant::VectorsOutput>) -> Option<Vec<f32>> {
    match v?.vectors_options? {
        vectors_output::VectorsOptions::Vector(v) => match v.into_vector() {
            qdrant_client::qdrant::vector_output::Vector::Dense(d) => Some(d.data),
            _ => None,
        },
        vectors_output::VectorsOptions::Vectors(_) => None,
    }
}

impl QdrantItems {
    /// Connects and makes sure the collections exist with `settings` (created when
    /// absent; when present, a setting that differs is an error).
    pub async fn open(settings: QdrantSettings) -> Result<Self, String> {
        let client = Qdrant::from_url(&settings.url)
            .api_key(settings.api_key.clone())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .skip_compatibility_check()
            .build()
            .map_err(|e| format!("qdrant at {}: {e}", settings.url))?;
        let items = Self {
            users: format!("{}_users", settings.collection),
            client,
            settings,
        };
        items.ensure_items().await?;
        items.ensure_users().await?;
        Ok(items)
    }

    pub fn settings(&self) -> &QdrantSettings {
        &self.settings
    }

    pub fn addr(&self) -> &str {
        &self.settings.url
    }

    fn fail(&self, e: QdrantError) -> ShardClientError {
        failed(&self.settings.url, e)
    }

    /// Runs `call` within `left`; past it the call is dropped and reported unavailable.
    async fn within<T>(
        &self,
        left: Duration,
        call: impl std::future::Future<Output = Result<T, QdrantError>>,
    ) -> Result<T, ShardClientError> {
        match tokio::time::timeout(left, call).await {
            Ok(r) => r.map_err(|e| self.fail(e)),
            Err(_) => Err(ShardClientError::Unavailable {
                addr: self.settings.url.clone(),
                message: format!("no answer within {left:?}"),
            }),
        }
    }

    /// Upserts `points`, answered once Qdrant applied them (`wait`) with the collection's
    /// write consistency.
    pub async fn upsert(
        &self,
        points: Vec<Point>,
        left: Duration,
    ) -> Result<usize, ShardClientError> {
        let n = points.len();
        let points: Vec<PointStruct> = points
            .into_iter()
            .map(|p| {
                let mut payload = p.payload;
                payload.insert(ID_KEY.into(), serde_json::Value::String(p.id.clone()));
                PointStruct::new(point_uuid(&p.id).to_string(), p.vector, payload)
            })
            .collect();
        let req = UpsertPointsBuilder::new(&self.settings.collection, points).wait(true);
        self.within(left, self.client.upsert_points(req)).await?;
        Ok(n)
    }

    /// Deletes `ids`; answers how many of them existed.
    pub async fn delete(
        &self,
        ids: Vec<String>,
        left: Duration,
    ) -> Result<usize, ShardClientError> {
        let existing = self.get(ids.clone(), false, left).await?.len();
        if existing > 0 {
            let selector = PointsIdsList {
                ids: ids.iter().map(|id| point_id(id)).collect(),
            };
            let req = DeletePointsBuilder::new(&self.settings.collection)
                .points(selector)
                .wait(true);
            self.within(left, self.client.delete_points(req)).await?;
        }
        Ok(existing)
    }

    /// The points of `ids` that exist, in request order.
    pub async fn get(
        &self,
        ids: Vec<String>,
        with_vector: bool,
        left: Duration,
    ) -> Result<Vec<StoredPoint>, ShardClientError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let req = GetPointsBuilder::new(
            &self.settings.collection,
            ids.iter().map(|id| point_id(id)).collect::<Vec<_>>(),
        )
        .with_payload(true)
        .with_vectors(with_vector)
        .timeout(secs(left));
        let found = self.within(left, self.client.get_points(req)).await?;
        let mut by_id: HashMap<String, StoredPoint> = found
            .result
            .into_iter()
            .filter_map(|p| {
                let (id, payload) = split_payload(p.payload)?;
                let vector = dense(p.vectors);
                Some((
                    id.clone(),
                    StoredPoint {
                        id,
                        vector,
                        payload,
                    },
                ))
            })
            .collect();
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    /// Searches with every query of `req` in one batch: each query's top-k, leaving out
    /// `req.exclude` (a `has_id` condition) and what `req.filter` refuses.
    pub async fn search(
        &self,
        req: &SearchRequest,
        left: Duration,
    ) -> Result<Vec<Vec<Hit>>, ShardClientError> {
        let bad = |message: String| ShardClientError::Rejected {
            addr: self.settings.url.clone(),
            status: 400,
            code: "invalid_request".into(),
            message,
        };
        let mut filter = match req.filter.as_ref().filter(|f| !f.is_null()) {
            Some(f) => Some(filter::to_grpc(f).map_err(bad)?),
            None => None,
        };
        if !req.exclude.is_empty() {
            let ids: Vec<PointId> = req.exclude.iter().map(|id| point_id(id)).collect();
            let f = filter.get_or_insert_with(Default::default);
            f.must_not
                .push(qdrant_client::qdrant::Condition::has_id(ids));
        }
        let c: &Collection = &self.settings.collection_settings;
        let params = SearchParams {
            hnsw_ef: Some(req.ef.unwrap_or(c.ef) as u64),
            quantization: (c.quantization == Quantization::Int8).then_some(
                QuantizationSearchParams {
                    rescore: Some(true),
                    oversampling: Some(c.oversampling),
                    ..Default::default()
                },
            ),
            ..Default::default()
        };
        let with_payload = if req.with_payload {
            WithPayloadSelector::from(true)
        } else {
            WithPayloadSelector::from(vec![ID_KEY])
        };
        let read_consistency =
            (req.consistency == Consistency::Strong).then_some(ReadConsistency {
                value: Some(Consistent::Type(ReadConsistencyType::All as i32)),
            });
        let searches = req
            .queries
            .iter()
            .map(|q| SearchPoints {
                collection_name: self.settings.collection.clone(),
                vector: q.clone(),
                filter: filter.clone(),
                limit: req.k as u64,
                with_payload: Some(with_payload.clone()),
                params: Some(params),
                ..Default::default()
            })
            .collect();
        let batch = SearchBatchPoints {
            collection_name: self.settings.collection.clone(),
            search_points: searches,
            read_consistency,
            timeout: Some(secs(left)),
        };
        let found = self
            .within(left, self.client.search_batch_points(batch))
            .await?;
        Ok(found
            .result
            .into_iter()
            .map(|list| list.result.into_iter().filter_map(hit).collect())
            .collect())
    }
}

fn hit(p: ScoredPoint) -> Option<Hit> {
    let (id, payload) = split_payload(p.payload)?;
    Some(Hit {
        id,
        score: p.score,
        payload,
    })
}

/// The UUID string of a point id, as the collections key points.
fn uuid_of(id: &PointId) -> Option<&str> {
    match id.point_id_options.as_ref()? {
        PointIdOptions::Uuid(u) => Some(u),
        PointIdOptions::Num(_) => None,
    }
}
