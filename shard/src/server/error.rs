//! The shard API's errors, mapped once to a status, a code from
//! [`redrec_shard_api::codes`] and the JSON error body; a `not_leader` answer also names
//! the leader in [`LEADER_HEADER`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use redrec_shard_api::codes::{
    INTERNAL, INVALID_REQUEST, LEADER_HEADER, MEMORY_BUDGET, NOT_LEADER, OUTCOME_UNKNOWN,
    REPLICA_STOPPED, SEARCH_WAIT_HEADER, STORAGE_ERROR,
};
use redrec_wire::HttpError;
use tokio::sync::Semaphore;

use crate::node::Node;
use crate::raft::replica::ProposeError;
use crate::store::{StoreError, VectorStore};

pub struct ApiError {
    error: HttpError,
    leader: Option<String>,
}

impl From<HttpError> for ApiError {
    fn from(error: HttpError) -> Self {
        Self {
            error,
            leader: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadRequest(m) => HttpError::bad_request(INVALID_REQUEST, m),
            StoreError::Engine(m) => {
                HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, STORAGE_ERROR, m)
            }
        }
        .into()
    }
}

impl ApiError {
    /// The error as its answer would carry it (without the leader header).
    pub fn into_http(self) -> HttpError {
        self.error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        if let Some(v) = self.leader.and_then(|l| HeaderValue::from_str(&l).ok()) {
            headers.insert(LEADER_HEADER, v);
        }
        (headers, self.error).into_response()
    }
}

pub type Reply<T> = Result<axum::Json<T>, ApiError>;

pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
    HttpError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).into()
}

/// What a proposal to group `g` on `node` failed with, as the API says it.
pub fn propose_error(node: &Node, g: u64, e: ProposeError) -> ApiError {
    match e {
        ProposeError::NotLeader(_) => ApiError {
            error: HttpError::new(
                StatusCode::MISDIRECTED_REQUEST,
                NOT_LEADER,
                format!("node {} does not lead group {g}", node.id),
            ),
            leader: node.leader_addr(g),
        },
        ProposeError::Rejected(m) => HttpError::bad_request(INVALID_REQUEST, m).into(),
        ProposeError::Unknown(m) | ProposeError::Timeout(m) => unavailable(
            OUTCOME_UNKNOWN,
            format!("the write may or may not have been applied ({m}); retrying is safe"),
        ),
        ProposeError::Stopped => unavailable(REPLICA_STOPPED, "the replica has stopped"),
        ProposeError::Refused { code, message } => {
            HttpError::new(StatusCode::CONFLICT, code, format!("group {g} {message}")).into()
        }
    }
}

/// Runs a memory budget check off the async workers (it reads every store's figures);
/// no room is a 507.
pub async fn within_budget(
    check: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<(), ApiError> {
    match tokio::task::spawn_blocking(check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(m)) => {
            Err(HttpError::new(StatusCode::INSUFFICIENT_STORAGE, MEMORY_BUDGET, m).into())
        }
        Err(e) => {
            Err(HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL, e.to_string()).into())
        }
    }
}

/// Searches running at once in this process: one per CPU it may use. More would not
/// finish sooner, only take turns on the same cores and evict each other's graphs and
/// vectors from the caches (a node under load ran one blocking thread per group and
/// request in flight); the others wait their turn, in order, without holding a thread.
static SEARCH_TURNS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())));

/// How long the latest search to get one of [`SEARCH_TURNS`] waited for it, in
/// microseconds.
static LAST_WAIT_US: AtomicU64 = AtomicU64::new(0);

/// `f`, searches, off the async workers once one of the process's search turns is free.
pub async fn on_a_search_turn<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let asked = Instant::now();
    let _turn = SEARCH_TURNS
        .acquire()
        .await
        .expect("the search turns are never closed");
    LAST_WAIT_US.store(asked.elapsed().as_micros() as u64, Ordering::Relaxed);
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL, e.to_string()).into()
    })
}

/// Search turns no search holds now.
pub fn search_turns_free() -> usize {
    SEARCH_TURNS.available_permits()
}

/// A search (`f` on `store`) off the async workers, once one of the process's search
/// turns is free.
pub async fn searching<T: Send + 'static>(
    store: Arc<dyn VectorStore>,
    f: impl FnOnce(&dyn VectorStore) -> Result<T, StoreError> + Send + 'static,
) -> Reply<T> {
    let found = on_a_search_turn(move || f(store.as_ref())).await?;
    found.map(axum::Json).map_err(ApiError::from)
}

/// A search answer with [`SEARCH_WAIT_HEADER`].
pub type Queued<T> = ([(&'static str, String); 1], T);

/// `answer`, saying how long the latest search waited for its turn.
pub fn queued<T>(answer: T) -> Queued<T> {
    let waited = LAST_WAIT_US.load(Ordering::Relaxed);
    ([(SEARCH_WAIT_HEADER, waited.to_string())], answer)
}

/// Runs a store call off the async workers: the engine's calls block.
pub async fn blocking<T: Send + 'static>(
    store: Arc<dyn VectorStore>,
    f: impl FnOnce(&dyn VectorStore) -> Result<T, StoreError> + Send + 'static,
) -> Reply<T> {
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(r) => r.map(axum::Json).map_err(ApiError::from),
        Err(e) => {
            Err(HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL, e.to_string()).into())
        }
    }
}
