//! The bench's catalogue and queries: unit vectors drawn around cluster centres (as item
//! embeddings gather by topic), deterministic by seed, and the exact top-k of every query
//! by brute force, the truth recall is measured against.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

pub struct Data {
    pub dim: usize,
    /// `n × dim`, row by row.
    pub items: Vec<f32>,
    pub queries: Vec<Vec<f32>>,
    /// Item indices of each query's exact top k, best first.
    pub truth: Vec<Vec<u32>>,
    /// The centres items are drawn around.
    centres: Vec<Vec<f32>>,
}

/// How far a point strays from its centre, per dimension (uniform, this half-width).
const SPREAD: f32 = 0.17;

fn normalise(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
}

fn around(centre: &[f32], rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut v: Vec<f32> = centre
        .iter()
        .map(|c| c + rng.random_range(-SPREAD..SPREAD))
        .collect();
    normalise(&mut v);
    v
}

impl Data {
    pub fn item(&self, i: usize) -> &[f32] {
        &self.items[i * self.dim..(i + 1) * self.dim]
    }

    pub fn len(&self) -> usize {
        self.items.len() / self.dim
    }

    /// `n` items and `q` queries in `dim` dimensions around `clusters` centres.
    pub fn generate(n: usize, q: usize, dim: usize, clusters: usize, k: usize, seed: u64) -> Data {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centres: Vec<Vec<f32>> = (0..clusters.max(1))
            .map(|_| {
                let mut c: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
                normalise(&mut c);
                c
            })
            .collect();
        // Items in parallel chunks, each chunk from its own seed.
        const CHUNK: usize = 65_536;
        let items: Vec<f32> = (0..n.div_ceil(CHUNK))
            .into_par_iter()
            .flat_map_iter(|c| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (c as u64 + 1) << 20);
                let len = CHUNK.min(n - c * CHUNK);
                let centres = &centres;
                (0..len)
                    .flat_map(move |_| {
                        let centre = &centres[rng.random_range(0..centres.len())];
                        around(centre, &mut rng)
                    })
                    .collect::<Vec<f32>>()
            })
            .collect();
        let queries: Vec<Vec<f32>> = (0..q)
            .map(|_| {
                let centre = &centres[rng.random_range(0..centres.len())];
                around(centre, &mut rng)
            })
            .collect();
        let mut data = Data {
            dim,
            items,
            queries,
            truth: Vec::new(),
            centres,
        };
        data.truth = data.exact(k);
        data
    }

    /// `count` more items around the same centres (`count × dim`, row by row), not in the
    /// catalogue: what a write stream adds to it. Deterministic by `seed`.
    pub fn fresh(&self, count: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count)
            .flat_map(|_| {
                let centre = &self.centres[rng.random_range(0..self.centres.len())];
                around(centre, &mut rng)
            })
            .collect()
    }

    /// Each query's exact top `k` by dot product.
    fn exact(&self, k: usize) -> Vec<Vec<u32>> {
        self.queries
            .par_iter()
            .map(|q| {
                // A small sorted list of the best (score, index) so far.
                let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
                for (i, item) in self.items.chunks_exact(self.dim).enumerate() {
                    let s: f32 = item.iter().zip(q).map(|(a, b)| a * b).sum();
                    if best.len() == k && s <= best[k - 1].0 {
                        continue;
                    }
                    let at = best.partition_point(|(b, _)| *b >= s);
                    best.insert(at, (s, i as u32));
                    best.truncate(k);
                }
                best.into_iter().map(|(_, i)| i).collect()
            })
            .collect()
    }
}

/// Recall@k of `found` (item indices per query) against `truth`.
pub fn recall(found: &[Vec<u32>], truth: &[Vec<u32>]) -> f64 {
    let (mut hit, mut total) = (0usize, 0usize);
    for (f, t) in found.iter().zip(truth) {
        total += t.len();
        hit += f.iter().filter(|i| t.contains(i)).count();
    }
    hit as f64 / total.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_unit_vectors_and_exact_truth() {
        let a = Data::generate(2_000, 20, 16, 8, 10, 7);
        let b = Data::generate(2_000, 20, 16, 8, 10, 7);
        assert_eq!(a.items, b.items);
        assert_eq!(a.len(), 2_000);
        let norm: f32 = a.item(5).iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        // The truth is the brute-force best: no item outscores the tenth.
        let q = &a.queries[0];
        let score = |i: usize| a.item(i).iter().zip(q).map(|(x, y)| x * y).sum::<f32>();
        let tenth = score(a.truth[0][9] as usize);
        let better = (0..a.len()).filter(|&i| score(i) > tenth).count();
        assert_eq!(better, 9);
        assert_eq!(recall(&a.truth, &a.truth), 1.0);
        assert_eq!(recall(&[vec![]], &a.truth[..1]), 0.0);
        // Fresh items: unit vectors, deterministic, not the catalogue's.
        let fresh = a.fresh(3, 9);
        assert_eq!(fresh, a.fresh(3, 9));
        assert_eq!(fresh.len(), 3 * 16);
        let norm: f32 = fresh[16..32].iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        assert!(fresh
            .chunks(16)
            .all(|f| (0..a.len()).all(|i| a.item(i) != f)));
    }
}
