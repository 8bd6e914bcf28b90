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
