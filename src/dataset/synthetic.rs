//! Deterministic synthetic multi-scenario interaction data (items with text, users whose
//! interests drift, events in homefeed/search/ads, held-out next items), as JSONL.
//!
//! Each scenario exposes a user's interests differently, which is what a cross-scenario
//! user tower has to untangle: homefeed follows the interest mixture and popularity,
//! search concentrates on the strongest current intent and reaches the long tail, ads
//! are broad and noisy. Python training and Rust evaluation read the same files.

use std::fs;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::vocabulary::{pseudo_word, CATEGORIES, GENERIC};
use super::{write_jsonl, Event, Item, Meta, User, SCENARIOS};

const SUBTOPICS: usize = 4;
const ENTITIES_PER_SUBTOPIC: usize = 6;
const WORLD_SEED: u64 = 0x0005_eed0_fa11;

#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub items: usize,
    pub users: usize,
    pub seed: u64,
    pub min_events: usize,
    pub max_events: usize,
    pub holdout: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            items: 10_000,
            users: 2_000,
            seed: 42,
            min_events: 40,
            max_events: 120,
            holdout: 10,
        }
    }
}

/// The catalogue plus per-subtopic popularity samplers that events draw from.
pub struct Catalogue {
    pub items: Vec<Item>,
    /// Item indices per (topic * SUBTOPICS + subtopic), with popularity weights.
    by_subtopic: Vec<(Vec<usize>, WeightedIndex<f64>)>,
    global: WeightedIndex<f64>,
}

/// Popularity follows a Zipf-like law over a random rank.
fn popularity(rng: &mut ChaCha8Rng, n: usize) -> f64 {
    let rank = rng.random_range(0..n.max(1)) as f64;
    1.0 / (rank + 5.0).powf(0.9)
}

impl Catalogue {
    pub fn generate(n_items: usize, seed: u64) -> Result<Self> {
        ensure!(
            n_items >= CATEGORIES.len() * SUBTOPICS,
            "need at least {} items",
            CATEGORIES.len() * SUBTOPICS
        );
        // Entity names are the same world for every seed, so towers trained on one seed's
        // catalogue read another's: only which items exist and who likes them change.
        let mut world = ChaCha8Rng::seed_from_u64(WORLD_SEED);
        let entities: Vec<Vec<String>> = (0..CATEGORIES.len() * SUBTOPICS)
            .map(|_| {
                (0..ENTITIES_PER_SUBTOPIC)
                    .map(|_| pseudo_word(&mut world))
                    .collect()
            })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x17e3_5eed);
        let mut items = Vec::with_capacity(n_items);
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); entities.len()];
        let mut weights: Vec<Vec<f64>> = vec![Vec::new(); entities.len()];
        let mut global_weights = Vec::with_capacity(n_items);
        for idx in 0..n_items {
            // Round-robin over subtopics so every subtopic has items even at small sizes.
            let sub = idx % entities.len();
            let (category, words) = &CATEGORIES[sub / SUBTOPICS];
            let ents = &entities[sub];
            let n_words = rng.random_range(4..=7);
            let mut title = Vec::with_capacity(n_words);
            for _ in 0..n_words {
                let r: f64 = rng.random();
                let word = if r < 0.45 {
                    ents.choose(&mut rng).cloned().unwrap_or_default()
                } else if r < 0.8 {
                    words
                        .choose(&mut rng)
                        .copied()
                        .unwrap_or_default()
                        .to_string()
                } else {
                    GENERIC
                        .choose(&mut rng)
                        .copied()
                        .unwrap_or_default()
                        .to_string()
                };
                title.push(word);
            }
            let mut tags = vec![ents.choose(&mut rng).cloned().unwrap_or_default()];
            tags.push(words.choose(&mut rng).copied().unwrap_or("").to_string());
            if rng.random_bool(0.5) {
                tags.push(category.to_string());
            }
            tags.dedup();
            let title = title.join(" ");
            let text = format!("{title} | {category} | {}", tags.join(" "));
            let pop = popularity(&mut rng, n_items / entities.len() + 1);
            members[sub].push(idx);
            weights[sub].push(pop);
            global_weights.push(pop);
            items.push(Item {
                id: format!("n{idx}"),
                title,
                category: category.to_string(),
                tags,
                text,
            });
        }
        let by_subtopic = members
            .into_iter()
            .zip(weights)
            .map(|(m, w)| Ok((m, WeightedIndex::new(w)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            items,
            by_subtopic,
            global: WeightedIndex::new(global_weights)?,
        })
    }

    fn popular_in(&self, sub: usize, rng: &mut ChaCha8Rng) -> usize {
        let (m, w) = &self.by_subtopic[sub];
        m[w.sample(rng)]
    }

    fn uniform_in(&self, sub: usize, rng: &mut ChaCha8Rng) -> usize {
        let (m, _) = &self.by_subtopic[sub];
        m[rng.random_range(0..m.len())]
    }
}

struct Interest {
    sub: usize,
    start: f64,
    end: f64,
    weight: f64,
}

impl Interest {
    /// Interests rise and fade over the user's timeline (t in 0..=1, holdout at t > 1).
    fn weight_at(&self, t: f64) -> f64 {
        if t < self.start || t > self.end {
            0.0
        } else {
            self.weight
        }
    }
}

/// One user's events: a timeline whose tail (beyond the history) is the holdout.
pub fn generate_user(cat: &Catalogue, cfg: &SynthConfig, uid: usize) -> User {
    let mut rng =
        ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003).wrapping_add(uid as u64));
    let n_subs = cat.by_subtopic.len();
    let n_interests = rng.random_range(2..=4);
    let mut interests: Vec<Interest> = (0..n_interests)
        .map(|_| Interest {
            sub: rng.random_range(0..n_subs),
            start: 0.0,
            end: 2.0,
            weight: rng.random_range(0.5..1.5),
        })
        .collect();
    // Drift: one interest fades out midway, a new one appears and lasts into the holdout.
    if let Some(first) = interests.first_mut() {
        first.end = rng.random_range(0.4..0.8);
    }
    interests.push(Interest {
        sub: rng.random_range(0..n_subs),
        start: rng.random_range(0.3..0.7),
        end: 2.0,
        weight: 1.5,
    });
    let scenario_mix = WeightedIndex::new([0.6, 0.25, 0.15]).expect("constant weights are valid");

    let n_events = rng.random_range(cfg.min_events..=cfg.max_events.max(cfg.min_events));
    let mut ts: u64 = 1_700_000_000 + rng.random_range(0..86_400 * 30);
    let mut history = Vec::with_capacity(n_events);
    let mut seen = std::collections::HashSet::new();
    let pick_interest = |rng: &mut ChaCha8Rng, t: f64, power: i32| -> usize {
        let w: Vec<f64> = interests
            .iter()
            .map(|i| i.weight_at(t).powi(power))
            .collect();
        match WeightedIndex::new(&w) {
            Ok(d) => interests[d.sample(rng)].sub,
            Err(_) => interests[interests.len() - 1].sub,
        }
    };
    for e in 0..n_events {
        let t = e as f64 / n_events as f64;
        ts += rng.random_range(30..3_600);
        let scenario = scenario_mix.sample(&mut rng);
        let item = match scenario {
            0 => {
                if rng.random_bool(0.85) {
                    cat.popular_in(pick_interest(&mut rng, t, 1), &mut rng)
                } else {
                    cat.global.sample(&mut rng)
                }
            }
            1 => cat.uniform_in(pick_interest(&mut rng, t, 3), &mut rng),
            _ => {
                if rng.random_bool(0.5) {
                    let topic = pick_interest(&mut rng, t, 1) / SUBTOPICS;
                    cat.popular_in(topic * SUBTOPICS + rng.random_range(0..SUBTOPICS), &mut rng)
                } else {
                    cat.global.sample(&mut rng)
                }
            }
        };
        seen.insert(item);
        history.push(Event {
            item_id: cat.items[item].id.clone(),
            scenario: SCENARIOS[scenario].to_string(),
            ts,
        });
    }
    let mut holdout = Vec::with_capacity(cfg.holdout);
    let mut tries = 0;
    while holdout.len() < cfg.holdout && tries < cfg.holdout * 50 {
        tries += 1;
        let t = 1.0 + holdout.len() as f64 / cfg.holdout.max(1) as f64 * 0.1;
        let item = if rng.random_bool(0.9) {
            cat.popular_in(pick_interest(&mut rng, t, 1), &mut rng)
        } else {
            cat.global.sample(&mut rng)
        };
        if seen.insert(item) {
            ts += rng.random_range(30..3_600);
            holdout.push(Event {
                item_id: cat.items[item].id.clone(),
                scenario: SCENARIOS[0].to_string(),
                ts,
            });
        }
    }
    User {
        user_id: format!("u{uid}"),
        history,
        holdout,
    }
}

/// Writes `items.jsonl`, `users.jsonl` and `meta.json` under `out`.
pub fn write(cfg: &SynthConfig, out: &Path) -> Result<Catalogue> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let cat = Catalogue::generate(cfg.items, cfg.seed)?;
    write_jsonl(&out.join("items.jsonl"), &cat.items)?;
    write_jsonl(
        &out.join("users.jsonl"),
        (0..cfg.users).map(|u| generate_user(&cat, cfg, u)),
    )?;
    let meta = Meta {
        generator: "redrec dataset synth".into(),
        seed: cfg.seed,
        items: cfg.items,
        users: cfg.users,
        scenarios: SCENARIOS.iter().map(|s| s.to_string()).collect(),
    };
    fs::write(out.join("meta.json"), serde_json::to_vec_pretty(&meta)?)?;
    Ok(cat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let cfg = SynthConfig {
            items: 500,
            users: 20,
            ..Default::default()
        };
        let a = Catalogue::generate(cfg.items, 7).unwrap();
        let b = Catalogue::generate(cfg.items, 7).unwrap();
        let c = Catalogue::generate(cfg.items, 8).unwrap();
        assert_eq!(
            a.items.iter().map(|i| &i.text).collect::<Vec<_>>(),
            b.items.iter().map(|i| &i.text).collect::<Vec<_>>()
        );
        assert_ne!(
            a.items.iter().map(|i| &i.text).collect::<Vec<_>>(),
            c.items.iter().map(|i| &i.text).collect::<Vec<_>>()
        );
        let ua = serde_json::to_string(&generate_user(&a, &cfg, 3)).unwrap();
        let ub = serde_json::to_string(&generate_user(&b, &cfg, 3)).unwrap();
        assert_eq!(ua, ub);
    }

    #[test]
    fn users_span_scenarios_and_holdout_is_unseen() {
        let cfg = SynthConfig {
            items: 2_000,
            users: 50,
            ..Default::default()
        };
        let cat = Catalogue::generate(cfg.items, cfg.seed).unwrap();
        let mut scenarios = std::collections::HashSet::new();
        for u in 0..cfg.users {
            let user = generate_user(&cat, &cfg, u);
            assert!(user.history.len() >= cfg.min_events);
            assert_eq!(user.holdout.len(), cfg.holdout);
            assert!(user.history.windows(2).all(|w| w[0].ts < w[1].ts));
            let seen: std::collections::HashSet<_> =
                user.history.iter().map(|e| &e.item_id).collect();
            assert!(user.holdout.iter().all(|e| !seen.contains(&e.item_id)));
            scenarios.extend(user.history.iter().map(|e| e.scenario.clone()));
        }
        assert_eq!(scenarios.len(), 3);
    }

    #[test]
    fn holdout_shares_interests_with_history() {
        // The signal a recommender must find: holdout items come from the history's categories
        // far more often than chance (1/24).
        let cfg = SynthConfig {
            items: 5_000,
            users: 100,
            ..Default::default()
        };
        let cat = Catalogue::generate(cfg.items, cfg.seed).unwrap();
        let category: std::collections::HashMap<_, _> = cat
            .items
            .iter()
            .map(|i| (i.id.clone(), i.category.clone()))
            .collect();
        let (mut hits, mut total) = (0, 0);
        for u in 0..cfg.users {
            let user = generate_user(&cat, &cfg, u);
            let recent: std::collections::HashSet<_> = user
                .history
                .iter()
                .rev()
                .take(30)
                .map(|e| &category[&e.item_id])
                .collect();
            for e in &user.holdout {
                total += 1;
                hits += usize::from(recent.contains(&category[&e.item_id]));
            }
        }
        assert!(hits as f64 / total as f64 > 0.5, "{hits}/{total}");
    }
}
