//! `redrec encoder` start-up, and the towers a router runs in-process: load them from a
//! model directory, start their batchers, serve them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use redrec_wire::auth::Guard;
use redrec_wire::ServeOptions;

use crate::batcher::BatchConfig;
use crate::pool::EncoderConfig;
use crate::service::Towers;
use crate::tower::Encoder;

/// Where the towers come from and how they run.
#[derive(Debug, Clone)]
pub struct TowersConfig {
    /// Directory holding `manifest.json` and the towers.
    pub models: PathBuf,
    pub encoder: EncoderConfig,
    pub batching: BatchConfig,
}

impl TowersConfig {
    /// Loads the towers (blocking work, off the async threads).
    pub async fn load(&self) -> Result<Arc<Encoder>> {
        let (dir, cfg) = (self.models.clone(), self.encoder.clone());
        let encoder = tokio::task::spawn_blocking(move || {
            Encoder::load(&dir, &cfg)
                .with_context(|| format!("loading towers from {}", dir.display()))
        })
        .await??;
        tracing::info!(
            model_version = %encoder.manifest().model_version,
            device = ?encoder.device(),
            sessions = encoder.sessions(),
            "towers loaded"
        );
        Ok(Arc::new(encoder))
    }

    /// Loads the towers and starts their batchers.
    pub async fn start(&self) -> Result<Arc<Towers>> {
        Ok(Arc::new(Towers::new(
            self.load().await?,
            self.batching.clone(),
        )))
    }
}

/// Serves the towers over HTTP until SIGINT or SIGTERM.
pub async fn serve(
    listen: SocketAddr,
    towers: TowersConfig,
    options: ServeOptions,
    guard: Guard,
) -> Result<()> {
    let towers = towers.start().await?;
    let app = crate::server::router(towers, &guard);
    redrec_wire::serve("encoder", listen, app, options).await?;
    Ok(())
}
