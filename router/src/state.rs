//! What every request handler shares: the towers, the cluster view, the settings and
//! the cache of users' query vectors.

use std::sync::Arc;

use redrec_encoder::EncoderHandle;

use crate::cluster::ClusterView;
use crate::config::RouterConfig;
use crate::qdrant::QdrantBackend;
use crate::user_cache::UserCache;

pub struct RouterInner {
    pub encoder: EncoderHandle,
    pub cluster: Arc<ClusterView>,
    pub cfg: RouterConfig,
    pub users: UserCache,
    /// Items on a Qdrant server or cluster instead of shard groups (`cluster` then has
    /// no groups).
    pub qdrant: Option<Arc<QdrantBackend>>,
}

impl RouterInner {
    pub fn new(encoder: EncoderHandle, cluster: Arc<ClusterView>, cfg: RouterConfig) -> Self {
        Self {
            users: UserCache::new(cfg.user_cache_capacity, cfg.user_cache_ttl),
            encoder,
            cluster,
            cfg,
            qdrant: None,
        }
    }
}

pub type RouterState = Arc<RouterInner>;
