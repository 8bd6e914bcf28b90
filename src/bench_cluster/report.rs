//! The bench's table and the ratios its goals are stated in.

use super::{Bench, Row, Setup, DIM};

/// With `--rounds`, how the ratio of `a`'s QPS to `b`'s spread over the rounds: its
/// median, range, and the rounds where `a` was at least as fast. Empty for one round.
fn per_round(a: &Row, b: &Row) -> String {
    spread(&a.round_qps, &b.round_qps)
}

/// [`per_round`] of QPS by round.
fn spread(a: &[f64], b: &[f64]) -> String {
    let ratios: Vec<f64> = (a.iter().zip(b)).map(|(a, b)| a / b).collect();
    let n = ratios.len();
    if n < 2 {
        return String::new();
    }
    let (lo, hi) = (ratios.iter()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &r| {
        (lo.min(r), hi.max(r))
    });
    let at_least = ratios.iter().filter(|&&r| r >= 1.0).count();
    let median = crate::bench::median(ratios);
    format!(" (per round: median {median:.2}, {lo:.2} to {hi:.2}, at least 1 in {at_least} of {n})")
}

impl Bench {
    pub(super) fn report(&self) {
        if self.rows.is_empty() {
            return; // `stream` alone prints its own tables.
        }
        let c = &self.collection;
        println!(
            "\n{} items × {DIM}-d ({} clusters), {} queries, k={}, {} clients × {} s; \
             hnsw m={} ef_construct={}, default ef {}, quantization {:?}, vectors {}",
            self.data.len(),
            self.a.clusters,
            self.a.queries,
            self.a.k,
            self.a.concurrency,
            self.a.seconds,
            c.hnsw_m,
            c.hnsw_ef_construct,
            c.ef,
            c.quantization,
            if c.on_disk { "on disk" } else { "in RAM" },
        );
        println!(
            "{}; {}; {}\n",
            self.machine,
            match self.placement {
                Some(_) =>
                    "measured with the stores on the upper half of the CPUs, routers and clients \
                     on the lower (--pin)",
                None => "every process on every core",
            },
            match self.a.rounds {
                1 => "each setup's load at once, one setup after another".to_string(),
                n => format!(
                    "the load in {n} rounds of {:.1} s per setup, the setups in turn (--rounds)",
                    self.a.seconds / n as f64
                ),
            }
        );
        println!(
            "| setup | ingest items/s | indexed after s | QPS | p50 ms | p99 ms | recall@{} | \
             RSS shards MiB | RSS B/item | vector RAM B/item | router CPU ms/q | shards CPU ms/q | \
             clients CPU ms/q | machine busy |",
            self.a.k
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let opt = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.3} | {:.0} | {:.0} | {} | {} | {:.3} | {:.3} | {:.0}% |",
                r.label,
                opt(r.built.ingest_per_s, 0),
                opt(r.built.settle_s, 0),
                r.qps,
                r.p50_ms,
                r.p99_ms,
                r.recall,
                r.rss_shards as f64 / (1 << 20) as f64,
                r.rss_shards as f64 / self.data.len() as f64,
                opt(r.built.vector_ram_per_item, 1),
                opt(r.cpu_router_ms, 3),
                r.cpu_shards_ms,
                r.cpu_clients_ms,
                100.0 * r.busy,
            );
        }
        let find = |s: Setup| self.rows.iter().find(|r| r.setup == s);
        println!();
        if let (Some(lone), Some(r1)) = (find(Setup::Lone), find(Setup::Router1)) {
            println!(
                "router + 1 shard / lone shard QPS: {:.2}{} (clients sending JSON to both)",
                r1.qps / lone.qps,
                per_round(r1, lone)
            );
            if let Some(compact) = find(Setup::LoneCompact) {
                println!(
                    "router + 1 shard / lone shard in the compact encoding, QPS: {:.2}{}",
                    r1.qps / compact.qps,
                    per_round(r1, compact)
                );
            }
            if let Some(cpu) = r1.cpu_router_ms {
                println!(
                    "router CPU / shard CPU per query (router + 1 shard): {:.2}",
                    cpu / r1.cpu_shards_ms
                );
            }
        }
        if let (Some(raft), Some(q)) = (find(Setup::RouterRaft), find(Setup::QdrantG)) {
            println!(
                "Raft groups (R=3) / Qdrant {}-shard QPS: {:.2}{}; recall {:+.3}",
                self.a.groups,
                raft.qps / q.qps,
                per_round(raft, q),
                raft.recall - q.recall
            );
        }
        if let (Some(rq), Some(q)) = (find(Setup::RouterQdrant), find(Setup::QdrantG)) {
            println!(
                "router on Qdrant / Qdrant {}-shard searched directly, QPS: {:.2}; recall {:+.3}",
                self.a.groups,
                rq.qps / q.qps,
                rq.recall - q.recall
            );
        }
        if let (Some(raft), Some(rq)) = (find(Setup::RouterRaft), find(Setup::RouterQdrant)) {
            println!(
                "router on Raft groups (R=3) / router on Qdrant ({} shards), QPS: {:.2}; recall {:+.3}",
                self.a.groups,
                raft.qps / rq.qps,
                raft.recall - rq.recall
            );
        }
        if let (Some(f), Some(i)) = (find(Setup::Lone), find(Setup::LoneInt8)) {
            if let (Some(f32_ram), Some(int8_ram)) =
                (f.built.vector_ram_per_item, i.built.vector_ram_per_item)
            {
                println!(
                    "vector RAM per item, f32 in RAM / int8 with originals on disk: {:.2} \
                     (recall {:.3} against {:.3})",
                    f32_ram / int8_ram.max(f64::MIN_POSITIVE),
                    i.recall,
                    f.recall
                );
            }
        }
        let router_rss: u64 = self.rows.iter().map(|r| r.rss_router).max().unwrap_or(0);
        if router_rss > 0 {
            println!(
                "router RSS (largest): {:.0} MiB",
                router_rss as f64 / (1 << 20) as f64
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn the_spread_over_rounds_names_the_median_the_range_and_the_rounds_at_least_even() {
        let a = [110.0, 90.0, 100.0, 130.0];
        let b = [100.0, 100.0, 100.0, 100.0];
        assert_eq!(
            spread(&a, &b),
            " (per round: median 1.05, 0.90 to 1.30, at least 1 in 3 of 4)"
        );
        assert_eq!(
            spread(&a[..3], &b[..3]),
            " (per round: median 1.00, 0.90 to 1.10, at least 1 in 2 of 3)"
        );
        assert_eq!(spread(&[5.0], &[4.0]), "", "one round: no spread");
    }
}
