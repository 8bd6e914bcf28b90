//! The shard's internal HTTP API over a [`VectorStore`].

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use redrec_wire::{with_fallbacks, HttpError, Json};

use crate::api::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, SearchRequest, SearchResponse, Stats,
    UpsertRequest, UpsertResponse,
};
use crate::store::{StoreError, VectorStore};

/// Internal requests carry batches of vectors: allow more than the public API does.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

impl From<StoreError> for ShardHttpError {
    fn from(e: StoreError) -> Self {
        Self(match e {
            StoreError::BadRequest(m) => HttpError::bad_request("invalid_request", m),
            StoreError::Engine(m) => {
                HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", m)
            }
        })
    }
}

pub struct ShardHttpError(HttpError);

impl axum::response::IntoResponse for ShardHttpError {
    fn into_response(self) -> axum::response::Response {
        self.0.into_response()
    }
}

type Shared = Arc<dyn VectorStore>;
type Reply<T> = Result<axum::Json<T>, ShardHttpError>;

/// Runs a store call off the async workers: the engine's calls block.
async fn blocking<T: Send + 'static>(
    store: &Shared,
    f: impl FnOnce(&dyn VectorStore) -> Result<T, StoreError> + Send + 'static,
) -> Reply<T> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(r) => r.map(axum::Json).map_err(ShardHttpError::from),
        Err(e) => Err(ShardHttpError(HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        ))),
    }
}

async fn upsert(State(s): State<Shared>, Json(r): Json<UpsertRequest>) -> Reply<UpsertResponse> {
    blocking(&s, move |st| {
        st.upsert(r.points)
            .map(|upserted| UpsertResponse { upserted })
    })
    .await
}

async fn delete(State(s): State<Shared>, Json(r): Json<DeleteRequest>) -> Reply<DeleteResponse> {
    blocking(&s, move |st| {
        st.delete(&r.ids).map(|deleted| DeleteResponse { deleted })
    })
    .await
}

async fn get_points(State(s): State<Shared>, Json(r): Json<GetRequest>) -> Reply<GetResponse> {
    blocking(&s, move |st| {
        st.get(&r.ids, r.with_vector)
            .map(|points| GetResponse { points })
    })
    .await
}

async fn search(State(s): State<Shared>, Json(r): Json<SearchRequest>) -> Reply<SearchResponse> {
    blocking(&s, move |st| {
        st.search(&r).map(|results| SearchResponse { results })
    })
    .await
}

async fn stats(State(s): State<Shared>) -> Reply<Stats> {
    blocking(&s, |st| st.stats()).await
}

async fn ok() -> &'static str {
    "ok"
}

pub fn router(store: Shared) -> Router {
    let api = Router::new()
        .route("/v1/points/upsert", post(upsert))
        .route("/v1/points/delete", post(delete))
        .route("/v1/points/get", post(get_points))
        .route("/v1/search", post(search))
        .route("/v1/stats", get(stats))
        .route("/healthz", get(ok))
        .route("/readyz", get(ok))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(store);
    with_fallbacks(api)
}
