//! Users' histories on Qdrant: each event a point of the users' collection, keyed by
//! (user, item, time) so the same event twice is one point and two routers writing the
//! same user never lose each other's events; a user's newest `keep` are kept.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qdrant_client::qdrant::{
    Condition, DeletePointsBuilder, Filter, GetPointsBuilder, PointId, PointStruct, PointsIdsList,
    RetrievedPoint, ScrollPointsBuilder, UpsertPointsBuilder,
};
use redrec_shard_api::points::point_uuid;
use redrec_shard_api::users::{StoredEvent, UserEvent, UserHistory};
use redrec_shard_api::ShardClientError;
use serde_json::{json, Value};

use crate::{uuid_of, QdrantItems};

/// The payload key holding an event's user id (indexed).
pub const USER_KEY: &str = "user_id";
/// Events one page of a user's history scroll holds.
const PAGE: u32 = 1024;

fn event_id(user: &str, item: &str, ts: i64) -> PointId {
    PointId::from(point_uuid(&format!("{user}\n{item}\n{ts}")).to_string())
}

/// An event's (arrival order, event) from its payload.
fn event(p: &RetrievedPoint) -> Option<(i64, StoredEvent)> {
    let get = |k: &str| p.payload.get(k).map(|v| v.clone().into_json());
    Some((
        get("at")?.as_i64()?,
        StoredEvent {
            item_id: get("item_id")?.as_str()?.to_string(),
            scenario: get("scenario")?.as_str()?.to_string(),
            ts: get("ts")?.as_i64()?,
        },
    ))
}

impl QdrantItems {
    /// Every stored event of `user`, oldest first (ties in arrival order), with the ids
    /// of their points.
    async fn events_of(
        &self,
        user: &str,
        left: Duration,
    ) -> Result<Vec<(PointId, StoredEvent)>, ShardClientError> {
        let mut out = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut req = ScrollPointsBuilder::new(&self.users)
                .filter(Filter::must([Condition::matches(
                    USER_KEY,
                    user.to_string(),
                )]))
                .limit(PAGE)
                .with_payload(true)
                .with_vectors(false);
            if let Some(o) = offset.take() {
                req = req.offset(o);
            }
            let page = self.within(left, self.client.scroll(req)).await?;
            out.extend(
                page.result
                    .iter()
                    .filter_map(|p| Some((p.id.clone()?, event(p)?))),
            );
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => break,
            }
        }
        out.sort_by_key(|(_, (at, e))| (e.ts, *at));
        Ok(out.into_iter().map(|(id, (_, e))| (id, e)).collect())
    }

    /// Adds `events`; returns how many were new. Each user then keeps its newest `keep`.
    pub async fn add_events(
        &self,
        events: Vec<UserEvent>,
        keep: usize,
        left: Duration,
    ) -> Result<usize, ShardClientError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i64;
        let mut seen = HashSet::new();
        let mut points = Vec::new();
        let mut users = BTreeMap::new();
        for (i, e) in events.into_iter().enumerate() {
            let id = event_id(&e.user_id, &e.item_id, e.ts);
            if !seen.insert(uuid_of(&id).unwrap_or_default().to_string()) {
                continue;
            }
            let payload = json!({
                USER_KEY: e.user_id, "item_id": e.item_id, "scenario": e.scenario,
                "ts": e.ts, "at": now + i as i64,
            });
            let Value::Object(payload) = payload else {
                unreachable!("a JSON object literal")
            };
            *users.entry(e.user_id).or_insert(0usize) += 1;
            points.push((id, PointStruct::new(PointId::default(), vec![1.0], payload)));
        }
        // Events already stored keep their place (and their arrival order).
        let ids: Vec<PointId> = points.iter().map(|(id, _)| id.clone()).collect();
        let known = GetPointsBuilder::new(&self.users, ids)
            .with_payload(false)
            .with_vectors(false);
        let known: HashSet<String> = self
            .within(left, self.client.get_points(known))
            .await?
            .result
            .iter()
            .filter_map(|p| uuid_of(p.id.as_ref()?).map(str::to_string))
            .collect();
        let new: Vec<PointStruct> = points
            .into_iter()
            .filter(|(id, _)| uuid_of(id).is_some_and(|u| !known.contains(u)))
            .map(|(id, mut p)| {
                p.id = Some(id);
                p
            })
            .collect();
        let added = new.len();
        if !new.is_empty() {
            let req = UpsertPointsBuilder::new(&self.users, new).wait(true);
            self.within(left, self.client.upsert_points(req)).await?;
        }
        for (user, _) in users {
            let events = self.events_of(&user, left).await?;
            if events.len() > keep {
                let old: Vec<PointId> = events[..events.len() - keep]
                    .iter()
                    .map(|(id, _)| id.clone())
                    .collect();
                self.drop_points(old, left).await?;
            }
        }
        Ok(added)
    }

    async fn drop_points(&self, ids: Vec<PointId>, left: Duration) -> Result<(), ShardClientError> {
        let req = DeletePointsBuilder::new(&self.users)
            .points(PointsIdsList { ids })
            .wait(true);
        self.within(left, self.client.delete_points(req)).await?;
        Ok(())
    }

    /// The stored histories of `ids`, in request order; users without one are absent.
    pub async fn histories(
        &self,
        ids: Vec<String>,
        left: Duration,
    ) -> Result<Vec<UserHistory>, ShardClientError> {
        let mut out = Vec::new();
        for user in ids {
            let events: Vec<StoredEvent> = self
                .events_of(&user, left)
                .await?
                .into_iter()
                .map(|(_, e)| e)
                .collect();
            if !events.is_empty() {
                out.push(UserHistory {
                    user_id: user,
                    events,
                });
            }
        }
        Ok(out)
    }

    /// Forgets the histories of `ids`; returns how many users had one.
    pub async fn forget_users(
        &self,
        ids: Vec<String>,
        left: Duration,
    ) -> Result<usize, ShardClientError> {
        let mut forgotten = 0;
        for user in ids {
            let events: Vec<PointId> = self
                .events_of(&user, left)
                .await?
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            if !events.is_empty() {
                forgotten += 1;
                self.drop_points(events, left).await?;
            }
        }
        Ok(forgotten)
    }
}
