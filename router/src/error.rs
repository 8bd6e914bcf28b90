//! The router's errors, mapped once to an HTTP status and the JSON error body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use redrec_encoder::EncoderError;
use redrec_shard_api::codes::MEMORY_BUDGET;
use redrec_shard_api::ShardClientError;
use redrec_wire::HttpError;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The client's mistake: a 400 with a stable code.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    /// Shards needed for the answer did not answer.
    #[error("{0}")]
    ShardsUnavailable(String),
    /// A shard's memory budget has no room for the write.
    #[error("{0}")]
    OverBudget(String),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
}

impl RouterError {
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }
}

impl From<ShardClientError> for RouterError {
    fn from(e: ShardClientError) -> Self {
        match &e {
            ShardClientError::Rejected { code, message, .. } if code == MEMORY_BUDGET => {
                Self::OverBudget(message.clone())
            }
            ShardClientError::Rejected {
                status, message, ..
            } if (400..500).contains(status) => Self::bad("invalid_request", message.clone()),
            _ => Self::ShardsUnavailable(e.to_string()),
        }
    }
}

impl IntoResponse for RouterError {
    fn into_response(self) -> Response {
        let e = match self {
            Self::BadRequest { code, message } => HttpError::bad_request(code, message),
            Self::NotFound(m) => HttpError::new(StatusCode::NOT_FOUND, "not_found", m),
            Self::TooLarge(m) => HttpError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_many_items", m),
            Self::ShardsUnavailable(m) => {
                HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "shard_unavailable", m)
            }
            Self::OverBudget(m) => {
                HttpError::new(StatusCode::INSUFFICIENT_STORAGE, MEMORY_BUDGET, m)
            }
            // Mapped as the encoder service maps them, in-process or remote alike.
            Self::Encoder(e) => {
                let e = redrec_encoder::server::http_error(e);
                metrics::counter!("redrec_encoder_errors_total", "code" => e.code).increment(1);
                e
            }
        };
        e.into_response()
    }
}
