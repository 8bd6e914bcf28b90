//! Reaching the towers either in-process or over the encoder's HTTP API, through one type.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    EncodeItemsRequest, EncodeItemsResponse, EncodeUsersRequest, EncodeUsersResponse, UserInput,
};
use crate::manifest::Manifest;
use crate::service::Towers;
use crate::tower::UserHistory;
use crate::EncoderError;

#[derive(Clone)]
pub struct EncoderClient {
    addr: String,
    http: reqwest::Client,
    manifest: Arc<Manifest>,
    timeout: Duration,
}

impl EncoderClient {
    /// Connects to `addr` and reads its manifest.
    pub async fn connect(
        addr: &str,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Result<Self, EncoderError> {
        let addr = addr.trim_end_matches('/').to_string();
        let manifest = http
            .get(format!("{addr}/v1/manifest"))
            .timeout(timeout)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| EncoderError::Unavailable(format!("{addr}: {e}")))?
            .json::<Manifest>()
            .await
            .map_err(|e| EncoderError::Unavailable(format!("{addr}: manifest: {e}")))?;
        Ok(Self {
            addr,
            http,
            manifest: Arc::new(manifest),
            timeout,
        })
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        deadline: Option<Instant>,
    ) -> Result<T, EncoderError> {
        let timeout = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .map_or(self.timeout, |left| left.min(self.timeout));
        let resp = self
            .http
            .post(format!("{}{path}", self.addr))
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    EncoderError::DeadlineExceeded
                } else {
                    EncoderError::Unavailable(format!("{}: {e}", self.addr))
                }
            })?;
        let status = resp.status();
        if status.is_client_error() {
            let text = resp.text().await.unwrap_or_default();
            return Err(EncoderError::Input(text));
        }
        if status == reqwest::StatusCode::GATEWAY_TIMEOUT {
            return Err(EncoderError::DeadlineExceeded);
        }
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && resp.headers().contains_key(reqwest::header::RETRY_AFTER)
        {
            return Err(EncoderError::Overloaded(format!(
                "{} is shedding load",
                self.addr
            )));
        }
        if !status.is_success() {
            return Err(EncoderError::Unavailable(format!(
                "{} answered {status}",
                self.addr
            )));
        }
        resp.json()
            .await
            .map_err(|e| EncoderError::Unavailable(format!("{}: {e}", self.addr)))
    }
}

fn timeout_ms(deadline: Option<Instant>) -> Option<u64> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64)
}

/// An encoder in this process or behind HTTP; callers cannot tell the difference.
#[derive(Clone)]
pub enum EncoderHandle {
    Local(Arc<Towers>),
    Remote(EncoderClient),
}

impl EncoderHandle {
    pub fn manifest(&self) -> &Manifest {
        match self {
            Self::Local(t) => t.manifest(),
            Self::Remote(c) => &c.manifest,
        }
    }

    /// Item texts -> vectors; `deadline` bounds the wait (queue included).
    pub async fn encode_items(
        &self,
        texts: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<f32>>, EncoderError> {
        match self {
            Self::Local(t) => t.encode_items(texts, deadline).await,
            Self::Remote(c) => {
                let body = EncodeItemsRequest {
                    texts,
                    timeout_ms: timeout_ms(deadline),
                };
                let r: EncodeItemsResponse = c.post("/v1/encode/items", &body, deadline).await?;
                Ok(r.vectors)
            }
        }
    }

    /// Histories -> Q query vectors each; `deadline` bounds the wait (queue included).
    pub async fn encode_users(
        &self,
        users: Vec<UserHistory>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<Vec<f32>>>, EncoderError> {
        match self {
            Self::Local(t) => t.encode_users(users, deadline).await,
            Self::Remote(c) => {
                let names = &c.manifest.scenarios;
                let users = users
                    .into_iter()
                    .map(|u| {
                        let scenarios = u
                            .scenarios
                            .iter()
                            .map(|&s| names.get(s as usize).cloned().unwrap_or_default())
                            .collect();
                        UserInput::packed(&u.vectors, scenarios)
                    })
                    .collect();
                let body = EncodeUsersRequest {
                    users,
                    packed: true,
                    timeout_ms: timeout_ms(deadline),
                };
                let r: EncodeUsersResponse = c.post("/v1/encode/users", &body, deadline).await?;
                r.into_queries(c.manifest.dim)
                    .map_err(|e| EncoderError::Unavailable(format!("{}: answer: {e}", c.addr)))
            }
        }
    }
}
