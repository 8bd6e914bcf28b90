//! The shard's internal HTTP API: a lone shard's ([`lone`]), or a node's, which serves its
//! replicas' points and searches ([`groups`]), administration and status ([`admin`]), and
//! the Raft transport.

mod admin;
mod error;
mod groups;
mod lone;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use redrec_wire::with_fallbacks;

use crate::node::Node;
use crate::raft::transport;
use crate::store::VectorStore;

/// Internal requests carry batches of vectors: allow more than the public API does.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The API of a lone shard over `store`.
pub fn lone(store: Arc<dyn VectorStore>) -> Router {
    with_fallbacks(lone::routes(store).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)))
}

/// The API of a shard node: the same point and search calls under `/v1/groups/{g}/…`
/// (writes go through the group's log and are acknowledged once a majority committed them
/// and the leader applied them), replica status and digests, slot moves, the cluster map,
/// membership administration, and the Raft transport.
pub fn node(node: Arc<Node>) -> Router {
    let api = groups::routes()
        .merge(admin::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(node.clone());
    with_fallbacks(api.merge(transport::routes(node.inbox.clone())))
}
