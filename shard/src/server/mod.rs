//! The shard's internal HTTP API: a lone shard's ([`lone`]), or a node's, which serves its
//! replicas' points and searches ([`groups`]), administration and status ([`admin`]), and
//! the Raft transport.

mod admin;
mod answer;
mod error;
mod groups;
mod lone;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use redrec_wire::auth::{self, Guard};
use redrec_wire::with_fallbacks;

use crate::budget::MemoryBudget;
use crate::node::Node;
use crate::raft::transport;
use crate::store::VectorStore;

/// Internal requests carry batches of vectors: allow more than the public API does.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

pub use admin::routes as admin_routes;
pub use groups::routes as group_routes;
pub use lone::routes as lone_routes;

/// The API of a lone shard over `store` (and `users`' histories) within `budget`, checked
/// by `guard`.
pub fn lone(
    store: Arc<dyn VectorStore>,
    users: Arc<dyn VectorStore>,
    budget: MemoryBudget,
    guard: &Guard,
) -> Router {
    let mut routes = lone::routes();
    routes.push(redrec_wire::metrics::route());
    let api = auth::build(routes, guard)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(lone::Lone {
            store,
            users,
            budget,
        });
    with_fallbacks(api).layer(axum::middleware::from_fn(redrec_wire::metrics::record))
}

/// The API of a shard node: the same point and search calls under `/v1/groups/{g}/…`
/// (writes go through the group's log and are acknowledged once a majority committed them
/// and the leader applied them), replica status and digests, slot moves, the cluster map,
/// membership administration, and the Raft transport.
/// Every route is checked by `guard`.
pub fn node(node: Arc<Node>, guard: &Guard) -> Router {
    let mut admin = admin::routes();
    admin.push(redrec_wire::metrics::route());
    let api = auth::build(groups::routes(), guard)
        .merge(auth::build(admin, guard))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(node.clone());
    with_fallbacks(api.merge(transport::router(node.inbox.clone(), guard)))
        .layer(axum::middleware::from_fn(redrec_wire::metrics::record))
}
