//! Measuring a setup: waiting for its indexes, then at each `ef` of the sweep a warm-up,
//! recall against exact search, and a timed load, with the CPU and memory it took.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use indicatif::ProgressBar;
use redrec_shard_api::points::Memory;
use redrec_shard_api::ShardClient;

use super::data;
use super::load::{self, cpu_seconds, machine_ticks, rss_bytes, Load, Target};
use super::{Bench, Built, Ready, Row, Setup, DIM};
use crate::bench_load::Completed;

impl Bench {
    /// The `ef`s each setup is measured at: the collection's default (none sent), or the
    /// sweep's.
    fn efs(&self) -> Vec<Option<usize>> {
        match self.a.search_ef.is_empty() {
            true => vec![None],
            false => self.a.search_ef.iter().copied().map(Some).collect(),
        }
    }

    /// Waits until `stores` hold `points` in all (each replica has applied every write,
    /// not only a quorum), none builds an index, each has settled (merged what it merges
    /// once writes pause) and holds at most a threshold's worth of unindexed points
    /// (searched exactly by design), three polls in a row; seconds taken.
    pub(super) async fn settle_stores(
        &self,
        label: &str,
        stores: &[ShardClient],
        points: usize,
    ) -> Result<f64> {
        let threshold = self.collection.indexing_threshold_kb * 1024 / (DIM * 4);
        let settled = || async {
            let mut held = 0;
            for s in stores {
                let st = s.stats(Duration::from_secs(10)).await?;
                if st.indexing
                    || !st.settled
                    || st.points.saturating_sub(st.indexed_vectors) > threshold
                {
                    return Ok::<_, anyhow::Error>(false);
                }
                held += st.points;
            }
            Ok(held == points)
        };
        self.settle(&format!("{label}: indexing"), settled).await
    }

    /// Polls `settled` until it holds three times in a row (`what` it waits for, on the
    /// spinner); seconds taken.
    pub(super) async fn settle<F, Fut>(&self, what: &str, settled: F) -> Result<f64>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let spinner = ProgressBar::new_spinner().with_message(what.to_string());
        let started = Instant::now();
        let limit = Duration::from_secs(self.a.settle_timeout_s);
        let mut in_a_row = 0;
        while in_a_row < 3 {
            spinner.tick();
            if started.elapsed() > limit {
                bail!("{what}: not done within {limit:?}");
            }
            in_a_row = if settled().await? { in_a_row + 1 } else { 0 };
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        spinner.finish_and_clear();
        Ok(started.elapsed().as_secs_f64() - 1.0)
    }

    /// Whether `--reuse` applies: `stores` already hold `copies` of every item.
    pub(super) async fn loaded(&self, stores: &[ShardClient], copies: usize) -> Result<bool> {
        if !self.a.reuse {
            return Ok(false);
        }
        let mut points = 0;
        for s in stores {
            points += s.stats(Duration::from_secs(30)).await?.points;
        }
        let loaded = points == self.data.len() * copies;
        if !loaded {
            eprintln!(
                "  --reuse: the stores hold {points} points, not {}: loading them",
                self.data.len() * copies
            );
        }
        Ok(loaded)
    }

    /// Vector RAM per item over `stores` holding `copies` replicas of the catalogue.
    pub(super) async fn vector_ram(&self, stores: &[ShardClient], copies: usize) -> Option<f64> {
        let mut m = Memory::default();
        for s in stores {
            m += s.stats(Duration::from_secs(10)).await.ok()?.memory;
        }
        Some((m.vectors_ram + m.quantized) as f64 / (self.data.len() * copies) as f64)
    }

    /// A setup built and serving: measured once every setup is ([`Bench::measure_all`]).
    pub(super) fn ready(
        &mut self,
        setup: Setup,
        label: &str,
        target: &Target,
        router: Option<i32>,
        shards: &[i32],
        built: Built,
    ) {
        self.ready.push(Ready {
            setup,
            label: label.into(),
            target: target.clone(),
            router,
            shards: shards.to_vec(),
            built,
        });
    }

    /// Every setup built, at each `ef` of the sweep: a warm-up and the recall pass before
    /// its first share of the load, then its load in `--rounds` shares taken in turn with
    /// the others' (every other round in reverse order); one row each, kept. CPU of its
    /// router and shards over its shares.
    pub(super) async fn measure_all(&mut self) -> Result<()> {
        let ready = std::mem::take(&mut self.ready);
        for r in &ready {
            self.place(r.router, &r.shards)?;
        }
        let runs: Vec<(&Ready, Option<usize>, String)> = (ready.iter())
            .flat_map(|r| {
                self.efs().into_iter().map(move |ef| {
                    let label = match ef {
                        Some(ef) => format!("{}, ef {ef}", r.label),
                        None => r.label.clone(),
                    };
                    (r, ef, label)
                })
            })
            .collect();
        let rounds = self.a.rounds as usize;
        let share = self.a.seconds / rounds as f64;
        let mut recalls = vec![0.0; runs.len()];
        let mut tallies: Vec<Tally> = runs.iter().map(|_| Tally::default()).collect();
        for round in 1..=rounds {
            // Every other round in reverse, so that no setup always follows the same one.
            let order: Vec<usize> = match round % 2 {
                1 => (0..runs.len()).collect(),
                _ => (0..runs.len()).rev().collect(),
            };
            for i in order {
                let (r, ef, label) = &runs[i];
                if round == 1 {
                    recalls[i] = self.prime(&r.target, *ef, label).await?;
                }
                let slice = self.slice(r, *ef, share, label).await?;
                if rounds > 1 {
                    eprintln!(
                        "  {label}: round {round} of {rounds}: {:.0} QPS",
                        slice.run.per_second()
                    );
                }
                tallies[i].qps.push(slice.run.per_second());
                tallies[i].spent.add(slice)?;
            }
        }
        for ((r, _, label), (tally, recall)) in runs.iter().zip(tallies.into_iter().zip(recalls)) {
            let row = tally.row(r, label, recall);
            eprintln!(
                "  {label:<28} {:>7.0} QPS  p50 {:>6.2} ms  p99 {:>6.2} ms  recall@{} {:.3}",
                row.qps, row.p50_ms, row.p99_ms, self.a.k, row.recall
            );
            self.rows.push(row);
        }
        self.unplace()
    }

    /// Every query once to warm the target, then once more for the recall against exact
    /// search.
    async fn prime(&self, target: &Target, ef: Option<usize>, label: &str) -> Result<f64> {
        let (k, concurrency) = (self.a.k, self.a.concurrency);
        let warming = Instant::now();
        let failed = load::warm(target, &self.data, k, ef, concurrency).await;
        eprintln!(
            "  {label}: warm-up, every query once: {:.1} s, {failed} failed (not counted)",
            warming.elapsed().as_secs_f64()
        );
        let found = load::answers(target, &self.data, k, ef, concurrency).await?;
        Ok(data::recall(&found, &self.data.truth))
    }

    /// One share of setup `r`'s load: `seconds` of it (after a warm-up of a fifth), with
    /// the CPU its processes, the clients and the machine spent meanwhile.
    async fn slice(
        &self,
        r: &Ready,
        ef: Option<usize>,
        seconds: f64,
        label: &str,
    ) -> Result<Slice> {
        let cpu = |pids: &[i32]| pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
        let me = std::process::id() as i32;
        let (r0, s0, c0) = (r.router.map(|p| cpu(&[p])), cpu(&r.shards), cpu(&[me]));
        let m0 = machine_ticks();
        let spinner = ProgressBar::new_spinner().with_message(format!("{label}: load"));
        spinner.enable_steady_tick(Duration::from_millis(200));
        let (k, concurrency) = (self.a.k, self.a.concurrency);
        let run = load::drive(&r.target, &self.data, k, ef, concurrency, seconds).await?;
        let m1 = machine_ticks();
        spinner.finish_and_clear();
        Ok(Slice {
            run,
            router: r.router.zip(r0).map(|(p, r0)| cpu(&[p]) - r0),
            shards: cpu(&r.shards) - s0,
            clients: cpu(&[me]) - c0,
            machine: (m1.0 - m0.0, m1.1 - m0.1),
        })
    }
}

/// A share of a setup's load (or its shares pooled) and the CPU seconds spent meanwhile;
/// `machine` in ticks (busy, all).
#[derive(Default)]
struct Slice {
    run: Completed,
    router: Option<f64>,
    shards: f64,
    clients: f64,
    machine: (u64, u64),
}

impl Slice {
    fn add(&mut self, s: Slice) -> Result<()> {
        self.run.add(&s.run)?;
        self.router = s.router.map(|r| r + self.router.unwrap_or(0.0));
        self.shards += s.shards;
        self.clients += s.clients;
        self.machine = (self.machine.0 + s.machine.0, self.machine.1 + s.machine.1);
        Ok(())
    }
}

/// A setup's shares of the load, pooled, and its QPS in each.
#[derive(Default)]
struct Tally {
    spent: Slice,
    qps: Vec<f64>,
}

impl Tally {
    /// The row of setup `r` (memory read now).
    fn row(self, r: &Ready, label: &str, recall: f64) -> Row {
        let (spent, l) = (&self.spent, Load::of(&self.spent.run));
        // Each share's warm-up spent CPU too: spread over its queries as well.
        let queries = l.queries as f64 * 1.2;
        let per_query = |seconds: f64| 1000.0 * seconds / queries.max(1.0);
        Row {
            setup: r.setup,
            label: label.into(),
            built: r.built,
            qps: l.qps,
            p50_ms: l.p50_ms,
            p99_ms: l.p99_ms,
            recall,
            rss_shards: r.shards.iter().map(|&p| rss_bytes(p)).sum(),
            rss_router: r.router.map_or(0, rss_bytes),
            cpu_router_ms: spent.router.map(per_query),
            cpu_shards_ms: per_query(spent.shards),
            cpu_clients_ms: per_query(spent.clients),
            busy: spent.machine.0 as f64 / spent.machine.1.max(1) as f64,
            errors: l.errors,
            round_qps: self.qps,
        }
    }
}
