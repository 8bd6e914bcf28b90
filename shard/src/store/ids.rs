//! Item ids and the engine's point ids: the scheme a store keeps them in (recorded beside
//! its files when it is created, see [`PointIds`]), and item ids read back from points.

use std::collections::HashMap;
use std::path::Path;

use qdrant_edge::{EdgeShard, JsonPath, PointId, ScoredPoint, WithPayloadInterface};
use serde_json::Value;

use redrec_shard_api::points::{unpacked_id, Hit, Payload, PointIds, PointKey, ID_KEY};

use super::{StoreError, StoreResult};

/// The file beside the engine's that names the store's scheme.
const SCHEME_FILE: &str = "point-ids";

/// The scheme of the store at `path`: the one recorded there; `hashed` for a store made
/// before schemes were recorded (`exists`, nothing recorded); for a new store, `wanted`,
/// recorded before the engine writes anything.
pub(super) fn scheme(path: &Path, exists: bool, wanted: PointIds) -> StoreResult<PointIds> {
    let file = path.join(SCHEME_FILE);
    match std::fs::read(&file) {
        Ok(bytes) => {
            return serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Engine(format!("{}: unreadable: {e}", file.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::Engine(format!("{}: {e}", file.display()))),
    }
    let scheme = if exists { PointIds::legacy() } else { wanted };
    let json = serde_json::to_vec(&scheme).expect("an enum serialises");
    let temp = path.join(format!("{SCHEME_FILE}.new"));
    let written = std::fs::write(&temp, json)
        .and_then(|()| std::fs::File::open(&temp)?.sync_all())
        .and_then(|()| std::fs::rename(&temp, &file));
    written.map_err(|e| StoreError::Engine(format!("{}: {e}", file.display())))?;
    Ok(scheme)
}

/// The engine's point id of `item_id` under `ids`.
pub(super) fn point_id(ids: PointIds, item_id: &str) -> PointId {
    match ids.key(item_id) {
        PointKey::Num(n) => PointId::NumId(n),
        PointKey::Uuid(u) => PointId::Uuid(u),
    }
}

/// Whether the engine keeps `item_id` in its point's payload (its point id does not give
/// it back).
#[cfg(test)]
pub(super) fn kept_in_payload(shard: &EdgeShard, ids: PointIds, item_id: &str) -> bool {
    let pid = point_id(ids, item_id);
    let records =
        (shard.retrieve(&[pid], Some(WithPayloadInterface::Bool(true)), None)).expect("retrieve");
    (records.first().and_then(|r| r.payload.as_ref())).is_some_and(|p| p.0.contains_key(ID_KEY))
}

/// Only the payload field that keeps a hashed point's item id.
fn only_id() -> WithPayloadInterface {
    WithPayloadInterface::Fields(vec![
        JsonPath::try_from(ID_KEY).expect("a plain key is a path")
    ])
}

/// The item id a point id gives back by itself: a number's, or a packed id's (under
/// any scheme: a hashed id's UUID never unpacks). `None` for a hashed point.
pub(super) fn named_by(id: &PointId) -> Option<String> {
    match id {
        PointId::NumId(n) => Some(n.to_string()),
        PointId::Uuid(u) => unpacked_id(u),
    }
}

/// The item id of a point read with its payload, and the payload without the id key
/// (empty if none was read). `None` for a hashed point read without its id key.
pub(super) fn item_id(
    id: PointId,
    payload: Option<qdrant_edge::Payload>,
) -> (Option<String>, Payload) {
    let mut map = payload.map(|p| p.0).unwrap_or_default();
    let kept = match map.remove(ID_KEY) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    (named_by(&id).or(kept), map)
}

/// What a search reads of each hit's payload: everything, or only what names the item.
/// Under `direct` and `packed`, reading nothing: the hits that need their id key are
/// read after.
pub(super) fn search_payload(ids: PointIds, with_payload: bool) -> WithPayloadInterface {
    match (with_payload, ids) {
        (true, _) => WithPayloadInterface::Bool(true),
        (false, PointIds::Direct | PointIds::Packed) => WithPayloadInterface::Bool(false),
        (false, PointIds::Hashed) => only_id(),
    }
}

/// The hits of a request's searches, each named by its item id: the ids of hashed points
/// searched without their payload are read in one call for all the lists.
pub(super) fn name_hits(
    shard: &EdgeShard,
    lists: Vec<Vec<ScoredPoint>>,
) -> StoreResult<Vec<Vec<Hit>>> {
    // Hits not named yet, by list and place (an item id is never empty).
    let mut unnamed: Vec<(usize, usize, PointId)> = Vec::new();
    let mut lists: Vec<Vec<Hit>> = (lists.into_iter().enumerate())
        .map(|(l, hits)| {
            (hits.into_iter().enumerate())
                .map(|(i, h)| {
                    let (id, payload) = item_id(h.id, h.payload);
                    if id.is_none() {
                        unnamed.push((l, i, h.id));
                    }
                    let id = id.unwrap_or_default();
                    Hit {
                        id,
                        score: h.score,
                        payload,
                    }
                })
                .collect()
        })
        .collect();
    if unnamed.is_empty() {
        return Ok(lists);
    }
    let pids: Vec<PointId> = unnamed.iter().map(|&(_, _, pid)| pid).collect();
    let records = shard
        .retrieve(&pids, Some(only_id()), None)
        .map_err(|e| StoreError::Engine(e.to_string()))?;
    let names: HashMap<PointId, String> = (records.into_iter())
        .filter_map(|r| Some((r.id, item_id(r.id, r.payload).0?)))
        .collect();
    for (l, i, pid) in unnamed {
        if let Some(name) = names.get(&pid) {
            lists[l][i].id = name.clone();
        }
    }
    // A point deleted between its search and the read of its id is left out.
    for hits in &mut lists {
        hits.retain(|h| !h.id.is_empty());
    }
    Ok(lists)
}
