//! Users as the cluster knows them: `POST /v1/events` stores events in the shard groups
//! (placed by the slot of the user id, through each group's log, acknowledged once
//! committed), `GET /v1/users/{id}/history` reads a user's stored history, and
//! `DELETE /v1/users/{id}` removes it from every replica. A recommend by `user_id` reads
//! the stored history first.

use std::time::Instant;

use redrec_shard_api::users::{self as stored, StoredEvent, UserEvent};

use crate::api::{
    DeleteResponse, EventsRequest, EventsResponse, HistoryEvent, StoredEventOut,
    UserHistoryResponse,
};
use crate::error::RouterError;
use crate::ingest::{check_batch_len, check_id, write_by_slot};
use crate::state::RouterState;

/// `POST /v1/events`.
pub async fn add_events(
    state: &RouterState,
    req: EventsRequest,
) -> Result<EventsResponse, RouterError> {
    let started = Instant::now();
    let n = req.events.len();
    check_batch_len(state, n, "events")?;
    let m = state.encoder.manifest();
    let mut events = Vec::with_capacity(n);
    for (i, e) in req.events.into_iter().enumerate() {
        for (what, id) in [("user_id", &e.user_id), ("item_id", &e.item_id)] {
            check_id(id).map_err(|m| {
                RouterError::bad("invalid_event", format!("events[{i}].{what}: {m}"))
            })?;
        }
        if m.scenario_index(&e.scenario).is_none() {
            return Err(RouterError::bad(
                "unknown_scenario",
                format!(
                    "events[{i}]: unknown scenario {:?}; known: {:?}",
                    e.scenario, m.scenarios
                ),
            ));
        }
        if e.ts < 0 {
            return Err(RouterError::bad(
                "invalid_event",
                format!(
                    "events[{i}].ts must be seconds since the epoch, not {}",
                    e.ts
                ),
            ));
        }
        events.push(UserEvent {
            user_id: e.user_id,
            item_id: e.item_id,
            scenario: e.scenario,
            ts: e.ts,
        });
    }
    // Each user keeps what the user tower reads.
    let keep = m.max_history;
    let written = if let Some(q) = &state.qdrant {
        q.items
            .add_events(events, keep, state.cfg.write_timeout)
            .await?
    } else {
        write_by_slot(
            state,
            events,
            |e| e.user_id.as_str(),
            "events",
            |c, part, left| {
                let req = stored::EventsRequest { keep, events: part };
                async move { c.add_events(&req, left).await }
            },
        )
        .await?
    };
    metrics::counter!("redrec_events_stored_total").increment(written as u64);
    Ok(EventsResponse {
        received: n,
        stored: written,
        took_ms: started.elapsed().as_millis() as u64,
    })
}

/// A user's stored events, oldest first (none: empty), read on the leader of the user's
/// group so that every acknowledged event is there.
pub async fn stored_history(
    state: &RouterState,
    user_id: &str,
    deadline: Instant,
) -> Result<Vec<StoredEvent>, RouterError> {
    let ids = vec![user_id.to_string()];
    let found = match &state.qdrant {
        Some(q) => {
            let left = deadline.saturating_duration_since(Instant::now());
            q.items.histories(ids, left).await?
        }
        None => {
            let group = state.cluster.get().group_of(user_id).clone();
            group
                .leader_call(deadline, |c, left| {
                    let ids = ids.clone();
                    async move { c.histories(ids, left).await }
                })
                .await?
        }
    };
    Ok(found
        .into_iter()
        .next()
        .map(|h| h.events)
        .unwrap_or_default())
}

/// `GET /v1/users/{id}/history`.
pub async fn history(state: &RouterState, id: String) -> Result<UserHistoryResponse, RouterError> {
    check_id(&id).map_err(|m| RouterError::bad("invalid_id", m))?;
    let events = stored_history(state, &id, Instant::now() + state.cfg.deadline).await?;
    if events.is_empty() {
        return Err(RouterError::NotFound(format!(
            "no stored history for user {id:?}"
        )));
    }
    Ok(UserHistoryResponse {
        user_id: id,
        events: events
            .into_iter()
            .map(|e| StoredEventOut {
                item_id: e.item_id,
                scenario: e.scenario,
                ts: e.ts,
            })
            .collect(),
    })
}

/// `DELETE /v1/users/{id}`: the user's history, gone from every replica once answered.
pub async fn forget(state: &RouterState, id: String) -> Result<DeleteResponse, RouterError> {
    check_id(&id).map_err(|m| RouterError::bad("invalid_id", m))?;
    let deleted = if let Some(q) = &state.qdrant {
        q.items
            .forget_users(vec![id.clone()], state.cfg.write_timeout)
            .await?
    } else {
        write_by_slot(
            state,
            vec![id.clone()],
            |id| id.as_str(),
            "users",
            |c, part, left| async move { c.forget_users(part, left).await },
        )
        .await?
    };
    if deleted == 0 {
        return Err(RouterError::NotFound(format!(
            "no stored history for user {id:?}"
        )));
    }
    Ok(DeleteResponse { id, deleted: true })
}

/// The history a recommend works from: the user's stored events, then the request's
/// (an event sent that is already stored, same item and time, is taken once).
pub fn merged(stored: Vec<StoredEvent>, sent: &[HistoryEvent]) -> Vec<HistoryEvent> {
    let known: std::collections::HashSet<(String, i64)> =
        stored.iter().map(|e| (e.item_id.clone(), e.ts)).collect();
    let mut history: Vec<HistoryEvent> = stored
        .into_iter()
        .map(|e| HistoryEvent {
            item_id: e.item_id,
            scenario: e.scenario,
            ts: Some(e.ts),
        })
        .collect();
    history.extend(
        sent.iter()
            .filter(|e| {
                !e.ts
                    .is_some_and(|ts| known.contains(&(e.item_id.clone(), ts)))
            })
            .cloned(),
    );
    history
}
