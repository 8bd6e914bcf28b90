//! `redrec bench ids`: what packing hex item ids into point ids saves. The same points,
//! ids of 24 hex digits (as ObjectIds are), go into an embedded store under `packed` (the
//! id is its point id) and under `direct`, the scheme before it (the id hashed, kept in
//! the payload); each store is loaded, left to settle (indexed, merged), then measured:
//! payload and disk bytes per item, and one thread's searches per second without payloads
//! (which under `direct` read each hit's id from its payload). Schemes take turns.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use redrec_shard::store::edge::EdgeStore;
use redrec_shard::store::VectorStore;
use redrec_shard_api::collection::Collection;
use redrec_shard_api::points::{Point, PointIds, SearchRequest};

use crate::bench_cluster::data::Data;

/// The catalogue's cluster centres, as `redrec bench cluster` draws them by default.
const CLUSTERS: usize = 1024;
const SEED: u64 = 7;

#[derive(Args, Clone)]
pub struct IdsBenchArgs {
    /// Points in each store.
    #[arg(long, default_value_t = 100_000)]
    n: usize,
    /// Searches measured on each store (one thread, k=10).
    #[arg(long, default_value_t = 2_000)]
    searches: usize,
    /// Turns each scheme takes (a fresh store each).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Dimension of the vectors.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Longest a store may take to settle (index and merge) after its load.
    #[arg(long, default_value_t = 3600)]
    settle_timeout_s: u64,
}

struct Row {
    scheme: PointIds,
    payload_b: f64,
    disk_b: f64,
    searches_per_s: f64,
}

pub async fn ids(a: IdsBenchArgs) -> Result<()> {
    tokio::task::spawn_blocking(move || run(&a)).await?
}

fn run(a: &IdsBenchArgs) -> Result<()> {
    // The cluster bench's catalogue (its queries and their truth are not needed here).
    let data = Data::generate(a.n, 0, a.dim, CLUSTERS, 10, SEED);
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let ids: Vec<String> = (0..a.n)
        .map(|_| format!("{:024x}", rng.random::<u128>() >> 32))
        .collect();
    let mut rows = Vec::new();
    for round in 0..a.rounds {
        for scheme in [PointIds::Direct, PointIds::Packed] {
            let row = measure(a, scheme, &ids, &data)?;
            eprintln!(
                "  round {}: {scheme:?}: {:.1} B of payload per item, {:.0} searches/s",
                round + 1,
                row.payload_b,
                row.searches_per_s
            );
            rows.push(row);
        }
    }
    println!(
        "redrec bench ids: {} points of {} floats, ids of 24 hex digits, {} searches per store",
        a.n, a.dim, a.searches
    );
    println!("| scheme | payload B/item | disk B/item | searches/s (1 thread, k=10) |");
    println!("|---|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {:?} | {:.1} | {:.0} | {:.0} |",
            r.scheme, r.payload_b, r.disk_b, r.searches_per_s
        );
    }
    let sum = |s: PointIds, f: fn(&Row) -> f64| -> f64 {
        rows.iter().filter(|r| r.scheme == s).map(f).sum()
    };
    let ratio = |f: fn(&Row) -> f64| sum(PointIds::Packed, f) / sum(PointIds::Direct, f);
    println!(
        "packed / direct: disk {:.3}, searches/s {:.2}",
        ratio(|r| r.disk_b),
        ratio(|r| r.searches_per_s)
    );
    Ok(())
}

fn measure(a: &IdsBenchArgs, scheme: PointIds, ids: &[String], data: &Data) -> Result<Row> {
    let dir = tempfile::tempdir()?;
    let c = Collection {
        point_ids: scheme,
        ..Default::default()
    };
    let store = EdgeStore::open(dir.path(), a.dim, &c)?;
    for from in (0..a.n).step_by(1000) {
        let to = (from + 1000).min(a.n);
        let points = (from..to)
            .map(|i| Point {
                id: ids[i].clone(),
                vector: data.item(i).to_vec(),
                payload: Default::default(),
            })
            .collect();
        store.upsert(points)?;
    }
    let limit = Duration::from_secs(a.settle_timeout_s);
    let loaded = Instant::now();
    while !store.stats()?.settled {
        if loaded.elapsed() > limit {
            bail!("{scheme:?}: the store did not settle within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let started = Instant::now();
    for i in 0..a.searches {
        let query = data.item((i * 7919) % a.n).to_vec();
        store.search(&SearchRequest::nearest(vec![query], 10))?;
    }
    let searches_per_s = a.searches as f64 / started.elapsed().as_secs_f64();
    let memory = store.stats()?.memory;
    let per_item = |b: u64| b as f64 / a.n as f64;
    Ok(Row {
        scheme,
        payload_b: per_item(memory.payloads),
        disk_b: per_item(memory.disk),
        searches_per_s,
    })
}
