//! `redrec router` start-up: the towers (a remote encoder, or in this process), the
//! cluster view (lone shards, fixed Raft groups, or the meta group's map), the app.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use redrec_encoder::{EncoderClient, EncoderHandle, TowersConfig};
use redrec_shard_api::map::MetaCommand;
use redrec_wire::ServeOptions;

use crate::cluster::{Cluster, ClusterView};
use crate::config::RouterConfig;
use crate::qdrant::QdrantBackend;
use crate::state::RouterInner;
use redrec_qdrant::{QdrantItems, QdrantSettings};

/// Where the router finds the towers.
pub enum Towers {
    /// An encoder service at this address.
    Remote(String),
    /// Run here.
    Local(TowersConfig),
}

/// Which shard groups the router talks to.
pub enum Topology {
    /// Lone (unreplicated) shards, one group each.
    Lone(Vec<String>),
    /// Raft groups 0, 1, …: the addresses of the nodes hosting each one's replicas.
    Groups(Vec<Vec<String>>),
    /// The cluster map of the meta group whose members listen here, followed as it moves.
    Meta(Vec<String>),
    /// A collection on a Qdrant server or cluster (its vector size set from the towers).
    Qdrant(Box<QdrantSettings>),
}

/// Serves the public API until SIGINT or SIGTERM.
pub async fn serve(
    listen: SocketAddr,
    towers: Towers,
    topology: Topology,
    cfg: RouterConfig,
    options: ServeOptions,
) -> Result<()> {
    let http = redrec_wire::http_client(cfg.cluster_token.as_ref(), cfg.tls_ca.as_deref())?;
    let encoder = match towers {
        Towers::Remote(addr) => EncoderHandle::Remote(
            EncoderClient::connect(&addr, http.clone(), Duration::from_secs(30))
                .await
                .context("connecting to the encoder")?,
        ),
        Towers::Local(t) => EncoderHandle::Local(t.start().await?),
    };
    let mut qdrant = None;
    let cluster = match topology {
        Topology::Qdrant(mut settings) => {
            settings.dim = encoder.manifest().dim;
            let items = QdrantItems::open(*settings)
                .await
                .map_err(anyhow::Error::msg)?;
            qdrant = Some(QdrantBackend::start(items).await);
            Arc::new(ClusterView::fixed(
                Cluster::fixed(&[], http.clone(), &cfg.reads),
                http,
            ))
        }
        Topology::Meta(meta) => {
            let view = ClusterView::from_meta(
                meta,
                http.clone(),
                cfg.reads.clone(),
                Duration::from_secs(60),
            )
            .await?;
            let view = Arc::new(view);
            view.spawn_refresher(Duration::from_secs(1));
            register_model(&view, &encoder, &http).await;
            view
        }
        Topology::Lone(shards) => Arc::new(ClusterView::fixed(
            Cluster::fixed(&shards, http.clone(), &cfg.reads),
            http,
        )),
        Topology::Groups(groups) => {
            if let Some(i) = groups.iter().position(Vec::is_empty) {
                bail!("--group number {i} names no replica");
            }
            Arc::new(ClusterView::fixed(
                Cluster::replicated(&groups, http.clone(), &cfg.reads),
                http,
            ))
        }
    };
    let mut inner = RouterInner::new(encoder, cluster, cfg);
    inner.qdrant = qdrant;
    let state = Arc::new(inner);
    redrec_wire::serve("router", listen, crate::server::app(state), options).await?;
    Ok(())
}

/// Records the towers' model version in the cluster map when it has none, and warns when
/// it names another: every router of a cluster must serve the towers its items were
/// encoded with.
async fn register_model(view: &ClusterView, encoder: &EncoderHandle, http: &reqwest::Client) {
    let version = encoder.manifest().model_version.clone();
    match view
        .get()
        .map
        .as_ref()
        .and_then(|m| m.model_version.clone())
    {
        Some(v) if v == version => {}
        Some(v) => tracing::warn!(
            map = %v,
            towers = %version,
            "the cluster map names other towers than this router serves"
        ),
        None => {
            let cmd = MetaCommand::SetModelVersion { version };
            if let Err(e) = redrec_shard_api::meta::propose(http, view.meta_addrs(), &cmd).await {
                tracing::warn!("recording the model version in the cluster map: {e}");
            }
        }
    }
}
