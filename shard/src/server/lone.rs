//! The API of a lone (unreplicated) shard: points and searches on one store, `/v1/…`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Method;
use axum::routing::{get, post};
use redrec_shard_api::points::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, SearchRequest, SearchResponse, Stats,
    UpsertRequest, UpsertResponse,
};
use redrec_wire::auth::{Access, Route};
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

/// The routes of a lone shard's API (internal: the cluster credential).
pub fn routes() -> Vec<Route<Shared>> {
    vec![
        Route::new(
            Method::POST,
            "/v1/points/upsert",
            Access::Cluster,
            post(upsert),
        ),
        Route::new(
            Method::POST,
            "/v1/points/delete",
            Access::Cluster,
            post(delete),
        ),
        Route::new(
            Method::POST,
            "/v1/points/get",
            Access::Cluster,
            post(get_points),
        ),
        Route::new(Method::POST, "/v1/search", Access::Cluster, post(search)),
        Route::new(Method::GET, "/v1/stats", Access::Cluster, get(stats)),
        Route::new(Method::GET, "/healthz", Access::Open, get(ok)),
        Route::new(Method::GET, "/readyz", Access::Open, get(ok)),
    ]
}
