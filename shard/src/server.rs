//! The shard's internal HTTP API over a [`VectorStore`].

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use redrec_wire::{with_fallbacks, HttpError, Json};

use crate::api::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, SearchRequest, SearchResponse, Stats,
    UpsertRequest, UpsertResponse,
};
use crate::store::{StoreError, VectorStore};

/// Internal requests carry batches of vectors: allow more than the public API does.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

impl From<StoreError> for ShardHttpError {
    fn from(e: StoreError) -> Self {
        Self(match e {
            StoreError::BadRequest(m) => HttpError::bad_request("invalid_request", m),
            StoreError::Engine(m) => {
                HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", m)
            }
        })
    }
}

pub struct ShardHttpError(pub HttpError);

impl axum::response::IntoResponse for ShardHttpError {
    fn into_response(self) -> axum::response::Response {
        self.0.into_response()
    }
}

type Shared = Arc<dyn VectorStore>;
type Reply<T> = Result<axum::Json<T>, ShardHttpError>;

/// Runs a store call off the async workers: the engine's calls block.
async fn blocking<T: Send + 'static>(
    store: &Shared,
    f: impl FnOnce(&dyn VectorStore) -> Result<T, StoreError> + Send + 'static,
) -> Reply<T> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(r) => r.map(axum::Json).map_err(ShardHttpError::from),
        Err(e) => Err(ShardHttpError(HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        ))),
    }
}

async fn upsert(State(s): State<Shared>, Json(r): Json<UpsertRequest>) -> Reply<UpsertResponse> {
    blocking(&s, move |st| {
        st.upsert(r.points)
            .map(|upserted| UpsertResponse { upserted })
    })
    .await
}

async fn delete(State(s): State<Shared>, Json(r): Json<DeleteRequest>) -> Reply<DeleteResponse> {
    blocking(&s, move |st| {
        st.delete(&r.ids).map(|deleted| DeleteResponse { deleted })
    })
    .await
}

async fn get_points(State(s): State<Shared>, Json(r): Json<GetRequest>) -> Reply<GetResponse> {
    blocking(&s, move |st| {
        st.get(&r.ids, r.with_vector)
            .map(|points| GetResponse { points })
    })
    .await
}

async fn search(State(s): State<Shared>, Json(r): Json<SearchRequest>) -> Reply<SearchResponse> {
    blocking(&s, move |st| {
        st.search(&r).map(|results| SearchResponse { results })
    })
    .await
}

async fn stats(State(s): State<Shared>) -> Reply<Stats> {
    blocking(&s, |st| st.stats()).await
}

async fn ok() -> &'static str {
    "ok"
}

pub fn router(store: Shared) -> Router {
    let api = Router::new()
        .route("/v1/points/upsert", post(upsert))
        .route("/v1/points/delete", post(delete))
        .route("/v1/points/get", post(get_points))
        .route("/v1/search", post(search))
        .route("/v1/stats", get(stats))
        .route("/healthz", get(ok))
        .route("/readyz", get(ok))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(store);
    with_fallbacks(api)
}

/// The API of a shard node hosting Raft groups: the same point and search calls under
/// `/v1/groups/{g}/…` (writes go through the group's log and are acknowledged once a
/// majority committed them and the leader applied them), replica status and digests,
/// membership administration, and the Raft transport.
pub mod groups {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::extract::{DefaultBodyLimit, Path, State};
    use axum::http::{HeaderMap, HeaderValue, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::Router;
    use redrec_wire::{with_fallbacks, HttpError, Json};

    use super::MAX_BODY_BYTES;
    use crate::api::{
        Consistency, DeleteRequest, DeleteResponse, Digest, DropSlotsRequest, GetRequest,
        GetResponse, MembershipRequest, MigrateRequest, SearchRequest, SearchResponse,
        SetSlotsRequest, Stats, UpsertRequest, UpsertResponse, WriteResponse,
    };
    use crate::meta::{ClusterMap, MetaCommand};
    use crate::raft::driver::ProposeError;
    use crate::raft::machine::Command;
    use crate::raft::node::{Group, GroupStatus, Node, NodeStatus};
    use crate::raft::transport;
    use crate::slots::{slot_of, SlotState};
    use crate::store::{check_points, Page, StoreError, VectorStore};

    /// Header naming the leader's address on a `not_leader` answer.
    pub const LEADER_HEADER: &str = "x-redrec-leader";
    /// Longest a write waits for its entry to commit and apply.
    const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Longest a strong read waits for the ReadIndex round and the apply behind it.
    const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(2);

    type Shared = Arc<Node>;

    pub struct GroupError {
        error: HttpError,
        leader: Option<String>,
    }

    impl From<HttpError> for GroupError {
        fn from(error: HttpError) -> Self {
            Self {
                error,
                leader: None,
            }
        }
    }

    impl From<StoreError> for GroupError {
        fn from(e: StoreError) -> Self {
            super::ShardHttpError::from(e).0.into()
        }
    }

    impl IntoResponse for GroupError {
        fn into_response(self) -> Response {
            let mut headers = HeaderMap::new();
            if let Some(v) = self.leader.and_then(|l| HeaderValue::from_str(&l).ok()) {
                headers.insert(LEADER_HEADER, v);
            }
            (headers, self.error).into_response()
        }
    }

    type Reply<T> = Result<axum::Json<T>, GroupError>;

    fn unavailable(code: &'static str, message: impl Into<String>) -> GroupError {
        HttpError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).into()
    }

    fn propose_error(node: &Node, g: u64, e: ProposeError) -> GroupError {
        match e {
            ProposeError::NotLeader(_) => GroupError {
                error: HttpError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    "not_leader",
                    format!("node {} does not lead group {g}", node.id),
                ),
                leader: node.leader_addr(g),
            },
            ProposeError::Rejected(m) => HttpError::bad_request("invalid_request", m).into(),
            ProposeError::Unknown(m) | ProposeError::Timeout(m) => unavailable(
                "outcome_unknown",
                format!("the write may or may not have been applied ({m}); retrying is safe"),
            ),
            ProposeError::Stopped => unavailable("replica_stopped", "the replica has stopped"),
            ProposeError::WrongSlot {
                moving: true,
                version,
            } => HttpError::new(
                StatusCode::CONFLICT,
                "slot_moving",
                format!(
                    "group {g} is moving some of these items' slots (map version {version}); \
                     retry shortly"
                ),
            )
            .into(),
            ProposeError::WrongSlot {
                moving: false,
                version,
            } => HttpError::new(
                StatusCode::CONFLICT,
                "wrong_slot",
                format!(
                    "group {g} does not serve some of these items' slots (map version \
                     {version}); refresh the cluster map"
                ),
            )
            .into(),
        }
    }

    /// This node's replica of group `g`. A group the cluster map places here but that is
    /// not open yet (it formed moments ago) is unavailable for now, not unknown.
    fn group(node: &Node, g: u64) -> Result<Arc<Group>, GroupError> {
        if let Some(group) = node.group(g) {
            return Ok(group);
        }
        let placed_here = node
            .map()
            .and_then(|m| m.groups.get(&g).map(|i| i.replicas.contains(&node.id)))
            .unwrap_or(false);
        Err(if placed_here {
            unavailable(
                "group_opening",
                format!("node {} is opening its replica of group {g}", node.id),
            )
        } else {
            HttpError::new(
                StatusCode::NOT_FOUND,
                "unknown_group",
                format!("group {g} is not hosted on node {}", node.id),
            )
            .into()
        })
    }

    /// A shard group's replica (not the meta group's).
    fn shard(node: &Node, g: u64) -> Result<(Arc<Group>, Arc<dyn VectorStore>), GroupError> {
        let group = group(node, g)?;
        match group.store().cloned() {
            Some(store) => Ok((group, store)),
            None => Err(HttpError::bad_request(
                "not_a_shard_group",
                format!("group {g} holds the cluster map, not points"),
            )
            .into()),
        }
    }

    /// A replica serving default reads must have caught up with its group.
    fn readable(node: &Node, g: u64) -> Result<(Arc<Group>, Arc<dyn VectorStore>), GroupError> {
        let (group, store) = shard(node, g)?;
        if !group.caught_up() {
            return Err(unavailable(
                "not_ready",
                format!("replica of group {g} on node {} has not caught up", node.id),
            ));
        }
        Ok((group, store))
    }

    /// The lone shard's [`super::blocking`], answering in this module's error type.
    async fn blocking<T: Send + 'static>(
        store: Arc<dyn VectorStore>,
        f: impl FnOnce(&dyn VectorStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Reply<T> {
        super::blocking(&store, f).await.map_err(|e| e.0.into())
    }

    async fn propose(node: &Node, g: u64, cmd: Command) -> Result<usize, GroupError> {
        let group = group(node, g)?;
        match tokio::time::timeout(WRITE_TIMEOUT, group.replica.propose(cmd)).await {
            Ok(r) => r.map_err(|e| propose_error(node, g, e)),
            Err(_) => Err(propose_error(
                node,
                g,
                ProposeError::Timeout("not committed in time".into()),
            )),
        }
    }

    async fn upsert(
        State(node): State<Shared>,
        Path(g): Path<u64>,
        Json(r): Json<UpsertRequest>,
    ) -> Reply<UpsertResponse> {
        // Refused here with a 400 rather than proposed and rejected by every replica.
        check_points(&r.points, shard(&node, g)?.1.dim())?;
        if r.points.is_empty() {
            return Ok(axum::Json(UpsertResponse { upserted: 0 }));
        }
        let upserted = propose(&node, g, Command::Upsert(r.points)).await?;
        Ok(axum::Json(UpsertResponse { upserted }))
    }

    async fn delete(
        State(node): State<Shared>,
        Path(g): Path<u64>,
        Json(r): Json<DeleteRequest>,
    ) -> Reply<DeleteResponse> {
        shard(&node, g)?;
        let deleted = propose(&node, g, Command::Delete(r.ids)).await?;
        Ok(axum::Json(DeleteResponse { deleted }))
    }

    /// A step of a slot move (the meta leader's mover calls it).
    async fn set_slots(
        State(node): State<Shared>,
        Path(g): Path<u64>,
        Json(r): Json<SetSlotsRequest>,
    ) -> Reply<WriteResponse> {
        shard(&node, g)?;
        let cmd = Command::SetSlots {
            version: r.version,
            slots: r.slots,
            state: r.state,
        };
        let written = propose(&node, g, cmd).await?;
        Ok(axum::Json(WriteResponse { written }))
    }

    async fn drop_slots(
        State(node): State<Shared>,
        Path(g): Path<u64>,
        Json(r): Json<DropSlotsRequest>,
    ) -> Reply<WriteResponse> {
        shard(&node, g)?;
        let cmd = Command::DropSlots {
            version: r.version,
            slots: r.slots,
        };
        let written = propose(&node, g, cmd).await?;
        Ok(axum::Json(WriteResponse { written }))
    }

    async fn migrate(
        State(node): State<Shared>,
        Path(g): Path<u64>,
        Json(r): Json<MigrateRequest>,
    ) -> Reply<WriteResponse> {
        check_points(&r.upsert, shard(&node, g)?.1.dim())?;
        let cmd = Command::Migrate {
            upsert: r.upsert,
            delete: r.delete,
        };
        let written = propose(&node, g, cmd).await?;
        Ok(axum::Json(WriteResponse { written }))
    }

    /// The cluster map this node holds (a meta member's replica, else the last fetched).
    async fn meta_map(State(node): State<Shared>) -> Reply<ClusterMap> {
        node.map().map(axum::Json).ok_or_else(|| {
            unavailable(
                "no_cluster_map",
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
                "internal_command",
                "this map change is a step of the meta leader's own work",
            )
            .into());
        }
        if node.meta().is_none() {
            return Err(HttpError::new(
                StatusCode::NOT_FOUND,
                "not_a_meta_member",
                format!("node {} hosts no meta replica", node.id),
            )
            .into());
        }
        let version = node
            .propose_meta(&cmd)
            .await
            .map_err(|e| propose_error(&node, crate::meta::META_GROUP, e))?;
        Ok(axum::Json(serde_json::json!({ "version": version })))
    }

    async fn get_points(
        State(node): State<Shared>,
        Path(g): Path<u64>,
        Json(r): Json<GetRequest>,
    ) -> Reply<GetResponse> {
        let (_, store) = readable(&node, g)?;
        blocking(store, move |st| {
            st.get(&r.ids, r.with_vector)
                .map(|points| GetResponse { points })
        })
        .await
    }

    async fn search(
        State(node): State<Shared>,
        Path(g): Path<u64>,
        Json(r): Json<SearchRequest>,
    ) -> Reply<SearchResponse> {
        let (group, store) = match r.consistency {
            Consistency::Any => readable(&node, g)?,
            Consistency::Strong => {
                let (group, store) = shard(&node, g)?;
                if !group.replica.status().is_leader {
                    return Err(propose_error(&node, g, ProposeError::NotLeader(None)));
                }
                group
                    .replica
                    .catch_up(READ_INDEX_TIMEOUT)
                    .await
                    .map_err(|e| match e {
                        ProposeError::Timeout(m) => unavailable("no_quorum", m),
                        other => propose_error(&node, g, other),
                    })?;
                (group, store)
            }
        };
        let mut answer = blocking(store, move |st| {
            st.search(&r).map(|results| SearchResponse { results })
        })
        .await?;
        // Slots being copied in, or already dropped here, are not this group's to serve.
        group.with_slots(|slots| {
            if slots.states.is_some() {
                for list in &mut answer.results {
                    list.retain(|h| {
                        matches!(slots.of(&h.id), SlotState::Owned | SlotState::Fenced)
                    });
                }
            }
        });
        Ok(answer)
    }

    async fn stats(State(node): State<Shared>, Path(g): Path<u64>) -> Reply<Stats> {
        blocking(shard(&node, g)?.1, |st| st.stats()).await
    }

    async fn status(State(node): State<Shared>, Path(g): Path<u64>) -> Reply<GroupStatus> {
        Ok(axum::Json(group(&node, g)?.status()))
    }

    /// A page of the replica's points: what a snapshot transfer pulls.
    async fn scroll(
        State(node): State<Shared>,
        Path(g): Path<u64>,
        Json(r): Json<crate::api::ScrollRequest>,
    ) -> Reply<Page> {
        let limit = r.limit.clamp(1, 4096);
        let wanted: Option<std::collections::HashSet<usize>> =
            r.slots.map(|s| s.into_iter().map(usize::from).collect());
        blocking(shard(&node, g)?.1, move |st| {
            let mut page = st.scroll(r.cursor.as_deref(), limit)?;
            if let Some(wanted) = wanted {
                page.points.retain(|p| wanted.contains(&slot_of(&p.id)));
            }
            Ok(page)
        })
        .await
    }

    async fn digest(State(node): State<Shared>, Path(g): Path<u64>) -> Reply<Digest> {
        let (group, store) = shard(&node, g)?;
        let applied = group.replica.status().applied;
        blocking(store, move |st| {
            crate::store::digest(st).map(|(points, checksum)| Digest {
                points,
                checksum,
                applied,
            })
        })
        .await
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
                    "invalid_action",
                    format!("action {other:?}: expected \"add\" or \"remove\""),
                )
                .into())
            }
        };
        if add && r.addr.as_deref().is_none_or(str::is_empty) {
            return Err(HttpError::bad_request(
                "missing_addr",
                "adding a replica needs the address of its node",
            )
            .into());
        }
        node.change_membership(g, add, r.node, r.addr)
            .await
            .map_err(|e| propose_error(&node, g, e))?;
        Ok(axum::Json(group(&node, g)?.status()))
    }

    async fn node_status(State(node): State<Shared>) -> axum::Json<NodeStatus> {
        axum::Json(NodeStatus {
            node: node.id,
            addr: node.advertise.clone(),
            ready: node.ready(),
            groups: node.groups().iter().map(|g| g.status()).collect(),
        })
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
            "not_ready",
            format!("replicas of groups {lagging:?} have not caught up"),
        )
        .into_response()
    }

    async fn ok() -> &'static str {
        "ok"
    }

    pub fn router(node: Shared) -> Router {
        let api = Router::new()
            .route("/v1/groups/{g}/points/upsert", post(upsert))
            .route("/v1/groups/{g}/points/delete", post(delete))
            .route("/v1/groups/{g}/points/get", post(get_points))
            .route("/v1/groups/{g}/search", post(search))
            .route("/v1/groups/{g}/stats", get(stats))
            .route("/v1/groups/{g}/status", get(status))
            .route("/v1/groups/{g}/scroll", post(scroll))
            .route("/v1/groups/{g}/digest", get(digest))
            .route("/v1/groups/{g}/slots", post(set_slots))
            .route("/v1/groups/{g}/slots/drop", post(drop_slots))
            .route("/v1/groups/{g}/migrate", post(migrate))
            .route("/v1/meta/map", get(meta_map))
            .route("/admin/v1/cluster/commands", post(meta_command))
            .route("/admin/v1/groups/{g}/replicas", post(membership))
            .route("/v1/node", get(node_status))
            .route("/healthz", get(ok))
            .route("/readyz", get(readyz))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(node.clone());
        with_fallbacks(api.merge(transport::routes(node.inbox.clone())))
    }
}
