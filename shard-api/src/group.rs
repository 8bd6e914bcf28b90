//! One shard group as its callers see it: a lone shard, or the replicas of a Raft group.
//! Writes find the leader (following `not_leader` hints, backing off while there is
//! none); reads go to the replica with the fewest requests in flight (replicas on the
//! same CPUs as one, the group's own replica among equals), fail over to the next, and
//! are hedged as [`ReadPolicy`] says.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};

use crate::client::{ShardClient, ShardClientError};
use crate::reads::{self, Latency, Outstanding, ReadPolicy};

/// Longest one attempt of a write may take before the next replica is tried.
const WRITE_ATTEMPT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// One shard group: a lone shard, or the replicas of a Raft group.
pub struct Group {
    pub index: usize,
    /// The group's name in metrics and errors: its index, or for groups read as one
    /// (several groups sharing their nodes), their indices joined by `+`.
    pub label: String,
    pub replicas: Vec<ShardClient>,
    /// The replica that last accepted a write.
    leader: AtomicUsize,
    policy: Arc<ReadPolicy>,
    /// Answered reads' latency, and requests in flight per replica.
    latency: Latency,
    outstanding: Vec<Outstanding>,
    /// Each replica's CPU pool: replicas in one are read as one (see [`reads::order`]).
    pools: Vec<usize>,
    /// A replica that lost a hedge race to one on its own CPUs, and until when it is read
    /// after the rest of its pool.
    shunned: Mutex<Option<(usize, Instant)>>,
}

/// How long a replica that lost a hedge race to one on its own CPUs is read last in its
/// pool: the CPUs were the same, so it was slow for its own reasons (a fault, a stall, a
/// cold copy), and a replica slow for a while then takes few of the group's reads.
const SHUN: Duration = Duration::from_secs(5);

impl Group {
    /// A group read one replica at a time.
    pub fn new(index: usize, replicas: Vec<ShardClient>) -> Self {
        Self::with_policy(index, replicas, Arc::new(ReadPolicy::default()))
    }

    pub fn with_policy(index: usize, replicas: Vec<ShardClient>, policy: Arc<ReadPolicy>) -> Self {
        Self {
            label: index.to_string(),
            index,
            outstanding: replicas.iter().map(|_| Outstanding::default()).collect(),
            pools: (0..replicas.len()).collect(),
            replicas,
            leader: AtomicUsize::new(0),
            latency: Latency::new(),
            policy,
            shunned: Mutex::new(None),
        }
    }

    /// The group with each replica's CPU pool (`pools[i]`, replica `i`'s): replicas on
    /// the same CPUs are read as one. Without it each replica is a pool of its own.
    pub fn in_pools(mut self, pools: Vec<usize>) -> Self {
        assert_eq!(pools.len(), self.replicas.len(), "one pool per replica");
        self.pools = pools;
        self
    }

    pub fn pools(&self) -> &[usize] {
        &self.pools
    }

    pub fn leader_hint(&self) -> usize {
        self.leader.load(Ordering::Relaxed) % self.replicas.len()
    }

    fn deadline_passed(&self) -> ShardClientError {
        ShardClientError::Unavailable {
            addr: format!("group {}", self.label),
            message: "no replica answered before the deadline".into(),
        }
    }

    /// Runs `call` on the group's leader. `not_leader` answers move to the hinted
    /// replica; unreachable or not-ready replicas to the next one after a backoff; until
    /// one succeeds, one refuses the request itself, or `deadline` passes. A lone shard is
    /// tried once: there is nowhere else to go.
    pub async fn leader_call<T, F, Fut>(
        &self,
        deadline: Instant,
        call: F,
    ) -> Result<T, ShardClientError>
    where
        F: Fn(ShardClient, Duration) -> Fut,
        Fut: Future<Output = Result<T, ShardClientError>>,
    {
        let n = self.replicas.len();
        let mut i = self.leader_hint();
        let mut backoff = Duration::from_millis(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.deadline_passed());
            }
            let err = match call(self.replicas[i].clone(), left.min(WRITE_ATTEMPT)).await {
                Ok(v) => {
                    self.leader.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if n == 1 || !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            let hinted = match &err {
                ShardClientError::NotLeader {
                    leader: Some(addr), ..
                } => self.replicas.iter().position(|r| r.addr() == addr),
                _ => None,
            };
            metrics::counter!("redrec_shard_retries_total", "group" => self.label.clone())
                .increment(1);
            tracing::debug!(group = %self.label, "retrying elsewhere: {err}");
            let pause = match hinted {
                Some(j) if j != i => {
                    i = j;
                    Duration::from_millis(5)
                }
                _ => {
                    i = (i + 1) % n;
                    let b = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    b
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left <= pause {
                return Err(err);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Runs `call` on one replica, the next one if it fails, until one answers or all
    /// were tried; each attempt but the last within the policy's attempt timeout. With
    /// hedging, once the first attempt has taken the group's hedge delay, the same read
    /// goes to the next replica as well (if the budget allows): the first answer wins and
    /// the other call is dropped, which cancels it. A hedge to a replica on the same CPUs
    /// as the first waits one more delay if the first went on answering reads sent before
    /// this one (none sent after), its searches waiting at least half the delay for a turn
    /// on its CPUs: it is busy, not stalled, and a hedge then mostly adds a search to the
    /// same busy CPUs.
    ///
    /// Replicas are tried fewest requests in flight first, replicas on the same CPUs as
    /// one ([`reads::order`]). Among equals the group's own replica, its index modulo the
    /// replicas, comes first: groups spread over the nodes, and each node's copy of a
    /// group stays hot in memory for that group's reads instead of every node paging in
    /// every group. A replica that lost a hedge race to one on its own CPUs is read after
    /// the rest of its pool for [`SHUN`].
    pub async fn read<T, F, Fut>(&self, deadline: Instant, call: F) -> Result<T, ShardClientError>
    where
        F: Fn(ShardClient, Duration) -> Fut,
        Fut: Future<Output = Result<T, ShardClientError>>,
    {
        let n = self.replicas.len();
        if n == 0 {
            return Err(self.deadline_passed());
        }
        let in_flight: Vec<usize> = self.outstanding.iter().map(Outstanding::get).collect();
        let shunned = *self.shunned.lock().unwrap_or_else(|p| p.into_inner());
        let shunned = shunned.filter(|&(_, until)| until > Instant::now());
        let order = reads::order(
            &in_flight,
            self.index % n.max(1),
            &self.pools,
            shunned.map(|(i, _)| i),
        );
        let policy = &*self.policy;
        metrics::counter!("redrec_group_reads_total").increment(1);
        let hedge = policy.hedge.as_ref().filter(|_| n > 1);
        if let Some(h) = hedge {
            h.on_read();
        }
        // An attempt is cut at the attempt timeout only while another replica is left to
        // try; the last one has the rest of the deadline (a cold or loaded replica that
        // is the only one left answers late rather than not at all).
        let attempt = |nth: usize, hedged: bool| {
            let i = order[nth];
            let left = deadline.saturating_duration_since(Instant::now());
            let guard = self.outstanding[i].enter();
            let started = Instant::now();
            let limit = if nth + 1 < n {
                left.min(policy.attempt_timeout)
            } else {
                left
            };
            let fut = call(self.replicas[i].clone(), limit);
            async move {
                let r = fut.await;
                drop(guard);
                (i, hedged, started.elapsed(), r)
            }
        };
        let mut attempts = FuturesUnordered::new();
        attempts.push(attempt(0, false));
        let mut next = 1;
        let delay = hedge.and_then(|h| h.delay(&self.latency, &policy.all_groups));
        let mut hedge_at = delay.map(|d| tokio::time::Instant::now() + d);
        let (started, mut held) = (Instant::now(), false);
        let mut last = None;
        loop {
            let timer = async {
                match hedge_at {
                    Some(at) if next < n => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((i, hedged, took, r)) = attempts.next() => match r {
                    Ok(v) => {
                        self.latency.record(took);
                        policy.all_groups.record(took);
                        metrics::histogram!("redrec_group_read_duration_seconds",
                            "group" => self.label.clone()).record(took.as_secs_f64());
                        if hedged {
                            metrics::counter!("redrec_hedged_reads_won_total",
                                "group" => self.label.clone()).increment(1);
                            self.shun_loser(order[0], i);
                        }
                        return Ok(v);
                    }
                    Err(e) if e.is_retryable() => {
                        last = Some(e);
                        let left = deadline.saturating_duration_since(Instant::now());
                        if next < n && !left.is_zero() {
                            attempts.push(attempt(next, false));
                            next += 1;
                        }
                    }
                    Err(e) => return Err(e),
                },
                () = timer => {
                    hedge_at = None;
                    let (from, to) = (order[next - 1], order[next]);
                    let wait = delay.unwrap_or_default() / 2;
                    if !held
                        && self.pools[from] == self.pools[to]
                        && self.replicas[from].load().queued_since(started, wait)
                    {
                        // The replica went on answering reads sent before this one, its
                        // searches waiting for their turn about as long as this read has:
                        // it is likely queued there, and a hedge to a replica on the same
                        // CPUs would only queue one more search on them. One more delay,
                        // then the hedge (the read may be slow for its own reasons).
                        metrics::counter!("redrec_hedged_reads_held_total",
                            "group" => self.label.clone()).increment(1);
                        held = true;
                        hedge_at = delay.map(|d| tokio::time::Instant::now() + d);
                    } else if hedge.is_some_and(|h| h.try_spend()) {
                        metrics::counter!("redrec_hedged_reads_total",
                            "group" => self.label.clone()).increment(1);
                        attempts.push(attempt(next, true));
                        next += 1;
                    } else {
                        metrics::counter!("redrec_hedged_reads_over_budget_total").increment(1);
                    }
                }
            }
            if attempts.is_empty() {
                break;
            }
        }
        Err(last.unwrap_or_else(|| self.deadline_passed()))
    }

    /// A hedge to `winner` answered before the first read, sent to `loser`: on the same
    /// CPUs, the loser is read last in its pool for [`SHUN`].
    fn shun_loser(&self, loser: usize, winner: usize) {
        if loser != winner && self.pools[loser] == self.pools[winner] {
            *self.shunned.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((loser, Instant::now() + SHUN));
            metrics::counter!("redrec_replicas_shunned_total", "group" => self.label.clone())
                .increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reads::Hedge;

    /// Group 0 of replicas `a` and `b` in `pools`, hedged after 40 ms.
    fn hedged_group(pools: Vec<usize>) -> Group {
        let http = reqwest::Client::new();
        let replicas = BOTH
            .map(|addr| ShardClient::replica(addr, 0, http.clone()))
            .to_vec();
        let policy = ReadPolicy {
            hedge: Some(Hedge::new(Some(Duration::from_millis(40)), 1.0)),
            by_cpus: true,
            ..ReadPolicy::default()
        };
        Group::with_policy(0, replicas, Arc::new(policy)).in_pools(pools)
    }

    /// Reads group 0 of replicas `a` (answers after `a_takes`) and `b` (at once) in
    /// `pools`, hedging after 40 ms, while `a` answers reads sent before it every 2 ms,
    /// its searches having waited `a_waits` for a turn (`None`: `a` answers nothing else);
    /// which answered, and which replicas were called.
    async fn hedged_read(
        pools: Vec<usize>,
        a_waits: Option<Duration>,
        a_takes: Duration,
    ) -> (&'static str, Vec<&'static str>) {
        let group = hedged_group(pools);
        let a = group.replicas[0].clone();
        // Reads sent before this one, answered while it waits.
        let earlier = Instant::now();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let answers = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(2));
            loop {
                every.tick().await;
                if let Some(waited) = a_waits {
                    a.load().answered(earlier, waited);
                }
            }
        });
        let called = Arc::new(Mutex::new(Vec::new()));
        let deadline = Instant::now() + Duration::from_secs(5);
        let answer = group
            .read(deadline, |replica, _| {
                let addr = *BOTH.iter().find(|&&a| a == replica.addr()).unwrap();
                called.lock().unwrap().push(addr);
                async move {
                    if addr == BOTH[0] {
                        tokio::time::sleep(a_takes).await;
                        Ok("a")
                    } else {
                        Ok("b")
                    }
                }
            })
            .await
            .unwrap();
        answers.abort();
        let called = called.lock().unwrap().clone();
        (answer, called)
    }

    const BOTH: [&str; 2] = ["http://a", "http://b"];
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[tokio::test]
    async fn a_replica_queued_on_its_cpus_gets_one_more_delay_before_a_hedge_onto_them() {
        // Its searches wait 30 ms for a turn, over half the 40 ms delay. It answers at
        // 60 ms: hedged at 40 ms without the hold, 80 ms with it.
        let (answer, called) = hedged_read(vec![0, 0], Some(MS(30)), MS(60)).await;
        assert_eq!((answer, called), ("a", BOTH[..1].to_vec()));
        // Still not answered at 80 ms: hedged then.
        let (answer, called) = hedged_read(vec![0, 0], Some(MS(30)), MS(2000)).await;
        assert_eq!((answer, called), ("b", BOTH.to_vec()));
    }

    #[tokio::test]
    async fn a_replica_that_answers_without_long_waits_is_hedged_on_the_same_cpus_at_once() {
        // Its other searches wait 5 ms for a turn: the queue does not explain this read.
        let (answer, called) = hedged_read(vec![0, 0], Some(MS(5)), MS(60)).await;
        assert_eq!((answer, called), ("b", BOTH.to_vec()));
    }

    #[tokio::test]
    async fn a_stalled_replica_is_hedged_on_the_same_cpus_at_once() {
        let (answer, called) = hedged_read(vec![0, 0], None, MS(60)).await;
        assert_eq!((answer, called), ("b", BOTH.to_vec()));
    }

    /// Two reads of group 0 of `a` (answers after 2 s) and `b` (at once) in `pools`,
    /// hedged after 40 ms: which answered each, and the replicas called in turn.
    async fn two_reads(pools: Vec<usize>) -> (Vec<&'static str>, Vec<&'static str>) {
        let group = hedged_group(pools);
        let called = Arc::new(Mutex::new(Vec::new()));
        let mut answers = Vec::new();
        for _ in 0..2 {
            let deadline = Instant::now() + Duration::from_secs(5);
            let answer = group.read(deadline, |replica, _| {
                let addr = *BOTH.iter().find(|&&a| a == replica.addr()).unwrap();
                called.lock().unwrap().push(addr);
                async move {
                    if addr == BOTH[0] {
                        tokio::time::sleep(MS(2000)).await;
                    }
                    Ok::<_, ShardClientError>(addr)
                }
            });
            answers.push(answer.await.unwrap());
        }
        let called = called.lock().unwrap().clone();
        (answers, called)
    }

    #[tokio::test]
    async fn a_replica_that_lost_a_hedge_race_on_its_own_cpus_is_read_last_for_a_while() {
        let (answers, called) = two_reads(vec![0, 0]).await;
        assert_eq!(answers, [BOTH[1], BOTH[1]]);
        assert_eq!(called, [BOTH[0], BOTH[1], BOTH[1]]);
        // On other CPUs it may have been slow for want of CPU: read by load as before.
        let (answers, called) = two_reads(vec![0, 1]).await;
        assert_eq!(answers, [BOTH[1], BOTH[1]]);
        assert_eq!(called, [BOTH[0], BOTH[1], BOTH[0], BOTH[1]]);
    }

    #[tokio::test]
    async fn a_queued_replica_is_hedged_onto_other_cpus_at_once() {
        let (answer, called) = hedged_read(vec![0, 1], Some(MS(30)), MS(60)).await;
        assert_eq!((answer, called), ("b", BOTH.to_vec()));
    }
}
