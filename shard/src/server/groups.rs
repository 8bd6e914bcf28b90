//! A node's replicas through the API: points, searches, scrolls and digests under
//! `/v1/groups/{g}/…`, and the steps of slot moves. Writes are proposed to the group's log
//! and answered once committed and applied; reads are served by a caught-up replica, or
//! on the leader after a ReadIndex round when asked for `strong` consistency.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::Method;
use axum::http::StatusCode;
use axum::routing::{get, post};
use redrec_shard_api::codes::{
    GROUP_OPENING, INVALID_REQUEST, NOT_A_SHARD_GROUP, NOT_READY, NO_QUORUM, UNKNOWN_GROUP,
};
use redrec_shard_api::points::{
    Consistency, DeleteRequest, DeleteResponse, GetRequest, GetResponse, GroupFound, GroupsFound,
    GroupsSearch, Page, ScrollRequest, SearchRequest, SearchResponse, Stats, UpsertRequest,
    UpsertResponse,
};
use redrec_shard_api::slots::{
    slot_of, DropSlotsRequest, MigrateRequest, SetSlotsRequest, SlotState, WriteResponse,
};
use redrec_shard_api::status::{Digest, GroupStatus};
use redrec_shard_api::users::{EventsRequest, Keyspace, UsersRequest, UsersResponse};
use redrec_wire::auth::{self, Route};
use redrec_wire::compact::{Body, Encoded};
use redrec_wire::{HttpError, Json, Path};

use super::answer::SearchAnswer;
use super::error::{
    blocking, on_a_search_turn, propose_error, queued, search_turns_free, unavailable,
    within_budget, ApiError, Queued, Reply,
};
use crate::group::machine::Command;
use crate::node::replica::Hosted;
use crate::node::Node;
use crate::raft::replica::ProposeError;
use crate::store::{check_points, digest, StoreError, VectorStore};

/// Longest a write waits for its entry to commit and apply.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a strong read waits for the ReadIndex round and the apply behind it.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(2);

type Shared = Arc<Node>;

/// This node's replica of group `g`. A group the cluster map places here but that is
/// not open yet (it formed moments ago) is unavailable for now, not unknown.
pub fn group(node: &Node, g: u64) -> Result<Arc<Hosted>, ApiError> {
    if let Some(group) = node.group(g) {
        return Ok(group);
    }
    let placed_here = node
        .map()
        .and_then(|m| m.groups.get(&g).map(|i| i.replicas.contains(&node.id)))
        .unwrap_or(false);
    Err(if placed_here {
        unavailable(
            GROUP_OPENING,
            format!("node {} is opening its replica of group {g}", node.id),
        )
    } else {
        HttpError::new(
            StatusCode::NOT_FOUND,
            UNKNOWN_GROUP,
            format!("group {g} is not hosted on node {}", node.id),
        )
        .into()
    })
}

/// A shard group's replica (not the meta group's).
fn shard(node: &Node, g: u64) -> Result<(Arc<Hosted>, Arc<dyn VectorStore>), ApiError> {
    let group = group(node, g)?;
    match group.store().cloned() {
        Some(store) => Ok((group, store)),
        None => Err(HttpError::bad_request(
            NOT_A_SHARD_GROUP,
            format!("group {g} holds the cluster map, not points"),
        )
        .into()),
    }
}

/// The group's leader, once it has applied everything the group committed before this
/// call (Raft's ReadIndex): a read on it sees every acknowledged write.
async fn linearizable(
    node: &Node,
    g: u64,
) -> Result<(Arc<Hosted>, Arc<dyn VectorStore>), ApiError> {
    let (group, store) = shard(node, g)?;
    if !group.replica.status().is_leader {
        return Err(propose_error(node, g, ProposeError::NotLeader(None)));
    }
    group
        .replica
        .catch_up(READ_INDEX_TIMEOUT)
        .await
        .map_err(|e| match e {
            ProposeError::Timeout(m) => unavailable(NO_QUORUM, m),
            other => propose_error(node, g, other),
        })?;
    Ok((group, store))
}

/// A replica serving default reads must have caught up with its group.
fn readable(node: &Node, g: u64) -> Result<(Arc<Hosted>, Arc<dyn VectorStore>), ApiError> {
    let (group, store) = shard(node, g)?;
    if !group.caught_up() {
        return Err(unavailable(
            NOT_READY,
            format!("replica of group {g} on node {} has not caught up", node.id),
        ));
    }
    Ok((group, store))
}

async fn propose(node: &Node, g: u64, cmd: Command) -> Result<usize, ApiError> {
    let group = group(node, g)?;
    match tokio::time::timeout(WRITE_TIMEOUT, group.replica.propose(cmd.encode())).await {
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
    let (n, admitting) = (r.points.len(), node.clone());
    within_budget(move || admitting.admit(n)).await?;
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

/// Proposes a step of a slot move (the meta leader's mover calls them).
async fn write(node: &Node, g: u64, cmd: Command) -> Reply<WriteResponse> {
    let written = propose(node, g, cmd).await?;
    Ok(axum::Json(WriteResponse { written }))
}

async fn set_slots(
    State(node): State<Shared>,
    Path(g): Path<u64>,
    Json(r): Json<SetSlotsRequest>,
) -> Reply<WriteResponse> {
    shard(&node, g)?;
    let (version, slots, state) = (r.version, r.slots, r.state);
    write(
        &node,
        g,
        Command::SetSlots {
            version,
            slots,
            state,
        },
    )
    .await
}

async fn drop_slots(
    State(node): State<Shared>,
    Path(g): Path<u64>,
    Json(r): Json<DropSlotsRequest>,
) -> Reply<WriteResponse> {
    shard(&node, g)?;
    let (version, slots) = (r.version, r.slots);
    write(&node, g, Command::DropSlots { version, slots }).await
}

/// A slot move's copies (checked here like any upsert).
async fn migrate(
    State(node): State<Shared>,
    Path(g): Path<u64>,
    Json(r): Json<MigrateRequest>,
) -> Reply<WriteResponse> {
    let (group, store) = shard(&node, g)?;
    let dim = match r.keyspace {
        Keyspace::Items => store.dim(),
        Keyspace::Users => group.users().map_or(1, |u| u.dim()),
    };
    check_points(&r.upsert, dim)?;
    let (upsert, delete, keyspace) = (r.upsert, r.delete, r.keyspace);
    let cmd = Command::Migrate {
        upsert,
        delete,
        keyspace,
    };
    write(&node, g, cmd).await
}

async fn get_points(
    State(node): State<Shared>,
    Path(g): Path<u64>,
    Json(r): Json<GetRequest>,
) -> Reply<GetResponse> {
    node.faults.delay(g).await;
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
    Body(r, format): Body<SearchRequest>,
) -> Result<Queued<Encoded<SearchAnswer>>, ApiError> {
    node.faults.delay(g).await;
    let (group, store) = match r.consistency {
        Consistency::Any => readable(&node, g)?,
        Consistency::Strong => linearizable(&node, g).await?,
    };
    let answer = search_replica(group, store, r).await?;
    Ok(queued(Encoded(SearchAnswer::new(answer, format), format)))
}

/// `r` on a replica, on one of the node's search turns (see [`search_served`]).
async fn search_replica(
    group: Arc<Hosted>,
    store: Arc<dyn VectorStore>,
    r: SearchRequest,
) -> Result<SearchResponse, ApiError> {
    on_a_search_turn(move || search_served(&group, store.as_ref(), &r))
        .await?
        .map_err(ApiError::from)
}

/// `r` on a replica, its hits kept to the slots the group serves here (slots being copied
/// in, or already dropped here, are not this group's to serve). Blocks: the engine's
/// search does.
fn search_served(
    group: &Hosted,
    store: &dyn VectorStore,
    r: &SearchRequest,
) -> Result<SearchResponse, StoreError> {
    let mut results = store.search(r)?;
    group.with_slots(|slots| {
        if slots.states.is_some() {
            for list in &mut results {
                list.retain(|h| matches!(slots.of(&h.id), SlotState::Owned | SlotState::Fenced));
            }
        }
    });
    Ok(SearchResponse { results })
}

/// `POST /v1/search/groups`: several groups' searches in one call, each on this node's
/// caught-up replica, at once; a group this node cannot search answers its error.
async fn search_groups(
    State(node): State<Shared>,
    Body(r, format): Body<GroupsSearch>,
) -> Result<Queued<Encoded<GroupsFound>>, ApiError> {
    if r.exclude.len() != r.groups.len() {
        return Err(
            HttpError::bad_request(INVALID_REQUEST, "exclude needs one list per group").into(),
        );
    }
    if r.search.consistency == Consistency::Strong {
        return Err(HttpError::bad_request(
            INVALID_REQUEST,
            "strong reads go to each group's leader",
        )
        .into());
    }
    futures::future::join_all(r.groups.iter().map(|&g| node.faults.delay(g))).await;
    let searches: Vec<_> = (r.groups.iter().zip(r.exclude))
        .map(|(&g, exclude)| {
            let (group, store) = readable(&node, g)?;
            let mut search = r.search.clone();
            search.exclude = exclude;
            Ok((group, store, search))
        })
        .collect();
    let searchable = searches.iter().filter(|s| s.is_ok()).count();
    // With a turn free for each, the groups are searched at once; otherwise one after
    // another on one turn: the call waits no longer, and its searches take one hand-off
    // to a blocking thread and back instead of one each.
    let found: Vec<Result<SearchResponse, ApiError>> = if search_turns_free() >= searchable {
        let at_once = searches.into_iter().map(|s| async move {
            let (group, store, search) = s?;
            search_replica(group, store, search).await
        });
        futures::future::join_all(at_once).await
    } else {
        on_a_search_turn(move || {
            let search = |(group, store, r): (Arc<Hosted>, Arc<dyn VectorStore>, _)| {
                Ok(search_served(&group, store.as_ref(), &r)?)
            };
            searches.into_iter().map(|s| s.and_then(search)).collect()
        })
        .await?
    };
    let groups = found
        .into_iter()
        .map(|found| match found {
            Ok(answer) => GroupFound {
                lists: Some(answer.into()),
                error: None,
            },
            Err(e) => {
                let e = e.into_http();
                GroupFound {
                    lists: None,
                    error: Some((e.status.as_u16(), e.code.to_string(), e.message)),
                }
            }
        })
        .collect();
    Ok(queued(Encoded(GroupsFound { groups }, format)))
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
    Json(r): Json<ScrollRequest>,
) -> Reply<Page> {
    let limit = r.limit.clamp(1, 4096);
    // A slot move copies, and deletes from its target, what these pages hold: they come
    // from the leader, caught up, never from a replica that may lag (or a deposed leader).
    let (group, items) = match r.slots {
        Some(_) => linearizable(&node, g).await?,
        None => shard(&node, g)?,
    };
    let wanted: Option<HashSet<usize>> = r.slots.map(|s| s.into_iter().map(usize::from).collect());
    let store = match r.keyspace {
        Keyspace::Items => items,
        Keyspace::Users => users_of(&group, g)?,
    };
    blocking(store, move |st| {
        let mut page = st.scroll(r.cursor.as_deref(), limit)?;
        if let Some(wanted) = wanted {
            page.points.retain(|p| wanted.contains(&slot_of(&p.id)));
        }
        Ok(page)
    })
    .await
}

async fn digest_of(State(node): State<Shared>, Path(g): Path<u64>) -> Reply<Digest> {
    let (group, store) = shard(&node, g)?;
    let applied = group.replica.status().applied;
    blocking(store, move |st| {
        digest(st).map(|(points, checksum)| Digest {
            points,
            checksum,
            applied,
        })
    })
    .await
}

fn users_of(group: &Hosted, g: u64) -> Result<Arc<dyn VectorStore>, ApiError> {
    group.users().cloned().ok_or_else(|| {
        HttpError::bad_request(
            NOT_A_SHARD_GROUP,
            format!("group {g} holds the cluster map, not users"),
        )
        .into()
    })
}

/// Adds users' events through the group's log (acknowledged once committed and applied).
async fn add_events(
    State(node): State<Shared>,
    Path(g): Path<u64>,
    Json(r): Json<EventsRequest>,
) -> Reply<WriteResponse> {
    shard(&node, g)?;
    crate::users::check(&r.events, r.keep)
        .map_err(|m| HttpError::bad_request(INVALID_REQUEST, m))?;
    if r.events.is_empty() {
        return Ok(axum::Json(WriteResponse { written: 0 }));
    }
    let (keep, events) = (r.keep, r.events);
    write(&node, g, Command::Events { keep, events }).await
}

/// Users' stored histories, from a caught-up replica.
async fn histories(
    State(node): State<Shared>,
    Path(g): Path<u64>,
    Json(r): Json<UsersRequest>,
) -> Reply<UsersResponse> {
    let (group, _) = readable(&node, g)?;
    let users = users_of(&group, g)?;
    blocking(users, move |st| {
        crate::users::histories(st, &r.ids).map(|users| UsersResponse { users })
    })
    .await
}

/// Removes users' histories through the group's log.
async fn forget_users(
    State(node): State<Shared>,
    Path(g): Path<u64>,
    Json(r): Json<UsersRequest>,
) -> Reply<WriteResponse> {
    shard(&node, g)?;
    write(&node, g, Command::ForgetUsers(r.ids)).await
}

/// The group routes of a node's API (internal: the cluster credential).
pub fn routes() -> Vec<Route<Shared>> {
    auth::internal(vec![
        (Method::POST, "/v1/groups/{g}/points/upsert", post(upsert)),
        (Method::POST, "/v1/groups/{g}/points/delete", post(delete)),
        (Method::POST, "/v1/groups/{g}/points/get", post(get_points)),
        (Method::POST, "/v1/groups/{g}/search", post(search)),
        (Method::POST, "/v1/search/groups", post(search_groups)),
        (Method::GET, "/v1/groups/{g}/stats", get(stats)),
        (Method::GET, "/v1/groups/{g}/status", get(status)),
        (Method::POST, "/v1/groups/{g}/scroll", post(scroll)),
        (Method::GET, "/v1/groups/{g}/digest", get(digest_of)),
        (Method::POST, "/v1/groups/{g}/slots", post(set_slots)),
        (Method::POST, "/v1/groups/{g}/slots/drop", post(drop_slots)),
        (Method::POST, "/v1/groups/{g}/migrate", post(migrate)),
        (Method::POST, "/v1/groups/{g}/events", post(add_events)),
        (Method::POST, "/v1/groups/{g}/users/get", post(histories)),
        (
            Method::POST,
            "/v1/groups/{g}/users/delete",
            post(forget_users),
        ),
    ])
}
