//! The API of a lone (unreplicated) shard: points and searches on one store, `/v1/…`.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use redrec_shard_api::points::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, SearchRequest, SearchResponse, Stats,
    UpsertRequest, UpsertResponse,
};
use redrec_wire::Json;

use super::error::{blocking, Reply};
use crate::store::VectorStore;

type Shared = Arc<dyn VectorStore>;

async fn upsert(State(s): State<Shared>, Json(r): Json<UpsertRequest>) -> Reply<UpsertResponse> {
    blocking(s, move |st| {
        st.upsert(r.points)
            .map(|upserted| UpsertResponse { upserted })
    })
    .await
}

async fn delete(State(s): State<Shared>, Json(r): Json<DeleteRequest>) -> Reply<DeleteResponse> {
    blocking(s, move |st| {
        st.delete(&r.ids).map(|deleted| DeleteResponse { deleted })
    })
    .await
}

async fn get_points(State(s): State<Shared>, Json(r): Json<GetRequest>) -> Reply<GetResponse> {
    blocking(s, move |st| {
        st.get(&r.ids, r.with_vector)
            .map(|points| GetResponse { points })
    })
    .await
}

async fn search(State(s): State<Shared>, Json(r): Json<SearchRequest>) -> Reply<SearchResponse> {
    blocking(s, move |st| {
        st.search(&r).map(|results| SearchResponse { results })
    })
    .await
}

async fn stats(State(s): State<Shared>) -> Reply<Stats> {
    blocking(s, |st| st.stats()).await
}

async fn ok() -> &'static str {
    "ok"
}

pub fn routes(store: Shared) -> Router {
    Router::new()
        .route("/v1/points/upsert", post(upsert))
        .route("/v1/points/delete", post(delete))
        .route("/v1/points/get", post(get_points))
        .route("/v1/search", post(search))
        .route("/v1/stats", get(stats))
        .route("/healthz", get(ok))
        .route("/readyz", get(ok))
        .with_state(store)
}
