//! Users' histories, in a store of their own beside a group's items: a user is a point
//! whose id is the user id, whose vector is a placeholder (the store is never searched),
//! and whose payload holds its events, oldest first. Being points, histories go through
//! the group's log, snapshots and slot moves as items do.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use redrec_shard_api::collection::Collection;
use redrec_shard_api::points::{Payload, Point, PointIds, StoredPoint};
use redrec_shard_api::users::{StoredEvent, UserEvent, UserHistory};
use serde_json::{json, Value};

use crate::store::edge::EdgeStore;
use crate::store::{StoreError, StoreResult, VectorStore};

const EVENTS_KEY: &str = "events";
/// Longest user or item id, in bytes.
const MAX_ID_BYTES: usize = 512;

/// The users' store under `dir`: one-dimensional placeholders, never indexed, its point
/// ids (when new) kept as `point_ids` says, as the items' store beside it.
pub fn open(dir: &Path, point_ids: PointIds) -> anyhow::Result<EdgeStore> {
    let collection = Collection {
        indexing_threshold_kb: 1 << 30,
        point_ids,
        ..Collection::default()
    };
    Ok(EdgeStore::open(dir, 1, &collection)?)
}

/// What a request of events may not be: empty ids, an empty batch, nothing kept.
pub fn check(events: &[UserEvent], keep: usize) -> Result<(), String> {
    if keep == 0 {
        return Err("keep must be at least 1".into());
    }
    for (i, e) in events.iter().enumerate() {
        for (what, id) in [("user_id", &e.user_id), ("item_id", &e.item_id)] {
            if id.is_empty() || id.len() > MAX_ID_BYTES {
                return Err(format!(
                    "events[{i}]: {what} must be 1 to {MAX_ID_BYTES} bytes"
                ));
            }
        }
    }
    Ok(())
}

fn history(p: StoredPoint) -> UserHistory {
    let events = match p.payload.get(EVENTS_KEY) {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|e| {
                let (item, scenario, ts) = (e.get(0)?, e.get(1)?, e.get(2)?);
                Some(StoredEvent {
                    item_id: item.as_str()?.to_string(),
                    scenario: scenario.as_str()?.to_string(),
                    ts: ts.as_i64()?,
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    UserHistory {
        user_id: p.id,
        events,
    }
}

fn point(h: &UserHistory) -> Point {
    let events: Vec<Value> = h
        .events
        .iter()
        .map(|e| json!([e.item_id, e.scenario, e.ts]))
        .collect();
    let mut payload = Payload::new();
    payload.insert(EVENTS_KEY.into(), Value::Array(events));
    Point {
        id: h.user_id.clone(),
        vector: vec![1.0],
        payload,
    }
}

/// The stored histories of `ids` (users without one are absent).
pub fn histories(store: &dyn VectorStore, ids: &[String]) -> StoreResult<Vec<UserHistory>> {
    Ok(store.get(ids, false)?.into_iter().map(history).collect())
}

/// Adds `events` to their users' histories: an event already stored (same item and
/// time) is not added again, each history stays in time order (ties in arrival order)
/// and keeps its newest `keep`. Returns how many events were new.
pub fn add(store: &dyn VectorStore, events: Vec<UserEvent>, keep: usize) -> StoreResult<usize> {
    check(&events, keep).map_err(StoreError::BadRequest)?;
    let mut by_user: BTreeMap<String, Vec<UserEvent>> = BTreeMap::new();
    for e in events {
        by_user.entry(e.user_id.clone()).or_default().push(e);
    }
    let ids: Vec<String> = by_user.keys().cloned().collect();
    let mut stored: BTreeMap<String, UserHistory> = histories(store, &ids)?
        .into_iter()
        .map(|h| (h.user_id.clone(), h))
        .collect();
    let mut added = 0;
    let mut points = Vec::with_capacity(by_user.len());
    for (user, new) in by_user {
        let mut h = stored.remove(&user).unwrap_or(UserHistory {
            user_id: user,
            events: Vec::new(),
        });
        let mut seen: HashSet<(String, i64)> =
            h.events.iter().map(|e| (e.item_id.clone(), e.ts)).collect();
        for e in new {
            if seen.insert((e.item_id.clone(), e.ts)) {
                added += 1;
                h.events.push(StoredEvent {
                    item_id: e.item_id,
                    scenario: e.scenario,
                    ts: e.ts,
                });
            }
        }
        h.events.sort_by_key(|e| e.ts); // stable: ties keep their arrival order
        let extra = h.events.len().saturating_sub(keep);
        h.events.drain(..extra);
        points.push(point(&h));
    }
    store.upsert(points)?;
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(user: &str, item: &str, ts: i64) -> UserEvent {
        UserEvent {
            user_id: user.into(),
            item_id: item.into(),
            scenario: "homefeed".into(),
            ts,
        }
    }

    #[test]
    fn events_are_kept_in_time_order_once_each_newest_first_to_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), PointIds::Direct).unwrap();
        let added = add(
            &store,
            vec![ev("u", "b", 20), ev("u", "a", 10), ev("v", "x", 5)],
            3,
        )
        .unwrap();
        assert_eq!(added, 3);
        // The same event again is not new; newer ones push the oldest out.
        let added = add(
            &store,
            vec![ev("u", "a", 10), ev("u", "c", 30), ev("u", "d", 40)],
            3,
        )
        .unwrap();
        assert_eq!(added, 2);
        let h = histories(&store, &["u".into(), "nobody".into(), "v".into()]).unwrap();
        assert_eq!(h.len(), 2);
        let items: Vec<&str> = h[0].events.iter().map(|e| e.item_id.as_str()).collect();
        assert_eq!((h[0].user_id.as_str(), items), ("u", vec!["b", "c", "d"]));
        assert_eq!(h[1].events[0].item_id, "x");
        assert!(add(&store, vec![ev("", "a", 1)], 3).is_err());
        assert!(add(&store, vec![ev("u", "a", 1)], 0).is_err());
        // Forgetting a user is deleting its point.
        assert_eq!(store.delete(&["u".into()]).unwrap(), 1);
        assert_eq!(histories(&store, &["u".into()]).unwrap(), vec![]);
    }
}
