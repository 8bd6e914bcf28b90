//! Dynamic batching: requests for one tower queue up and worker threads (one per pooled
//! session) cut the queue into batches by row count, a padded-size budget and a maximum
//! wait. Rows are bucketed by length (powers of two) so a batch pads little. The queue is
//! bounded in rows: past it a request is refused at once ([`EncoderError::Overloaded`])
//! instead of growing memory and latency without limit. A request whose deadline passes
//! while it waits is answered with [`EncoderError::DeadlineExceeded`] and never run.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::EncoderError;

#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Off: every request runs alone, as it came (the baseline of `redrec bench encoder`).
    pub enabled: bool,
    /// Most rows (texts or users) in one run.
    pub max_batch: usize,
    /// Most padded positions (rows × padded length) in one run.
    pub max_tokens: usize,
    /// Longest a request waits for company before its batch runs anyway.
    pub max_wait: Duration,
    /// Most rows waiting; a request that would pass it is refused.
    pub queue_rows: usize,
    /// Deadline of a request that brings none.
    pub timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_batch: 128,
            max_tokens: 8192,
            max_wait: Duration::from_micros(500),
            queue_rows: 8192,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What one run of a tower does with a batch of rows: `worker` picks its session.
pub type RunFn<R, O> = dyn Fn(usize, &[R]) -> Result<Vec<O>, EncoderError> + Send + Sync;

/// Rows the batcher can group: their length decides the bucket and the padded size.
pub trait Row: Send + 'static {
    /// Positions the row fills before padding: tokens of a text, events of a history.
    fn positions(&self) -> usize;
}

impl Row for Vec<i64> {
    fn positions(&self) -> usize {
        self.len()
    }
}

type Reply<O> = oneshot::Sender<Result<Vec<O>, EncoderError>>;

struct Job<R, O> {
    rows: Vec<R>,
    enqueued: Instant,
    deadline: Instant,
    reply: Reply<O>,
}

struct Bucket<R, O> {
    /// Padded length of its rows: a power of two.
    len: usize,
    jobs: VecDeque<Job<R, O>>,
    rows: usize,
}

struct State<R, O> {
    buckets: Vec<Bucket<R, O>>,
    rows: usize,
    closed: bool,
}

struct Shared<R, O> {
    cfg: BatchConfig,
    state: Mutex<State<R, O>>,
    wake: Condvar,
}

/// Counters a bench or the metrics endpoint can read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    pub queued_rows: usize,
}

pub struct Batcher<R: Row, O: Send + 'static> {
    name: &'static str,
    shared: Arc<Shared<R, O>>,
    workers: Vec<JoinHandle<()>>,
}

fn bucket_of(len: usize) -> usize {
    len.max(1).next_power_of_two().trailing_zeros() as usize
}

impl<R: Row, O: Send + 'static> Batcher<R, O> {
    /// Starts `workers` threads that run batches through `run`.
    pub fn start(
        name: &'static str,
        cfg: BatchConfig,
        workers: usize,
        run: Arc<RunFn<R, O>>,
    ) -> Self {
        let buckets = (0..usize::BITS as usize)
            .map(|b| Bucket {
                len: 1 << b,
                jobs: VecDeque::new(),
                rows: 0,
            })
            .collect();
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(State {
                buckets,
                rows: 0,
                closed: false,
            }),
            wake: Condvar::new(),
        });
        let workers = (0..workers.max(1))
            .map(|i| {
                let shared = shared.clone();
                let run = run.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-batch-{i}"))
                    .spawn(move || work(name, i, &shared, &*run))
                    .expect("spawning a batch worker")
            })
            .collect();
        Self {
            name,
            shared,
            workers,
        }
    }

    pub fn config(&self) -> &BatchConfig {
        &self.shared.cfg
    }

    pub fn stats(&self) -> BatchStats {
        BatchStats {
            queued_rows: lock(&self.shared.state).rows,
        }
    }

    /// Queues `rows` and waits for their outputs, in order, until `deadline`.
    pub async fn submit(
        &self,
        rows: Vec<R>,
        deadline: Option<Instant>,
    ) -> Result<Vec<O>, EncoderError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let now = Instant::now();
        let deadline = deadline.unwrap_or(now + self.shared.cfg.timeout);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = lock(&self.shared.state);
            let n = rows.len();
            // An empty queue takes any request, so one larger than the queue can still run.
            if st.closed || (st.rows > 0 && st.rows + n > self.shared.cfg.queue_rows) {
                return Err(EncoderError::Overloaded(format!(
                    "{} queue full ({} rows waiting)",
                    self.name, st.rows
                )));
            }
            let len = rows.iter().map(Row::positions).max().unwrap_or(1);
            let bucket = &mut st.buckets[bucket_of(len)];
            bucket.rows += n;
            bucket.jobs.push_back(Job {
                rows,
                enqueued: now,
                deadline,
                reply: tx,
            });
            st.rows += n;
        }
        self.shared.wake.notify_one();
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(EncoderError::Unavailable(format!(
                "{} batch worker stopped",
                self.name
            ))),
            // Still queued: the worker drops it when it sees the deadline has passed.
            Err(_) => Err(EncoderError::DeadlineExceeded),
        }
    }
}

impl<R: Row, O: Send + 'static> Drop for Batcher<R, O> {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The label of a batch's size in the timing histograms.
fn size_class(rows: usize) -> &'static str {
    match rows {
        0..=1 => "1",
        2..=4 => "2-4",
        5..=16 => "5-16",
        17..=64 => "17-64",
        _ => "65+",
    }
}

fn work<R: Row, O: Send + 'static>(
    tower: &'static str,
    worker: usize,
    shared: &Shared<R, O>,
    run: &RunFn<R, O>,
) {
    while let Some(jobs) = next_batch(shared) {
        let taken = Instant::now();
        for j in &jobs {
            metrics::histogram!("redrec_encoder_queue_seconds", "tower" => tower)
                .record(taken.saturating_duration_since(j.enqueued).as_secs_f64());
        }
        let sizes: Vec<usize> = jobs.iter().map(|j| j.rows.len()).collect();
        let mut replies = Vec::with_capacity(jobs.len());
        let mut rows = Vec::with_capacity(sizes.iter().sum());
        for job in jobs {
            rows.extend(job.rows);
            replies.push(job.reply);
        }
        let ran = run(worker, &rows);
        metrics::histogram!(
            "redrec_encoder_run_seconds",
            "tower" => tower,
            "batch" => size_class(rows.len())
        )
        .record(taken.elapsed().as_secs_f64());
        match ran {
            Ok(outputs) if outputs.len() == rows.len() => {
                let mut outputs = outputs.into_iter();
                for (reply, n) in replies.into_iter().zip(sizes) {
                    let _ = reply.send(Ok(outputs.by_ref().take(n).collect()));
                }
            }
            Ok(outputs) => {
                let e = EncoderError::Contract(format!(
                    "{} rows in, {} outputs back",
                    rows.len(),
                    outputs.len()
                ));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Blocks until a batch is due and takes it; `None` once closed and drained.
fn next_batch<R: Row, O>(shared: &Shared<R, O>) -> Option<Vec<Job<R, O>>> {
    let cfg = &shared.cfg;
    let mut st = lock(&shared.state);
    loop {
        let now = Instant::now();
        drop_expired(&mut st, now);
        // The bucket whose first request has waited longest goes next.
        let oldest = st
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.jobs.front().map(|j| (j.enqueued, i)))
            .min();
        let Some((since, b)) = oldest else {
            if st.closed {
                return None;
            }
            st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        let bucket = &st.buckets[b];
        let waited = now.saturating_duration_since(since);
        let due = !cfg.enabled
            || st.closed
            || bucket.rows >= cfg.max_batch
            || bucket.rows * bucket.len >= cfg.max_tokens
            || waited >= cfg.max_wait;
        if !due {
            let (guard, _) = shared
                .wake
                .wait_timeout(st, cfg.max_wait - waited)
                .unwrap_or_else(|p| p.into_inner());
            st = guard;
            continue;
        }
        let taken = take(&mut st, b, cfg);
        // Someone else may have work too: what is left, or the next bucket.
        if st.rows > 0 {
            shared.wake.notify_one();
        }
        return Some(taken);
    }
}

fn take<R: Row, O>(st: &mut State<R, O>, b: usize, cfg: &BatchConfig) -> Vec<Job<R, O>> {
    let bucket = &mut st.buckets[b];
    let mut taken = Vec::new();
    let mut rows = 0;
    while let Some(job) = bucket.jobs.front() {
        let n = job.rows.len();
        let fits = rows + n <= cfg.max_batch && (rows + n) * bucket.len <= cfg.max_tokens;
        if !taken.is_empty() && (!cfg.enabled || !fits) {
            break;
        }
        rows += n;
        taken.push(bucket.jobs.pop_front().expect("front exists"));
    }
    bucket.rows -= rows;
    st.rows -= rows;
    taken
}

fn drop_expired<R: Row, O>(st: &mut State<R, O>, now: Instant) {
    let mut dropped = 0;
    for bucket in &mut st.buckets {
        // The common case, on every wake: nothing expired, nothing to rebuild.
        if !bucket.jobs.iter().any(|j| j.deadline <= now) {
            continue;
        }
        let mut kept = VecDeque::with_capacity(bucket.jobs.len());
        for job in bucket.jobs.drain(..) {
            if job.deadline <= now {
                bucket.rows -= job.rows.len();
                dropped += job.rows.len();
                let _ = job.reply.send(Err(EncoderError::DeadlineExceeded));
            } else {
                kept.push_back(job);
            }
        }
        bucket.jobs = kept;
    }
    st.rows -= dropped;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fake tower that doubles its inputs and records batch sizes.
    fn doubling(sizes: Arc<Mutex<Vec<usize>>>, pause: Duration) -> Arc<RunFn<Vec<i64>, i64>> {
        Arc::new(move |_, rows: &[Vec<i64>]| {
            sizes.lock().unwrap().push(rows.len());
            std::thread::sleep(pause);
            Ok(rows.iter().map(|r| r.iter().sum::<i64>() * 2).collect())
        })
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn concurrent_requests_share_batches_and_get_their_own_answers() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let cfg = BatchConfig {
            max_wait: Duration::from_millis(20),
            ..BatchConfig::default()
        };
        let b = Arc::new(Batcher::start(
            "t",
            cfg,
            1,
            doubling(sizes.clone(), Duration::ZERO),
        ));
        let answers = runtime().block_on(async {
            let calls: Vec<_> = (0..40i64)
                .map(|i| {
                    let b = b.clone();
                    tokio::spawn(async move { b.submit(vec![vec![i, 1]], None).await })
                })
                .collect();
            let mut out = Vec::new();
            for c in calls {
                out.push(c.await.unwrap().unwrap());
            }
            out
        });
        for (i, a) in answers.iter().enumerate() {
            assert_eq!(a, &vec![(i as i64 + 1) * 2]);
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        assert!(sizes.len() < 40, "no batching happened: {sizes:?}");
    }

    #[test]
    fn disabled_runs_each_request_alone() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let cfg = BatchConfig {
            enabled: false,
            ..BatchConfig::default()
        };
        let b = Arc::new(Batcher::start(
            "t",
            cfg,
            1,
            doubling(sizes.clone(), Duration::from_millis(1)),
        ));
        runtime().block_on(async {
            let calls: Vec<_> = (0..10i64)
                .map(|i| {
                    let b = b.clone();
                    tokio::spawn(async move { b.submit(vec![vec![i], vec![i]], None).await })
                })
                .collect();
            for c in calls {
                c.await.unwrap().unwrap();
            }
        });
        assert_eq!(*sizes.lock().unwrap(), vec![2; 10]);
    }

    #[test]
    fn rows_of_different_lengths_go_to_different_batches() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let run: Arc<RunFn<Vec<i64>, i64>> = Arc::new(move |_, rows: &[Vec<i64>]| {
            seen2
                .lock()
                .unwrap()
                .push(rows.iter().map(Vec::len).collect::<Vec<_>>());
            sizes.lock().unwrap().push(rows.len());
            Ok(rows.iter().map(|r| r.len() as i64).collect())
        });
        let cfg = BatchConfig {
            max_wait: Duration::from_millis(30),
            ..BatchConfig::default()
        };
        let b = Arc::new(Batcher::start("t", cfg, 1, run));
        runtime().block_on(async {
            let calls: Vec<_> = [1usize, 40, 2, 33, 1, 64]
                .into_iter()
                .map(|len| {
                    let b = b.clone();
                    tokio::spawn(async move { b.submit(vec![vec![0; len]], None).await })
                })
                .collect();
            for c in calls {
                c.await.unwrap().unwrap();
            }
        });
        for batch in seen.lock().unwrap().iter() {
            let buckets: Vec<usize> = batch.iter().map(|&l| bucket_of(l)).collect();
            assert!(
                buckets.windows(2).all(|w| w[0] == w[1]),
                "mixed lengths {batch:?}"
            );
        }
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_recovers() {
        let cfg = BatchConfig {
            queue_rows: 4,
            max_wait: Duration::ZERO,
            ..BatchConfig::default()
        };
        let started = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let (started2, gate2) = (started.clone(), gate.clone());
        let run: Arc<RunFn<Vec<i64>, i64>> = Arc::new(move |_, rows: &[Vec<i64>]| {
            started2.fetch_add(1, Ordering::SeqCst);
            drop(gate2.lock().unwrap());
            Ok(vec![0; rows.len()])
        });
        let b = Arc::new(Batcher::start("t", cfg, 1, run));
        let rt = runtime();
        // The first request occupies the only worker; the next four fill the queue.
        let first = {
            let b = b.clone();
            rt.spawn(async move { b.submit(vec![vec![1]], None).await })
        };
        while started.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let queued: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                rt.spawn(async move { b.submit(vec![vec![1]], None).await })
            })
            .collect();
        while b.stats().queued_rows < 4 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let refused = rt.block_on(b.submit(vec![vec![1]], None));
        assert!(
            matches!(refused, Err(EncoderError::Overloaded(_))),
            "{refused:?}"
        );
        drop(held);
        rt.block_on(async {
            first.await.unwrap().unwrap();
            for q in queued {
                q.await.unwrap().unwrap();
            }
        });
        assert_eq!(rt.block_on(b.submit(vec![vec![1]], None)).unwrap(), vec![0]);
    }

    #[test]
    fn a_request_past_its_deadline_is_not_run() {
        let cfg = BatchConfig {
            max_wait: Duration::ZERO,
            ..BatchConfig::default()
        };
        let runs = Arc::new(AtomicUsize::new(0));
        let runs2 = runs.clone();
        let run: Arc<RunFn<Vec<i64>, i64>> = Arc::new(move |_, rows: &[Vec<i64>]| {
            runs2.fetch_add(rows.len(), Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            Ok(vec![0; rows.len()])
        });
        let b = Arc::new(Batcher::start("t", cfg, 1, run));
        let rt = runtime();
        let slow = {
            let b = b.clone();
            rt.spawn(async move { b.submit(vec![vec![1]], None).await })
        };
        while runs.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let late = rt.block_on(b.submit(
            vec![vec![1], vec![2]],
            Some(Instant::now() + Duration::from_millis(10)),
        ));
        assert!(
            matches!(late, Err(EncoderError::DeadlineExceeded)),
            "{late:?}"
        );
        rt.block_on(slow).unwrap().unwrap();
        // The worker saw the expired request and dropped it rather than run it.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(b.stats().queued_rows, 0);
    }
}
