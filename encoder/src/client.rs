//! Reaching the towers either in-process or over the encoder's HTTP API, through one type.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    EncodeItemsRequest, EncodeItemsResponse, EncodeUsersRequest, EncodeUsersResponse, UserInput,
};
use crate::manifest::Manifest;
use crate::tower::{Encoder, UserHistory};
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
    ) -> Result<T, EncoderError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.addr))
            .timeout(self.timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| EncoderError::Unavailable(format!("{}: {e}", self.addr)))?;
        let status = resp.status();
        if status.is_client_error() {
            let text = resp.text().await.unwrap_or_default();
            return Err(EncoderError::Input(text));
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

/// An encoder in this process or behind HTTP; callers cannot tell the difference.
#[derive(Clone)]
pub enum EncoderHandle {
    Local(Arc<Encoder>),
    Remote(EncoderClient),
}

impl EncoderHandle {
    pub fn manifest(&self) -> &Manifest {
        match self {
            Self::Local(e) => e.manifest(),
            Self::Remote(c) => &c.manifest,
        }
    }

    pub async fn encode_items(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EncoderError> {
        match self {
            Self::Local(e) => {
                let e = e.clone();
                tokio::task::spawn_blocking(move || e.encode_items(&texts))
                    .await
                    .map_err(|e| EncoderError::Runtime(e.to_string()))?
            }
            Self::Remote(c) => {
                let r: EncodeItemsResponse = c
                    .post("/v1/encode/items", &EncodeItemsRequest { texts })
                    .await?;
                Ok(r.vectors)
            }
        }
    }

    pub async fn encode_users(
        &self,
        users: Vec<UserHistory>,
    ) -> Result<Vec<Vec<Vec<f32>>>, EncoderError> {
        match self {
            Self::Local(e) => {
                let e = e.clone();
                tokio::task::spawn_blocking(move || e.encode_users(&users))
                    .await
                    .map_err(|e| EncoderError::Runtime(e.to_string()))?
            }
            Self::Remote(c) => {
                let names = &c.manifest.scenarios;
                let users = users
                    .into_iter()
                    .map(|u| UserInput {
                        scenarios: u
                            .scenarios
                            .iter()
                            .map(|&s| names.get(s as usize).cloned().unwrap_or_default())
                            .collect(),
                        history: u.vectors,
                    })
                    .collect();
                let r: EncodeUsersResponse = c
                    .post("/v1/encode/users", &EncodeUsersRequest { users })
                    .await?;
                Ok(r.queries)
            }
        }
    }
}
