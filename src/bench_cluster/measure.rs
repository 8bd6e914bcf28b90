//! Measuring a setup: waiting for its indexes, then at each `ef` of the sweep a warm-up,
//! recall against exact search, and a timed load, with the CPU and memory it took.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use indicatif::ProgressBar;
use redrec_shard_api::points::Memory;
use redrec_shard_api::ShardClient;

use super::data;
use super::load::{self, cpu_seconds, machine_ticks, rss_bytes, Load, Target};
use super::{Bench, Built, Row, Setup, DIM};

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

    /// Warm-up, recall, then load, at each `ef` of the sweep: one row each, kept. CPU of `router`
    /// and `shards` over the load.
    pub(super) async fn measure(
        &mut self,
        setup: Setup,
        label: &str,
        target: &Target,
        router: Option<i32>,
        shards: &[i32],
        built: Built,
    ) -> Result<()> {
        self.place(router, shards)?;
        for ef in self.efs() {
            let label = match ef {
                Some(ef) => format!("{label}, ef {ef}"),
                None => label.to_string(),
            };
            let row = self
                .measure_at(setup, &label, target, ef, router, shards, built)
                .await?;
            self.rows.push(row);
        }
        self.unplace()
    }

    #[allow(clippy::too_many_arguments)]
    async fn measure_at(
        &self,
        setup: Setup,
        label: &str,
        target: &Target,
        ef: Option<usize>,
        router: Option<i32>,
        shards: &[i32],
        built: Built,
    ) -> Result<Row> {
        let (k, concurrency) = (self.a.k, self.a.concurrency);
        let warming = Instant::now();
        let failed = load::warm(target, &self.data, k, ef, concurrency).await;
        eprintln!(
            "  {label}: warm-up, every query once: {:.1} s, {failed} failed (not counted)",
            warming.elapsed().as_secs_f64()
        );
        let found = load::answers(target, &self.data, k, ef, concurrency).await?;
        let recall = data::recall(&found, &self.data.truth);
        let cpu = |pids: &[i32]| pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
        let me = std::process::id() as i32;
        let (r0, s0, c0) = (router.map(|p| cpu(&[p])), cpu(shards), cpu(&[me]));
        let m0 = machine_ticks();
        let spinner = ProgressBar::new_spinner().with_message(format!("{label}: load"));
        spinner.enable_steady_tick(Duration::from_millis(200));
        let run = load::drive(target, &self.data, k, ef, concurrency, self.a.seconds).await?;
        let l = Load::of(&run);
        let m1 = machine_ticks();
        spinner.finish_and_clear();
        // The warm-up's CPU is in the difference too: spread over its queries as well.
        let queries = l.queries as f64 * 1.2;
        let per_query = |spent: f64| 1000.0 * spent / queries.max(1.0);
        let row = Row {
            setup,
            label: label.into(),
            built,
            qps: l.qps,
            p50_ms: l.p50_ms,
            p99_ms: l.p99_ms,
            recall,
            rss_shards: shards.iter().map(|&p| rss_bytes(p)).sum(),
            rss_router: router.map_or(0, rss_bytes),
            cpu_router_ms: r0.map(|r0| per_query(cpu(&[router.unwrap_or(0)]) - r0)),
            cpu_shards_ms: per_query(cpu(shards) - s0),
            cpu_clients_ms: per_query(cpu(&[me]) - c0),
            busy: (m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64,
            errors: l.errors,
        };
        eprintln!(
            "  {label:<28} {:>7.0} QPS  p50 {:>6.2} ms  p99 {:>6.2} ms  recall@{} {:.3}",
            row.qps, row.p50_ms, row.p99_ms, self.a.k, row.recall
        );
        Ok(row)
    }
}
