//! A recommendation, start to end: validate -> history vectors from their shards -> user
//! tower -> query vectors to every shard -> merge -> top-k.

use std::collections::BTreeSet;

use std::time::Instant;
use tracing::Instrument;

use redrec_encoder::{Manifest, UserHistory};
use redrec_shard_api::points::Hit;

use crate::api::{HistoryReport, MergeMode, QueryList, RecommendRequest, RecommendResponse};
use crate::error::RouterError;
use crate::merge;
use crate::search::{check_ef, check_filter, item_vectors, search_groups, Depth};
use crate::state::RouterState;
use crate::user_cache::{CachedUser, UserCache};

/// A request that passed validation, its history cut to what the tower reads.
struct Plan {
    /// (item id, scenario index), oldest to newest, at most `max_history`.
    events: Vec<(String, i64)>,
    /// Every item id the request named, for `exclude_seen`.
    seen: BTreeSet<String>,
    /// (query index, weight) for queries with a positive weight in the target scenario.
    queries: Vec<(usize, f32)>,
    report: HistoryReport,
}

fn plan(req: &RecommendRequest, m: &Manifest, max_k: usize) -> Result<Plan, RouterError> {
    if m.scenario_index(&req.scenario).is_none() {
        return Err(RouterError::bad(
            "unknown_scenario",
            format!(
                "unknown scenario {:?}; known: {:?}",
                req.scenario, m.scenarios
            ),
        ));
    }
    if req.k == 0 || req.k > max_k {
        return Err(RouterError::bad(
            "invalid_k",
            format!("k must be between 1 and {max_k}, got {}", req.k),
        ));
    }
    if req.history.is_empty() {
        return Err(RouterError::bad(
            "empty_history",
            "history is empty: send at least one event",
        ));
    }
    check_filter(req.filter.as_ref())?;
    check_ef(req.ef)?;
    match req.mmr_lambda {
        Some(l) if !(0.0..=1.0).contains(&l) => {
            return Err(RouterError::bad(
                "invalid_mmr_lambda",
                format!("mmr_lambda must be between 0 and 1, got {l}"),
            ))
        }
        Some(_) if req.merge != MergeMode::Mmr => {
            return Err(RouterError::bad(
                "invalid_mmr_lambda",
                "mmr_lambda goes with \"merge\": \"mmr\"",
            ))
        }
        _ => {}
    }
    let mut events = Vec::with_capacity(req.history.len());
    for (i, e) in req.history.iter().enumerate() {
        if e.item_id.is_empty() {
            return Err(RouterError::bad(
                "invalid_history",
                format!("history[{i}].item_id is empty"),
            ));
        }
        let s = m.scenario_index(&e.scenario).ok_or_else(|| {
            RouterError::bad(
                "unknown_scenario",
                format!(
                    "history[{i}]: unknown scenario {:?}; known: {:?}",
                    e.scenario, m.scenarios
                ),
            )
        })?;
        events.push((e.ts, e.item_id.clone(), s as i64));
    }
    if events.iter().all(|(ts, ..)| ts.is_some()) {
        events.sort_by_key(|(ts, ..)| *ts); // stable: equal timestamps keep request order
    }
    let seen = events.iter().map(|(_, id, _)| id.clone()).collect();
    let truncated = events.len().saturating_sub(m.max_history);
    let events: Vec<_> = events
        .into_iter()
        .skip(truncated)
        .map(|(_, id, s)| (id, s))
        .collect();
    let queries: Vec<(usize, f32)> = m
        .weights(&req.scenario)
        .into_iter()
        .enumerate()
        .filter(|(_, w)| *w > 0.0)
        .collect();
    let report = HistoryReport {
        received: req.history.len(),
        truncated,
        ..Default::default()
    };
    Ok(Plan {
        events,
        seen,
        queries,
        report,
    })
}

/// Looks up the history's item vectors on their shards; unknown and unreachable items are
/// skipped and counted.
async fn history_vectors(
    state: &RouterState,
    plan: &mut Plan,
    deadline: Instant,
) -> Result<UserHistory, RouterError> {
    let cluster = state.cluster.get();
    let ids = plan.events.iter().map(|(id, _)| id.clone()).collect();
    let (vectors, down) = item_vectors(state, ids, deadline).await;
    let mut history = UserHistory::default();
    for (id, scenario) in &plan.events {
        match vectors.get(id) {
            Some(v) => {
                history.vectors.push(v.clone());
                history.scenarios.push(*scenario);
            }
            None if down.contains(&cluster.slots.shard_of(id)) => plan.report.unavailable += 1,
            None => plan.report.unknown += 1,
        }
    }
    plan.report.used = history.vectors.len();
    if history.vectors.is_empty() {
        return Err(if plan.report.unavailable > 0 {
            RouterError::ShardsUnavailable(
                "the shards holding this history did not answer in time".into(),
            )
        } else {
            RouterError::bad(
                "no_known_history",
                format!("none of the {} history items is known", plan.events.len()),
            )
        });
    }
    Ok(history)
}

/// Every group's list of every query, with its query's weight.
fn weighted<'a>(
    queries: &'a [(usize, f32)],
    per_query: Vec<Vec<Vec<Hit>>>,
) -> impl Iterator<Item = (f32, Vec<Hit>)> + 'a {
    queries
        .iter()
        .zip(per_query)
        .flat_map(|((_, w), lists)| lists.into_iter().map(move |l| (*w, l)))
}

/// Relevance against novelty in an MMR merge, unless the request says.
const DEFAULT_MMR_LAMBDA: f32 = 0.8;

pub async fn recommend(
    state: &RouterState,
    mut req: RecommendRequest,
) -> Result<RecommendResponse, RouterError> {
    let started = Instant::now();
    let deadline = started + state.cfg.deadline;
    let m = state.encoder.manifest();
    // A known user's stored events come first, then the request's.
    if let Some(user) = &req.user_id {
        crate::ingest::check_id(user).map_err(|m| RouterError::bad("invalid_user_id", m))?;
        let stored =
            crate::users::stored_history(state, user, started + state.cfg.deadline / 4).await?;
        req.history = crate::users::merged(stored, &req.history);
    }
    if req.history.len() > state.cfg.max_history_events {
        return Err(RouterError::bad(
            "history_too_long",
            format!(
                "history has {} events; at most {} are taken (the newest {} feed the towers)",
                req.history.len(),
                state.cfg.max_history_events,
                m.max_history
            ),
        ));
    }
    let mut plan = plan(&req, m, state.cfg.max_k)?;
    let key = UserCache::key(req.user_id.as_deref(), &plan.events, &m.model_version);
    let queries = match state.users.get(key) {
        Some(hit) => {
            metrics::counter!("redrec_user_cache_total", "result" => "hit").increment(1);
            plan.report = HistoryReport {
                received: plan.report.received,
                truncated: plan.report.truncated,
                cached: true,
                ..hit.report
            };
            hit.queries
        }
        None => {
            metrics::counter!("redrec_user_cache_total", "result" => "miss").increment(1);
            // The lookup may use half the deadline: a hung shard must not leave the
            // search no time.
            let history = history_vectors(state, &mut plan, started + state.cfg.deadline / 2)
                .instrument(tracing::info_span!(target: "redrec::trace", "history lookup"))
                .await?;
            // The user tower may run until three quarters of it: the search needs the rest.
            let queries = state
                .encoder
                .encode_users(vec![history], Some(started + state.cfg.deadline * 3 / 4))
                .instrument(tracing::info_span!(target: "redrec::trace", "user tower"))
                .await?
                .pop()
                .unwrap_or_default();
            if plan.report.unavailable == 0 {
                let entry = CachedUser {
                    queries: queries.clone(),
                    report: plan.report.clone(),
                };
                state.users.insert(key, entry);
            }
            queries
        }
    };
    let active: Vec<Vec<f32>> = plan
        .queries
        .iter()
        .filter_map(|(q, _)| queries.get(*q).cloned())
        .collect();
    if active.len() != plan.queries.len() {
        return Err(RouterError::Encoder(
            redrec_encoder::EncoderError::Contract(format!(
                "user tower returned {} queries, manifest names {}",
                queries.len(),
                m.queries()
            )),
        ));
    }

    let exclude: Vec<String> = if req.exclude_seen {
        plan.seen.iter().cloned().collect()
    } else {
        Vec::new()
    };
    let mut found = search_groups(
        state,
        active,
        Depth {
            k: req.k,
            ef: req.ef,
        },
        req.filter.clone(),
        &exclude,
        req.consistency,
        deadline,
    )
    .await?;
    let per_query = std::mem::take(&mut found.per_query);
    let merging = tracing::info_span!(target: "redrec::trace", "merge", merge = ?req.merge);
    let merged = async {
        match req.merge {
            MergeMode::Max => {
                let lists = weighted(&plan.queries, per_query);
                (Some(merge::max_over_queries(lists, req.k)), None)
            }
            MergeMode::Quota => {
                let lists = plan
                    .queries
                    .iter()
                    .zip(per_query)
                    .map(|((_, w), lists)| {
                        let mut list = merge::single_query(lists, req.k);
                        list.iter_mut().for_each(|r| r.score *= w);
                        (*w, list)
                    })
                    .collect();
                (Some(merge::quota(lists, req.k)), None)
            }
            MergeMode::Mmr => {
                let lists = weighted(&plan.queries, per_query);
                let pool = merge::max_over_queries(lists, req.k.max(4 * req.k.min(merge::MMR_MAX)));
                let ids = pool.iter().map(|r| r.id.clone()).collect();
                let (vectors, _) = item_vectors(state, ids, deadline).await;
                let lambda = req.mmr_lambda.unwrap_or(DEFAULT_MMR_LAMBDA);
                (Some(merge::mmr(pool, &vectors, req.k, lambda)), None)
            }
            MergeMode::PerQuery => {
                let lists = plan
                    .queries
                    .iter()
                    .zip(per_query)
                    .map(|((q, w), lists)| QueryList {
                        query: m.query_names.get(*q).cloned().unwrap_or_default(),
                        weight: *w,
                        items: merge::single_query(lists, req.k),
                    })
                    .collect();
                (None, Some(lists))
            }
        }
    }
    .instrument(merging.clone())
    .await;
    let (mut items, mut per_query) = merged;
    let winners = items.iter_mut().flatten().chain(
        per_query
            .iter_mut()
            .flatten()
            .flat_map(|l: &mut QueryList| l.items.iter_mut()),
    );
    found
        .fill_payloads(state, winners, deadline)
        .instrument(merging)
        .await;
    Ok(RecommendResponse {
        items,
        per_query,
        coverage: found.coverage,
        history: plan.report,
        model_version: m.model_version.clone(),
        took_ms: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HistoryEvent;

    fn manifest() -> Manifest {
        serde_json::from_value(serde_json::json!({
            "model_version": "t", "dim": 4, "max_history": 3, "max_tokens": 8,
            "scenarios": ["homefeed", "search", "ads"], "query_names": ["q0", "q1", "q2"],
            "mixing": {"search": [0.0, 1.0, 0.5]},
            "item_tower": {"file": "i.onnx", "inputs": [], "output": "item_embedding"},
            "user_tower": {"file": "u.onnx", "inputs": [], "output": "queries"}
        }))
        .unwrap()
    }

    fn req(history: Vec<(&str, &str, Option<i64>)>, scenario: &str, k: usize) -> RecommendRequest {
        RecommendRequest {
            user_id: None,
            history: history
                .into_iter()
                .map(|(id, s, ts)| HistoryEvent {
                    item_id: id.into(),
                    scenario: s.into(),
                    ts,
                })
                .collect(),
            scenario: scenario.into(),
            k,
            filter: None,
            ef: None,
            consistency: Default::default(),
            exclude_seen: true,
            merge: MergeMode::Max,
            mmr_lambda: None,
        }
    }

    fn code(r: Result<Plan, RouterError>) -> &'static str {
        match r {
            Err(RouterError::BadRequest { code, .. }) => code,
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => "ok",
        }
    }

    #[test]
    fn rejects_what_a_client_got_wrong() {
        let m = manifest();
        assert_eq!(
            code(plan(&req(vec![("a", "search", None)], "nope", 5), &m, 100)),
            "unknown_scenario"
        );
        assert_eq!(
            code(plan(
                &req(vec![("a", "shopping", None)], "search", 5),
                &m,
                100
            )),
            "unknown_scenario"
        );
        assert_eq!(
            code(plan(
                &req(vec![("a", "search", None)], "search", 0),
                &m,
                100
            )),
            "invalid_k"
        );
        assert_eq!(
            code(plan(
                &req(vec![("a", "search", None)], "search", 101),
                &m,
                100
            )),
            "invalid_k"
        );
        assert_eq!(
            code(plan(&req(vec![], "search", 5), &m, 100)),
            "empty_history"
        );
        assert_eq!(
            code(plan(&req(vec![("", "search", None)], "search", 5), &m, 100)),
            "invalid_history"
        );
        let mut r = req(vec![("a", "search", None)], "search", 5);
        r.filter = Some(serde_json::json!([1]));
        assert_eq!(code(plan(&r, &m, 100)), "invalid_filter");
        let mut deep = serde_json::json!({"key": "category", "match": {"value": "x"}});
        for _ in 0..40 {
            deep = serde_json::json!({ "must": [deep] });
        }
        r.filter = Some(deep);
        assert_eq!(code(plan(&r, &m, 100)), "filter_too_large");
        let wide: Vec<_> = (0..600)
            .map(|i| serde_json::json!({"key": "k", "match": {"value": i}}))
            .collect();
        r.filter = Some(serde_json::json!({ "should": wide }));
        assert_eq!(code(plan(&r, &m, 100)), "filter_too_large");
        r.filter = Some(serde_json::json!({"must": [{"key": "k", "match": {"value": 1}}]}));
        assert!(plan(&r, &m, 100).is_ok());
    }

    #[test]
    fn keeps_the_newest_events_by_time_and_the_scenario_weights() {
        let m = manifest();
        let r = req(
            vec![
                ("d", "ads", Some(40)),
                ("a", "homefeed", Some(10)),
                ("c", "search", Some(30)),
                ("b", "homefeed", Some(20)),
            ],
            "search",
            5,
        );
        let p = plan(&r, &m, 100).unwrap();
        assert_eq!(
            p.events,
            [
                ("b".to_string(), 0),
                ("c".to_string(), 1),
                ("d".to_string(), 2)
            ]
        );
        assert_eq!(p.report.truncated, 1);
        assert_eq!(
            p.seen.len(),
            4,
            "truncated events are still excluded as seen"
        );
        assert_eq!(p.queries, [(1, 1.0), (2, 0.5)]);
        assert_eq!(
            plan(&req(vec![("a", "ads", None)], "homefeed", 5), &m, 100)
                .unwrap()
                .queries
                .len(),
            3
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever history a caller sends, planning answers (never panics): a plan
            /// whose events fit the towers' window and whose queries the manifest weighs,
            /// or a client error.
            #[test]
            fn any_request_plans_or_is_refused(
                history in proptest::collection::vec(
                    (".{0,8}", prop_oneof![
                        Just("homefeed".to_string()), Just("search".to_string()),
                        Just("ads".to_string()), ".{0,6}"
                    ], proptest::option::of(any::<i64>())),
                    0..40,
                ),
                scenario in prop_oneof![Just("search".to_string()), ".{0,6}"],
                k in 0usize..30,
            ) {
                let history = history
                    .iter()
                    .map(|(id, s, ts)| (id.as_str(), s.as_str(), *ts))
                    .collect();
                match plan(&req(history, &scenario, k), &manifest(), 10) {
                    Ok(p) => {
                        prop_assert!(p.events.len() <= 3);
                        prop_assert!(!p.queries.is_empty());
                        prop_assert!((1..=10).contains(&k));
                    }
                    Err(e) => {
                        let client_error = matches!(e, RouterError::BadRequest { .. });
                        prop_assert!(client_error, "{}", e);
                    }
                }
            }
        }
    }
}
