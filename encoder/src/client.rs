//! Reaching the towers either in-process or over the encoder's HTTP API, through one type.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redrec_wire::error::with_causes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    EncodeItemsRequest, EncodeItemsResponse, EncodeUsersRequest, EncodeUsersResponse, EncoderStats,
    UserInput,
};
use crate::error::EncoderError;
use crate::manifest::Manifest;
use crate::service::Towers;
use crate::tower::UserHistory;

#[derive(Clone)]
pub struct EncoderClient {
    addr: String,
    http: reqwest::Client,
    manifest: Arc<Manifest>,
    timeout: Duration,
    /// The encoder takes packed histories (it says so in `/v1/stats`); else JSON numbers,
    /// so a client newer than its encoder keeps working through a rolling upgrade.
    packed: bool,
}

impl EncoderClient {
    /// Connects to `addr`, reads its manifest and whether it takes packed histories.
    pub async fn connect(
        addr: &str,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Result<Self, EncoderError> {
        let addr = addr.trim_end_matches('/').to_string();
        let get = |path: &'static str| {
            let req = http.get(format!("{addr}{path}")).timeout(timeout).send();
            let addr = &addr;
            async move {
                req.await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| EncoderError::Unavailable(format!("{addr}: {}", with_causes(&e))))
            }
        };
        let (manifest, stats) = tokio::try_join!(get("/v1/manifest"), get("/v1/stats"))?;
        let manifest = manifest.json::<Manifest>().await.map_err(|e| {
            EncoderError::Unavailable(format!("{addr}: manifest: {}", with_causes(&e)))
        })?;
        let packed = stats.json::<EncoderStats>().await.is_ok_and(|s| s.packed);
        Ok(Self {
            addr,
            http,
            manifest: Arc::new(manifest),
            timeout,
            packed,
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
        let req = self.http.post(format!("{}{path}", self.addr));
        let resp = redrec_wire::trace::inject(req)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    EncoderError::DeadlineExceeded
                } else {
                    EncoderError::Unavailable(format!("{}: {}", self.addr, with_causes(&e)))
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
            .map_err(|e| EncoderError::Unavailable(format!("{}: {}", self.addr, with_causes(&e))))
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
                        if c.packed {
                            UserInput::packed(&u.vectors, scenarios)
                        } else {
                            UserInput {
                                history: u.vectors,
                                history_b64: None,
                                scenarios,
                            }
                        }
                    })
                    .collect();
                let body = EncodeUsersRequest {
                    users,
                    packed: c.packed,
                    timeout_ms: timeout_ms(deadline),
                };
                let r: EncodeUsersResponse = c.post("/v1/encode/users", &body, deadline).await?;
                r.into_queries(c.manifest.dim)
                    .map_err(|e| EncoderError::Unavailable(format!("{}: answer: {e}", c.addr)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::BatchConfig;
    use crate::manifest::default_dir;
    use crate::pool::EncoderConfig;
    use crate::tower::Encoder;
    use axum::routing::{get, post};

    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    /// An encoder from before the packed form: `history` is required, unknown fields are
    /// refused, and `/v1/stats` says nothing of packing. Its user tower answers each user
    /// with the user's newest vector, Q times.
    fn older_encoder(manifest: Manifest) -> axum::Router {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct OldUser {
            history: Vec<Vec<f32>>,
            scenarios: Vec<String>,
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct OldRequest {
            users: Vec<OldUser>,
            #[allow(dead_code)]
            timeout_ms: Option<u64>,
        }
        let q = manifest.queries();
        let version = manifest.model_version.clone();
        let stats = serde_json::json!({
            "model_version": version, "device": "cpu", "sessions": 1, "batching": true,
            "max_batch": 128, "max_wait_us": 500, "queue_rows": 8192,
            "queued_item_rows": 0, "queued_user_rows": 0,
        });
        axum::Router::new()
            .route(
                "/v1/manifest",
                get(move || async move { axum::Json(manifest) }),
            )
            .route("/v1/stats", get(move || async move { axum::Json(stats) }))
            .route(
                "/v1/encode/users",
                post(move |axum::Json(r): axum::Json<OldRequest>| async move {
                    let queries: Vec<Vec<Vec<f32>>> = r
                        .users
                        .iter()
                        .map(|u| {
                            assert_eq!(u.history.len(), u.scenarios.len());
                            vec![u.history.last().cloned().unwrap_or_default(); q]
                        })
                        .collect();
                    axum::Json(serde_json::json!({"queries": queries, "model_version": version}))
                }),
            )
    }

    fn histories(dim: usize) -> Vec<UserHistory> {
        (0..3)
            .map(|u| UserHistory {
                vectors: (0..4)
                    .map(|i| {
                        (0..dim)
                            .map(|j| ((u * 7 + i * 3 + j) % 11) as f32 / 11.0 - 0.5)
                            .collect()
                    })
                    .collect(),
                scenarios: vec![0, 1, 2, 0],
            })
            .collect()
    }

    #[tokio::test]
    async fn the_client_speaks_each_encoders_form() {
        let encoder =
            Arc::new(Encoder::load(&default_dir(), &EncoderConfig::with_sessions(1)).unwrap());
        let towers = Arc::new(Towers::new(encoder.clone(), BatchConfig::default()));
        let dim = towers.manifest().dim;
        let users = histories(dim);
        let http = reqwest::Client::new();
        let timeout = Duration::from_secs(10);

        // A current encoder: packed both ways, and the same queries as in-process.
        let addr = serve(crate::server::router(towers.clone(), &Default::default())).await;
        let current = EncoderClient::connect(&addr, http.clone(), timeout)
            .await
            .unwrap();
        assert!(current.packed);
        let remote = EncoderHandle::Remote(current)
            .encode_users(users.clone(), None)
            .await
            .unwrap();
        let local = EncoderHandle::Local(towers)
            .encode_users(users.clone(), None)
            .await
            .unwrap();
        assert_eq!(remote, local);

        // An older encoder: JSON numbers, which it reads.
        let addr = serve(older_encoder(encoder.manifest().clone())).await;
        let older = EncoderClient::connect(&addr, http, timeout).await.unwrap();
        assert!(!older.packed);
        let got = EncoderHandle::Remote(older)
            .encode_users(users.clone(), None)
            .await
            .unwrap();
        let q = encoder.manifest().queries();
        let want: Vec<_> = users
            .iter()
            .map(|u| vec![u.vectors.last().cloned().unwrap(); q])
            .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn an_unreachable_encoder_says_why() {
        // A port nothing listens on: bound, then released.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let e = EncoderClient::connect(
            &format!("http://{addr}"),
            reqwest::Client::new(),
            Duration::from_secs(5),
        )
        .await
        .err()
        .expect("nothing listens there");
        let message = e.to_string().to_lowercase();
        assert!(message.contains("refused"), "{message}");
    }
}
