//! The towers as a service: an [`Encoder`] behind one dynamic batcher per tower. This is
//! what the HTTP API and an in-process router call.

use std::sync::Arc;
use std::time::Instant;

use crate::batcher::{BatchConfig, BatchStats, Batcher, RunFn};
use crate::error::EncoderError;
use crate::manifest::Manifest;
use crate::tower::{Encoder, UserHistory};

/// Requests with more texts than this are tokenized off the async threads.
const INLINE_TOKENIZE: usize = 16;

pub struct Towers {
    encoder: Arc<Encoder>,
    items: Batcher<Vec<i64>, Vec<f32>>,
    users: Batcher<UserHistory, Vec<Vec<f32>>>,
}

impl Towers {
    /// One batch worker per pooled session and tower.
    pub fn new(encoder: Arc<Encoder>, cfg: BatchConfig) -> Self {
        let workers = encoder.sessions();
        let e = encoder.clone();
        let run_items: Arc<RunFn<Vec<i64>, Vec<f32>>> =
            Arc::new(move |w, rows: &[Vec<i64>]| e.run_items(Some(w), rows));
        let e = encoder.clone();
        let run_users: Arc<RunFn<UserHistory, Vec<Vec<f32>>>> =
            Arc::new(move |w, rows: &[UserHistory]| e.run_users(Some(w), rows));
        Self {
            items: Batcher::start("items", cfg.clone(), workers, run_items),
            users: Batcher::start("users", cfg, workers, run_users),
            encoder,
        }
    }

    pub fn manifest(&self) -> &Manifest {
        self.encoder.manifest()
    }

    pub fn encoder(&self) -> &Arc<Encoder> {
        &self.encoder
    }

    pub fn batch_config(&self) -> &BatchConfig {
        self.items.config()
    }

    /// Rows waiting in the item and user queues.
    pub fn queued(&self) -> (BatchStats, BatchStats) {
        (self.items.stats(), self.users.stats())
    }

    pub async fn encode_items(
        &self,
        texts: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<f32>>, EncoderError> {
        let tokens = if texts.len() <= INLINE_TOKENIZE {
            self.encoder.tokenize(&texts)?
        } else {
            let e = self.encoder.clone();
            tokio::task::spawn_blocking(move || e.tokenize(&texts))
                .await
                .map_err(|e| EncoderError::Runtime(e.to_string()))??
        };
        self.items.submit(tokens, deadline).await
    }

    pub async fn encode_users(
        &self,
        users: Vec<UserHistory>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<Vec<f32>>>, EncoderError> {
        let users = self.encoder.check_users(users)?;
        self.users.submit(users, deadline).await
    }
}
