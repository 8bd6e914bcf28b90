//! The compact internal encoding: MessagePack (`application/msgpack`) for the calls that
//! carry many numbers (a search's query vectors, its ids and scores), where parsing JSON
//! numbers costs more than the search around them. A caller picks it with the request's
//! `Content-Type`; the answer comes back in the encoding the request came in. JSON stays
//! the default everywhere, and errors are always JSON.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{HttpError, Json};

pub const MSGPACK: &str = "application/msgpack";

/// How a body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Msgpack,
}

impl Format {
    /// The format a `Content-Type` header names (JSON unless it says MessagePack).
    pub fn of_content_type(value: Option<&str>) -> Self {
        match value {
            Some(v) if v.starts_with(MSGPACK) => Self::Msgpack,
            _ => Self::Json,
        }
    }
}

/// A request body in JSON or MessagePack, by its `Content-Type`. A body that does not
/// decode answers with the JSON error shape.
pub struct Body<T>(pub T, pub Format);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let format = Format::of_content_type(
            req.headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        if format == Format::Json {
            let Json(v) = Json::<T>::from_request(req, state).await?;
            return Ok(Body(v, format));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            let code = match r.status() {
                StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
                _ => "unreadable_body",
            };
            HttpError::new(r.status(), code, r.body_text())
        })?;
        rmp_serde::from_slice(&bytes)
            .map(|v| Body(v, format))
            .map_err(|e| HttpError::bad_request("malformed_body", e.to_string()))
    }
}

/// An answer encoded as `format` says.
pub struct Encoded<T>(pub T, pub Format);

impl<T: Serialize> IntoResponse for Encoded<T> {
    fn into_response(self) -> Response {
        match self.1 {
            Format::Json => axum::Json(self.0).into_response(),
            Format::Msgpack => match encode(&self.0) {
                Ok(bytes) => ([(CONTENT_TYPE, MSGPACK)], bytes).into_response(),
                Err(e) => HttpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("encoding the answer: {e}"),
                )
                .into_response(),
            },
        }
    }
}

/// MessagePack with field names (so optional and defaulted fields decode as in JSON).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Probe {
        v: Vec<f32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter: Option<serde_json::Value>,
        #[serde(default)]
        k: usize,
    }

    #[test]
    fn optional_and_free_form_fields_round_trip() {
        let with = Probe {
            v: vec![0.25, -1.5],
            filter: Some(serde_json::json!({"must": [{"key": "c", "match": {"value": 3}}]})),
            k: 7,
        };
        assert_eq!(decode::<Probe>(&encode(&with).unwrap()).unwrap(), with);
        let without = Probe {
            v: vec![1.0],
            filter: None,
            k: 0,
        };
        assert_eq!(
            decode::<Probe>(&encode(&without).unwrap()).unwrap(),
            without
        );
        // Smaller than the same in JSON: floats are 5 bytes, not their decimal digits.
        let floats = Probe {
            v: (0..64).map(|i| (i as f32 * 0.731).sin()).collect(),
            filter: None,
            k: 10,
        };
        let json = serde_json::to_vec(&floats).unwrap().len();
        assert!(encode(&floats).unwrap().len() * 2 < json);
    }
}
