//! What the bench drives: a search target (a lone shard, a router, a Qdrant collection),
//! the load (concurrent clients for a while, every latency recorded), a recall pass, and
//! what the processes cost (CPU seconds and resident memory from `/proc`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use redrec_shard_api::points::SearchRequest;
use redrec_shard_api::ShardClient;
use serde_json::{json, Value};

use super::data::Data;
use crate::bench_load::Completed;

const CALL: Duration = Duration::from_secs(30);

/// Where searches go.
#[derive(Clone)]
pub enum Target {
    /// A lone shard's own API in the compact encoding (as routers call it): the engine
    /// behind one HTTP hop.
    Shard(ShardClient),
    /// A lone shard's own API in JSON, as a router's clients send their searches.
    ShardJson { http: reqwest::Client, addr: String },
    /// A router's `POST /v1/search`.
    Router { http: reqwest::Client, addr: String },
    /// A Qdrant collection's `POST /collections/{c}/points/search`.
    Qdrant {
        http: reqwest::Client,
        addr: String,
        collection: String,
        params: Value,
    },
}

impl Target {
    /// The item indices of `query`'s top `k`.
    pub async fn search(&self, query: &[f32], k: usize, ef: Option<usize>) -> Result<Vec<u32>> {
        let ids: Vec<String> = match self {
            Target::Shard(c) => {
                let request = SearchRequest {
                    queries: vec![query.to_vec()],
                    k,
                    filter: None,
                    exclude: Vec::new(),
                    ef,
                    consistency: Default::default(),
                    with_payload: true,
                };
                let r = c.search(&request, CALL).await?;
                r.results.into_iter().flatten().map(|h| h.id).collect()
            }
            Target::ShardJson { http, addr } => {
                let mut body = json!({ "queries": [query], "k": k });
                if let Some(ef) = ef {
                    body["ef"] = json!(ef);
                }
                let r: Value = post(http, &format!("{addr}/v1/search"), &body).await?;
                r["results"][0]
                    .as_array()
                    .context("no results")?
                    .iter()
                    .filter_map(|h| h["id"].as_str().map(str::to_string))
                    .collect()
            }
            Target::Router { http, addr } => {
                let mut body = json!({ "vectors": [query], "k": k });
                if let Some(ef) = ef {
                    body["ef"] = json!(ef);
                }
                let r: Value = post(http, &format!("{addr}/v1/search"), &body).await?;
                r["items"]
                    .as_array()
                    .context("no items")?
                    .iter()
                    .filter_map(|i| i["id"].as_str().map(str::to_string))
                    .collect()
            }
            Target::Qdrant {
                http,
                addr,
                collection,
                params,
            } => {
                let body = json!({ "vector": query, "limit": k, "params": params });
                let url = format!("{addr}/collections/{collection}/points/search");
                let r: Value = post(http, &url, &body).await?;
                r["result"]
                    .as_array()
                    .context("no result")?
                    .iter()
                    .filter_map(|p| p["id"].as_u64().map(|i| i.to_string()))
                    .collect()
            }
        };
        Ok(ids.iter().filter_map(|i| i.parse().ok()).collect())
    }
}

pub async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Result<Value> {
    let r = http.post(url).json(body).timeout(CALL).send().await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{url}: {status} {v}");
    }
    Ok(v)
}

/// Whether every node at `addrs` answers `/readyz` with success: each of its replicas has
/// caught up with its group and serves reads.
pub async fn all_ready(http: &reqwest::Client, addrs: &[String]) -> Result<bool> {
    for addr in addrs {
        let r = http
            .get(format!("{addr}/readyz"))
            .timeout(CALL)
            .send()
            .await;
        if !r.is_ok_and(|r| r.status().is_success()) {
            return Ok(false);
        }
    }
    Ok(true)
}

pub struct Load {
    pub qps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub queries: u64,
    pub errors: u64,
}

impl Load {
    pub fn of(run: &Completed) -> Self {
        Self {
            qps: run.per_second(),
            p50_ms: run.ms(0.5),
            p99_ms: run.ms(0.99),
            p999_ms: run.ms(0.999),
            queries: run.units,
            errors: run.errors,
        }
    }
}

/// Client `w`'s turn through the queries: round-robin, each client starting at a place of
/// its own (a prime stride apart) so that the clients do not search the same query at once.
pub struct Turns(usize);

impl Turns {
    pub fn of_client(w: usize) -> Self {
        Self(w * 7919)
    }

    /// The next query of `queries` (not empty).
    pub fn next<'a, T>(&mut self, queries: &'a [T]) -> &'a T {
        let q = &queries[self.0 % queries.len()];
        self.0 += 1;
        q
    }
}

/// `concurrency` clients searching `data`'s queries round-robin for `seconds` (after a
/// warm-up of a fifth of that): every latency, to take percentiles of ([`Load::of`]) or to
/// pool with other loads.
pub async fn drive(
    target: &Target,
    data: &Arc<Data>,
    k: usize,
    ef: Option<usize>,
    concurrency: usize,
    seconds: f64,
) -> Result<Completed> {
    crate::bench_load::closed_loop(concurrency, seconds, |w| {
        let (target, data) = (target.clone(), data.clone());
        let mut turns = Turns::of_client(w);
        move || {
            let q = turns.next(&data.queries).clone();
            let target = target.clone();
            async move { target.search(&q, k, ef).await.ok().map(|_| 1) }
        }
    })
    .await
}

/// Every query once, `concurrency` at a time, in order: what the target answered.
fn each_query<'a>(
    target: &'a Target,
    data: &'a Data,
    k: usize,
    ef: Option<usize>,
    concurrency: usize,
) -> impl futures::Stream<Item = Result<Vec<u32>>> + 'a {
    use futures::stream::{self, StreamExt};
    stream::iter(data.queries.iter())
        .map(move |q| target.search(q, k, ef))
        .buffered(concurrency.max(1))
}

/// Every query once: what the target found.
pub async fn answers(
    target: &Target,
    data: &Arc<Data>,
    k: usize,
    ef: Option<usize>,
    concurrency: usize,
) -> Result<Vec<Vec<u32>>> {
    use futures::TryStreamExt;
    each_query(target, data, k, ef, concurrency)
        .try_collect()
        .await
}

/// Every query once, answers dropped: pages a store has not read since its build come
/// into memory before anything is measured. How many failed.
pub async fn warm(
    target: &Target,
    data: &Arc<Data>,
    k: usize,
    ef: Option<usize>,
    concurrency: usize,
) -> usize {
    use futures::StreamExt;
    each_query(target, data, k, ef, concurrency)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat` (0 once it
/// is gone).
pub fn cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = procfs::process::Process::new(pid).and_then(|p| p.stat()) else {
        return 0.0;
    };
    (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64
}

/// The machine's CPU time so far, in ticks: (busy, all), from `/proc/stat` (idle and I/O
/// wait are not busy).
pub fn machine_ticks() -> (u64, u64) {
    use procfs::CurrentSI;
    let Ok(stats) = procfs::KernelStats::current() else {
        return (0, 0);
    };
    let t = stats.total;
    let idle = t.idle + t.iowait.unwrap_or(0);
    let all = t.user + t.nice + t.system + idle;
    let all = all + t.irq.unwrap_or(0) + t.softirq.unwrap_or(0) + t.steal.unwrap_or(0);
    (all.saturating_sub(idle), all)
}

/// A process's resident memory in bytes, from `/proc/<pid>/status` (0 once it is gone).
pub fn rss_bytes(pid: i32) -> u64 {
    procfs::process::Process::new(pid)
        .and_then(|p| p.status())
        .ok()
        .and_then(|s| s.vmrss)
        .map_or(0, |kib| kib * 1024)
}
