//! A node's administration and status: the cluster map it holds and changes to it (on
//! the meta leader), replica membership changes, the node's status, and readiness.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use redrec_shard_api::codes::{
    FAULT_INJECTION_OFF, INTERNAL, INTERNAL_COMMAND, INVALID_ACTION, INVALID_FAULT_PLAN,
    MISSING_ADDR, NOT_A_META_MEMBER, NOT_READY, NO_CLUSTER_MAP,
};
use redrec_shard_api::faults::{FaultPlan, FAULTS_PATH};
use redrec_shard_api::map::{ClusterMap, MetaCommand, META_GROUP};
use redrec_shard_api::meta::{COMMANDS_PATH, MAP_PATH};
use redrec_shard_api::points::Memory;
use redrec_shard_api::status::{GroupStatus, MembershipRequest, NodeStatus};
use redrec_wire::auth::{self, Route};
use redrec_wire::{HttpError, Json, Path};

use super::error::{propose_error, unavailable, Reply};
use super::groups::group;
use crate::node::Node;

type Shared = Arc<Node>;

/// The cluster map this node holds (a meta member's replica, else the last fetched).
async fn meta_map(State(node): State<Shared>) -> Reply<ClusterMap> {
    node.map().map(axum::Json).ok_or_else(|| {
        unavailable(
            NO_CLUSTER_MAP,
            format!("node {} has no cluster map yet", node.id),
        )
    })
}

/// Administrative changes to the cluster map (on the meta leader).
async fn meta_command(
    State(node): State<Shared>,
    Json(cmd): Json<MetaCommand>,
) -> Reply<serde_json::Value> {
    if cmd.internal() {
        return Err(HttpError::bad_request(
            INTERNAL_COMMAND,
            "this map change is a step of the meta leader's own work",
        )
        .into());
    }
    if node.meta().is_none() {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            NOT_A_META_MEMBER,
            format!("node {} hosts no meta replica", node.id),
        )
        .into());
    }
    let version = node
        .propose_meta(&cmd)
        .await
        .map_err(|e| propose_error(&node, META_GROUP, e))?;
    Ok(axum::Json(serde_json::json!({ "version": version })))
}

async fn membership(
    State(node): State<Shared>,
    Path(g): Path<u64>,
    Json(r): Json<MembershipRequest>,
) -> Reply<GroupStatus> {
    let add = match r.action.as_str() {
        "add" => true,
        "remove" => false,
        other => {
            return Err(HttpError::bad_request(
                INVALID_ACTION,
                format!("action {other:?}: expected \"add\" or \"remove\""),
            )
            .into())
        }
    };
    if add && r.addr.as_deref().is_none_or(str::is_empty) {
        return Err(HttpError::bad_request(
            MISSING_ADDR,
            "adding a replica needs the address of its node",
        )
        .into());
    }
    node.change_membership(g, add, r.node, r.addr)
        .await
        .map_err(|e| propose_error(&node, g, e))?;
    Ok(axum::Json(group(&node, g)?.status()))
}

async fn node_status(State(node): State<Shared>) -> Reply<NodeStatus> {
    let status = tokio::task::spawn_blocking(move || {
        let groups: Vec<GroupStatus> = node.groups().iter().map(|g| g.status()).collect();
        let stores = groups.iter().filter_map(|g| g.store.as_ref());
        let (mut points, mut memory) = (0, Memory::default());
        for s in stores {
            points += s.points;
            memory += s.memory;
        }
        NodeStatus {
            node: node.id,
            addr: node.advertise.clone(),
            ready: node.ready(),
            groups,
            points,
            memory,
            budget: node.budget().limit,
            rss_bytes: crate::budget::rss_bytes(),
        }
    })
    .await
    .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL, e.to_string()))?;
    Ok(axum::Json(status))
}

async fn readyz(State(node): State<Shared>) -> Response {
    let lagging: Vec<u64> = node
        .groups()
        .iter()
        .filter(|g| !g.caught_up())
        .map(|g| g.id)
        .collect();
    if lagging.is_empty() {
        return "ready".into_response();
    }
    HttpError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        NOT_READY,
        format!("replicas of groups {lagging:?} have not caught up"),
    )
    .into_response()
}

/// Sets the node's fault plan (refused unless the node allows fault injection).
async fn set_faults(State(node): State<Shared>, Json(plan): Json<FaultPlan>) -> Reply<FaultPlan> {
    let status = match node.faults.allowed() {
        true => (StatusCode::BAD_REQUEST, INVALID_FAULT_PLAN),
        false => (StatusCode::FORBIDDEN, FAULT_INJECTION_OFF),
    };
    node.faults
        .set(plan.clone())
        .map(|()| axum::Json(plan))
        .map_err(|m| HttpError::new(status.0, status.1, m).into())
}

/// The administration and status routes of a node's API (internal: the cluster
/// credential; health and readiness open).
pub fn routes() -> Vec<Route<Shared>> {
    let mut routes = auth::internal(vec![
        (Method::GET, MAP_PATH, get(meta_map)),
        (Method::POST, COMMANDS_PATH, post(meta_command)),
        (
            Method::POST,
            "/admin/v1/groups/{g}/replicas",
            post(membership),
        ),
        (Method::GET, "/v1/node", get(node_status)),
        (Method::POST, FAULTS_PATH, post(set_faults)),
    ]);
    routes.extend(auth::probes(get(readyz)));
    routes
}
