//! The public HTTP API: routes, cluster status, request metrics.

use std::sync::OnceLock;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::Method;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use redrec_wire::auth::{self, Access, Route, Scope};
use redrec_wire::{with_fallbacks, Json, Path};

use crate::api::{
    ClusterResponse, DeleteResponse, EventsRequest, IngestTextsRequest, IngestVectorsRequest,
    ItemResponse, RecommendRequest, SearchVectorsRequest, UserHistoryResponse,
};
use crate::error::RouterError;
use crate::state::RouterState;
use crate::{ingest, recommend, search, users};

type Reply<T> = Result<axum::Json<T>, RouterError>;

/// A handler for `POST` of a JSON body, answered by `$f(&state, body)` as JSON.
macro_rules! json_post {
    ($f:path, $body:ty) => {
        post(
            |State(s): State<RouterState>, Json(r): Json<$body>| async move {
                $f(&s, r).await.map(axum::Json)
            },
        )
    };
}

async fn get_item(State(s): State<RouterState>, Path(id): Path<String>) -> Reply<ItemResponse> {
    ingest::get_item(&s, id).await.map(axum::Json)
}

async fn delete_item(
    State(s): State<RouterState>,
    Path(id): Path<String>,
) -> Reply<DeleteResponse> {
    ingest::delete_item(&s, id).await.map(axum::Json)
}

async fn user_history(
    State(s): State<RouterState>,
    Path(id): Path<String>,
) -> Reply<UserHistoryResponse> {
    users::history(&s, id).await.map(axum::Json)
}

async fn forget_user(
    State(s): State<RouterState>,
    Path(id): Path<String>,
) -> Reply<DeleteResponse> {
    users::forget(&s, id).await.map(axum::Json)
}

async fn cluster(State(s): State<RouterState>) -> axum::Json<ClusterResponse> {
    axum::Json(crate::survey::cluster(&s).await)
}

async fn metrics_text(State(s): State<RouterState>) -> impl IntoResponse {
    // The shards' figures are gauges: taken now, for this scrape.
    let (shards, nodes) = tokio::join!(crate::survey::shards(&s), crate::survey::nodes(&s));
    crate::survey::record(&shards);
    crate::survey::record_nodes(&nodes);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        redrec_wire::metrics::handle().render(),
    )
}

/// The OpenAPI document, built once.
async fn openapi_json() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(|| {
        serde_json::to_string(&crate::openapi::document()).expect("the document serializes")
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.as_str(),
    )
        .into_response()
}

/// The dashboard: one static page (`ui/index.html`) that reads the API it is served by.
async fn ui() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("ui/index.html"))
}

async fn ok() -> &'static str {
    "ok"
}

/// Every route of the public API, with who may call it.
pub fn routes(open_metrics: bool) -> Vec<Route<RouterState>> {
    use Method as M;
    let (read, write, admin) = (
        Access::Key(Scope::Read),
        Access::Key(Scope::Write),
        Access::Key(Scope::Admin),
    );
    let metrics = if open_metrics { Access::Open } else { admin };
    let recommend = json_post!(recommend::recommend, RecommendRequest);
    let search = json_post!(search::search, SearchVectorsRequest);
    let texts = json_post!(ingest::ingest_texts, IngestTextsRequest);
    let vectors = json_post!(ingest::ingest_vectors, IngestVectorsRequest);
    let events = json_post!(users::add_events, EventsRequest);
    let mut routes = vec![
        Route::new(M::POST, "/v1/recommend", read, recommend),
        Route::new(M::POST, "/v1/search", read, search),
        Route::new(M::POST, "/v1/items", write, texts),
        Route::new(M::POST, "/v1/items/vectors", write, vectors),
        Route::new(M::GET, "/v1/items/{id}", read, get(get_item)),
        Route::new(M::DELETE, "/v1/items/{id}", write, delete(delete_item)),
        Route::new(M::POST, "/v1/events", write, events),
        Route::new(M::GET, "/v1/users/{id}/history", read, get(user_history)),
        Route::new(M::DELETE, "/v1/users/{id}", write, delete(forget_user)),
        Route::new(M::GET, "/v1/cluster", admin, get(cluster)),
        Route::new(M::GET, "/metrics", metrics, get(metrics_text)),
        Route::new(M::GET, "/openapi.json", Access::Open, get(openapi_json)),
        // The page is public; what it reads asks for the key typed into it.
        Route::new(M::GET, "/ui", Access::Open, get(ui)),
    ];
    routes.extend(auth::probes(get(ok)));
    routes
}

pub fn app(state: RouterState) -> Router {
    redrec_wire::metrics::handle();
    let limit = state.cfg.max_body_bytes;
    let guard = &state.cfg.guard;
    let api = auth::build(routes(state.cfg.open_metrics), guard)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state.clone());
    with_fallbacks(api).layer(middleware::from_fn(redrec_wire::metrics::record))
}
