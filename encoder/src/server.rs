//! The `redrec encoder` HTTP service over an in-process [`Encoder`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use redrec_wire::{with_fallbacks, HttpError, Json};

use crate::api::{
    EncodeItemsRequest, EncodeItemsResponse, EncodeUsersRequest, EncodeUsersResponse, MAX_BATCH,
};
use crate::manifest::Manifest;
use crate::tower::{Encoder, UserHistory};
use crate::EncoderError;

pub fn http_error(e: EncoderError) -> HttpError {
    match e {
        EncoderError::Input(m) => HttpError::bad_request("invalid_input", m),
        EncoderError::Unavailable(m) => {
            HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "encoder_unavailable", m)
        }
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

async fn run<T: Send + 'static>(
    enc: &Arc<Encoder>,
    f: impl FnOnce(&Encoder) -> Result<T, EncoderError> + Send + 'static,
) -> Result<T, HttpError> {
    let enc = enc.clone();
    tokio::task::spawn_blocking(move || f(&enc))
        .await
        .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(http_error)
}

async fn items(
    State(enc): State<Arc<Encoder>>,
    Json(r): Json<EncodeItemsRequest>,
) -> Result<axum::Json<EncodeItemsResponse>, HttpError> {
    check_batch(r.texts.len())?;
    let version = enc.manifest().model_version.clone();
    let vectors = run(&enc, move |e| e.encode_items(&r.texts)).await?;
    Ok(axum::Json(EncodeItemsResponse {
        vectors,
        model_version: version,
    }))
}

async fn users(
    State(enc): State<Arc<Encoder>>,
    Json(r): Json<EncodeUsersRequest>,
) -> Result<axum::Json<EncodeUsersResponse>, HttpError> {
    check_batch(r.users.len())?;
    let m = enc.manifest();
    let histories = r
        .users
        .into_iter()
        .map(|u| {
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
            Ok(UserHistory {
                vectors: u.history,
                scenarios,
            })
        })
        .collect::<Result<Vec<_>, HttpError>>()?;
    let version = m.model_version.clone();
    let queries = run(&enc, move |e| e.encode_users(&histories)).await?;
    Ok(axum::Json(EncodeUsersResponse {
        queries,
        model_version: version,
    }))
}

async fn manifest(State(enc): State<Arc<Encoder>>) -> axum::Json<Manifest> {
    axum::Json(enc.manifest().clone())
}

async fn ok() -> &'static str {
    "ok"
}

pub fn router(encoder: Arc<Encoder>) -> Router {
    let api = Router::new()
        .route("/v1/encode/items", post(items))
        .route("/v1/encode/users", post(users))
        .route("/v1/manifest", get(manifest))
        .route("/healthz", get(ok))
        .route("/readyz", get(ok))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(encoder);
    with_fallbacks(api)
}
