//! How a group's reads choose a replica, how long one attempt may take, and when the same
//! read goes to a second replica (a hedged read, after "The Tail at Scale"): once the
//! first has taken longer than the group usually takes, within a budget of extra reads.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Reads a latency window holds before its quantile is taken and it starts over.
const WINDOW: u64 = 256;
/// Extra reads the budget lets through at once, beyond its share.
const BURST: u64 = 10;
/// Milli-tokens per hedge.
const TOKEN: u64 = 1_000;

/// The router's read settings, shared by all its groups.
#[derive(Debug)]
pub struct ReadPolicy {
    /// Longest one attempt on one replica may take (the request's deadline bounds it too).
    pub attempt_timeout: Duration,
    /// Hedged reads; `None` for one replica at a time.
    pub hedge: Option<Hedge>,
    /// Every group's read latency together: what bounds one group's hedge delay.
    pub all_groups: Latency,
    /// Read replicas whose nodes run on the same CPUs as one (as the cluster map says
    /// them); `false`: every replica is a place to read of its own.
    pub by_cpus: bool,
}

#[derive(Debug)]
pub struct Hedge {
    /// A fixed delay before the second read; `None`: the group's recent p95, at least
    /// `min` and at most twice the p95 over all groups.
    pub delay: Option<Duration>,
    pub min: Duration,
    budget: Budget,
}

impl Hedge {
    /// Hedges after `delay` (or the adaptive delay), at most `share` of reads extra.
    pub fn new(delay: Option<Duration>, share: f64) -> Self {
        Self {
            delay,
            min: Duration::from_millis(1),
            budget: Budget::new(share),
        }
    }

    /// How long to wait for the first answer of a read of a group with latencies `group`.
    pub fn delay(&self, group: &Latency, all: &Latency) -> Option<Duration> {
        if let Some(d) = self.delay {
            return Some(d);
        }
        // Until a first window is full there is no telling what slow is: no hedge.
        let own = group.quantile()?;
        let bound = all.quantile().map_or(own, |a| 2 * a);
        Some(own.min(bound).max(self.min))
    }

    /// Takes a hedge from the budget, if it has one.
    pub fn try_spend(&self) -> bool {
        self.budget.take()
    }

    /// Accounts for one read (each adds its share to the budget).
    pub fn on_read(&self) {
        self.budget.add();
    }
}

impl Default for ReadPolicy {
    /// One replica at a time, an attempt bounded by the deadline alone.
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::MAX,
            hedge: None,
            all_groups: Latency::new(),
            by_cpus: false,
        }
    }
}

/// A token bucket: each read adds `share` of a hedge, up to [`BURST`] hedges; it starts
/// full.
#[derive(Debug)]
struct Budget {
    per_read: u64,
    tokens: AtomicU64,
}

impl Budget {
    fn new(share: f64) -> Self {
        Self {
            per_read: (share.clamp(0.0, 1.0) * TOKEN as f64).round() as u64,
            tokens: AtomicU64::new(BURST * TOKEN),
        }
    }

    fn add(&self) {
        let cap = BURST * TOKEN;
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + self.per_read).min(cap))
            });
    }

    fn take(&self) -> bool {
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                t.checked_sub(TOKEN)
            })
            .is_ok()
    }
}

/// The latency quantile hedging waits for.
const QUANTILE: f64 = 0.95;

/// Recent read latency: a window of answered reads, and its p95 when last full.
#[derive(Debug)]
pub struct Latency {
    window: Mutex<Histogram<u64>>,
    /// The p95 of the last full window, in microseconds (0: none yet).
    last_us: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Self {
            // 1 µs to 60 s, two significant digits.
            window: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 2).expect("bounds")),
            last_us: AtomicU64::new(0),
        }
    }

    pub fn record(&self, took: Duration) {
        let us = (took.as_micros() as u64).clamp(1, 60_000_000);
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let _ = w.record(us);
        if w.len() >= WINDOW {
            self.last_us
                .store(w.value_at_quantile(QUANTILE), Ordering::Relaxed);
            w.reset();
        }
    }

    pub fn quantile(&self) -> Option<Duration> {
        match self.last_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

/// Requests in flight to one replica, counted while an [`InFlight`] lives.
#[derive(Debug, Default)]
pub struct Outstanding(AtomicUsize);

impl Outstanding {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub fn enter(&self) -> InFlight<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.0)
    }
}

pub struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a replica's answers say of its load: when it last answered a search, how long
/// its node's latest search had waited for a turn on its CPUs then
/// ([`crate::codes::SEARCH_WAIT_HEADER`]), and the latest time a read it answered was sent.
#[derive(Debug)]
pub struct Load {
    /// When the last answer came, microseconds since [`EPOCH`] (0: none yet).
    answered_us: AtomicU64,
    /// How long the node's latest search waited for a turn, in microseconds.
    waited_us: AtomicU64,
    /// When the latest-sent read answered was sent, microseconds since [`EPOCH`].
    sent_us: AtomicU64,
}

/// Where [`Load`]'s clock starts.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn micros_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(*EPOCH).as_micros() as u64 + 1
}

impl Default for Load {
    /// A replica heard nothing from yet. Starts [`Load`]'s clock if this is the first, so
    /// that any read sent to it later is timed after [`EPOCH`]: one sent before, its time
    /// clamped to the epoch, would look sent no later than reads answered before it.
    fn default() -> Self {
        LazyLock::force(&EPOCH);
        Load {
            answered_us: AtomicU64::new(0),
            waited_us: AtomicU64::new(0),
            sent_us: AtomicU64::new(0),
        }
    }
}

impl Load {
    /// An answer now to a read sent at `sent`, its node's latest search having waited
    /// `waited` for a turn.
    pub fn answered(&self, sent: Instant, waited: Duration) {
        self.waited_us
            .store(waited.as_micros() as u64, Ordering::Relaxed);
        self.sent_us
            .fetch_max(micros_since_epoch(sent), Ordering::Relaxed);
        self.answered_us
            .store(micros_since_epoch(Instant::now()), Ordering::Relaxed);
    }

    /// Whether a read sent at `sent` and not answered yet is likely queued behind the
    /// replica's other searches on busy CPUs, not stuck on a stalled replica or slow for
    /// its own reasons: the replica answered since, its searches waiting at least `wait`
    /// for a turn, and none of the reads it answered was sent after this one (searches
    /// take their turns in order).
    pub fn queued_since(&self, sent: Instant, wait: Duration) -> bool {
        let sent = micros_since_epoch(sent);
        self.answered_us.load(Ordering::Relaxed) >= sent
            && self.sent_us.load(Ordering::Relaxed) < sent
            && self.waited_us.load(Ordering::Relaxed) >= wait.as_micros() as u64
    }
}

/// The order to try replicas in. Replicas in one CPU pool (`pools[i]`: replica `i`'s;
/// nodes on the same CPUs) are read as one: each pool by its first replica in the group's
/// own order starting at `first` (the `shunned` replica last in that order), the pools
/// fewest requests in flight first (their replicas' together), ties in that order; the
/// pools' other replicas follow, for failover. Spreading reads over replicas that share
/// CPUs adds no CPU to search with, only memory for the reads to touch; and an idle
/// cluster reads each group from one replica, which keeps that copy hot.
pub fn order(
    outstanding: &[usize],
    first: usize,
    pools: &[usize],
    shunned: Option<usize>,
) -> Vec<usize> {
    let n = outstanding.len();
    let (mut heads, mut rest) = (Vec::with_capacity(n), Vec::new());
    let rotation = (0..n).map(|k| (first + k) % n);
    let rotation = (rotation.clone().filter(|&i| Some(i) != shunned))
        .chain(rotation.filter(|&i| Some(i) == shunned));
    for i in rotation {
        match heads.iter().any(|&h: &usize| pools[h] == pools[i]) {
            true => rest.push(i),
            false => heads.push(i),
        }
    }
    let mut load = vec![0; pools.iter().max().map_or(0, |&p| p + 1)]; // per pool
    for (&pool, &o) in pools.iter().zip(outstanding) {
        load[pool] += o;
    }
    heads.sort_by_key(|&i| load[pools[i]]); // stable: ties keep the rotation
    heads.extend(rest);
    heads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_its_share_and_a_burst() {
        let b = Budget::new(0.05);
        let hedges = (0..100).filter(|_| b.take()).count();
        assert_eq!(hedges, BURST as usize, "a full bucket to start with");
        assert!(!b.take());
        for _ in 0..1000 {
            b.add();
        }
        let hedges = (0..100).filter(|_| b.take()).count();
        assert_eq!(hedges, BURST as usize, "capped at the burst");
        for _ in 0..100 {
            b.add();
        }
        assert_eq!((0..100).filter(|_| b.take()).count(), 5);
    }

    #[test]
    fn replicas_with_fewer_requests_in_flight_come_first() {
        let own = [0, 1, 2];
        assert_eq!(order(&[0, 0, 0], 1, &own, None), [1, 2, 0]);
        assert_eq!(order(&[2, 0, 1], 0, &own, None), [1, 2, 0]);
        assert_eq!(order(&[1, 1, 0], 2, &own, None), [2, 0, 1]);
    }

    #[test]
    fn replicas_on_the_same_cpus_are_read_as_one() {
        // All three on one machine's CPUs: the group's own replica however busy, the
        // others only to fail over to.
        assert_eq!(order(&[9, 0, 0], 0, &[0, 0, 0], None), [0, 1, 2]);
        assert_eq!(order(&[0, 5, 0], 1, &[4, 4, 4], None), [1, 2, 0]);
        // Replicas 0 and 1 share CPUs, 2 has its own: the two pools by their load (9
        // against 4), each read through its first replica from the group's own.
        assert_eq!(order(&[5, 4, 4], 0, &[0, 0, 1], None), [2, 0, 1]);
        assert_eq!(order(&[1, 1, 4], 1, &[0, 0, 1], None), [1, 2, 0]);
    }

    #[test]
    fn a_shunned_replica_is_read_after_the_rest_of_its_pool() {
        // The group's own replica (1) is shunned: its pool is read through the next.
        assert_eq!(order(&[0, 0, 0], 1, &[0, 0, 0], Some(1)), [2, 0, 1]);
        assert_eq!(order(&[0, 0, 0], 1, &[0, 0, 0], Some(0)), [1, 2, 0]);
        // Alone in its pool, it still reads for it, by load.
        assert_eq!(order(&[0, 3, 1], 0, &[0, 0, 1], Some(2)), [2, 0, 1]);
    }

    #[test]
    fn the_delay_follows_the_group_bounded_by_all_groups() {
        let (group, all) = (Latency::new(), Latency::new());
        let hedge = Hedge::new(None, 0.05);
        assert_eq!(hedge.delay(&group, &all), None, "no window yet");
        for i in 0..WINDOW {
            group.record(Duration::from_millis(if i % 10 == 0 { 200 } else { 4 }));
            all.record(Duration::from_millis(5));
        }
        // The group's own p95 is 200 ms (a tenth of its reads are slow); all groups' 5 ms.
        let d = hedge.delay(&group, &all).unwrap();
        assert!(
            d >= Duration::from_millis(9) && d <= Duration::from_millis(11),
            "{d:?}"
        );
        let fixed = Hedge::new(Some(Duration::from_millis(30)), 0.05);
        assert_eq!(fixed.delay(&group, &all), Some(Duration::from_millis(30)));
    }

    #[test]
    fn a_read_is_queued_only_while_earlier_reads_are_answered_after_long_waits() {
        let load = Load::default();
        let ms = Duration::from_millis;
        let earlier = Instant::now();
        std::thread::sleep(ms(1));
        let read = Instant::now();
        assert!(!load.queued_since(read, ms(10)), "no answer yet");
        load.answered(earlier, ms(2));
        assert!(!load.queued_since(read, ms(10)), "answering, short waits");
        load.answered(earlier, ms(12));
        assert!(load.queued_since(read, ms(10)));
        load.answered(Instant::now(), ms(12));
        assert!(
            !load.queued_since(read, ms(10)),
            "a read sent later was answered first: this one is not in the queue"
        );
        std::thread::sleep(ms(2));
        assert!(
            !load.queued_since(Instant::now(), ms(10)),
            "no answer since: stalled, not queued"
        );
    }
}
