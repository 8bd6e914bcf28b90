//! The API of a lone (unreplicated) shard: points and searches on one store, `/v1/…`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Method;
use axum::routing::{get, post};
use redrec_shard_api::points::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, SearchRequest, SearchResponse, Stats,
    UpsertRequest, UpsertResponse,
};
use redrec_shard_api::slots::WriteResponse;
use redrec_shard_api::users::{EventsRequest, UsersRequest, UsersResponse};
use redrec_wire::auth::{self, Route};
use redrec_wire::compact::{Body, Encoded};
use redrec_wire::Json;

use super::answer::SearchAnswer;
use super::error::{blocking, searching, within_budget, ApiError, Reply};
use crate::budget::MemoryBudget;
use crate::store::VectorStore;

/// A lone shard: its store, its users' histories and the memory budget it keeps within.
#[derive(Clone)]
pub struct Lone {
    pub store: Arc<dyn VectorStore>,
    pub users: Arc<dyn VectorStore>,
    pub budget: MemoryBudget,
}

type Shared = Lone;

async fn upsert(State(s): State<Shared>, Json(r): Json<UpsertRequest>) -> Reply<UpsertResponse> {
    let (store, budget, n) = (s.store.clone(), s.budget, r.points.len());
    within_budget(move || crate::budget::admit(&budget, [&store], n)).await?;
    blocking(s.store, move |st| {
        st.upsert(r.points)
            .map(|upserted| UpsertResponse { upserted })
    })
    .await
}

async fn delete(State(s): State<Shared>, Json(r): Json<DeleteRequest>) -> Reply<DeleteResponse> {
    blocking(s.store, move |st| {
        st.delete(&r.ids).map(|deleted| DeleteResponse { deleted })
    })
    .await
}

async fn get_points(State(s): State<Shared>, Json(r): Json<GetRequest>) -> Reply<GetResponse> {
    blocking(s.store, move |st| {
        st.get(&r.ids, r.with_vector)
            .map(|points| GetResponse { points })
    })
    .await
}

async fn search(
    State(s): State<Shared>,
    Body(r, format): Body<SearchRequest>,
) -> Result<Encoded<SearchAnswer>, ApiError> {
    let axum::Json(answer) = searching(s.store, move |st| {
        st.search(&r).map(|results| SearchResponse { results })
    })
    .await?;
    Ok(Encoded(SearchAnswer::new(answer, format), format))
}

async fn add_events(State(s): State<Shared>, Json(r): Json<EventsRequest>) -> Reply<WriteResponse> {
    blocking(s.users, move |st| {
        crate::users::add(st, r.events, r.keep).map(|written| WriteResponse { written })
    })
    .await
}

async fn histories(State(s): State<Shared>, Json(r): Json<UsersRequest>) -> Reply<UsersResponse> {
    blocking(s.users, move |st| {
        crate::users::histories(st, &r.ids).map(|users| UsersResponse { users })
    })
    .await
}

async fn forget_users(
    State(s): State<Shared>,
    Json(r): Json<UsersRequest>,
) -> Reply<WriteResponse> {
    blocking(s.users, move |st| {
        st.delete(&r.ids).map(|written| WriteResponse { written })
    })
    .await
}

async fn stats(State(s): State<Shared>) -> Reply<Stats> {
    blocking(s.store, |st| st.stats()).await
}

async fn ok() -> &'static str {
    "ok"
}

/// The routes of a lone shard's API (internal: the cluster credential).
pub fn routes() -> Vec<Route<Shared>> {
    let mut routes = auth::internal(vec![
        (Method::POST, "/v1/points/upsert", post(upsert)),
        (Method::POST, "/v1/points/delete", post(delete)),
        (Method::POST, "/v1/points/get", post(get_points)),
        (Method::POST, "/v1/search", post(search)),
        (Method::GET, "/v1/stats", get(stats)),
        (Method::POST, "/v1/events", post(add_events)),
        (Method::POST, "/v1/users/get", post(histories)),
        (Method::POST, "/v1/users/delete", post(forget_users)),
    ]);
    routes.extend(auth::probes(get(ok)));
    routes
}
