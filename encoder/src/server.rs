//! The `redrec encoder` HTTP service over in-process [`Towers`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::Method;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use redrec_wire::auth::{self, Guard, Route};
use redrec_wire::{with_fallbacks, HttpError, Json};

use crate::api::{
    self, EncodeItemsRequest, EncodeItemsResponse, EncodeUsersRequest, EncodeUsersResponse,
    EncoderStats, MAX_BATCH,
};
use crate::error::EncoderError;
use crate::manifest::Manifest;
use crate::service::Towers;
use crate::tower::UserHistory;

/// The HTTP answer for an encoder error, the same from the encoder service and a router.
pub fn http_error(e: EncoderError) -> HttpError {
    match e {
        EncoderError::Input(m) => HttpError::bad_request("invalid_input", m),
        e @ EncoderError::Unavailable(_) => HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "encoder_unavailable",
            e.to_string(),
        ),
        EncoderError::Overloaded(m) => HttpError::overloaded("overloaded", m, 1),
        e @ EncoderError::DeadlineExceeded => HttpError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            e.to_string(),
        ),
        other => HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoder_error",
            other.to_string(),
        ),
    }
}

fn check_batch(n: usize) -> Result<(), HttpError> {
    if n > MAX_BATCH {
        return Err(HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("at most {MAX_BATCH} per request"),
        ));
    }
    Ok(())
}

fn deadline(timeout_ms: Option<u64>) -> Option<Instant> {
    timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms))
}

async fn items(
    State(towers): State<Arc<Towers>>,
    Json(r): Json<EncodeItemsRequest>,
) -> Result<axum::Json<EncodeItemsResponse>, HttpError> {
    check_batch(r.texts.len())?;
    let vectors = towers
        .encode_items(r.texts, deadline(r.timeout_ms))
        .await
        .map_err(http_error)?;
    Ok(axum::Json(EncodeItemsResponse {
        vectors,
        model_version: towers.manifest().model_version.clone(),
    }))
}

async fn users(
    State(towers): State<Arc<Towers>>,
    Json(r): Json<EncodeUsersRequest>,
) -> Result<axum::Json<EncodeUsersResponse>, HttpError> {
    check_batch(r.users.len())?;
    let m = towers.manifest();
    let histories = r
        .users
        .into_iter()
        .enumerate()
        .map(|(i, u)| {
            let scenarios = u
                .scenarios
                .iter()
                .map(|s| {
                    m.scenario_index(s).map(|i| i as i64).ok_or_else(|| {
                        HttpError::bad_request(
                            "unknown_scenario",
                            format!("unknown scenario {s:?}; known: {:?}", m.scenarios),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let vectors = u
                .into_vectors(m.dim)
                .map_err(|e| HttpError::bad_request("invalid_input", format!("user {i}: {e}")))?;
            Ok(UserHistory { vectors, scenarios })
        })
        .collect::<Result<Vec<_>, HttpError>>()?;
    let queries = towers
        .encode_users(histories, deadline(r.timeout_ms))
        .await
        .map_err(http_error)?;
    let (queries, queries_b64) = if r.packed {
        let packed = queries
            .iter()
            .map(|user| api::pack(user.iter().map(Vec::as_slice)))
            .collect();
        (Vec::new(), packed)
    } else {
        (queries, Vec::new())
    };
    Ok(axum::Json(EncodeUsersResponse {
        queries,
        queries_b64,
        model_version: m.model_version.clone(),
    }))
}

async fn manifest(State(towers): State<Arc<Towers>>) -> axum::Json<Manifest> {
    axum::Json(towers.manifest().clone())
}

async fn stats(State(towers): State<Arc<Towers>>) -> axum::Json<EncoderStats> {
    let cfg = towers.batch_config();
    let (items, users) = towers.queued();
    axum::Json(EncoderStats {
        model_version: towers.manifest().model_version.clone(),
        device: towers.encoder().device(),
        sessions: towers.encoder().sessions(),
        batching: cfg.enabled,
        max_batch: cfg.max_batch,
        max_wait_us: cfg.max_wait.as_micros() as u64,
        queue_rows: cfg.queue_rows,
        queued_item_rows: items.queued_rows,
        queued_user_rows: users.queued_rows,
        packed: true,
    })
}

async fn ok() -> &'static str {
    "ok"
}

/// Every route of the encoder's API (internal: the cluster credential), with who may
/// call it.
pub fn routes() -> Vec<Route<Arc<Towers>>> {
    let mut routes = auth::internal(vec![
        (Method::POST, "/v1/encode/items", post(items)),
        (Method::POST, "/v1/encode/users", post(users)),
        (Method::GET, "/v1/manifest", get(manifest)),
        (Method::GET, "/v1/stats", get(stats)),
    ]);
    routes.extend(auth::probes(get(ok)));
    routes.push(redrec_wire::metrics::route());
    routes
}

/// The encoder's API over `towers`, checked by `guard`.
pub fn router(towers: Arc<Towers>, guard: &Guard) -> Router {
    let api = auth::build(routes(), guard)
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(towers);
    with_fallbacks(api).layer(axum::middleware::from_fn(redrec_wire::metrics::record))
}
