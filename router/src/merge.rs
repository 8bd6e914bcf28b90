//! Merging per-shard, per-query top-k lists into one answer.
//!
//! Max-over-queries is exact from per-query top-k lists: an item in the true top-k
//! reaches its best score on some query, and on that query's list of its own shard it
//! must rank within k (otherwise k items beat it). Items are deduplicated by id, which
//! also covers an item found on two shards.

use std::cmp::Ordering;
use std::collections::HashMap;

use redrec_shard_api::points::Hit;

use crate::api::Recommendation;

fn rank(a: &Recommendation, b: &Recommendation) -> Ordering {
    b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id))
}

/// Each list comes with its query's weight; an item scores the max of weight x score.
pub fn max_over_queries(
    lists: impl IntoIterator<Item = (f32, Vec<Hit>)>,
    k: usize,
) -> Vec<Recommendation> {
    let mut best: HashMap<String, Recommendation> = HashMap::new();
    for (weight, hits) in lists {
        for hit in hits {
            let score = weight * hit.score;
            match best.get_mut(&hit.id) {
                Some(r) if r.score >= score => {}
                Some(r) => r.score = score,
                None => {
                    best.insert(
                        hit.id.clone(),
                        Recommendation {
                            id: hit.id,
                            score,
                            payload: hit.payload,
                        },
                    );
                }
            }
        }
    }
    let mut all: Vec<Recommendation> = best.into_values().collect();
    all.sort_by(rank);
    all.truncate(k);
    all
}

/// One query's lists from every shard into its top-k.
pub fn single_query(lists: impl IntoIterator<Item = Vec<Hit>>, k: usize) -> Vec<Recommendation> {
    max_over_queries(lists.into_iter().map(|l| (1.0, l)), k)
}

/// Shares of `k` in proportion to `weights` (largest remainder; ties to the earlier).
pub fn shares(weights: &[f32], k: usize) -> Vec<usize> {
    let total: f64 = weights.iter().map(|&w| f64::from(w.max(0.0))).sum();
    if total <= 0.0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights
        .iter()
        .map(|&w| k as f64 * f64::from(w.max(0.0)) / total)
        .collect();
    let mut shares: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let (fa, fb) = (exact[a].fract(), exact[b].fract());
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    let left = k.saturating_sub(shares.iter().sum());
    for &q in order.iter().take(left) {
        shares[q] += 1;
    }
    shares
}

/// Diversity across a user's interests: each query's list (best first, scores already
/// weighted) gets a share of `k` by its weight, and the lists are interleaved, a query at
/// a time in order of weight, each taking its next item no other query took. Lists that
/// run short leave their places to the best remaining items of all lists.
pub fn quota(lists: Vec<(f32, Vec<Recommendation>)>, k: usize) -> Vec<Recommendation> {
    let weights: Vec<f32> = lists.iter().map(|(w, _)| *w).collect();
    let shares = shares(&weights, k);
    let mut turn: Vec<usize> = (0..lists.len()).collect();
    turn.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
    let mut cursor = vec![0usize; lists.len()];
    let mut taken = vec![0usize; lists.len()];
    let mut chosen: Vec<Recommendation> = Vec::with_capacity(k);
    let mut seen: std::collections::HashSet<String> = Default::default();
    loop {
        let mut progressed = false;
        for &q in &turn {
            if chosen.len() == k || taken[q] == shares[q] {
                continue;
            }
            let list = &lists[q].1;
            while let Some(item) = list.get(cursor[q]) {
                cursor[q] += 1;
                if seen.insert(item.id.clone()) {
                    chosen.push(item.clone());
                    taken[q] += 1;
                    progressed = true;
                    break;
                }
            }
        }
        if !progressed {
            break;
        }
    }
    if chosen.len() < k {
        let mut rest: Vec<Recommendation> = lists
            .into_iter()
            .flat_map(|(_, l)| l)
            .filter(|r| !seen.contains(&r.id))
            .collect();
        rest.sort_by(rank);
        for r in rest {
            if chosen.len() == k {
                break;
            }
            if seen.insert(r.id.clone()) {
                chosen.push(r);
            }
        }
    }
    chosen
}

/// Most items maximal marginal relevance picks; past them, the ranking is the pool's.
pub const MMR_MAX: usize = 100;

/// Maximal marginal relevance over `pool` (ranked best first): greedily the item with the
/// best `lambda * score - (1 - lambda) * max similarity to the items already picked`,
/// similarity being the dot product of item vectors (`vectors`; an item without one is
/// similar to nothing). The first `min(k, MMR_MAX)` are picked so; the rest of the top
/// `k` follow in the pool's order.
pub fn mmr(
    mut pool: Vec<Recommendation>,
    vectors: &HashMap<String, Vec<f32>>,
    k: usize,
    lambda: f32,
) -> Vec<Recommendation> {
    let picks = k.min(MMR_MAX).min(pool.len());
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let mut chosen: Vec<Recommendation> = Vec::with_capacity(k);
    // Each candidate's highest similarity to what was picked so far.
    let mut nearest = vec![f32::NEG_INFINITY; pool.len()];
    let mut left: Vec<Option<Recommendation>> = pool.drain(..).map(Some).collect();
    for _ in 0..picks {
        let value = |i: usize, r: &Recommendation| {
            let redundancy = if nearest[i].is_finite() {
                nearest[i]
            } else {
                0.0
            };
            lambda * r.score - (1.0 - lambda) * redundancy
        };
        let Some(best) = left
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (i, value(i, r))))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(i, _)| i)
        else {
            break;
        };
        let item = left[best].take().expect("still left");
        if let Some(v) = vectors.get(&item.id) {
            for (i, other) in left.iter().enumerate() {
                if let Some(o) = other.as_ref().and_then(|o| vectors.get(&o.id)) {
                    nearest[i] = nearest[i].max(dot(v, o));
                }
            }
        }
        chosen.push(item);
    }
    chosen.extend(left.into_iter().flatten().take(k - chosen.len()));
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: &str, score: f32) -> Hit {
        Hit {
            id: id.into(),
            score,
            payload: Default::default(),
        }
    }

    fn ids(r: &[Recommendation]) -> Vec<&str> {
        r.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn takes_the_best_query_per_item_and_dedups() {
        let q0 = vec![hit("a", 0.9), hit("b", 0.5)];
        let q1 = vec![hit("b", 0.95), hit("c", 0.4), hit("a", 0.1)];
        let r = max_over_queries([(1.0, q0), (1.0, q1)], 10);
        assert_eq!(ids(&r), ["b", "a", "c"]);
        assert_eq!(r[0].score, 0.95);
        assert_eq!(r[1].score, 0.9);
    }

    #[test]
    fn weights_scale_and_k_truncates_with_stable_ties() {
        let q0 = vec![hit("a", 0.9)];
        let q1 = vec![hit("b", 0.8), hit("c", 0.8)];
        let r = max_over_queries([(0.5, q0), (1.0, q1)], 2);
        assert_eq!(ids(&r), ["b", "c"]);
        assert_eq!(
            single_query([vec![hit("x", 0.1)], vec![hit("y", 0.3)]], 5)[0].id,
            "y"
        );
    }

    fn rec(id: &str, score: f32) -> Recommendation {
        Recommendation {
            id: id.into(),
            score,
            payload: Default::default(),
        }
    }

    #[test]
    fn shares_follow_the_weights_and_add_up_to_k() {
        assert_eq!(shares(&[1.0, 1.0, 1.0], 10), [4, 3, 3]);
        assert_eq!(shares(&[2.0, 1.0, 1.0], 10), [5, 3, 2]);
        assert_eq!(shares(&[0.0, 1.0], 3), [0, 3]);
        assert_eq!(shares(&[0.0, 0.0], 3), [0, 0]);
    }

    #[test]
    fn quota_interleaves_the_queries_and_skips_what_another_took() {
        // Query 0 scores higher everywhere: a max merge would be all its items.
        let q0 = vec![rec("a", 0.9), rec("b", 0.8), rec("c", 0.7), rec("d", 0.6)];
        let q1 = vec![rec("a", 0.5), rec("x", 0.4), rec("y", 0.3)];
        let r = quota(vec![(1.0, q0.clone()), (1.0, q1.clone())], 4);
        assert_eq!(ids(&r), ["a", "x", "b", "y"]);
        // A list that runs short gives its places to the best of the rest.
        let r = quota(vec![(1.0, q0), (1.0, vec![rec("a", 0.5)])], 4);
        assert_eq!(ids(&r), ["a", "b", "c", "d"]);
    }

    #[test]
    fn mmr_trades_relevance_for_items_unlike_those_picked() {
        let pool = vec![rec("a", 1.0), rec("a2", 0.99), rec("b", 0.8)];
        let vectors: HashMap<String, Vec<f32>> = [
            ("a".to_string(), vec![1.0, 0.0]),
            ("a2".to_string(), vec![1.0, 0.0]),
            ("b".to_string(), vec![0.0, 1.0]),
        ]
        .into();
        assert_eq!(ids(&mmr(pool.clone(), &vectors, 3, 1.0)), ["a", "a2", "b"]);
        assert_eq!(ids(&mmr(pool.clone(), &vectors, 3, 0.5)), ["a", "b", "a2"]);
        assert_eq!(ids(&mmr(pool, &vectors, 2, 0.5)), ["a", "b"]);
    }

    #[test]
    #[allow(clippy::needless_range_loop)] // `qi` picks a column of a row-major table
    fn exact_against_brute_force_on_random_shards() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (n, q, shards, k) = (300, 3, 4, 10);
        let scores: Vec<Vec<f32>> = (0..n)
            .map(|_| (0..q).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        // Each shard returns its own per-query top-k.
        let mut lists = Vec::new();
        for s in 0..shards {
            for qi in 0..q {
                let mut local: Vec<Hit> = (0..n)
                    .filter(|i| i % shards == s)
                    .map(|i| hit(&format!("i{i}"), scores[i][qi]))
                    .collect();
                local.sort_by(|a, b| b.score.total_cmp(&a.score));
                local.truncate(k);
                lists.push((1.0, local));
            }
        }
        let merged = max_over_queries(lists, k);
        let mut brute: Vec<(f32, String)> = (0..n)
            .map(|i| {
                (
                    scores[i].iter().copied().fold(f32::MIN, f32::max),
                    format!("i{i}"),
                )
            })
            .collect();
        brute.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let want: Vec<&str> = brute.iter().take(k).map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids(&merged), want);
    }
}
