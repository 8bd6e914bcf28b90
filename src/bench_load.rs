//! The closed-loop load every bench drives: a number of clients, each making its next
//! call as soon as the last one answered, for a warm-up and then a measured time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;

/// What a closed-loop load completed after its warm-up: units of work (rows, points,
/// queries), failed calls, the latency of each successful call (µs), and the seconds
/// measured.
pub struct Completed {
    pub units: u64,
    pub errors: u64,
    pub hist: Histogram<u64>,
    pub seconds: f64,
}

/// Nothing yet: what loads run one after another are added to.
impl Default for Completed {
    fn default() -> Self {
        Self {
            units: 0,
            errors: 0,
            hist: Histogram::<u64>::new(3).expect("histogram"),
            seconds: 0.0,
        }
    }
}

impl Completed {
    /// Pools `other` (another load on the same target) into this one.
    pub fn add(&mut self, other: &Completed) -> Result<()> {
        self.units += other.units;
        self.errors += other.errors;
        self.seconds += other.seconds;
        self.hist.add(&other.hist)?;
        Ok(())
    }

    pub fn per_second(&self) -> f64 {
        self.units as f64 / self.seconds
    }

    /// The latency at quantile `q`, in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// `workers` clients, each making the calls its `worker(i)` makes, back to back, for a
/// warm-up of a fifth of `seconds` and then `seconds`. A call returns the units of work
/// it did, or `None` when it failed; only calls started after the warm-up count.
pub async fn closed_loop<W, Fut>(
    workers: usize,
    seconds: f64,
    worker: impl Fn(usize) -> W,
) -> Result<Completed>
where
    W: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<u64>> + Send,
{
    let warmup = Duration::from_secs_f64(seconds / 5.0);
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..workers)
        .map(|i| {
            let (mut call, stop) = (worker(i), stop.clone());
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).expect("histogram");
                let (mut units, mut errors) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let done = call().await;
                    if t0 < start + warmup {
                        continue;
                    }
                    match done {
                        Some(n) => {
                            units += n;
                            let _ = hist.record(t0.elapsed().as_micros() as u64);
                        }
                        None => errors += 1,
                    }
                }
                (units, errors, hist)
            })
        })
        .collect();
    tokio::time::sleep(warmup + Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Completed::default();
    for t in tasks {
        let (units, errors, hist) = t.await?;
        all.units += units;
        all.errors += errors;
        all.hist.add(hist)?;
    }
    // The last calls end after the stop; count the time they took.
    all.seconds = start.elapsed().saturating_sub(warmup).as_secs_f64();
    Ok(all)
}
