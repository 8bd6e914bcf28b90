//! `--setups stream`: index builds under a steady write stream. A router over one lone
//! shard that holds the catalogue; the bench's clients search through it, first for
//! `--seconds` with no writes, then for `--stream-seconds` while new items are written
//! through the router at `--stream-rate` points/s (open loop: a request every period,
//! whether or not the last one has answered, so a write held up shows in its latency).
//!
//! Every second is recorded: the searches and writes started in it and their latencies,
//! and the store's points, indexed vectors and whether it was building an index (polled
//! four times a second; a build that finished between two polls counts too). The seconds
//! of the stream with a build running are compared with those without; the unindexed
//! share is printed over time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use redrec_shard_api::ShardClient;
use serde_json::json;

use super::load::{self, Target};
use super::{Bench, StreamArgs, DIM};
use crate::bench_load::Completed;
use redrec::launch;

/// How often the store's stats are polled.
const POLL: Duration = Duration::from_millis(250);
/// Longest a write or a stats call may take.
const CALL: Duration = Duration::from_secs(30);

/// What happened in one second of the run.
struct Second {
    /// The searches started in it (one unit each), and the write requests (a unit per
    /// point acknowledged): failures and latencies, over this one second.
    searches: Completed,
    writes: Completed,
    /// Whether any poll in it found the store building an index, or a build finished
    /// since the poll before.
    building: bool,
    /// The store at its last poll (`None`: no poll answered).
    store: Option<(usize, usize)>,
}

impl Second {
    fn new() -> Self {
        let second = || Completed {
            seconds: 1.0,
            ..Completed::default()
        };
        Self {
            searches: second(),
            writes: second(),
            building: false,
            store: None,
        }
    }

    fn unindexed(&self) -> Option<(usize, f64)> {
        self.store.map(|(points, indexed)| {
            let u = points.saturating_sub(indexed);
            (u, u as f64 / points.max(1) as f64)
        })
    }
}

/// The most unindexed points in `seconds`, and the largest share of the store.
fn most_unindexed(seconds: &[Second]) -> (usize, f64) {
    seconds
        .iter()
        .filter_map(Second::unindexed)
        .fold((0, 0.0), |(u, f), (v, g)| (u.max(v), f.max(g)))
}

/// Records a call that started at `t0` into `c`: its latency and `units` when it
/// succeeded, a failure when not.
fn finished(c: &mut Completed, t0: Instant, units: Option<u64>) {
    match units {
        Some(n) => {
            c.units += n;
            let _ = c.hist.record(t0.elapsed().as_micros() as u64);
        }
        None => c.errors += 1,
    }
}

/// The run, second by second from its start.
struct Record {
    start: Instant,
    seconds: Mutex<Vec<Second>>,
}

impl Record {
    fn seconds(&self) -> MutexGuard<'_, Vec<Second>> {
        self.seconds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records into the second `at` falls in.
    fn at(&self, at: Instant, f: impl FnOnce(&mut Second)) {
        let i = at.saturating_duration_since(self.start).as_secs() as usize;
        let mut seconds = self.seconds();
        while seconds.len() <= i {
            seconds.push(Second::new());
        }
        f(&mut seconds[i]);
    }
}

impl Bench {
    pub(super) async fn stream(&mut self) -> Result<()> {
        let s = self.a.stream.clone();
        if s.stream_rate == 0 || s.stream_batch == 0 || s.stream_seconds == 0 {
            bail!("--stream-rate, --stream-batch and --stream-seconds must be positive");
        }
        // The stream grows the catalogue: a store left by an earlier run is not reused.
        let dir = self.root.join("stream");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let flags = self.a.collection.to_args();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let layout = self.layout("stream")?;
        let shards = layout.lone_shards(1, &flags)?;
        let router = self.start_router(&layout, "--shards", &[shards[0].addr.clone()])?;
        let store = ShardClient::new(shards[0].addr.clone(), self.http.clone());
        let label = "stream: router + 1 lone shard";
        let rate = self.router_ingest(label, &router).await?;
        let settle = self
            .settle_stores(label, std::slice::from_ref(&store), self.data.len())
            .await?;
        eprintln!("  {label}: {rate:.0} items/s loaded, indexed after {settle:.0} s");
        let count = s.stream_rate * s.stream_seconds as usize;

        self.place(Some(router.pid()), &[shards[0].pid()])?;
        let target = self.router_target(&router);
        let (k, concurrency) = (self.a.k, self.a.concurrency);
        let failed = load::warm(&target, &self.data, k, None, concurrency).await;
        eprintln!("  {label}: warm-up, every query once, {failed} failed (not counted)");
        let record = Arc::new(Record {
            start: Instant::now(),
            seconds: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut background = self.searchers(&target, &record, &stop);
        background.push(poller(store.clone(), record.clone(), stop.clone()));
        let quiet = self.a.seconds.ceil() as usize;
        tokio::time::sleep(Duration::from_secs(quiet as u64)).await;
        let progress = super::bar(count as u64, &format!("{label}: writes"));
        self.writes(&router.addr, count, &record, &progress).await;
        progress.finish_and_clear();
        let streamed = record.start.elapsed().as_secs() as usize;
        stop.store(true, Ordering::Relaxed);
        for task in background {
            task.await?;
        }
        self.unplace()?;

        // Every acknowledged point is there at once (a write is applied when acknowledged),
        // then indexed.
        let written: u64 = record.seconds().iter().map(|s| s.writes.units).sum();
        let expected = self.data.len() + written as usize;
        let points = store.stats(CALL).await?.points;
        if points != expected {
            bail!(
                "the store holds {points} points after the stream, not the {expected} acknowledged"
            );
        }
        let after = self
            .settle_stores(
                &format!("{label} after the stream"),
                std::slice::from_ref(&store),
                expected,
            )
            .await?;
        let seconds = std::mem::take(&mut *record.seconds());
        report(&s, &seconds, quiet, streamed, written, after);
        launch::stop_all(vec![router]);
        launch::stop_all(shards);
        let failed: u64 = seconds
            .iter()
            .map(|s| s.searches.errors + s.writes.errors)
            .sum();
        if failed > 0 {
            bail!("{failed} searches or writes failed during the stream");
        }
        Ok(())
    }

    /// The bench's clients, each searching the next query as soon as the last answered.
    fn searchers(
        &self,
        target: &Target,
        record: &Arc<Record>,
        stop: &Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.a.concurrency)
            .map(|w| {
                let (target, data, k) = (target.clone(), self.data.clone(), self.a.k);
                let (record, stop) = (record.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut turns = load::Turns::of_client(w);
                    while !stop.load(Ordering::Relaxed) {
                        let q = turns.next(&data.queries);
                        let t0 = Instant::now();
                        let done = target.search(q, k, None).await.ok().map(|_| 1);
                        record.at(t0, |s| finished(&mut s.searches, t0, done));
                    }
                })
            })
            .collect()
    }

    /// Writes `total` new items through the router at `--stream-rate`, `--stream-batch`
    /// points a request, each request on time whatever the others are doing; waits for
    /// every answer. Each request's vectors are drawn when it is sent (from a seed of its
    /// own), so memory does not grow with the stream's length.
    async fn writes(
        &self,
        router: &str,
        total: usize,
        record: &Arc<Record>,
        progress: &indicatif::ProgressBar,
    ) {
        let s = &self.a.stream;
        let url = format!("{router}/v1/items/vectors");
        let period = Duration::from_secs_f64(s.stream_batch as f64 / s.stream_rate as f64);
        let mut tick = tokio::time::interval(period);
        let mut requests = tokio::task::JoinSet::new();
        let first_id = self.data.len();
        for from in (0..total).step_by(s.stream_batch) {
            tick.tick().await;
            let len = s.stream_batch.min(total - from);
            let fresh = self.data.fresh(len, (self.a.seed ^ 0x5eed) + from as u64);
            let items: Vec<_> = fresh
                .chunks_exact(DIM)
                .enumerate()
                .map(|(j, vector)| json!({ "id": (first_id + from + j).to_string(), "vector": vector }))
                .collect();
            let (http, url, record) = (self.http.clone(), url.clone(), record.clone());
            let progress = progress.clone();
            requests.spawn(async move {
                let t0 = Instant::now();
                let done = load::post(&http, &url, &json!({ "items": items }))
                    .await
                    .ok()
                    .map(|_| len as u64);
                progress.inc(len as u64);
                record.at(t0, |s| finished(&mut s.writes, t0, done));
            });
        }
        while requests.join_next().await.is_some() {}
    }
}

/// Polls the store's stats until `stop`.
fn poller(
    store: ShardClient,
    record: Arc<Record>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut builds = None;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            if let Ok(st) = store.stats(CALL).await {
                // A build that began and ended between two polls shows in the count.
                let finished = builds.is_some_and(|b| st.builds > b);
                builds = Some(st.builds);
                record.at(t, |s| {
                    s.building |= st.indexing || finished;
                    s.store = Some((st.points, st.indexed_vectors));
                });
            }
            tokio::time::sleep(POLL.saturating_sub(t.elapsed())).await;
        }
    })
}

/// Seconds pooled: their searches and their writes.
#[derive(Default)]
struct Pool {
    searches: Completed,
    writes: Completed,
}

impl Pool {
    fn of<'a>(seconds: impl Iterator<Item = &'a Second>) -> Pool {
        let mut pool = Pool::default();
        for s in seconds {
            let _ = pool.searches.add(&s.searches);
            let _ = pool.writes.add(&s.writes);
        }
        pool
    }

    /// How many seconds were pooled.
    fn seconds(&self) -> usize {
        self.searches.seconds as usize
    }

    fn qps(&self) -> f64 {
        self.searches.units as f64 / self.searches.seconds.max(1.0)
    }

    /// A latency column: `-` where there were none.
    fn ms(c: &Completed, q: f64) -> String {
        match c.hist.is_empty() {
            true => "-".into(),
            false => format!("{:.2}", c.ms(q)),
        }
    }

    fn row(&self, what: &str) {
        let written = match self.writes.hist.is_empty() {
            true => "-".into(),
            false => format!("{:.0}", self.writes.per_second()),
        };
        println!(
            "| {what} | {} | {:.0} | {:.2} | {:.2} | {written} | {} | {} |",
            self.seconds(),
            self.qps(),
            self.searches.ms(0.5),
            self.searches.ms(0.99),
            Pool::ms(&self.writes, 0.5),
            Pool::ms(&self.writes, 0.99),
        );
    }
}

/// The timeline, the three kinds of second side by side, and the ratios. The seconds
/// before `quiet` had no writes; the stream ran until `streamed` (the last, partial
/// second is left out).
fn report(
    s: &StreamArgs,
    seconds: &[Second],
    quiet: usize,
    streamed: usize,
    written: u64,
    indexed_after: f64,
) {
    let sent = s.stream_rate as u64 * s.stream_seconds;
    let stream = &seconds[quiet.min(seconds.len())..streamed.min(seconds.len())];
    println!(
        "\nwrite stream: {} points/s asked in requests of {} for {} s, through a router to \
         one lone shard; {sent} points sent, {written} acknowledged; every point there and \
         indexed {indexed_after:.0} s after the stream ended",
        s.stream_rate, s.stream_batch, s.stream_seconds
    );
    let window = seconds.len().div_ceil(40).max(1);
    println!(
        "\n| s | writes | points | unindexed (max) | unindexed share (max) | seconds building | \
         search QPS | search p99 ms | write p99 ms |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for (w, chunk) in seconds[..streamed.min(seconds.len())]
        .chunks(window)
        .enumerate()
    {
        let pool = Pool::of(chunk.iter());
        let (unindexed, share) = most_unindexed(chunk);
        let points = chunk.iter().rev().find_map(|s| s.store).map_or(0, |s| s.0);
        let writes = match (w + 1) * window > quiet {
            true => "on",
            false => "off",
        };
        println!(
            "| {} | {writes} | {points} | {unindexed} | {:.1}% | {} | {:.0} | {:.2} | {} |",
            (w + 1) * window,
            100.0 * share,
            chunk.iter().filter(|s| s.building).count(),
            pool.qps(),
            pool.searches.ms(0.99),
            Pool::ms(&pool.writes, 0.99),
        );
    }
    let none = Pool::of(seconds[..quiet.min(seconds.len())].iter());
    let calm = Pool::of(stream.iter().filter(|s| !s.building));
    let build = Pool::of(stream.iter().filter(|s| s.building));
    println!(
        "\n| seconds | n | search QPS | search p50 ms | search p99 ms | points written/s | \
         write p50 ms | write p99 ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    none.row("no writes");
    calm.row("stream, no index build");
    build.row("stream, an index build running");
    let (unindexed, share) = most_unindexed(stream);
    println!(
        "\nunindexed during the stream: at most {unindexed} points, {:.1}% of the store",
        100.0 * share
    );
    if build.seconds() == 0 || calm.seconds() == 0 {
        println!("no ratio: the stream had no seconds with a build running, or none without");
        return;
    }
    println!(
        "search QPS, build running / no build: {:.2} (against no writes at all: {:.2})",
        build.qps() / calm.qps(),
        build.qps() / none.qps()
    );
    println!(
        "write p99, build running / no build: {:.2}",
        build.writes.ms(0.99) / calm.writes.ms(0.99)
    );
}
